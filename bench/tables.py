"""What the benchmark scripts share: tables they print (aligned text) and save (markdown), run
metadata."""

from __future__ import annotations

import datetime as dt
import os
import platform
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch

# The fixed "user's model" and data every benchmark reads, in place, from ../shared beside the
# repository.
ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
MODEL = SHARED / "models" / "minilm-l6-sst2"
TRAIN = SHARED / "data" / "sst2" / "train.tsv"
VALIDATION = SHARED / "data" / "sst2" / "validation.tsv"


def check_shared_inputs(benchmark: str) -> None:
    """Exit with a message (status 1) when the shared model or data are not there."""
    missing = [p for p in (MODEL / "config.json", TRAIN, VALIDATION) if not p.is_file()]
    if missing:
        sys.exit(
            f"{benchmark}: the benchmark reads the shared model and data from "
            f"{SHARED} (../shared next to the repository), and these are missing:\n  "
            + "\n  ".join(str(p) for p in missing)
        )


@dataclass
class Table:
    title: str
    headers: list[str]
    rows: list[list[str]]
    notes: list[str] = field(default_factory=list)


def render_text(table: Table) -> str:
    widths = [
        max(len(str(c)) for c in column) for column in zip(table.headers, *table.rows, strict=True)
    ]

    def line(cells: list[str]) -> str:
        pairs = enumerate(zip(cells, widths, strict=True))
        return "  ".join(str(c).rjust(w) if i else str(c).ljust(w) for i, (c, w) in pairs)

    out = [table.title, line(table.headers), "  ".join("-" * w for w in widths)]
    out += [line(r) for r in table.rows]
    out += [f"  {n}" for n in table.notes]
    return "\n".join(out)


def render_markdown(table: Table) -> str:
    out = [
        f"### {table.title}",
        "",
        "| " + " | ".join(table.headers) + " |",
        "|" + "|".join("---" if i == 0 else "---:" for i in range(len(table.headers))) + "|",
    ]
    out += ["| " + " | ".join(r) + " |" for r in table.rows]
    if table.notes:
        out += [""] + [f"{n[0].upper()}{n[1:]}." for n in table.notes]
    return "\n".join(out)


def environment() -> dict:
    """When, where and how a benchmark ran."""
    return {
        "date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "command": "python " + " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
    }
