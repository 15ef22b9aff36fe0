"""The side-by-side evaluation of an original and a compressed model
(:func:`evaluate_side_by_side`).

Task metrics follow the task of the models (both must have the same head):

* classification with labels: ``accuracy`` and ``macro_f1`` (sentence pairs are batches with
  ``token_type_ids``); regression (one output) with labels: ``pearson`` and ``spearman``;
  without labels no metric, and ``primary_metric`` is ``"agreement"``;
* causal LM: ``perplexity`` (exp of the mean next-token NLL over real tokens) and
  ``next_token_accuracy``;
* embeddings (a base model, mean-pooled): ``cosine_to_original`` over every text embedded; with
  gold similarity scores (STS-B style), ``spearman`` between the cosine similarity of each
  pair's embeddings and its score. ``batches`` then hold the first sentences, ``pair_batches``
  the second sentences in the same order and ``pair_scores`` one score per pair.

Agreement with the original: share of identical argmax predictions (classification), Pearson
between the two models' outputs (regression), share of identical greedy next tokens over real
positions (causal LM), mean cosine to the original's embeddings (embeddings).

Efficiency: parameters, :func:`weight_bytes`, :func:`count_macs` at ``seq_len``, and with
``latency`` the p50/p95 latency at batch 1 (``latency_runs`` timed runs after 3 warm-up runs)
and the throughput at batch 32 (``max(3, latency_runs // 4)`` timed runs after 1 warm-up run) on
random token ids of length ``seq_len``.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from slimformer.errors import Cancelled, InvalidSpec
from slimformer.evaluation.efficiency import measure_latency, weight_bytes
from slimformer.evaluation.lm import score_next_tokens
from slimformer.evaluation.metrics import _finite, accuracy, macro_f1, pearson, predict, spearman
from slimformer.models import count_embedding_parameters, count_macs, count_parameters, model_task

logger = logging.getLogger(__name__)

ProgressFn = Callable[[str, float, str], None]
CancelFn = Callable[[], bool]
Metrics = tuple[
    str, dict, dict, float | None
]  # primary metric, original's, compressed's, agreement


def evaluate_side_by_side(
    original: nn.Module,
    compressed: nn.Module,
    batches: list[dict],
    *,
    seq_len: int,
    latency: bool = True,
    latency_runs: int = 20,
    pair_batches: list[dict] | None = None,
    pair_scores: list[float] | None = None,
    on_progress: ProgressFn | None = None,
    should_cancel: CancelFn | None = None,
    protocol: dict | None = None,
) -> dict:
    """Measure an original and a compressed model on the same data, device and thread count, in one
    call: the task metrics, the agreement and the efficiency numbers of the module docstring.

    Args:
        original: the model before compression.
        compressed: the compressed model, on the same device as ``original``.
        batches: tokenised evaluation batches (``make_batches``); labels for classification metrics.
        seq_len: sequence length for MACs and latency (the evaluation's ``max_length``).
        latency: measure latency and throughput (the slow part); otherwise they are null.
        latency_runs: timed runs at batch 1.
        pair_batches: second sentences of each pair, for embeddings with ``pair_scores``.
        pair_scores: gold similarity of each pair (embeddings only).
        on_progress: called as ``on_progress("evaluating", fraction, message)``.
        should_cancel: checked between batches, models and latency phases.
        protocol: how the evaluation text was prepared, reported as ``protocol`` (for a causal LM,
            :meth:`slimformer.text.PackedText.protocol`: window length, stride, token counts).

    Returns:
        A JSON-serialisable dict (NaN and infinities become null)::

            {"task", "primary_metric", "higher_is_better", "rows", "seq_len", "device", "threads",
             "torch_version", "protocol" (only when given),
             "original" / "compressed": {"metrics": {...}, "parameters", "weight_bytes", "macs",
                                         "embedding_parameters",
                                         "latency": {"batch1_p50_ms", "batch1_p95_ms",
                                                     "batch32_throughput"} | None},
             "agreement": float | None,
             "ratios": {"parameters", "non_embedding_parameters", "weight_bytes",
                        "macs" (compressed / original),
                        "latency_speedup" (original p50 / compressed p50),
                        "throughput_speedup" (compressed / original throughput) | None}}

    Raises:
        InvalidSpec: no batches, models of different tasks or on different devices, pairs or scores
            that do not fit, labels on only some batches, a bad ``seq_len`` or ``latency_runs``.
        Cancelled: ``should_cancel`` returned true.

    Example:
        >>> report = evaluate_side_by_side(model, pruned, eval_batches, seq_len=128, latency=False)
        >>> report["ratios"]["parameters"], report["compressed"]["metrics"]["accuracy"]
    """
    pairs = pair_batches, pair_scores
    task, device = _check(original, compressed, batches, seq_len, latency_runs, *pairs)
    threads = torch.get_num_threads()
    metric_units = 2 * (len(batches) + len(pair_batches or []))
    # four latency phases, together as long as the metrics on the progress bar
    latency_units = metric_units / 4
    progress = _Progress(
        metric_units + (4 * latency_units if latency else 0), on_progress, should_cancel
    )
    with _training_mode_kept(original, compressed):
        progress.check()
        primary, metrics_o, metrics_c, agreement = _task_metrics(
            task, original, compressed, batches, pairs, progress
        )
        sides = {
            "original": _side(original, metrics_o, seq_len),
            "compressed": _side(compressed, metrics_c, seq_len),
        }
        if latency:
            for name, model in (("original", original), ("compressed", compressed)):
                sides[name]["latency"] = _latency(
                    model, seq_len, latency_runs, progress, name, latency_units
                )
            _warn_if_threads_changed(threads, torch.get_num_threads(), "the evaluation")
        progress.check()
    report = side_by_side_report(
        task, primary, sides, agreement, _rows(batches), seq_len, device, threads, protocol
    )
    if on_progress is not None:
        on_progress("evaluating", 1.0, "evaluation done")
    return report


def _check(
    original: nn.Module,
    compressed: nn.Module,
    batches: list[dict],
    seq_len: int,
    latency_runs: int,
    pair_batches: list[dict] | None,
    pair_scores: list[float] | None,
) -> tuple[str, torch.device]:
    """The task and the device of the two models, once the arguments are known to fit together
    (else :class:`InvalidSpec`)."""
    if not batches:
        raise InvalidSpec("evaluation needs data, and no batch was given")
    if seq_len < 1 or latency_runs < 1:
        raise InvalidSpec(
            f"seq_len and latency_runs must be positive, got {seq_len} and {latency_runs}"
        )
    task = model_task(original)
    if model_task(compressed) != task:
        raise InvalidSpec(
            f"the original is a {task} model and the compressed one a {model_task(compressed)} "
            "model"
        )
    device = next(original.parameters()).device
    if next(compressed.parameters()).device != device:
        raise InvalidSpec(
            f"the models are on different devices ({device} and "
            f"{next(compressed.parameters()).device}); "
            "latency is only comparable on the same one"
        )
    if (pair_batches is None) != (pair_scores is None):
        raise InvalidSpec(
            "pair_batches and pair_scores go together: the second sentences and a gold score per "
            "pair"
        )
    if pair_scores is not None:
        if task != "feature-extraction":
            raise InvalidSpec(
                "pair_scores are for embedding models; a cross-encoder takes pairs as batches with "
                "labels"
            )
        rows, pair_rows = _rows(batches), _rows(pair_batches)
        if not rows == pair_rows == len(pair_scores):
            raise InvalidSpec(
                f"{rows} first sentences, {pair_rows} second sentences and {len(pair_scores)} "
                "scores; "
                "they must be as many"
            )
    return task, device


@contextlib.contextmanager
def _training_mode_kept(*models: nn.Module) -> Iterator[None]:
    """Put each model back in the training mode it had, however the block ends (the metrics switch
    models to eval mode)."""
    training = {model: model.training for model in models}
    try:
        yield
    finally:
        for model, was_training in training.items():
            model.train(was_training)


class _Progress:
    """Reports ``evaluating`` progress over weighted units of work and checks for cancellation."""

    def __init__(
        self, total: float, on_progress: ProgressFn | None, should_cancel: CancelFn | None
    ) -> None:
        self.total, self.done = max(total, 1e-9), 0.0
        self.on_progress, self.should_cancel = on_progress, should_cancel

    def check(self) -> None:
        if self.should_cancel is not None and self.should_cancel():
            raise Cancelled("the evaluation was cancelled")

    def advance(self, units: float, message: str) -> None:
        self.done += units
        if self.on_progress is not None:
            self.on_progress("evaluating", min(1.0, self.done / self.total), message)


def _rows(batches: list[dict]) -> int:
    return sum(len(b["input_ids"]) for b in batches)


def _outputs(model: nn.Module, batches: list[dict], progress: _Progress, name: str) -> torch.Tensor:
    """:func:`predict` batch by batch, with progress and a cancellation check between batches."""
    out = []
    for i, batch in enumerate(batches):
        progress.check()
        out.append(predict(model, [batch]))
        progress.advance(1, f"{name} model: batch {i + 1}/{len(batches)}")
    return torch.cat(out)


def _both_outputs(
    original: nn.Module, compressed: nn.Module, batches: list[dict], progress: _Progress, what: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Both models' :func:`_outputs`, which must have the same shape (``what``: the kind of output,
    for the error)."""
    out_o = _outputs(original, batches, progress, "original")
    out_c = _outputs(compressed, batches, progress, "compressed")
    if out_o.shape != out_c.shape:
        raise InvalidSpec(
            f"the models disagree on the {what} shape: {tuple(out_o.shape)} and "
            f"{tuple(out_c.shape)}"
        )
    return out_o, out_c


def _labels(batches: list[dict]) -> torch.Tensor | None:
    with_labels = sum("labels" in b for b in batches)
    if with_labels == 0:
        return None
    if with_labels != len(batches):
        raise InvalidSpec(
            f"{with_labels} of {len(batches)} evaluation batches carry labels; give labels for all "
            "or none"
        )
    return torch.cat([b["labels"] for b in batches])


def _task_metrics(
    task: str,
    original: nn.Module,
    compressed: nn.Module,
    batches: list[dict],
    pairs: tuple[list[dict] | None, list[float] | None],
    progress: _Progress,
) -> Metrics:
    """The metrics of the models' task; ``pairs``: the second sentences and their gold scores, for
    embeddings."""
    if task == "text-generation":
        return _generation(original, compressed, batches, progress)
    if task == "feature-extraction":
        return _embeddings(original, compressed, batches, *pairs, progress)
    return _classification(original, compressed, batches, progress)


def _classification(
    original: nn.Module, compressed: nn.Module, batches: list[dict], progress: _Progress
) -> Metrics:
    labels = _labels(batches)
    logits_o, logits_c = _both_outputs(original, compressed, batches, progress, "output")
    if logits_o.shape[-1] == 1:  # regression (num_labels == 1)
        agreement = pearson(logits_o[:, 0], logits_c[:, 0])
        if labels is None:
            return "agreement", {}, {}, agreement
        gold = labels.float().reshape(-1)
        metrics = [
            {"pearson": pearson(out[:, 0], gold), "spearman": spearman(out[:, 0], gold)}
            for out in (logits_o, logits_c)
        ]
        return "pearson", metrics[0], metrics[1], agreement
    agreement = float((logits_o.argmax(-1) == logits_c.argmax(-1)).double().mean())
    if labels is None:
        return "agreement", {}, {}, agreement
    metrics = [
        {"accuracy": accuracy(out, labels), "macro_f1": macro_f1(out.argmax(-1), labels)}
        for out in (logits_o, logits_c)
    ]
    return "accuracy", metrics[0], metrics[1], agreement


def _generation(
    original: nn.Module, compressed: nn.Module, batches: list[dict], progress: _Progress
) -> Metrics:
    scores = []
    for name, model in (("original", original), ("compressed", compressed)):
        progress.check()

        def step(i: int, name: str = name) -> None:
            progress.advance(1, f"{name} model: batch {i + 1}/{len(batches)}")
            progress.check()

        scores.append(score_next_tokens(model, batches, keep_greedy=True, on_batch=step))
    o, c = scores
    greedy_o, greedy_c = torch.cat(o.greedy), torch.cat(c.greedy)
    agreement = float((greedy_o == greedy_c).double().mean()) if len(greedy_o) else None
    metrics = [
        {"perplexity": _finite(s.perplexity), "next_token_accuracy": _finite(s.accuracy)}
        for s in scores
    ]
    return "perplexity", metrics[0], metrics[1], agreement


def _embeddings(
    original: nn.Module,
    compressed: nn.Module,
    batches: list[dict],
    pair_batches: list[dict] | None,
    pair_scores: list[float] | None,
    progress: _Progress,
) -> Metrics:
    texts = batches + (pair_batches or [])
    emb_o, emb_c = _both_outputs(original, compressed, texts, progress, "embedding")
    # the original's own value is computed the same way (1 up to rounding), so identical models
    # match exactly
    metrics = [
        {"cosine_to_original": float(F.cosine_similarity(emb, emb_o, dim=-1).mean())}
        for emb in (emb_o, emb_c)
    ]
    agreement = metrics[1]["cosine_to_original"]
    if pair_scores is None:
        return "cosine_to_original", metrics[0], metrics[1], agreement
    n = _rows(batches)
    for emb, entry in zip((emb_o, emb_c), metrics, strict=True):
        similarity = F.cosine_similarity(emb[:n], emb[n:], dim=-1)
        entry["spearman"] = spearman(similarity, pair_scores)
    return "spearman", metrics[0], metrics[1], agreement


def _side(model: nn.Module, metrics: dict, seq_len: int) -> dict:
    """One model's column of the report, latency still to measure."""
    return {
        "metrics": {k: _finite(v) for k, v in metrics.items()},
        "parameters": count_parameters(model),
        "weight_bytes": weight_bytes(model),
        "macs": count_macs(model, seq_len),
        "embedding_parameters": count_embedding_parameters(model),
        "latency": None,
    }


def _latency(
    model: nn.Module, seq_len: int, runs: int, progress: _Progress, name: str, units: float
) -> dict:
    def phase_done(phase: str) -> None:
        progress.advance(units, f"{name} model: {phase}")
        progress.check()

    progress.check()
    return model_latency(model, seq_len, runs, on_phase=phase_done)


def model_latency(
    model: nn.Module, seq_len: int, runs: int = 20, on_phase: Callable | None = None
) -> dict:
    """One model's ``latency`` column: the p50/p95 latency at batch 1 (``runs`` timed runs after 3
    warm-up runs) and the throughput at batch 32 (``max(3, runs // 4)`` timed runs after 1)."""
    batch1 = measure_latency(model, batch_size=1, seq_len=seq_len, runs=runs, warmup=3)
    if on_phase is not None:
        on_phase("latency at batch 1")
    # each batch-32 pass is ~32 times the work: fewer timed runs give a stable median
    batch32 = measure_latency(
        model, batch_size=32, seq_len=seq_len, runs=max(3, runs // 4), warmup=1
    )
    if on_phase is not None:
        on_phase("throughput at batch 32")
    _warn_if_threads_changed(batch1.threads, batch32.threads, "the latency measurement")
    return {
        "batch1_p50_ms": batch1.p50_ms,
        "batch1_p95_ms": batch1.p95_ms,
        "batch32_throughput": batch32.throughput,
    }


def with_latency(report: dict, original: dict, compressed: dict) -> dict:
    """``report`` with both models' latency columns (:func:`model_latency`, measured after the
    rest of the report) and the speed-up ratios they give."""
    report["original"]["latency"], report["compressed"]["latency"] = original, compressed
    report["ratios"]["latency_speedup"] = _ratio(
        original["batch1_p50_ms"], compressed["batch1_p50_ms"]
    )
    report["ratios"]["throughput_speedup"] = _ratio(
        compressed["batch32_throughput"], original["batch32_throughput"]
    )
    return report


def _warn_if_threads_changed(before: int, after: int, during: str) -> None:
    # latencies measured on different thread counts do not compare: say so in the job's log
    if before != after:
        logger.warning(
            "torch's thread count changed during %s (%d, then %d)", during, before, after
        )


def side_by_side_report(
    task: str,
    primary: str,
    sides: dict,
    agreement: float | None,
    rows: int,
    seq_len: int,
    device: torch.device,
    threads: int,
    protocol: dict | None,
) -> dict:
    """The report of :func:`evaluate_side_by_side`, its keys in the documented order."""
    o, c = sides["original"], sides["compressed"]
    lat_o, lat_c = o["latency"], c["latency"]
    measured = lat_o is not None and lat_c is not None
    report = {
        "task": task,
        "primary_metric": primary,
        "higher_is_better": primary != "perplexity",
        "rows": rows,
        "seq_len": seq_len,
        "device": device.type,
        "threads": threads,
        "torch_version": str(torch.__version__),
        "original": o,
        "compressed": c,
        "agreement": _finite(agreement),
        "ratios": {
            "parameters": _ratio(c["parameters"], o["parameters"]),
            "non_embedding_parameters": _ratio(
                c["parameters"] - c["embedding_parameters"],
                o["parameters"] - o["embedding_parameters"],
            ),
            "weight_bytes": _ratio(c["weight_bytes"], o["weight_bytes"]),
            "macs": _ratio(c["macs"], o["macs"]),
            "latency_speedup": _ratio(lat_o["batch1_p50_ms"], lat_c["batch1_p50_ms"])
            if measured
            else None,
            "throughput_speedup": _ratio(lat_c["batch32_throughput"], lat_o["batch32_throughput"])
            if measured
            else None,
        },
    }
    if protocol is not None:
        report["protocol"] = protocol
    return report


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or not denominator:
        return None
    return _finite(numerator / denominator)
