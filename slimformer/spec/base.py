"""What every part of the job spec shares: the tasks, the data files read, the Hub ids and the
strict base model (unknown fields rejected) with its rule for local paths (the command line
only: ``local_files`` in the validation context)."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, ValidationInfo

Task = Literal[
    "text-classification", "sentence-similarity", "feature-extraction", "text-generation"
]
TASKS: tuple[str, ...] = Task.__args__

# Data files slimformer reads (local files and uploads): suffix -> reader.
UPLOAD_FORMATS: dict[str, str] = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".json": "json",
    ".jsonl": "json",
    ".parquet": "parquet",
    ".txt": "text",  # one document per blank-line-separated block (causal LMs; slimformer/text.py)
}


def upload_suffixes() -> str:
    """The suffixes of :data:`UPLOAD_FORMATS` as a phrase: ``.csv, .tsv, ... or .txt``."""
    names = list(UPLOAD_FORMATS)
    return ", ".join(names[:-1]) + " or " + names[-1]


# matched whole (fullmatch): a "$" would also match before a final newline
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]{0,95}(/[\w.-]{1,96})?", re.ASCII)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def _local_allowed(info: ValidationInfo) -> bool:
    return (info.context or {}).get("local_files", True)


def is_hub_id(value: str) -> bool:
    """``name`` or ``org/name`` as the Hub spells repo ids: no path segments (``.``, ``..``), no
    leading or trailing ``.``/``-`` in a part, no ``--``/``..`` inside one, nothing that a file
    system would read as a path."""
    if not HUB_ID.fullmatch(value):
        return False
    return all(
        not part.startswith((".", "-"))
        and not part.endswith((".", "-"))
        and ".." not in part
        and "--" not in part
        for part in value.split("/")
    )


def hub_id_or_local(value: str, info: ValidationInfo, what: str) -> str:
    """A Hub id; on the command line (``local_files`` context true) also a local folder or file."""
    if is_hub_id(value) or _local_allowed(info):
        return value
    raise ValueError(
        f"{value!r} is not a Hub {what} id (expected 'name' or 'org/name'); local paths are "
        "accepted on the command line only"
    )
