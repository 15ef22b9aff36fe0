"""Pulling models from and publishing them to the Hugging Face Hub.

All Hub traffic goes through ``huggingface_hub``, in these modules:

- :mod:`~slimformer.hub.policy`: :class:`HubPolicy`, what the operator allows and where the Hub is;
- :mod:`~slimformer.hub.retries`: retries, and the one translation of Hub and HTTP errors into
  :mod:`slimformer.errors` with a stable ``code``;
- :mod:`~slimformer.hub.download`: :func:`download_model` (policy checks from the metadata before
  any file moves, then the snapshot) and :func:`authorize_dataset`;
- :mod:`~slimformer.hub.publish`: :func:`publish_folder`.

The token is passed to the calls that need it and to nothing else: it is never logged, stored or
written. Loading a downloaded model is :mod:`slimformer.loading`.

Only the torch-free modules are imported here. ``download`` (through :mod:`slimformer.artifacts`)
and :mod:`slimformer.loading` import torch and transformers, so their names are looked up on first
use (:func:`__getattr__`): importing ``slimformer.hub.retries`` or ``slimformer.hub.policy``, which
runs this file first, stays light.
"""

from __future__ import annotations

from slimformer.hub.policy import HubPolicy
from slimformer.hub.publish import PublishResult, publish_folder
from slimformer.hub.retries import is_transient

_DOWNLOAD = ("DownloadedModel", "authorize_dataset", "download_model")

__all__ = ["HubPolicy", "PublishResult", "is_transient", "publish_folder", *_DOWNLOAD]


def __getattr__(name: str):
    if name in _DOWNLOAD:
        from slimformer.hub import download

        return getattr(download, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
