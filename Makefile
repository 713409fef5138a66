# One entry point for humans and CI. `make run` chats on the embedded model; `make test` runs every check.
VENV ?= .venv
BIN := $(VENV)/bin
export VSTREAMER_VENV := $(VENV)

.PHONY: run chat install install-dev check format test test-fast bench clean

run: install                      ## install and chat with the default persona on the embedded model
	$(BIN)/vstreamer chat

chat: run

install:
	scripts/install.sh local

install-dev:
	scripts/install.sh local,dev

check: install-dev                ## formatting, lint, types
	$(BIN)/ruff format --check src tests bench
	$(BIN)/ruff check src tests bench
	$(BIN)/mypy

format: install-dev
	$(BIN)/ruff format src tests bench
	$(BIN)/ruff check --fix src tests bench

test: check                       ## everything CI runs: checks, unit and integration tests
	$(BIN)/python -m pytest

test-fast: install-dev            ## unit tests only
	$(BIN)/python -m pytest -m "not integration"

bench: install-dev
	$(BIN)/python bench/bench_engine_throughput.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
