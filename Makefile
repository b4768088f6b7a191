# The two commands of the README's quick start: `make run` and `make test`; `make deb` builds
# the Debian package (dist/misp-dns_<version>_<arch>.deb, see packaging/deb/).
# Everything they need is set up here, so a fresh clone works with nothing else done by hand.
# `make test` (what CI runs) = lint + typecheck + unit + integration; `make unit` alone needs
# no Debian tools and starts no programs.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CONFIG ?= etc/misp-dns.toml
# Debian packages the integration tests and benchmarks drive: command -> package.
DEBIAN_TOOLS := unbound:unbound dig:dnsutils dnsperf:dnsperf rsyslogd:rsyslog logrotate:logrotate \
	nsd:nsd ldns-keygen:ldnsutils ldns-signzone:ldnsutils named:bind9 \
	dpkg-deb:dpkg adduser:adduser unshare:util-linux nsenter:util-linux setpriv:util-linux
# Debian packages without a command of their own: the venv module of the Debian Python that
# the .deb's virtualenv is made with.
DEBIAN_PACKAGES := python3-venv
# The peers `make bench` compares misp-dns with (not needed by `make test`).
BENCH_TOOLS := pdns_recursor:pdns-recursor dnsmasq:dnsmasq-base
# What `make deb` alone needs.
DEB_BUILD_TOOLS := dpkg-deb:dpkg unshare:util-linux
# The Debian package: its interpreter and dpkg-deb's compression (zstd is fast, xz smallest).
DEB_PYTHON ?= /usr/bin/python3
DEB_COMPRESSION ?= zstd

.PHONY: run test lint typecheck unit integration check-config tools bench deb clean

# var/ holds what etc/misp-dns.toml writes: the indicator snapshots and the query log.
run: $(VENV)/.installed
	mkdir -p var/lib/misp-dns var/log/misp-dns
	$(BIN)/twistd -n --pidfile= misp-dns --config $(CONFIG)

check-config: $(VENV)/.installed
	$(BIN)/twistd misp-dns --check-config --config $(CONFIG)

test: $(VENV)/.installed-test tools lint typecheck unit integration

lint: $(VENV)/.installed-test
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

typecheck: $(VENV)/.installed-test
	$(BIN)/mypy

# Unit tests, the example packages' own tests included (pyproject's testpaths).
unit: $(VENV)/.installed-test
	$(BIN)/pytest -m "not integration"

# End-to-end tests (marked `integration` by tests/integration/conftest.py): real twistd,
# Unbound, dig, rsyslog on loopback.
integration: $(VENV)/.installed-test tools
	$(BIN)/pytest -m integration

bench: $(VENV)/.installed-test tools
	@$(MAKE) --no-print-directory tools DEBIAN_TOOLS="$(BENCH_TOOLS)" DEBIAN_PACKAGES=
	$(BIN)/python bench/run.py

# The .deb holds a virtualenv at /opt/misp-dns made with pip from the package index, so it
# needs no venv of the checkout (the integration tests build it the same way).
deb:
	@$(MAKE) --no-print-directory tools DEBIAN_TOOLS="$(DEB_BUILD_TOOLS)"
	$(DEB_PYTHON) packaging/deb/build.py --out dist --python $(DEB_PYTHON) --compression $(DEB_COMPRESSION)

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml | $(VENV)/bin/python
	$(BIN)/python -m pip install -q -e .
	$(BIN)/python -m misp_dns.plugincache
	touch $@

# The example plugin packages: installed for their tests and the integration tests.
EXAMPLES := contrib/example-policy contrib/example-source contrib/example-sink

$(VENV)/.installed-test: pyproject.toml $(EXAMPLES:%=%/pyproject.toml) | $(VENV)/bin/python
	$(BIN)/python -m pip install -q -e '.[test]' $(EXAMPLES:%=-e %)
	$(BIN)/python -m misp_dns.plugincache
	touch $(VENV)/.installed $@

# Installs the Debian tools the tests use when one is missing (the tests run as root on CI).
tools:
	@missing=""; \
	for pair in $(DEBIAN_TOOLS); do \
		command -v $${pair%%:*} >/dev/null 2>&1 || [ -x /usr/sbin/$${pair%%:*} ] || missing="$$missing $${pair##*:}"; \
	done; \
	for package in $(DEBIAN_PACKAGES); do \
		dpkg-query -W -f='$${Status}' $$package 2>/dev/null | grep -q 'ok installed' || missing="$$missing $$package"; \
	done; \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi

clean:
	rm -rf $(VENV) var dist .pytest_cache .mypy_cache .ruff_cache .hypothesis twisted/plugins/dropin.cache
