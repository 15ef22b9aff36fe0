"""The v1 routes, one module per resource, combined into the one ``router`` the app includes."""

from __future__ import annotations

from fastapi import APIRouter

from service.routes import artifacts, datasets, health, jobs, spec

router = APIRouter()
# the order is the OpenAPI document's order of operations
for module in (jobs, artifacts, datasets, spec, health):
    router.include_router(module.router)

__all__ = ["router"]
