"""Quantized copies of a written model folder, made and measured in the gptq engine environment:
``gptq-int4`` (transformers' ``GPTQConfig`` → optimum.gptq → gptqmodel) and ``w8a8``
(compressed-tensors' int8 format), each a folder that transformers and vLLM load as it is.

The engine's own script is :mod:`slimformer.engines.gptq_engine`; this side chooses the group size,
refuses widths that do not quantize (naming the layer and width), hands the calibration windows over
as token ids in a file, and checks each written folder by reloading it in a fresh process against
the outputs the quantizing process recorded after saving.
"""

from __future__ import annotations

import json
import math
import re
import tempfile
from collections.abc import Iterable
from pathlib import Path

from torch import nn

from slimformer.engines.runtime import engines_home, run_engine
from slimformer.errors import ExportError, InvalidSpec

ENGINE = "gptq"
SCRIPT = Path(__file__).with_name("gptq_engine.py")
QUANTIZED_DIR = "quantized"
# what vLLM's 4-bit CPU kernel and gptqmodel take: multiples of 32, at most 128, largest first
GROUP_SIZES = (128, 64, 32)
# a reload must reproduce what was quantized: the share of identical top-1 predictions (causal
# LMs) or the cosine of the last hidden states (encoders) on the probe windows
RELOAD_AGREEMENT = 0.98
PROBE_WINDOWS, PROBE_TOKENS = 2, 64
# The defaults, measured on SmolLM2-135M pruned 30% of the FFN (docs/serving.md, "Quantized
# copies"): gptq-int4's group (32, which every width gptq-int4 takes divides: x1.098 against x1.143
# at 64, with the clipping search), its Hessian dampening (a share of its mean diagonal), its
# clipping search (the norm of the rounding error each group's scale minimises, as GPTQ's
# reference code's --mse; 0: the scale fits the group's largest weight), and w8a8's SmoothQuant
# migration strength (0: plain round-to-nearest)
GPTQ_GROUP_SIZE = 32
GPTQ_DAMP_PERCENT = 0.01
GPTQ_CLIP_NORM = 2.4
W8A8_SMOOTHING = 0.5


def group_size_for(
    widths: dict[str, int], *, also: Iterable[int] = (), largest: int = GPTQ_GROUP_SIZE
) -> int:
    """The largest group size in :data:`GROUP_SIZES`, up to ``largest`` (by default
    :data:`GPTQ_GROUP_SIZE`), that divides every quantized linear's input width (``widths``:
    name → in_features) and each of ``also`` (widths pruning may produce, e.g. a head's dimension
    when heads are removed one by one).

    Raises:
        InvalidSpec: no group size of 32 or more divides them; the message names the layer and
            width that rules out 32.
    """
    if largest not in GROUP_SIZES:
        raise InvalidSpec(
            f"gptq-int4 group size {largest}: choose one of {', '.join(map(str, GROUP_SIZES))}",
            details={"field": "quantize", "group_size": largest},
        )
    named = dict(widths) | {f"a pruned width of {w}": w for w in also}
    for size in (s for s in GROUP_SIZES if s <= largest):
        if all(width % size == 0 for width in named.values()):
            return size
    name, width = next((n, w) for n, w in named.items() if w % GROUP_SIZES[-1])
    raise InvalidSpec(
        f"{name} has {width} inputs, not a multiple of {GROUP_SIZES[-1]}: gptq-int4 needs every "
        f"quantized linear's input width to be a multiple of {GROUP_SIZES[-1]} (and of the group "
        "size); prune to widths that are, or leave gptq-int4 out of export.quantize",
        details={"field": "quantize", "layer": name, "width": width},
    )


def block_path(model: nn.Module, layers: list[nn.Module]) -> str:
    """The dotted path of the module list that holds ``layers`` (``model.layers``,
    ``bert.encoder.layer``): the blocks GPTQ quantizes one by one."""
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) == len(layers):
            if all(a is b for a, b in zip(module, layers, strict=True)):
                return name
    raise ExportError("could not find the model's list of layers to quantize")


