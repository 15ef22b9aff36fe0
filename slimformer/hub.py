"""Pulling models from and publishing them to the Hugging Face Hub, and loading them.

All Hub traffic goes through ``huggingface_hub``. A download asks the repo's metadata first and
refuses, before any file moves, what the operator's :class:`HubPolicy` does not allow: too large,
pickle checkpoints only, custom modelling code. Then it fetches only what a model needs (safetensors
weights, JSON configs, tokenizer files, the card) into huggingface_hub's cache, whose file locks let
concurrent jobs share it. Errors become :mod:`slimformer.errors` with a stable ``code``; network
errors and 5xx answers are retried with backoff.

The token is passed to the calls that need it and to nothing else: it is never logged, stored or
written.
"""

from __future__ import annotations

import fnmatch
import json
import logging
import os
import random
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import transformers
from torch import nn

from slimformer.architectures import family_of
from slimformer.artifacts import MODELING_MODULE, is_own_auto_map, is_own_modeling_file
from slimformer.errors import (
    GatedRepo,
    HubAccessError,
    HubUnavailable,
    InvalidSpec,
    ModelLoadError,
    ModelTooLarge,
    PickleOnly,
    RemoteCode,
    RepoNotFound,
    RevisionNotFound,
    Unauthorized,
)
from slimformer.models import AUTO_CLASS_FOR_TASK, TASKS
from slimformer.spec import is_hub_id

logger = logging.getLogger(__name__)

SAFETENSORS_PATTERNS = ("*.safetensors",)
# configs (model, generation, tokenizer, sentence-transformers modules, shard indexes) are all JSON
CONFIG_PATTERNS = ("*.json",)
TOKENIZER_PATTERNS = ("*vocab*.txt", "*merges.txt", "*.model", "*.tiktoken")
CARD_PATTERNS = ("README.md",)
# what transformers loads when a repo has no safetensors; only fetched when the operator allows
# pickle
PICKLE_WEIGHT_PATTERNS = ("pytorch_model*.bin",)
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt")
_DTYPE_BYTES = {
    "F64": 8,
    "I64": 8,
    "F32": 4,
    "I32": 4,
    "F16": 2,
    "BF16": 2,
    "I16": 2,
    "F8_E4M3": 1,
    "F8_E5M2": 1,
    "I8": 1,
    "U8": 1,
    "BOOL": 1,
}

MODELING_FILE = f"{MODELING_MODULE}.py"  # slimformer's own modelling code in per_layer artifacts
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

T = TypeVar("T")


