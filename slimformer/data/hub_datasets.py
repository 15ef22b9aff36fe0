"""Hub datasets (and local dataset folders) read with ``datasets.load_dataset``.

A Hub dataset is read only after the Hub said, for the job's token, that it may be; then at the
commit the Hub named, with a ``datasets`` cache of the call's own that is deleted afterwards
(see :func:`load_hub_dataset`).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from slimformer.data.columns import table_to_text_data
from slimformer.data.text_data import TextData
from slimformer.errors import DatasetError
from slimformer.spec import is_hub_id

if TYPE_CHECKING:
    from slimformer.hub.policy import HubPolicy

logger = logging.getLogger(__name__)

STREAM_ABOVE_BYTES = 1 << 30  # Hub datasets larger than this are streamed
STREAMING_ROW_CAP = 100_000  # rows read from a streamed dataset when no max_samples is given


def load_hub_dataset(
    dataset_id: str,
    *,
    config: str | None = None,
    split: str = "train",
    token: str | None = None,
    max_samples: int | None = None,
    streaming: bool | None = None,
    stream_above_bytes: int = STREAM_ABOVE_BYTES,
    seed: int = 0,
    text_column: str | None = None,
    text_pair_column: str | None = None,
    label_column: str | None = None,
    labels: bool = True,
    local_files: bool = True,
    policy: HubPolicy | None = None,
) -> TextData:
    """Read one split of a Hub dataset with ``datasets.load_dataset`` and map its columns.

    A Hub dataset is read only after the Hub said, for this token, that it may be (its info at
    the current commit), and then at that commit, with a ``datasets`` cache of this call's own:
    ``datasets`` falls back to any cached copy when the Hub refuses a repo, which would hand one
    tenant's private rows to another. A refused dataset is answered exactly like one that does not
    exist, whatever any cache holds.

    With ``local_files=False`` (a service) the id is a Hub id and nothing else: ``datasets`` would
    read an existing local folder of that name instead, so such a name is answered exactly as a
    missing Hub dataset.

    A dataset larger than ``stream_above_bytes`` (or ``streaming=True``) is streamed: rows are drawn
    through a shuffle buffer and at most ``max_samples`` (or ``STREAMING_ROW_CAP``) are read. A
    smaller one is loaded whole, shuffled with ``seed`` and cut to ``max_samples``.

    Raises:
        DatasetError: unknown dataset (or one the token cannot read), config or split, a missing
            column, empty rows, labels the model lacks.
        HubUnavailable: the Hub could not be reached (worth retrying later).
        GatedRepo, Unauthorized: the Hub refused the token (gated dataset, invalid token).

    Example:
        >>> data = load_hub_dataset("stanfordnlp/sst2", split="validation", max_samples=500)
    """
    import tempfile

    from slimformer.hub.policy import HubPolicy

    policy = policy or HubPolicy(allow_local_files=local_files)
    read = _Read.of(dataset_id, config, split)
    local = _is_local_folder(dataset_id, local_files, read)
    revision, size, sent = _authorised_source(dataset_id, token, policy, local, read.not_found)
    if streaming is None:
        streaming = size is not None and size > stream_above_bytes
    with tempfile.TemporaryDirectory(prefix="datasets-", dir=_cache_root(policy)) as own_cache:
        table = read.table(
            revision, sent, streaming, None if local else own_cache, max_samples, seed
        )
        # read into memory while this call's cache (the table's files) still exists
        return table_to_text_data(
            table,
            source=f"{dataset_id}:{split}",
            text_column=text_column,
            text_pair_column=text_pair_column,
            label_column=label_column,
            labels=labels,
        )


def _is_local_folder(dataset_id: str, local_files: bool, read: _Read) -> bool:
    """Whether ``dataset_id`` is a local folder to read (only with ``local_files``).

    Raises:
        DatasetError: without ``local_files``, anything but a Hub id or a name that exists here
            (``read.not_found``, word for word); with it, neither a folder nor a Hub id.
    """
    local = local_files and Path(dataset_id).is_dir()
    if not local_files and (not is_hub_id(dataset_id) or os.path.lexists(dataset_id)):
        raise read.not_found
    if not local and not is_hub_id(dataset_id):
        raise DatasetError(
            f"cannot load {read.where}: no folder of that name here, and not a Hub id (org/name)",
            details=read.details,
        )
    return local


def _authorised_source(
    dataset_id: str,
    token: str | None,
    policy: HubPolicy,
    local: bool,
    not_found: DatasetError,
) -> tuple[str | None, int | None, str | bool | None]:
    """(commit to read, size in bytes or None, token to send) of a dataset.

    A Hub dataset is first authorised with the job's token (its info at the current commit): a
    refusal is ``not_found``, like a dataset that does not exist, and the read is pinned to the
    commit the Hub named. A local folder has no commit and is sent the token as given.
    """
    if local:
        return None, _local_bytes(Path(dataset_id)), token
    from slimformer.errors import RepoNotFound
    from slimformer.hub.download import authorize_dataset

    try:
        info = authorize_dataset(dataset_id, token=token, policy=policy)
    except RepoNotFound:
        raise not_found from None
    revision, sent = info.sha, policy.request_token(token)
    sizes = [f.size for f in info.siblings or [] if f.size is not None]
    return revision, sum(sizes) if sizes else None, sent


def _local_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def _cache_root(policy: HubPolicy) -> Path | None:
    """Where the per-call ``datasets`` caches go: the policy's cache folder (made when missing), or
    the system's temporary folder (None)."""
    cache_root = Path(policy.cache_dir) if policy.cache_dir is not None else None
    if cache_root is not None:
        cache_root.mkdir(parents=True, exist_ok=True)
    return cache_root


