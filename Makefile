# One-command set-up: `make test` creates .venv, installs torch, detectron2 and iif-d2, then
# runs the suite. Point VENV at an existing environment that has detectron2 to reuse it.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.iif-d2-installed

.PHONY: install test lint format demo benchmark bench rehearse clean

$(STAMP): pyproject.toml setup.py tools/install_env.py
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

# the main job: IIF Mask R-CNN trained and evaluated on the embedded SynthLT dataset
demo: $(STAMP)
	$(PY) tools/demo.py

# softmax vs additive margins vs IIF on SynthLT (add ARGS=--quick for a few-minute CPU run)
benchmark: $(STAMP)
	$(PY) tools/benchmark_synthlt.py $(ARGS)

# speed: IIF head / softmax head ratios, and LVIS-sized class statistics timing
bench: $(STAMP)
	$(PY) tools/benchmark.py
	$(PY) tools/benchmark_class_stats.py

# every LVIS v1 config started, trained a few steps and evaluated on the LVIS-shaped set
# (ARGS=--mini: the 2,000-image variant; --only PATTERN limits the configs; --jobs 2
# --threads 1: two configs at a time, 31 min for all at full size on 2 cores)
rehearse: $(STAMP)
	$(PY) tools/rehearse.py $(ARGS)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
