#!/usr/bin/env bash
# Builds the llama.cpp engine environment slimformer's GGUF export and its integration tests use: a
# venv with llama.cpp's own converter (convert_hf_to_gguf.py and gguf-py, from the llama-cpp-python
# source distribution) and llama-cpp-python (llama.cpp compiled from that source, CPU only).
# Idempotent: prints the folder and exits at once when "$ENGINE/.complete" exists.
#   ENGINE  the venv (default ${SLIMFORMER_ENGINES:-~/.cache/slimformer/engines}/llama-cpp)
#   PYTHON  the interpreter to build it with (default python3)
# The compile takes 15-20 minutes on 2 cores; the wheel is kept in "$ENGINE/wheels" for rebuilds.
set -euo pipefail
VERSION=0.3.36
ENGINE=${ENGINE:-${SLIMFORMER_ENGINES:-${XDG_CACHE_HOME:-$HOME/.cache}/slimformer/engines}/llama-cpp}
PYTHON=${PYTHON:-python3}
[ -f "$ENGINE/.complete" ] && { echo "$ENGINE"; exit 0; }
start=$(date +%s)
[ -x "$ENGINE/bin/python" ] || "$PYTHON" -m venv "$ENGINE"
pip="$ENGINE/bin/python -m pip"
$pip install -q --upgrade pip
# torch exactly: the CPU build this machine keeps on disk (a looser pin downloads a CUDA build)
echo "torch==2.13.0" > "$ENGINE/constraints.txt"
$pip install -q -c "$ENGINE/constraints.txt" torch==2.13.0 numpy sentencepiece safetensors protobuf \
    "transformers>=5.16,<6"
mkdir -p "$ENGINE/src" "$ENGINE/wheels"
sdist="$ENGINE/src/llama_cpp_python-$VERSION.tar.gz"
[ -f "$sdist" ] || $pip download -q --no-deps --no-binary :all: -d "$ENGINE/src" "llama-cpp-python==$VERSION"
[ -d "$ENGINE/src/llama_cpp_python-$VERSION" ] || tar xzf "$sdist" -C "$ENGINE/src"
$pip install -q "$ENGINE/src/llama_cpp_python-$VERSION/vendor/llama.cpp/gguf-py"
wheel=$(ls "$ENGINE"/wheels/llama_cpp_python-$VERSION-*.whl 2>/dev/null | head -n 1 || true)
if [ -z "$wheel" ]; then
    export CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-2}
    export CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON \
-DLLAVA_BUILD=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF \
-DLLAMA_BUILD_SERVER=OFF -DLLAMA_OPENSSL=OFF"
    $pip wheel -q --no-deps --no-cache-dir -w "$ENGINE/wheels" "$sdist"
    wheel=$(ls "$ENGINE"/wheels/llama_cpp_python-$VERSION-*.whl | head -n 1)
fi
$pip install -q -c "$ENGINE/constraints.txt" "$wheel"
"$ENGINE/bin/python" -c "import llama_cpp, gguf; print('llama_cpp', llama_cpp.__version__)" >&2
touch "$ENGINE/.complete"
echo "built $ENGINE in $(( $(date +%s) - start )) s" >&2
echo "$ENGINE"