def linear_widths(model: nn.Module, blocks: str) -> dict[str, int]:
    """Input width of every linear inside the blocks: what GPTQ quantizes."""
    widths = {}
    for name, module in model.named_modules():
        if not name.startswith(blocks + "."):
            continue
        if isinstance(module, nn.Linear):
            widths[name] = module.in_features
        elif type(module).__name__ == "Conv1D":  # GPT-2's transposed linear
            widths[name] = module.weight.shape[0]
    return widths


def folder_widths(folder: Path, blocks: str) -> dict[str, int]:
    """:func:`linear_widths` read from the folder's safetensors headers (no weights loaded): every
    2-D weight under ``blocks.<i>.``."""
    from safetensors import safe_open

    pattern = re.compile(rf"^{re.escape(blocks)}\.\d+\..+\.weight$")
    widths = {}
    for path in sorted(Path(folder).glob("*.safetensors")):
        with safe_open(path, "pt") as handle:
            for key in handle.keys():
                shape = handle.get_slice(key).get_shape()
                if pattern.match(key) and len(shape) == 2:
                    widths[key.removesuffix(".weight")] = int(shape[1])
    if not widths:
        raise ExportError(f"no weights under {blocks} in {folder}")
    return widths


def _request(
    folder: Path, *, causal: bool, probe: list[list[int]], auto_class: str | None, **extra
) -> dict:
    config = json.loads((folder / "config.json").read_text())
    return {
        "model": str(folder.resolve()),
        "trust_remote_code": bool(config.get("auto_map")),
        "auto_class": auto_class or ("AutoModelForCausalLM" if causal else "AutoModel"),
        "causal": causal,
        "probe": probe,
    } | extra


def _run(request: dict, what: str) -> dict:
    with tempfile.TemporaryDirectory(prefix="slimformer-quantize-") as tmp:
        path = Path(tmp) / "request.json"
        path.write_text(json.dumps(request))
        # gptqmodel compiles its packing extension once, into the engine's own folder
        env = {
            "GPTQMODEL_TORCH_EXTENSIONS_DIR": str(engines_home() / ENGINE / "extensions"),
            # every block of 1 MiB or more its own mapping, returned when freed: glibc would
            # otherwise raise that threshold as blocks are freed and keep them in its heap
            # (slimformer.streaming.model.give_freed_memory_back does the same in-process)
            "MALLOC_MMAP_THRESHOLD_": str(1 << 20),
        }
        out = run_engine(ENGINE, [str(SCRIPT), str(path)], timeout=6 * 3600, what=what, env=env)
    line = next(x for x in reversed(out.splitlines()) if x.startswith("SLIMFORMER_RESULT "))
    return json.loads(line.removeprefix("SLIMFORMER_RESULT "))


def _agreement(written: dict, reloaded: dict, causal: bool) -> float:
    if causal:
        pairs = [
            (a, b)
            for wa, wb in zip(written["top1"], reloaded["top1"], strict=True)
            for a, b in zip(wa, wb, strict=True)
        ]
        return sum(a == b for a, b in pairs) / max(1, len(pairs))
    cosines = []
    for a, b in zip(written["hidden"], reloaded["hidden"], strict=True):
        dot = sum(x * y for x, y in zip(a, b, strict=True))
        norm = math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))
        cosines.append(dot / norm if norm else 0.0)
    return min(cosines)


