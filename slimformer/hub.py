"""Pulling models from and publishing them to the Hugging Face Hub, and loading them.

All Hub traffic goes through ``huggingface_hub``. A download asks the repo's metadata first and refuses, before
any file moves, what the operator's :class:`HubPolicy` does not allow: too large, pickle checkpoints only,
custom modelling code. Then it fetches only what a model needs (safetensors weights, JSON configs, tokenizer
files, the card) into huggingface_hub's cache, whose file locks let concurrent jobs share it. Errors become
:mod:`slimformer.errors` with a stable ``code``; network errors and 5xx answers are retried with backoff.

The token is passed to the calls that need it and to nothing else: it is never logged, stored or written.
"""

from __future__ import annotations

import fnmatch
import json
import logging
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import transformers
from torch import nn

from slimformer.architectures import family_of
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
# what transformers loads when a repo has no safetensors; only fetched when the operator allows pickle
PICKLE_WEIGHT_PATTERNS = ("pytorch_model*.bin",)
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt")
_DTYPE_BYTES = {"F64": 8, "I64": 8, "F32": 4, "I32": 4, "F16": 2, "BF16": 2, "I16": 2, "F8_E4M3": 1,
                "F8_E5M2": 1, "I8": 1, "U8": 1, "BOOL": 1}

T = TypeVar("T")


@dataclass
class HubPolicy:
    """What the operator allows downloads to do, and how to reach the Hub.

    Attributes:
        allow_pickle: download pickle checkpoints (``pytorch_model*.bin``) when a repo has no safetensors.
            Loading a pickle runs code chosen by the repo's author.
        allow_remote_code: accept repos whose config needs ``trust_remote_code`` (``auto_map``).
        max_model_bytes: refuse repos whose files to download add up to more (from metadata, before downloading).
        cache_dir: huggingface_hub cache shared by concurrent jobs (``HF_HUB_CACHE`` when None).
        endpoint: Hub or mirror URL (``HF_ENDPOINT``, read at call time, then https://huggingface.co, when None).
        retries: extra attempts after a network error or a 5xx answer; 4xx answers are never retried.
        backoff_seconds: wait before the first retry; doubled each time, with jitter.
        allow_local_files: a model id may name a local folder (the command line). A service passes False: every
            id is then a Hub id, never looked up on the local disk, whatever folders exist there.
    """

    allow_pickle: bool = False
    allow_remote_code: bool = False
    max_model_bytes: int | None = None
    cache_dir: str | Path | None = None
    endpoint: str | None = None
    retries: int = 3
    backoff_seconds: float = 1.0
    allow_local_files: bool = True

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
        return {"repo_url": self.repo_url, "commit_sha": self.commit_sha, "commit_url": self.commit_url,
                "pr_url": self.pr_url}


@dataclass
class LoadedModel:
    model: nn.Module
    tokenizer: object
    task: str
    source: str
    revision: str | None = None
    commit: str | None = None  # the resolved Hub commit; None for a local folder
    path: Path | None = None  # the folder the model was loaded from (the snapshot, for a Hub id)


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
    """A network error or a 5xx answer anywhere in the chain of causes (huggingface_hub wraps some)."""
    import httpx2

    for cause in _causes(err):
        if isinstance(cause, httpx2.TransportError):
            return True
        status = _status(cause)
        if status is not None:
            return status >= 500
    return False


def _hub_error(err: BaseException, what: str, *, repo_id: str, revision: str | None,
               token: str | None) -> HubAccessError:
    """Translate a huggingface_hub / httpx error into ours: the one place where this happens."""
    from huggingface_hub import errors as hf

    details = {"repo_id": repo_id, "revision": revision}
    for cause in _causes(err):
        if isinstance(cause, hf.GatedRepoError):
            return GatedRepo(f"{repo_id} is a gated repo and the token has not been granted access; request access "
                             "on its Hub page", details=details)
        if isinstance(cause, hf.RevisionNotFoundError):
            return RevisionNotFound(f"{repo_id} has no revision {revision!r}", details=details)
        if isinstance(cause, hf.RepositoryNotFoundError):
            hint = "; if it is private, give a token with read access" if token is None else (
                " or the token cannot see it")
            return RepoNotFound(f"repo {repo_id} not found{hint}", details=details)
        if isinstance(cause, hf.OfflineModeIsEnabled):
            return HubAccessError(f"cannot {what} {repo_id}: offline mode is on (HF_HUB_OFFLINE)", details=details)
        status = _status(cause)
        if status in (401, 403):
            reason = "no token was given" if token is None else "the token is invalid or lacks the rights"
            return Unauthorized(f"the Hub refused to {what} {repo_id} ({status}): {reason}", details=details)
        if status == 429:
            return HubUnavailable(f"the Hub rate-limited the request to {what} {repo_id}; try again later",
                                  details=details)
    if is_transient(err):
        return HubUnavailable(f"the Hub could not be reached to {what} {repo_id}: {type(err).__name__}",
                              details=details)
    status = next((s for s in map(_status, _causes(err)) if s is not None), None)
    return HubAccessError(f"cannot {what} {repo_id}" + (f" (HTTP {status})" if status else f": {err}"),
                          details=details)


