"""What every part of the compression report shares: open objects, JSON numbers, optional keys
that are never null."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema

# a JSON number: an int stays an int and a float a float, as the report wrote them
Number = Annotated[int | float, WithJsonSchema({"type": "number"})]
Task = Literal["text-classification", "text-generation", "feature-extraction"]


def _never_null(schema: dict[str, Any]) -> None:
    """The schema of an optional key that is never null when present: without the null branch
    and the ``"default": null`` that the ``None`` default (absence) would give it."""
    schema.pop("default", None)
    (branch,) = [b for b in schema.pop("anyOf") if b != {"type": "null"}]
    schema.update(branch)


def _optional(description: str) -> Any:
    """An optional key that is never null: ``None`` in Python when the report lacks it."""
    return Field(None, description=description, json_schema_extra=_never_null)


class _Open(BaseModel):
    """A report object: the keys it does not name are kept."""

    model_config = ConfigDict(extra="allow")
