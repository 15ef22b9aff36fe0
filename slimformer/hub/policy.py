"""What the operator allows Hub downloads to do, and how to reach the Hub: :class:`HubPolicy`.

Light on purpose (no torch, no transformers; huggingface_hub only when the endpoint is asked for),
so that settings code and :mod:`slimformer.data` can name a policy without loading a model stack.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


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
