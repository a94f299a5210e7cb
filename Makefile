# spire-pipeline: two commands.  `make run` = set up + main job;  `make test` = set up + tests.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
ENV ?=
export KEDRO_DISABLE_TELEMETRY := true
export DO_NOT_TRACK := 1
export MPLBACKEND := Agg
export COLUMNS ?= 160
export FLWR_HOME := $(CURDIR)/tmp/flwr
export RAY_TMPDIR := $(CURDIR)/tmp/ray

.PHONY: setup data run quick test lint viz mlflow-ui compare benchmark clean

## setup: create .venv, install the pinned dependencies and the project, obtain Fashion-MNIST
setup: $(VENV)/.installed data

$(VENV)/.installed: requirements.txt pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV) || { \
	  echo "python3 -m venv failed: on Debian/Ubuntu run 'apt-get install python3-venv'"; exit 1; }
	@avail=$$(df -Pk $(VENV) | awk 'NR==2{print $$4}'); \
	if ! compgen -G '$(VENV)/lib/python3*/site-packages/torch' >/dev/null && [ "$$avail" -lt 7200000 ]; then \
	  echo "setup: only $$((avail * 1024 / 1000000)) MB free for $(VENV); the pinned dependencies take about 7.3 GB" \
	       "(torch 2.14.1 is a CUDA build): free some disk and run again"; exit 1; fi
	$(BIN)/python -m pip install -q --no-cache-dir -r requirements.txt
	$(BIN)/python -m pip install -q --no-deps -e .
	@touch $@

data: $(VENV)/.installed
	$(BIN)/python -m spire_pipeline.data_setup

## run: the main job (`kedro run` on conf/base; ENV=quick or ENV=paper to switch)
run: setup
	$(BIN)/kedro run $(if $(ENV),--env $(ENV),)

quick:
	$(MAKE) run ENV=quick

## test: the whole test suite
test: setup
	$(BIN)/python -m pytest -q

lint: $(VENV)/.installed
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

## viz: a static kedro-viz build in ./build (open build/index.html); `kedro viz run` serves it live
viz: $(VENV)/.installed
	$(BIN)/kedro viz build

## mlflow-ui: browse the runs in the project's MLflow store on http://127.0.0.1:5000
mlflow-ui: $(VENV)/.installed
	$(BIN)/mlflow ui --backend-store-uri sqlite:///mlflow.db --port 5000

## compare: the methods of the latest run side by side (MLflow child runs, one per method)
compare: $(VENV)/.installed
	$(BIN)/python -m spire_pipeline.compare

benchmark: setup
	for b in benchmarks/[!_]*.py; do $(BIN)/python $$b || exit 1; done

## clean: temporary files, builds and the MLflow store (mlflow.db and mlruns/ go together)
clean:
	rm -rf tmp build mlruns mlflow.db
