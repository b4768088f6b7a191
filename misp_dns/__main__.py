"""`python -m misp_dns ...` is the `misp-dns` command (see `misp_dns.cli`)."""

import sys

from misp_dns.cli import main

sys.exit(main())