def quantize_folder(
    folder: str | Path,
    method: str,
    calibration: list[list[int]],
    *,
    causal: bool = True,
    blocks: str,
    out: str | Path | None = None,
    windows: list[list[int]] | None = None,
    desc_act: bool = False,
    damp_percent: float = GPTQ_DAMP_PERCENT,
    clip_norm: float = GPTQ_CLIP_NORM,
    group_size: int | None = None,
    smoothing: float = W8A8_SMOOTHING,
    auto_class: str | None = None,
    shard_bytes: int | None = None,
) -> dict:
    """Write the quantized copy ``method`` (``gptq-int4`` or ``w8a8``) of the saved ``folder`` into
    ``out`` (default ``folder/quantized/<method>``), reload it in a fresh engine process and
    measure it there on ``windows`` (causal LMs).

    ``calibration``: token-id windows GPTQ calibrates on, and w8a8 smooths on (SmoothQuant with
    migration strength ``smoothing``; none without windows or with ``smoothing`` 0, then plain
    round-to-nearest). ``damp_percent``: GPTQ's dampening; ``clip_norm``: its clipping search
    (0: none); ``group_size``: the largest group to use (default :data:`GPTQ_GROUP_SIZE`; a smaller
    one where it does not divide every width). ``blocks``: the dotted path of the
    layer list (:func:`block_path`). ``auto_class``: the transformers class that loads the folder
    (default by ``causal``: AutoModelForCausalLM or AutoModel). ``shard_bytes``: the largest
    safetensors file written (default the engine's 512 MiB). The first calibration windows
    (else evaluation windows), cut short, are the probe the reload must reproduce.

    Returns:
        ``method``, ``path`` (relative to ``folder``), ``group_size``, ``desc_act``,
        ``damp_percent`` and ``clip_norm`` (gptq-int4), ``smoothing`` (w8a8: the strength, null
        when none),
        ``size_bytes``, ``seconds`` and ``peak_rss_bytes`` of the quantization,
        ``reload_agreement`` (the reload against the quantizing process),
        ``perplexity``/``next_token_accuracy`` in transformers when ``windows`` are given.

    Raises:
        InvalidSpec: a width gptq-int4 cannot quantize (naming the layer and width).
        EngineMissing: the gptq engine is not built.
        ExportError: the engine failed, or the reloaded folder does not reproduce the quantized
            model.
    """
    folder = Path(folder)
    target = Path(out) if out is not None else folder / QUANTIZED_DIR / method
    probe = [w[:PROBE_TOKENS] for w in (calibration or windows or [])[:PROBE_WINDOWS]]
    if not probe:
        raise ValueError("quantize_folder needs calibration or evaluation windows to check with")
    written = write_quantized(
        folder,
        target,
        method,
        calibration,
        probe=probe,
        causal=causal,
        blocks=blocks,
        desc_act=desc_act,
        damp_percent=damp_percent,
        clip_norm=clip_norm,
        group_size=group_size,
        smoothing=smoothing,
        auto_class=auto_class,
        shard_bytes=shard_bytes,
    )
    reloaded = check_reload(
        target, written, windows if causal else None, causal=causal, auto_class=auto_class
    )
    record = {
        "method": method,
        "path": str(target.relative_to(folder)) if target.is_relative_to(folder) else str(target),
        "size_bytes": sum(p.stat().st_size for p in target.glob("*.safetensors")),
        "seconds": round(written["seconds"], 2),
        "peak_rss_bytes": written["peak_rss_bytes"],
        "reload_agreement": round(reloaded["agreement"], 4),
    }
    if "group_size" in written:
        record |= {
            "group_size": written["group_size"],
            "desc_act": desc_act,
            "damp_percent": damp_percent,
            "clip_norm": clip_norm,
        }
    if method == "w8a8":
        record["smoothing"] = written.get("smoothing")
    if reloaded["tokens"]:
        record["perplexity"] = math.exp(reloaded["nll_sum"] / reloaded["tokens"])
        record["next_token_accuracy"] = reloaded["hits"] / reloaded["tokens"]
        record["measured_by"] = "transformers (bfloat16) in the gptq engine, a fresh process"
    return record


