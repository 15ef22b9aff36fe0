"""Publishing an artifact folder to a model repo on the Hub: :func:`publish_folder`.

The write token is passed to these requests only: it is never logged, stored or written.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from slimformer.hub.policy import HubPolicy
from slimformer.hub.retries import with_retries

logger = logging.getLogger(__name__)


@dataclass
class PublishResult:
    repo_url: str
    commit_sha: str
    commit_url: str
    pr_url: str | None
    skipped: bool  # nothing changed since the last commit: no new commit was made

    def to_dict(self) -> dict:
        return {
            "repo_url": self.repo_url,
            "commit_sha": self.commit_sha,
            "commit_url": self.commit_url,
            "pr_url": self.pr_url,
        }


def publish_folder(
    folder: str | Path,
    repo_id: str,
    *,
    token: str,
    private: bool = True,
    create_pr: bool = False,
    job_id: str | None = None,
    policy: HubPolicy | None = None,
) -> PublishResult:
    """Upload an artifact folder to a model repo (created private unless told otherwise).

    Files whose content the repo already holds are not sent again; when nothing changed (a retried
    publish of the same job), no commit is made and the current head is returned with
    ``skipped=True``.

    Args:
        folder: the artifact folder.
        repo_id: ``org/name``; created when missing.
        token: a write token; used for these requests only.
        private: visibility of a newly created repo (an existing repo keeps its own).
        create_pr: open a pull request instead of committing to ``main``.
        job_id: named in the commit message.

    Raises:
        Unauthorized: no token, an invalid one, or one without write access to the namespace.
        HubUnavailable: network errors or 5xx answers outlasted the retries.
        HubAccessError: any other refusal.
    """
    from huggingface_hub import HfApi

    policy = policy or HubPolicy()
    api = HfApi(endpoint=policy.resolved_endpoint(), library_name="slimformer")
    where = {"repo_id": repo_id, "revision": None, "token": token}
    repo_url = with_retries(
        lambda: api.create_repo(repo_id, token=token, private=private, exist_ok=True),
        policy,
        "create",
        **where,
    )
    head = with_retries(lambda: api.model_info(repo_id, token=token).sha, policy, "read", **where)
    message = (
        f"slimformer job {job_id}: compressed model" if job_id else "slimformer: compressed model"
    )
    info = with_retries(
        lambda: api.upload_folder(
            folder_path=str(folder),
            repo_id=repo_id,
            token=token,
            commit_message=message,
            create_pr=create_pr,
        ),
        policy,
        "upload to",
        **where,
    )
    skipped = info.oid == head and not info.pr_url
    logger.info(
        "published %s to %s at %s%s",
        folder,
        repo_id,
        info.oid,
        " (unchanged, no new commit)" if skipped else "",
    )
    return PublishResult(
        repo_url=str(repo_url),
        commit_sha=info.oid,
        commit_url=info.commit_url,
        pr_url=info.pr_url,
        skipped=skipped,
    )
