# Two commands do all set-up on a fresh Debian/Ubuntu machine:
#   make demo    the offline demo (local chain, token, facilitator, origin, gateway, a paid request)
#   make test    the whole suite (lint, types, unit, end to end)
VENV := .venv
PY := $(VENV)/bin/python
ONCE ?=
QUICK ?=

.PHONY: setup setup-test demo test lint typecheck unit e2e soak bench clean

setup:
	@scripts/setup.sh

setup-test:
	@scripts/setup.sh --test

demo: setup
	@$(VENV)/bin/x402-gateway demo $(if $(ONCE),--once,)

lint: setup-test
	$(VENV)/bin/ruff check gateway tests bench
	$(VENV)/bin/ruff format --check gateway tests bench
	$(VENV)/bin/lint-imports
	$(VENV)/bin/hadolint Dockerfile

typecheck: setup-test
	$(VENV)/bin/mypy gateway

unit: setup-test
	$(PY) -m pytest -q tests/unit

e2e: setup-test
	$(PY) -m pytest -q tests/e2e

test: setup-test
	$(VENV)/bin/ruff check gateway tests bench
	$(VENV)/bin/ruff format --check gateway tests bench
	$(VENV)/bin/lint-imports
	$(VENV)/bin/hadolint Dockerfile
	$(VENV)/bin/mypy gateway
	$(PY) -m pytest -q -p no:cacheprovider tests

soak: setup-test
	X402_SLOW=1 $(PY) -m pytest -q -s -m slow tests/e2e

bench:
	@scripts/setup.sh --test --bench
	$(PY) -m bench $(if $(QUICK),--quick,)

clean:
	rm -rf $(VENV) node_modules build dist *.egg-info .mypy_cache .ruff_cache .pytest_cache .import_linter_cache
