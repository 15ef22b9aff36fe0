"""Downloading models from the Hub, after the operator's policy allowed them, and asking the Hub
whether a dataset may be read.

A download asks the repo's metadata first and refuses, before any file moves, what
:class:`~slimformer.hub.policy.HubPolicy` does not allow: too large, pickle checkpoints only, custom
modelling code. Then it fetches only what a model needs (safetensors weights, JSON configs,
tokenizer files, the card) into huggingface_hub's cache, whose file locks let concurrent jobs share
it. The token is passed to the calls that need it and to nothing else: it is never logged, stored
or written.
"""

from __future__ import annotations

import fnmatch
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from slimformer.artifacts import MODELING_MODULE, is_own_auto_map, is_own_modeling_file
from slimformer.errors import ModelLoadError, ModelTooLarge, PickleOnly, RemoteCode
from slimformer.hub.policy import HubPolicy
from slimformer.hub.retries import with_retries

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


@dataclass
class DownloadedModel:
    """A snapshot folder in the cache, the commit it holds and the revision that was asked for."""

    path: Path
    commit: str
    revision: str | None


def _matches(name: str, patterns) -> bool:
    return any(fnmatch.fnmatch(name, p) for p in patterns)


def remote_code_reason(config: dict | None, name: str) -> str | None:
    """Why a config needs the repo's own modelling code (its ``auto_map``), or None."""
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


@dataclass
class _Repo:
    """One model repo at one resolved commit: its files, downloaded into the policy's cache with
    retries and errors translated."""

    model_id: str
    policy: HubPolicy
    where: dict  # the repo as asked (id, revision, the job's token): what errors name
    hub_args: dict  # what huggingface_hub gets: the commit, the token sent, the cache, the endpoint

    def file(self, name: str) -> Path:
        from huggingface_hub import hf_hub_download

        call = partial(hf_hub_download, self.model_id, name, **self.hub_args)
        return Path(with_retries(call, self.policy, "download from", **self.where))

    def snapshot(self, patterns: list[str]) -> Path:
        from huggingface_hub import snapshot_download

        call = partial(snapshot_download, self.model_id, allow_patterns=patterns, **self.hub_args)
        return Path(with_retries(call, self.policy, "download", **self.where))


def _files_to_fetch(
    model_id: str, info, names: list[str], policy: HubPolicy, details: dict
) -> tuple[list[str], list[str]]:
    """(patterns, files) to download: configs, tokenizer, card and the safetensors weights, else
    the pickle ones when the policy allows; from the metadata alone, before any file moves.

    Raises:
        PickleOnly, ModelTooLarge: refused by the policy.
        ModelLoadError: the repo holds no weights at all.
    """
    safetensors = [n for n in names if _matches(n, SAFETENSORS_PATTERNS)]
    pickles = [n for n in names if n.endswith(PICKLE_SUFFIXES)]
    patterns = [
        *SAFETENSORS_PATTERNS,
        *CONFIG_PATTERNS,
        *TOKENIZER_PATTERNS,
        *CARD_PATTERNS,
    ]
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
                "the Hub gave no file sizes for %s; the size limit cannot be checked",
                model_id,
            )
        elif size > policy.max_model_bytes:
            raise ModelTooLarge(
                f"{model_id} is {size / 1e6:.1f} MB to download, above the limit of "
                f"{policy.max_model_bytes / 1e6:.1f} MB",
                details=details | {"bytes": size, "limit": policy.max_model_bytes},
            )
    return patterns, wanted


def _refuse_remote_code(repo: _Repo, info, names: list[str], details: dict) -> None:
    """Raise :class:`RemoteCode` when the repo needs custom modelling code the policy forbids.

    The Hub's summary of config.json first, then the configs themselves (small files, fetched
    before any weight). slimformer's own per_layer models name only its bundled file, recognised
    by its digest: they load with the installed code, so they are no remote code (the file lands
    in the snapshot folder).
    """
    model_id, policy = repo.model_id, repo.policy
    summary = getattr(info, "config", None) or {}
    reason = None
    if not policy.allow_remote_code and not is_own_auto_map(summary.get("auto_map")):
        reason = remote_code_reason(summary, "config.json")
    for name in ("config.json", "tokenizer_config.json"):
        if reason or name not in names or (policy.allow_remote_code and name != "config.json"):
            continue
        try:
            config = json.loads(repo.file(name).read_text())
        except ValueError as err:
            raise ModelLoadError(f"{model_id}: {name} is not valid JSON", details=details) from err
        problem = remote_code_reason(config, name)
        if problem and name == "config.json" and is_own_auto_map(config.get("auto_map")):
            if MODELING_FILE in names and is_own_modeling_file(repo.file(MODELING_FILE)):
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


def download_model(
    model_id: str,
    *,
    revision: str | None = None,
    token: str | None = None,
    policy: HubPolicy | None = None,
    before_weights: Callable[[dict, dict | None], None] | None = None,
) -> DownloadedModel:
    """Download what a model needs from the Hub into the shared cache, after checking the policy.

    ``before_weights(config, parameters_by_dtype)`` is called with the repo's ``config.json`` and
    the Hub's safetensors summary before any weight is downloaded (a job's memory check): what it
    raises stops the download.

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
    from huggingface_hub import HfApi

    policy = policy or HubPolicy()
    endpoint = policy.resolved_endpoint()
    api = HfApi(endpoint=endpoint, library_name="slimformer")
    where = {"repo_id": model_id, "revision": revision, "token": token}
    sent = policy.request_token(token)

    # the Hub's answer to this token decides access: the files below are read at the commit it
    # names, so a cached snapshot is only ever reached after the Hub said this job may read it
    info = with_retries(
        lambda: api.model_info(model_id, revision=revision, files_metadata=True, token=sent),
        policy,
        "read",
        **where,
    )
    commit = info.sha
    names = [s.rfilename for s in info.siblings or []]
    details = {"repo_id": model_id, "revision": revision, "commit": commit}
    patterns, wanted = _files_to_fetch(model_id, info, names, policy, details)
    cache_dir = str(policy.cache_dir) if policy.cache_dir is not None else None
    hub_args = {
        "revision": commit,
        "token": sent,
        "cache_dir": cache_dir,
        "endpoint": endpoint,
    }
    repo = _Repo(model_id, policy, where, hub_args)
    _refuse_remote_code(repo, info, names, details)
    if before_weights is not None and "config.json" in names:
        summary = getattr(info, "safetensors", None)
        before_weights(
            json.loads(repo.file("config.json").read_text()),
            dict(summary.parameters) if summary is not None and summary.parameters else None,
        )
    folder = repo.snapshot(patterns)
    logger.info("downloaded %s at %s (%d files)", model_id, commit, len(wanted))
    return DownloadedModel(path=folder, commit=commit, revision=revision)


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
    return with_retries(
        lambda: api.dataset_info(dataset_id, revision=revision, files_metadata=True, token=sent),
        policy,
        "read",
        repo_id=dataset_id,
        revision=revision,
        token=token,
    )
