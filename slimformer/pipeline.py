"""The recipe: run a job spec end to end.

``run(spec, workdir, on_progress, should_cancel)`` runs the stages of the stage table
(``slimformer.spec.STAGE_TABLE``) that the job needs, each a module of :mod:`slimformer.recipe`:
pull -> score -> prune and/or distil -> evaluate -> write the folder and card -> publish. It
reports ``on_progress(stage, fraction, message)`` and checks ``should_cancel()`` between steps.
The artifact folder appears only when everything succeeded: a failed or cancelled run leaves no
folder that looks complete. With ``spec.publish`` set, the finished folder is then uploaded to the
Hub; the token is used for the Hub calls only and never written anywhere.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from slimformer.hub import HubPolicy
from slimformer.models import set_seed
from slimformer.recipe import (
    distilling,
    downstream,
    evaluating,
    inputs,
    pruning,
    publishing,
    scoring,
    serving,
    writing,
)
from slimformer.recipe.job import Job, ProgressFn, Stage, _noop
from slimformer.recipe.writing import REPORT_FILE, SCHEMA_FILE
from slimformer.spec import STAGES, JobSpec, stages_for

# what each stage of the table runs; tests/test_pipeline.py checks that the two agree
STEPS: dict[str, Stage] = {
    "downloading": inputs.run,
    "scoring": scoring.run,
    "pruning": pruning.run,
    "distilling": distilling.run,
    "evaluating": evaluating.run,
    "writing_card": writing.run,
    "publishing": publishing.run,
}
# refusals that need no work, in the order a user meets them
CHECKS: tuple[Callable[[Job], None], ...] = (
    writing.check,
    publishing.check,
    serving.check,
    inputs.check,
    downstream.check,  # reads lm-eval's task index: seconds
)


@dataclass
class RunResult:
    folder: Path
    report: dict
    published: dict | None = None  # repo_url, commit_sha, commit_url, pr_url with spec.publish


def run(
    spec: JobSpec,
    workdir: str | Path,
    *,
    on_progress: ProgressFn = _noop,
    should_cancel: Callable[[], bool] = lambda: False,
    out_dir: str | Path | None = None,
    overwrite: bool = False,
    token: str | None = None,
    resolve_upload: Callable[[str], Path] | None = None,
    job_id: str | None = None,
    hub_policy: HubPolicy | None = None,
) -> RunResult:
    """Run ``spec``; write the artifact folder (default ``workdir/model``) and return it with the
    report.

    Raises:
        InvalidSpec, DatasetError, ModelLoadError, UnsupportedArchitecture: bad input, before any
            heavy work where it can be known early.
        HubAccessError (and its subclasses): the model could not be downloaded or the result not
            published; ``err.transient`` says whether trying again later may succeed.
        Cancelled: ``should_cancel()`` returned true; nothing is left in the output folder's place.

    ``hub_policy`` governs downloads (pickle, remote code, size, cache, endpoint, retries) and
    publishing.
    ``token`` is the user's Hub token: passed to the Hub calls, never logged or written.
    """
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    job = Job(
        spec,
        workdir,
        Path(out_dir) if out_dir else workdir / "model",
        overwrite=overwrite,
        token=token,
        resolve_upload=resolve_upload,
        job_id=job_id,
        hub_policy=hub_policy,
        on_progress=on_progress,
        should_cancel=should_cancel,
    )
    for check in CHECKS:
        check(job)
    set_seed(spec.seed)
    job.started = time.perf_counter()
    for name in stages_for(spec):
        STEPS[name](job)
    return RunResult(folder=job.out, report=job.report, published=job.published)


__all__ = ["run", "RunResult", "STAGES", "STEPS", "REPORT_FILE", "SCHEMA_FILE", "set_seed"]
