"""The artifact store's behaviour, the same tests for the local folder and for S3 (a real moto
server)."""

from __future__ import annotations

import hashlib
import os
import socket
import threading
import uuid
from pathlib import Path

import pytest

from service.artifacts import (
    ArtifactNotFound,
    BadArtifactPath,
    LocalArtifactStore,
    make_artifact_store,
)
from service.settings import Settings

boto3 = pytest.importorskip("boto3")
moto_server = pytest.importorskip("moto.server")

PART = 5 * 1024 * 1024  # S3's smallest multipart part


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def s3_endpoint():
    saved = {
        k: os.environ.get(k)
        for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")
    }
    os.environ.update(
        AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1"
    )
    port = free_port()
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture
def bucket(s3_endpoint) -> str:
    name = f"artifacts-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=name)
    return name


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path):
    if request.param == "local":
        return LocalArtifactStore(tmp_path / "artifacts")
    from service.artifacts_s3 import S3ArtifactStore

    endpoint = request.getfixturevalue("s3_endpoint")
    return S3ArtifactStore(
        request.getfixturevalue("bucket"), prefix="deploy-a/", endpoint_url=endpoint, part_size=PART
    )


def make_folder(root: Path, files: dict[str, bytes]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return root


def read(store, key: str, start: int = 0, end: int | None = None) -> bytes:
    return b"".join(store.iter_bytes(key, start, end))


def sha256_stream(chunks) -> str:
    digest = hashlib.sha256()
    for chunk in chunks:
        digest.update(chunk)
    return digest.hexdigest()


def test_published_folder_lists_sizes_and_reads_back(store, tmp_path):
    files = {
        "config.json": b'{"a": 1}',
        "model.safetensors": os.urandom(3000),
        "onnx/model.onnx": b"onnx",
        "empty.txt": b"",
    }
    listed = store.publish_folder("jobs/j1", make_folder(tmp_path / "out", files))

    expected = [{"path": p, "size": len(d)} for p, d in sorted(files.items())]
    assert listed == expected
    assert store.list("jobs/j1") == expected
    assert store.list("jobs/j1/onnx") == [{"path": "model.onnx", "size": 4}]
    assert store.list("jobs/none") == []
    for path, data in files.items():
        assert store.size(f"jobs/j1/{path}") == len(data)
        assert read(store, f"jobs/j1/{path}") == data
    fetched = store.fetch_file("jobs/j1/model.safetensors", tmp_path / "down" / "m.safetensors")
    assert fetched.read_bytes() == files["model.safetensors"]


def test_missing_files_raise_not_found(store, tmp_path):
    store.publish_folder("jobs/j1", make_folder(tmp_path / "out", {"a.txt": b"a"}))
    for key in ("jobs/j1/b.txt", "jobs/j2/a.txt", "uploads/u/data.csv"):
        with pytest.raises(ArtifactNotFound):
            store.size(key)
        with pytest.raises(ArtifactNotFound):
            read(store, key)
        with pytest.raises(ArtifactNotFound):
            store.fetch_file(key, tmp_path / "x")


def test_put_file_then_fetch_and_list(store, tmp_path):
    source = tmp_path / "data.csv"
    source.write_text("sentence,label\nfine,1\n")
    store.put_file("uploads/u1/data.csv", source)
    assert store.size("uploads/u1/data.csv") == source.stat().st_size
    assert store.list("uploads/u1") == [{"path": "data.csv", "size": source.stat().st_size}]
    assert (
        store.fetch_file("uploads/u1/data.csv", tmp_path / "copy.csv").read_text()
        == source.read_text()
    )


def test_large_file_streams_up_and_down_in_parts(store, tmp_path):
    big = tmp_path / "out" / "model.safetensors"
    big.parent.mkdir()
    with big.open("wb") as fh:  # 20 MiB: four 5 MiB parts up, twenty 1 MiB chunks down
        for _ in range(20):
            fh.write(os.urandom(1 << 20))
    want = sha256_stream([big.read_bytes()])
    store.publish_folder("jobs/big", big.parent)
    store.put_file("uploads/big/model.bin", big)

    for key in ("jobs/big/model.safetensors", "uploads/big/model.bin"):
        assert store.size(key) == 20 << 20
        chunks = store.iter_bytes(key)
        sizes = []

        def counted(chunks=chunks, sizes=sizes):
            for chunk in chunks:
                sizes.append(len(chunk))
                yield chunk

        assert sha256_stream(counted()) == want
        assert len(sizes) >= 20 and max(sizes) <= 1 << 20  # streamed, never the whole file at once
        fetched = store.fetch_file(key, tmp_path / "down" / key.replace("/", "_"))
        assert sha256_stream([fetched.read_bytes()]) == want


def test_multipart_upload_really_happens_on_s3(s3_endpoint, bucket, tmp_path):
    from service.artifacts_s3 import S3ArtifactStore

    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(12 << 20))
    store = S3ArtifactStore(bucket, prefix="p/", endpoint_url=s3_endpoint, part_size=PART)
    store.put_file("uploads/u/big.bin", big)
    head = boto3.client("s3", endpoint_url=s3_endpoint).head_object(
        Bucket=bucket, Key="p/uploads/u/big.bin"
    )
    assert (
        head["ETag"].strip('"').endswith("-3")
    )  # a multipart object's ETag ends with its part count


