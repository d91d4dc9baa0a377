# maskfm — `make train` and `make test` each install what is missing first.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
EXTRAS ?= dev,lidar,slurm,open3d
ARGS   ?=
PYTEST_ARGS ?=
SLOW_SETUP ?=

.DEFAULT_GOAL := help
.PHONY: help install train test test-fast lint format bench slurm-up clean clean-runs

help:  ## Show the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'
	@echo "  Extra Hydra overrides: make train ARGS='trainer.max_epochs=2 seed=1'"

# Re-installs when pyproject.toml or EXTRAS (this file) change, or .venv is missing.
$(STAMP): pyproject.toml Makefile
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else "maskfm needs Python >= 3.10, found " + sys.version.split()[0])'
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install -e '.[$(EXTRAS)]'
	touch $(STAMP)

install: $(STAMP)  ## Create .venv and install maskfm (editable) with the test tools

train: $(STAMP)  ## Pretrain MAE on the embedded synthetic pictures (a few minutes on CPU)
	$(PY) -m maskfm.train +experiment=mae $(ARGS)

# Cheapest first, so a style or type slip fails in seconds: lint, the tests that start no
# training subprocess (stop at the first failure), then the slow ones. Exit status 5 is
# pytest's "no test selected" (PYTEST_ARGS naming only slow or only fast tests).
# SLOW_SETUP runs just before the slow tests (.ci/run starts the SLURM test cluster there).
test: lint  ## Lint, then the fast tests, then the slow ones (the whole suite)
	$(PY) -m pytest -m "not slow" -x $(PYTEST_ARGS) || test $$? -eq 5
	$(SLOW_SETUP)
	$(PY) -m pytest -m slow $(PYTEST_ARGS) || test $$? -eq 5

test-fast: $(STAMP)  ## Run the tests that start no training subprocess
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

bench: $(STAMP)  ## Benchmark the MAE train step and encoder speed-up
	$(PY) -m maskfm.bench +experiment=mae $(ARGS)

slurm-up:  ## Start a one-node SLURM cluster for tests/test_slurm.py (root, Debian; idempotent)
	bash .ci/slurm/start.sh

lint: $(STAMP)  ## Lint with ruff, type-check maskfm/ with basedpyright (pyproject.toml)
	$(PY) -m ruff check maskfm tests
	$(PY) -m ruff format --check maskfm tests
	$(PY) -m basedpyright --pythonpath $(PY)

format: $(STAMP)  ## Format the code with ruff
	$(PY) -m ruff format maskfm tests

clean-runs:  ## Delete ./runs (all run directories)
	rm -rf runs

clean:  ## Delete the virtualenv and caches
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
