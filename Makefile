# The README's two commands: `make demo` and `make test`. Both run `make setup` first.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: setup demo test bench up down clean

setup:
	@bash infra/setup.sh

demo: setup
	@$(VENV)/bin/transcode demo

test:
	@bash infra/setup.sh --test
	@$(PY) -m pytest $(PYTEST_ARGS)

bench: setup
	@$(PY) benchmarks/bench_core.py

up: setup
	@$(VENV)/bin/transcode up

down:
	@$(VENV)/bin/transcode down

clean: down
	rm -rf .data
