"""The recipe: run a job spec end to end.

``run(spec, workdir, on_progress, should_cancel)`` does pull -> score -> prune and/or distil ->
evaluate -> card -> write the artifact folder, reporting ``on_progress(stage, fraction, message)``
with the stages ``downloading, scoring, pruning, distilling, evaluating, writing_card, publishing``
and checking ``should_cancel()`` between steps. The artifact folder appears only when everything
succeeded: a failed or cancelled run leaves no folder that looks complete. With ``spec.publish``
set, the finished folder is then uploaded to the Hub; the token is used for the Hub calls only and
never written anywhere.
"""

from __future__ import annotations

import copy
import datetime as dt
import json
import logging
import math
import platform
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from slimformer import __version__
from slimformer.architectures import family_of
from slimformer.artifacts import atomic_folder, save_model_folder
from slimformer.card import build_card
from slimformer.data import TextData, load_hub_dataset, load_text_file, make_batches
from slimformer.engines import engine_python, export_gguf, llama_cpp_scores, vllm_scores
from slimformer.errors import Cancelled, InvalidSpec, Unauthorized
from slimformer.evaluation import (
    evaluate_side_by_side,
    generation_speed,
    predict,
    task_metric,
)
from slimformer.export import export_onnx, quantize_onnx_int8
from slimformer.hub import HubPolicy, LoadedModel, load_model, publish_folder
from slimformer.importance import input_grams, score_depth, score_importance
from slimformer.importance.depth import attention_influence
from slimformer.models import set_seed
from slimformer.pruning import (
    PruningPlan,
    PruningTarget,
    drop_layers,
    iterative_prune,
    one_shot_prune,
    plan_depth,
    plan_pruning,
    refit_keys,
)
from slimformer.spec import STAGES, JobSpec, PruneSpec, default_layout
from slimformer.text import pack_texts, window_length

logger = logging.getLogger(__name__)

ProgressFn = Callable[[str, float, str], None]
LM_BATCH_WINDOWS = 4  # windows per batch of causal-LM calibration and evaluation
GEN_PROMPT, GEN_TOKENS = 32, 64  # generation speed of served artefacts: prompt and new tokens
REPORT_FILE = "compression_report.json"
SCHEMA_FILE = Path(__file__).parent / "schemas" / "compression_report.schema.json"


def _noop(stage: str, fraction: float, message: str) -> None:
    pass


@dataclass
class RunResult:
    folder: Path
    report: dict
    published: dict | None = (
        None  # repo_url, commit_sha, commit_url, pr_url when spec.publish was set
    )


@dataclass
class _Data:
    train: TextData
    evaluation: TextData
    description: dict


