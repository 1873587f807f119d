# The README's two commands: `make demo` and `make test`. Both run `make setup` first.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: setup demo test chaos bench up down clean image

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

bench: setup
	@$(PY) benchmarks/bench_core.py

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
