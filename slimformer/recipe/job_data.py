"""A job's rows: where they come from (a local file, an upload or a Hub dataset), the job's seeded
order, the held-out evaluation rows, and the calibration sample.

``seeded_order`` and ``calibration_sample`` are shared with the benchmarks, so a benchmark that
draws its rows here gets a user's rows.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from slimformer.data import TextData, load_hub_dataset, load_text_file
from slimformer.errors import InvalidSpec
from slimformer.hub import HubPolicy
from slimformer.spec import JobSpec


@dataclass
class JobData:
    train: TextData
    evaluation: TextData
    description: dict  # the report's ``data``


def seeded_order(n: int, seed: int) -> list[int]:
    """The job's order of ``n`` training rows: ``random.Random(seed)`` shuffles ``range(n)``.

    Training, the held-out slice of distillation and the calibration rows of pruning all read the
    training rows in this order, so a benchmark that draws its rows here gets a user's rows.
    """
    order = list(range(n))
    random.Random(seed).shuffle(order)
    return order


def calibration_sample(train: TextData, samples: int) -> TextData:
    """The rows importance is scored on: the first ``samples`` of ``train`` in the job's order.

    ``train`` is the job's training rows as :func:`seeded_order` arranged them (and without the
    held-out evaluation fifth when no evaluation data was given).
    """
    return train.head(samples)


def _read_sources(
    spec: JobSpec,
    columns: dict,
    resolve_upload: Callable[[str], Path] | None,
    token: str | None,
    policy: HubPolicy | None,
    packed: bool,
) -> tuple[TextData, TextData | None, str, str | None]:
    """``(train, evaluation or None, source, eval_source)`` from the spec's one data source."""
    ds = spec.dataset
    local_files = policy.allow_local_files if policy is not None else True
    if (ds.path or ds.eval_path) and not local_files:
        raise InvalidSpec(
            "local data files are not allowed here; use an upload or a Hub dataset",
            details={"field": "dataset.path"},
        )
    if ds.path:
        train = load_text_file(ds.path, **columns)
        evaluation = load_text_file(ds.eval_path, **columns) if ds.eval_path else None
        return (
            train,
            evaluation,
            Path(ds.path).name,
            Path(ds.eval_path).name if ds.eval_path else None,
        )
    if ds.upload_id:
        if resolve_upload is None:
            raise InvalidSpec("dataset.upload_id needs the service's upload store")
        train = load_text_file(resolve_upload(ds.upload_id), **columns)
        evaluation = (
            load_text_file(resolve_upload(ds.eval_upload_id), **columns)
            if ds.eval_upload_id
            else None
        )
        eval_source = f"upload {ds.eval_upload_id}" if ds.eval_upload_id else None
        return train, evaluation, f"upload {ds.upload_id}", eval_source

    def split(name: str, max_samples: int | None) -> TextData:
        return load_hub_dataset(
            ds.hub_id,
            config=ds.config,
            split=name,
            token=token,
            max_samples=max_samples,
            seed=spec.seed,
            local_files=local_files,
            policy=policy,
            **columns,
        )

    train = split(ds.split, ds.max_samples)
    # packed text (causal LMs) is cut by windows later, in the split's own order
    eval_rows = None if packed else spec.evaluation.rows(None)
    evaluation = split(ds.eval_split, eval_rows) if ds.eval_split else None
    eval_source = f"{ds.hub_id} ({ds.eval_split})" if ds.eval_split else None
    return train, evaluation, f"{ds.hub_id} ({ds.split})", eval_source


def read_job_data(
    spec: JobSpec,
    use_labels: bool,
    resolve_upload: Callable[[str], Path] | None,
    token: str | None = None,
    policy: HubPolicy | None = None,
    packed: bool = False,
) -> JobData:
    """The job's training rows in its seeded order and its evaluation rows (given, or a held-out
    fifth of the training rows, never scored or trained on)."""
    ds = spec.dataset
    columns = dict(
        text_column=ds.text_column,
        text_pair_column=ds.text_pair_column,
        label_column=ds.label_column,
        labels=use_labels,
    )
    train, evaluation, source, eval_source = _read_sources(
        spec, columns, resolve_upload, token, policy, packed
    )
    order = seeded_order(len(train), spec.seed)
    if ds.max_samples:
        order = order[: ds.max_samples]
    train = train.subset(order)
    if evaluation is None:
        cut = max(1, len(train) // 5)
        evaluation, train = (
            train.subset(list(range(cut))),
            train.subset(list(range(cut, len(train)))),
        )
        eval_source = f"{source} (held-out {cut} rows)"
    if not packed:
        evaluation = evaluation.head(spec.evaluation.rows(None))
    return JobData(
        train,
        evaluation,
        {
            "source": source,
            "rows": len(train),
            "eval_source": eval_source,
            "eval_rows": len(evaluation),
            "eval_split": ds.eval_split if ds.hub_id else None,
            "eval_dataset_type": ds.hub_id or "custom",
            "text_column": train.text_column,
            "text_pair_column": train.text_pair_column,
            "label_column": train.label_column if use_labels else None,
        },
    )


def unused_label_column(spec: JobSpec, task: str, data: JobData) -> str | None:
    """Why a label column the user named is not used for ``task`` (None when it is used)."""
    column = spec.dataset.label_column
    if not column:
        return None
    if task == "text-generation":
        return (
            f"the label column {column!r} is not used: a causal LM is scored, pruned and "
            "evaluated on the text alone (column "
            f"{data.description['text_column']!r}), no labels"
        )
    if task == "feature-extraction" and data.evaluation.pairs is None:
        return (
            f"the label column {column!r} is not used: an embedding model uses labels only as "
            "similarity scores of sentence pairs (a text pair column); importance comes from a "
            "label-free loss against the original model"
        )
    return None
