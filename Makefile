# One-command set-up: `make test` creates .venv, installs torch, detectron2 and iif-d2, then
# runs the suite. VENV=/path/to/env uses another environment that already has detectron2,
# iif-d2 (pip install -e .) and pytest: it is checked read-only, never changed; set-up stops
# with a one-line message naming what it lacks.
VENV ?= .venv
PY := $(VENV)/bin/python
OWN_STAMP := .venv/.iif-d2-installed
ifeq ($(abspath $(VENV)),$(abspath .venv))
STAMP := $(OWN_STAMP)
else
STAMP := check-env
endif

.PHONY: install check-env test test-fast lint format demo benchmark bench rehearse docs clean

$(OWN_STAMP): pyproject.toml setup.py dev/install_env.py
	python3 dev/install_env.py --venv .venv
	touch $(OWN_STAMP)

# another environment: checked on every call, nothing written there
check-env:
	python3 dev/install_env.py --venv $(VENV)

install: $(STAMP)

# the whole suite (CI), on two worker processes, one test file per worker at a time
# (PYTEST_WORKERS=0: in this process)
PYTEST_WORKERS ?= 2
PYTEST := $(PY) -m pytest -q $(if $(filter-out 0,$(PYTEST_WORKERS)),-n $(PYTEST_WORKERS) --dist loadfile)
test: $(STAMP)
	$(PYTEST)

# the suite without the tests that start processes or train (@pytest.mark.slow)
test-fast: $(STAMP)
	$(PYTEST) -m "not slow"

lint: $(STAMP)
	$(PY) -m ruff format --check .
	$(PY) -m ruff check .

format: $(STAMP)
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

# the main job: IIF Mask R-CNN trained and evaluated on the embedded SynthLT dataset
demo: $(STAMP)
	$(PY) tools/demo.py

# softmax vs additive margins vs IIF on SynthLT (ARGS=--quick for a CPU run under an hour;
# ARGS="--records docs/results/synthlt_runs.json" reads recorded runs back)
benchmark: $(STAMP)
	$(PY) dev/benchmark_synthlt.py $(ARGS)

# speed: every task of dev/benchmark_speed.py (reports in output/benchmark/)
bench: $(STAMP)
	$(PY) dev/benchmark_speed.py --task head
	$(PY) dev/benchmark_speed.py --task fasa
	$(PY) dev/benchmark_speed.py --task kernels
	$(PY) dev/benchmark_speed.py --task checkpoint
	$(PY) dev/benchmark_speed.py --task class-stats
	$(PY) dev/benchmark_speed.py --task lvis-eval --quick
	$(PY) dev/benchmark_speed.py --task startup --fractions 0.1

# every LVIS v1 config started, trained a few steps and evaluated on the LVIS-shaped set
# (ARGS=--mini: the 2,000-image variant; --only PATTERN limits the configs; --jobs 2
# --threads 1: two configs at a time)
rehearse: $(STAMP)
	$(PY) dev/rehearse.py $(ARGS)

# docs/benchmarks/{synthlt,fashionlt,speed}.md and the README's results table, from the records
# in docs/results/, and docs/bad_inputs.md (classification.md: dev/classify_fashion_mnist.py
# --from-records; lvis_schedules.md: dev/rehearse_schedules.py --write ...)
docs: $(STAMP)
	$(PY) dev/make_docs.py
	@test -f dev/bad_input_table.py || { echo "make docs: dev/bad_input_table.py is missing: \
	docs/bad_inputs.md cannot be regenerated (restore the script from git)"; exit 1; }
	$(PY) dev/bad_input_table.py --write docs/bad_inputs.md

# removes the project's own environment only
clean:
	rm -rf .venv build *.egg-info .pytest_cache .ruff_cache
