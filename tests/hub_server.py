"""A small Hugging Face Hub-compatible HTTP server, for tests.

Point the real `huggingface_hub` client at it (``HF_ENDPOINT=http://127.0.0.1:PORT``, set before
`huggingface_hub` is imported, and ``HF_HUB_DISABLE_XET=1``) and `create_repo`, `upload_file`,
`upload_folder`, `create_commit`, `hf_hub_download`, `snapshot_download`, `push_to_hub` and
`from_pretrained` work against it, with the client's own error classes. Standard library only.

    from hub_server import HubServer

    with HubServer(tmp_dir, tokens={"hf_test_token": "user"}) as server:
        api = HfApi(endpoint=server.url, token="hf_test_token")

Or by hand: ``python tests/hub_server.py --port 8080 --token hf_test_token=user``.

What is stored: every repo is a set of refs (branches, tags, pull requests) pointing at commits; a
commit is a snapshot ``{path: FileEntry}``; file contents live once, content-addressed by sha256, under
``root_dir/objects``. Repo metadata lives in memory for the life of the server.

Endpoints, by the client call that uses them (huggingface_hub 2.x):

================================================================  ======================================
``GET  /api/whoami-v2``                                           `whoami`
``GET  /api/agent-harnesses``                                     the client's first request (user-agent)
``POST /api/repos/create``                                        `create_repo` (private, exist_ok)
``POST /api/validate-yaml``                                       `create_commit` of a README.md
``GET  /api/{type}s/{repo}[/revision/{rev}]``                     `repo_info`/`model_info`, `snapshot_download`
``GET  /api/{type}s/{repo}/tree/{rev}[/{path}]``                  `list_repo_tree`, `list_repo_files`
``POST /api/{type}s/{repo}/paths-info/{rev}``                     `get_paths_info`, copies in `create_commit`
``GET  /api/{type}s/{repo}/refs``                                 `list_repo_refs`
``GET  /api/{type}s/{repo}/commits/{rev}``                        `list_repo_commits`
``POST|DELETE /api/{type}s/{repo}/branch/{branch}``               `create_branch`, `delete_branch`
``POST /api/{type}s/{repo}/preupload/{rev}``                      `create_commit`: regular or LFS per file
``POST /{repo}.git/info/lfs/objects/batch``                       `create_commit`: LFS batch API (basic)
``PUT  /lfs-upload/{oid}/{ticket}``                               `create_commit`: the LFS bytes (no token)
``POST /{repo}.git/info/lfs/objects/verify``                      `create_commit`: LFS verify
``POST /api/{type}s/{repo}/commit/{rev}``                         `create_commit` (NDJSON), `create_pr`
``HEAD|GET /{repo}/resolve/{rev}/{path}``                         `hf_hub_download` (ETag, Range, ...)
================================================================  ======================================

``{repo}`` is ``namespace/name``; dataset and space repos are prefixed (``datasets/``, ``spaces/``) in
the non-API URLs, as on the Hub. Xet storage is never offered: no Xet headers, no ``xetHash``.

Errors carry the ``X-Error-Code``/``X-Error-Message`` headers that `hf_raise_for_status` maps:
``RepoNotFound`` -> `RepositoryNotFoundError` (401 without a token, 404 with one, also for private repos
the token cannot read), ``RevisionNotFound`` -> `RevisionNotFoundError`, ``EntryNotFound`` ->
`RemoteEntryNotFoundError`. A wrong token gets 401 "Invalid
credentials in Authorization header" on every endpoint, as on the Hub.

Access: ``tokens`` maps each valid token to a user name. A user may read and write repos in their own
namespace and repos they created; anyone may read public repos; writing always needs a valid token.

Reliability hooks: `HubServer.inject_fault` fails, truncates, drops or delays the next requests that match,
and `HubServer.requests` is the log of every request with its headers (to check where tokens went).
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import fnmatch
import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Iterable
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

logger = logging.getLogger(__name__)

# URL segment after /api/ -> repo type, and the prefix of that type in non-API URLs.
API_REPO_TYPES = {"models": "model", "datasets": "dataset", "spaces": "space"}
URL_PREFIXES = {"model": "", "dataset": "datasets/", "space": "spaces/"}

DEFAULT_BRANCH = "main"
# Files above this size are stored with LFS whatever their name (the Hub uses 10 MB).
DEFAULT_LFS_THRESHOLD = 10 * 1024 * 1024
REPO_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
COMMIT_SHA_PATTERN = re.compile(r"^[0-9a-f]{40}$")
SHA256_PATTERN = re.compile(r"^[0-9a-f]{64}$")
INVALID_CREDENTIALS = "Invalid credentials in Authorization header"  # the Hub's exact wording

# The .gitattributes the Hub puts in the first commit of every new repo.
DEFAULT_GITATTRIBUTES = "".join(
    f"{pattern} filter=lfs diff=lfs merge=lfs -text\n"
    for pattern in (
        "*.7z", "*.arrow", "*.bin", "*.bz2", "*.ckpt", "*.ftz", "*.gz", "*.h5", "*.joblib", "*.lfs",
        "*.mlmodel", "*.model", "*.msgpack", "*.npy", "*.npz", "*.onnx", "*.ot", "*.parquet", "*.pb",
        "*.pickle", "*.pkl", "*.pt", "*.pth", "*.rar", "*.safetensors", "saved_model/**/*", "*.tar.*",
        "*.tar", "*.tflite", "*.tgz", "*.wasm", "*.xz", "*.zip", "*.zst", "*tfevents*",
    )
)  # fmt: skip


def _now() -> str:
    """Current time in the Hub's date format (`parse_datetime` expects ``...T..:..:..mmmZ``)."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _git_blob_sha1(data: bytes) -> str:
    """Git object id of a blob (`git hash-object`); the Hub's ETag of a regular file."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _lfs_pointer(oid: str, size: int) -> bytes:
    """The pointer file git stores in place of an LFS file."""
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{oid}\nsize {size}\n".encode()


def _lfs_patterns(gitattributes: str) -> list[str]:
    return [line.split()[0] for line in gitattributes.splitlines() if "filter=lfs" in line and line.split()]


def _matches_any(path: str, patterns: Iterable[str]) -> bool:
    """Gitattributes/gitignore-style match: patterns without a slash match the file name anywhere."""
    name = path.rsplit("/", 1)[-1]
    for pattern in patterns:
        pattern = pattern.strip()
        if not pattern or pattern.startswith("#"):
            continue
        if "/" in pattern.rstrip("/"):
            if fnmatch.fnmatch(path, pattern.lstrip("/").replace("**/", "*")):
                return True
        elif fnmatch.fnmatch(name, pattern.rstrip("/")) or path.startswith(pattern.rstrip("/") + "/"):
            return True
    return False


def _check_path_in_repo(path: str) -> str:
    parts = path.split("/")
    if not path or path.startswith("/") or any(part in ("", ".", "..") for part in parts):
        raise HubError(400, f"Invalid path in repo: {path!r}")
    return path


class HubError(Exception):
    """An error answered to the client: HTTP status, message and the ``X-Error-Code`` the client maps;
    `body` adds fields to the JSON answer ``{"error": message}``."""

    def __init__(
        self,
        status: int,
        message: str,
        error_code: str | None = None,
        headers: dict[str, str] | None = None,
        body: dict[str, Any] | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.message = message
        self.error_code = error_code
        self.headers = headers or {}
        self.body = body or {}


@dataclasses.dataclass(frozen=True)
class FileEntry:
    """One file of a commit: its content's sha256 (the object store key), size and storage kind."""

    sha256: str
    size: int
    lfs: bool
    blob_id: str  # git sha1 of the content (regular) or of the LFS pointer (LFS)

    @classmethod
    def regular(cls, data: bytes) -> FileEntry:
        return cls(hashlib.sha256(data).hexdigest(), len(data), False, _git_blob_sha1(data))

    @classmethod
    def lfs_file(cls, oid: str, size: int) -> FileEntry:
        return cls(oid, size, True, _git_blob_sha1(_lfs_pointer(oid, size)))

    @property
    def etag(self) -> str:
        """What the Hub sends as ETag: sha256 for LFS files, git blob id for regular ones."""
        return self.sha256 if self.lfs else self.blob_id


