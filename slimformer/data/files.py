"""Local data files (CSV, TSV, JSON lines, Parquet, plain text): checking, reading in memory
within row limits, mapping columns.

Every failure names the file and the column: a missing column lists the columns the file has.
"""

from __future__ import annotations

import contextlib
import contextvars
import csv
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

from slimformer.data.columns import table_to_text_data
from slimformer.data.text_data import TextData
from slimformer.errors import DatasetError
from slimformer.spec import UPLOAD_FORMATS
from slimformer.text import read_documents


def _formats() -> str:
    return ", ".join(sorted(UPLOAD_FORMATS))


def check_data_file(path: str | Path) -> str:
    """The reader of a local data file (a value of ``UPLOAD_FORMATS``), checked before reading.

    Raises:
        DatasetError: no such file, a type slimformer does not read (saying what to do), empty.
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"data file {path} does not exist", details={"file": str(path)})
    suffix = path.suffix.lower()
    kind = UPLOAD_FORMATS.get(suffix)
    if kind is None:
        if suffix in (".text", ".md", ".rst", ""):
            message = (
                f"{path.name} looks like plain text: name it .txt (one document per "
                "blank-line-separated block, for causal LMs), or convert it to a CSV or "
                "JSON lines file with a `text` column (and `label` for classifiers)"
            )
        elif suffix in (".xlsx", ".xls", ".ods", ".numbers"):
            message = (
                f"{path.name}: unsupported file type {suffix!r} (a spreadsheet); export it "
                "as CSV with a header row (a `text` column, and `label` for classifiers); "
                f"slimformer reads {_formats()}"
            )
        else:
            message = (
                f"{path.name}: unsupported file type {suffix!r}; slimformer reads {_formats()}"
            )
        raise DatasetError(message, details={"file": str(path), "formats": sorted(UPLOAD_FORMATS)})
    if path.stat().st_size == 0:
        raise DatasetError(f"{path.name} is empty", details={"file": str(path)})
    return kind


class RowLimits(dict):
    """Data file (absolute path) -> the most rows to read of it; see ``file_row_limits``."""

    def limit(self, path: str | Path, rows: int | None) -> None:
        """Read at most ``rows`` rows of ``path`` (None: all of them)."""
        key = os.path.abspath(path)
        if rows is None:
            self.pop(key, None)
        else:
            self[key] = rows


_ROW_LIMITS: contextvars.ContextVar[RowLimits | None] = contextvars.ContextVar(
    "slimformer_row_limits", default=None
)


@contextlib.contextmanager
def file_row_limits() -> Iterator[RowLimits]:
    """Within the block, ``limits.limit(path, n)`` makes every read of that data file stop after
    its first n rows: a service bounds what one job loads of a large upload."""
    limits = RowLimits()
    token = _ROW_LIMITS.set(limits)
    try:
        yield limits
    finally:
        _ROW_LIMITS.reset(token)


def read_table(path: str | Path, *, max_rows: int | None = None):
    """A ``datasets.Dataset`` of a local CSV/TSV/JSONL/Parquet file, in memory (no cache files
    anywhere), of at most ``max_rows`` rows (or the ``file_row_limits`` limit of the file): only
    those rows are read."""
    import datasets
    from datasets.table import InMemoryTable

    path = Path(path)
    kind = check_data_file(path)
    limits = [
        n for n in (max_rows, (_ROW_LIMITS.get() or {}).get(os.path.abspath(path))) if n is not None
    ]
    datasets.disable_progress_bars()
    try:
        arrow = _read_arrow(path, kind, min(limits) if limits else None)
    except Exception as err:  # pandas and pyarrow raise many types for bad files
        raise DatasetError(
            f"{path.name} could not be read as {kind}: {err}", details={"file": str(path)}
        ) from err
    table = datasets.Dataset(InMemoryTable(arrow), fingerprint=uuid.uuid4().hex)
    if len(table) == 0:
        raise DatasetError(f"{path.name} has no rows", details={"file": str(path)})
    return table


def _read_arrow(path: Path, kind: str, rows: int | None):
    """The first ``rows`` rows (None: all) of a data file as a ``pyarrow.Table``, parsed as
    ``datasets`` parses it (pandas for CSV/TSV, pyarrow for JSON lines and Parquet)."""
    import pyarrow as pa

    if kind == "parquet":
        import pyarrow.parquet as pq

        with pq.ParquetFile(path) as parquet:
            if rows is None:
                return parquet.read()
            batches, seen = [], 0
            for batch in parquet.iter_batches(batch_size=min(rows, 65536)):
                batches.append(batch)
                seen += batch.num_rows
                if seen >= rows:
                    break
            return pa.Table.from_batches(batches, schema=parquet.schema_arrow).slice(0, rows)
    if kind == "json":
        return _read_json(path, rows)
    import pandas as pd

    # GLUE-style TSV: quotes are text, not field delimiters
    options = {"sep": "\t", "quoting": csv.QUOTE_NONE} if kind == "tsv" else {}
    frame = pd.read_csv(path, nrows=rows, **options)
    return pa.Table.from_pandas(frame, preserve_index=False)


def _read_json(path: Path, rows: int | None):
    """JSON lines (the first ``rows`` lines that hold something), or else one JSON array."""
    import io
    import json

    import pyarrow as pa
    import pyarrow.json as pajson

    if rows is None:
        data = path.read_bytes()
    else:
        parts, seen = [], 0
        with path.open("rb") as fh:
            for line in fh:
                parts.append(line)
                seen += bool(line.strip())
                if seen >= rows:
                    break
        data = b"".join(parts)
    try:
        options = pajson.ReadOptions(block_size=16 << 20)  # rows up to 16 MB long
        return pajson.read_json(io.BytesIO(data), read_options=options)
    except pa.ArrowInvalid:
        with path.open("rb") as fh:
            try:
                records = json.load(fh)
            except ValueError:
                records = None
        if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
            raise
        return pa.Table.from_pylist(records[:rows] if rows is not None else records)


def load_text_file(
    path: str | Path,
    *,
    text_column: str | None = None,
    text_pair_column: str | None = None,
    label_column: str | None = None,
    max_samples: int | None = None,
    labels: bool = True,
) -> TextData:
    """Read a local data file and map its columns (guessing ``text``/``sentence``/``label`` when not
    named).

    Raises:
        DatasetError: missing or empty file, unreadable content, a named column that does not exist.
    """
    if UPLOAD_FORMATS.get(Path(path).suffix.lower()) == "text":
        documents = read_documents(
            path,
            text_column=text_column,
            text_pair_column=text_pair_column,
            label_column=label_column if labels else None,
        )
        return TextData(documents[:max_samples], source=Path(path).name, text_column="text")
    table = read_table(path, max_rows=max_samples)  # the first max_samples rows, read alone
    return table_to_text_data(
        table,
        source=Path(path).name,
        text_column=text_column,
        text_pair_column=text_pair_column,
        label_column=label_column,
        max_samples=max_samples,
        labels=labels,
    )
