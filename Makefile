# The two set-up commands of the README: `make run` and `make test`. Both go through `make venv`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv run test lint bench engines clean

venv: $(STAMP)

# Re-installs only when pyproject.toml changed since the last install.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# The service with its embedded default: API + dashboard on http://127.0.0.1:8000, one worker process,
# SQLite, Celery's filesystem broker and artifacts under ./data. Ctrl-C stops both.
run: venv
	$(BIN)/slimformer serve

# Two pytest processes, each test file whole in one (its module fixtures built once): half the suite
# waits on subprocesses, services and engines, so two keep both cores busy.
test: venv
	$(BIN)/python -m pytest -n 2 --dist loadfile

lint: venv
	$(BIN)/ruff check slimformer service workers testkit tests bench
	$(BIN)/ruff format --check slimformer service workers testkit tests bench

# The serving engines (llama.cpp with its GGUF converter; vLLM's CPU build) and the quantization
# engine (optimum's GPTQ over gptqmodel, compressed-tensors), each in its own venv under
# $${SLIMFORMER_ENGINES:-~/.cache/slimformer/engines}; built once (llama.cpp compiles for 15-20
# minutes on 2 cores, gptq takes about 2), then instant. The engine tests skip, saying why, without them.
engines:
	PYTHON=$(PYTHON) deploy/engines/llama-cpp.sh
	PYTHON=$(PYTHON) deploy/engines/vllm.sh
	PYTHON=$(PYTHON) deploy/engines/gptq.sh

bench: venv
	$(BIN)/python bench/pruning_sweep.py

clean:
	rm -rf runs bench/results test-artifacts
