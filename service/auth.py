"""API keys as bearer tokens, per-key rate limits, and who may see what.

Auth is on as soon as a key was ever created (``SLIMFORMER_AUTH=auto``; revoking keys never turns it
off), always with ``SLIMFORMER_AUTH=on`` or in production mode. While it is off (no key yet, or
``SLIMFORMER_AUTH=off``) every request acts as the local owner and the API listens on loopback only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from service.errors import ApiError
from service.limits import Limits
from service.store import LOCAL_OWNER, JobStore


@dataclass(frozen=True)
class Caller:
    owner: str  # the key id that owns what this caller creates
    name: str
    admin: bool

    @property
    def scope(self) -> str | None:
        """The owner filter for reads: None (everything) for admins."""
        return None if self.admin else self.owner


class AuthState:
    """Whether auth is on, from ``SLIMFORMER_AUTH`` (``setting``) and the store.

    ``on``, or production mode (``always``): always. ``off``: never, the operator's explicit choice
    (Settings refuses it in production mode and on an address other than loopback). ``auto``: on
    as soon as any key was ever created, revoked ones included, and from then on for the life of
    the process: revoking keys never turns auth off. While off it asks the store on each request,
    so the first key turns auth on at once.
    """

    def __init__(self, store: JobStore, *, always: bool = False, setting: str = "auto") -> None:
        if setting not in ("auto", "on", "off"):
            raise ValueError(f"SLIMFORMER_AUTH must be auto, on or off, not {setting!r}")
        if always and setting == "off":
            raise ValueError("SLIMFORMER_AUTH=off is refused in production mode")
        self.store, self.setting = store, setting
        self._on = always or setting == "on"

    @property
    def enabled(self) -> bool:
        if self._on:
            return True
        if self.setting == "off":
            return False
        if self.store.any_key_created():
            self._on = True  # for good: nothing that happens to the keys turns it off again
        return self._on


def current_caller(request: Request) -> Caller:
    state = request.app.state
    header = request.headers.get("authorization", "")
    if not state.auth.enabled:
        caller = Caller(LOCAL_OWNER, "local", admin=True)
    else:
        scheme, _, secret = header.partition(" ")
        if scheme.lower() != "bearer" or not secret:
            raise ApiError(
                401,
                "unauthorized",
                "missing API key: send `Authorization: Bearer <key>`",
                headers={"WWW-Authenticate": "Bearer"},
            )
        secret = secret.strip()
        # a cached key costs one read of the revocation generation, so a key revoked anywhere
        # is refused here on the next request
        cached = state.limits.keys.get(secret, state.store.revocation_generation)
        caller = cached or authenticate(request, secret)
    wait = state.limits.hit(caller.owner)
    if wait is not None:
        raise too_many(f"too many requests for this key; retry in {math.ceil(wait)} s", wait)
    return caller


def too_many(message: str, wait: float, code: str = "rate_limited") -> ApiError:
    """The 429 error, with ``Retry-After`` in whole seconds (rounded up)."""
    return ApiError(
        429,
        code,
        message,
        {"retry_after_seconds": round(wait, 1)},
        headers={"Retry-After": str(math.ceil(wait))},
    )


def too_many_failures(wait: float) -> ApiError:
    return too_many(
        f"too many failed authentications; retry in {math.ceil(wait)} s",
        wait,
        "too_many_auth_failures",
    )


def authenticate(request: Request, secret: str) -> Caller:
    """Look the key up in the store and cache it; a failure counts against its key id and the
    client address.

    A key id that failed too often lately gets 429 without a query. An address that did is still
    allowed its valid keys (tenants behind one NAT must not lock each other out): a well-formed
    key from it costs the one primary-key read a key check always costs, and a bad one gets the
    same 429 as before the look-up, so the answer says nothing more than a 200 would. A malformed
    key from it gets 429 without a query.
    """
    state = request.app.state
    limits: Limits = state.limits
    parts = secret.split("_")
    key_id = parts[1] if len(parts) >= 3 and parts[0] == "sf" and parts[1] else None
    address = request.client.host if request.client else None
    key_wait, address_wait = limits.login_waits(key_id, address)
    if key_wait is not None:
        raise too_many_failures(key_wait)
    if address_wait is not None and key_id is None:
        raise too_many_failures(address_wait)
    key, generation = state.store.check_key(secret)
    if key is None:
        limits.login_failed(key_id, address)
        if address_wait is not None:
            raise too_many_failures(address_wait)
        raise ApiError(
            401,
            "unauthorized",
            "invalid or revoked API key",
            headers={"WWW-Authenticate": "Bearer"},
        )
    caller = Caller(key.id, key.name, key.admin)
    limits.keys.put(secret, caller, generation or 0)
    return caller


CallerDep = Annotated[Caller, Depends(current_caller)]
