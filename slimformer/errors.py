"""One error hierarchy for the whole library.

Every error carries a message a user can act on. Errors also inherit the built-in they resemble
(``ValueError``, ``FileNotFoundError``), so callers that only know Python's built-ins still catch
them.
"""

from __future__ import annotations


class SlimformerError(Exception):
    """Base class: ``str(err)`` is the user-facing message; ``code`` is a stable machine-readable
    name."""

    code = "slimformer_error"
    #: True when the same request may succeed later (a network error, a Hub answering 5xx): a worker
    #: may retry the job. Everything else is the request's own fault and fails the same way every
    #: time.
    transient = False

    def __init__(self, message: str, *, details: dict | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details or {}


class InvalidSpec(SlimformerError, ValueError):
    """A request that cannot be carried out as asked (bad fraction, impossible target, wrong
    layout)."""

    code = "invalid_spec"


class UnsupportedArchitecture(SlimformerError, ValueError):
    """The model's family has no adapter."""

    code = "unsupported_architecture"


class ModelLoadError(SlimformerError, FileNotFoundError):
    """A folder or id that does not hold a loadable model."""

    code = "model_load_error"


class DatasetError(SlimformerError, ValueError):
    """Data that cannot be used: missing file or column, empty, undecodable, labels that do not
    match."""

    code = "dataset_error"


class HubAccessError(SlimformerError, ConnectionError):
    """The Hub refused or failed a request. Subclasses name the reason; ``details`` holds repo and
    revision."""

    code = "hub_access_error"


class RepoNotFound(HubAccessError):
    """No such repo, or a private one the token cannot see (the Hub does not tell the two apart)."""

    code = "repo_not_found"


class RevisionNotFound(HubAccessError):
    """The repo exists but the branch, tag or commit does not."""

    code = "revision_not_found"


class GatedRepo(HubAccessError):
    """A gated repo whose conditions the token's user has not been granted."""

    code = "gated_repo"


class Unauthorized(HubAccessError):
    """No token where one is needed, an invalid token, or a token without the rights asked for."""

    code = "unauthorized"


class ModelTooLarge(HubAccessError):
    """The files to download exceed the operator's size limit (checked from metadata, before
    downloading)."""

    code = "model_too_large"


class PickleOnly(HubAccessError):
    """The repo has only pickle checkpoints, which run code when loaded, and the operator has not
    allowed them."""

    code = "pickle_only"


class RemoteCode(HubAccessError):
    """The model needs its own code (``trust_remote_code``) and the operator has not allowed it."""

    code = "remote_code"


class HubUnavailable(HubAccessError):
    """Network errors or 5xx answers that outlasted the retries: worth retrying the job later."""

    code = "hub_unavailable"
    transient = True


class ExportError(SlimformerError, RuntimeError):
    """An export (ONNX) failed or its outputs disagree with PyTorch's."""

    code = "export_error"


class DistillationFailed(SlimformerError, RuntimeError):
    """Distillation produced no usable student: it never beat its own starting point on the
    held-out data, is still worse than chance, or no training step fit in the time budget.
    ``details`` holds the figures and the check."""

    code = "distillation_failed"


class InsufficientMemory(SlimformerError, MemoryError):
    """The job would need more memory than this machine gives it (estimated from the model's
    config before any weight is downloaded, :mod:`slimformer.memory`). The message names both in
    GiB and what would fit; ``details`` holds ``needed_bytes``, ``available_bytes`` and the
    ``breakdown``. Never retried: the same machine has the same memory."""

    code = "insufficient_memory"
    transient = False


class Cancelled(SlimformerError):
    """The caller asked to stop; raised between batches and steps."""

    code = "cancelled"