@dataclasses.dataclass
class Commit:
    sha: str
    parent: str | None
    title: str
    message: str
    author: str
    date: str
    files: dict[str, FileEntry]


@dataclasses.dataclass
class Repo:
    repo_type: str
    repo_id: str
    private: bool
    creator: str
    created_at: str
    branches: dict[str, str] = dataclasses.field(default_factory=dict)
    pull_requests: dict[int, str] = dataclasses.field(default_factory=dict)
    commits: dict[str, Commit] = dataclasses.field(default_factory=dict)

    @property
    def namespace(self) -> str:
        return self.repo_id.split("/")[0]

    def can_write(self, user: str | None) -> bool:
        return user is not None and user in (self.namespace, self.creator)

    def can_read(self, user: str | None) -> bool:
        return not self.private or self.can_write(user)

    def resolve(self, revision: str | None) -> str:
        """Branch, tag, ``refs/heads|tags|pr/...`` or full commit sha -> commit sha."""
        revision = revision or DEFAULT_BRANCH
        if revision.startswith("refs/heads/") and revision[len("refs/heads/") :] in self.branches:
            return self.branches[revision[len("refs/heads/") :]]
        match = re.fullmatch(r"refs/pr/(\d+)", revision)
        if match and int(match[1]) in self.pull_requests:
            return self.pull_requests[int(match[1])]
        if revision in self.branches:
            return self.branches[revision]
        if COMMIT_SHA_PATTERN.match(revision) and revision in self.commits:
            return revision
        raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")

    def history(self, sha: str) -> list[Commit]:
        """Commits reachable from `sha`, newest first."""
        commits = []
        while sha is not None:
            commits.append(self.commits[sha])
            sha = self.commits[sha].parent
        return commits


@dataclasses.dataclass
class Fault:
    """A fault injected with `HubServer.inject_fault`; `hits` counts the requests it has hit so far."""

    method: str | None
    path_contains: str
    kind: str
    times: int
    status: int = 500
    delay_s: float = 0.0
    hits: int = 0

    @property
    def remaining(self) -> int:
        return self.times - self.hits

    def matches(self, method: str, path: str) -> bool:
        return (
            self.remaining > 0
            and (self.method is None or self.method == method)
            and self.path_contains in unquote(path)
        )


@dataclasses.dataclass
class RequestRecord:
    """One request seen by the server. `headers` as sent (names in the client's case), `status` as answered."""

    method: str
    path: str
    query: str
    headers: dict[str, str]
    status: int | None = None

    def header(self, name: str) -> str | None:
        """Case-insensitive header lookup."""
        for key, value in self.headers.items():
            if key.lower() == name.lower():
                return value
        return None


