# fer-report: the front door. `make` prints this help; `make report` and `make test` set up .venv themselves.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
DATA ?=
PROFILE ?=
DEVICE ?= auto
NOTEBOOKS ?=
RETRAIN ?=

.DEFAULT_GOAL := help
.PHONY: help report test lint lab bench synth clean

help: ## show this help
	@echo "fer-report: a reproducible FER2013 facial-expression report"
	@echo
	@grep -hE '^[a-z]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-8s %s\n", $$1, $$2}'
	@echo
	@echo "Variables: DATA=path/to/fer2013 (default: ./data if present, else synthetic demo data)"
	@echo "           PROFILE=quick|full|long   DEVICE=auto|cpu|cuda   NOTEBOOKS=\"02 05\" (rebuild only these pages)"
	@echo "           RETRAIN=1 (train this data's own model even where the shipped model in report/fer2013/model serves it)"

# the environment is rebuilt when requirements.txt is newer than it
$(VENV)/.installed: requirements.txt pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	$(PY) -m ipykernel install --sys-prefix --name python3 >/dev/null
	@touch $@

report: $(VENV)/.installed ## render report/<dataset>/ (from the shipped model, or trains once and caches the run)
	$(PY) -m fer_lib report $(if $(DATA),--data $(DATA)) $(if $(PROFILE),--profile $(PROFILE)) --device $(DEVICE) $(if $(NOTEBOOKS),--notebooks $(NOTEBOOKS)) $(if $(RETRAIN),--retrain)

# one worker per core, each with one thread (two-thread torch ops in two workers contend for the cores and run
# slower than one worker); whole files per worker, in the order conftest.py gives (slowest first)
test: $(VENV)/.installed ## run the test suite (pytest with the user journeys, about 2.5 minutes on 2 cores)
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -n auto --dist loadfile --no-loadscope-reorder tests

lint: $(VENV)/.installed ## check the code and notebooks with ruff (settings in pyproject.toml)
	$(VENV)/bin/ruff check fer_lib tests notebooks

lab: $(VENV)/.installed ## open JupyterLab on notebooks/
	$(VENV)/bin/jupyter lab notebooks/

bench: $(VENV)/.installed ## measure training throughput and CSV load time
	$(PY) -m fer_lib bench $(if $(DATA),--data $(DATA))

synth: $(VENV)/.installed ## write the synthetic dataset to data/synthetic/
	$(PY) -m fer_lib synth --out data/synthetic

clean: ## remove the synthetic demo report and cached runs (keeps .venv and report/fer2013)
	rm -rf report/synthetic runs/synthetic-* .pytest_cache
