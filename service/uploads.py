"""Uploaded data files: safe names, the format from the suffix, rows and columns (pyarrow), and
the limits that keep an upload from costing more than it looks (rows, decoded bytes, expansion).

Only plain CSV, TSV, JSON lines and Parquet are accepted: a ``.gz`` or ``.zip`` is an unsupported
file type, and no file is ever decompressed on the way in. Parquet is the one compressed format;
its data is decoded batch by batch while it is counted, so a small file that decodes to a huge
table (a compression bomb) is refused after reading at most the allowed amount.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from service.artifacts_base import scrub_paths, server_roots
from slimformer.spec import UPLOAD_FORMATS

SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")
MAX_NAME_CHARS = 120  # a stored upload's name: far below a file system's 255 bytes
MAX_SUFFIX_CHARS = 16
BLOCK_BYTES = 8 << 20  # a CSV or JSON block read at once (also the longest row accepted)
PARQUET_BATCH_ROWS = 8192
EXPANSION_FLOOR_BYTES = 1 << 20  # a file smaller than this counts as this big for the expansion


def safe_name(filename: str | None) -> str:
    """The uploaded file's base name with anything outside ``[A-Za-z0-9._-]`` replaced, cut to
    ``MAX_NAME_CHARS`` characters (keeping its suffix)."""
    name = SAFE_NAME.sub("_", Path(filename or "data").name).strip("._") or "data"
    if len(name) <= MAX_NAME_CHARS:
        return name
    suffix = Path(name).suffix
    if len(suffix) > MAX_SUFFIX_CHARS:  # no format has such a suffix: the type check refuses it
        suffix = ""
    return name[: MAX_NAME_CHARS - len(suffix)].rstrip("._") + suffix


def upload_format(name: str) -> str | None:
    """``csv``, ``tsv``, ``json`` or ``parquet`` from the name's suffix; None if unsupported."""
    return UPLOAD_FORMATS.get(Path(name).suffix.lower())


@dataclass(frozen=True)
class UploadLimits:
    """What one upload may hold (None: no limit)."""

    rows: int | None = None
    uncompressed_bytes: int | None = None
    expansion: float | None = None  # decoded bytes per byte of file (Parquet)


class UploadRefused(ValueError):
    """An upload over one of the limits: ``code``, a message naming the limit, and details."""

    def __init__(self, code: str, message: str, setting: str, limit: float) -> None:
        super().__init__(message)
        self.code, self.message = code, message
        self.details = {"setting": setting, "limit": limit}


def _too_many_rows(name: str, limit: int) -> UploadRefused:
    return UploadRefused(
        "too_many_rows",
        f"{name} has more than {limit} rows, the most one upload may hold "
        "(SLIMFORMER_MAX_UPLOAD_ROWS); upload fewer rows",
        "SLIMFORMER_MAX_UPLOAD_ROWS",
        limit,
    )


def _too_large(name: str, limit: int) -> UploadRefused:
    return UploadRefused(
        "upload_too_large_uncompressed",
        f"{name} holds more than {limit} bytes of data once decoded, the most one "
        "upload may hold (SLIMFORMER_MAX_UPLOAD_UNCOMPRESSED_BYTES)",
        "SLIMFORMER_MAX_UPLOAD_UNCOMPRESSED_BYTES",
        limit,
    )


def _expands(name: str, size: int, factor: float) -> UploadRefused:
    return UploadRefused(
        "upload_too_large_uncompressed",
        f"{name} ({size} bytes) decodes to more than {factor:g} times its size "
        "(SLIMFORMER_MAX_UPLOAD_EXPANSION); a file that expands this much is "
        "refused: upload the data less compressed",
        "SLIMFORMER_MAX_UPLOAD_EXPANSION",
        factor,
    )


