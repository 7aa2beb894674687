# omnisync: everything a fresh machine needs is installed by these targets (python3, make, git only).
SHELL := /bin/bash
PY_BOOT ?= python3
UV_VERSION := 0.13.9
TOOLS := .tools
UV := $(TOOLS)/bin/uv
VENV := .venv
PY := $(VENV)/bin/python
export UV_PROJECT_ENVIRONMENT := $(abspath $(VENV))
export PYTHONDONTWRITEBYTECODE := 1

.PHONY: help install demo test test-fast bench chaos sandbox api browser-deps lint clean

help:
	@echo "make demo   - seed local sandboxes, run the omnichannel sync, print the heroine's story"
	@echo "make test   - the test suite (SQLite and PostgreSQL, sandboxes, flows, browser)"
	@echo "make bench  - benchmarks (API calls vs minimum, identity, webhooks, API latency)"
	@echo "make chaos  - long fault/crash/concurrency scenarios with a verdict table, then the slow tests"

$(UV):
	$(PY_BOOT) -m venv $(TOOLS)
	$(TOOLS)/bin/pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)

$(VENV)/.synced: $(UV) pyproject.toml uv.lock
	$(UV) sync --frozen --quiet
	@touch $@

install: $(VENV)/.synced

# Debian chromium for the Customer 360 browser test; playwright never downloads a browser here.
browser-deps:
	@if [ ! -x /usr/bin/chromium ]; then \
	  if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = "0" ]; then \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
	      || echo "chromium could not be installed: browser tests will skip"; \
	  else echo "no root/apt-get: browser tests will skip"; fi; \
	fi

demo: install
	$(PY) -m omnisync.demo

test: install browser-deps
	$(PY) -m pytest -q -n 2 --dist loadgroup -m "not slow" --timeout 300

test-fast: install
	$(PY) -m pytest -q -x -m "not slow and not flow and not browser"

bench: install
	$(PY) -m bench

# The long scenarios: chaos trials (faults, SIGKILLs, quota, concurrency) with their verdict table,
# then the tests marked slow (10,000-contact syncs under faults, deploy --all with workers, ...).
chaos: install
	$(PY) -m bench.chaos
	$(PY) -m pytest -q -m slow --timeout 1200

sandbox: install
	$(PY) -m omnisync.cli sandbox --info .omnisync/sandbox.json

api: install
	$(PY) -m omnisync.cli api

clean:
	rm -rf $(VENV) $(TOOLS) .omnisync .pytest_cache
