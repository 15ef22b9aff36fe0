"""Request and response models of the API (v1). The job spec itself is
``slimformer.spec.JobSpec``."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr

from slimformer.spec import STAGES, FieldFacts, JobSpec, Method

Status = Literal["queued", "running", "succeeded", "failed", "cancelled"]

SPEC_EXAMPLE = {
    "model": {"id": "sentence-transformers/all-MiniLM-L6-v2"},
    "dataset": {
        "hub_id": "glue",
        "config": "sst2",
        "split": "train",
        "eval_split": "validation",
        "text_column": "sentence",
        "label_column": "label",
        "max_samples": 2000,
    },
    "method": "prune",
    "prune": {"heads": 0.5, "ffn": 0.3},
    "publish": {"repo_id": "my-org/minilm-pruned", "private": True},
}


class JobCreate(JobSpec):
    """A job spec, plus the Hub token used to pull private models and publish (write-only: \
never returned)."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [SPEC_EXAMPLE]})

    hub_token: SecretStr | None = Field(
        None,
        description="Hugging Face token for private/gated models and publishing. Stored "
        "encrypted until the job ends, then wiped; never returned, never logged.",
        json_schema_extra={"writeOnly": True},
    )


class ErrorDetail(BaseModel):
    code: str = Field(..., examples=["invalid_spec"])
    message: str = Field(
        ..., examples=["the job spec is invalid: prune.heads: Input should be less than 1"]
    )
    details: dict[str, Any] = Field(default_factory=dict)


class ErrorBody(BaseModel):
    error: ErrorDetail


class JobError(BaseModel):
    code: str
    message: str
    details: dict[str, Any] = Field(default_factory=dict)


class JobLinks(BaseModel):
    self: str
    events: str
    cancel: str
    artifacts: str
    download: str
    card: str


class ComparisonRow(BaseModel):
    """One row of the evaluation card's side-by-side table, formatted as the card formats it."""

    name: str = Field(..., description="What is compared: a metric, a size or a latency.")
    original: str = Field(..., description="The original model's value, formatted.")
    compressed: str = Field(..., description="The compressed model's value, formatted.")
    change: str = Field(
        ...,
        description="The change as the card writes it: percentage points for fractions, a "
        "factor for perplexity and speed (`×1.38`), a signed percentage for sizes; empty when "
        "there is none.",
    )
    primary: bool = Field(False, description="Whether this is the job's primary metric.")


class JobView(BaseModel):
    id: str
    status: Status
    stage: str | None = Field(None, description=", ".join((*STAGES, "done")))
    progress: float = Field(..., ge=0, le=1)
    eta_seconds: float | None = None
    message: str | None = None
    attempts: int
    max_attempts: int
    queue: str
    created_at: str
    started_at: str | None = None
    finished_at: str | None = None
    stage_seconds: dict[str, float] = Field(default_factory=dict)
    stages: list[str] = Field(
        default_factory=list,
        description="The stages this job runs, in order (from its method and whether it "
        "publishes; `GET /v1/spec/facts` says what each does).",
    )
    spec: dict[str, Any]
    metrics: dict[str, Any] | None = Field(
        None, description="Primary metric before/after, ratios, agreement (raw numbers)."
    )
    table: list[ComparisonRow] | None = Field(
        None,
        description="A finished job's original and compressed model side by side: the "
        "evaluation card's table, rows formatted exactly as the card formats them.",
    )
    published: dict[str, Any] | None = Field(
        None, description="Hub repo URL and commit of the published model."
    )
    error: JobError | None = None
    links: JobLinks


class JobList(BaseModel):
    items: list[JobView]
    next_cursor: str | None = Field(
        None, description="Pass as `cursor` to get the next page; null on the last page."
    )


class ArtifactFile(BaseModel):
    path: str
    size: int
    sha256: str | None = Field(None, description="SHA-256 of the file as the worker wrote it.")
    url: str


class ArtifactList(BaseModel):
    job_id: str
    files: list[ArtifactFile]


class UploadView(BaseModel):
    upload_id: str
    filename: str
    size: int
    rows: int
    columns: list[str]
    created_at: str


class DatasetView(BaseModel):
    """An upload as its owner sees it (never where the server keeps the file)."""

    id: str = Field(..., description="The upload id: `dataset.upload_id` in a job spec.")
    filename: str = Field(..., description="The name it was stored under (made safe).")
    format: str = Field(..., description="From the name: csv, tsv, json, parquet or text.")
    bytes: int = Field(..., ge=0, description="The size of the uploaded file.")
    rows: int = Field(..., ge=0)
    columns: list[str]
    created_at: str
    expires_at: str | None = Field(
        None,
        description="When `SLIMFORMER_UPLOAD_RETENTION_DAYS` deletes it; null: kept until deleted.",
    )


class DatasetList(BaseModel):
    items: list[DatasetView]
    next_cursor: str | None = Field(
        None, description="Pass as `cursor` to get the next page; null on the last page."
    )


class Me(BaseModel):
    key_id: str = Field(..., description="`local` while auth is off.")
    name: str
    admin: bool
    auth_enabled: bool


class Health(BaseModel):
    status: Literal["ok", "unavailable"]
    checks: dict[str, str] = Field(default_factory=dict)


class StageFacts(BaseModel):
    """One stage of a job, as ``slimformer.spec.STAGE_TABLE`` has it."""

    name: str = Field(..., description="A job's `stage` while it runs this one.")
    weight: float = Field(
        ...,
        description="Its share of the progress bar, relative: only the stages a job runs count.",
    )
    does: str = Field(..., description="What the stage does.")
    methods: list[Method] = Field(..., description="The methods whose jobs run it.")
    when_publishing: bool = Field(..., description="Run only by jobs that publish.")


class UploadFormat(BaseModel):
    suffix: str = Field(..., description="A file name's suffix, e.g. `.csv`.", examples=[".csv"])
    format: str = Field(
        ..., description="How it is read: the `format` of the upload.", examples=["csv"]
    )


class SpecFacts(BaseModel):
    """What a client needs to offer the job spec's choices without a copy of them: the stages,
    the data files accepted and every field's type, choices, range and default (the same facts
    the JSON schema of `POST /v1/jobs` holds, in the shape a form reads)."""

    stages: list[StageFacts] = Field(..., description="Every stage in the order jobs run them.")
    upload_formats: list[UploadFormat] = Field(
        ..., description="The files `POST /v1/datasets` and `dataset.path` accept."
    )
    fields: dict[str, FieldFacts] = Field(
        ..., description="Every field of the job spec by its dotted path, e.g. `prune.heads`."
    )
