# Two commands for a newcomer: `make run` and `make test`. Both build .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

# Offline-friendly defaults: no analytics calls to hosts this machine cannot reach.
export DVC_NO_ANALYTICS := 1
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export PYTHONUNBUFFERED := 1

.PHONY: install data run test test-fast lint docs clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# The built-in dataset, written once (same bytes every time, so data.dvc matches).
data: $(STAMP)
	@if [ ! -d data ]; then $(BIN)/pretrainflow data builtin mnist-5k; fi

run: data
	$(BIN)/pretrainflow run

test: $(STAMP)
	$(BIN)/python -m pytest

test-fast: $(STAMP)
	$(BIN)/python -m pytest tests/unit

lint: $(STAMP)
	$(BIN)/ruff check flows pipeline_tasks tests bench docker docs
	$(BIN)/mypy pipeline_tasks
	$(BIN)/hadolint --failure-threshold warning docker/Dockerfile

# The documentation site (docs/, mkdocs.yml), offline; --strict fails on any warning.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site

clean:
	rm -rf artifacts mlflow.db mlruns mlartifacts
