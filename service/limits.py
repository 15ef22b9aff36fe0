"""Limits that hold across API processes, and a short per-process cache of checked API keys.

- requests per minute per key (a sliding one-minute window),
- failed authentications per minute per key id (then 429 before any store query) and per client
  address (then a bad key gets 429, while a valid key from that address still works),
- concurrent event streams per key (leases that a crashed process's streams let expire).

With Redis (``REDIS_URL``; always in production) the windows and leases live there and each
check is one atomic Lua script, so N API processes or replicas enforce one limit, on Redis's
clock. Without Redis (embedded mode) they live in this process. When Redis stops answering, a
process falls back to its own counters (and logs it) instead of failing requests.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Callable
from typing import Any, Protocol

logger = logging.getLogger(__name__)

WINDOW_SECONDS = 60.0
STREAM_LEASE_SECONDS = 60.0  # a stream renews its lease at least every keep-alive (15 s)


class Windows(Protocol):
    """Sliding windows of events per name: the backend of the limits below."""

    def hit(self, name: str, limit: int) -> float | None:
        """Record an event unless ``limit`` were already seen in the window: None, else the
        seconds until the oldest leaves it."""

    def blocked(self, names: list[str], limit: int) -> float | None:
        """Without recording: None when every name has fewer than ``limit`` events in the window,
        else the longest wait."""

    def add(self, names: list[str]) -> None:
        """Record one event for each name."""


class Leases(Protocol):
    """At most ``cap`` live tokens per name; a token lives until released or its lease ends."""

    def acquire(self, name: str, token: str, cap: int, lease: float) -> bool: ...

    def renew(self, name: str, token: str, lease: float) -> None: ...

    def release(self, name: str, token: str) -> None: ...


class MemoryWindows:
    """Windows and leases in this process (embedded mode, or while Redis is unreachable)."""

    def __init__(self, window: float = WINDOW_SECONDS) -> None:
        self.window = window
        self._events: dict[str, deque[float]] = {}
        self._leases: dict[str, dict[str, float]] = {}
        self._lock = threading.Lock()

    def _live(self, name: str, now: float) -> deque[float]:
        events = self._events.setdefault(name, deque())
        while events and events[0] <= now - self.window:
            events.popleft()
        return events

    def _forget_idle(self, now: float) -> None:
        """Drop names whose windows are empty (keeps memory bounded under many key ids)."""
        if len(self._events) > 10_000:
            for name in [n for n, e in self._events.items() if not e or e[-1] <= now - self.window]:
                del self._events[name]

    def hit(self, name: str, limit: int) -> float | None:
        now = time.monotonic()
        with self._lock:
            events = self._live(name, now)
            if len(events) >= limit:
                return max(0.1, self.window - (now - events[0]))
            events.append(now)
            self._forget_idle(now)
        return None

    def blocked(self, names: list[str], limit: int) -> float | None:
        now = time.monotonic()
        waits = []
        with self._lock:
            for name in names:
                events = self._live(name, now)
                if len(events) >= limit:
                    waits.append(max(0.1, self.window - (now - events[-limit])))
        return max(waits) if waits else None

    def add(self, names: list[str]) -> None:
        now = time.monotonic()
        with self._lock:
            for name in names:
                self._live(name, now).append(now)
            self._forget_idle(now)

    def acquire(self, name: str, token: str, cap: int, lease: float) -> bool:
        now = time.monotonic()
        with self._lock:
            held = self._leases.setdefault(name, {})
            for old in [t for t, until in held.items() if until <= now]:
                del held[old]
            if len(held) >= cap:
                return False
            held[token] = now + lease
        return True

    def renew(self, name: str, token: str, lease: float) -> None:
        with self._lock:
            held = self._leases.get(name, {})
            if token in held:
                held[token] = time.monotonic() + lease

    def release(self, name: str, token: str) -> None:
        with self._lock:
            held = self._leases.get(name)
            if held is not None:
                held.pop(token, None)
                if not held:
                    del self._leases[name]


# Redis scripts. Times are Redis's own (TIME), in milliseconds, so API machines need no common
# clock. A window is a sorted set of event ids scored by time; a lease set scores tokens by expiry.
_NOW = "local t = redis.call('TIME') local now = t[1] * 1000 + math.floor(t[2] / 1000) "
HIT = (
    _NOW
    + """
local window = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then
  local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  return math.max(1, tonumber(oldest[2]) + window - now)
end
redis.call('ZADD', KEYS[1], now, ARGV[3])
redis.call('PEXPIRE', KEYS[1], window)
return 0
"""
)
BLOCKED = (
    _NOW
    + """
local limit, window, wait = tonumber(ARGV[1]), tonumber(ARGV[2]), 0
for _, key in ipairs(KEYS) do
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now - window)
  if redis.call('ZCARD', key) >= limit then
    local nth = redis.call('ZRANGE', key, -limit, -limit, 'WITHSCORES')
    wait = math.max(wait, tonumber(nth[2]) + window - now, 1)
  end
