"""One error hierarchy for the whole library.

Every error carries a message a user can act on. Errors also inherit the built-in they resemble
(``ValueError``, ``FileNotFoundError``), so callers that only know Python's built-ins still catch them.
"""

from __future__ import annotations


class SlimformerError(Exception):
    """Base class: ``str(err)`` is the user-facing message; ``code`` is a stable machine-readable name."""

    code = "slimformer_error"

    def __init__(self, message: str, *, details: dict | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details or {}


class InvalidSpec(SlimformerError, ValueError):
    """A request that cannot be carried out as asked (bad fraction, impossible target, wrong layout)."""

    code = "invalid_spec"


class UnsupportedArchitecture(SlimformerError, ValueError):
    """The model's family has no adapter."""

    code = "unsupported_architecture"


class ModelLoadError(SlimformerError, FileNotFoundError):
    """A folder or id that does not hold a loadable model."""

    code = "model_load_error"


class DatasetError(SlimformerError, ValueError):
    """Data that cannot be used: missing file or column, empty, undecodable, labels that do not match."""

    code = "dataset_error"


class HubAccessError(SlimformerError, ConnectionError):
    """The Hub refused or failed a request."""

    code = "hub_access_error"


class ExportError(SlimformerError, RuntimeError):
    """An export (ONNX) failed or its outputs disagree with PyTorch's."""

    code = "export_error"


class Cancelled(SlimformerError):
    """The caller asked to stop; raised between batches and steps."""

    code = "cancelled"