def _load_data(
    spec: JobSpec,
    use_labels: bool,
    resolve_upload: Callable[[str], Path] | None,
    token: str | None = None,
    policy: HubPolicy | None = None,
    packed: bool = False,
) -> _Data:
    ds = spec.dataset
    local_files = policy.allow_local_files if policy is not None else True
    if (ds.path or ds.eval_path) and not local_files:
        raise InvalidSpec(
            "local data files are not allowed here; use an upload or a Hub dataset",
            details={"field": "dataset.path"},
        )
    columns = dict(
        text_column=ds.text_column,
        text_pair_column=ds.text_pair_column,
        label_column=ds.label_column,
        labels=use_labels,
    )
    if ds.path:
        train = load_text_file(ds.path, **columns)
        evaluation = load_text_file(ds.eval_path, **columns) if ds.eval_path else None
        source, eval_source = Path(ds.path).name, Path(ds.eval_path).name if ds.eval_path else None
    elif ds.upload_id:
        if resolve_upload is None:
            raise InvalidSpec("dataset.upload_id needs the service's upload store")
        train = load_text_file(resolve_upload(ds.upload_id), **columns)
        evaluation = (
            load_text_file(resolve_upload(ds.eval_upload_id), **columns)
            if ds.eval_upload_id
            else None
        )
        source, eval_source = (
            f"upload {ds.upload_id}",
            f"upload {ds.eval_upload_id}" if ds.eval_upload_id else None,
        )
    else:

        def split(name: str, max_samples: int | None) -> TextData:
            return load_hub_dataset(
                ds.hub_id,
                config=ds.config,
                split=name,
                token=token,
                max_samples=max_samples,
                seed=spec.seed,
                local_files=local_files,
                policy=policy,
                **columns,
            )

        train = split(ds.split, ds.max_samples)
        # packed text (causal LMs) is cut by windows later, in the split's own order
        eval_rows = None if packed else spec.evaluation.rows(None)
        evaluation = split(ds.eval_split, eval_rows) if ds.eval_split else None
        source, eval_source = (
            f"{ds.hub_id} ({ds.split})",
            f"{ds.hub_id} ({ds.eval_split})" if ds.eval_split else None,
        )
    order = seeded_order(len(train), spec.seed)
    if ds.max_samples:
        order = order[: ds.max_samples]
    train = train.subset(order)
    if evaluation is None:
        # hold out a fifth of the training rows, never scored or trained on
        cut = max(1, len(train) // 5)
        evaluation, train = (
            train.subset(list(range(cut))),
            train.subset(list(range(cut, len(train)))),
        )
        eval_source = f"{source} (held-out {cut} rows)"
    if not packed:
        evaluation = evaluation.head(spec.evaluation.rows(None))
    return _Data(
        train,
        evaluation,
        {
            "source": source,
            "rows": len(train),
            "eval_source": eval_source,
            "eval_rows": len(evaluation),
            "eval_split": ds.eval_split if ds.hub_id else None,
            "eval_dataset_type": ds.hub_id or "custom",
            "text_column": train.text_column,
            "text_pair_column": train.text_pair_column,
            "label_column": train.label_column if use_labels else None,
        },
    )


def _base_license(folder: Path | None) -> str | None:
    """The base model's license from its card metadata (the snapshot holds README.md), when it has
    one."""
    from huggingface_hub import ModelCard

    if folder is None:
        return None
    readme = Path(folder) / "README.md"
    try:
        if not readme.is_file() or not readme.read_text(errors="replace").startswith("---"):
            return None
        card = ModelCard.load(readme)
    except Exception:  # an unreadable card: the license is simply unknown
        return None
    return getattr(card.data, "license", None)


def _environment(device: torch.device) -> dict:
    import huggingface_hub
    import transformers

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "huggingface_hub": huggingface_hub.__version__,
        "slimformer": __version__,
        "device": device.type,
        "threads": torch.get_num_threads(),
        "platform": platform.platform(),
    }


def _folder_size(folder: Path, names: tuple[str, ...] = ("model.safetensors",)) -> int:
    return sum(
        p.stat().st_size
        for p in folder.iterdir()
        if p.name in names or p.name.startswith("model-0")
    )


def _original_size(loaded: LoadedModel) -> int | None:
    path = Path(loaded.path or loaded.source)
    if path.is_dir():
        return _folder_size(path) or None
    return None


def _is_local_model(spec: JobSpec, hub_policy: HubPolicy | None) -> bool:
    """``spec.model.id`` names a folder on this machine (the command line), not a Hub id."""
    local_files = hub_policy.allow_local_files if hub_policy is not None else True
    return local_files and Path(spec.model.id).exists()


def _base_model_record(spec: JobSpec, loaded: LoadedModel, task: str, family: str) -> dict:
    """The report's ``base_model``: a Hub id wherever it can be known, never a local path.

    ``source`` says how the id is known: ``hub`` (downloaded), ``hub_cache`` (a snapshot folder of
    the Hugging Face cache), ``config`` (``_name_or_path`` in the folder's config.json), ``given``
    (``model.base_model`` / ``--base-model``) or ``local`` (unknown: ``id`` is the folder's name).
    """
    from slimformer.hub import folder_origin

    record = {
        "id": spec.model.id,
        "hub_id": spec.model.id,
        "source": "hub",
        "revision": spec.model.revision,
        "commit": loaded.commit,
    }
    if loaded.commit is None:
        origin = folder_origin(loaded.path or spec.model.id)
        if spec.model.base_model:
            hub_id, commit, source = spec.model.base_model, None, "given"
        else:
            hub_id, commit, source = origin.hub_id, origin.commit, origin.source
        name = Path(spec.model.id).resolve().name
        record = {
            "id": hub_id or name,
            "hub_id": hub_id,
            "source": source,
            "revision": commit,
            "commit": commit,
            "folder_name": name,
        }
    return record | {
        "task": task,
        "family": family,
        "license": _base_license(loaded.path),
        "new_head": list(loaded.new_head),
        "own_code": loaded.own_code,
    }


