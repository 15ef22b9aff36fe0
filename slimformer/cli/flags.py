"""The flags that set job spec fields, made from the spec's own pydantic fields.

A flag's type, choices (a ``Literal`` type), range (``ge``/``gt``/``le``/``lt``), default and help
(the field's ``description``) all come from ``slimformer.spec``; its value is checked by the field
itself (``check_field``). This module only says which fields get a flag, and under which name: the
tables below. Torch-free: ``submit`` uses it too.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from slimformer.spec import FieldFacts, check_field, spec_fields, upload_suffixes


@dataclass(frozen=True)
class SpecFlag:
    """A command-line flag that sets the spec field at ``path``.

    ``name``: the flag without its dashes (default: the field's name, ``_`` as ``-``). A boolean
    field gets a switch: ``--onnx`` turns on a field that is off by default, ``--no-latency`` (a
    name is then required, with ``help``) turns off one that is on; a nullable one takes ``on`` or
    ``off``. ``help`` replaces the field's description where the command line says it otherwise.
    """

    path: str
    name: str | None = None
    help: str | None = None
    metavar: str | None = None

    @property
    def field(self) -> FieldFacts:
        return spec_fields()[self.path]

    @property
    def option(self) -> str:
        return "--" + (self.name or self.path.rsplit(".", 1)[-1].replace("_", "-"))

    @property
    def dest(self) -> str:
        return self.option[2:].replace("-", "_")

    @property
    def kind(self) -> str:
        """``value``, ``list`` (comma-separated), ``on_off``, ``switch_on`` or ``switch_off``."""
        field = self.field
        if field.type == "boolean":
            if field.nullable:
                return "on_off"
            return "switch_off" if field.default else "switch_on"
        return "list" if field.many else "value"


def _section(section: str, **names: str) -> tuple[SpecFlag, ...]:
    """A flag for every field of a spec section (not of the sections inside it), under its own
    name unless ``names`` renames it."""
    return tuple(
        SpecFlag(path, names.get(path.rsplit(".", 1)[1]))
        for path in spec_fields()
        if path.startswith(section + ".") and path.count(".") == 1
    )


# -- which spec fields get flags, and under which names -------------------------------------------
PRUNE = _section("prune")  # every setting of PruneSpec, under its own name
DISTILL = _section("distill")  # every setting of DistillSpec but the student (below)
STUDENT = (
    SpecFlag("distill.student.layers", "student-layers"),
    SpecFlag("distill.student.id", "student"),
)
LAYER_SELECTION = SpecFlag("distill.student.layer_selection", "layer-selection")
MODEL_ORIGIN = (
    SpecFlag("model.base_model", metavar="HUB_ID"),
    SpecFlag("model.allow_new_head"),
)
REVISION = SpecFlag("model.revision")
TASK = SpecFlag("model.task")
METHOD = SpecFlag("method")
HUB_DATASET = SpecFlag("dataset.hub_id", "hub-dataset")
HUB_SPLITS = (
    SpecFlag("dataset.config", "hub-config"),
    SpecFlag("dataset.split"),
    SpecFlag("dataset.eval_split"),
)
COLUMNS = (
    SpecFlag("dataset.text_column"),
    SpecFlag("dataset.text_pair_column"),
    SpecFlag("dataset.label_column"),
    SpecFlag("dataset.max_samples"),
)
EVALUATION = (
    SpecFlag("evaluation.max_samples", "eval-samples"),
    SpecFlag("evaluation.latency", "no-latency", help="Skip the latency measurement."),
    SpecFlag("evaluation.onnx"),
    SpecFlag("evaluation.onnx_int8"),
    SpecFlag("evaluation.tasks", metavar="TASKS"),
    SpecFlag("evaluation.task_limit"),
    SpecFlag("evaluation.new_tokens"),
)
EXPORT = (SpecFlag("export.gguf"), SpecFlag("export.quantize"), SpecFlag("export.targets"))
PUBLISH = (
    SpecFlag("publish.repo_id", "publish", metavar="REPO"),
    SpecFlag("publish.private", "public", help="Make the published repo public."),
)
SEED = SpecFlag("seed")


def data_flags(*, uploaded: bool) -> tuple[SpecFlag, SpecFlag]:
    """``--data`` and ``--eval-data``: local files, read here or uploaded to the service."""
    how = "uploaded to the service" if uploaded else "read here"
    return (
        SpecFlag("dataset.path", "data", help=f"A local data file, {upload_suffixes()} ({how})."),
        SpecFlag(
            "dataset.eval_path",
            "eval-data",
            help=f"A local file to evaluate on ({how}); default: a held-out fifth of --data.",
        ),
    )


# -- flags from fields ----------------------------------------------------------------------------
def _shown(value: Any) -> str:
    return ",".join(map(str, value)) if isinstance(value, list) else str(value)


def help_text(flag: SpecFlag) -> str:
    """The field's description (or the flag's own help), its range and its default, in the
    command line's words (a null field is an unset flag; a nullable switch is on or off)."""
    field, kind = flag.field, flag.kind
    text = (flag.help or field.description or "").strip()
    text = re.sub(r"\bnull\b", "unset", re.sub(r"\bNull\b", "Unset", text))
    if kind == "on_off":
        text = re.sub(r"\btrue\b", "on", re.sub(r"\bfalse\b", "off", text))
    facts = []
    if field.range_text():
        facts.append(f"range {field.range_text()}")
    if kind == "list" and field.choices:
        facts.append(f"from {','.join(field.choices)}, separated by commas")
    if kind in ("value", "list") and field.default is not None and field.default != []:
        facts.append(f"default {_shown(field.default)}")
    if facts:
        sentence = "; ".join(facts)
        text = f"{text}{'' if text.endswith('.') or not text else '.'} "
        text = (text + sentence[0].upper() + sentence[1:] + ".").strip()
    return text.replace("%", "%%")  # argparse formats help with %


