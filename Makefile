# The two commands a new user runs are `make demo` and `make test`; every
# target installs what it needs first (virtualenv, packages, server binaries).
SHELL := /bin/bash
# The Python the virtualenv is made with: 3.11 or newer (README).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
# The package alone (what `make demo` and `make run` need), and with the
# test and dev tools (`make test`, `make lint`...).
RUNTIME_STAMP := $(VENV)/.installed-runtime
STAMP := $(VENV)/.installed
PACKAGES := enrichment_actors middleware/enrichment_middleware
# The Debian packages of the servers the tests start themselves (promtool is
# in prometheus); `make servers SERVERS=...` checks and installs only some.
SERVERS := redis-server postgresql prometheus faketime rabbitmq-server redis-sentinel

.PHONY: install servers venv demo run test unit features promtool-test check-fmt fmt lint bench chaos clean

install: $(STAMP) servers

# A .venv made by a Python older than 3.11 is rebuilt; a $(PYTHON) older than
# 3.11 is named in the error, with what to do.
venv:
	@if [ -x $(PY) ] && ! $(PY) -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then \
	  echo "$(VENV) was made by $$($(PY) -V 2>&1), older than 3.11: rebuilding it."; rm -rf $(VENV); \
	fi
	@if [ ! -x $(PY) ]; then \
	  if ! $(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then \
	    echo "overpass-enrichment needs Python 3.11 or newer; $(PYTHON) is $$($(PYTHON) -V 2>&1 || echo missing)." \
	      "Install one and run: make $(MAKECMDGOALS) PYTHON=python3.11"; exit 1; \
	  fi; \
	  $(PYTHON) -m venv $(VENV); \
	fi

$(RUNTIME_STAMP): setup.cfg pyproject.toml | venv
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e .
	@touch $(RUNTIME_STAMP)

$(STAMP): setup.cfg pyproject.toml | venv
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,dev]'
	@touch $(STAMP) $(RUNTIME_STAMP)

# Server binaries the tests start themselves (and libfaketime, which skews a
# worker's clock in the fleet-clock tests); installed with apt-get when
# missing and we are root (CI is), otherwise a clear message says what to do.
# policy-rc.d keeps the packages from starting their own services: the tests
# start theirs on free ports (RabbitMQ too: its own node, epmd and data, see
# tests/support/rabbitmq.py), and 5432/6379/5672 belong to whoever runs this (a
# policy-rc.d that was already there, as in Docker images, is put back); the
# units just installed are disabled too, so that they do not start at boot.
servers:
	@missing=""; \
	for package in $(SERVERS); do \
	  case $$package in \
	    postgresql) ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 ;; \
	    prometheus) command -v promtool >/dev/null ;; \
	    rabbitmq-server) test -x /usr/lib/rabbitmq/bin/rabbitmq-server ;; \
	    *) command -v $$package >/dev/null ;; \
	  esac || missing="$$missing $$package"; \
	done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "Installing$$missing with apt-get"; \
	    policy=/usr/sbin/policy-rc.d; kept=""; \
	    if [ -e $$policy ]; then kept=$$policy.make-servers; cp -p $$policy $$kept; fi; \
	    printf '#!/bin/sh\nexit 101\n' > $$policy && chmod +x $$policy; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	    status=$$?; if [ -n "$$kept" ]; then mv -f $$kept $$policy; else rm -f $$policy; fi; \
	    for s in $$missing; do (systemctl disable $$s >/dev/null 2>&1 || true); done; exit $$status; \
	  else \
	    echo "Missing server binaries:$$missing. Install them (sudo apt-get install$$missing) and rerun."; exit 1; \
	  fi; \
	fi

# The demo runs embedded (stub broker, state in memory, SQLite): no server.
demo: venv $(RUNTIME_STAMP)
	$(BIN)/enrichment demo

# The Procfile under honcho (a dev tool: the full install), from the virtualenv (no need to activate it), on
# a Redis of its own (unless REDIS_URL is set) and against the stand-in
# Overpass server (unless OVERPASS_URL is set); Ctrl-C stops everything it
# started. See enrichment_actors/local_run.py.
run: venv $(STAMP)
	@$(MAKE) --no-print-directory servers SERVERS=redis-server
	$(PY) -m enrichment_actors.local_run

# Every test: unit, behaviour (pytest-bdd), the chaos scenarios and the quick
# sizes of the contention scenarios (they fit in CI's time), and the promtool
# rule tests. Benchmarks are `make bench`; the long (soak) contention runs,
# `make chaos`.
test: venv install
	$(BIN)/pytest -q -m "not bench and not soak" --durations=15
	$(MAKE) --no-print-directory promtool-test

promtool-test: servers
	promtool test rules docs/prometheus/alerts_test.yml

check-fmt: install
	$(BIN)/ruff format --check .

fmt: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# lint-imports checks the layers; import_cycles, that no module of ours imports
# itself back through others (imports inside functions count).
lint: install
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/lint-imports
	$(PY) -m tests.support.import_cycles

bench: install
	$(PY) -m tests.bench

# Fault and contention scenarios, quick and soak sizes; `-s` shows their figures.
# With them, every pipeline and middleware scenario on RabbitMQ (`make test`
# runs those tagged @rabbitmq_fast there; the rest are marked chaos and soak).
# Then every property test (hypothesis marks them `hypothesis` itself) with
# fresh examples, ten times as many: `make test` draws the same ones every run
# (profiles in tests/conftest.py).
chaos: install
	HYPOTHESIS_PROFILE=chaos $(BIN)/pytest -q -m chaos -p no:randomly tests/chaos tests/features/test_pipeline.py tests/features/test_overpass_enrichment.py tests/unit/test_overpass_calls.py tests/unit/test_broker_recovery.py tests/unit/test_parking_contention.py
	HYPOTHESIS_PROFILE=chaos $(BIN)/pytest -q -m hypothesis -p no:randomly tests/unit

clean:
	rm -rf $(VENV) build *.egg-info .mypy_cache .ruff_cache