def _public_spec(spec: JobSpec, base: dict) -> dict:
    """The spec as the report and card show it: local paths become bare file and folder names."""
    data = spec.model_dump(mode="json")
    if base["source"] != "hub":
        data["model"]["id"] = base["folder_name"]
    dataset = data["dataset"]
    for key in ("path", "eval_path"):
        if dataset.get(key):
            dataset[key] = Path(dataset[key]).name
    student = (data.get("distill") or {}).get("student") or {}
    if student.get("id") and Path(student["id"]).exists():
        student["id"] = Path(student["id"]).resolve().name
    return data


def _unused_label_column(spec: JobSpec, task: str, data: _Data) -> str | None:
    """Why a label column the user named is not used for ``task`` (None when it is used)."""
    column = spec.dataset.label_column
    if not column:
        return None
    if task == "text-generation":
        return (
            f"the label column {column!r} is not used: a causal LM is scored, pruned and "
            "evaluated on the text alone (column "
            f"{data.description['text_column']!r}), no labels"
        )
    if task == "feature-extraction" and data.evaluation.pairs is None:
        return (
            f"the label column {column!r} is not used: an embedding model uses labels only as "
            "similarity scores of sentence pairs (a text pair column); importance comes from a "
            "label-free loss against the original model"
        )
    return None


