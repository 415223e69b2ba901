# One-command set-up: `make test` creates .venv, installs torch, detectron2 and iif-d2, then
# runs the suite. Point VENV at an existing environment that has detectron2 to reuse it.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.iif-d2-installed

.PHONY: install test lint format demo bench clean

$(STAMP): setup.py tools/install_env.py
	python3 tools/install_env.py --venv $(VENV)
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

lint: $(STAMP)
	$(PY) -m ruff format --check .
	$(PY) -m ruff check .

format: $(STAMP)
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

bench: $(STAMP)
	$(PY) tools/benchmark.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
