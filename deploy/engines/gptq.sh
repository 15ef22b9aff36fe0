#!/usr/bin/env bash
# Builds the quantization engine environment slimformer's `export.quantize` uses: transformers'
# GPTQConfig path (optimum.gptq over gptqmodel) for gptq-int4, and compressed-tensors for w8a8. gptqmodel
# pins numpy==2.2.6 and wants a torch of its own choosing, so it lives in a venv of its own.
# Idempotent: prints the folder and exits at once when "$ENGINE/.complete" exists.
#   ENGINE  the venv (default ${SLIMFORMER_ENGINES:-~/.cache/slimformer/engines}/gptq)
#   PYTHON  the interpreter to build it with (default python3)
# gptqmodel is a source distribution; it compiles a small C++ extension with g++ and ninja the first
# time it packs weights, so both must be on PATH (the build checks, and compiles it once here).
set -euo pipefail
OPTIMUM=2.3.0
GPTQMODEL=7.6.0
# the transformers release slimformer's own venv runs: a quantized folder is written and read by the same
TRANSFORMERS=5.25.0
COMPRESSED_TENSORS="compressed-tensors>=0.20,<0.21"
ENGINE=${ENGINE:-${SLIMFORMER_ENGINES:-${XDG_CACHE_HOME:-$HOME/.cache}/slimformer/engines}/gptq}
PYTHON=${PYTHON:-python3}
[ -f "$ENGINE/.complete" ] && { echo "$ENGINE"; exit 0; }
for tool in g++ ninja; do
    command -v "$tool" >/dev/null \
        || { echo "$tool is needed for gptqmodel's extension (apt-get install g++ ninja-build)" >&2; exit 1; }
done
start=$(date +%s)
[ -x "$ENGINE/bin/python" ] || "$PYTHON" -m venv "$ENGINE"
pip="$ENGINE/bin/python -m pip"
$pip install -q --upgrade pip
# torch exactly first: the CPU build on this machine's disk (a looser pin downloads a CUDA build)
$pip install -q torch==2.13.0
"$ENGINE/bin/python" -c "import sys, torch; sys.exit(torch.__version__ != '2.13.0+cpu')" \
    || { echo "torch in $ENGINE is not the 2.13.0 CPU build" >&2; exit 1; }
echo "torch==2.13.0+cpu" > "$ENGINE/constraints.txt"
$pip install -q -c "$ENGINE/constraints.txt" "transformers==$TRANSFORMERS" "optimum==$OPTIMUM" \
    "$COMPRESSED_TENSORS" accelerate safetensors
# gptqmodel builds from its sdist against the torch above (no isolated build that would fetch another)
$pip install -q -c "$ENGINE/constraints.txt" setuptools wheel ninja
$pip install -q -c "$ENGINE/constraints.txt" --no-build-isolation "gptqmodel==$GPTQMODEL"
$pip uninstall -q -y torchvision torchaudio torchcodec || true
"$ENGINE/bin/python" -c "
import sys, torch, transformers, optimum.gptq, gptqmodel, compressed_tensors
print('transformers', transformers.__version__, 'gptqmodel', gptqmodel.__version__,
      'compressed-tensors', compressed_tensors.__version__, file=sys.stderr)
sys.exit(transformers.__version__ != '$TRANSFORMERS' or torch.__version__ != '2.13.0+cpu')
" || { echo "the versions in $ENGINE are not the pinned ones" >&2; exit 1; }
# one 4-bit quantization of a tiny random Llama: compiles gptqmodel's packing extension into the
# engine's folder (where slimformer points it) and checks that the whole path runs
GPTQMODEL_TORCH_EXTENSIONS_DIR="$ENGINE/extensions" "$ENGINE/bin/python" - <<'PY' >&2
import tempfile, torch, transformers
config = transformers.LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128,
                                  num_hidden_layers=1, num_attention_heads=4, head_dim=16)
with tempfile.TemporaryDirectory() as folder:
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(config).save_pretrained(folder)
    windows = [{"input_ids": [torch.randint(128, (32,)).tolist()], "attention_mask": [[1] * 32]}
               for _ in range(4)]
    gptq = transformers.GPTQConfig(bits=4, group_size=64, sym=True, dataset=windows)
    transformers.AutoModelForCausalLM.from_pretrained(folder, quantization_config=gptq)
print("gptq-int4 quantized a tiny Llama")
PY
touch "$ENGINE/.complete"
echo "built $ENGINE in $(( $(date +%s) - start )) s" >&2
echo "$ENGINE"
