"""Loading text data (CSV, TSV, JSON lines, Parquet) with ``datasets``, mapping columns and labels,
batching.

Every failure names the file and the column: a missing column lists the columns the file has.
"""

from __future__ import annotations

import contextlib
import contextvars
import csv
import logging
import os
import random
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from slimformer.errors import DatasetError
from slimformer.spec import UPLOAD_FORMATS, is_hub_id
from slimformer.text import read_documents

if TYPE_CHECKING:
    from slimformer.hub.policy import HubPolicy

logger = logging.getLogger(__name__)

TEXT_COLUMN_GUESSES = ("text", "sentence", "sentence1", "content", "review", "question")
PAIR_COLUMN_GUESSES = ("text_pair", "sentence2", "question2")
LABEL_COLUMN_GUESSES = ("label", "labels", "score")
STREAM_ABOVE_BYTES = 1 << 30  # Hub datasets larger than this are streamed
STREAMING_ROW_CAP = 100_000  # rows read from a streamed dataset when no max_samples is given


@dataclass
class TextData:
    """Texts (and optional second texts and labels) in file order."""

    texts: list[str]
    pairs: list[str] | None = None
    labels: list | None = None
    source: str = ""
    text_column: str = ""
    text_pair_column: str | None = None
    label_column: str | None = None
    label_names: list[str] | None = (
        None  # class names of integer labels (a ``datasets.ClassLabel`` column)
    )

    def __len__(self) -> int:
        return len(self.texts)

    def subset(self, indices: list[int]) -> TextData:
        pick = lambda values: None if values is None else [values[i] for i in indices]  # noqa: E731
        return TextData(
            [self.texts[i] for i in indices],
            pick(self.pairs),
            pick(self.labels),
            self.source,
            self.text_column,
            self.text_pair_column,
            self.label_column,
            self.label_names,
        )

    def head(self, n: int | None) -> TextData:
        return self if n is None or n >= len(self) else self.subset(list(range(n)))


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


def _pick(
    columns: list[str],
    wanted: str | None,
    guesses: tuple[str, ...],
    what: str,
    source: str,
    required: bool,
) -> str | None:
    if wanted is not None:
        if wanted not in columns:
            raise DatasetError(
                f"{source}: no {what} column {wanted!r}; the file has columns {', '.join(columns)}",
                details={"file": source, "column": wanted, "columns": columns},
            )
        return wanted
    for guess in guesses:
        if guess in columns:
            return guess
    if required:
        raise DatasetError(
            f"{source}: cannot tell which column holds the {what}; "
            f"name it (columns: {', '.join(columns)})",
            details={"file": source, "columns": columns},
        )
    return None


def table_to_text_data(
    table,
    *,
    source: str,
    text_column: str | None = None,
    text_pair_column: str | None = None,
    label_column: str | None = None,
    max_samples: int | None = None,
    labels: bool = True,
) -> TextData:
    """Map a ``datasets.Dataset``'s columns to texts, pairs and labels."""
    columns = list(table.column_names)
    text_col = _pick(columns, text_column, TEXT_COLUMN_GUESSES, "text", source, required=True)
    pair_col = _pick(
        columns, text_pair_column, PAIR_COLUMN_GUESSES, "text pair", source, required=False
    )
    label_col = (
        _pick(columns, label_column, LABEL_COLUMN_GUESSES, "label", source, required=False)
        if labels
        else None
    )
    if max_samples is not None:
        table = table.select(range(min(max_samples, len(table))))

    def strings(col: str) -> list[str]:
        values = table[col]
        bad = [i for i, v in enumerate(values) if v is None]
        if bad:
            raise DatasetError(
                f"{source}: column {col!r} is empty in {len(bad)} row(s), "
                f"first at row {bad[0] + 1}",
                details={"file": source, "column": col},
            )
        return [str(v) for v in values]

    texts = strings(text_col)
    pairs = strings(pair_col) if pair_col else None
    label_values = None
    if label_col:
        label_values = list(table[label_col])
        missing = [i for i, v in enumerate(label_values) if v is None]
        if missing:
            raise DatasetError(
                f"{source}: label column {label_col!r} is empty in {len(missing)} row(s), "
                f"first at row {missing[0] + 1}",
                details={"file": source, "column": label_col},
            )
    names = (
        getattr((getattr(table, "features", None) or {}).get(label_col), "names", None)
        if label_col
        else None
    )
    return TextData(texts, pairs, label_values, source, text_col, pair_col, label_col, names)


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


