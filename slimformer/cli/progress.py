"""Progress of a local run: a live bar on a terminal, plain lines in a log file, CI or a container.

Both take the pipeline's ``(stage, fraction, message)`` callbacks and show the whole run's progress
(the stage table of :mod:`slimformer.spec` weighs the stages) with an estimate of the time left.
Torch-free, like everything the client commands import.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from types import TracebackType
from typing import TextIO

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from slimformer.spec import overall_progress

# seconds between two plain progress lines within one stage (a stage change always prints at once)
DEFAULT_INTERVAL = 15.0
INTERVAL_ENV = "SLIMFORMER_PROGRESS_SECONDS"


def duration(seconds: float | None) -> str:
    """``45s``, ``3m07s``, ``2h05m``; empty for None."""
    if seconds is None:
        return ""
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def interval_from_env(default: float = DEFAULT_INTERVAL) -> float:
    """``SLIMFORMER_PROGRESS_SECONDS`` when it holds a number >= 0, else ``default``."""
    try:
        value = float(os.environ.get(INTERVAL_ENV, default))
    except ValueError:
        return default
    return value if value >= 0 else default


class _RunProgress:
    """The shared part: the whole run's fraction done and the time left, from the stages it runs."""

    def __init__(self, stages: list[str], clock: Callable[[], float] = time.monotonic) -> None:
        self.stages = stages
        self.clock = clock
        self.started = clock()

    def overall(self, stage: str, fraction: float) -> float:
        if stage not in self.stages:
            return 0.0
        return overall_progress(self.stages, stage, fraction)

    def eta(self, overall: float) -> float | None:
        """Seconds left at the pace so far; None until there is a pace to go by."""
        elapsed = self.clock() - self.started
        if overall < 0.01 or elapsed < 1.0:
            return None
        return elapsed * (1.0 - overall) / overall

    def __enter__(self) -> _RunProgress:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        return None


class LineProgress(_RunProgress):
    """Plain lines: one per stage change, and within a stage at most one every ``interval`` seconds.

    The first ``interval`` seconds stay quiet, so a run that is over by then prints only its result
    (and an error stays the one line it is). A line reads
    ``[1m05s] scoring       34%  ETA 2m10s  scoring heads, neurons and MLPs``.
    """

    def __init__(
        self,
        stages: list[str],
        *,
        interval: float = DEFAULT_INTERVAL,
        stream: TextIO | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(stages, clock)
        self.interval = interval
        self.stream = stream
        self.stage: str | None = None
        self.last_line = float("-inf")
        self.last_shown: tuple[int, str] | None = None

    def update(self, stage: str, fraction: float, message: str) -> None:
        now = self.clock()
        overall = self.overall(stage, fraction)
        shown = (int(100 * overall), message)
        if now - self.started < self.interval:
            return
        if stage == self.stage and (
            now - self.last_line < self.interval or shown == self.last_shown
        ):
            return
        self.stage, self.last_line, self.last_shown = stage, now, shown
        eta = self.eta(overall)
        line = (
            f"[{duration(now - self.started)}] {stage:<12} {overall:>4.0%}"
            f"  ETA {duration(eta) if eta is not None else '--'}  {message}"
        )
        print(line.rstrip(), file=self.stream or sys.stderr, flush=True)


class BarProgress(_RunProgress):
    """rich's live bar on standard error: stage, bar, percent, time left, time taken, message."""

    def __init__(self, stages: list[str], *, console: Console | None = None) -> None:
        super().__init__(stages)
        columns = (
            TextColumn("[bold]{task.fields[stage]:<12}"),
            BarColumn(),
            TextColumn("{task.percentage:>3.0f}%"),
            TextColumn("{task.fields[eta]}"),
            TimeElapsedColumn(),
            TextColumn("{task.description}"),
        )
        self.progress = Progress(*columns, console=console or Console(stderr=True), transient=True)
        self.task = self.progress.add_task("", total=1.0, stage="starting", eta="")

    def update(self, stage: str, fraction: float, message: str) -> None:
        overall = self.overall(stage, fraction)
        eta = self.eta(overall)
        self.progress.update(
            self.task,
            completed=overall,
            stage=stage,
            description=message[:70],
            eta=f"ETA {duration(eta)}" if eta is not None else "",
        )

    def __enter__(self) -> BarProgress:
        self.progress.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.progress.stop()


def progress_for(stages: list[str]) -> LineProgress | BarProgress:
    """A bar when standard error is a terminal, plain lines otherwise."""
    console = Console(stderr=True)
    if console.is_terminal:
        return BarProgress(stages, console=console)
    return LineProgress(stages, interval=interval_from_env())