def test_range_reads(store, tmp_path):
    data = bytes(range(256)) * 40
    store.publish_folder("jobs/r", make_folder(tmp_path / "out", {"f.bin": data}))
    assert read(store, "jobs/r/f.bin", 10, 19) == data[10:20]
    assert read(store, "jobs/r/f.bin", 5000) == data[5000:]
    assert read(store, "jobs/r/f.bin", len(data) - 1, len(data) - 1) == data[-1:]
    assert read(store, "jobs/r/f.bin", 0, 0) == data[:1]
    # a range across chunk boundaries of a big file
    big = os.urandom(3 << 20)
    store.publish_folder("jobs/r2", make_folder(tmp_path / "out2", {"big.bin": big}))
    start, end = (1 << 20) - 7, (2 << 20) + 11
    assert read(store, "jobs/r2/big.bin", start, end) == big[start : end + 1]


@pytest.mark.parametrize(
    "key",
    [
        "../escape",
        "jobs/../../etc/passwd",
        "/etc/passwd",
        "jobs//x",
        "jobs/./x",
        "jobs\\x",
        "",
        "jobs/x\x00",
    ],
)
def test_keys_leaving_the_store_are_rejected(store, tmp_path, key):
    source = tmp_path / "f.txt"
    source.write_text("x")
    calls = [
        lambda: store.put_file(key, source),
        lambda: store.fetch_file(key, tmp_path / "out"),
        lambda: store.list(key),
        lambda: store.size(key),
        lambda: read(store, key),
        lambda: store.delete_prefix(key),
        lambda: store.publish_folder(key, tmp_path),
    ]
    for call in calls:
        with pytest.raises(BadArtifactPath):
            call()


def test_republish_replaces_the_whole_folder(store, tmp_path):
    store.publish_folder(
        "jobs/j", make_folder(tmp_path / "v1", {"a.txt": b"one", "old.txt": b"gone soon"})
    )
    store.publish_folder(
        "jobs/j", make_folder(tmp_path / "v2", {"a.txt": b"two!", "new.txt": b"new"})
    )
    assert store.list("jobs/j") == [{"path": "a.txt", "size": 4}, {"path": "new.txt", "size": 3}]
    assert read(store, "jobs/j/a.txt") == b"two!"
    with pytest.raises(ArtifactNotFound):
        store.size("jobs/j/old.txt")


