# `make demo` and `make test` work on a fresh machine: they create .venv/ when missing.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test install clean

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

clean:
	rm -rf runs
