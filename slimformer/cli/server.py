"""Server commands (``serve``, ``worker``, ``keys``, ``migrate``), found through entry points.

The library never imports the service: a package registers commands in the ``slimformer.commands``
entry-point group, each naming an object that fits :class:`ServerCommand`. The entry point's name
is the subcommand's name.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from operator import attrgetter
from typing import Protocol

from pydantic import ValidationError

GROUP = "slimformer.commands"


class ServerCommand(Protocol):
    """What a ``slimformer.commands`` entry point loads: one ``slimformer`` subcommand.

    - ``help``: its line in ``slimformer --help``.
    - ``add_arguments(parser)``: adds its arguments to its subparser.
    - ``run(args)``: runs it and returns the exit code.
    - ``expected_errors``: exceptions that mean "refused" (no schema yet, no such key): the CLI
      prints them as one ``error: {exception}`` line and exits 2.

    A pydantic ``ValidationError`` (bad settings) also becomes one line, exit 2:
    ``error: invalid settings: field: message; ...``. Anything else shows its traceback.
    """

    help: str
    expected_errors: tuple[type[Exception], ...]

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        """Add the command's arguments to its (sub)parser."""

    def run(self, args: argparse.Namespace) -> int:
        """Run the command with the parsed arguments; returns the exit code."""


@dataclass(frozen=True)
class Unavailable:
    """Stands in for a command whose entry point fails to import (the service extra is missing).

    It still shows in ``slimformer --help``; running it, with any arguments, says what to install.
    """

    name: str
    reason: str
    help: str = "needs the service extra: pip install 'slimformer[service]'"
    expected_errors: tuple[type[Exception], ...] = ()

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        """Takes no arguments: whatever follows is accepted and ignored."""

    def run(self, args: argparse.Namespace) -> int:
        print(
            f"error: `slimformer {self.name}` needs the service extra: pip install "
            f"'slimformer[service]' ({self.reason})",
            file=sys.stderr,
        )
        return 2


def _load(entry_point: EntryPoint) -> ServerCommand:
    try:
        return entry_point.load()
    except ImportError as err:
        return Unavailable(entry_point.name, str(err))


def load_commands(word: str | None = None) -> dict[str, ServerCommand | None]:
    """Every registered server command by name; ``None`` for those left unloaded.

    Loading one imports the service, which is slow, so with a command ``word`` only the command of
    that name is loaded: the rest are names, enough to parse and to show usage lines. Without one
    (``slimformer --help``) all are loaded for their help lines.
    """
    found = sorted(entry_points(group=GROUP), key=attrgetter("name"))
    return {point.name: _load(point) if word in (None, point.name) else None for point in found}


def add_commands(
    sub: argparse._SubParsersAction, commands: Mapping[str, ServerCommand | None]
) -> None:
    """One subparser per command; an unavailable one takes any arguments, even ``--help``."""
    for name, command in commands.items():
        if command is None:
            sub.add_parser(name)  # not loaded: a name among the choices, never run
            continue
        unavailable = isinstance(command, Unavailable)
        parser = sub.add_parser(name, help=command.help, add_help=not unavailable)
        command.add_arguments(parser)


def run_command(command: ServerCommand, args: argparse.Namespace) -> int:
    """Run a server command; settings and startup errors become one ``error: ...`` line, exit 2."""
    try:
        return command.run(args)
    except ValidationError as err:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'settings'}: {e['msg']}" for e in err.errors()
        )
        print(f"error: invalid settings: {problems}", file=sys.stderr)
        return 2
    except command.expected_errors as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