class HubState:
    """Repos, commits and objects, with the Hub's rules; knows nothing about HTTP."""

    def __init__(self, root_dir: str | os.PathLike, lfs_threshold: int = DEFAULT_LFS_THRESHOLD):
        self.root = Path(root_dir)
        self.objects_dir = self.root / "objects"
        self.objects_dir.mkdir(parents=True, exist_ok=True)
        self.lfs_threshold = lfs_threshold
        self.lock = threading.RLock()
        self.repos: dict[tuple[str, str], Repo] = {}
        self.upload_tickets: dict[str, tuple[str, int]] = {}  # ticket -> (oid, size)

    # ----- objects -----
    def object_path(self, sha256: str) -> Path:
        return self.objects_dir / sha256[:2] / sha256

    def has_object(self, sha256: str, size: int | None = None) -> bool:
        path = self.object_path(sha256)
        return path.is_file() and (size is None or path.stat().st_size == size)

    def put_object(self, data: bytes) -> str:
        sha256 = hashlib.sha256(data).hexdigest()
        path = self.object_path(sha256)
        if not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f"{sha256}.{secrets.token_hex(4)}.tmp")
            tmp.write_bytes(data)
            os.replace(tmp, path)
        return sha256

    # ----- repos -----
    def get_repo(self, repo_type: str, repo_id: str, user: str | None) -> Repo:
        """The repo if `user` may read it. Missing and private look the same, as on the Hub."""
        repo = self.repos.get((repo_type, repo_id))
        if repo is None or not repo.can_read(user):
            raise HubError(401 if user is None else 404, "Repository not found", "RepoNotFound")
        return repo

    def get_repo_for_write(self, repo_type: str, repo_id: str, user: str | None) -> Repo:
        repo = self.get_repo(repo_type, repo_id, user)
        if user is None:
            raise HubError(401, "You must be authenticated to write to this repo")
        if not repo.can_write(user):
            raise HubError(403, f"You don't have the rights to write to {repo_type}s/{repo_id}")
        return repo

    def create_repo(self, repo_type: str, repo_id: str, private: bool, user: str) -> tuple[Repo, bool]:
        """Create the repo with the Hub's initial commit (a .gitattributes); returns (repo, created)."""
        with self.lock:
            if (repo_type, repo_id) in self.repos:
                return self.repos[(repo_type, repo_id)], False
            repo = Repo(repo_type, repo_id, private, creator=user, created_at=_now())
            data = DEFAULT_GITATTRIBUTES.encode()
            self.put_object(data)
            commit = self._new_commit(
                repo, None, {".gitattributes": FileEntry.regular(data)}, "initial commit", "", user
            )
            repo.branches[DEFAULT_BRANCH] = commit.sha
            self.repos[(repo_type, repo_id)] = repo
            return repo, True

    def _new_commit(
        self,
        repo: Repo,
        parent: str | None,
        files: dict[str, FileEntry],
        title: str,
        message: str,
        author: str,
    ) -> Commit:
        date = _now()
        tree = sorted((p, f.sha256) for p, f in files.items())
        sha = hashlib.sha1(json.dumps([parent, tree, title, message, author, date, time.time_ns()]).encode())
        commit = Commit(sha.hexdigest(), parent, title, message, author, date, dict(files))
        repo.commits[commit.sha] = commit
        return commit

    def upload_mode(self, files: dict[str, FileEntry], path: str, size: int, sample: bytes) -> str:
        """``"lfs"`` for files the repo's .gitattributes tracks, big files and binary files; else ``"regular"``."""
        attributes = files.get(".gitattributes")
        patterns = _lfs_patterns(self.read(attributes).decode(errors="replace")) if attributes else []
        if size > self.lfs_threshold or b"\0" in sample or _matches_any(path, patterns):
            return "lfs"
        return "regular"

    def read(self, entry: FileEntry) -> bytes:
        return self.object_path(entry.sha256).read_bytes()

    def commit(
        self,
        repo: Repo,
        revision: str,
        lines: list[dict],
        user: str,
        create_pr: bool = False,
    ) -> tuple[Commit, int | None]:
        """Apply the NDJSON lines of `create_commit` on top of branch `revision`; returns (commit, pr number)."""
        header = next((line["value"] for line in lines if line.get("key") == "header"), None)
        if header is None or not header.get("summary"):
            raise HubError(400, "Commit header with a summary is required")
        # Store the new contents before taking the lock: objects are immutable and content-addressed.
        operations = []
        for line in lines:
            key, value = line.get("key"), line.get("value", {})
            if key == "header":
                continue
            raw_path = str(value.get("path", ""))
            path = _check_path_in_repo(raw_path.rstrip("/") if key == "deletedFolder" else raw_path)
            if key == "file":
                raw = value.get("content", "")
                data = base64.b64decode(raw) if value.get("encoding") == "base64" else raw.encode()
                self.put_object(data)
                operations.append((key, path, FileEntry.regular(data)))
            elif key == "lfsFile":
                oid = value.get("oid", "")
                if value.get("algo", "sha256") != "sha256" or not self.has_object(oid):
                    raise HubError(422, f"LFS file {path} was not uploaded (oid {oid})")
                operations.append((key, path, FileEntry.lfs_file(oid, self.object_path(oid).stat().st_size)))
            elif key in ("deletedFile", "deletedFolder"):
                operations.append((key, path, None))
            else:
                raise HubError(400, f"Unknown commit operation: {key!r}")

        with self.lock:
            revision = revision.removeprefix("refs/heads/")
            is_pr_ref = re.fullmatch(r"refs/pr/(\d+)", revision)
            if not create_pr and not is_pr_ref and revision not in repo.branches:
                repo.resolve(revision)  # RevisionNotFound for unknown revisions
                raise HubError(400, f"Invalid revision {revision}: commits can only be pushed to a branch")
            parent = repo.resolve(revision)
            base = repo.commits[parent]
            if parent_commit := header.get("parentCommit"):  # a full sha or a prefix of one
                if not create_pr and not parent.startswith(parent_commit):
                    raise HubError(412, "A commit has happened since. Please refresh and try again.")
                matches = [sha for sha in repo.commits if sha.startswith(parent_commit)]
                if len(matches) != 1:
                    raise HubError(400, f"Unknown parent commit {parent_commit}")
                base = repo.commits[matches[0]]
            files = dict(base.files)
            for key, path, entry in operations:
                if key in ("file", "lfsFile"):
                    files[path] = entry
                elif key == "deletedFile":
                    if path not in files:
                        raise HubError(404, f"A file with this name doesn't exist: {path}", "EntryNotFound")
                    del files[path]
                else:
                    inside = [p for p in files if p.startswith(path + "/")]
                    if not inside:
                        raise HubError(404, f"A folder with this name doesn't exist: {path}", "EntryNotFound")
                    for p in inside:
                        del files[p]
            commit = self._new_commit(
                repo, base.sha, files, header["summary"], header.get("description", ""), user
            )
            pr_number = None
            if create_pr:
                pr_number = max(repo.pull_requests, default=0) + 1
                repo.pull_requests[pr_number] = commit.sha
            elif is_pr_ref:
                repo.pull_requests[int(is_pr_ref[1])] = commit.sha
            else:
                repo.branches[revision] = commit.sha
            return commit, pr_number


