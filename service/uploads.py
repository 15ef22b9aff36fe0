"""Uploaded data files: safe names, the format from the suffix, rows and columns (pyarrow)."""

from __future__ import annotations

import re
from pathlib import Path

from slimformer.spec import UPLOAD_FORMATS

SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")


def safe_name(filename: str | None) -> str:
    """The uploaded file's base name with anything outside ``[A-Za-z0-9._-]`` replaced."""
    return SAFE_NAME.sub("_", Path(filename or "data").name).strip("._") or "data"


def upload_format(name: str) -> str | None:
    """``csv``, ``tsv``, ``json`` or ``parquet`` from the name's suffix; None if unsupported."""
    return UPLOAD_FORMATS.get(Path(name).suffix.lower())


def inspect_table(path: Path, kind: str) -> tuple[int, list[str]]:
    """Rows and columns of an uploaded table, or ValueError naming what is wrong."""
    # pyarrow is imported on the first upload only: it is slow to import and most requests are not
    # uploads
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.json as pajson
    import pyarrow.parquet as pq

    try:
        if kind == "parquet":
            meta = pq.ParquetFile(path).metadata
            return meta.num_rows, list(meta.schema.names)
        if kind == "json":
            table = pajson.read_json(path)
        elif kind == "tsv":
            parse = pacsv.ParseOptions(delimiter="\t", quote_char=False)
            table = pacsv.read_csv(path, parse_options=parse)
        else:
            table = pacsv.read_csv(path, parse_options=pacsv.ParseOptions())
    except (pa.ArrowInvalid, pa.ArrowTypeError, OSError, UnicodeDecodeError) as err:
        raise ValueError(str(err).splitlines()[0]) from err
    return table.num_rows, list(table.column_names)
