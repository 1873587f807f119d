# The README's two commands: `make demo` and `make test`. Both run `make setup` first.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: setup demo test chaos load bench up down clean image

setup:
	@bash infra/setup.sh

demo: setup
	@$(VENV)/bin/transcode demo

test:
	@bash infra/setup.sh --test
	@bash infra/audit.sh
	@bash infra/docker-setup.sh
	@$(PY) -m pytest $(PYTEST_ARGS)

# failure injection only (the full suite runs it too): docs/reliability.md
chaos:
	@bash infra/setup.sh --test
	@$(PY) -m pytest -m chaos $(PYTEST_ARGS)

# 1,000 small videos through the ingest API in one burst, on a stack of its own (PostgreSQL
# under Prefect): figures in benchmarks/results-load.json, plot docs/img/load.png. CI runs 50.
load:
	@bash infra/setup.sh --test
	@TRANSCODE_LOAD_VIDEOS=$${TRANSCODE_LOAD_VIDEOS:-1000} TRANSCODE_LOAD_OUT=benchmarks \
		TRANSCODE_LOAD_PLOT=docs/img/load.png $(PY) -m pytest -m load -s $(PYTEST_ARGS)

# issue 8's benchmarks (about 2.4 h on 2 cores; BENCH_ARGS="--only ladder" for one part): figures in
# benchmarks/results.json, plots docs/img/bench-*.png, written up in docs/performance.md
bench: setup
	@$(PY) benchmarks/bench.py $(BENCH_ARGS)

up: setup
	@$(VENV)/bin/transcode up

down:
	@$(VENV)/bin/transcode down

clean: down
	rm -rf .data

# the project image without an image registry: a Debian base from mmdebstrap, then the Dockerfile
# (needs a running Docker engine; `python -m deployments.docker_host start --root DIR` starts one)
image: setup
	@bash infra/docker-setup.sh
	@$(PY) -m deployments.docker_host build-base
	@$(PY) -m deployments.docker_host build-image
