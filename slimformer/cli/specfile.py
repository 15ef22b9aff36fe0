"""Reading a job spec file (YAML or JSON), for ``slimformer compress`` and ``slimformer submit``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from slimformer.errors import InvalidSpec


def load_spec_file(path_text: str) -> tuple[dict[str, Any], Path]:
    """The mapping a spec file holds, and the file's path (relative data paths start there).

    Raises ``InvalidSpec`` for a missing file, bad YAML/JSON or anything but a mapping.
    """
    path = Path(path_text)
    if not path.is_file():
        raise InvalidSpec(f"spec file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text())  # JSON is YAML too
    except yaml.YAMLError as err:
        raise InvalidSpec(f"{path.name} is not valid YAML/JSON: {err}") from None
    if not isinstance(data, dict):
        raise InvalidSpec(f"{path.name} must hold a mapping (model, dataset, method, ...)")
    return data, path
