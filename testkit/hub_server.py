"""A small Hugging Face Hub-compatible HTTP server for tests.

It speaks the part of the Hub's protocol that huggingface_hub and transformers use to download and
to upload model repos: repo info, tree listing, ``HEAD``/``GET`` resolve (``X-Repo-Commit``,
``ETag``), errors in ``X-Error-Code``, repo creation, YAML validation, preupload (always
``regular``: inline content, no LFS or Xet) and NDJSON commits. Repos live in memory as a list of
commits, each a full snapshot of the files.

Knobs for tests: ``fail_next(n, status)`` answers the next ``n`` requests with an error status, and
``requests`` records every request line (method, path) so a test can say what the client asked for.

Dataset repos (``add_dataset``) answer the same routes under ``/api/datasets/...`` and
``/datasets/{repo}/resolve/...``, plus ``paths-info``, which ``datasets.load_dataset`` uses through
``HfFileSystem``; private and gated datasets follow the models' access rules.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import secrets
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

# the users the tests' `hub` fixture (tests/conftest.py) creates
ALICE_TOKEN = "hf_" + secrets.token_hex(16)  # alice: writes to alice/* and acme/*
BOB_TOKEN = "hf_" + secrets.token_hex(16)  # bob: reads public repos only
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt")


def git_blob_sha(content: bytes) -> str:
    """The git object id of a file: what the Hub reports as a regular file's oid and ETag."""
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


@dataclass
class Commit:
    sha: str
    message: str
    files: dict[str, bytes]
    parent: str | None = None


@dataclass
class Repo:
    repo_id: str
    private: bool = False
    gated: bool = False
    commits: list[Commit] = field(default_factory=list)
    refs: dict[str, str] = field(default_factory=dict)  # branch, tag or refs/pr/N -> commit sha
    pull_requests: int = 0

    def resolve(self, revision: str) -> Commit | None:
        sha = self.refs.get(revision, revision)
        for commit in self.commits:
            if commit.sha == sha:
                return commit
        return None

    def commit(self, files: dict[str, bytes], message: str, *, branch: str = "main") -> Commit:
        parent = self.refs.get(branch)
        digest = hashlib.sha1(
            f"{self.repo_id}\n{parent}\n{message}\n{len(self.commits)}\n{time.time_ns()}".encode()
        )
        for path in sorted(files):
            digest.update(path.encode() + git_blob_sha(files[path]).encode())
        commit = Commit(digest.hexdigest(), message, dict(files), parent)
        self.commits.append(commit)
        self.refs[branch] = commit.sha
        return commit


class HubServer:
    """The state behind the HTTP handler: repos, users and tokens, request log, injected
    failures."""

    def __init__(self) -> None:
        self.repos: dict[str, Repo] = {}
        self.datasets: dict[str, Repo] = {}
        self.tokens: dict[str, str] = {}  # token -> user name
        self.namespaces: dict[str, set[str]] = {}  # user -> namespaces they may write to
        self.gated_access: dict[str, set[str]] = {}  # repo id -> users allowed in
        self.requests: list[tuple[str, str]] = []
        self.auth_headers: list[str | None] = []
        self._failures: list[int] = []
        self._lock = threading.Lock()
        self.httpd: ThreadingHTTPServer | None = None
        self.thread: threading.Thread | None = None

    # -- set up
    @property
    def url(self) -> str:
        assert self.httpd is not None
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> HubServer:
        handler = type("Handler", (_Handler,), {"hub": self})
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        return self

    def stop(self) -> None:
        if self.httpd is not None:
            self.httpd.shutdown()
            self.httpd.server_close()

    def add_user(self, name: str, token: str, *, orgs: tuple[str, ...] = ()) -> None:
        self.tokens[token] = name
        self.namespaces[name] = {name, *orgs}

    def add_repo(
        self,
        repo_id: str,
        files: dict[str, bytes] | str | Path | None = None,
        *,
        private: bool = False,
        gated: bool = False,
        message: str = "initial commit",
    ) -> Repo:
        """A repo whose first commit holds ``files`` (a dict of bytes, or every file of a local
        folder)."""
        if isinstance(files, str | Path):
            folder = Path(files)
            files = {
                p.relative_to(folder).as_posix(): p.read_bytes()
                for p in sorted(folder.rglob("*"))
                if p.is_file()
            }
        repo = Repo(repo_id, private=private, gated=gated)
        repo.commit(
            {
                ".gitattributes": b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n",
                **(files or {}),
            },
            message,
        )
        self.repos[repo_id] = repo
        return repo

    def add_dataset(
        self,
        repo_id: str,
        files: dict[str, bytes],
        *,
        private: bool = False,
        gated: bool = False,
    ) -> Repo:
        """A dataset repo whose first commit holds ``files`` (data files and an optional README
        with ``configs`` in its YAML header, as on the Hub)."""
        repo = Repo(repo_id, private=private, gated=gated)
        repo.commit(
            {".gitattributes": b"*.parquet filter=lfs diff=lfs merge=lfs -text\n", **files},
            "initial commit",
        )
        self.datasets[repo_id] = repo
        return repo

    def fail_next(self, count: int, status: int = 503) -> None:
        """Answer the next ``count`` requests with ``status`` (a Hub having a bad minute)."""
        with self._lock:
            self._failures = [status] * count

    def paths(self, method: str | None = None) -> list[str]:
        return [path for m, path in self.requests if method is None or m == method]

    # -- access rules, as the Hub applies them
    def user_for(self, authorization: str | None) -> tuple[str | None, bool]:
        """(user, token_was_invalid)."""
        if not authorization or not authorization.startswith("Bearer "):
            return None, False
        user = self.tokens.get(authorization.removeprefix("Bearer ").strip())
        return user, user is None

    def _take_failure(self) -> int | None:
        with self._lock:
            return self._failures.pop() if self._failures else None


