"""Serving engines outside PyTorch: GGUF export with llama.cpp's own tools, and measurements in
llama.cpp and vLLM.

Each engine lives in a virtual environment of its own (vLLM pins its own transformers; llama.cpp is
compiled from source), built by ``deploy/engines/<name>.sh`` (``make engines``) under
``$SLIMFORMER_ENGINES`` (default ``~/.cache/slimformer/engines``). slimformer never imports an
engine: it runs the engine's Python in a subprocess with a short script of ours and reads JSON back.
Inside :func:`kept_engines`, vLLM measurements share one such process instead of starting one each
(importing vLLM and shutting it down take most of a call on a small model).

GGUF files are written by llama.cpp's converter (``convert_hf_to_gguf.py``, which ships with the
llama.cpp source inside llama-cpp-python's source distribution): F16 and Q8_0 directly, Q4_K_M by
llama.cpp's quantizer (``llama_model_quantize``) from the F16 file. The converter reads stock
configs (the ``uniform`` layout and depth-pruned models of the Llama, Mistral and Qwen2/3 families)
and the ``nemotron_nas`` layout (``DeciLMForCausalLM``, per-layer shapes in ``block_configs``),
which vLLM also serves.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from slimformer.errors import ExportError
from slimformer.families import GGUF_FAMILIES

ENGINES = ("llama-cpp", "vllm")
GGUF_TYPES = ("f16", "q8_0", "q4_k_m")


class EngineMissing(ExportError):
    """An engine's environment is not built on this machine."""


def engines_home() -> Path:
    base = os.environ.get("SLIMFORMER_ENGINES")
    if base:
        return Path(base)
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return cache / "slimformer" / "engines"


def engine_python(name: str) -> Path:
    """The Python of a built engine environment.

    Raises:
        EngineMissing: the environment is not built (the message says how to build it).
    """
    if name not in ENGINES:
        raise ValueError(f"unknown engine {name!r}; choose {', '.join(ENGINES)}")
    env = engines_home() / name
    python = env / "bin" / "python"
    if not (env / ".complete").is_file() or not python.exists():
        raise EngineMissing(
            f"the {name} engine is not installed at {env}: build it with `make engines` "
            f"(deploy/engines/{name}.sh; set SLIMFORMER_ENGINES to keep engines elsewhere)",
            details={"engine": name, "path": str(env)},
        )
    return python