def test_failed_publish_leaves_the_previous_version(store, tmp_path):
    store.publish_folder("jobs/j", make_folder(tmp_path / "v1", {"a.txt": b"one"}))
    broken = make_folder(tmp_path / "v2", {"a.txt": b"two", "b.txt": b"bee"})
    (broken / "z-dangling").symlink_to(
        tmp_path / "does-not-exist"
    )  # fails after the other files went up
    with pytest.raises(OSError):
        store.publish_folder("jobs/j", broken)
    assert store.list("jobs/j") == [{"path": "a.txt", "size": 3}]
    assert read(store, "jobs/j/a.txt") == b"one"


def test_readers_see_one_complete_version_during_republish(store, tmp_path):
    versions = []
    for i in range(4):
        files = {f"file-{j}.bin": bytes([i]) * (100 + i) for j in range(6)}
        versions.append((make_folder(tmp_path / f"v{i}", files), sorted(files)))
    store.publish_folder("jobs/j", versions[0][0])
    wanted = {tuple((p, 100 + i) for p in names) for i, (_, names) in enumerate(versions)}
    seen, stop = [], threading.Event()

    def reader():
        while not stop.is_set():
            seen.append(tuple((f["path"], f["size"]) for f in store.list("jobs/j")))

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for folder, _ in versions[1:]:
            store.publish_folder("jobs/j", folder)
    finally:
        stop.set()
        thread.join()
    assert seen and set(seen) <= wanted  # never empty, never a mix of two versions


def test_delete_prefix_removes_everything_below(store, tmp_path):
    store.publish_folder(
        "jobs/d", make_folder(tmp_path / "out", {"a.txt": b"a", "sub/b.txt": b"b"})
    )
    store.publish_folder("jobs/keep", make_folder(tmp_path / "out2", {"c.txt": b"c"}))
    store.delete_prefix("jobs/d")
    store.delete_prefix("jobs/never-existed")
    assert store.list("jobs/d") == []
    with pytest.raises(ArtifactNotFound):
        store.size("jobs/d/a.txt")
    assert store.list("jobs/keep") == [{"path": "c.txt", "size": 1}]
    assert store.list("jobs") == [{"path": "keep/c.txt", "size": 1}]


def test_ping(store):
    store.ping()


def test_s3_ping_fails_without_the_bucket_and_leaves_no_internals_visible(
    s3_endpoint, bucket, tmp_path
):
    from service.artifacts_s3 import MANIFEST, S3ArtifactStore

    with pytest.raises(Exception):  # noqa: B017 - botocore's ClientError for the missing bucket
        S3ArtifactStore(f"missing-{uuid.uuid4().hex[:8]}", endpoint_url=s3_endpoint).ping()
    store = S3ArtifactStore(bucket, endpoint_url=s3_endpoint)
    store.publish_folder("jobs/j", make_folder(tmp_path / "out", {"a.txt": b"a"}))
    store.publish_folder("jobs/j", make_folder(tmp_path / "out2", {"a.txt": b"b"}))
    with pytest.raises(BadArtifactPath):
        store.size(f"jobs/j/{MANIFEST}")
    keys = [
        o["Key"]
        for o in boto3.client("s3", endpoint_url=s3_endpoint).list_objects_v2(Bucket=bucket)[
            "Contents"
        ]
    ]
    assert all(k.startswith("slimformer/jobs/j/") for k in keys)
    assert (
        len(keys) <= 3
    )  # the manifest, the current version and the one a running download may still read


def test_settings_pick_the_s3_backend(s3_endpoint, bucket, tmp_path):
    from service.artifacts_s3 import S3ArtifactStore

    settings = Settings(
        data_dir=tmp_path,
        artifact_backend="s3",
        s3_bucket=bucket,
        s3_prefix="team-a",
        s3_endpoint_url=s3_endpoint,
    )
    store = make_artifact_store(settings)
    assert isinstance(store, S3ArtifactStore) and store.prefix == "team-a/"
    store.ping()
