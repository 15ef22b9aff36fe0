"""llama.cpp: GGUF export with its own converter and quantizer, and perplexity measured in it."""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

from slimformer.engines.runtime import EngineMissing, engine_python, engines_home, run_engine
from slimformer.errors import ExportError
from slimformer.families import GGUF_FAMILIES

GGUF_TYPES = ("f16", "q8_0", "q4_k_m")


def check_gguf_convertible(folder: Path) -> None:
    """Refuse, before any work, a folder llama.cpp's converter cannot read as its family.

    Raises:
        ExportError: a per-layer folder (``auto_map``) or a family the export does not cover.
    """
    config = json.loads((Path(folder) / "config.json").read_text())
    nemotron = config.get("architectures") == ["DeciLMForCausalLM"] and config.get("block_configs")
    if not nemotron and (config.get("auto_map") or config.get("per_layer_config")):
        raise ExportError(
            "GGUF export needs a stock config: the per_layer layout gives layers different shapes, "
            "which llama.cpp reads only for Nemotron-NAS models. Prune with layout 'nemotron_nas' "
            "(Llama) or 'uniform' (or drop whole layers only) for a GGUF file.",
            details={"field": "layout"},
        )
    family = config.get("model_type")
    heads, hidden = config.get("num_attention_heads"), config.get("hidden_size")
    if nemotron and config.get("head_dim") not in (None, hidden // heads):
        raise ExportError(
            f"llama.cpp's Nemotron-NAS converter takes the head size as hidden_size / heads "
            f"({hidden // heads}); this model's heads have {config['head_dim']} dimensions",
            details={"head_dim": config["head_dim"]},
        )
    if family not in GGUF_FAMILIES:  # the families with a GGUF architecture
        raise ExportError(
            f"GGUF export covers {', '.join(GGUF_FAMILIES)}; this model is {family!r}",
            details={"model_type": family},
        )


_QUANTIZE = """
import sys, llama_cpp
params = llama_cpp.llama_model_quantize_default_params()
params.ftype = getattr(llama_cpp, "LLAMA_FTYPE_MOSTLY_" + sys.argv[3])
params.nthread = 0
code = llama_cpp.llama_model_quantize(sys.argv[1].encode(), sys.argv[2].encode(), params)
sys.exit(code)
"""


def export_gguf(
    folder: str | Path, out_dir: str | Path, types: tuple[str, ...] = ("f16", "q8_0")
) -> list[dict]:
    """Write ``model-<TYPE>.gguf`` files for ``folder`` (a saved Hugging Face folder) into
    ``out_dir`` with llama.cpp's converter and quantizer.

    Returns:
        One ``{"type", "file", "size_bytes", "seconds"}`` per type, in the order given.

    Raises:
        ExportError: an unknown type, a folder the converter cannot read, a converter failure.
        EngineMissing: the llama.cpp engine is not built.
    """
    folder, out_dir = Path(folder), Path(out_dir)
    unknown = [t for t in types if t not in GGUF_TYPES]
    if unknown:
        raise ExportError(f"unknown GGUF type(s) {unknown}; choose from {', '.join(GGUF_TYPES)}")
    check_gguf_convertible(folder)
    converter = _converter()
    out_dir.mkdir(parents=True, exist_ok=True)
    results = []
    for kind in types:
        target = out_dir / f"model-{kind.upper()}.gguf"
        start = time.perf_counter()
        if kind == "q4_k_m":
            f16 = out_dir / "model-F16.gguf"
            made_f16 = not f16.exists()
            if made_f16:
                _convert(converter, folder, f16, "f16")
            run_engine(
                "llama-cpp",
                ["-c", _QUANTIZE, str(f16), str(target), "Q4_K_M"],
                timeout=3600,
                what="Q4_K_M quantization",
            )
            if made_f16 and "f16" not in types:
                f16.unlink()
        else:
            _convert(converter, folder, target, kind)
        results.append(
            {
                "type": kind.upper(),
                "file": target.name,
                "size_bytes": target.stat().st_size,
                "seconds": round(time.perf_counter() - start, 1),
            }
        )
    return results


def _converter() -> Path:
    engine_python("llama-cpp")
    found = sorted(
        (engines_home() / "llama-cpp" / "src").glob("*/vendor/llama.cpp/convert_hf_to_gguf.py")
    )
    if not found:
        raise EngineMissing(
            "llama.cpp's converter (convert_hf_to_gguf.py) is missing from the llama-cpp engine; "
            "rebuild it with `make engines`"
        )
    return found[-1]


# llama.cpp's converter, run as its own ``main()``. One step is adjusted: its Nemotron-NAS class
# reads every vocabulary but Llama 3's as a sentencepiece-style Llama vocabulary, so a byte-level
# BPE tokenizer (SmolLM2's, GPT-2's) fails there; it then takes the converter's own GPT-2 path, as
# the converter's Llama class does. Tensors, metadata and file format stay the converter's.
_CONVERT = """
import sys
sys.path.insert(0, sys.argv[1])
sys.argv = sys.argv[2:]
import convert_hf_to_gguf as convert
from conversion.deci import DeciModel
llama_vocab = DeciModel.set_vocab
def set_vocab(self):
    try:
        llama_vocab(self)
    except (FileNotFoundError, TypeError):
        self._set_vocab_gpt2()
DeciModel.set_vocab = set_vocab
convert.main()
"""


def _convert(converter: Path, folder: Path, target: Path, outtype: str) -> None:
    run_engine(
        "llama-cpp",
        [
            "-c",
            _CONVERT,
            str(converter.parent),
            str(converter),
            str(folder),
            "--outtype",
            outtype,
            "--outfile",
            str(target),
        ],
        timeout=3600,
        what=f"GGUF conversion ({outtype})",
    )


_LLAMA_CPP_SCORE = """
import json, sys, numpy as np
from llama_cpp import Llama
path, windows = sys.argv[1], json.load(open(sys.argv[2]))
seq = max(len(w) for w in windows)
llm = Llama(model_path=path, logits_all=True, n_ctx=max(seq, 64), n_batch=seq, n_ubatch=seq,
            n_threads=int(sys.argv[3]), verbose=False, seed=0)
nll, hits, count, logits_out = 0.0, 0, 0, []
for ids in windows:
    llm.reset()
    llm.eval(ids)
    logits = np.array(llm.scores[: len(ids)], dtype=np.float64)[:-1]
    target = np.array(ids[1:])
    shifted = logits - logits.max(-1, keepdims=True)
    logp = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
    nll -= float(logp[np.arange(len(target)), target].sum())
    hits += int((logits.argmax(-1) == target).sum())
    count += len(target)
    if len(logits_out) < int(sys.argv[4]):
        logits_out.append(np.array(llm.scores[: len(ids)]).tolist())
result = {"nll_sum": nll, "hits": hits, "tokens": count, "logits": logits_out}
new_tokens = int(sys.argv[5])
if new_tokens:  # one stream, greedy, from the first window's first 32 tokens, exactly N new
    import time
    llm.reset()
    new = 0
    start = time.perf_counter()
    for _ in llm.generate(windows[0][:32], temp=0.0, top_k=1, reset=True):  # never stops at EOS
        new += 1
        if new == new_tokens:
            break
    seconds = time.perf_counter() - start
    result["bench"] = {"new_tokens": new, "seconds": seconds, "tokens_per_s": new / seconds}
print(json.dumps(result))
"""


def llama_cpp_scores(
    gguf: str | Path,
    windows: list[list[int]],
    *,
    threads: int = 2,
    keep_logits: int = 0,
    bench_tokens: int = 0,
) -> dict:
    """Next-token NLL, greedy hits and token count of a GGUF model over token windows, measured by
    llama.cpp (through llama-cpp-python) in its engine environment. ``keep_logits``: also return
    the full logits of the first N windows (to compare with PyTorch); ``bench_tokens``: also time
    greedy generation of that many tokens, one stream."""
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as handle:
        json.dump(windows, handle)
    try:
        out = run_engine(
            "llama-cpp",
            [
                "-c",
                _LLAMA_CPP_SCORE,
                str(gguf),
                handle.name,
                str(threads),
                str(keep_logits),
                str(bench_tokens),
            ],
            timeout=3600,
            what=f"scoring {Path(gguf).name}",
        )
    finally:
        os.unlink(handle.name)
    return json.loads(out.strip().splitlines()[-1])