def _directories(files: Iterable[str]) -> set[str]:
    return {path.rsplit("/", i)[0] for path in files for i in range(1, path.count("/") + 1)}


class _HubRequestHandler(BaseHTTPRequestHandler):
    """Parses one request, routes it to a ``_<endpoint>`` method, answers JSON or file bytes."""

    protocol_version = "HTTP/1.1"  # keep-alive: the client pools connections
    server_version = "vq-tokenizer-hub/1.0"
    timeout = 60  # an idle keep-alive connection frees its thread after this
    server: _HTTPServer

    # ----- plumbing -----
    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("%s " + format, self.address_string(), *args)

    def do_GET(self) -> None:
        self._handle()

    do_HEAD = do_POST = do_PUT = do_DELETE = do_GET

    def _handle(self) -> None:
        hub = self.server.hub
        split = urlsplit(self.path)
        self.query = parse_qs(split.query)
        self.body = self._read_body()
        self.record = RequestRecord(self.command, split.path, split.query, dict(self.headers.items()))
        self.truncate_fault: Fault | None = None
        try:
            fault = hub._take_fault(self.command, split.path)
            if fault is not None and fault.kind == "truncate":
                self.truncate_fault = fault
            elif fault is not None and fault.kind == "delay":
                time.sleep(fault.delay_s)
            elif fault is not None and fault.kind == "disconnect":
                self.close_connection = True
                return
            elif fault is not None:
                raise HubError(fault.status, f"Injected fault ({fault.status})")
            self.user = self._authenticate()
            self._route([unquote(part) for part in split.path.split("/")[1:]])
        except HubError as error:
            self._send_error(error)
        except (ConnectionError, TimeoutError):
            self.close_connection = True
        except Exception as error:  # a bug here must reach the client as a 500, not hang it
            logger.exception("Hub server error on %s %s", self.command, self.path)
            self._send_error(HubError(500, f"Internal error: {type(error).__name__}: {error}"))
        finally:
            hub._log_request(self.record)

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks = []
            while (size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)) > 0:
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            while self.rfile.readline() not in (b"\r\n", b"\n", b""):  # trailers
                pass
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _authenticate(self) -> str | None:
        """User of the bearer token; None without one; 401 for a token the server does not know."""
        authorization = self.headers.get("Authorization")
        if not authorization:
            return None
        scheme, _, token = authorization.partition(" ")
        user = self.server.hub.tokens.get(token.strip()) if scheme.lower() == "bearer" else None
        if user is None:
            raise HubError(401, INVALID_CREDENTIALS)
        return user

    def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        """Answer; the whole body unless a truncate fault cuts it (full Content-Length, then close)."""
        self.record.status = status
        self.send_response(status)
        headers = {"Content-Type": "application/json", **(headers or {})}
        headers.setdefault("Content-Length", str(len(body)))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        if self.command == "HEAD":
            return
        if (
            self.truncate_fault is not None
            and len(body) > 1
            and self.server.hub._consume(self.truncate_fault)
        ):
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body)

    def _send_json(self, data: Any, status: int = 200, headers: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps(data).encode(), headers)

    def _send_error(self, error: HubError) -> None:
        header_safe = " ".join(error.message.encode("latin-1", "replace").decode("latin-1").split())
        headers = {"X-Error-Message": header_safe, **error.headers}
        if error.error_code:
            headers["X-Error-Code"] = error.error_code
        self._send_json({"error": error.message, **error.body}, error.status, headers)

    def _json_body(self) -> Any:
        try:
            return json.loads(self.body or b"{}")
        except json.JSONDecodeError as error:
            raise HubError(400, f"Invalid JSON body: {error}") from None

    def _repo_url(self, repo: Repo) -> str:
        return f"{self.server.hub.url}/{URL_PREFIXES[repo.repo_type]}{repo.repo_id}"

    # ----- routing -----
    def _route(self, parts: list[str]) -> None:
        method = self.command
        if parts[:1] == ["api"]:
            if parts == ["api", "whoami-v2"] and method == "GET":
                return self._whoami()
            if parts == ["api", "validate-yaml"] and method == "POST":
                return self._validate_yaml()
            if parts == ["api", "agent-harnesses"] and method == "GET":
                # Fetched once by the client to tag its user-agent; an empty registry detects nothing.
                return self._send_json({"standardEnvVars": [], "harnesses": {}})
            if parts == ["api", "repos", "create"] and method == "POST":
                return self._create_repo()
            if len(parts) >= 4 and parts[1] in API_REPO_TYPES:
                return self._route_repo_api(API_REPO_TYPES[parts[1]], f"{parts[2]}/{parts[3]}", parts[4:])
        elif parts[:1] == ["lfs-upload"] and len(parts) == 3 and method == "PUT":
            return self._lfs_upload(parts[1], parts[2])
        else:
            repo_type = "model"
            if parts[:1] in (["datasets"], ["spaces"]):
                repo_type, parts = API_REPO_TYPES[parts[0]], parts[1:]
            if len(parts) >= 4 and parts[2] == "resolve" and method in ("GET", "HEAD"):
                return self._resolve(repo_type, f"{parts[0]}/{parts[1]}", parts[3], "/".join(parts[4:]))
            if (
                len(parts) == 6
                and parts[1].endswith(".git")
                and parts[2:5] == ["info", "lfs", "objects"]
                and method == "POST"
            ):
                repo_id = f"{parts[0]}/{parts[1][: -len('.git')]}"
                if parts[5] == "batch":
                    return self._lfs_batch(repo_type, repo_id)
                if parts[5] == "verify":
                    return self._lfs_verify(repo_type, repo_id)
        raise HubError(404, f"No route for {method} {self.path}")

    def _route_repo_api(self, repo_type: str, repo_id: str, rest: list[str]) -> None:
        method = self.command
        action, args = (rest[0], rest[1:]) if rest else ("", [])
        if method == "GET" and (action, len(args)) in (("", 0), ("revision", 1)):
            return self._repo_info(repo_type, repo_id, args[0] if args else None)
        if method == "GET" and action == "tree" and args:
            return self._tree(repo_type, repo_id, args[0], "/".join(args[1:]))
        if method == "POST" and action == "paths-info" and len(args) == 1:
            return self._paths_info(repo_type, repo_id, args[0])
        if method == "GET" and action == "refs" and not args:
            return self._refs(repo_type, repo_id)
        if method == "GET" and action == "commits" and len(args) == 1:
            return self._commits(repo_type, repo_id, args[0])
        if method in ("POST", "DELETE") and action == "branch" and len(args) == 1:
            return self._branch(repo_type, repo_id, args[0])
        if method == "POST" and action == "preupload" and len(args) == 1:
            return self._preupload(repo_type, repo_id, args[0])
        if method == "POST" and action == "commit" and len(args) == 1:
            return self._commit(repo_type, repo_id, args[0])
        raise HubError(404, f"No route for {method} {self.path}")

    # ----- account and repos -----
    def _whoami(self) -> None:
        """`HfApi.whoami`."""
        if self.user is None:
            raise HubError(401, INVALID_CREDENTIALS)
        self._send_json(
            {
                "type": "user",
                "id": hashlib.sha1(self.user.encode()).hexdigest()[:24],
                "name": self.user,
                "fullname": self.user,
                "orgs": [],
                "auth": {
                    "type": "access_token",
                    "accessToken": {"displayName": "test token", "role": "write"},
                },
            }
        )

    def _validate_yaml(self) -> None:
        """`create_commit` of a README.md: its metadata block must be a YAML mapping (checked when
        PyYAML is installed; the block's delimiters always)."""
        content = str(self._json_body().get("content", ""))
        errors = []
        if content.startswith("---"):
            block, closed, _ = content[3:].partition("\n---")
            if not closed:
                errors.append({"message": "The metadata block opened with '---' is never closed"})
            else:
                try:
                    import yaml

                    if not isinstance(yaml.safe_load(block), (dict, type(None))):
                        errors.append({"message": "The metadata must be a YAML mapping"})
                except ImportError:
                    pass
                except yaml.YAMLError as error:
                    errors.append({"message": f"Invalid YAML: {error}"})
        self._send_json({"errors": errors, "warnings": []}, status=400 if errors else 200)

    def _create_repo(self) -> None:
        """`create_repo`: 200 with the url, 409 if it exists (the client's ``exist_ok`` swallows that)."""
        if self.user is None:
            raise HubError(401, "You must be authenticated to create a repo")
        payload = self._json_body()
        name, namespace = payload.get("name") or "", payload.get("organization") or self.user
        if not (REPO_NAME_PATTERN.match(name) and REPO_NAME_PATTERN.match(namespace)) or ".." in name:
            raise HubError(400, f"Invalid repo name: {namespace}/{name}")
        repo_type = payload.get("type") or "model"
        if repo_type not in URL_PREFIXES:
            raise HubError(400, f"Invalid repo type: {repo_type}")
        private = payload.get("visibility", "private" if payload.get("private") else "public") == "private"
        repo, created = self.server.hub.state.create_repo(
            repo_type, f"{namespace}/{name}", private, self.user
        )
        if not created:
            # The client's `exist_ok=True` reads the url from this 409 answer.
            raise HubError(
                409, f"You already created this {repo_type} repo", body={"url": self._repo_url(repo)}
            )
        self._send_json({"url": self._repo_url(repo), "name": repo.repo_id, "id": repo.repo_id})

    def _repo_info(self, repo_type: str, repo_id: str, revision: str | None) -> None:
        """`repo_info`/`model_info`/`dataset_info` (``?blobs=true`` adds sizes and LFS info to siblings)."""
        state = self.server.hub.state
        with state.lock:
            repo = state.get_repo(repo_type, repo_id, self.user)
            commit = repo.commits[repo.resolve(revision)]
        blobs = self.query.get("blobs", ["false"])[0].lower() in ("1", "true")
        siblings = []
        for path, entry in sorted(commit.files.items()):
            sibling: dict[str, Any] = {"rfilename": path}
            if blobs:
                sibling.update(size=entry.size, blobId=entry.blob_id)
                if entry.lfs:
                    pointer_size = len(_lfs_pointer(entry.sha256, entry.size))
                    sibling["lfs"] = {"size": entry.size, "sha256": entry.sha256, "pointerSize": pointer_size}
            siblings.append(sibling)
        info = {
            "_id": hashlib.sha1(f"{repo_type}/{repo_id}".encode()).hexdigest()[:24],
            "id": repo_id,
            "author": repo.namespace,
            "sha": commit.sha,
            "lastModified": commit.date,
            "createdAt": repo.created_at,
            "private": repo.private,
            "gated": False,
            "disabled": False,
            "downloads": 0,
            "likes": 0,
            "tags": [],
            "siblings": siblings,
            "usedStorage": sum(entry.size for entry in commit.files.values()),
        }
        if repo_type == "model":
            info["modelId"] = repo_id
        self._send_json(info)

    # ----- listing -----
    def _entry_json(self, repo: Repo, commit: Commit, path: str, expand: bool) -> dict:
        entry = commit.files.get(path)
        if entry is None:  # a directory
            inside = sorted(f"{p}:{e.blob_id}" for p, e in commit.files.items() if p.startswith(path + "/"))
            data: dict[str, Any] = {
                "type": "directory",
                "oid": hashlib.sha1("\n".join(inside).encode()).hexdigest(),
                "size": 0,
                "path": path,
            }
        else:
            data = {"type": "file", "oid": entry.blob_id, "size": entry.size, "path": path}
            if entry.lfs:
                data["lfs"] = {
                    "oid": entry.sha256,
                    "size": entry.size,
                    "pointerSize": len(_lfs_pointer(entry.sha256, entry.size)),
                }
        if expand:
            last = self._last_commit_touching(repo, commit, path)
            data["lastCommit"] = {"id": last.sha, "title": last.title, "date": last.date}
        return data

    @staticmethod
    def _last_commit_touching(repo: Repo, commit: Commit, path: str) -> Commit:
        def snapshot(c: Commit) -> list:
            return sorted((p, e.sha256) for p, e in c.files.items() if p == path or p.startswith(path + "/"))

        current = snapshot(commit)
        while commit.parent is not None and snapshot(repo.commits[commit.parent]) == current:
            commit = repo.commits[commit.parent]
        return commit

    def _tree(self, repo_type: str, repo_id: str, revision: str, path: str) -> None:
        """`list_repo_tree` (``?recursive=true``), hence `list_repo_files` and `snapshot_download`."""
        state = self.server.hub.state
        recursive = self.query.get("recursive", ["false"])[0].lower() in ("1", "true")
        expand = self.query.get("expand", ["false"])[0].lower() in ("1", "true")
        with state.lock:
            repo = state.get_repo(repo_type, repo_id, self.user)
            commit = repo.commits[repo.resolve(revision)]
            path = path.strip("/")
            directories = _directories(commit.files)
            if path and path not in directories:
                raise HubError(404, f"{path} does not exist on {revision}", "EntryNotFound")
            prefix = f"{path}/" if path else ""
            candidates = sorted(directories | set(commit.files))
            selected = [
                p for p in candidates if p.startswith(prefix) and (recursive or "/" not in p[len(prefix) :])
            ]
            self._send_json([self._entry_json(repo, commit, p, expand) for p in selected])

    def _paths_info(self, repo_type: str, repo_id: str, revision: str) -> None:
        """`get_paths_info` (form body ``paths=...&paths=...&expand=...``)."""
        state = self.server.hub.state
        form = parse_qs(self.body.decode())
        if "application/json" in self.headers.get("Content-Type", ""):
            form = {k: v if isinstance(v, list) else [v] for k, v in self._json_body().items()}
        expand = str(form.get("expand", ["false"])[0]).lower() in ("1", "true")
        with state.lock:
            repo = state.get_repo(repo_type, repo_id, self.user)
            commit = repo.commits[repo.resolve(revision)]
            known = _directories(commit.files) | set(commit.files)
            paths = [str(p).strip("/") for p in form.get("paths", [])]
            self._send_json([self._entry_json(repo, commit, p, expand) for p in paths if p in known])

    def _refs(self, repo_type: str, repo_id: str) -> None:
        """`list_repo_refs`."""
        state = self.server.hub.state
        with state.lock:
            repo = state.get_repo(repo_type, repo_id, self.user)

            def refs(kind: str, mapping: dict) -> list[dict]:
                return [
                    {"name": str(k), "ref": f"refs/{kind}/{k}", "targetCommit": v} for k, v in mapping.items()
                ]

            data = {"branches": refs("heads", repo.branches), "tags": [], "converts": []}
            if self.query.get("include_prs"):
                data["pullRequests"] = refs("pr", repo.pull_requests)
            self._send_json(data)

    def _commits(self, repo_type: str, repo_id: str, revision: str) -> None:
        """`list_repo_commits`, newest first."""
        state = self.server.hub.state
        with state.lock:
            repo = state.get_repo(repo_type, repo_id, self.user)
            history = repo.history(repo.resolve(revision))
        self._send_json(
            [
                {
                    "id": c.sha,
                    "authors": [{"user": c.author}],
                    "date": c.date,
                    "title": c.title,
                    "message": c.message,
                }
                for c in history
            ]
        )

    # ----- refs -----
    def _branch(self, repo_type: str, repo_id: str, branch: str) -> None:
        """`create_branch` (409 if it exists; ``startingPoint`` defaults to main) and `delete_branch`."""
        state = self.server.hub.state
        with state.lock:
            repo = state.get_repo_for_write(repo_type, repo_id, self.user)
            if self.command == "DELETE":
                if branch == DEFAULT_BRANCH:
                    raise HubError(403, "Cannot delete the default branch")
                if branch not in repo.branches:
                    raise HubError(404, f"Branch {branch} not found", "RevisionNotFound")
                del repo.branches[branch]
            else:
                if branch in repo.branches:
                    raise HubError(409, f"Branch {branch} already exists")
                if branch.startswith("refs/") or not re.fullmatch(r"[\w.\-/]+", branch):
                    raise HubError(400, f"Invalid branch name: {branch}")
                repo.branches[branch] = repo.resolve(self._json_body().get("startingPoint"))
        self._send_json({})

    # ----- upload -----
    def _preupload(self, repo_type: str, repo_id: str, revision: str) -> None:
        """First step of `create_commit`: upload mode per file, and the oid of the file already there."""
        state = self.server.hub.state
        payload = self._json_body()
        with state.lock:
            repo = state.get_repo_for_write(repo_type, repo_id, self.user)
            commit = repo.commits[repo.resolve(revision)]
            files = dict(commit.files)
        gitignore = payload.get("gitIgnore")
        if gitignore is None and ".gitignore" in files:
            gitignore = state.read(files[".gitignore"]).decode(errors="replace")
        answer = []
        for item in payload.get("files", []):
            path, size = item["path"], int(item.get("size", 0))
            mode = state.upload_mode(files, path, size, base64.b64decode(item.get("sample", "")))
            existing = files.get(path)
            oid = None
            if existing is not None:
                oid = existing.sha256 if mode == "lfs" else existing.blob_id
            answer.append(
                {
                    "path": path,
                    "uploadMode": mode,
                    "shouldIgnore": bool(gitignore) and _matches_any(path, gitignore.splitlines()),
                    "oid": oid,
                }
            )
        self._send_json({"files": answer, "commitOid": commit.sha})

    def _lfs_batch(self, repo_type: str, repo_id: str) -> None:
        """LFS batch API, basic transfer: an upload href (signed with a ticket, no token needed) per object
        the server lacks, plus a verify href. Objects it already has get no actions."""
        hub, state = self.server.hub, self.server.hub.state
        repo = state.get_repo_for_write(repo_type, repo_id, self.user)
        payload = self._json_body()
        if payload.get("operation") != "upload":
            raise HubError(422, "Only the 'upload' operation is supported")
        objects = []
        for obj in payload.get("objects", []):
            oid, size = str(obj.get("oid", "")), int(obj.get("size", 0))
            answer: dict[str, Any] = {"oid": oid, "size": size, "authenticated": True}
            if not SHA256_PATTERN.match(oid):
                answer["error"] = {"code": 422, "message": f"Invalid oid: {oid}"}
            elif not state.has_object(oid, size):
                ticket = secrets.token_urlsafe(16)
                with state.lock:
                    state.upload_tickets[ticket] = (oid, size)
                verify_url = f"{self._repo_url(repo)}.git/info/lfs/objects/verify"
                answer["actions"] = {
                    "upload": {"href": f"{hub.url}/lfs-upload/{oid}/{ticket}", "header": {}},
                    "verify": {"href": verify_url, "header": {}},
                }
            objects.append(answer)
        self._send_json(
            {"transfer": "basic", "objects": objects},
            headers={"Content-Type": "application/vnd.git-lfs+json"},
        )

    def _lfs_upload(self, oid: str, ticket: str) -> None:
        """The PUT of an LFS object to the href the batch API gave (the client sends no token here)."""
        state = self.server.hub.state
        with state.lock:
            expected = state.upload_tickets.get(ticket)
        if expected is None or expected[0] != oid:
            raise HubError(403, "Invalid or expired upload url")
        if len(self.body) != expected[1] or hashlib.sha256(self.body).hexdigest() != oid:
            raise HubError(400, f"Uploaded content does not match oid {oid} and size {expected[1]}")
        state.put_object(self.body)
        self._send(200, b"", {"ETag": f'"{oid}"'})

    def _lfs_verify(self, repo_type: str, repo_id: str) -> None:
        """LFS verify: the object is stored with the announced size."""
        state = self.server.hub.state
        state.get_repo_for_write(repo_type, repo_id, self.user)
        payload = self._json_body()
        if not state.has_object(str(payload.get("oid", "")), payload.get("size")):
            raise HubError(404, f"Object {payload.get('oid')} not found")
        self._send_json({"success": True}, headers={"Content-Type": "application/vnd.git-lfs+json"})

    def _commit(self, repo_type: str, repo_id: str, revision: str) -> None:
        """`create_commit`: the NDJSON body (header, file, lfsFile, deletedFile, deletedFolder lines)."""
        state = self.server.hub.state
        repo = state.get_repo_for_write(repo_type, repo_id, self.user)
        try:
            lines = [json.loads(line) for line in self.body.decode().splitlines() if line.strip()]
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise HubError(400, f"Invalid NDJSON body: {error}") from None
        create_pr = self.query.get("create_pr", ["0"])[0] in ("1", "true")
        commit, pr_number = state.commit(repo, revision, lines, self.user, create_pr)
        answer = {
            "success": True,
            "commitOid": commit.sha,
            "commitUrl": f"{self._repo_url(repo)}/commit/{commit.sha}",
            "hookOutput": "",
        }
        if pr_number is not None:
            answer["pullRequestUrl"] = f"{self._repo_url(repo)}/discussions/{pr_number}"
        self._send_json(answer)

    # ----- download -----
    def _resolve(self, repo_type: str, repo_id: str, revision: str, path: str) -> None:
        """`hf_hub_download`: HEAD for metadata, GET for bytes (``Range: bytes=a-b`` gives 206).

        Headers the client reads: ``X-Repo-Commit`` (also on EntryNotFound, to cache the miss), ``ETag``
        (sha256 for LFS files, git blob id otherwise), ``X-Linked-Etag``/``X-Linked-Size`` for LFS files,
        ``Content-Length``.
        """
        state = self.server.hub.state
        with state.lock:
            repo = state.get_repo(repo_type, repo_id, self.user)
            sha = repo.resolve(revision)
            entry = repo.commits[sha].files.get(path)
        if entry is None:
            raise HubError(404, "Entry not found", "EntryNotFound", headers={"X-Repo-Commit": sha})
        headers = {
            "Content-Type": "application/octet-stream",
            "X-Repo-Commit": sha,
            "ETag": f'"{entry.etag}"',
            "Accept-Ranges": "bytes",
            "Content-Disposition": f'inline; filename="{path.rsplit("/", 1)[-1]}"',
        }
        if entry.lfs:
            headers.update({"X-Linked-Etag": f'"{entry.sha256}"', "X-Linked-Size": str(entry.size)})
        status, start, end = 200, 0, entry.size
        range_header = self.headers.get("Range")
        if range_header and self.command == "GET":
            match = re.fullmatch(r"bytes=(\d*)-(\d*)", range_header.strip())
            if match is None or match.groups() == ("", ""):
                raise HubError(
                    416, f"Invalid range {range_header}", headers={"Content-Range": f"bytes */{entry.size}"}
                )
            if match[1]:
                start, end = int(match[1]), min(int(match[2]) + 1 if match[2] else entry.size, entry.size)
            else:  # suffix range: the last N bytes
                start = max(entry.size - int(match[2]), 0)
            if start >= end:
                raise HubError(
                    416,
                    f"Range {range_header} not satisfiable",
                    headers={"Content-Range": f"bytes */{entry.size}"},
                )
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end - 1}/{entry.size}"
        body = b""
        if self.command == "GET":
            with open(state.object_path(entry.sha256), "rb") as file:
                file.seek(start)
                body = file.read(end - start)
        headers["Content-Length"] = str(end - start)
        self._send(status, body, headers)


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 64  # snapshot_download opens several connections at once
    hub: HubServer