end
return wait
"""
)
ADD = (
    _NOW
    + """
for _, key in ipairs(KEYS) do
  redis.call('ZADD', key, now, ARGV[2])
  redis.call('PEXPIRE', key, tonumber(ARGV[1]))
end
return 0
"""
)
ACQUIRE = (
    _NOW
    + """
local lease = tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then return 0 end
redis.call('ZADD', KEYS[1], now + lease, ARGV[1])
redis.call('PEXPIRE', KEYS[1], lease)
return 1
"""
)
RENEW = (
    _NOW
    + """
local lease = tonumber(ARGV[2])
redis.call('ZADD', KEYS[1], 'XX', now + lease, ARGV[1])
redis.call('PEXPIRE', KEYS[1], lease)
return 0
"""
)


class RedisWindows:
    """Windows and leases in Redis, shared by every API process that uses the same database."""

    def __init__(
        self, client: Any, *, prefix: str = "slimformer:limits:", window: float = WINDOW_SECONDS
    ) -> None:
        self.client, self.prefix, self.window_ms = client, prefix, int(window * 1000)
        self._hit = client.register_script(HIT)
        self._blocked = client.register_script(BLOCKED)
        self._add = client.register_script(ADD)
        self._acquire = client.register_script(ACQUIRE)
        self._renew = client.register_script(RENEW)

    def _key(self, name: str) -> str:
        return self.prefix + name

    def hit(self, name: str, limit: int) -> float | None:
        wait = self._hit(keys=[self._key(name)], args=[limit, self.window_ms, uuid.uuid4().hex])
        return int(wait) / 1000 if int(wait) else None

    def blocked(self, names: list[str], limit: int) -> float | None:
        wait = self._blocked(keys=[self._key(n) for n in names], args=[limit, self.window_ms])
        return int(wait) / 1000 if int(wait) else None

    def add(self, names: list[str]) -> None:
        self._add(keys=[self._key(n) for n in names], args=[self.window_ms, uuid.uuid4().hex])

    def acquire(self, name: str, token: str, cap: int, lease: float) -> bool:
        got = self._acquire(keys=[self._key(name)], args=[token, cap, int(lease * 1000)])
        return bool(int(got))

    def renew(self, name: str, token: str, lease: float) -> None:
        self._renew(keys=[self._key(name)], args=[token, int(lease * 1000)])

    def release(self, name: str, token: str) -> None:
        self.client.zrem(self._key(name), token)


class Fallback:
    """Redis while it answers, this process's own windows while it does not."""

    RETRY_AFTER_SECONDS = 5.0  # after a failure, Redis is tried again this much later

    def __init__(self, primary: RedisWindows, secondary: MemoryWindows) -> None:
        self.primary, self.secondary = primary, secondary
        self._warned = 0.0
        self._down_until = 0.0

    def _call(self, method: str, *args: Any) -> Any:
        from redis.exceptions import RedisError

        if time.monotonic() >= self._down_until:
            try:
                return getattr(self.primary, method)(*args)
            except (RedisError, OSError) as err:
                # a Redis that times out would otherwise add its timeout to every request
                self._down_until = time.monotonic() + self.RETRY_AFTER_SECONDS
                if time.monotonic() - self._warned > 30:
                    self._warned = time.monotonic()
                    logger.warning(
                        "Redis is unreachable for the limits (%s); this API process "
                        "enforces them on its own until it answers",
                        type(err).__name__,
                    )
        return getattr(self.secondary, method)(*args)

    def hit(self, name: str, limit: int) -> float | None:
        return self._call("hit", name, limit)

    def blocked(self, names: list[str], limit: int) -> float | None:
        return self._call("blocked", names, limit)

    def add(self, names: list[str]) -> None:
        self._call("add", names)

    def acquire(self, name: str, token: str, cap: int, lease: float) -> bool:
        return self._call("acquire", name, token, cap, lease)

    def renew(self, name: str, token: str, lease: float) -> None:
        self._call("renew", name, token, lease)

    def release(self, name: str, token: str) -> None:
        self._call("release", name, token)


