"""Measuring models: predictions, task metrics, parameters, MACs and latency, and the side-by-side
evaluation of an original and a compressed model (:func:`evaluate_side_by_side`).

MACs are counted analytically from each layer's real sizes (so a per-layer pruned model is counted
as it is, not as its config's global values say) and checked against ``torch.utils.flop_counter``
in the tests.

Next-token metrics (perplexity, next-token accuracy, greedy agreement) count a position when both
the token that is predicted and the token it is predicted from are real (attention mask 1, label not
-100): padding never enters them, whichever side it is on.
"""

from __future__ import annotations

import logging
import math
import statistics
import time
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from slimformer.errors import Cancelled, InvalidSpec
from slimformer.models import count_macs, count_parameters, mean_pool, model_task
from slimformer.text import DEFAULT_CHUNK, next_token_stats

logger = logging.getLogger(__name__)

ProgressFn = Callable[[str, float, str], None]
CancelFn = Callable[[], bool]


@torch.no_grad()
def predict(model: nn.Module, batches: Iterable[dict]) -> torch.Tensor:
    """Logits (classification, regression) or mean-pooled embeddings for every example, in order."""
    model.eval()
    device = next(model.parameters()).device
    outputs = []
    task = model_task(model)
    for batch in batches:
        inputs = {k: v.to(device) for k, v in batch.items() if k != "labels"}
        out = model(**inputs)
        if task == "feature-extraction":
            outputs.append(
                mean_pool(out.last_hidden_state, inputs.get("attention_mask")).float().cpu()
            )
        else:
            outputs.append(out.logits.float().cpu())
    return torch.cat(outputs)


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Share of rows whose highest logit is the label."""
    return float((logits.argmax(-1) == labels).double().mean())


@dataclass
class Latency:
    batch_size: int
    seq_len: int
    p50_ms: float
    p95_ms: float
    mean_ms: float
    throughput: float  # sequences per second at this batch size
    runs: int
    threads: int


@torch.inference_mode()
def measure_latency(
    model: nn.Module,
    *,
    batch_size: int,
    seq_len: int,
    runs: int = 20,
    warmup: int = 3,
    vocab_size: int | None = None,
) -> Latency:
    """Wall time of a forward pass on random token ids after warm-up, on the model's device."""
    model.eval()
    device = next(model.parameters()).device
    vocab = vocab_size or model.config.vocab_size
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(5, vocab, (batch_size, seq_len), generator=gen).to(device)
    mask = torch.ones_like(ids)
    times = []
    for i in range(warmup + runs):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        model(input_ids=ids, attention_mask=mask)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= warmup:
            times.append((time.perf_counter() - start) * 1000)
    times.sort()
    p95 = times[min(len(times) - 1, round(0.95 * (len(times) - 1)))]
    mean = statistics.fmean(times)
    return Latency(
        batch_size=batch_size,
        seq_len=seq_len,
        p50_ms=statistics.median(times),
        p95_ms=p95,
        mean_ms=mean,
        throughput=batch_size / (statistics.median(times) / 1000),
        runs=runs,
        threads=torch.get_num_threads(),
    )


@torch.no_grad()
def next_token_accuracy(model: nn.Module, batches: Iterable[dict]) -> float:
    """Share of real next tokens that are the model's top prediction (a higher-is-better LM metric).

    Real positions are those of :func:`score_next_tokens`: padding is excluded on either side.
    """
    scores = score_next_tokens(model, batches)
    return scores.hits / max(scores.tokens, 1)


def task_metric(
    model: nn.Module, batches: list[dict], reference: torch.Tensor | None = None
) -> tuple[str, float]:
    """The metric that schedules and summaries compare (higher is better).

    Classification with labels: accuracy; without: agreement with ``reference`` logits. Embeddings:
    mean cosine similarity to ``reference`` embeddings. Causal LM: next-token accuracy on the text.
    """
    task = model_task(model)
    if task == "text-generation":
        return "next_token_accuracy", next_token_accuracy(model, batches)
    out = predict(model, batches)
    if task == "feature-extraction":
        if reference is None:
            raise ValueError("embedding models are compared with reference embeddings")
        return "cosine_to_original", float(
            torch.nn.functional.cosine_similarity(out, reference, dim=-1).mean()
        )
    if "labels" in batches[0]:
        labels = torch.cat([b["labels"] for b in batches])
        if out.shape[-1] == 1:  # regression
            from scipy.stats import pearsonr

            return "pearson", float(pearsonr(out[:, 0].numpy(), labels.float().numpy()).statistic)
        return "accuracy", accuracy(out, labels)
    if reference is None:
        raise ValueError("without labels, predictions are compared with reference logits")
    return "agreement", float((out.argmax(-1) == reference.argmax(-1)).float().mean())