class HubServer:
    """The server: `start()`/`stop()` (or a ``with`` block), `url`, fault injection and the request log.

    Args:
        root_dir: where repos and objects are stored; a temporary folder (deleted on `stop`) if None.
        tokens: valid tokens -> user name, e.g. ``{"hf_test_token": "user"}``.
        host, port: where to listen; port 0 picks a free one.
        lfs_threshold: files above this many bytes go through LFS whatever their name.
    """

    def __init__(
        self,
        root_dir: str | os.PathLike | None = None,
        tokens: dict[str, str] | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        lfs_threshold: int = DEFAULT_LFS_THRESHOLD,
    ):
        self._tmp_dir = tempfile.mkdtemp(prefix="hub-server-") if root_dir is None else None
        self.root_dir = Path(root_dir if root_dir is not None else self._tmp_dir)
        self.tokens = dict(tokens or {})
        self.host, self.port = host, port
        self.state = HubState(self.root_dir, lfs_threshold=lfs_threshold)
        self._faults: list[Fault] = []
        self._requests: list[RequestRecord] = []
        self._meta_lock = threading.Lock()
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:54321``: what ``HF_ENDPOINT`` must be."""
        return f"http://{self.host}:{self.port}"

    def start(self) -> HubServer:
        if self._httpd is not None:
            return self
        self._httpd = _HTTPServer((self.host, self.port), _HubRequestHandler)
        self._httpd.hub = self
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, args=(0.05,), name="hub-server", daemon=True
        )
        self._thread.start()
        logger.info("Hub server listening on %s (data in %s)", self.url, self.root_dir)
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        if self._tmp_dir is not None:
            shutil.rmtree(self._tmp_dir, ignore_errors=True)

    def __enter__(self) -> HubServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # ----- reliability hooks -----
    def inject_fault(
        self,
        method: str | None = None,
        path_contains: str = "",
        kind: str = "500",
        times: int = 1,
        status: int | None = None,
        delay_s: float = 1.0,
    ) -> Fault:
        """Make the next `times` requests matching `method` (None: any) and `path_contains` (a substring of
        the unquoted URL path, e.g. ``"resolve"``, ``"/commit/"``, ``"lfs-upload"``) misbehave:

        - ``"500"`` (or ``"error"`` with `status`): answer that status, nothing done;
        - ``"truncate"``: send the headers with the full Content-Length, half the body, then close;
          counts only answers with a body (a HEAD passes through);
        - ``"disconnect"``: close the connection without answering;
        - ``"delay"``: wait `delay_s` seconds, then answer normally.

        Faults are tried in the order they were injected; the first one that matches takes the request.
        """
        if kind not in ("500", "error", "truncate", "disconnect", "delay"):
            raise ValueError(f"Unknown fault kind {kind!r}")
        status = status if status is not None else 500
        fault = Fault(method and method.upper(), path_contains, kind, times, status, delay_s)
        with self._meta_lock:
            self._faults.append(fault)
        return fault

    def clear_faults(self) -> None:
        with self._meta_lock:
            self._faults.clear()

    def _take_fault(self, method: str, path: str) -> Fault | None:
        """First matching fault; counted now, except truncation, counted when a body is cut."""
        with self._meta_lock:
            for fault in self._faults:
                if fault.matches(method, path):
                    if fault.kind != "truncate":
                        fault.hits += 1
                    return fault
        return None

    def _consume(self, fault: Fault) -> bool:
        with self._meta_lock:
            if fault.remaining <= 0:
                return False
            fault.hits += 1
            return True

    # ----- request log -----
    @property
    def requests(self) -> list[RequestRecord]:
        """Every request so far (a copy), oldest first."""
        with self._meta_lock:
            return list(self._requests)

    def clear_requests(self) -> None:
        with self._meta_lock:
            self._requests.clear()

    def _log_request(self, record: RequestRecord) -> None:
        with self._meta_lock:
            self._requests.append(record)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Run a local Hugging Face Hub-compatible server.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--root-dir", default=None, help="where to store repos (default: a temporary folder)")
    parser.add_argument(
        "--token", action="append", default=[], metavar="TOKEN=USER", help="a valid token and its user"
    )
    args = parser.parse_args(argv)
    tokens = dict(item.split("=", 1) for item in args.token) or {"hf_test_token": "user"}
    logging.basicConfig(level=logging.INFO)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # `kill` also runs the cleanup below
    server = HubServer(args.root_dir, tokens=tokens, host=args.host, port=args.port).start()
    print(f"Hub server on {server.url}  (export HF_ENDPOINT={server.url} HF_HUB_DISABLE_XET=1)", flush=True)
    print(f"Tokens: {', '.join(f'{t} -> {u}' for t, u in tokens.items())}", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()


if __name__ == "__main__":
    main()