class KeyCache:
    """Keys this process checked recently, by a digest of the secret, each with the revocation
    generation (see ``JobStore.revoke_key``) it was checked under. A hit costs one read of the
    current generation instead of the key's row, its hash and the failed-login throttle; when the
    generation moved (a key was revoked anywhere), every entry checked before is dropped, so a
    revoked key is refused on the next request. ``ttl`` only bounds how long an entry is kept."""

    def __init__(self, ttl: float, max_entries: int = 10_000) -> None:
        self.ttl, self.max_entries = ttl, max_entries
        self.generation = 0  # the newest revocation generation this process has seen
        self._entries: OrderedDict[bytes, tuple[float, int, Any]] = OrderedDict()
        self._lock = threading.Lock()

    @staticmethod
    def digest(secret: str) -> bytes:
        return hashlib.sha256(secret.encode()).digest()

    def _see(self, generation: int) -> None:
        """Under the lock: a newer generation drops every entry (all were checked before it)."""
        if generation > self.generation:
            self.generation = generation
            self._entries.clear()

    def get(self, secret: str, generation: Callable[[], int]) -> Any | None:
        """The cached value, if any and still valid. ``generation`` (the store's current one) is
        called only when there is an entry to confirm."""
        if self.ttl <= 0:
            return None
        digest = self.digest(secret)
        with self._lock:
            entry = self._entries.get(digest)
            if entry is not None and entry[0] <= time.monotonic():
                del self._entries[digest]
                entry = None
        if entry is None:
            return None
        current = generation()
        with self._lock:
            self._see(current)
            if entry[1] != current:  # checked under an older generation (or a read raced one)
                if self._entries.get(digest) is entry:
                    del self._entries[digest]
                return None
        return entry[2]

    def put(self, secret: str, value: Any, generation: int) -> None:
        """Cache ``value``, checked in the same store snapshot as ``generation`` was read."""
        if self.ttl <= 0:
            return
        with self._lock:
            self._see(generation)
            if generation < self.generation:  # a revocation came since: do not trust it
                return
            self._entries[self.digest(secret)] = (time.monotonic() + self.ttl, generation, value)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)


class Limits:
    """The API's limits, one object per process (``app.state.limits``)."""

    def __init__(
        self,
        windows: Windows | Fallback | MemoryWindows,
        *,
        per_minute: int,
        failures_per_minute: int,
        streams_per_key: int,
        key_cache_seconds: float,
        shared: bool,
    ) -> None:
        self.windows = windows
        self.per_minute, self.failures_per_minute = per_minute, failures_per_minute
        self.streams_per_key = streams_per_key
        self.keys = KeyCache(key_cache_seconds)
        self.shared = shared  # True when the counters are in Redis

    # -- requests per key
    def hit(self, owner: str) -> float | None:
        """Count a request of ``owner``: None when allowed, else the seconds to wait."""
        return self.windows.hit(f"rate:{owner}", self.per_minute)

    # -- failed authentication
    @staticmethod
    def _subjects(key_id: str | None, address: str | None) -> list[str]:
        subjects = [f"fail:addr:{address[:64]}"] if address else []
        if key_id:
            subjects.append(f"fail:key:{key_id[:64]}")
        return subjects

    def login_blocked(self, key_id: str | None, address: str | None) -> float | None:
        """Seconds to wait when the key id or the address failed too often lately, else None."""
        subjects = self._subjects(key_id, address)
        return self.windows.blocked(subjects, self.failures_per_minute) if subjects else None

    def login_waits(
        self, key_id: str | None, address: str | None
    ) -> tuple[float | None, float | None]:
        """``(key id wait, address wait)``: the seconds until the key id, and the address, are
        under their failure budgets again (None: under it now). One check while neither is over
        (the usual case), a second one to tell them apart when one is (the key id's wait then
        comes alone: the caller refuses without looking further)."""
        wait = self.login_blocked(key_id, address)
        if wait is None:
            return None, None
        if not key_id:
            return None, wait
        if not address:
            return wait, None
        key_wait = self.login_blocked(key_id, None)
        return (key_wait, None) if key_wait is not None else (None, wait)

    def login_failed(self, key_id: str | None, address: str | None) -> None:
        subjects = self._subjects(key_id, address)
        if subjects:
            self.windows.add(subjects)

    # -- event streams
    def open_stream(self, owner: str) -> str | None:
        """A lease token for one more event stream of ``owner``, or None at the cap."""
        token = uuid.uuid4().hex
        ok = self.windows.acquire(
            f"streams:{owner}", token, self.streams_per_key, STREAM_LEASE_SECONDS
        )
        return token if ok else None

    def renew_stream(self, owner: str, token: str) -> None:
        self.windows.renew(f"streams:{owner}", token, STREAM_LEASE_SECONDS)

    def close_stream(self, owner: str, token: str) -> None:
        self.windows.release(f"streams:{owner}", token)


def make_limits(settings: Any, *, redis_factory: Callable[[str], Any] | None = None) -> Limits:
    """Redis-backed limits when ``settings.redis_url`` is set, else in-process ones."""
    memory = MemoryWindows()
    windows: Fallback | MemoryWindows = memory
    if settings.redis_url:
        if redis_factory is None:
            import redis

            def redis_factory(url: str) -> Any:
                # short timeouts: a hung Redis must not hold requests; they fall back instead
                return redis.Redis.from_url(
                    url, socket_timeout=0.5, socket_connect_timeout=0.5, health_check_interval=30
                )

        windows = Fallback(RedisWindows(redis_factory(settings.redis_url)), memory)
    return Limits(
        windows,
        per_minute=settings.rate_limit_per_minute,
        failures_per_minute=settings.auth_failures_per_minute,
        streams_per_key=settings.max_event_streams_per_key,
        key_cache_seconds=settings.auth_cache_seconds,
        shared=settings.redis_url is not None,
    )