def run(
    spec: JobSpec,
    workdir: str | Path,
    *,
    on_progress: ProgressFn = _noop,
    should_cancel: Callable[[], bool] = lambda: False,
    out_dir: str | Path | None = None,
    overwrite: bool = False,
    token: str | None = None,
    resolve_upload: Callable[[str], Path] | None = None,
    job_id: str | None = None,
    hub_policy: HubPolicy | None = None,
) -> RunResult:
    """Run ``spec``; write the artifact folder (default ``workdir/model``) and return it with the
    report.

    Raises:
        InvalidSpec, DatasetError, ModelLoadError, UnsupportedArchitecture: bad input, before any
            heavy work where it can be known early.
        HubAccessError (and its subclasses): the model could not be downloaded or the result not
            published; ``err.transient`` says whether trying again later may succeed.
        Cancelled: ``should_cancel()`` returned true; nothing is left in the output folder's place.

    ``hub_policy`` governs downloads (pickle, remote code, size, cache, endpoint, retries) and
    publishing.
    ``token`` is the user's Hub token: passed to the Hub calls, never logged or written.
    """
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    out = Path(out_dir) if out_dir else workdir / "model"
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise InvalidSpec(
            f"output folder {out} already exists and is not empty; choose another or remove it"
        )
    if spec.publish is not None and not token:
        raise Unauthorized(
            f"publishing to {spec.publish.repo_id} needs a Hub token with write access",
            details={"repo_id": spec.publish.repo_id},
        )
    # a serving engine the spec needs must be there before any work (EngineMissing names the fix)
    if spec.export.gguf:
        engine_python("llama-cpp")
    if "vllm" in spec.export.targets:
        engine_python("vllm")
    set_seed(spec.seed)
    started = time.perf_counter()
    timings: dict[str, float] = {}

    def check() -> None:
        if should_cancel():
            raise Cancelled("the job was cancelled")

    def stage(name: str, fraction: float, message: str) -> None:
        check()
        on_progress(name, fraction, message)

    if spec.model.base_model and not _is_local_model(spec, hub_policy):
        raise InvalidSpec(
            "model.base_model (--base-model) names the Hub origin of a local model "
            f"folder; {spec.model.id} is no local folder, it is its own base",
            details={"field": "model.base_model"},
        )

    # -- downloading: model and data
    t0 = time.perf_counter()
    stage("downloading", 0.0, f"loading {spec.model.id}")
    loaded = load_model(
        spec.model.id,
        task=spec.model.task if spec.model.task != "sentence-similarity" else "feature-extraction",
        revision=spec.model.revision,
        token=token,
        policy=hub_policy,
    )
    model, tokenizer, task = loaded.model, loaded.tokenizer, loaded.task
    family = family_of(model.config).name
    if "vllm" in spec.export.targets and task != "text-generation":
        raise InvalidSpec(
            f"export target vllm serves causal LMs; {spec.model.id} is a {task} model",
            details={"field": "export.targets"},
        )
    if loaded.new_head:
        architectures = getattr(model.config, "architectures", None)
        saved_as = ", ".join(architectures or ["a model without a head"])
        head = f"{task} head ({', '.join(loaded.new_head)})"
        if not spec.model.allow_new_head:
            raise InvalidSpec(
                f"{spec.model.id} has no {task} head (its checkpoint is {saved_as}): slimformer "
                "would add a randomly initialised one and every score would be noise. Use a model "
                f"fine-tuned for {task} or another --task, or pass --allow-new-head "
                "(model.allow_new_head) to go ahead with an untrained head",
                details={"field": "model.task", "new_head": loaded.new_head},
            )
        logger.warning(
            "the %s is new and untrained (the checkpoint is %s); the card says so", head, saved_as
        )
    # classifiers learn from labels; embedding models compare pair similarities with gold scores
    # (STS)
    use_labels = task in ("text-classification", "feature-extraction")
    stage("downloading", 0.6, "loading data")
    layout = default_layout(spec, family)  # the serving targets' layout when none is given
    if spec.prune.layers and not spec.prune.removes_width():
        layout = "uniform"  # depth only: every layer keeps its shape, a stock config
    prune = spec.prune.model_copy(update={"layout": layout}).resolved(task)  # null defaults by task
    spec = spec.model_copy(update={"prune": prune})
    packed = task == "text-generation"  # causal LMs read text packed into windows (slimformer.text)
    data = _load_data(
        spec,
        use_labels,
        resolve_upload,
        token,
        policy=hub_policy,
        packed=packed,
    )
    unused_labels = _unused_label_column(spec, task, data)
    if unused_labels:
        logger.warning("%s", unused_labels)
        data.description["unused_label_column"] = spec.dataset.label_column
    max_length = 128
    batch_kwargs = dict(task=task, config=model.config, batch_size=32, max_length=max_length)
    pair_kwargs = {}
    if task == "feature-extraction":
        evaluation_data = data.evaluation
        if evaluation_data.pairs is not None and evaluation_data.labels is not None:
            pair_kwargs = {
                "pair_batches": make_batches(
                    tokenizer, TextData(evaluation_data.pairs), **batch_kwargs
                ),
                "pair_scores": [float(v) for v in evaluation_data.labels],
            }
        # an embedding model embeds each sentence on its own: pairs become two texts
        data.train = TextData(
            data.train.texts + (data.train.pairs or []),
            source=data.train.source,
            text_column=data.train.text_column,
        )
        data.evaluation = TextData(
            evaluation_data.texts,
            source=evaluation_data.source,
            text_column=evaluation_data.text_column,
        )
    protocol = cal_batches = lm_windows = None
    if packed:
        window = window_length(model.config)
        eval_text = pack_texts(
            tokenizer,
            data.evaluation.texts,
            seq_len=window,
            max_windows=spec.evaluation.rows("text-generation"),
            source=data.description["eval_source"],
        )
        cal_text = pack_texts(
            tokenizer,
            data.train.texts,
            seq_len=window,
            max_windows=spec.prune.calibration_samples,
            source=data.description["source"],
        )
        eval_batches, cal_batches = (
            eval_text.batches(LM_BATCH_WINDOWS),
            cal_text.batches(LM_BATCH_WINDOWS),
        )
        protocol = eval_text.protocol()
        if eval_text.stride == eval_text.seq_len:  # every token predicted: engines score the same
            lm_windows = eval_text.input_ids.tolist()
        data.description |= {
            "calibration_rows": len(cal_text),
            "eval_rows": len(eval_text),
            "calibration_protocol": cal_text.protocol(),
        }
    else:
        eval_batches = make_batches(tokenizer, data.evaluation, **batch_kwargs)
        calibration = calibration_sample(data.train, spec.prune.calibration_samples)
        data.description["calibration_rows"] = len(calibration)
    data.description["calibration_source"] = data.description["source"]
    original = copy.deepcopy(model).eval()
    timings["downloading"] = time.perf_counter() - t0

    reference = predict(original, eval_batches) if task != "text-generation" else None
    pruning_record = importance_report = distill_report = None
    compressed = model

    # -- scoring and pruning
    if spec.method in ("prune", "prune_distill"):
        t0 = time.perf_counter()
        p = spec.prune
        if cal_batches is None:
            cal_batches = make_batches(tokenizer, calibration, **batch_kwargs)
        target = PruningTarget(
            heads=p.heads,
            ffn=p.ffn,
            whole_mlps=p.whole_mlps,
            macs_budget=p.macs_budget,
            ranking=p.ranking,
            keep_first_layers=p.keep_first_layers,
            keep_last_layers=p.keep_last_layers,
            bias_compensation=p.bias_compensation,
            reconstruction=p.reconstruction,
        )
        depth = _prune_depth(compressed, cal_batches, p, stage, should_cancel) if p.layers else None

        def score(m):
            return score_importance(
                m,
                cal_batches,
                method=p.importance,
                seed=spec.seed,
                should_cancel=should_cancel,
                on_progress=lambda f, msg: on_progress("scoring", f, msg),
            )

        stage("scoring", 0.0, "scoring heads, neurons and MLPs")
        if depth is not None and not (p.heads or p.ffn or p.whole_mlps or p.macs_budget):
            result = one_shot_prune(compressed, None, PruningPlan(), layout="uniform")
        elif p.schedule == "iterative":
            result = iterative_prune(
                compressed,
                score,
                lambda m: task_metric(m, eval_batches, reference)[1],
                target,
                step=p.step,
                metric_floor=p.metric_floor,
                layout=p.layout,
                on_step=lambda point: stage(
                    "pruning",
                    min(1.0, point["heads_removed"] / max(p.heads, 1e-9)),
                    f"metric {point['metric']:.4f} at {point['heads_removed']:.0%} heads",
                ),
            )
        else:
            importance = score(compressed)
            timings["scoring"] = time.perf_counter() - t0
            stage("pruning", 0.0, "removing units")
            attention_scores = None
            if p.layout == "nemotron_nas" and (p.heads or p.macs_budget):
                stage("pruning", 0.0, "measuring each attention block's influence")
                attention_scores = attention_influence(
                    compressed, cal_batches, should_cancel=should_cancel
                )
            plan = plan_pruning(
                compressed,
                importance,
                target,
                layout=p.layout,
                seq_len=max_length,
                attention_scores=attention_scores,
            )
            if (
                target.wants_reconstruction(importance.method)
                and plan.grams is None
                and not plan.is_empty()
            ):
                stage("pruning", 0.0, "measuring the pruned layers' inputs for reconstruction")
                plan.grams = input_grams(
                    compressed, cal_batches, refit_keys(plan), should_cancel=should_cancel
                )
            result = one_shot_prune(compressed, importance, plan, layout=p.layout)
        compressed = result.model
        if depth is not None:
            result.record.removed_layers, result.record.original_layers = (
                depth["removed"],
                depth["of"],
            )
        pruning_record = result.record.to_dict()
        pruning_record["reconstruction"] = (
            result.plan.grams is not None
            if result.plan is not None
            else p.schedule == "iterative" and target.wants_reconstruction(p.importance)
        )
        for held in (result.plan, *result.importance):  # the Gram matrices are not needed now
            if held is not None:
                held.grams = None
        if result.importance:
            importance_report = result.importance[0].to_dict()
        if depth is not None:
            importance_report = (
                importance_report
                or {
                    "method": p.importance,
                    "loss": "",
                    "batches": 0,
                    "seconds": 0.0,
                    "heads": [],
                    "mlps": [],
                }
            ) | depth["report"]
        timings["pruning"] = time.perf_counter() - t0 - timings.get("scoring", 0.0)
        stage("pruning", 1.0, "pruned")

    # -- distilling
    if spec.method in ("distill", "prune_distill"):
        t0 = time.perf_counter()
        compressed, distill_report = _distill(
            spec,
            original,
            compressed,
            tokenizer,
            task,
            data,
            workdir,
            on_progress,
            should_cancel,
            token,
            hub_policy,
        )
        used = _settings_used(spec.distill, distill_report["recipe"])
        spec = spec.model_copy(update={"distill": used})
        timings["distilling"] = time.perf_counter() - t0

    # -- evaluating, side by side
    t0 = time.perf_counter()
    stage("evaluating", 0.0, "measuring the original and the compressed model")
    evaluation = evaluate_side_by_side(
        original,
        compressed,
        eval_batches,
        seq_len=max_length,
        latency=spec.evaluation.latency,
        **pair_kwargs,
        on_progress=lambda s, f, m: on_progress("evaluating", f, m),
        should_cancel=should_cancel,
        protocol=protocol,
    )
    timings["evaluating"] = time.perf_counter() - t0

    # -- writing the folder and the card
    t0 = time.perf_counter()
    stage("writing_card", 0.0, "writing the model, report and card")
    base_model = _base_model_record(spec, loaded, task, family)
    report = {
        "schema_version": 1,
        "job_id": job_id,
        "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "spec": _public_spec(spec, base_model),
        "base_model": base_model,
        "data": data.description,
        "evaluation": evaluation,
        "pruning": pruning_record,
        "importance": importance_report,
        "distillation": distill_report,
        "artifacts": {},
        "environment": _environment(next(compressed.parameters()).device),
        "seconds": {},
    }
    with atomic_folder(out, overwrite=overwrite) as folder:
        save_model_folder(compressed, tokenizer, folder)
        onnx = None
        if spec.evaluation.onnx or spec.evaluation.onnx_int8:
            check()
            onnx = export_onnx(compressed, eval_batches[0], folder / "model.onnx")
            onnx["path"] = "model.onnx"
        if spec.evaluation.onnx_int8:
            check()
            int8 = quantize_onnx_int8(
                folder / "model.onnx", folder / "model.int8.onnx", eval_batches[0]
            )
            onnx["int8"] = int8 | {"path": "model.int8.onnx"}
        # generation speed of every served artefact, one stream: greedy from the first evaluation
        # window's first GEN_PROMPT tokens, GEN_TOKENS new tokens (fewer if the window is shorter)
        speed = bool(spec.evaluation.latency and lm_windows)
        new_tokens = min(GEN_TOKENS, len(lm_windows[0]) - GEN_PROMPT) if speed else 0
        bench = {"batch": 1, "prompt": GEN_PROMPT, "new_tokens": new_tokens} if speed else None
        gguf = None
        if spec.export.gguf:
            check()
            stage("writing_card", 0.2, "writing GGUF files with llama.cpp")
            gguf = export_gguf(folder, folder / "gguf", tuple(spec.export.gguf))
            for entry in gguf:
                entry["file"] = f"gguf/{entry['file']}"
                if lm_windows:
                    check()
                    scores = llama_cpp_scores(
                        folder / entry["file"], lm_windows, bench_tokens=new_tokens
                    )
                    entry["perplexity"] = math.exp(scores["nll_sum"] / max(1, scores["tokens"]))
                    entry["next_token_accuracy"] = scores["hits"] / max(1, scores["tokens"])
                    entry["measured_by"] = "llama.cpp (llama-cpp-python), the evaluation windows"
                    if "bench" in scores:
                        entry["tokens_per_s"] = scores["bench"]["tokens_per_s"]
        served = None
        if "vllm" in spec.export.targets and lm_windows:
            check()
            stage("writing_card", 0.6, "loading the result in vLLM")
            scores = vllm_scores(folder, lm_windows, bench=bench)
            served = {
                "perplexity": math.exp(scores["nll_sum"] / max(1, scores["tokens"])),
                "next_token_accuracy": scores["hits"] / max(1, scores["tokens"]),
                "load_seconds": round(scores["load_s"], 1),
                "measured_by": "vLLM (CPU build, float32), the evaluation windows",
            }
            if "bench" in scores:
                served["tokens_per_s"] = scores["bench"]["tokens_per_s"]
        if speed and (gguf or served):  # the PyTorch rows of the same table
            prompt = torch.tensor([lm_windows[0][:GEN_PROMPT]])
            evaluation["generation"] = {
                "prompt_tokens": GEN_PROMPT,
                "new_tokens": new_tokens,
                "original_tokens_per_s": generation_speed(original, prompt, new_tokens),
                "compressed_tokens_per_s": generation_speed(compressed, prompt, new_tokens),
            }
        report["artifacts"] = {
            "targets": list(spec.export.targets),
            "vllm": served,
            "layout": spec.prune.layout if "prune" in spec.method else "uniform",
            "per_layer": bool(getattr(compressed.config, "auto_map", None)),
            "size_bytes": _folder_size(folder),
            "original_size_bytes": _original_size(loaded),
            "onnx": onnx,
            "gguf": gguf,
        }
        timings["writing_card"] = time.perf_counter() - t0
        report["seconds"] = {k: round(v, 2) for k, v in timings.items()} | {
            "total": round(time.perf_counter() - started, 2)
        }
        build_card(report, folder)
        report["artifacts"]["files"] = sorted([p.name for p in folder.iterdir()] + [REPORT_FILE])
        (folder / REPORT_FILE).write_text(json.dumps(report, indent=2) + "\n")
        check()
    on_progress("writing_card", 1.0, f"wrote {out}")

    # -- publishing: the folder is complete; a failure here leaves it in place for a retry
    published = None
    if spec.publish is not None:
        target = spec.publish
        stage("publishing", 0.0, f"uploading to {target.repo_id}")
        t0 = time.perf_counter()
        result = publish_folder(
            out,
            target.repo_id,
            token=token,
            private=target.private,
            create_pr=target.create_pr,
            job_id=job_id,
            policy=hub_policy,
        )
        published = result.to_dict()
        timings["publishing"] = time.perf_counter() - t0
        on_progress(
            "publishing",
            1.0,
            f"published {result.commit_url}" + (" (unchanged)" if result.skipped else ""),
        )
    return RunResult(folder=out, report=report, published=published)


