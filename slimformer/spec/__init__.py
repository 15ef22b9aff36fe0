"""The job spec: what a user asks slimformer to do. The service's API accepts exactly this model.

Unknown fields are rejected and every field has a default or a clear error. Local paths
(``dataset.path``, a local folder as ``model.id``) are for the command line only: validate with
``JobSpec.model_validate(data, context={"local_files": False})`` to refuse them (the service does).

Torch-free (the service imports it), one module per part, all re-exported here:

- ``base``: the tasks, the data files read, Hub ids, the strict base of every part;
- ``stages``: the stage table (``STAGE_TABLE``) and a job's overall progress;
- ``inputs``: ``model`` and ``dataset``;
- ``prune``: ``prune`` and what its null fields mean (``PRUNE_DEFAULTS``, ``CAUSAL_LM_DEFAULTS``);
- ``distill``: ``distill`` and its student;
- ``evaluation``: ``evaluation``;
- ``export``: ``export`` and ``publish``;
- ``job``: :class:`JobSpec`, the rules that join its parts, and what a spec implies (files, the
  default layout, its stages, its JSON schema);
- ``facts``: each leaf field as the command line's flags and the dashboard's form read it.
"""

from slimformer.spec.base import (
    HUB_ID,
    TASKS,
    UPLOAD_FORMATS,
    Task,
    hub_id_or_local,
    is_hub_id,
    upload_suffixes,
)
from slimformer.spec.distill import DistillSpec, StudentSpec
from slimformer.spec.evaluation import EVAL_ROWS, EVAL_WINDOWS, EvaluationSpec
from slimformer.spec.export import SERVING_TARGETS, ExportSpec, PublishSpec
from slimformer.spec.facts import FieldFacts, check_field, spec_fields
from slimformer.spec.inputs import DatasetSpec, ModelSpec
from slimformer.spec.job import JobSpec, default_layout, job_spec_schema, stages_for
from slimformer.spec.prune import CAUSAL_LM_DEFAULTS, PRUNE_DEFAULTS, PruneSpec
from slimformer.spec.stages import (
    DISTILS,
    PRUNES,
    STAGE_TABLE,
    STAGE_WEIGHTS,
    STAGES,
    Method,
    StageInfo,
    overall_progress,
)

__all__ = [
    "CAUSAL_LM_DEFAULTS",
    "DISTILS",
    "EVAL_ROWS",
    "EVAL_WINDOWS",
    "HUB_ID",
    "PRUNES",
    "PRUNE_DEFAULTS",
    "SERVING_TARGETS",
    "STAGES",
    "STAGE_TABLE",
    "STAGE_WEIGHTS",
    "TASKS",
    "UPLOAD_FORMATS",
    "DatasetSpec",
    "DistillSpec",
    "EvaluationSpec",
    "ExportSpec",
    "FieldFacts",
    "JobSpec",
    "Method",
    "ModelSpec",
    "PruneSpec",
    "PublishSpec",
    "StageInfo",
    "StudentSpec",
    "Task",
    "check_field",
    "default_layout",
    "hub_id_or_local",
    "is_hub_id",
    "job_spec_schema",
    "overall_progress",
    "spec_fields",
    "stages_for",
    "upload_suffixes",
]