class _HttpError(Exception):
    def __init__(
        self, status: int, message: str, code: str | None = None, body: dict | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.code, self.body = status, message, code, body


_KIND = r"(?P<kind>models|datasets)"
_API_INFO = re.compile(rf"^/api/{_KIND}/(?P<repo>[^/]+/[^/]+)(?:/revision/(?P<rev>[^/]+))?$")
_API_TREE = re.compile(
    rf"^/api/{_KIND}/(?P<repo>[^/]+/[^/]+)/tree/(?P<rev>[^/]+)(?:/(?P<path>.*))?$"
)
_API_PATHS_INFO = re.compile(rf"^/api/{_KIND}/(?P<repo>[^/]+/[^/]+)/paths-info/(?P<rev>[^/]+)$")
_API_PREUPLOAD = re.compile(r"^/api/models/(?P<repo>[^/]+/[^/]+)/preupload/(?P<rev>[^/]+)$")
_API_COMMIT = re.compile(r"^/api/models/(?P<repo>[^/]+/[^/]+)/commit/(?P<rev>[^/]+)$")
_RESOLVE = re.compile(
    r"^/(?:(?P<kind>datasets)/)?(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<path>.+)$"
)


def _groups(pattern: re.Pattern, path: str) -> dict | None:
    """The pattern's groups, each unquoted (a revision like ``refs%2Fpr%2F1`` arrives quoted)."""
    m = pattern.match(path)
    return None if m is None else {k: unquote(v) if v else v for k, v in m.groupdict().items()}


class _Handler(BaseHTTPRequestHandler):
    hub: HubServer
    protocol_version = "HTTP/1.1"

    def log_message(
        self, format: str, *args
    ) -> None:  # quiet: pytest shows failures, not access logs
        pass

    # -- plumbing
    def _dispatch(self, method: str) -> None:
        parts = urlsplit(self.path)
        path, query = parts.path, parse_qs(parts.query)
        body = b""
        if method == "POST":
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.hub.requests.append((method, unquote(path)))
        self.hub.auth_headers.append(self.headers.get("Authorization"))
        failure = self.hub._take_failure()
        if failure is not None:
            return self._send(
                failure, {"error": "the Hub is having a bad minute"}, head=method == "HEAD"
            )
        try:
            self._route(method, path, query, body)
        except _HttpError as err:
            headers = {"X-Error-Message": err.message}
            if err.code:
                headers["X-Error-Code"] = err.code
            self._send(
                err.status, err.body or {"error": err.message}, headers, head=method == "HEAD"
            )

    def do_GET(self) -> None:  # noqa: N802
        self._dispatch("GET")

    def do_HEAD(self) -> None:  # noqa: N802
        self._dispatch("HEAD")

    def do_POST(self) -> None:  # noqa: N802
        self._dispatch("POST")

    def _send(
        self,
        status: int,
        payload: dict | list | bytes,
        headers: dict | None = None,
        *,
        head: bool = False,
    ) -> None:
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        self.send_response(status)
        if not isinstance(payload, bytes):
            self.send_header("Content-Type", "application/json")
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if not head:
            self.wfile.write(data)

    # -- access
    def _user(self) -> str | None:
        user, invalid = self.hub.user_for(self.headers.get("Authorization"))
        if invalid:
            raise _HttpError(401, "Invalid credentials in Authorization header")
        return user

    def _readable(self, repo_id: str, *, files: bool, kind: str | None = "models") -> Repo:
        user = self._user()
        repo = (self.hub.datasets if kind == "datasets" else self.hub.repos).get(repo_id)
        not_found = _HttpError(401 if user is None else 404, "Repository not found", "RepoNotFound")
        if repo is None:
            raise not_found
        if repo.private and repo_id.split("/")[0] not in self.hub.namespaces.get(user or "", set()):
            raise not_found
        if (
            files
            and repo.gated
            and (user is None or user not in self.hub.gated_access.get(repo_id, set()))
        ):
            raise _HttpError(
                401 if user is None else 403,
                f"Access to model {repo_id} is restricted.",
                "GatedRepo",
            )
        return repo

    def _writable(self, repo_id: str) -> Repo:
        user = self._user()
        if user is None:
            raise _HttpError(401, "You must be authenticated to write")
        repo = self.hub.repos.get(repo_id)
        if repo is None:
            raise _HttpError(404, "Repository not found", "RepoNotFound")
        if repo_id.split("/")[0] not in self.hub.namespaces.get(user, set()):
            raise _HttpError(403, "You don't have the rights to write to this repo")
        return repo

    @staticmethod
    def _commit_of(repo: Repo, revision: str) -> Commit:
        commit = repo.resolve(revision)
        if commit is None:
            raise _HttpError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        return commit

    # -- routes
    def _route(self, method: str, path: str, query: dict, body: bytes) -> None:
        if method == "POST":
            if path == "/api/repos/create":
                return self._create_repo(json.loads(body or b"{}"))
            if path == "/api/validate-yaml":
                return self._send(200, {"warnings": []})
            if m := _groups(_API_PREUPLOAD, path):
                return self._preupload(m["repo"], m["rev"], json.loads(body or b"{}"))
            if m := _groups(_API_COMMIT, path):
                return self._commit(
                    m["repo"], m["rev"], body, create_pr=query.get("create_pr") == ["1"]
                )
            if m := _groups(_API_PATHS_INFO, path):
                return self._paths_info(m["kind"], m["repo"], m["rev"], body)
            raise _HttpError(404, f"no route for POST {path}")
        if m := _groups(_API_TREE, path):
            return self._tree(
                m["kind"],
                m["repo"],
                m["rev"],
                m["path"] or "",
                recursive=query.get("recursive", ["false"])[0].lower() == "true",
            )
        if m := _groups(_API_INFO, path):
            return self._info(
                m["kind"],
                m["repo"],
                m["rev"] or "main",
                blobs=query.get("blobs") == ["True"] or query.get("blobs") == ["true"],
            )
        if m := _groups(_RESOLVE, path):
            return self._resolve(
                m["kind"] or "models", m["repo"], m["rev"], m["path"], head=method == "HEAD"
            )
        raise _HttpError(404, f"no route for {method} {path}")

    def _info(self, kind: str, repo_id: str, revision: str, *, blobs: bool) -> None:
        repo = self._readable(repo_id, files=False, kind=kind)
        commit = self._commit_of(repo, revision)
        siblings = []
        for name, content in sorted(commit.files.items()):
            sibling: dict = {"rfilename": name}
            if blobs:
                sibling |= {"size": len(content), "blobId": git_blob_sha(content)}
            siblings.append(sibling)
        payload = {
            "_id": repo_id,
            "id": repo_id,
            **({"modelId": repo_id} if kind == "models" else {}),
            "sha": commit.sha,
            "private": repo.private,
            "gated": "auto" if repo.gated else False,
            "disabled": False,
            "tags": [],
            "siblings": siblings,
        }
        if kind == "models" and "config.json" in commit.files:
            try:
                config = json.loads(commit.files["config.json"])
                payload["config"] = {
                    k: config[k] for k in ("architectures", "model_type", "auto_map") if k in config
                }
            except ValueError:
                pass
        self._send(200, payload)

    def _tree(
        self, kind: str, repo_id: str, revision: str, prefix: str, *, recursive: bool
    ) -> None:
        """Files and folders under ``prefix``: every level when ``recursive``, else its children."""
        repo = self._readable(repo_id, files=False, kind=kind)
        commit = self._commit_of(repo, revision)
        prefix = prefix.strip("/")
        base = prefix + "/" if prefix else ""
        files, folders = [], set()
        for name, content in sorted(commit.files.items()):
            if not name.startswith(base):
                continue
            parts = name[len(base) :].split("/")
            for depth in range(1, len(parts) if recursive else min(2, len(parts))):
                folders.add(base + "/".join(parts[:depth]))
            if recursive or len(parts) == 1:
                files.append(
                    {
                        "type": "file",
                        "path": name,
                        "size": len(content),
                        "oid": git_blob_sha(content),
                    }
                )
        entries = files + [
            {"type": "directory", "path": f, "oid": "0" * 40} for f in sorted(folders)
        ]
        self._send(200, entries)

    def _paths_info(self, kind: str, repo_id: str, revision: str, body: bytes) -> None:
        """What ``HfFileSystem.info`` asks: an entry for each existing file or folder named."""
        repo = self._readable(repo_id, files=False, kind=kind)
        commit = self._commit_of(repo, revision)
        form = parse_qs(body.decode()) if body and not body.startswith(b"{") else {}
        paths = form.get("paths") or (json.loads(body).get("paths", []) if body else [])
        entries = []
        for path in paths:
            path = path.strip("/")
            if path in commit.files:
                content = commit.files[path]
                entries.append(
                    {
                        "type": "file",
                        "path": path,
                        "size": len(content),
                        "oid": git_blob_sha(content),
                    }
                )
            elif any(name.startswith(path + "/") for name in commit.files) or path == "":
                entries.append({"type": "directory", "path": path, "oid": "0" * 40})
        self._send(200, entries)

    def _resolve(self, kind: str, repo_id: str, revision: str, path: str, *, head: bool) -> None:
        repo = self._readable(repo_id, files=True, kind=kind)
        commit = self._commit_of(repo, revision)
        if path not in commit.files:
            raise _HttpError(404, "Entry not found", "EntryNotFound")
        content = commit.files[path]
        headers = {
            "X-Repo-Commit": commit.sha,
            "ETag": f'"{git_blob_sha(content)}"',
            "Content-Type": "application/octet-stream",
        }
        start = 0
        if (wanted := self.headers.get("Range")) and (m := re.match(r"bytes=(\d+)-", wanted)):
            start = int(m[1])
        if head:
            self.send_response(200)
            for key, value in headers.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(content)))
            self.end_headers()
            return
        self._send(206 if start else 200, content[start:], headers)

    def _create_repo(self, payload: dict) -> None:
        user = self._user()
        if user is None:
            raise _HttpError(401, "You must be authenticated to create a repo")
        namespace = payload.get("organization") or user
        repo_id = f"{namespace}/{payload['name']}"
        url = f"{self.hub.url}/{repo_id}"
        if namespace not in self.hub.namespaces.get(user, set()):
            raise _HttpError(
                403, f"You don't have the rights to create a model under the namespace {namespace}"
            )
        if repo_id in self.hub.repos:
            raise _HttpError(
                409, "You already created this model repo", body={"error": "exists", "url": url}
            )
        self.hub.add_repo(
            repo_id,
            private=payload.get("visibility", "public") != "public"
            if "visibility" in payload
            else bool(payload.get("private")),
        )
        self._send(200, {"url": url, "name": repo_id, "id": repo_id})

    def _preupload(self, repo_id: str, revision: str, payload: dict) -> None:
        repo = self._writable(repo_id)
        current = repo.resolve(revision)
        files = []
        for item in payload.get("files", []):
            existing = current.files.get(item["path"]) if current else None
            files.append(
                {
                    "path": item["path"],
                    "uploadMode": "regular",
                    "shouldIgnore": False,
                    "oid": git_blob_sha(existing) if existing is not None else None,
                }
            )
        self._send(200, {"files": files, "commitOid": current.sha if current else None})

    def _commit(self, repo_id: str, revision: str, body: bytes, *, create_pr: bool) -> None:
        repo = self._writable(repo_id)
        base = self._commit_of(repo, revision)
        files = dict(base.files)
        message = ""
        for line in body.splitlines():
            if not line.strip():
                continue
            item = json.loads(line)
            key, value = item["key"], item["value"]
            if key == "header":
                message = value.get("summary", "")
                if (parent := value.get("parentCommit")) and parent != base.sha:
                    raise _HttpError(412, "A commit has happened since; parentCommit is stale")
            elif key == "file":
                if value.get("encoding") != "base64":
                    raise _HttpError(400, "only base64 file contents are supported")
                files[value["path"]] = base64.b64decode(value["content"])
            elif key == "deletedFile":
                files.pop(value["path"], None)
            elif key == "deletedFolder":
                files = {
                    k: v
                    for k, v in files.items()
                    if not k.startswith(value["path"].rstrip("/") + "/")
                }
            else:
                raise _HttpError(400, f"unsupported commit operation {key!r}")
        pr_url = None
        if create_pr:
            repo.pull_requests += 1
            branch = f"refs/pr/{repo.pull_requests}"
            repo.refs[branch] = base.sha
            commit = repo.commit(files, message, branch=branch)
            pr_url = f"{self.hub.url}/{repo_id}/discussions/{repo.pull_requests}"
        else:
            commit = repo.commit(
                files, message, branch=revision if revision in repo.refs else "main"
            )
        self._send(
            200,
            {
                "success": True,
                "commitOid": commit.sha,
                "commitUrl": f"{self.hub.url}/{repo_id}/commit/{commit.sha}",
                "pullRequestUrl": pr_url,
            },
        )
