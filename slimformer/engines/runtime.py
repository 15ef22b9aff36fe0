"""Where each engine lives, and running its Python in a subprocess (one kept per engine inside
:func:`kept_engines`)."""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from slimformer.errors import ExportError

ENGINES = ("llama-cpp", "vllm", "gptq")


class EngineMissing(ExportError):
    """An engine's environment is not built on this machine."""


def engines_home() -> Path:
    base = os.environ.get("SLIMFORMER_ENGINES")
    if base:
        return Path(base)
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return cache / "slimformer" / "engines"


def engine_python(name: str) -> Path:
    """The Python of a built engine environment.

    Raises:
        EngineMissing: the environment is not built (the message says how to build it).
    """
    if name not in ENGINES:
        raise ValueError(f"unknown engine {name!r}; choose {', '.join(ENGINES)}")
    env = engines_home() / name
    python = env / "bin" / "python"
    if not (env / ".complete").is_file() or not python.exists():
        raise EngineMissing(
            f"the {name} engine is not installed at {env}: build it with `make engines` "
            f"(deploy/engines/{name}.sh; set SLIMFORMER_ENGINES to keep engines elsewhere)",
            details={"engine": name, "path": str(env)},
        )
    return python


def run_engine(
    name: str, args: list[str], *, timeout: float, what: str, env: dict | None = None
) -> str:
    python = engine_python(name)
    env = os.environ | {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"} | (env or {})
    done = subprocess.run(
        [str(python), *args], capture_output=True, text=True, timeout=timeout, env=env
    )
    if done.returncode:
        tail = "\n".join(done.stderr.strip().splitlines()[-8:])
        raise ExportError(f"{what} failed in the {name} engine:\n{tail}")
    return done.stdout


class _KeptEngine:
    """One engine process answering requests, one JSON line each, until closed (its stderr in a
    temporary file, read back when a request fails)."""

    def __init__(self, name: str, script: str, env: dict) -> None:
        self.name = name
        self.stderr = tempfile.TemporaryFile()
        self.popen = subprocess.Popen(
            [str(engine_python(name)), "-c", script, "--serve"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.stderr,
            text=True,
            env=os.environ | {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"} | env,
        )
        self.lock = threading.Lock()

    def alive(self) -> bool:
        return self.popen.poll() is None

    def _stderr_tail(self) -> str:
        self.stderr.seek(0)
        lines = self.stderr.read().decode(errors="replace").strip().splitlines()
        return "\n".join(lines[-8:])

    def request(self, payload: dict, *, timeout: float, what: str) -> dict:
        with self.lock:
            watchdog = threading.Timer(timeout, self.popen.kill)
            watchdog.start()
            try:
                self.popen.stdin.write(json.dumps(payload) + "\n")
                self.popen.stdin.flush()
                for line in self.popen.stdout:
                    if line.startswith("SLIMFORMER_RESULT "):
                        return json.loads(line.removeprefix("SLIMFORMER_RESULT "))
                    if line.startswith("SLIMFORMER_ERROR "):
                        trace = json.loads(line.removeprefix("SLIMFORMER_ERROR "))
                        tail = "\n".join(trace.strip().splitlines()[-8:])
                        raise ExportError(f"{what} failed in the {self.name} engine:\n{tail}")
            except (BrokenPipeError, OSError):
                pass
            finally:
                watchdog.cancel()
            self.popen.wait()
            raise ExportError(f"{what} failed in the {self.name} engine:\n{self._stderr_tail()}")

    def close(self) -> None:
        if self.alive():
            self.popen.stdin.close()
            try:
                self.popen.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        self.popen.stdout.close()
        self.stderr.close()


_kept: dict[str, _KeptEngine] | None = None
_kept_lock = threading.Lock()


@contextmanager
def kept_engines() -> Iterator[None]:
    """Inside, :func:`vllm_scores` calls share one vLLM process, started at the first call and
    stopped on leaving: for runs that measure many folders (tests, benchmarks). Each call still
    loads its folder afresh; what is shared is vLLM's import and shutdown, about 20 s a call on 2
    cores. Nested uses share the outermost one's process."""
    global _kept
    with _kept_lock:
        outermost = _kept is None
        if outermost:
            _kept = {}
    try:
        yield
    finally:
        if outermost:
            with _kept_lock:
                kept, _kept = _kept, None
            for engine in kept.values():
                engine.close()


def kept_engine(name: str, script: str, env: dict) -> _KeptEngine | None:
    """The kept process of ``name`` inside :func:`kept_engines` (started, or started again after
    a crash, here), or None outside."""
    with _kept_lock:
        if _kept is None:
            return None
        engine = _kept.get(name)
        if engine is None or not engine.alive():
            if engine is not None:
                engine.close()
            engine = _kept[name] = _KeptEngine(name, script, env)
        return engine
