# One entry point for humans and CI. `make run` opens the web chat on the embedded model; `make test` runs every check.
VENV ?= .venv
BIN := $(VENV)/bin
export VSTREAMER_VENV := $(VENV)
# Models the vLLM tier serves. Qwen2.5-0.5B (the production tokenizer family) adds about 1.5 minutes per run;
# `make test VLLM_MODELS=smollm2` leaves it out (its tests then skip with the reason).
VLLM_MODELS ?= smollm2 qwen2.5-0.5b

.PHONY: run chat serve install install-dev system-deps check format test test-fast test-vllm vllm-cpu bench \
	bench-backends clean

run: install                      ## install and open the web chat on the embedded model (http://127.0.0.1:8310)
	$(BIN)/vstreamer ui

chat: install                     ## the same persona in the terminal
	$(BIN)/vstreamer chat

serve: install                    ## the OpenAI-compatible gateway (http://127.0.0.1:8320/v1, local only)
	$(BIN)/vstreamer serve --no-auth

install:
	scripts/install.sh local,ui,server

install-dev:
	scripts/install.sh local,dev

system-deps:                      ## PostgreSQL and Chromium for the integration tests (apt-get, as root)
	scripts/install-system.sh

check: install-dev                ## formatting, lint, types
	$(BIN)/ruff format --check src tests bench
	$(BIN)/ruff check src tests bench
	$(BIN)/mypy

format: install-dev
	$(BIN)/ruff format src tests bench
	$(BIN)/ruff check --fix src tests bench

vllm-cpu: install-dev             ## the vLLM CPU environment and models, cached in ~/.cache/vstreamer/vllm-cpu
	$(if $(filter qwen2.5-0.5b,$(VLLM_MODELS)),scripts/install.sh qwen)
	@for model in $(VLLM_MODELS); do scripts/vllm-cpu setup --model $$model || exit 1; done

test: system-deps check vllm-cpu  ## everything CI runs: checks, unit, integration and vLLM tests
	$(BIN)/python -m pytest

test-vllm: vllm-cpu               ## only the tests against the real vLLM CPU server
	$(BIN)/python -m pytest -m vllm

test-fast: install-dev            ## unit tests only
	$(BIN)/python -m pytest -m "not integration"

bench: install-dev
	$(BIN)/python bench/bench_engine_throughput.py

bench-backends: vllm-cpu          ## TTFT and tok/s: embedded vs llama.cpp server vs vLLM CPU, one run
	$(BIN)/python bench/bench_backends.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