@dataclass
class _Read:
    """One split of a dataset, read with ``datasets``, its failures told in our words."""

    dataset_id: str
    config: str | None
    split: str
    where: str
    details: dict
    not_found: DatasetError

    @classmethod
    def of(cls, dataset_id: str, config: str | None, split: str) -> _Read:
        """The split's reader, with the words of its failures: the same for a refused dataset as
        for one that does not exist."""
        where = f"{dataset_id}" + (f" ({config})" if config else "") + f" split {split!r}"
        details = {"dataset": dataset_id, "config": config, "split": split}
        not_found = DatasetError(
            f"dataset {dataset_id} not found on the Hub (if it is private, give a token that can "
            "read it)",
            details=details,
        )
        return cls(dataset_id, config, split, where, details, not_found)

    def table(self, revision, token, streaming: bool, cache_dir, max_samples, seed: int):
        """The split's rows (at most ``max_samples``, shuffled with ``seed``), as a table."""
        import datasets

        from slimformer.errors import HubUnavailable
        from slimformer.hub.retries import is_transient

        datasets.disable_progress_bars()
        try:
            table = datasets.load_dataset(
                self.dataset_id,
                self.config,
                split=self.split,
                revision=revision,
                token=token,
                streaming=streaming,
                cache_dir=cache_dir,
            )
            if streaming:
                rows = max_samples or STREAMING_ROW_CAP
                if max_samples is None:
                    logger.info("streaming %s: reading at most %d rows", self.where, rows)
                stream = table.shuffle(seed=seed, buffer_size=10_000).take(rows)
                table = datasets.Dataset.from_list(list(stream), features=table.features)
            elif max_samples is not None and max_samples < len(table):
                table = table.shuffle(seed=seed).select(range(max_samples))
        except Exception as err:  # datasets raises many types; the message names the problem
            if is_transient(err):
                raise HubUnavailable(
                    f"the Hub could not be reached to load {self.where}", details=self.details
                ) from err
            if type(err).__name__ in ("DatasetNotFoundError", "RepositoryNotFoundError"):
                raise self.not_found from err
            raise DatasetError(f"cannot load {self.where}: {err}", details=self.details) from err
        if len(table) == 0:
            raise DatasetError(f"{self.where} has no rows", details=self.details)
        return table
