"""What the front doors (the command line, the dashboard) read of the spec's fields: each leaf
field's type, choices, range, default and description, and a check of one value by its field."""

from __future__ import annotations

import types
from functools import cache
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from slimformer.spec.job import JobSpec


class FieldFacts(BaseModel):
    """One leaf field of the job spec as a form or a flag needs it: its type, choices (from its
    ``Literal`` type), range (from its ``ge``/``gt``/``le``/``lt`` constraints), default and
    description."""

    model_config = ConfigDict(frozen=True)

    path: str = Field(..., description="The dotted path in the job spec, e.g. `prune.heads`.")
    type: Literal["string", "integer", "number", "boolean"] = Field(
        ..., description="The JSON type of a value (of each item when `many`)."
    )
    many: bool = Field(False, description="A list of values, e.g. `export.targets`.")
    nullable: bool = Field(False, description="null is accepted (it means the default).")
    required: bool = Field(False, description="The spec must give it.")
    choices: list[str] | None = Field(None, description="The accepted values; null: any.")
    default: Any = Field(None, description="The value when not given.")
    ge: int | float | None = Field(None, description="Smallest accepted value (inclusive).")
    gt: int | float | None = Field(None, description="Values must be greater than this.")
    le: int | float | None = Field(None, description="Largest accepted value (inclusive).")
    lt: int | float | None = Field(None, description="Values must be less than this.")
    description: str | None = Field(None, description="What the field means.")

    def range_text(self) -> str | None:
        """The range as ``[0, 1)``, ``(0, 1]``, ``>= 1`` or ``<= 20``; None when unbounded."""
        low = (
            ("[", self.ge)
            if self.ge is not None
            else ("(", self.gt)
            if self.gt is not None
            else None
        )
        high = (
            ("]", self.le)
            if self.le is not None
            else (")", self.lt)
            if self.lt is not None
            else None
        )
        if low and high:
            return f"{low[0]}{_number(low[1])}, {_number(high[1])}{high[0]}"
        if low:
            return f"{'>=' if low[0] == '[' else '>'} {_number(low[1])}"
        if high:
            return f"{'<=' if high[0] == ']' else '<'} {_number(high[1])}"
        return None

    def is_fraction(self) -> bool:
        """Bounded within [0, 1]: a fraction of something."""
        low = self.ge if self.ge is not None else self.gt
        high = self.le if self.le is not None else self.lt
        return low is not None and high is not None and 0 <= low and high <= 1


def _number(value: float) -> str:
    return str(int(value)) if value == int(value) else str(value)


_JSON_TYPES = {bool: "boolean", int: "integer", float: "number", str: "string"}


def _unwrap_optional(annotation: Any) -> tuple[Any, bool]:
    if get_origin(annotation) in (Union, types.UnionType):
        rest = [a for a in get_args(annotation) if a is not type(None)]
        if len(rest) == 1:
            return rest[0], len(rest) < len(get_args(annotation))
    return annotation, False


def _field_facts(path: str, info: Any) -> FieldFacts:
    annotation, nullable = _unwrap_optional(info.annotation)
    many = get_origin(annotation) is list
    if many:
        annotation = get_args(annotation)[0]
    choices = list(get_args(annotation)) if get_origin(annotation) is Literal else None
    bounds = {
        name: getattr(item, name)
        for item in info.metadata
        for name in ("ge", "gt", "le", "lt")
        if hasattr(item, name)
    }
    return FieldFacts(
        path=path,
        type="string" if choices else _JSON_TYPES.get(annotation, "string"),
        many=many,
        nullable=nullable,
        required=info.is_required(),
        choices=choices,
        default=None if info.is_required() else info.get_default(call_default_factory=True),
        description=info.description,
        **bounds,
    )


@cache
def spec_fields() -> dict[str, FieldFacts]:
    """Every leaf field of :class:`JobSpec` by dotted path (``prune.heads``,
    ``distill.student.layers``), in the spec's order: the one source of the choices, ranges and
    defaults that the command line's flags and the dashboard's form show."""
    found: dict[str, FieldFacts] = {}

    def walk(model: type[BaseModel], prefix: str) -> None:
        for name, info in model.model_fields.items():
            inner, _ = _unwrap_optional(info.annotation)
            if isinstance(inner, type) and issubclass(inner, BaseModel):
                walk(inner, f"{prefix}{name}.")
            else:
                found[prefix + name] = _field_facts(prefix + name, info)

    walk(JobSpec, "")
    return found


@cache
def _adapter(path: str) -> TypeAdapter:
    model: type[BaseModel] = JobSpec
    *sections, name = path.split(".")
    for section in sections:
        model, _ = _unwrap_optional(model.model_fields[section].annotation)
    info = model.model_fields[name]
    return TypeAdapter(Annotated[info.annotation, info])


def check_field(path: str, value: Any) -> Any:
    """``value`` checked (and converted) by the spec's own field at ``path``: its type, choices and
    range; raises pydantic's ``ValidationError``. The rules that join fields are the model's."""
    return _adapter(path).validate_python(value)
