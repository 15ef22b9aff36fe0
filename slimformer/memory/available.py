"""What this process may use: the operator's word, the cgroup's limit, the machine's memory.

``SLIMFORMER_MEMORY_LIMIT_BYTES`` when set (the operator's word: the bytes a job
may use); else the smaller of the cgroup's limit less what the cgroup already uses (its working
set, page cache excluded) and the machine's ``MemAvailable``, plus this process's own resident
memory (the estimate counts the runtime this process already holds).
"""

from __future__ import annotations

import os
from pathlib import Path

MEMORY_LIMIT_ENV = "SLIMFORMER_MEMORY_LIMIT_BYTES"

CGROUP_ROOT = Path("/sys/fs/cgroup")
_UNLIMITED_V1 = 1 << 60  # cgroup v1 writes "no limit" as a page-rounded 2^63 - 1


def _read_int(file: Path) -> int | None:
    try:
        text = file.read_text().strip()
    except OSError:
        return None
    if not text or text == "max":
        return None
    try:
        return int(text)
    except ValueError:
        return None


def _stat(file: Path, key: str) -> int:
    try:
        for line in file.read_text().splitlines():
            name, _, value = line.partition(" ")
            if name == key:
                return int(value)
    except (OSError, ValueError):
        pass
    return 0


def _own_cgroup(proc_cgroup: Path, controller: str) -> str:
    """This process's cgroup: the v2 line (``0::/path``) for ``""``, else the v1 line naming
    ``controller`` (``4:memory:/path``); "/" when unknown."""
    try:
        for line in proc_cgroup.read_text().splitlines():
            _, controllers, path = line.split(":", 2)
            if controllers.split(",") == [controller] or (not controller and not controllers):
                return path or "/"
    except (OSError, ValueError):
        pass
    return "/"


def _tightest_room(base: Path, own: str, names: tuple[str, str, str, str]) -> int | None:
    """The least room under a limit over the cgroup ``own`` (below ``base``) and its parents.
    ``names``: the files of limit, usage and stat, and the stat's inactive page cache."""
    limit_file, usage_file, stat_file, inactive = names
    folder = base / own.strip("/")
    if not folder.is_dir():  # a cgroup namespace shows its own cgroup as the root
        folder = base
    rooms = []
    while True:
        limit = _read_int(folder / limit_file)
        if limit is not None and limit < _UNLIMITED_V1:
            usage = (_read_int(folder / usage_file) or 0) - _stat(folder / stat_file, inactive)
            rooms.append(limit - max(usage, 0))
        if folder == base or base not in folder.parents:
            break
        folder = folder.parent
    return max(min(rooms), 0) if rooms else None


def cgroup_memory_room(
    root: Path = CGROUP_ROOT, proc_cgroup: Path = Path("/proc/self/cgroup")
) -> int | None:
    """Bytes the cgroup limits still leave: ``limit - (usage - inactive page cache)``, the tightest
    over this process's cgroup and its parents; None without a limit (``max``, or no cgroup).

    cgroup v1 (a ``memory`` hierarchy under ``root``): ``memory.limit_in_bytes`` (no limit is a
    number near 2^63), ``memory.usage_in_bytes``, ``memory.stat``'s ``total_inactive_file``.
    cgroup v2: ``memory.max`` (``max``: no limit), ``memory.current``, ``inactive_file``.
    """
    if (root / "memory" / "memory.limit_in_bytes").exists():
        names = ("memory.limit_in_bytes", "memory.usage_in_bytes", "memory.stat")
        own = _own_cgroup(proc_cgroup, "memory")
        return _tightest_room(root / "memory", own, (*names, "total_inactive_file"))
    names = ("memory.max", "memory.current", "memory.stat", "inactive_file")
    return _tightest_room(root, _own_cgroup(proc_cgroup, ""), names)


def _meminfo(key: str, meminfo: Path = Path("/proc/meminfo")) -> int | None:
    """A /proc/meminfo line in bytes (it writes kB)."""
    try:
        for line in meminfo.read_text().splitlines():
            name, _, value = line.partition(":")
            if name == key:
                return int(value.split()[0]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def resident_bytes() -> int:
    """What this process holds now (``VmRSS``); 0 where unknown."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def available_memory() -> tuple[int | None, str]:
    """``(bytes, where the number comes from)``: what this process may hold at its peak.

    ``SLIMFORMER_MEMORY_LIMIT_BYTES`` (a number of bytes, ``8e9`` works) when set: the operator's
    word, taken as is. Else the smaller of the cgroup's room (:func:`cgroup_memory_room`) and the
    machine's ``MemAvailable``, plus this process's own resident memory: an estimate is a whole
    process's peak, runtime included, and the process already holds part of it. ``(None, ...)``
    where none of these can be read (not Linux).
    """
    override = os.environ.get(MEMORY_LIMIT_ENV, "").strip()
    if override:
        try:
            value = int(float(override))
        except ValueError:
            value = 0
        if value <= 0:
            raise ValueError(f"{MEMORY_LIMIT_ENV} is a number of bytes, not {override!r}")
        return value, MEMORY_LIMIT_ENV
    free = [
        (room, source)
        for room, source in (
            (cgroup_memory_room(), "the cgroup's memory limit"),
            (_meminfo("MemAvailable"), "MemAvailable"),
        )
        if room is not None
    ]
    if not free:
        return None, "unknown"
    room, source = min(free)
    return room + resident_bytes(), source


def available_memory_bytes() -> int | None:
    """The bytes this process may use (:func:`available_memory`); None where unknown."""
    return available_memory()[0]


def room_now() -> int | None:
    """The bytes this process may still add to what it holds now (:func:`available_memory` less
    its resident memory); None where unknown."""
    limit = available_memory()[0]
    return None if limit is None else max(0, limit - resident_bytes())
