"""Loading a model of a supported family, and its tokenizer, from a local folder or the Hub.

A Hub id is downloaded by :func:`slimformer.hub.download.download_model` under the operator's
policy, then loaded from the snapshot folder like a local one. slimformer's own ``per_layer``
models load with the installed modelling code, never the copy in the folder.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import transformers
from torch import nn

from slimformer.architectures import family_of
from slimformer.artifacts import is_own_auto_map, is_own_modeling_file
from slimformer.errors import InvalidSpec, ModelLoadError, RemoteCode
from slimformer.hub.download import MODELING_FILE, download_model, remote_code_reason
from slimformer.hub.policy import HubPolicy
from slimformer.models import AUTO_CLASS_FOR_TASK, TASKS
from slimformer.spec import is_hub_id

# any of these in a folder means it has a tokenizer (fast, WordPiece, BPE or SentencePiece files)
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
    "spiece.model",
    "sentencepiece.bpe.model",
)
_COMMIT = re.compile(r"^[0-9a-f]{40}$")


@dataclass
class LoadedModel:
    model: nn.Module
    tokenizer: object
    task: str
    source: str
    revision: str | None = None
    commit: str | None = None  # the resolved Hub commit; None for a local folder
    path: Path | None = None  # the folder the model was loaded from (the snapshot, for a Hub id)
    # weights of the task head that the checkpoint lacked: randomly initialised by transformers
    new_head: list[str] = field(default_factory=list)
    own_code: bool = False  # a slimformer per_layer model, loaded with the installed modelling code


@dataclass
class ModelOrigin:
    """Where a model folder came from on the Hub, as far as the folder tells.

    ``source``: ``hub_cache`` (a snapshot folder of the Hugging Face cache: id and commit are
    known), ``config`` (``_name_or_path`` in its config.json is a Hub id), or ``local`` (nothing
    tells).
    """

    hub_id: str | None
    commit: str | None
    source: str


def infer_task(config) -> str:
    """The task a checkpoint was saved for, from ``config.architectures``."""
    for arch in getattr(config, "architectures", None) or []:
        if arch.endswith("ForSequenceClassification"):
            return "text-classification"
        if arch.endswith(("ForCausalLM", "LMHeadModel")):
            return "text-generation"
    return "feature-extraction"


def _one_line(err: BaseException, limit: int = 300) -> str:
    """A third-party error message on one line (transformers' span several), cut to ``limit``."""
    text = " ".join(str(err).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _has_tokenizer(folder: Path) -> bool:
    return any((folder / name).is_file() for name in TOKENIZER_FILES) or any(folder.glob("*.model"))


def _new_head(model: nn.Module, missing_keys) -> list[str]:
    """Weights outside the base model that the checkpoint lacked: a head transformers made up."""
    if model.base_model is model:
        return []
    prefix = f"{model.base_model_prefix}."
    return sorted(key for key in missing_keys if not key.startswith(prefix))


def _read_config(folder: Path, model_id: str) -> dict:
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError) as err:
        raise ModelLoadError(
            f"{model_id}: config.json is not valid JSON ({_one_line(err)})",
            details={"model": model_id},
        ) from err
    if not isinstance(config, dict):
        raise ModelLoadError(
            f"{model_id}: config.json holds no JSON object", details={"model": model_id}
        )
    return config


def _own_classes(raw_config: dict, task: str | None) -> tuple[type, type | None]:
    """(installed config class, stock class of ``task``'s model) of a slimformer per_layer
    config."""
    from slimformer.modeling import modeling_slimformer as installed

    config_cls = getattr(installed, raw_config["auto_map"]["AutoConfig"].partition(".")[2])
    if task is None:
        return config_cls, None
    nemotron = config_cls is installed.SlimformerDeciLMConfig  # a Llama in block_configs form
    stock_config = transformers.CONFIG_MAPPING["llama" if nemotron else config_cls.model_type]
    auto = getattr(transformers, AUTO_CLASS_FOR_TASK[task])
    return config_cls, auto._model_mapping[stock_config]


def _load_own(folder: Path, model_id: str, raw_config: dict, task: str | None):
    """A slimformer per_layer model, built by the installed modelling code (never the copy).

    Returns the config, and a loader of (model, tokenizer, missing keys) for a task. The model
    keeps the stock class: the per-layer class only shapes the layers while it is built, and
    afterwards the model is exactly what pruning produced in the run that wrote it.
    """
    from slimformer.modeling import modeling_slimformer as installed

    config_cls, _ = _own_classes(raw_config, None)
    config = config_cls.from_pretrained(folder)

    def load(task: str):
        _, stock_cls = _own_classes(raw_config, task)
        if isinstance(config, installed.SlimformerDeciLMConfig):  # the nemotron_nas layout
            if task != "text-generation":
                raise ModelLoadError(
                    f"{model_id} is a causal LM in the nemotron_nas layout; it has no {task} head",
                    details={"model": model_id},
                )
            model, info = installed.SlimformerDeciLMForCausalLM.from_pretrained(
                folder, config=config, output_loading_info=True
            )
            tokenizer = transformers.AutoTokenizer.from_pretrained(folder, config=config)
            return model, tokenizer, info["missing_keys"]
        try:
            _, model_name = installed.class_names(config.model_type, stock_cls.__name__)
        except KeyError as err:
            raise ModelLoadError(
                f"{model_id}: slimformer's per-layer code has no {stock_cls.__name__} ({task})",
                details={"model": model_id},
            ) from err
        model, info = getattr(installed, model_name).from_pretrained(
            folder, config=config, output_loading_info=True
        )
        model.__class__ = stock_cls
        tokenizer = transformers.AutoTokenizer.from_pretrained(folder, config=config)
        return model, tokenizer, info["missing_keys"]

    return config, load


def _model_folder(
    model_id: str,
    revision: str | None,
    token: str | None,
    trust_remote_code: bool,
    policy: HubPolicy | None,
    before_weights: Callable[[dict, dict | None], None] | None = None,
) -> tuple[Path, str | None, bool]:
    """(folder, commit, trust_remote_code): a local model folder as it is, or a Hub id's snapshot
    (downloaded under ``policy``, which may allow remote code) with its commit."""
    local = Path(model_id)
    local_files = policy.allow_local_files if policy is not None else True
    if not local_files and not is_hub_id(model_id):
        raise InvalidSpec(
            f"{model_id!r} is not a Hub model id (expected 'name' or 'org/name')",
            details={"field": "model"},
        )
    if local_files and local.exists():
        if not local.is_dir() or not (local / "config.json").is_file():
            raise ModelLoadError(
                f"{model_id} is not a model folder: it has no config.json",
                details={"model": model_id},
            )
        if before_weights is not None:
            from slimformer.memory import safetensors_parameters

            config = json.loads((local / "config.json").read_text())
            before_weights(config, safetensors_parameters(local) or None)
        return local, None, trust_remote_code
    policy = policy or HubPolicy(allow_remote_code=trust_remote_code)
    snapshot = download_model(
        model_id, revision=revision, token=token, policy=policy, before_weights=before_weights
    )
    return snapshot.path, snapshot.commit, trust_remote_code or policy.allow_remote_code


def _load_config(local: Path, model_id: str, task: str | None, trust_remote_code: bool):
    """(config, loader of slimformer's own per_layer model or None): remote code refused first.

    Raises:
        RemoteCode: a config with an ``auto_map`` other than slimformer's own, without
            ``trust_remote_code``.
        ModelLoadError: no loadable config.
    """
    raw_config = _read_config(local, model_id)
    auto_map = raw_config.get("auto_map")
    own = is_own_auto_map(auto_map) and is_own_modeling_file(local / MODELING_FILE)
    details = {"model": model_id}
    if auto_map and not own and not trust_remote_code:
        reason = remote_code_reason(raw_config, "config.json")
        raise RemoteCode(
            f"{model_id} needs its own modelling code ({reason}); slimformer runs "
            "only its own per-layer models' code, recognised by its digest",
            details=details,
        )
    try:
        if own:
            return _load_own(local, model_id, raw_config, task)
        config = transformers.AutoConfig.from_pretrained(local, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as err:
        raise ModelLoadError(
            f"cannot load a model config from {model_id!r}: {_one_line(err)}",
            details=details,
        ) from err
    return config, None


def _load_weights(local: Path, model_id: str, task: str, trust_remote_code: bool, load_own):
    """(model, tokenizer, missing keys) for ``task``; a per_layer model by ``load_own``."""
    kwargs = {"trust_remote_code": trust_remote_code}
    auto = getattr(transformers, AUTO_CLASS_FOR_TASK[task])
    try:
        if load_own is not None:
            return load_own(task)
        model, info = auto.from_pretrained(local, output_loading_info=True, **kwargs)
        tokenizer = transformers.AutoTokenizer.from_pretrained(local, **kwargs)
        return model, tokenizer, info["missing_keys"]
    except (OSError, ValueError) as err:
        raise ModelLoadError(
            f"cannot load {model_id!r} for {task}: {_one_line(err)}",
            details={"model": model_id},
        ) from err


@dataclass
class OpenedModel:
    """A model folder whose config and task are known and checked, before any weight is read
    (:func:`open_model`); :meth:`load` reads the weights."""

    model_id: str
    folder: Path
    config: object
    task: str
    revision: str | None
    commit: str | None
    trust_remote_code: bool
    load_own: Callable | None  # slimformer's own per_layer model's loader, or None

    def load(self) -> LoadedModel:
        """The model with its weights and the head for the task, and its tokenizer."""
        model, tokenizer, missing = _load_weights(
            self.folder, self.model_id, self.task, self.trust_remote_code, self.load_own
        )
        return LoadedModel(
            model=model.eval(),
            tokenizer=tokenizer,
            task=self.task,
            source=self.model_id,
            revision=self.revision,
            commit=self.commit,
            path=self.folder,
            new_head=_new_head(model, missing),
            own_code=self.load_own is not None,
        )

    def load_tokenizer(self):
        return transformers.AutoTokenizer.from_pretrained(
            self.folder, trust_remote_code=self.trust_remote_code
        )


def open_model(
    model_id: str,
    *,
    task: str | None = None,
    revision: str | None = None,
    token: str | None = None,
    trust_remote_code: bool = False,
    policy: HubPolicy | None = None,
    before_weights: Callable[[dict, dict | None], None] | None = None,
) -> OpenedModel:
    """Everything :func:`load_model` checks and fetches before it reads the weights: the folder
    (a Hub id's snapshot), the config, the family, the tokenizer files and the task. See
    :func:`load_model` for the arguments and errors.

    ``before_weights(config, parameters_by_dtype)`` sees the raw ``config.json`` (and the
    safetensors summary) before any weight is downloaded; what it raises stops there."""
    if task is not None and task not in TASKS:
        raise InvalidSpec(
            f"unknown task {task!r}; choose one of {', '.join(TASKS)}",
            details={"field": "task"},
        )
    local, commit, trust_remote_code = _model_folder(
        model_id, revision, token, trust_remote_code, policy, before_weights
    )
    config, load_own = _load_config(local, model_id, task, trust_remote_code)
    family_of(config)
    if not _has_tokenizer(local):
        where = "the repo" if commit else "the folder"
        raise ModelLoadError(
            f"{model_id} has no tokenizer ({where} holds no tokenizer.json, tokenizer_config.json "
            "or vocab file): save the base model's tokenizer next to the weights, e.g. "
            "AutoTokenizer.from_pretrained(BASE).save_pretrained(FOLDER)",
            details={"model": model_id},
        )
    task = task or infer_task(config)
    return OpenedModel(model_id, local, config, task, revision, commit, trust_remote_code, load_own)


def load_model(
    model_id: str,
    *,
    task: str | None = None,
    revision: str | None = None,
    token: str | None = None,
    trust_remote_code: bool = False,
    policy: HubPolicy | None = None,
) -> LoadedModel:
    """Load a model of a supported family with the head for ``task`` (inferred when not given), and
    its tokenizer.

    ``model_id`` is a local folder (unless ``policy.allow_local_files`` is false), or a Hub id
    fetched with :func:`download_model` under ``policy`` (by default one that allows remote code
    exactly when ``trust_remote_code`` is true) and loaded from the snapshot folder.

    A model slimformer wrote in the ``per_layer`` layout (its ``auto_map`` names only slimformer's
    ``modeling_slimformer.py`` and that file's SHA-256 is one slimformer shipped) loads with the
    installed modelling code and no remote code. Any other ``auto_map`` needs ``trust_remote_code``.

    ``LoadedModel.new_head`` lists the head weights the checkpoint lacked (a classification head
    asked of a causal LM, say): transformers initialised them at random.

    Raises:
        ModelLoadError: a folder without a model or a tokenizer, an id that cannot be loaded.
        RemoteCode: a local folder whose config needs remote code, without ``trust_remote_code``.
        HubAccessError (and its subclasses): the download was refused or failed.
        UnsupportedArchitecture: a family slimformer cannot prune (checked before weights load).
        InvalidSpec: an unknown task.
    """
    return open_model(
        model_id,
        task=task,
        revision=revision,
        token=token,
        trust_remote_code=trust_remote_code,
        policy=policy,
    ).load()


def folder_origin(folder: str | Path) -> ModelOrigin:
    """Where a local model folder came from, when the folder tells.

    A snapshot folder of the Hugging Face cache (``.../models--org--name/snapshots/<commit>/``)
    gives the id and the commit; else ``_name_or_path`` in its config.json, when that is a Hub id
    and no local path (older transformers recorded there the id the weights were loaded from).
    """
    resolved = Path(folder).resolve()
    repo_dir = resolved.parent.parent.name
    if (
        resolved.parent.name == "snapshots"
        and repo_dir.startswith("models--")
        and _COMMIT.match(resolved.name)
    ):
        repo_id = repo_dir.removeprefix("models--").replace("--", "/")
        if is_hub_id(repo_id):
            return ModelOrigin(repo_id, resolved.name, "hub_cache")
    try:
        name = json.loads((resolved / "config.json").read_text()).get("_name_or_path")
    except (OSError, ValueError, AttributeError):
        name = None
    if (
        isinstance(name, str)
        and is_hub_id(name)
        and not Path(name).exists()
        and not (resolved.parent / name).exists()
    ):
        return ModelOrigin(name, None, "config")
    return ModelOrigin(None, None, "local")