def _distill(
    spec,
    teacher,
    student_or_pruned,
    tokenizer,
    task,
    data,
    workdir,
    on_progress,
    should_cancel,
    token,
    hub_policy=None,
):
    """Build the student (layer-dropped, named, or the pruned model) and distil the teacher into
    it."""
    from slimformer import distill as distillation

    d = spec.distill
    on_progress("distilling", 0.0, "preparing the student")
    layer_map = None
    if spec.method == "prune_distill":
        student = student_or_pruned
    elif d.student.layers is not None:
        calibration = None
        if d.student.layer_selection == "importance":
            rows = calibration_sample(data.train, spec.prune.calibration_samples)
            calibration = make_batches(tokenizer, rows, task=task, config=teacher.config)
        student, layer_map = distillation.make_layer_dropped_student(
            teacher,
            d.student.layers,
            strategy=d.student.layer_selection,
            calibration_batches=calibration,
            should_cancel=should_cancel,
        )
    else:
        named = load_model(d.student.id, task=task, token=token, policy=hub_policy)
        distillation.check_student_compatible(teacher, named.model, tokenizer, named.tokenizer)
        student = named.model
    recipe = distill_recipe(spec, task)
    config = recipe.config
    train, dev = held_out_split(data.train)
    result = distillation.distill(
        teacher,
        student,
        tokenizer,
        train,
        dev,
        config,
        task=task,
        layer_map=layer_map,
        checkpoint_dir=Path(workdir) / "checkpoints",
        on_progress=on_progress,
        should_cancel=should_cancel,
    )
    history = result.history
    stride = max(
        1, len(history) // 200
    )  # keep the report readable: at most ~200 points of the loss curve
    return result.student, {
        "student": {"layers": d.student.layers, "kept_layers": layer_map}
        if d.student and d.student.layers
        else {"id": d.student.id}
        if d.student
        else {"pruned": True},
        "steps": result.steps,
        "seconds": round(result.seconds, 2),
        "stopped_because": result.stopped_because,
        "metric": result.metric_name,
        "best_metric": result.best_metric,
        "best_step": result.best_step,
        "teacher_metric": result.teacher_metric,
        "resumed_from_step": result.resumed_from_step,
        "metric_higher_is_better": result.higher_is_better,
        "recipe": recipe.to_dict(),
        "plan": result.plan,
        "evaluations": result.evaluations(),
        "history": history[::stride],
        "health": result.health,
    }


