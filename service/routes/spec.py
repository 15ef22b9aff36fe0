"""The facts of the job spec that clients offer (the dashboard's form and timeline): one read-only
route, made from ``slimformer.spec`` so that no client keeps its own copy."""

from __future__ import annotations

from functools import cache

from fastapi import APIRouter

from service.auth import CallerDep
from service.routes.common import errors
from service.schemas import SpecFacts
from slimformer.spec import STAGE_TABLE, UPLOAD_FORMATS, spec_fields

router = APIRouter()


@cache
def spec_facts() -> SpecFacts:
    return SpecFacts(
        stages=[stage.model_dump() for stage in STAGE_TABLE],
        upload_formats=[
            {"suffix": suffix, "format": reader} for suffix, reader in UPLOAD_FORMATS.items()
        ],
        fields=spec_fields(),
    )


@router.get(
    "/v1/spec/facts",
    response_model=SpecFacts,
    tags=["spec"],
    responses=errors(401, 429),
    summary="The job spec's stages, accepted data files, and each field's choices and range",
    description="Read-only and the same for every key: the stage table (name, weight, what it "
    "does, which methods run it), the upload formats, and every spec field by its dotted path "
    "with its type, choices (`Literal` types), range (`ge`, `gt`, `le`, `lt`), default and "
    "description. The dashboard builds its form and its stage timeline from it.",
)
async def facts(caller: CallerDep) -> SpecFacts:
    return spec_facts()
