"""API keys as bearer tokens, per-key rate limits, and who may see what.

Auth is on as soon as one key exists (always in production mode). With no key in embedded mode it is off,
every request acts as the local owner, and ``slimformer serve`` refuses any address but loopback.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from service.errors import ApiError
from service.store import LOCAL_OWNER


@dataclass(frozen=True)
class Caller:
    owner: str  # the key id that owns what this caller creates
    name: str
    admin: bool

    @property
    def scope(self) -> str | None:
        """The owner filter for reads: None (everything) for admins."""
        return None if self.admin else self.owner


class RateLimiter:
    """A sliding one-minute window per key, in this API process."""

    def __init__(self, per_minute: int) -> None:
        self.per_minute = per_minute
        self._hits: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def check(self, key: str) -> float | None:
        """None when allowed, else the seconds to wait."""
        now = time.monotonic()
        with self._lock:
            hits = self._hits.setdefault(key, deque())
            while hits and hits[0] <= now - 60:
                hits.popleft()
            if len(hits) >= self.per_minute:
                return max(0.1, 60 - (now - hits[0]))
            hits.append(now)
        return None


class AuthState:
    """Whether auth is on, re-read from the store every few seconds (keys can be created while serving)."""

    def __init__(self, store, *, always: bool) -> None:
        self.store, self.always = store, always
        self._checked, self._on = 0.0, always

    @property
    def enabled(self) -> bool:
        if self.always:
            return True
        if time.monotonic() - self._checked > 2.0:
            self._on = self.store.active_key_count() > 0
            self._checked = time.monotonic()
        return self._on


def current_caller(request: Request) -> Caller:
    state = request.app.state
    header = request.headers.get("authorization", "")
    if not state.auth.enabled:
        caller = Caller(LOCAL_OWNER, "local", admin=True)
    else:
        scheme, _, secret = header.partition(" ")
        if scheme.lower() != "bearer" or not secret:
            raise ApiError(401, "unauthorized", "missing API key: send `Authorization: Bearer <key>`",
                           headers={"WWW-Authenticate": "Bearer"})
        key = state.store.authenticate(secret.strip())
        if key is None:
            raise ApiError(401, "unauthorized", "invalid or revoked API key", headers={"WWW-Authenticate": "Bearer"})
        caller = Caller(key.id, key.name, key.admin)
    wait = state.rate_limiter.check(caller.owner)
    if wait is not None:
        raise ApiError(429, "rate_limited", f"too many requests for this key; retry in {wait:.0f} s",
                       {"retry_after_seconds": round(wait, 1)}, headers={"Retry-After": str(int(wait) + 1)})
    return caller


CallerDep = Annotated[Caller, Depends(current_caller)]
