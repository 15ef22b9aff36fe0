"""Loading models and tokenizers from a local folder or a Hub id."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import transformers
from torch import nn

from slimformer.architectures import family_of
from slimformer.errors import InvalidSpec, ModelLoadError

logger = logging.getLogger(__name__)

TASKS = ("text-classification", "text-generation", "feature-extraction", "sentence-similarity")
AUTO_CLASS_FOR_TASK = {
    "text-classification": "AutoModelForSequenceClassification",
    "text-generation": "AutoModelForCausalLM",
    "feature-extraction": "AutoModel",
    "sentence-similarity": "AutoModel",
}


@dataclass
class LoadedModel:
    model: nn.Module
    tokenizer: object
    task: str
    source: str
    revision: str | None = None


def infer_task(config) -> str:
    """The task a checkpoint was saved for, from ``config.architectures``."""
    for arch in getattr(config, "architectures", None) or []:
        if arch.endswith("ForSequenceClassification"):
            return "text-classification"
        if arch.endswith(("ForCausalLM", "LMHeadModel")):
            return "text-generation"
    return "feature-extraction"


def load_model(
    model_id: str,
    *,
    task: str | None = None,
    revision: str | None = None,
    token: str | None = None,
    trust_remote_code: bool = False,
) -> LoadedModel:
    """Load a model of a supported family with the head for ``task`` (inferred when not given), and its tokenizer.

    Raises:
        ModelLoadError: a folder without a model, an id that cannot be loaded.
        UnsupportedArchitecture: a family slimformer cannot prune (checked before weights load).
        InvalidSpec: an unknown task.
    """
    if task is not None and task not in TASKS:
        raise InvalidSpec(f"unknown task {task!r}; choose one of {', '.join(TASKS)}", details={"field": "task"})
    local = Path(model_id)
    if local.exists():
        if not local.is_dir() or not (local / "config.json").is_file():
            raise ModelLoadError(f"{model_id} is not a model folder: it has no config.json", details={"model": model_id})
    kwargs = {"revision": revision, "token": token, "trust_remote_code": trust_remote_code}
    try:
        config = transformers.AutoConfig.from_pretrained(model_id, **kwargs)
    except OSError as err:
        raise ModelLoadError(f"cannot load a model config from {model_id!r}: {err}", details={"model": model_id}) from err
    family_of(config)
    task = task or infer_task(config)
    auto = getattr(transformers, AUTO_CLASS_FOR_TASK[task])
    try:
        model = auto.from_pretrained(model_id, **kwargs)
        tokenizer = transformers.AutoTokenizer.from_pretrained(model_id, **kwargs)
    except (OSError, ValueError) as err:
        raise ModelLoadError(f"cannot load {model_id!r} for {task}: {err}", details={"model": model_id}) from err
    return LoadedModel(model=model.eval(), tokenizer=tokenizer, task=task, source=model_id, revision=revision)
