"""What a job reads: the model to compress (``model``) and its data (``dataset``)."""

from __future__ import annotations

from pydantic import Field, ValidationInfo, field_validator, model_validator

from slimformer.spec.base import (
    Task,
    _local_allowed,
    _Strict,
    hub_id_or_local,
    is_hub_id,
    upload_suffixes,
)


class ModelSpec(_Strict):
    """The model to compress."""

    id: str = Field(
        ...,
        min_length=1,
        description="Hub model id (`org/name`), or a local folder on the command line.",
        examples=["sentence-transformers/all-MiniLM-L6-v2"],
    )
    revision: str = Field(
        "main", min_length=1, description="Branch, tag or commit of the Hub repo."
    )
    task: Task | None = Field(
        None, description="Inferred from the checkpoint's architecture when null."
    )
    base_model: str | None = Field(
        None,
        description="Command line only: the Hub id a local model folder came from, for the "
        "card's `base_model` when the folder does not tell (a Hugging Face cache snapshot and a "
        "config's `_name_or_path` do).",
        examples=["HuggingFaceTB/SmolLM2-135M-Instruct"],
    )
    allow_new_head: bool = Field(
        False,
        description="Accept a checkpoint without a head for the task: the head is then new "
        "and randomly initialised (the card says so). Refused when false.",
    )

    @field_validator("id")
    @classmethod
    def _id_shape(cls, value: str, info: ValidationInfo) -> str:
        return hub_id_or_local(value, info, "model")

    @field_validator("base_model")
    @classmethod
    def _base_model_shape(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None:
            return None
        if not is_hub_id(value):
            raise ValueError(f"{value!r} is not a Hub model id (expected 'name' or 'org/name')")
        if not _local_allowed(info):
            raise ValueError(
                "base_model names the Hub origin of a local model folder (command "
                "line only); a Hub model is its own base"
            )
        return value

    @field_validator("revision")
    @classmethod
    def _revision_shape(cls, value: str) -> str:
        # a branch, tag or commit; never something a cache or a file system could read as a path
        parts = value.split("/")
        if (
            len(value) > 255
            or value.startswith("/")
            or "\\" in value
            or any(p in ("", ".", "..") for p in parts)
            or not value.isprintable()
            or any(c.isspace() for c in value)
        ):
            raise ValueError(f"{value!r} is not a branch, tag or commit name")
        return value


class DatasetSpec(_Strict):
    """Where the calibration / training data and the evaluation data come from: one of three \
sources."""

    hub_id: str | None = Field(
        None,
        description="Hub dataset id, read with datasets.load_dataset.",
        examples=["stanfordnlp/sst2"],
    )
    config: str | None = Field(None, description="Dataset configuration (Hub datasets).")
    split: str = Field("train", description="Split used for scoring and training (Hub datasets).")
    eval_split: str | None = Field(
        "validation", description="Split used for evaluation (Hub datasets)."
    )
    upload_id: str | None = Field(None, description="An upload from POST /v1/datasets.")
    eval_upload_id: str | None = Field(None, description="An upload used for evaluation.")
    path: str | None = Field(
        None, description=f"A local data file, {upload_suffixes()} (command line only)."
    )
    eval_path: str | None = Field(None, description="A local evaluation file (command line only).")
    text_column: str | None = Field(
        None, description="Text column; guessed (text, sentence, ...) when null."
    )
    text_pair_column: str | None = Field(None, description="Second text of sentence pairs.")
    label_column: str | None = Field(
        None, description="Labels; 'label' is used when present and this is null."
    )
    max_samples: int | None = Field(None, ge=1, description="Use at most this many training rows.")

    @field_validator("hub_id")
    @classmethod
    def _hub_id_shape(cls, value: str | None, info: ValidationInfo) -> str | None:
        return None if value is None else hub_id_or_local(value, info, "dataset")

    @model_validator(mode="after")
    def _one_source(self, info: ValidationInfo) -> DatasetSpec:
        sources = [name for name in ("hub_id", "upload_id", "path") if getattr(self, name)]
        if len(sources) != 1:
            raise ValueError(
                "give exactly one data source: hub_id, upload_id or path"
                + (f" (got {', '.join(sources)})" if sources else "")
            )
        if self.eval_upload_id and not self.upload_id:
            raise ValueError("eval_upload_id goes with upload_id")
        if self.eval_path and not self.path:
            raise ValueError("eval_path goes with path")
        if (self.path or self.eval_path) and not _local_allowed(info):
            raise ValueError(
                "local file paths are accepted on the command line only; upload the file to "
                "POST /v1/datasets and use upload_id"
            )
        return self
