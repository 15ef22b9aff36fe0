"""Calls to the Hub, retried and translated: the one place where huggingface_hub and HTTP errors
become :mod:`slimformer.errors`.

Network errors and 5xx answers are retried with exponential backoff and jitter; 4xx answers never
are (asking again gets the same answer). Light on purpose (no torch, no transformers):
:mod:`slimformer.data` asks :func:`is_transient` of dataset errors too.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from typing import TypeVar

from slimformer.errors import (
    GatedRepo,
    HubAccessError,
    HubUnavailable,
    RepoNotFound,
    RevisionNotFound,
    Unauthorized,
)
from slimformer.hub.policy import HubPolicy

logger = logging.getLogger(__name__)

T = TypeVar("T")


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
    # the HTTP library huggingface_hub raises from, as huggingface_hub re-exports it: naming the
    # library itself would tie us to a package we do not declare, and to huggingface_hub's choice
    from huggingface_hub.utils import httpx

    for cause in _causes(err):
        if isinstance(cause, httpx.TransportError):
            return True
        status = _status(cause)
        if status is not None:
            return status >= 500
    return False


def _hub_error(
    err: BaseException,
    what: str,
    *,
    repo_id: str,
    revision: str | None,
    token: str | None,
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
                f"cannot {what} {repo_id}: offline mode is on (HF_HUB_OFFLINE)",
                details=details,
            )
        status = _status(cause)
        if status in (401, 403):
            reason = (
                "no token was given"
                if token is None
                else "the token is invalid or lacks the rights"
            )
            return Unauthorized(
                f"the Hub refused to {what} {repo_id} ({status}): {reason}",
                details=details,
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


def with_retries(
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