def _local_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def load_hub_dataset(
    dataset_id: str,
    *,
    config: str | None = None,
    split: str = "train",
    token: str | None = None,
    max_samples: int | None = None,
    streaming: bool | None = None,
    stream_above_bytes: int = STREAM_ABOVE_BYTES,
    seed: int = 0,
    text_column: str | None = None,
    text_pair_column: str | None = None,
    label_column: str | None = None,
    labels: bool = True,
    local_files: bool = True,
    policy: HubPolicy | None = None,
) -> TextData:
    """Read one split of a Hub dataset with ``datasets.load_dataset`` and map its columns.

    A Hub dataset is read only after the Hub said, for this token, that it may be (its info at
    the current commit), and then at that commit, with a ``datasets`` cache of this call's own:
    ``datasets`` falls back to any cached copy when the Hub refuses a repo, which would hand one
    tenant's private rows to another. A refused dataset is answered exactly like one that does not
    exist, whatever any cache holds.

    With ``local_files=False`` (a service) the id is a Hub id and nothing else: ``datasets`` would
    read an existing local folder of that name instead, so such a name is answered exactly as a
    missing Hub dataset.

    A dataset larger than ``stream_above_bytes`` (or ``streaming=True``) is streamed: rows are drawn
    through a shuffle buffer and at most ``max_samples`` (or ``STREAMING_ROW_CAP``) are read. A
    smaller one is loaded whole, shuffled with ``seed`` and cut to ``max_samples``.

    Raises:
        DatasetError: unknown dataset (or one the token cannot read), config or split, a missing
            column, empty rows, labels the model lacks.
        HubUnavailable: the Hub could not be reached (worth retrying later).
        GatedRepo, Unauthorized: the Hub refused the token (gated dataset, invalid token).

    Example:
        >>> data = load_hub_dataset("stanfordnlp/sst2", split="validation", max_samples=500)
    """
    import tempfile

    from slimformer.errors import RepoNotFound
    from slimformer.hub.download import authorize_dataset
    from slimformer.hub.policy import HubPolicy

    policy = policy or HubPolicy(allow_local_files=local_files)
    where = f"{dataset_id}" + (f" ({config})" if config else "") + f" split {split!r}"
    details = {"dataset": dataset_id, "config": config, "split": split}
    not_found = DatasetError(
        f"dataset {dataset_id} not found on the Hub (if it is private, give a token that can "
        "read it)",
        details=details,
    )
    local = local_files and Path(dataset_id).is_dir()
    if not local_files and (not is_hub_id(dataset_id) or os.path.lexists(dataset_id)):
        raise not_found
    if not local and not is_hub_id(dataset_id):
        raise DatasetError(
            f"cannot load {where}: no folder of that name here, and not a Hub id (org/name)",
            details=details,
        )
    revision, size, sent = None, None, token
    if local:
        size = _local_bytes(Path(dataset_id))
    else:
        try:
            info = authorize_dataset(dataset_id, token=token, policy=policy)
        except RepoNotFound:
            raise not_found from None
        revision, sent = info.sha, policy.request_token(token)
        sizes = [f.size for f in info.siblings or [] if f.size is not None]
        size = sum(sizes) if sizes else None
    if streaming is None:
        streaming = size is not None and size > stream_above_bytes
    cache_root = Path(policy.cache_dir) if policy.cache_dir is not None else None
    if cache_root is not None:
        cache_root.mkdir(parents=True, exist_ok=True)
    read = _Read(dataset_id, config, split, where, details, not_found)
    with tempfile.TemporaryDirectory(prefix="datasets-", dir=cache_root) as own_cache:
        table = read.table(
            revision, sent, streaming, None if local else own_cache, max_samples, seed
        )
        # read into memory while this call's cache (the table's files) still exists
        return table_to_text_data(
            table,
            source=f"{dataset_id}:{split}",
            text_column=text_column,
            text_pair_column=text_pair_column,
            label_column=label_column,
            labels=labels,
        )


@dataclass
class _Read:
    """One split of a dataset, read with ``datasets``, its failures told in our words."""

    dataset_id: str
    config: str | None
    split: str
    where: str
    details: dict
    not_found: DatasetError

    def table(self, revision, token, streaming: bool, cache_dir, max_samples, seed: int):
        """The split's rows (at most ``max_samples``, shuffled with ``seed``), as a table."""
        import datasets

        from slimformer.errors import HubUnavailable
        from slimformer.hub.retries import is_transient

        datasets.disable_progress_bars()
        try:
            table = datasets.load_dataset(
                self.dataset_id,
                self.config,
                split=self.split,
                revision=revision,
                token=token,
                streaming=streaming,
                cache_dir=cache_dir,
            )
            if streaming:
                rows = max_samples or STREAMING_ROW_CAP
                if max_samples is None:
                    logger.info("streaming %s: reading at most %d rows", self.where, rows)
                stream = table.shuffle(seed=seed, buffer_size=10_000).take(rows)
                table = datasets.Dataset.from_list(list(stream), features=table.features)
            elif max_samples is not None and max_samples < len(table):
                table = table.shuffle(seed=seed).select(range(max_samples))
        except Exception as err:  # datasets raises many types; the message names the problem
            if is_transient(err):
                raise HubUnavailable(
                    f"the Hub could not be reached to load {self.where}", details=self.details
                ) from err
            if type(err).__name__ in ("DatasetNotFoundError", "RepositoryNotFoundError"):
                raise self.not_found from err
            raise DatasetError(f"cannot load {self.where}: {err}", details=self.details) from err
        if len(table) == 0:
            raise DatasetError(f"{self.where} has no rows", details=self.details)
        return table