def problem(field: FieldFacts, text: str, err: ValidationError) -> str:
    """What is wrong with ``text`` for ``field``, said as the command line says it."""
    kind = err.errors()[0]["type"]
    what = "a whole number" if field.type == "integer" else "a number"
    if field.is_fraction():
        what = "a fraction"
    span = field.range_text() or ""
    if kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        return f"{text} is not {what} {'in ' if span[:1] in '[(' else ''}{span}".rstrip()
    if field.type == "integer":
        return f"{text!r} is not a whole number"
    return f"{text!r} is not a number"


def _value_type(flag: SpecFlag):
    def parse(text: str) -> Any:
        try:
            return check_field(flag.path, text)
        except ValidationError as err:
            raise argparse.ArgumentTypeError(problem(flag.field, text, err)) from None

    parse.__name__ = flag.dest
    return parse


def _list_type(flag: SpecFlag):
    def parse(text: str) -> list:
        items = [t.strip().lower() for t in text.split(",") if t.strip()]
        try:
            if not items:
                raise ValueError
            return check_field(flag.path, items)
        except (ValidationError, ValueError):
            raise argparse.ArgumentTypeError(
                f"{text!r}: give {flag.dest} from {', '.join(flag.field.choices or [])}, "
                "separated by commas"
            ) from None

    parse.__name__ = flag.dest
    return parse


def add_flag(parser: argparse._ActionsContainer, flag: SpecFlag, **overrides: Any) -> None:
    """Add ``flag`` to a parser (or an argument group); ``overrides`` go to ``add_argument``."""
    field, kind = flag.field, flag.kind
    options: dict[str, Any] = {"dest": flag.dest, "help": help_text(flag)}
    if kind in ("switch_on", "switch_off"):
        options |= {"action": "store_true"}
    elif kind == "on_off":
        options |= {"choices": ("on", "off")}
    elif kind == "list":
        options |= {"type": _list_type(flag)}
    elif field.choices:
        options |= {"choices": field.choices}
    elif field.type in ("integer", "number"):
        options |= {"type": _value_type(flag)}
    if flag.metavar:
        options["metavar"] = flag.metavar
    parser.add_argument(flag.option, **options | overrides)


def add_flags(parser: argparse._ActionsContainer, flags: Iterable[SpecFlag]) -> None:
    for flag in flags:
        add_flag(parser, flag)


def spec_values(args: argparse.Namespace, flags: Iterable[SpecFlag]) -> dict[str, Any]:
    """The spec fields that ``flags`` set on this command line, as a nested spec dict; a flag not
    given sets nothing, so the spec's default (or a spec file's value) stands."""
    data: dict[str, Any] = {}
    for flag in flags:
        value = getattr(args, flag.dest, None)
        if value is None or value is False:
            continue
        if flag.kind == "on_off":
            value = value == "on"
        elif flag.kind in ("switch_on", "switch_off"):
            value = flag.kind == "switch_on"
        *sections, name = flag.path.split(".")
        node = data
        for section in sections:
            node = node.setdefault(section, {})
        node[name] = value
    return data


def merge(target: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
    """``values`` laid over ``target`` section by section (in place; returns ``target``)."""
    for key, value in values.items():
        if isinstance(value, dict) and isinstance(target.get(key), dict):
            merge(target[key], value)
        else:
            target[key] = value
    return target


def flag_for(path: str, flags: Iterable[SpecFlag]) -> str | None:
    """The option of the flag that sets ``path`` (``--heads`` for ``prune.heads``), if any."""
    return next((flag.option for flag in flags if flag.path == path), None)
