# The two commands of the README: `make demo` and `make test`. Both build .venv first.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast lint format postgres bench bench-deps head stop-head screenshot clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

# torch 2.13.0 first: on this machine's kind it is a CPU wheel on disk, and any other torch
# requirement without it already installed pulls a CUDA build of several GB.
$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/raymaas demo

# Lint first: a minute of pytest is not worth spending on a tree ruff already refuses.
# --durations=15: every run's log says where its time went.
test: lint postgres
	$(PY) -m pytest tests --durations=15

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

# What needs no training run and no Serve application (specs, protocol parsing, plans,
# metrics, drift math, CLI refusals, space checks): a few minutes, for iterating.
test-fast: $(STAMP) postgres
	$(PY) -m pytest tests -m "not slow" --durations=15

# PostgreSQL's server binaries, for the tests that run the MLflow server on a real database
# (tests/postgres.py starts a throwaway server of its own; this starts none): Debian's package
# when they are missing, which needs root (CI is).
PG_INITDB ?= /usr/lib/postgresql/*/bin/initdb
postgres:
	@if ! ls $(PG_INITDB) >/dev/null 2>&1; then \
		echo "make: installing Debian's postgresql (its server binaries are missing)"; \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null; } \
			|| { echo "make: could not install postgresql; as root: apt-get install postgresql" >&2; exit 1; }; \
	fi

# docs/mlflow-run.png and docs/mlflow-model.png from the project's store (after `make demo`); needs Debian's chromium.
screenshot: $(STAMP)
	$(PY) docs/screenshot.py

bench: $(STAMP)
	$(PY) bench/train_overhead.py

# The benchmarks' peers (the `bench` extra): bench/rl_time_to_solve.py's Stable-Baselines3.
bench-deps: $(STAMP)
	$(PY) -m pip install --quiet -e '.[test,bench]'

# A local head for the `ray job submit` workflow. Jobs inherit its environment, so their
# runs land in this project's MLflow store rather than in the job's temporary folder.
# PATH: a job driver runs `python` as the head finds it, which must be this venv's.
head: $(STAMP)
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH RAYMAAS_HOME=$(CURDIR) $(VENV)/bin/ray start --head --num-cpus=4 --dashboard-host=127.0.0.1 --disable-usage-stats
	@echo "submit with: RAY_AUTH_MODE=token $(VENV)/bin/ray job submit --address http://127.0.0.1:8265 --working-dir . -- python -m jobs.supervised jobs/specs/digits_mlp.yaml"

stop-head:
	$(VENV)/bin/ray stop

clean:
	rm -rf $(VENV) build *.egg-info