# -- distillation and calibration recipe: shared with bench/distillation.py,
# bench/pruning_sweep.py --

HELD_OUT_ROWS = 500  # at most this many training rows choose the best distillation checkpoint


def _prune_depth(model, batches: list[dict], p: PruneSpec, stage: Callable, should_cancel) -> dict:
    """Score whole layers, drop the ``p.layers`` least important ones (before any width pruning)."""
    stage("scoring", 0.0, f"scoring whole layers ({p.depth_importance})")
    scores = score_depth(
        model,
        batches,
        method=p.depth_importance,
        should_cancel=should_cancel,
        on_progress=lambda f, msg: stage("scoring", f, msg),
    )
    removed = plan_depth(
        scores, p.layers, keep_first_layers=p.keep_first_layers, keep_last_layers=p.keep_last_layers
    )
    stage("pruning", 0.0, f"dropping layers {removed}")
    drop_layers(model, removed)
    return {
        "removed": removed,
        "of": len(scores),
        "report": {"layers": [float(v) for v in scores], "depth_importance": p.depth_importance},
    }


def seeded_order(n: int, seed: int) -> list[int]:
    """The job's order of ``n`` training rows: ``random.Random(seed)`` shuffles ``range(n)``.

    Training, the held-out slice of distillation and the calibration rows of pruning all read the
    training rows in this order, so a benchmark that draws its rows here gets a user's rows.
    """
    order = list(range(n))
    random.Random(seed).shuffle(order)
    return order