def _run(name: str, args: list[str], *, timeout: float, what: str, env: dict | None = None) -> str:
    python = engine_python(name)
    env = os.environ | {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"} | (env or {})
    done = subprocess.run(
        [str(python), *args], capture_output=True, text=True, timeout=timeout, env=env
    )
    if done.returncode:
        tail = "\n".join(done.stderr.strip().splitlines()[-8:])
        raise ExportError(f"{what} failed in the {name} engine:\n{tail}")
    return done.stdout


class _KeptEngine:
    """One engine process answering requests, one JSON line each, until closed (its stderr in a
    temporary file, read back when a request fails)."""

    def __init__(self, name: str, script: str, env: dict) -> None:
        self.name = name
        self.stderr = tempfile.TemporaryFile()
        self.popen = subprocess.Popen(
            [str(engine_python(name)), "-c", script, "--serve"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.stderr,
            text=True,
            env=os.environ | {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"} | env,
        )
        self.lock = threading.Lock()

    def alive(self) -> bool:
        return self.popen.poll() is None

    def _stderr_tail(self) -> str:
        self.stderr.seek(0)
        lines = self.stderr.read().decode(errors="replace").strip().splitlines()
        return "\n".join(lines[-8:])

    def request(self, payload: dict, *, timeout: float, what: str) -> dict:
        with self.lock:
            watchdog = threading.Timer(timeout, self.popen.kill)
            watchdog.start()
            try:
                self.popen.stdin.write(json.dumps(payload) + "\n")
                self.popen.stdin.flush()
                for line in self.popen.stdout:
                    if line.startswith("SLIMFORMER_RESULT "):
                        return json.loads(line.removeprefix("SLIMFORMER_RESULT "))
                    if line.startswith("SLIMFORMER_ERROR "):
                        trace = json.loads(line.removeprefix("SLIMFORMER_ERROR "))
                        tail = "\n".join(trace.strip().splitlines()[-8:])
                        raise ExportError(f"{what} failed in the {self.name} engine:\n{tail}")
            except (BrokenPipeError, OSError):
                pass
            finally:
                watchdog.cancel()
            self.popen.wait()
            raise ExportError(f"{what} failed in the {self.name} engine:\n{self._stderr_tail()}")

    def close(self) -> None:
        if self.alive():
            self.popen.stdin.close()
            try:
                self.popen.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        self.popen.stdout.close()
        self.stderr.close()


_kept: dict[str, _KeptEngine] | None = None
_kept_lock = threading.Lock()


@contextmanager
def kept_engines() -> Iterator[None]:
    """Inside, :func:`vllm_scores` calls share one vLLM process, started at the first call and
    stopped on leaving: for runs that measure many folders (tests, benchmarks). Each call still
    loads its folder afresh; what is shared is vLLM's import and shutdown, about 20 s a call on 2
    cores. Nested uses share the outermost one's process."""
    global _kept
    with _kept_lock:
        outermost = _kept is None
        if outermost:
            _kept = {}
    try:
        yield
    finally:
        if outermost:
            with _kept_lock:
                kept, _kept = _kept, None
            for engine in kept.values():
                engine.close()


def _kept_engine(name: str, script: str, env: dict) -> _KeptEngine | None:
    """The kept process of ``name`` inside :func:`kept_engines` (started, or started again after
    a crash, here), or None outside."""
    with _kept_lock:
        if _kept is None:
            return None
        engine = _kept.get(name)
        if engine is None or not engine.alive():
            if engine is not None:
                engine.close()
            engine = _kept[name] = _KeptEngine(name, script, env)
        return engine


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
            _run(
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
    _run(
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
        out = _run(
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


_VLLM_SCORE = """
import gc, json, os, sys, time
from vllm import LLM, SamplingParams
from vllm.inputs import TokensPrompt

def score(request):
    windows = request["windows"]
    seq = max(len(w) for w in windows)
    start = time.perf_counter()
    llm = LLM(model=request["model"], tokenizer=request["model"], dtype="float32",
              trust_remote_code=request["trust_remote_code"],
              max_model_len=seq, enforce_eager=True,
              kv_cache_memory_bytes=request["kv_cache_mb"] << 20, max_logprobs=-1, seed=0,
              generation_config="vllm")
    load = time.perf_counter() - start
    # All but the last token are the prompt; the last token's log probability is read from the one
    # generated position (every token's), so a window as long as the model's position limit fits.
    params = SamplingParams(temperature=0.0, max_tokens=1, prompt_logprobs=1, logprobs=-1,
                            detokenize=False)
    outs = llm.generate([TokensPrompt(prompt_token_ids=w[:-1]) for w in windows], params,
                        use_tqdm=False)
    nll, hits, count, logprobs = 0.0, 0, 0, []
    for ids, out in zip(windows, outs):
        row = []
        entries = [out.prompt_logprobs[pos][ids[pos]] for pos in range(1, len(ids) - 1)]
        entries.append(out.outputs[0].logprobs[0][ids[-1]])
        for entry in entries:
            nll -= entry.logprob
            hits += int(entry.rank == 1)
            count += 1
            row.append(entry.logprob)
        logprobs.append(row)
    result = {"nll_sum": nll, "hits": hits, "tokens": count, "logprobs": logprobs, "load_s": load}
    bench = request.get("bench")
    if bench:
        heads = [w[: bench["prompt"]] for w in windows[: bench["batch"]]]
        prompts = [TokensPrompt(prompt_token_ids=h) for h in heads]
        greedy = SamplingParams(temperature=0.0, max_tokens=bench["new_tokens"], ignore_eos=True,
                                detokenize=False)
        llm.generate(prompts[:1], SamplingParams(temperature=0.0, max_tokens=2), use_tqdm=False)
        start = time.perf_counter()
        made = llm.generate(prompts, greedy, use_tqdm=False)
        seconds = time.perf_counter() - start
        new = sum(len(o.outputs[0].token_ids) for o in made)
        result["bench"] = {"new_tokens": new, "seconds": seconds, "tokens_per_s": new / seconds}
    del llm
    gc.collect()
    return result

if sys.argv[1] == "--serve":  # kept running: one request per stdin line, one answer each
    import traceback
    for line in sys.stdin:
        try:
            answer = "SLIMFORMER_RESULT " + json.dumps(score(json.loads(line)))
        except Exception:
            answer = "SLIMFORMER_ERROR " + json.dumps(traceback.format_exc())
        print(answer, flush=True)
else:
    print("SLIMFORMER_RESULT " + json.dumps(score(json.load(open(sys.argv[1])))))
"""


def vllm_scores(
    folder: str | Path,
    windows: list[list[int]],
    *,
    kv_cache_mb: int = 256,
    bench: dict | None = None,
) -> dict:
    """Next-token NLL, greedy hits (the real token ranked first) and token count of a saved folder
    over token windows, measured by vLLM's CPU build in its engine environment, plus the log
    probability of every real next token (``logprobs``, to compare with PyTorch). A folder in the
    nemotron_nas layout is loaded with ``trust_remote_code`` (its config class is in the folder's
    ``modeling_slimformer.py``; vLLM runs its own Nemotron-NAS model code).

    vLLM runs in one process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``) with one OpenMP thread: on 2
    cores its multiprocess mode takes 25-40 s to start and two threads oversubscribe them.
    ``bench={"batch": 8, "prompt": 32, "new_tokens": 64}`` also times greedy generation.
    Inside :func:`kept_engines` the folder is measured in the kept vLLM process.

    Raises:
        EngineMissing: the vllm engine is not built.
        ExportError: vLLM could not load or run the folder.
    """
    config = json.loads((Path(folder) / "config.json").read_text())
    request = {
        "model": str(Path(folder).resolve()),
        "windows": windows,
        "kv_cache_mb": kv_cache_mb,
        # the nemotron_nas layout's config class is slimformer's (vLLM reads the shapes itself)
        "trust_remote_code": bool(config.get("auto_map")),
    }
    if bench:
        request["bench"] = bench
    env = {
        "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
        "OMP_NUM_THREADS": "1",
        "VLLM_NO_USAGE_STATS": "1",
        "DO_NOT_TRACK": "1",
    }
    kept = _kept_engine("vllm", _VLLM_SCORE, env)
    if kept is not None:
        return kept.request(request, timeout=3600, what="vLLM scoring")
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as handle:
        json.dump(request, handle)
    try:
        out = _run(
            "vllm", ["-c", _VLLM_SCORE, handle.name], timeout=3600, what="vLLM scoring", env=env
        )
    finally:
        os.unlink(handle.name)
    line = next(x for x in reversed(out.splitlines()) if x.startswith("SLIMFORMER_RESULT "))
    return json.loads(line.removeprefix("SLIMFORMER_RESULT "))
