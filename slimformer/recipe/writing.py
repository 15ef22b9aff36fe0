"""Stage ``writing_card``: the model folder, its served files, the report and the card, written
into a folder that appears only when everything succeeded."""

from __future__ import annotations

import datetime as dt
import json
import platform
import shutil
import time
from pathlib import Path

import torch

from slimformer import __version__
from slimformer.artifacts import atomic_folder, config_reads_without_code, save_model_folder
from slimformer.card import build_card
from slimformer.errors import InvalidSpec
from slimformer.loading import LoadedModel, folder_origin
from slimformer.pruning import STOCK_LAYOUT
from slimformer.recipe import serving, whole_models
from slimformer.recipe.job import Job
from slimformer.recipe.pruning import STAGING
from slimformer.report import CompressionReport
from slimformer.spec import JobSpec
from slimformer.streaming.writer import write_folder

REPORT_FILE = "compression_report.json"
SCHEMA_FILE = Path(__file__).parents[1] / "schemas" / "compression_report.schema.json"


def check(job: Job) -> None:
    """Refuse, before any work, to write into a folder that holds something."""
    out = job.out
    if out.exists() and any(out.iterdir()) and not job.overwrite:
        raise InvalidSpec(
            f"output folder {out} already exists and is not empty; choose another or remove it"
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


def base_model_record(spec: JobSpec, loaded: LoadedModel, task: str, family: str) -> dict:
    """The report's ``base_model``: a Hub id wherever it can be known, never a local path.

    ``source`` says how the id is known: ``hub`` (downloaded), ``hub_cache`` (a snapshot folder of
    the Hugging Face cache), ``config`` (``_name_or_path`` in the folder's config.json), ``given``
    (``model.base_model`` / ``--base-model``) or ``local`` (unknown: ``id`` is the folder's name).
    """
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


def public_spec(spec: JobSpec, base: dict) -> dict:
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


def _report(job: Job) -> dict:
    inputs, spec = job.inputs, job.final_spec
    base_model = base_model_record(spec, inputs.loaded, inputs.task, inputs.family)
    return {
        "schema_version": 1,
        "job_id": job.job_id,
        "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "spec": public_spec(spec, base_model),
        "base_model": base_model,
        "data": inputs.data.description,
        "evaluation": job.evaluation,
        "pruning": job.pruned.record if job.pruned else None,
        "importance": job.pruned.importance if job.pruned else None,
        "distillation": job.distilled.report if job.distilled else None,
        "artifacts": {},
        "environment": _environment(next(job.compressed.parameters()).device),
        "seconds": {},
        "execution": None,
    }


def _artifacts(job: Job, folder: Path, served: serving.Served) -> dict:
    spec, compressed = job.final_spec, job.compressed
    return {
        "targets": spec.served_targets(),
        "vllm": served.vllm,
        "layout": spec.prune.layout if "prune" in spec.method else STOCK_LAYOUT,
        "per_layer": bool(getattr(compressed.config, "auto_map", None)),
        "config_reads_without_code": config_reads_without_code(folder),
        "size_bytes": _folder_size(folder),
        "original_size_bytes": _original_size(job.inputs.loaded),
        "onnx": served.onnx,
        "gguf": served.gguf,
        "quantized": served.quantized,
    }


def _save(job: Job, folder: Path) -> None:
    """The model folder: saved from memory, or (layer by layer) from the staged layers."""
    inputs = job.inputs
    if inputs.streamed is None:
        save_model_folder(job.compressed, inputs.tokenizer, folder)
        return
    staging = job.workdir / STAGING
    write_folder(inputs.streamed, staging, folder, inputs.tokenizer)
    shutil.rmtree(staging, ignore_errors=True)


def run(job: Job) -> dict:
    t0 = time.perf_counter()
    job.stage("writing_card", 0.0, "writing the model, report and card")
    report = job.report = _report(job)
    with atomic_folder(job.out, overwrite=job.overwrite) as folder:
        _save(job, folder)
        whole_models.measure(job, folder)
        served = serving.measure(job, folder)
        if served.generation is not None:
            job.evaluation["generation"] = served.generation
        report["artifacts"] = _artifacts(job, folder, served)
        job.timed("writing_card", t0)
        report["seconds"] = {k: round(v, 2) for k, v in job.timings.items()} | {
            "total": round(time.perf_counter() - job.started, 2)
        }
        if job.execution is not None:  # the estimate beside the peak measured so far
            report["execution"] = job.execution.to_dict()
        build_card(CompressionReport.model_validate(report), folder)
        report["artifacts"]["files"] = sorted([p.name for p in folder.iterdir()] + [REPORT_FILE])
        (folder / REPORT_FILE).write_text(json.dumps(report, indent=2) + "\n")
        job.check()
    job.on_progress("writing_card", 1.0, f"wrote {job.out}")
    return report