@dataclass
class HubPolicy:
    """What the operator allows downloads to do, and how to reach the Hub.

    Attributes:
        allow_pickle: download pickle checkpoints (``pytorch_model*.bin``) when a repo has no
            safetensors. Loading a pickle runs code chosen by the repo's author.
        allow_remote_code: accept repos whose config needs ``trust_remote_code`` (``auto_map``).
            slimformer's own per_layer models never need it: their modelling file is recognised by
            its digest.
        max_model_bytes: refuse repos whose files to download add up to more (from metadata, before
            downloading).
        cache_dir: huggingface_hub cache shared by concurrent jobs (``HF_HUB_CACHE`` when None).
        endpoint: Hub or mirror URL (``HF_ENDPOINT``, read at call time, then
            https://huggingface.co, when None).
        retries: extra attempts after a network error or a 5xx answer; 4xx answers are never
            retried.
        backoff_seconds: wait before the first retry; doubled each time, with jitter.
        allow_local_files: a model id may name a local folder (the command line). A service passes
            False: every id is then a Hub id, never looked up on the local disk, whatever folders
            exist there.
        ambient_token: a call without a token uses the machine's own Hub login (``HF_TOKEN``, a
            saved login), as the command line does. A service passes False: a job without a
            token reads public repos only, whatever login the worker machine has.
    """

    allow_pickle: bool = False
    allow_remote_code: bool = False
    max_model_bytes: int | None = None
    cache_dir: str | Path | None = None
    endpoint: str | None = None
    retries: int = 3
    backoff_seconds: float = 1.0
    allow_local_files: bool = True
    ambient_token: bool = True

    def request_token(self, token: str | None) -> str | bool | None:
        """The token to send: the job's own, else the machine's login (None) or none (False)."""
        return token or (None if self.ambient_token else False)

    def resolved_endpoint(self) -> str:
        from huggingface_hub import constants

        return (self.endpoint or os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")


@dataclass
class DownloadedModel:
    """A snapshot folder in the cache, the commit it holds and the revision that was asked for."""

    path: Path
    commit: str
    revision: str | None


@dataclass
class PublishResult:
    repo_url: str
    commit_sha: str
    commit_url: str
    pr_url: str | None
    skipped: bool  # nothing changed since the last commit: no new commit was made

    def to_dict(self) -> dict:
        return {
            "repo_url": self.repo_url,
            "commit_sha": self.commit_sha,
            "commit_url": self.commit_url,
            "pr_url": self.pr_url,
        }


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


# -- errors and retries


def _causes(err: BaseException):
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        yield err
        err = err.__cause__ or err.__context__


def _status(err: BaseException) -> int | None:
    response = getattr(err, "response", None)
    return getattr(response, "status_code", None)


def is_transient(err: BaseException) -> bool:
    """A network error or a 5xx answer anywhere in the chain of causes (huggingface_hub wraps
    some)."""
    import httpx2

    for cause in _causes(err):
        if isinstance(cause, httpx2.TransportError):
            return True
        status = _status(cause)
        if status is not None:
            return status >= 500
    return False


def _hub_error(
    err: BaseException, what: str, *, repo_id: str, revision: str | None, token: str | None
) -> HubAccessError:
    """Translate a huggingface_hub / httpx error into ours: the one place where this happens."""
    from huggingface_hub import errors as hf

    details = {"repo_id": repo_id, "revision": revision}
    for cause in _causes(err):
        if isinstance(cause, hf.GatedRepoError):
            return GatedRepo(
                f"{repo_id} is a gated repo and the token has not been granted access; "
                "request access on its Hub page",
                details=details,
            )
        if isinstance(cause, hf.RevisionNotFoundError):
            return RevisionNotFound(f"{repo_id} has no revision {revision!r}", details=details)
        if isinstance(cause, hf.RepositoryNotFoundError):
            hint = (
                "; if it is private, give a token with read access"
                if token is None
                else (" or the token cannot see it")
            )
            return RepoNotFound(f"repo {repo_id} not found{hint}", details=details)
        if isinstance(cause, hf.OfflineModeIsEnabled):
            return HubAccessError(
                f"cannot {what} {repo_id}: offline mode is on (HF_HUB_OFFLINE)", details=details
            )
        status = _status(cause)
        if status in (401, 403):
            reason = (
                "no token was given"
                if token is None
                else "the token is invalid or lacks the rights"
            )
            return Unauthorized(
                f"the Hub refused to {what} {repo_id} ({status}): {reason}", details=details
            )
        if status == 429:
            return HubUnavailable(
                f"the Hub rate-limited the request to {what} {repo_id}; try again later",
                details=details,
            )
    if is_transient(err):
        return HubUnavailable(
            f"the Hub could not be reached to {what} {repo_id}: {type(err).__name__}",
            details=details,
        )
    status = next((s for s in map(_status, _causes(err)) if s is not None), None)
    return HubAccessError(
        f"cannot {what} {repo_id}" + (f" (HTTP {status})" if status else f": {err}"),
        details=details,
    )


def _with_retries(
    call: Callable[[], T],
    policy: HubPolicy,
    what: str,
    *,
    repo_id: str,
    revision: str | None,
    token: str | None,
) -> T:
    """``call()``, retried on network errors and 5xx with exponential backoff and full jitter;
    errors translated."""
    for attempt in range(policy.retries + 1):
        try:
            return call()
        except HubAccessError:
            raise
        except Exception as err:
            if not is_transient(err) or attempt == policy.retries:
                raise _hub_error(
                    err, what, repo_id=repo_id, revision=revision, token=token
                ) from err
            wait = policy.backoff_seconds * 2**attempt * random.uniform(0.5, 1.0)
            logger.warning(
                "Hub request to %s %s failed (%s); retry %d of %d in %.1f s",
                what,
                repo_id,
                type(err).__name__,
                attempt + 1,
                policy.retries,
                wait,
            )
            time.sleep(wait)
    raise AssertionError("unreachable")


# -- downloading


def _matches(name: str, patterns) -> bool:
    return any(fnmatch.fnmatch(name, p) for p in patterns)


def _remote_code_reason(config: dict | None, name: str) -> str | None:
    if config and config.get("auto_map"):
        return f"{name} maps to custom classes ({', '.join(sorted(config['auto_map']))})"
    return None


def _metadata_bytes(info, wanted: list[str]) -> int | None:
    """Bytes to download: sizes of the wanted files, else parameters x dtype width from the
    safetensors summary."""
    sizes = {s.rfilename: s.size for s in info.siblings or []}
    if wanted and all(sizes.get(name) is not None for name in wanted):
        return sum(sizes[name] for name in wanted)
    params = getattr(getattr(info, "safetensors", None), "parameters", None)
    if params:
        return sum(count * _DTYPE_BYTES.get(dtype, 4) for dtype, count in params.items())
    return None


def download_model(
    model_id: str,
    *,
    revision: str | None = None,
    token: str | None = None,
    policy: HubPolicy | None = None,
) -> DownloadedModel:
    """Download what a model needs from the Hub into the shared cache, after checking the policy.

    Args:
        model_id: ``org/name`` on the Hub (or on ``policy.endpoint``).
        revision: branch, tag or commit; the default branch when None.
        token: read token for private and gated repos; used for the requests only.
        policy: what is allowed (defaults: safetensors only, no remote code, no size limit).

    Returns:
        The snapshot folder and the commit it holds.

    Raises:
        RepoNotFound, RevisionNotFound, GatedRepo, Unauthorized: the Hub said no (never retried).
        ModelTooLarge, PickleOnly, RemoteCode: refused by the policy, before weights are downloaded
            (a slimformer per_layer model whose ``modeling_slimformer.py`` has a known digest is no
            remote code).
        HubUnavailable: network errors or 5xx answers outlasted the retries (``transient``).
        ModelLoadError: the repo holds no weights at all.

    Example:
        >>> snapshot = download_model(
        ...     "sentence-transformers/all-MiniLM-L6-v2", policy=HubPolicy(max_model_bytes=10**9)
        ... )
    """
    from huggingface_hub import HfApi, hf_hub_download, snapshot_download

    policy = policy or HubPolicy()
    endpoint = policy.resolved_endpoint()
    api = HfApi(endpoint=endpoint, library_name="slimformer")
    cache_dir = str(policy.cache_dir) if policy.cache_dir is not None else None
    where = {"repo_id": model_id, "revision": revision, "token": token}
    sent = policy.request_token(token)

    # the Hub's answer to this token decides access: the files below are read at the commit it
    # names, so a cached snapshot is only ever reached after the Hub said this job may read it
    info = _with_retries(
        lambda: api.model_info(model_id, revision=revision, files_metadata=True, token=sent),
        policy,
        "read",
        **where,
    )
    commit = info.sha
    names = [s.rfilename for s in info.siblings or []]
    safetensors = [n for n in names if _matches(n, SAFETENSORS_PATTERNS)]
    pickles = [n for n in names if n.endswith(PICKLE_SUFFIXES)]
    patterns = [*SAFETENSORS_PATTERNS, *CONFIG_PATTERNS, *TOKENIZER_PATTERNS, *CARD_PATTERNS]
    details = {"repo_id": model_id, "revision": revision, "commit": commit}
    if not safetensors:
        if pickles and not policy.allow_pickle:
            raise PickleOnly(
                f"{model_id} has only pickle checkpoints ({', '.join(pickles[:3])}), "
                "which can run arbitrary code when loaded; "
                "ask for a safetensors version, or an operator can allow pickle downloads",
                details=details | {"files": pickles[:20]},
            )
        if not pickles:
            raise ModelLoadError(
                f"{model_id} holds no model weights (no *.safetensors)", details=details
            )
        patterns += PICKLE_WEIGHT_PATTERNS
    wanted = [n for n in names if _matches(n, patterns)]
    size = _metadata_bytes(info, wanted)
    if policy.max_model_bytes is not None:
        if size is None:
            logger.warning(
                "the Hub gave no file sizes for %s; the size limit cannot be checked", model_id
            )
        elif size > policy.max_model_bytes:
            raise ModelTooLarge(
                f"{model_id} is {size / 1e6:.1f} MB to download, above the limit of "
                f"{policy.max_model_bytes / 1e6:.1f} MB",
                details=details | {"bytes": size, "limit": policy.max_model_bytes},
            )

    def fetch(name: str) -> Path:
        return Path(
            _with_retries(
                lambda: hf_hub_download(
                    model_id,
                    name,
                    revision=commit,
                    token=sent,
                    cache_dir=cache_dir,
                    endpoint=endpoint,
                ),
                policy,
                "download from",
                **where,
            )
        )

    # custom code: the Hub's summary of config.json first, then the configs themselves (small
    # files). slimformer's own per_layer models name only its bundled file, recognised by its
    # digest: they load with the installed code, so they are no remote code (the file lands in the
    # snapshot folder).
    summary = getattr(info, "config", None) or {}
    reason = None
    if not policy.allow_remote_code and not is_own_auto_map(summary.get("auto_map")):
        reason = _remote_code_reason(summary, "config.json")
    for name in ("config.json", "tokenizer_config.json"):
        if reason or name not in names or (policy.allow_remote_code and name != "config.json"):
            continue
        try:
            config = json.loads(fetch(name).read_text())
        except ValueError as err:
            raise ModelLoadError(f"{model_id}: {name} is not valid JSON", details=details) from err
        problem = _remote_code_reason(config, name)
        if problem and name == "config.json" and is_own_auto_map(config.get("auto_map")):
            if MODELING_FILE in names and is_own_modeling_file(fetch(MODELING_FILE)):
                continue
            problem = (
                f"{name} names slimformer's {MODELING_FILE}, but the repo's copy is not one "
                "slimformer shipped (unknown SHA-256)"
            )
        if not policy.allow_remote_code:
            reason = problem
    if reason:
        raise RemoteCode(
            f"{model_id} needs its own modelling code ({reason}), which would run here; an "
            "operator can allow remote code",
            details=details,
        )

    folder = _with_retries(
        lambda: snapshot_download(
            model_id,
            revision=commit,
            token=sent,
            cache_dir=cache_dir,
            endpoint=endpoint,
            allow_patterns=patterns,
        ),
        policy,
        "download",
        **where,
    )
    logger.info("downloaded %s at %s (%d files)", model_id, commit, len(wanted))
    return DownloadedModel(path=Path(folder), commit=commit, revision=revision)


def authorize_dataset(
    dataset_id: str,
    *,
    revision: str | None = None,
    token: str | None = None,
    policy: HubPolicy | None = None,
):
    """Ask the Hub, with this token, whether the dataset may be read; its info at the commit.

    Callers read the dataset's files at ``info.sha`` only after this answered, so no cache can
    hand them files the Hub refused this token.

    Raises:
        RepoNotFound: no such dataset, or the token cannot see it (the Hub answers both alike).
        GatedRepo, Unauthorized, RevisionNotFound: the Hub said no (never retried).
        HubUnavailable: network errors or 5xx answers outlasted the retries.
    """
    from huggingface_hub import HfApi

    policy = policy or HubPolicy()
    api = HfApi(endpoint=policy.resolved_endpoint(), library_name="slimformer")
    sent = policy.request_token(token)
    return _with_retries(
        lambda: api.dataset_info(dataset_id, revision=revision, files_metadata=True, token=sent),
        policy,
        "read",
        repo_id=dataset_id,
        revision=revision,
        token=token,
    )


# -- loading


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
    if task is not None and task not in TASKS:
        raise InvalidSpec(
            f"unknown task {task!r}; choose one of {', '.join(TASKS)}", details={"field": "task"}
        )
    local = Path(model_id)
    commit = None
    local_files = policy.allow_local_files if policy is not None else True
    if not local_files and not is_hub_id(model_id):
        raise InvalidSpec(
            f"{model_id!r} is not a Hub model id (expected 'name' or 'org/name')",
            details={"field": "model"},
        )
    details = {"model": model_id}
    if local_files and local.exists():
        if not local.is_dir() or not (local / "config.json").is_file():
            raise ModelLoadError(
                f"{model_id} is not a model folder: it has no config.json", details=details
            )
    else:
        policy = policy or HubPolicy(allow_remote_code=trust_remote_code)
        snapshot = download_model(model_id, revision=revision, token=token, policy=policy)
        local, commit = snapshot.path, snapshot.commit
        trust_remote_code = trust_remote_code or policy.allow_remote_code
    raw_config = _read_config(local, model_id)
    auto_map = raw_config.get("auto_map")
    own = is_own_auto_map(auto_map) and is_own_modeling_file(local / MODELING_FILE)
    if auto_map and not own and not trust_remote_code:
        reason = _remote_code_reason(raw_config, "config.json")
        raise RemoteCode(
            f"{model_id} needs its own modelling code ({reason}); slimformer runs "
            "only its own per-layer models' code, recognised by its digest",
            details=details,
        )
    kwargs = {"trust_remote_code": trust_remote_code}
    try:
        if own:
            config, load_own = _load_own(local, model_id, raw_config, task)
        else:
            config = transformers.AutoConfig.from_pretrained(local, **kwargs)
    except (OSError, ValueError) as err:
        raise ModelLoadError(
            f"cannot load a model config from {model_id!r}: {_one_line(err)}", details=details
        ) from err
    family_of(config)
    where = "the repo" if commit else "the folder"
    if not _has_tokenizer(local):
        raise ModelLoadError(
            f"{model_id} has no tokenizer ({where} holds no tokenizer.json, tokenizer_config.json "
            "or vocab file): save the base model's tokenizer next to the weights, e.g. "
            "AutoTokenizer.from_pretrained(BASE).save_pretrained(FOLDER)",
            details=details,
        )
    task = task or infer_task(config)
    auto = getattr(transformers, AUTO_CLASS_FOR_TASK[task])
    try:
        if own:
            model, tokenizer, missing = load_own(task)
        else:
            model, info = auto.from_pretrained(local, output_loading_info=True, **kwargs)
            missing = info["missing_keys"]
            tokenizer = transformers.AutoTokenizer.from_pretrained(local, **kwargs)
    except (OSError, ValueError) as err:
        raise ModelLoadError(
            f"cannot load {model_id!r} for {task}: {_one_line(err)}", details=details
        ) from err
    return LoadedModel(
        model=model.eval(),
        tokenizer=tokenizer,
        task=task,
        source=model_id,
        revision=revision,
        commit=commit,
        path=local,
        new_head=_new_head(model, missing),
        own_code=own,
    )


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


# -- publishing


def publish_folder(
    folder: str | Path,
    repo_id: str,
    *,
    token: str,
    private: bool = True,
    create_pr: bool = False,
    job_id: str | None = None,
    policy: HubPolicy | None = None,
) -> PublishResult:
    """Upload an artifact folder to a model repo (created private unless told otherwise).

    Files whose content the repo already holds are not sent again; when nothing changed (a retried
    publish of the same job), no commit is made and the current head is returned with
    ``skipped=True``.

    Args:
        folder: the artifact folder.
        repo_id: ``org/name``; created when missing.
        token: a write token; used for these requests only.
        private: visibility of a newly created repo (an existing repo keeps its own).
        create_pr: open a pull request instead of committing to ``main``.
        job_id: named in the commit message.

    Raises:
        Unauthorized: no token, an invalid one, or one without write access to the namespace.
        HubUnavailable: network errors or 5xx answers outlasted the retries.
        HubAccessError: any other refusal.
    """
    from huggingface_hub import HfApi

    policy = policy or HubPolicy()
    api = HfApi(endpoint=policy.resolved_endpoint(), library_name="slimformer")
    where = {"repo_id": repo_id, "revision": None, "token": token}
    repo_url = _with_retries(
        lambda: api.create_repo(repo_id, token=token, private=private, exist_ok=True),
        policy,
        "create",
        **where,
    )
    head = _with_retries(lambda: api.model_info(repo_id, token=token).sha, policy, "read", **where)
    message = (
        f"slimformer job {job_id}: compressed model" if job_id else "slimformer: compressed model"
    )
    info = _with_retries(
        lambda: api.upload_folder(
            folder_path=str(folder),
            repo_id=repo_id,
            token=token,
            commit_message=message,
            create_pr=create_pr,
        ),
        policy,
        "upload to",
        **where,
    )
    skipped = info.oid == head and not info.pr_url
    logger.info(
        "published %s to %s at %s%s",
        folder,
        repo_id,
        info.oid,
        " (unchanged, no new commit)" if skipped else "",
    )
    return PublishResult(
        repo_url=str(repo_url),
        commit_sha=info.oid,
        commit_url=info.commit_url,
        pr_url=info.pr_url,
        skipped=skipped,
    )