def encode_labels(data: TextData, config) -> list:
    """Labels as the model expects them: class ids (strings mapped through ``label2id``) or
    floats."""
    if data.labels is None:
        raise DatasetError(f"{data.source} has no label column", details={"file": data.source})
    num_labels = getattr(config, "num_labels", 2)
    if num_labels == 1 or getattr(config, "problem_type", None) == "regression":
        try:
            return [float(v) for v in data.labels]
        except (TypeError, ValueError) as err:
            raise DatasetError(
                f"{data.source}: column {data.label_column!r} must hold numbers "
                "for a regression model",
                details={"file": data.source, "column": data.label_column},
            ) from err
    label2id = {str(k): int(v) for k, v in (getattr(config, "label2id", None) or {}).items()}
    folded = {k.casefold(): v for k, v in label2id.items()}
    values = data.labels
    if data.label_names and all(n.casefold() in folded for n in data.label_names):
        # class ids of the data's own order (ClassLabel): go through the names, which may be ordered
        # differently
        by_index = {i: folded[n.casefold()] for i, n in enumerate(data.label_names)}
        values = [
            by_index.get(v, v) if isinstance(v, int) and not isinstance(v, bool) else v
            for v in values
        ]
    out, unknown = [], set()
    for value in values:
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            unknown.add(repr(value))
            continue
        if isinstance(value, str) and (value in label2id or value.strip().casefold() in folded):
            out.append(label2id[value] if value in label2id else folded[value.strip().casefold()])
            continue
        try:
            as_int = int(value)
        except (TypeError, ValueError):
            unknown.add(str(value))
            continue
        if str(as_int) != str(value).strip() and float(value) != as_int:
            unknown.add(str(value))
        elif 0 <= as_int < num_labels:
            out.append(as_int)
        else:
            unknown.add(str(value))
    if unknown:
        known = ", ".join(f"{k}={v}" for k, v in sorted(label2id.items(), key=lambda kv: kv[1]))
        generic = all(k.upper() == f"LABEL_{v}" for k, v in label2id.items())
        names = "" if generic else "the model's label names or "
        raise DatasetError(
            f"{data.source}: labels {', '.join(sorted(unknown)[:5])} "
            f"in column {data.label_column!r} do not match "
            f"the model's {num_labels} labels ({known}); write the labels as {names}class ids 0 to "
            f"{num_labels - 1}, or name the right label column",
            details={
                "file": data.source,
                "column": data.label_column,
                "unknown": sorted(unknown)[:20],
            },
        )
    return out


def make_batches(
    tokenizer,
    data: TextData,
    *,
    task: str,
    config=None,
    batch_size: int = 32,
    max_length: int = 128,
    with_labels: bool = True,
    shuffle: bool = False,
    seed: int = 0,
) -> list[dict[str, torch.Tensor]]:
    """Tokenised batches. Causal-LM batches carry ``labels`` = input ids with padding masked."""
    if len(data) == 0:
        raise DatasetError(f"{data.source or 'the data'} has no rows")
    order = list(range(len(data)))
    if shuffle:
        random.Random(seed).shuffle(order)
    labels = None
    if with_labels and task == "text-classification" and data.labels is not None:
        labels = encode_labels(data, config)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    batches = []
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        texts = [data.texts[i] for i in idx]
        pairs = [data.pairs[i] for i in idx] if data.pairs is not None else None
        enc = tokenizer(
            texts, pairs, padding=True, truncation=True, max_length=max_length, return_tensors="pt"
        )
        batch = {
            k: v for k, v in enc.items() if k in ("input_ids", "attention_mask", "token_type_ids")
        }
        if labels is not None:
            dtype = torch.float if isinstance(labels[0], float) else torch.long
            batch["labels"] = torch.tensor([labels[i] for i in idx], dtype=dtype)
        elif with_labels and task == "text-generation":
            batch["labels"] = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
        batches.append(batch)
    return batches
