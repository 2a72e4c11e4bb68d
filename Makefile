# `make help` lists the targets.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

.DEFAULT_GOAL := help

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[deliverer,sqlalchemy,otel,dev]'
	touch $@

install: $(VENV)/.installed ## create .venv: the package with its deliverer, sqlalchemy and otel extras, and the dev tools

demo: install ## run the end-to-end demo (embedded PostgreSQL unless DATABASE_URL is set)
	$(PY) -m deliverer demo

test: install ## run the test suite (OUTBOX_TEST_DATABASE_URL picks the server)
	$(PY) -m pytest -q

test-unit: install ## only tests/unit: no database, no processes, seconds
	$(PY) -m pytest -q tests/unit

test-fast: install ## unit and integration tests: everything but real processes, browser, fault scenarios
	$(PY) -m pytest -q -m "not system"

lint: install ## ruff over the code and the tests, mypy over the packages, the import contracts
	$(VENV)/bin/ruff check outbox deliverer tests bench examples chaos
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

docs: install ## build the documentation site into site/; a broken link or a page missing from the nav fails
	@# Not --quiet: mkdocs 1.6 then stops counting warnings, and --strict passes whatever they are.
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict

docs-tables: install ## rewrite the generated tables in docs/ (settings, metrics) from the code
	$(PY) -m deliverer.dev.docs

package: install ## build the wheel and the sdist into dist/ and check their metadata
	rm -rf dist
	$(PY) -m build --no-isolation --outdir dist . >/dev/null
	$(VENV)/bin/twine check --strict dist/*

bench: install ## measure drain rate and publish-to-receipt latency
	$(PY) -m bench

chaos: install ## fault suite: kills, outages, bad receivers, shutdowns; prints the loss/duplicate table (<10 min)
	$(PY) -m chaos

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-11s %s\n", $$1, $$2}'

.PHONY: install demo test test-unit test-fast lint docs docs-tables package bench chaos help
