# `make demo` and `make test` work on a fresh machine: they create .venv/ when missing.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DOCS_STAMP := $(VENV)/.installed-docs

.PHONY: demo test docs install clean

$(STAMP): setup.cfg setup.py
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/ssl-derm demo --out runs/demo

test: $(STAMP)
	$(BIN)/python -m pytest tests

# the docs site into site/ (the configuration reference is written from the settings dataclasses as it builds)
docs: $(DOCS_STAMP)
	$(BIN)/python -m mkdocs build --strict --site-dir site

$(DOCS_STAMP): $(STAMP)
	$(BIN)/python -m pip install -q -e '.[test,docs]'
	touch $(DOCS_STAMP)

clean:
	rm -rf runs site