def _with_retries(call: Callable[[], T], policy: HubPolicy, what: str, *, repo_id: str, revision: str | None,
                  token: str | None) -> T:
    """``call()``, retried on network errors and 5xx with exponential backoff and full jitter; errors translated."""
    for attempt in range(policy.retries + 1):
        try:
            return call()
        except HubAccessError:
            raise
        except Exception as err:
            if not is_transient(err) or attempt == policy.retries:
                raise _hub_error(err, what, repo_id=repo_id, revision=revision, token=token) from err
            wait = policy.backoff_seconds * 2**attempt * random.uniform(0.5, 1.0)
            logger.warning("Hub request to %s %s failed (%s); retry %d of %d in %.1f s", what, repo_id,
                           type(err).__name__, attempt + 1, policy.retries, wait)
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
    """Bytes to download: sizes of the wanted files, else parameters x dtype width from the safetensors summary."""
    sizes = {s.rfilename: s.size for s in info.siblings or []}
    if wanted and all(sizes.get(name) is not None for name in wanted):
        return sum(sizes[name] for name in wanted)
    params = getattr(getattr(info, "safetensors", None), "parameters", None)
    if params:
        return sum(count * _DTYPE_BYTES.get(dtype, 4) for dtype, count in params.items())
    return None


def download_model(model_id: str, *, revision: str | None = None, token: str | None = None,
                   policy: HubPolicy | None = None) -> DownloadedModel:
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
        ModelTooLarge, PickleOnly, RemoteCode: refused by the policy, before weights are downloaded.
        HubUnavailable: network errors or 5xx answers outlasted the retries (``transient``).
        ModelLoadError: the repo holds no weights at all.

    Example:
        >>> snapshot = download_model("sentence-transformers/all-MiniLM-L6-v2", policy=HubPolicy(max_model_bytes=10**9))
    """
    from huggingface_hub import HfApi, hf_hub_download, snapshot_download

    policy = policy or HubPolicy()
    endpoint = policy.resolved_endpoint()
    api = HfApi(endpoint=endpoint, library_name="slimformer")
    cache_dir = str(policy.cache_dir) if policy.cache_dir is not None else None
    where = {"repo_id": model_id, "revision": revision, "token": token}

    info = _with_retries(lambda: api.model_info(model_id, revision=revision, files_metadata=True, token=token),
                         policy, "read", **where)
    commit = info.sha
    names = [s.rfilename for s in info.siblings or []]
    safetensors = [n for n in names if _matches(n, SAFETENSORS_PATTERNS)]
    pickles = [n for n in names if n.endswith(PICKLE_SUFFIXES)]
    patterns = [*SAFETENSORS_PATTERNS, *CONFIG_PATTERNS, *TOKENIZER_PATTERNS, *CARD_PATTERNS]
    details = {"repo_id": model_id, "revision": revision, "commit": commit}
    if not safetensors:
        if pickles and not policy.allow_pickle:
            raise PickleOnly(
                f"{model_id} has only pickle checkpoints ({', '.join(pickles[:3])}), which can run arbitrary code "
                "when loaded; ask for a safetensors version, or an operator can allow pickle downloads",
                details=details | {"files": pickles[:20]})
        if not pickles:
            raise ModelLoadError(f"{model_id} holds no model weights (no *.safetensors)", details=details)
        patterns += PICKLE_WEIGHT_PATTERNS
    wanted = [n for n in names if _matches(n, patterns)]
    size = _metadata_bytes(info, wanted)
    if policy.max_model_bytes is not None:
        if size is None:
            logger.warning("the Hub gave no file sizes for %s; the size limit cannot be checked", model_id)
        elif size > policy.max_model_bytes:
            raise ModelTooLarge(
                f"{model_id} is {size / 1e6:.1f} MB to download, above the limit of "
                f"{policy.max_model_bytes / 1e6:.1f} MB", details=details | {"bytes": size,
                                                                             "limit": policy.max_model_bytes})

    # custom code: the Hub's summary of config.json first, then the configs themselves (small files)
    if not policy.allow_remote_code:
        reason = _remote_code_reason(getattr(info, "config", None), "config.json")
        for name in ("config.json", "tokenizer_config.json"):
            if reason or name not in names:
                continue
            path = _with_retries(lambda n=name: hf_hub_download(
                model_id, n, revision=commit, token=token, cache_dir=cache_dir, endpoint=endpoint), policy,
                "download from", **where)
            try:
                reason = _remote_code_reason(json.loads(Path(path).read_text()), name)
            except ValueError as err:
                raise ModelLoadError(f"{model_id}: {name} is not valid JSON", details=details) from err
        if reason:
            raise RemoteCode(
                f"{model_id} needs its own modelling code ({reason}), which runs on the worker; an operator can "
                "allow remote code", details=details)

    folder = _with_retries(lambda: snapshot_download(
        model_id, revision=commit, token=token, cache_dir=cache_dir, endpoint=endpoint, allow_patterns=patterns),
        policy, "download", **where)
    logger.info("downloaded %s at %s (%d files)", model_id, commit, len(wanted))
    return DownloadedModel(path=Path(folder), commit=commit, revision=revision)


# -- loading


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
    policy: HubPolicy | None = None,
) -> LoadedModel:
    """Load a model of a supported family with the head for ``task`` (inferred when not given), and its tokenizer.

    ``model_id`` is a local folder (unless ``policy.allow_local_files`` is false), or a Hub id fetched with
    :func:`download_model` under ``policy`` (by default one that allows remote code exactly when
    ``trust_remote_code`` is true) and loaded from the snapshot folder.

    Raises:
        ModelLoadError: a folder without a model, an id that cannot be loaded.
        HubAccessError (and its subclasses): the download was refused or failed.
        UnsupportedArchitecture: a family slimformer cannot prune (checked before weights load).
        InvalidSpec: an unknown task.
    """
    if task is not None and task not in TASKS:
        raise InvalidSpec(f"unknown task {task!r}; choose one of {', '.join(TASKS)}", details={"field": "task"})
    local = Path(model_id)
    commit = None
    local_files = policy.allow_local_files if policy is not None else True
    if not local_files and not is_hub_id(model_id):
        raise InvalidSpec(f"{model_id!r} is not a Hub model id (expected 'name' or 'org/name')",
                          details={"field": "model"})
    if local_files and local.exists():
        if not local.is_dir() or not (local / "config.json").is_file():
            raise ModelLoadError(f"{model_id} is not a model folder: it has no config.json", details={"model": model_id})
    else:
        policy = policy or HubPolicy(allow_remote_code=trust_remote_code)
        snapshot = download_model(model_id, revision=revision, token=token, policy=policy)
        local, commit = snapshot.path, snapshot.commit
        trust_remote_code = trust_remote_code or policy.allow_remote_code
    kwargs = {"trust_remote_code": trust_remote_code}
    try:
        config = transformers.AutoConfig.from_pretrained(local, **kwargs)
    except (OSError, ValueError) as err:
        raise ModelLoadError(f"cannot load a model config from {model_id!r}: {err}", details={"model": model_id}) from err
    family_of(config)
    task = task or infer_task(config)
    auto = getattr(transformers, AUTO_CLASS_FOR_TASK[task])
    try:
        model = auto.from_pretrained(local, **kwargs)
        tokenizer = transformers.AutoTokenizer.from_pretrained(local, **kwargs)
    except (OSError, ValueError) as err:
        raise ModelLoadError(f"cannot load {model_id!r} for {task}: {err}", details={"model": model_id}) from err
    return LoadedModel(model=model.eval(), tokenizer=tokenizer, task=task, source=model_id, revision=revision,
                       commit=commit, path=local)


# -- publishing


def publish_folder(folder: str | Path, repo_id: str, *, token: str, private: bool = True, create_pr: bool = False,
                   job_id: str | None = None, policy: HubPolicy | None = None) -> PublishResult:
    """Upload an artifact folder to a model repo (created private unless told otherwise).

    Files whose content the repo already holds are not sent again; when nothing changed (a retried publish of
    the same job), no commit is made and the current head is returned with ``skipped=True``.

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
    repo_url = _with_retries(lambda: api.create_repo(repo_id, token=token, private=private, exist_ok=True),
                             policy, "create", **where)
    head = _with_retries(lambda: api.model_info(repo_id, token=token).sha, policy, "read", **where)
    message = f"slimformer job {job_id}: compressed model" if job_id else "slimformer: compressed model"
    info = _with_retries(lambda: api.upload_folder(
        folder_path=str(folder), repo_id=repo_id, token=token, commit_message=message, create_pr=create_pr),
        policy, "upload to", **where)
    skipped = info.oid == head and not info.pr_url
    logger.info("published %s to %s at %s%s", folder, repo_id, info.oid, " (unchanged, no new commit)" if skipped
                else "")
    return PublishResult(repo_url=str(repo_url), commit_sha=info.oid, commit_url=info.commit_url,
                         pr_url=info.pr_url, skipped=skipped)
