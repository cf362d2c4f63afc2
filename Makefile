# Quick start: `make demo` and `make test` on a fresh machine with Python 3.11+.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: demo test bench lint web clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/newsletter demo

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: $(STAMP)
	@for script in bench/*.py; do echo "== $$script"; $(BIN)/python $$script || exit 1; done

# mypy reads its files and settings from pyproject.toml ([tool.mypy]).
lint: $(STAMP)
	$(BIN)/ruff check newsletter workers tests bench
	$(BIN)/mypy

web: $(STAMP)
	$(BIN)/newsletter web

clean:
	rm -rf $(VENV) outbox newsletter.db newsletter.db-wal newsletter.db-shm
