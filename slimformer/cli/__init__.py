"""The ``slimformer`` command line: local commands, client commands and server commands.

- :mod:`slimformer.cli.parser`: the argument parser and the error guard;
- :mod:`slimformer.cli.local`: ``prune``, ``distill``, ``compress`` (run here);
- :mod:`slimformer.cli.remote`: ``login``, ``submit``, ``jobs``, ... (talk to a service);
- :mod:`slimformer.cli.server`: ``serve``, ``worker``, ``keys``, ``migrate``, found through the
  ``slimformer.commands`` entry points (the library never imports the service).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence

from slimformer.cli import local, remote, server
from slimformer.cli.parser import build_parser, run_guarded

__all__ = ["build_parser", "main"]


def _command_word(argv: Sequence[str]) -> str | None:
    """The subcommand asked for: the first word that is not an option (top-level options take no
    values); ``None`` when there is none or top-level help comes first."""
    for word in argv:
        if word == "-h" or (word.startswith("--h") and "--help".startswith(word)):
            return None
        if not word.startswith("-"):
            return word
    return None


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``slimformer`` with ``argv`` (default: ``sys.argv[1:]``); returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    servers = server.load_commands(_command_word(argv))
    parser = build_parser(servers)
    args, extra = parser.parse_known_args(argv)
    command = servers.get(args.command)
    if extra and not isinstance(command, server.Unavailable):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if command is not None:
        return server.run_command(command, args)
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.WARNING, format="%(levelname)s %(message)s"
    )
    if args.command in remote.HANDLERS:
        return run_guarded(remote.HANDLERS[args.command], args)
    if not args.debug:
        local.quiet_libraries()
    return run_guarded(local.HANDLERS[args.command], args)