# -- task metrics ----------------------------------------------------------------------------------


def macro_f1(predictions: torch.Tensor, labels: torch.Tensor) -> float:
    """Unweighted mean of the per-class F1 scores over every class that is a label or a prediction.

    A class's F1 is ``2 TP / (2 TP + FP + FN)``, which is 0 for a class that is predicted but never
    right or never predicted (scikit-learn's ``f1_score(average="macro")`` with
    ``zero_division=0``).

    Args:
        predictions: predicted class ids, shape [n].
        labels: true class ids, shape [n].

    Returns:
        The macro F1 in [0, 1]; 0.0 for empty input.

    Raises:
        ValueError: predictions and labels of different lengths.
    """
    predictions, labels = predictions.reshape(-1).long(), labels.reshape(-1).long()
    if predictions.shape != labels.shape:
        raise ValueError(f"{len(predictions)} predictions for {len(labels)} labels")
    classes = torch.unique(torch.cat([predictions, labels]))
    if len(classes) == 0:
        return 0.0
    scores = []
    for c in classes:
        predicted, actual = predictions == c, labels == c
        tp = int((predicted & actual).sum())
        fp = int((predicted & ~actual).sum())
        fn = int((~predicted & actual).sum())
        scores.append(2 * tp / (2 * tp + fp + fn))
    return float(sum(scores) / len(scores))


def _correlation(
    kind: str, a: torch.Tensor | np.ndarray | list, b: torch.Tensor | np.ndarray | list
) -> float | None:
    """Pearson or Spearman correlation; None where it is undefined (fewer than 2 points, a constant
    input)."""
    from scipy import stats

    x = np.asarray(
        a.detach().cpu().double() if isinstance(a, torch.Tensor) else a, dtype=np.float64
    ).reshape(-1)
    y = np.asarray(
        b.detach().cpu().double() if isinstance(b, torch.Tensor) else b, dtype=np.float64
    ).reshape(-1)
    if len(x) != len(y):
        raise ValueError(f"cannot correlate {len(x)} values with {len(y)}")
    if len(x) < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # scipy's near-constant-input warnings
        value = (
            stats.pearsonr(x, y).statistic if kind == "pearson" else stats.spearmanr(x, y).statistic
        )
    return _finite(value)


def pearson(
    a: torch.Tensor | np.ndarray | list, b: torch.Tensor | np.ndarray | list
) -> float | None:
    """Pearson correlation of two equally long series; None where undefined (a constant series).

    Args:
        a: first series (any shape; flattened).
        b: second series.

    Returns:
        The correlation in [-1, 1], or None.
    """
    return _correlation("pearson", a, b)


def spearman(
    a: torch.Tensor | np.ndarray | list, b: torch.Tensor | np.ndarray | list
) -> float | None:
    """Spearman rank correlation of two equally long series; None where undefined (a constant
    series).

    Args:
        a: first series (any shape; flattened).
        b: second series.

    Returns:
        The correlation in [-1, 1], or None.
    """
    return _correlation("spearman", a, b)


