"""Stage ``publishing``: upload the finished folder to the Hub with the user's token. A failure
here leaves the folder in place for a retry."""

from __future__ import annotations

import time

from slimformer.errors import Unauthorized
from slimformer.hub import publish_folder
from slimformer.recipe.job import Job


def check(job: Job) -> None:
    """Refuse, before any work, a job that publishes without a token."""
    target = job.spec.publish
    if target is not None and not job.token:
        raise Unauthorized(
            f"publishing to {target.repo_id} needs a Hub token with write access",
            details={"repo_id": target.repo_id},
        )


def run(job: Job) -> dict:
    target = job.spec.publish
    job.stage("publishing", 0.0, f"uploading to {target.repo_id}")
    t0 = time.perf_counter()
    result = publish_folder(
        job.out,
        target.repo_id,
        token=job.token,
        private=target.private,
        create_pr=target.create_pr,
        job_id=job.job_id,
        policy=job.hub_policy,
    )
    job.published = result.to_dict()
    job.timed("publishing", t0)
    job.on_progress(
        "publishing",
        1.0,
        f"published {result.commit_url}" + (" (unchanged)" if result.skipped else ""),
    )
    return job.published
