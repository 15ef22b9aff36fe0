"""A table's columns as :class:`TextData`: the text, text pair and label columns, named or guessed,
checked for empty rows.

Every failure names the source and the column: a missing column lists the columns the source has.
"""

from __future__ import annotations

from slimformer.data.text_data import TextData
from slimformer.errors import DatasetError

TEXT_COLUMN_GUESSES = ("text", "sentence", "sentence1", "content", "review", "question")
PAIR_COLUMN_GUESSES = ("text_pair", "sentence2", "question2")
LABEL_COLUMN_GUESSES = ("label", "labels", "score")


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