def _finite(value: float | None) -> float | None:
    """A plain float, or None for NaN and infinities (so reports are strict JSON)."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


@dataclass
class NextTokenScores:
    """Next-token statistics of a causal LM over real positions (see the module docstring)."""

    nll_sum: float  # summed negative log-likelihood of the real next tokens, in nats
    tokens: int  # real next-token positions
    hits: int  # positions whose greedy prediction is the next token
    greedy: list[torch.Tensor] = field(
        default_factory=list
    )  # per batch: greedy tokens at the real positions

    @property
    def perplexity(self) -> float | None:
        """``exp`` of the mean NLL; None without real tokens or when it overflows."""
        if self.tokens == 0:
            return None
        mean = self.nll_sum / self.tokens
        return math.exp(mean) if mean < 700 else None

    @property
    def accuracy(self) -> float | None:
        return self.hits / self.tokens if self.tokens else None


@torch.inference_mode()
def score_next_tokens(
    model: nn.Module,
    batches: Iterable[dict],
    *,
    keep_greedy: bool = False,
    on_batch: Callable[[int], None] | None = None,
    chunk_size: int = DEFAULT_CHUNK,
) -> NextTokenScores:
    """Summed NLL, greedy hits and (optionally) greedy tokens of a causal LM over the real next
    tokens.

    Args:
        model: a causal LM; it stays on its device.
        batches: tokenised batches with ``input_ids`` and usually ``attention_mask`` (``labels``
            optional).
        keep_greedy: keep the greedy token of every real position (to compare two models).
        on_batch: called with the batch index after each batch (progress and cancellation).
        chunk_size: positions whose logits exist at once.

    Returns:
        :class:`NextTokenScores`.

    The output head and the cross-entropy run on ``chunk_size`` positions at a time, at real
    positions only (logits at padding can be anything, even NaN for fully masked rows), so no
    batch x sequence x vocabulary tensor is ever made (:func:`slimformer.text.next_token_stats`).
    """
    model.eval()
    device = next(model.parameters()).device
    scores = NextTokenScores(0.0, 0, 0)
    for i, batch in enumerate(batches):
        batch = {k: v.to(device) for k, v in batch.items()}
        stats = next_token_stats(model, batch, chunk_size=chunk_size, keep_greedy=keep_greedy)
        scores.nll_sum += stats.nll_sum
        scores.tokens += stats.tokens
        scores.hits += stats.hits
        if keep_greedy:
            scores.greedy.append(stats.greedy)
        del batch, stats
        if on_batch:
            on_batch(i)
    return scores


def perplexity(model: nn.Module, batches: Iterable[dict]) -> float | None:
    """Perplexity of a causal LM: ``exp`` of the mean next-token NLL over real tokens (padding
    masked).

    Args:
        model: a causal LM.
        batches: held-out text, tokenised (``make_batches(..., task="text-generation")``).

    Returns:
        The perplexity (lower is better), or None when there is no real next token or it overflows.
    """
    return score_next_tokens(model, batches).perplexity


def weight_bytes(model: nn.Module) -> int:
    """Bytes of the weights in memory: ``numel * element_size`` summed over the distinct tensors of
    the state dict.

    Tied weights count once; non-persistent buffers (position ids, rotary frequencies) are not
    weights. The size of the saved files is measured separately, on disk.
    """
    seen, total = set(), 0
    for tensor in model.state_dict().values():
        key = (tensor.data_ptr(), tensor.numel(), tensor.element_size())
        if tensor.device.type == "meta" or key in seen:
            continue
        seen.add(key)
        total += tensor.numel() * tensor.element_size()
    return total


# -- side by side ----------------------------------------------------------------------------------


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


def _classification(
    original: nn.Module, compressed: nn.Module, batches: list[dict], progress: _Progress
) -> tuple[str, dict, dict, float | None]:
    labels = _labels(batches)
    logits_o = _outputs(original, batches, progress, "original")
    logits_c = _outputs(compressed, batches, progress, "compressed")
    if logits_o.shape != logits_c.shape:
        raise InvalidSpec(
            f"the models disagree on the output shape: {tuple(logits_o.shape)} and "
            f"{tuple(logits_c.shape)}"
        )
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
) -> tuple[str, dict, dict, float | None]:
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
) -> tuple[str, dict, dict, float | None]:
    texts = batches + (pair_batches or [])
    emb_o = _outputs(original, texts, progress, "original")
    emb_c = _outputs(compressed, texts, progress, "compressed")
    if emb_o.shape != emb_c.shape:
        raise InvalidSpec(
            f"the models disagree on the embedding shape: {tuple(emb_o.shape)} and "
            f"{tuple(emb_c.shape)}"
        )
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


def _latency(
    model: nn.Module, seq_len: int, runs: int, progress: _Progress, name: str, units: float
) -> dict:
    progress.check()
    batch1 = measure_latency(model, batch_size=1, seq_len=seq_len, runs=runs, warmup=3)
    progress.advance(units, f"{name} model: latency at batch 1")
    progress.check()
    # each batch-32 pass is ~32 times the work: fewer timed runs give a stable median
    batch32 = measure_latency(
        model, batch_size=32, seq_len=seq_len, runs=max(3, runs // 4), warmup=1
    )
    progress.advance(units, f"{name} model: throughput at batch 32")
    if batch1.threads != batch32.threads:
        logger.warning(
            "torch's thread count changed during the latency measurement (%d, then %d)",
            batch1.threads,
            batch32.threads,
        )
    return {
        "batch1_p50_ms": batch1.p50_ms,
        "batch1_p95_ms": batch1.p95_ms,
        "batch32_throughput": batch32.throughput,
    }


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or not denominator:
        return None
    return _finite(numerator / denominator)


@torch.no_grad()
def generation_speed(model: nn.Module, prompt: torch.Tensor, new_tokens: int) -> float:
    """Tokens per second of greedy generation of exactly ``new_tokens`` tokens after ``prompt``
    ([1, T] token ids), one stream, after a two-token warm-up."""
    device = next(model.parameters()).device
    prompt = prompt.to(device)
    kwargs = {"attention_mask": torch.ones_like(prompt), "do_sample": False}
    was_training = model.training
    model.eval()
    try:
        model.generate(prompt, max_new_tokens=2, min_new_tokens=2, **kwargs)
        start = time.perf_counter()
        model.generate(prompt, max_new_tokens=new_tokens, min_new_tokens=new_tokens, **kwargs)
        return new_tokens / (time.perf_counter() - start)
    finally:
        model.train(was_training)


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
    call.

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
                                         "latency": {"batch1_p50_ms", "batch1_p95_ms",
                                                     "batch32_throughput"} | None},
             "agreement": float | None,
             "ratios": {"parameters", "weight_bytes", "macs" (compressed / original),
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

    threads = torch.get_num_threads()
    metric_units = 2 * (len(batches) + len(pair_batches or []))
    latency_units = (
        metric_units / 4
    )  # four latency phases, together as long as the metrics on the progress bar
    progress = _Progress(
        metric_units + (4 * latency_units if latency else 0), on_progress, should_cancel
    )
    training = {model: model.training for model in (original, compressed)}
    try:
        progress.check()
        if task == "text-generation":
            primary, metrics_o, metrics_c, agreement = _generation(
                original, compressed, batches, progress
            )
        elif task == "feature-extraction":
            primary, metrics_o, metrics_c, agreement = _embeddings(
                original, compressed, batches, pair_batches, pair_scores, progress
            )
        else:
            primary, metrics_o, metrics_c, agreement = _classification(
                original, compressed, batches, progress
            )
        sides = {}
        for name, model, metrics in (
            ("original", original, metrics_o),
            ("compressed", compressed, metrics_c),
        ):
            sides[name] = {
                "metrics": {k: _finite(v) for k, v in metrics.items()},
                "parameters": count_parameters(model),
                "weight_bytes": weight_bytes(model),
                "macs": count_macs(model, seq_len),
                "latency": None,
            }
        if latency:
            for name, model in (("original", original), ("compressed", compressed)):
                sides[name]["latency"] = _latency(
                    model, seq_len, latency_runs, progress, name, latency_units
                )
            if torch.get_num_threads() != threads:
                logger.warning(
                    "torch's thread count changed during the evaluation (%d, then %d)",
                    threads,
                    torch.get_num_threads(),
                )
        progress.check()
    finally:
        for model, was_training in training.items():
            model.train(was_training)

    o, c = sides["original"], sides["compressed"]
    lat_o, lat_c = o["latency"], c["latency"]
    report = {
        "task": task,
        "primary_metric": primary,
        "higher_is_better": primary != "perplexity",
        "rows": _rows(batches),
        "seq_len": seq_len,
        "device": device.type,
        "threads": threads,
        "torch_version": str(torch.__version__),
        "original": o,
        "compressed": c,
        "agreement": _finite(agreement),
        "ratios": {
            "parameters": _ratio(c["parameters"], o["parameters"]),
            "weight_bytes": _ratio(c["weight_bytes"], o["weight_bytes"]),
            "macs": _ratio(c["macs"], o["macs"]),
            "latency_speedup": _ratio(lat_o["batch1_p50_ms"], lat_c["batch1_p50_ms"])
            if latency
            else None,
            "throughput_speedup": _ratio(lat_c["batch32_throughput"], lat_o["batch32_throughput"])
            if latency
            else None,
        },
    }
    if protocol is not None:
        report["protocol"] = protocol
    if on_progress is not None:
        on_progress("evaluating", 1.0, "evaluation done")
    return report