def calibration_sample(train: TextData, samples: int) -> TextData:
    """The rows importance is scored on: the first ``samples`` of ``train`` in the job's order.

    ``train`` is the job's training rows as :func:`seeded_order` arranged them (and without the
    held-out evaluation fifth when no evaluation data was given).
    """
    return train.head(samples)


def held_out_split(train: TextData) -> tuple[TextData, TextData]:
    """``(training rows, held-out rows)`` of a distillation: the first ``min(500, a tenth)`` rows of
    ``train`` (in the job's seeded order) choose the best checkpoint and are never trained on.

    The evaluation data the card reports is never used for that.
    """
    rows = min(HELD_OUT_ROWS, max(1, len(train) // 10))
    return train.subset(list(range(rows, len(train)))), train.subset(list(range(rows)))


def student_kind(spec: JobSpec) -> str:
    """``pruned`` (prune_distill), ``layer_dropped`` (``{layers}``) or ``named`` (``{id}``)."""
    if spec.method == "prune_distill":
        return "pruned"
    student = spec.distill.student
    return "layer_dropped" if student is not None and student.layers is not None else "named"


def distill_recipe(spec: JobSpec, task: str):
    """The :class:`~slimformer.distill.recipes.ResolvedRecipe` of a job: its student's recipe, then
    the settings the spec gives.
    """
    from slimformer.distill.recipes import resolve_recipe

    d = spec.distill
    return resolve_recipe(
        student_kind(spec),
        task,
        temperature=d.temperature,
        alpha=d.alpha,
        hidden_loss=d.hidden_loss,
        learning_rate=d.learning_rate,
        epochs=d.epochs,
        max_steps=d.max_steps,
        max_minutes=d.max_minutes,
        seed=spec.seed,
    )


def _settings_used(d, recipe: dict):
    """``d`` (a DistillSpec) with the recipe's values filled in, as the report and card record them.

    A hidden-state loss the recipe leaves off stays null (re-running the spec gives the same); one
    the user turned off stays ``"none"``.
    """
    values = dict(recipe["values"])
    if values["hidden_loss"] == "none" and "hidden_loss" in recipe["from_recipe"]:
        values["hidden_loss"] = None
    return d.model_copy(update=values)


__all__ = ["run", "RunResult", "STAGES", "set_seed"]