def inspect_table(
    path: Path, kind: str, limits: UploadLimits = UploadLimits()
) -> tuple[int, list[str]]:
    """Rows and columns of an uploaded table, read in bounded blocks.

    Raises:
        UploadRefused: over ``limits`` (checked while reading: a bomb is not read to its end).
        ValueError: the file cannot be read as ``kind``; the message names no server path.
    """
    # pyarrow is imported on the first upload only: it is slow to import and most requests are not
    # uploads
    import pyarrow as pa

    name, size = path.name, path.stat().st_size
    if (
        kind != "parquet"
        and limits.uncompressed_bytes is not None
        and size > limits.uncompressed_bytes
    ):
        raise _too_large(name, limits.uncompressed_bytes)
    try:
        if kind == "parquet":
            return _inspect_parquet(path, size, limits)
        if kind == "text":
            return _inspect_plain_text(path, limits)
        return _inspect_text(path, kind, limits)
    except (
        pa.ArrowInvalid,
        pa.ArrowTypeError,
        pa.ArrowNotImplementedError,
        OSError,
        UnicodeDecodeError,
    ) as err:
        message = (str(err).splitlines() or [type(err).__name__])[0]
        raise ValueError(scrub_paths(message, server_roots(path.parent))) from err


def _inspect_parquet(path: Path, size: int, limits: UploadLimits) -> tuple[int, list[str]]:
    import pyarrow.parquet as pq

    name = path.name
    with pq.ParquetFile(path) as parquet:
        meta = parquet.metadata
        columns = list(meta.schema.names)
        if limits.rows is not None and meta.num_rows > limits.rows:
            raise _too_many_rows(name, limits.rows)
        allowed, refusal = None, None
        if limits.uncompressed_bytes is not None:
            allowed = limits.uncompressed_bytes
            refusal = _too_large(name, allowed)
        if limits.expansion is not None:
            by_ratio = int(limits.expansion * max(size, EXPANSION_FLOOR_BYTES))
            if allowed is None or by_ratio < allowed:
                allowed, refusal = by_ratio, _expands(name, size, limits.expansion)
        if allowed is None:
            return meta.num_rows, columns
        # the row groups' own sizes (before the codec, after dictionary encoding) come first: a
        # cheap refusal; then the real decoded size, batch by batch, stopping at the limit
        encoded = sum(meta.row_group(i).total_byte_size for i in range(meta.num_row_groups))
        if encoded > allowed:
            raise refusal
        decoded = rows = 0
        for batch in parquet.iter_batches(batch_size=PARQUET_BATCH_ROWS, use_threads=False):
            decoded += batch.nbytes
            rows += batch.num_rows
            if decoded > allowed:
                raise refusal
    return rows, columns


def _inspect_plain_text(path: Path, limits: UploadLimits) -> tuple[int, list[str]]:
    """Documents of a ``.txt`` upload (blocks of lines separated by blank lines, as the library
    reads them) and its one column, ``text``; read line by line, stopping at the row limit."""
    documents, in_block = 0, False
    with path.open(encoding="utf-8") as lines:  # UnicodeDecodeError: reported as unreadable
        for line in lines:
            if line.strip():
                if not in_block:
                    documents += 1
                    if limits.rows is not None and documents > limits.rows:
                        raise _too_many_rows(path.name, limits.rows)
                in_block = True
            else:
                in_block = False
    return documents, ["text"]


def _inspect_text(path: Path, kind: str, limits: UploadLimits) -> tuple[int, list[str]]:
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.json as pajson

    if kind == "json":
        parse = pajson.ParseOptions(unexpected_field_behavior="ignore")
        reader = pajson.open_json(
            path, read_options=pajson.ReadOptions(block_size=BLOCK_BYTES), parse_options=parse
        )
    else:
        read = pacsv.ReadOptions(block_size=BLOCK_BYTES)
        parse = (
            pacsv.ParseOptions(delimiter="\t", quote_char=False)
            if kind == "tsv"
            else pacsv.ParseOptions()
        )
        with pacsv.open_csv(path, read_options=read, parse_options=parse) as first:
            names = first.schema.names
        # every column as text: a column that looks numeric in the first block and is not later
        # must not make the file unreadable
        convert = pacsv.ConvertOptions(column_types={n: pa.string() for n in names})
        reader = pacsv.open_csv(
            path, read_options=read, parse_options=parse, convert_options=convert
        )
    rows = 0
    with reader:
        columns = list(reader.schema.names)
        for batch in reader:
            rows += batch.num_rows
            if limits.rows is not None and rows > limits.rows:
                raise _too_many_rows(path.name, limits.rows)
    return rows, columns
