"""The admin listener: Prometheus metrics, health checks and the API of the `misp-dns` command.

Configured by `[admin]` (off when the section is absent):

    [admin]
    listen = "127.0.0.1:8053"
    token_file = ""        # a Bearer token; required when listen is not a loopback address

It serves, over HTTP:

- `GET /metrics`: the Prometheus exposition (`misp_dns_*`), see `misp_dns.admin.metrics`;
- `GET /healthz`: 200 while the process runs; `GET /readyz`: 200 once every policy's
  `whenReady()` has fired, 503 before;
- `GET /api/status`, `GET /api/explain?name=NAME&type=TYPE`, `POST /api/refresh`: what
  `misp-dns status|explain|refresh` show (`misp_dns.admin.api`, `misp_dns.cli`).

With a token, every path but /healthz and /readyz needs `Authorization: Bearer <token>`.
The package is wiring: it reads the running resolver, responder, exporter and policies, and
nothing below it imports it (docs/architecture.md).
"""