def write_quantized(
    folder: Path,
    target: Path,
    method: str,
    calibration: list[list[int]],
    *,
    probe: list[list[int]],
    causal: bool,
    blocks: str,
    desc_act: bool = False,
    damp_percent: float = GPTQ_DAMP_PERCENT,
    clip_norm: float = GPTQ_CLIP_NORM,
    group_size: int | None = None,
    smoothing: float = W8A8_SMOOTHING,
    auto_class: str | None = None,
    shard_bytes: int | None = None,
) -> dict:
    """The quantizing process: writes ``target`` (causal LMs block by block, in safetensors files
    of at most ``shard_bytes``, by default the engine's 512 MiB) and answers ``seconds``,
    ``peak_rss_bytes``,
    ``group_size`` (gptq-int4), ``smoothing`` (w8a8: the strength used, None when none) and
    ``probe`` (the written model's outputs on the ``probe`` windows, recorded after saving)."""
    if method not in ("gptq-int4", "w8a8"):
        raise ValueError(f"unknown quantization {method!r}; choose gptq-int4 or w8a8")
    extra: dict = {"op": method, "out": str(target.resolve()), "block_name": blocks}
    if shard_bytes:
        extra["shard_bytes"] = shard_bytes
    if method == "gptq-int4":
        if not calibration:
            raise InvalidSpec("gptq-int4 needs calibration windows", details={"field": "quantize"})
        extra["group_size"] = group_size_for(
            folder_widths(folder, blocks), largest=group_size or GPTQ_GROUP_SIZE
        )
        extra["seq_len"] = max(len(w) for w in calibration)
        extra["desc_act"] = desc_act
        extra["damp_percent"] = damp_percent
        extra["clip_norm"] = clip_norm
    elif calibration and smoothing:
        if not 0 < smoothing <= 1:
            raise InvalidSpec(
                f"w8a8 smoothing strength {smoothing} is outside (0, 1]",
                details={"field": "quantize"},
            )
        extra["smoothing"] = smoothing
    target.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="slimformer-calibration-") as tmp:
        calib = Path(tmp) / "calibration.json"
        calib.write_text(json.dumps(calibration))
        request = (
            _request(
                folder, causal=causal, probe=probe, calibration=str(calib), auto_class=auto_class
            )
            | extra
        )
        written = _run(request, f"{method} quantization")
    written["probe_windows"] = probe
    if "group_size" in extra:
        written["group_size"] = extra["group_size"]
    if method == "w8a8":
        written["smoothing"] = extra.get("smoothing")
    return written


def check_reload(
    target: Path,
    written: dict,
    windows: list[list[int]] | None,
    *,
    causal: bool,
    auto_class: str | None = None,
) -> dict:
    """Reload ``target`` in a fresh engine process, measure it on ``windows``, and compare its
    outputs on the probe windows with what the quantizing process recorded (``written``).

    Raises:
        ExportError: the reload does not reproduce the quantized model (a folder saved wrong).
    """
    reloaded = quantized_scores(
        target, windows, causal=causal, probe=written["probe_windows"], auto_class=auto_class
    )
    agreement = _agreement(written["probe"], reloaded["probe"], causal)
    if agreement < RELOAD_AGREEMENT:
        raise ExportError(
            f"the folder {target.name} reloaded in a fresh process does not reproduce the model "
            f"that was quantized ({agreement:.2f} agreement on the probe windows, "
            f"{RELOAD_AGREEMENT} needed): it was not saved right",
            details={"folder": str(target), "agreement": agreement},
        )
    return reloaded | {"agreement": agreement}


def quantized_scores(
    folder: str | Path,
    windows: list[list[int]] | None,
    *,
    causal: bool = True,
    probe: list[list[int]] | None = None,
    auto_class: str | None = None,
) -> dict:
    """A quantized folder loaded by transformers in a fresh gptq-engine process: next-token NLL
    sum, greedy hits and token count over ``windows``, and its outputs on ``probe``."""
    request = _request(
        Path(folder), causal=causal, probe=probe or [], auto_class=auto_class, op="score"
    )
    request["windows"] = windows or []
    return _run(request, "loading the quantized folder")
