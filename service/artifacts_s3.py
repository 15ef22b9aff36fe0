"""The S3-compatible artifact backend (AWS S3, MinIO, Ceph RGW, ...), with boto3.

Keys map to objects under ``prefix`` in one bucket. A published folder is all-or-nothing for
readers: its files are uploaded under a fresh version folder first and a small manifest object
naming that version is written last (one PUT, which S3 applies atomically). Readers look a
published folder up through its manifest only, so they see the previous complete version or the
new complete one, never a mix::

    slimformer/jobs/<id>/.slimformer-manifest.json
        {"version": V, "files": [{"path", "size"}, ...]}
    slimformer/jobs/<id>/.slimformer-versions/<V>/<path>
        the files of version V

Credentials come from boto3's usual chain (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``, an
instance or pod role, ``~/.aws``).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

from service.artifacts_base import CHUNK, ArtifactNotFound, BadArtifactPath, TarballMixin, clean_key

MANIFEST = ".slimformer-manifest.json"
VERSIONS = ".slimformer-versions"
RESERVED = (MANIFEST, VERSIONS)
DELETE_BATCH = 1000  # the most keys one DeleteObjects call accepts
MAX_OBJECT_KEY_BYTES = 1024  # S3's limit on a key


def _error_code(err: Exception) -> str:
    return str((getattr(err, "response", None) or {}).get("Error", {}).get("Code", ""))


def _is_missing(err: Exception) -> bool:
    return _error_code(err) in ("404", "NoSuchKey", "NotFound", "NoSuchBucket")


class S3ArtifactStore(TarballMixin):
    """Artifacts in ``s3://bucket/prefix...``.

    Args:
        bucket: the bucket, which must exist (``ping`` says when it does not).
        prefix: key prefix inside the bucket, so several deployments can share one bucket.
        endpoint_url: an S3-compatible endpoint; None means AWS.
        part_size: bytes per multipart part and the size above which uploads go multipart (S3's
            minimum part is 5 MiB).

    Example:
        >>> store = S3ArtifactStore("models", endpoint_url="http://minio:9000")  # doctest: +SKIP
        >>> store.publish_folder("jobs/1234", Path("runs/out"))  # doctest: +SKIP
    """

    def __init__(
        self,
        bucket: str,
        *,
        prefix: str = "slimformer/",
        endpoint_url: str | None = None,
        part_size: int = 8 * 1024 * 1024,
        client=None,
    ) -> None:
        import boto3
        from boto3.s3.transfer import TransferConfig
        from botocore.config import Config

        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        if client is None:
            # S3-compatible servers are addressed by path; virtual-host names rarely resolve on a
            # private network
            config = Config(
                retries={"max_attempts": 5, "mode": "standard"},
                s3={"addressing_style": "path"} if endpoint_url else {},
            )
            client = boto3.client("s3", endpoint_url=endpoint_url, config=config)
        self.client = client
        self.transfer = TransferConfig(
            multipart_threshold=part_size,
            multipart_chunksize=part_size,
            io_chunksize=CHUNK,
            max_concurrency=4,
        )

    # -- keys and manifests -------------------------------------------------------------------
    def _clean(self, key: str) -> str:
        key = clean_key(key)
        if any(part in RESERVED for part in key.split("/")):
            raise BadArtifactPath(
                f"invalid artifact path {key!r}: {MANIFEST} and {VERSIONS} are reserved names"
            )
        return key

    def _object(self, key: str) -> str:
        name = self.prefix + key
        if len(name.encode()) > MAX_OBJECT_KEY_BYTES:
            raise BadArtifactPath("invalid artifact path: the name is too long")
        return name

    def _manifest(self, folder: str) -> dict | None:
        try:
            answer = self.client.get_object(
                Bucket=self.bucket, Key=self._object(f"{folder}/{MANIFEST}")
            )
            body = answer["Body"]
        except Exception as err:
            if _is_missing(err):
                return None
            raise
        with body:
            return json.loads(body.read())

    def _published_folder(self, key: str, *, include_self: bool) -> tuple[str, dict] | None:
        """The published folder holding ``key`` and its manifest, shallowest first, or None."""
        parts = key.split("/")
        for depth in range(1, len(parts) + (1 if include_self else 0)):
            folder = "/".join(parts[:depth])
            manifest = self._manifest(folder)
            if manifest is not None:
                return folder, manifest
        return None

    def _locate(self, key: str) -> tuple[str, int | None]:
        """The object holding the file ``key`` and its size when a manifest knows it."""
        key = self._clean(key)
        found = self._published_folder(key, include_self=False)
        if found is None:
            return self._object(key), None
        folder, manifest = found
        relative = key[len(folder) + 1 :]
        for entry in manifest["files"]:
            if entry["path"] == relative:
                version = manifest["version"]
                return self._object(f"{folder}/{VERSIONS}/{version}/{relative}"), entry["size"]
        raise ArtifactNotFound(key)

    def _keys_under(self, object_prefix: str) -> Iterator[dict]:
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=object_prefix):
            yield from page.get("Contents", [])

    def _delete(self, object_keys: list[str]) -> None:
        for i in range(0, len(object_keys), DELETE_BATCH):
            batch = [{"Key": k} for k in object_keys[i : i + DELETE_BATCH]]
            answer = self.client.delete_objects(
                Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True}
            )
            if answer.get("Errors"):
                first = answer["Errors"][0]
                raise OSError(
                    f"S3 refused to delete {len(answer['Errors'])} objects, "
                    f"e.g. {first.get('Key')}: {first.get('Message')}"
                )

    # -- the ArtifactStore protocol ---------------------------------------------------------------
    def publish_folder(self, prefix: str, folder: Path) -> list[dict]:
        prefix = self._clean(prefix)
        folder = Path(folder)
        version = f"{time.time_ns():020d}-{uuid.uuid4().hex[:8]}"
        files = []
        for path in sorted(folder.rglob("*")):
            if path.is_dir():
                continue
            relative = path.relative_to(folder).as_posix()
            self._clean(relative)
            # a dangling link or a vanished file fails here, before any reader can see the new
            # version
            target = self._object(f"{prefix}/{VERSIONS}/{version}/{relative}")
            self.client.upload_file(str(path), self.bucket, target, Config=self.transfer)
            files.append({"path": relative, "size": path.stat().st_size})
        previous = self._manifest(prefix)
        manifest = json.dumps(
            {"version": version, "files": files, "published_at": time.time()}
        ).encode()
        self.client.put_object(
            Bucket=self.bucket,
            Key=self._object(f"{prefix}/{MANIFEST}"),
            Body=manifest,
            ContentType="application/json",
        )
        # The version just replaced stays one publish longer, so a download that started before
        # it was replaced can finish; older versions, abandoned uploads and loose files under the
        # folder go.
        keep = {version, previous["version"] if previous else None}
        versions_prefix = self._object(f"{prefix}/{VERSIONS}/")
        stale = []
        for obj in self._keys_under(self._object(prefix + "/")):
            key = obj["Key"]
            if key == self._object(f"{prefix}/{MANIFEST}"):
                continue
            kept = key[len(versions_prefix) :].split("/", 1)[0] in keep
            if key.startswith(versions_prefix) and kept:
                continue
            stale.append(key)
        self._delete(stale)
        return [dict(entry) for entry in sorted(files, key=lambda e: e["path"])]

    def put_file(self, key: str, source: Path) -> None:
        key = self._clean(key)
        if self._published_folder(key, include_self=True) is not None:
            raise BadArtifactPath(
                f"{key!r} lies inside a published folder; publish the folder again instead"
            )
        self.client.upload_file(str(source), self.bucket, self._object(key), Config=self.transfer)

    def fetch_file(self, key: str, destination: Path) -> Path:
        object_key, _ = self._locate(key)
        destination = Path(destination)
        destination.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.client.download_file(
                self.bucket, object_key, str(destination), Config=self.transfer
            )
        except Exception as err:
            if _is_missing(err):
                raise ArtifactNotFound(key) from err
            raise
        return destination

    def list(self, prefix: str) -> list[dict]:
        prefix = self._clean(prefix)
        found = self._published_folder(prefix, include_self=True)
        if found is not None:
            folder, manifest = found
            inner = prefix[len(folder) + 1 :] + "/" if prefix != folder else ""
            return sorted(
                (
                    {"path": e["path"][len(inner) :], "size": e["size"]}
                    for e in manifest["files"]
                    if e["path"].startswith(inner)
                ),
                key=lambda e: e["path"],
            )
        base = self._object(prefix + "/")
        entries = []
        for obj in self._keys_under(base):
            relative = obj["Key"][len(base) :]
            parts = relative.split("/")
            if parts[-1] == MANIFEST:  # a published folder below: its manifest names its files
                sub = "/".join(parts[:-1])
                manifest = self._manifest(f"{prefix}/{sub}")
                if manifest is not None:
                    entries += [
                        {"path": f"{sub}/{e['path']}", "size": e["size"]} for e in manifest["files"]
                    ]
            elif VERSIONS not in parts:
                entries.append({"path": relative, "size": obj["Size"]})
        return sorted(entries, key=lambda e: e["path"])

    def size(self, key: str) -> int:
        object_key, size = self._locate(key)
        if size is not None:
            return size
        try:
            return int(self.client.head_object(Bucket=self.bucket, Key=object_key)["ContentLength"])
        except Exception as err:
            if _is_missing(err):
                raise ArtifactNotFound(key) from err
            raise

    def iter_bytes(self, key: str, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        object_key, _ = self._locate(key)
        if end is not None and end < start:
            return
        request = {"Bucket": self.bucket, "Key": object_key}
        # an empty object has no byte 0, so a whole read sends no Range
        if start or end is not None:
            request["Range"] = f"bytes={start}-{'' if end is None else end}"
        try:
            body = self.client.get_object(**request)["Body"]
        except Exception as err:
            # starts past the end: no bytes, as from a local file
            if _error_code(err) == "InvalidRange":
                return
            if _is_missing(err):
                raise ArtifactNotFound(key) from err
            raise
        with body:
            yield from body.iter_chunks(CHUNK)

    def delete_prefix(self, prefix: str) -> None:
        prefix = self._clean(prefix)
        # the manifest first: from then on readers see nothing instead of a folder losing files
        self._delete([self._object(f"{prefix}/{MANIFEST}")])
        self._delete([obj["Key"] for obj in self._keys_under(self._object(prefix + "/"))])

    def ping(self) -> None:
        self.client.head_bucket(Bucket=self.bucket)
