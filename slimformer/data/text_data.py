""":class:`TextData`: the texts, second texts and labels that every loader returns."""

from __future__ import annotations

from dataclasses import dataclass


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
