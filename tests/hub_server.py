"""A tiny fake Hugging Face Hub HTTP server for tests (standard library only).

``FakeHub`` serves, on ``127.0.0.1`` and a free port, from a background thread
(``ThreadingHTTPServer``), every endpoint that the real ``huggingface_hub``
client (checked against 2.4.0) calls for ``snapshot_download`` and
``hf_hub_download``, for model and dataset repos::

    GET  /api/{models|datasets}/{repo_id}                        repo info at the default branch ("main")
    GET  /api/{models|datasets}/{repo_id}/revision/{revision}    repo info: {"id", "sha", "siblings", ...}
    GET  /api/{models|datasets}/{repo_id}/tree/{revision}[/{path}]?recursive=true
                                                                 file listing ("type", "oid", "size", "path", "lfs")
    HEAD /{repo_id}/resolve/{revision}/{filename}                metadata headers only
    GET  /{repo_id}/resolve/{revision}/{filename}                content; honours ``Range`` (206 + Content-Range)
    HEAD|GET /datasets/{repo_id}/resolve/{revision}/{filename}   same, for dataset repos

``revision`` may be a branch, a tag or a full 40-hex commit sha (URL-quoted,
as the client sends it). Resolve responses carry ``X-Repo-Commit``, ``ETag``,
``Content-Length`` and ``Accept-Ranges: bytes``; LFS-like files (see
``LFS_SUFFIXES``, or anything >= 10 MiB) also carry ``X-Linked-Etag`` (the
sha256 of the content) and ``X-Linked-Size``, while small text files get a git
blob sha1 as ETag, exactly like the real Hub. So the client stores blobs under
``<cache>/models--org--name/blobs/<etag>``, writes ``refs/<branch>`` and
links ``snapshots/<sha>/<file>``. Files are served directly (no redirect to a
CDN host). Unknown repo / revision / file answers 404 with
``X-Error-Code: RepoNotFound`` / ``RevisionNotFound`` / ``EntryNotFound``, so
the client raises ``RepositoryNotFoundError`` / ``RevisionNotFoundError`` /
``RemoteEntryNotFoundError``. Any other request gets a plain 404 (and is
logged, so a test can see it).

No ``X-Xet-*`` header and no ``xetHash`` field is ever sent, so the client
(even with ``hf_xet`` installed) always uses plain HTTP downloads:
``HF_HUB_DISABLE_XET`` is not needed.

Using it from a subprocess (the usual way: ``huggingface_hub.constants`` reads
the environment once, at import time)::

    with FakeHub() as hub:
        sha = hub.add_commit("org/model", {"config.json": b"{}"})
        env = {**os.environ, "HF_ENDPOINT": hub.url, "HF_HOME": str(tmp),
               "HF_HUB_CACHE": str(tmp / "hub"), "HF_HUB_DISABLE_TELEMETRY": "1",
               "NO_PROXY": "127.0.0.1,localhost"}
        env.pop("HF_TOKEN", None)
        subprocess.run([sys.executable, "-m", "vlm_cli", ...], env=env, check=True)

Using it in-process: ``snapshot_download``, ``hf_hub_download``, ``HfApi`` and
the module-level API functions all accept ``endpoint=hub.url`` (pass
``cache_dir=`` too, to keep the user's cache clean)::

    snapshot_download("org/model", endpoint=hub.url, cache_dir=tmp_path)

For code that does not expose ``endpoint`` (e.g. transformers'
``from_pretrained``), monkeypatch the constants the client reads at call time::

    from huggingface_hub import constants
    monkeypatch.setattr(constants, "ENDPOINT", hub.url)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE",
                        hub.url + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))  # only read as a default
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)          # offline mode, if wanted

(``huggingface_hub.hf_api.api``, the ``HfApi`` behind module-level functions
such as ``huggingface_hub.model_info``, froze its endpoint at import time: pass
``endpoint=`` to those.)

Fault injection (one-shot, per file path in the repo, any repo):

* ``interrupt_next(filename, after_bytes)``: the next GET announces the full
  ``Content-Length`` but sends only ``after_bytes`` of the body, then drops
  the connection. huggingface_hub 2.4.0 retries by itself (inside the same
  call, after a 1 s sleep): with ``Range: bytes=N-`` when it had already
  written N > 0 bytes to its temporary file, else from scratch. It reads in
  10 MiB chunks (``DOWNLOAD_CHUNK_SIZE``), so bytes of an unfinished chunk
  are lost: a file smaller than 10 MiB is simply re-downloaded without
  ``Range``.
* ``truncate_next(filename, keep_bytes)``: the next GET is a well-formed but
  short response (``Content-Length: keep_bytes`` and ``keep_bytes`` of body),
  while HEAD announced the full size. The client raises
  ``OSError("Consistency check failed: file should be of size ...")`` and
  deletes its temporary ``*.incomplete`` file. (A response announcing the full
  length and then closing early is what ``interrupt_next`` does; the client
  recovers from that one.)
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

__all__ = ["FakeHub", "LFS_SUFFIXES"]

# Suffixes stored in git-lfs by the Hub's default .gitattributes (abridged).
LFS_SUFFIXES = (
    ".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".onnx", ".gguf", ".npy", ".npz",
    ".pkl", ".pickle", ".model", ".tflite", ".ot", ".arrow", ".parquet", ".zip", ".tar", ".gz", ".tgz",
    ".zst", ".wav", ".mp3", ".flac", ".ogg", ".mp4", ".png", ".jpg", ".jpeg", ".webp",
)
LFS_MIN_SIZE = 10 * 1024 * 1024
_DATE = "2024-01-01T00:00:00.000Z"
_REPO_TYPES = {"models": "model", "datasets": "dataset", "spaces": "space"}


@dataclass
class _File:
    data: bytes
    lfs: bool
    blob_oid: str  # git blob sha1 (of the LFS pointer for LFS files), as listed by the tree API
    sha256: str
    pointer_size: int = 0

    @classmethod
    def make(cls, path: str, data: bytes) -> "_File":
        lfs = path.lower().endswith(LFS_SUFFIXES) or len(data) >= LFS_MIN_SIZE
        sha256 = hashlib.sha256(data).hexdigest()
        if lfs:
            pointer = f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {len(data)}\n".encode()
            return cls(data, True, _git_blob_sha1(pointer), sha256, len(pointer))
        return cls(data, False, _git_blob_sha1(data), sha256)

    @property
    def etag(self) -> str:
        """What the client uses as blob name: sha256 for LFS files, git blob sha1 otherwise."""
        return self.sha256 if self.lfs else self.blob_oid


@dataclass
class _Repo:
    commits: dict[str, dict[str, _File]] = field(default_factory=dict)  # sha -> full file tree
    refs: dict[str, str] = field(default_factory=dict)  # branch or tag -> sha


def _git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class FakeHub:
    """In-memory fake Hub served over HTTP; see the module docstring.

    Attributes:
        url: base URL, e.g. ``"http://127.0.0.1:PORT"`` (use it as ``HF_ENDPOINT``).
        requests: log of ``(method, path, headers)`` for every request received, in order;
            ``path`` is the raw request target (query string included), ``headers`` a dict
            with lower-cased names (e.g. ``headers.get("range")``).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._repos: dict[tuple[str, str], _Repo] = {}
        self._faults: dict[str, tuple[str, int]] = {}  # filename -> ("interrupt"|"truncate", nbytes)
        self._conns: set[socket.socket] = set()
        self._counter = 0
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(self))
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), name="FakeHub", daemon=True)
        self._thread.start()
        self._closed = False

    # ------------------------------------------------------------------ content
    def add_commit(
        self,
        repo_id: str,
        files: dict[str, bytes],
        *,
        branch: str = "main",
        repo_type: str = "model",
        tag: str | None = None,
    ) -> str:
        """Commit ``files`` (the repo's complete new tree, ``{"path/in/repo": bytes}``) and return its 40-hex sha.

        The commit becomes the head of ``branch`` (created if needed); older commits stay
        reachable by sha. ``tag``, if given, is pointed at the new commit too.
        The repo is created on first use.
        """
        if repo_type not in ("model", "dataset", "space"):
            raise ValueError(f"invalid repo_type {repo_type!r}")
        tree = {path.strip("/"): _File.make(path, bytes(data)) for path, data in files.items()}
        with self._lock:
            repo = self._repos.setdefault((repo_type, repo_id), _Repo())
            self._counter += 1
            h = hashlib.sha1(f"{repo_type}/{repo_id}\0{branch}\0{repo.refs.get(branch)}\0{self._counter}".encode())
            for path in sorted(tree):
                h.update(f"\0{path}\0{tree[path].blob_oid}".encode())
            sha = h.hexdigest()
            repo.commits[sha] = tree
            repo.refs[branch] = sha
            if tag is not None:
                repo.refs[tag] = sha
        return sha

    def add_dir(self, repo_id: str, directory: str | Path, **kw) -> str:
        """Commit every file under ``directory`` (recursively, paths relative to it); ``**kw`` as in ``add_commit``."""
        directory = Path(directory)
        paths = sorted(p for p in directory.rglob("*") if p.is_file())
        files = {p.relative_to(directory).as_posix(): p.read_bytes() for p in paths}
        return self.add_commit(repo_id, files, **kw)

    # ---------------------------------------------------------- fault injection
    def interrupt_next(self, filename: str, after_bytes: int) -> None:
        """Next GET of ``filename``: full Content-Length, ``after_bytes`` of body, then drop the connection.

        Later GETs (including ``Range`` ones) are served normally, so a retry/resume completes.
        """
        with self._lock:
            self._faults[filename] = ("interrupt", after_bytes)

    def truncate_next(self, filename: str, keep_bytes: int) -> None:
        """Next GET of ``filename``: a well-formed 200 with only the first ``keep_bytes`` bytes
        (``Content-Length: keep_bytes``), i.e. shorter than the size announced by HEAD."""
        with self._lock:
            self._faults[filename] = ("truncate", keep_bytes)

    # ---------------------------------------------------------------- lifecycle
    def close(self) -> None:
        """Stop serving: close the listening socket and every open connection (idempotent)."""
        if self._closed:
            return
        self._closed = True
        self._server.shutdown()
        self._server.server_close()
        with self._lock:
            conns = list(self._conns)
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._thread.join(timeout=5)

    def __enter__(self) -> "FakeHub":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---------------------------------------------------------------- internals
    def _lookup(self, repo_type: str, repo_id: str, revision: str | None):
        """Return (error_code, sha, tree) for a repo at a revision; error_code is None when found."""
        with self._lock:
            repo = self._repos.get((repo_type, repo_id))
            if repo is None:
                return "RepoNotFound", None, None
            revision = revision or "main"
            sha = repo.refs.get(revision) or (revision if revision in repo.commits else None)
            if sha is None:
                return "RevisionNotFound", None, None
            return None, sha, repo.commits[sha]

    def _take_fault(self, filename: str) -> tuple[str, int] | None:
        with self._lock:
            return self._faults.pop(filename, None)


def _make_handler(hub: FakeHub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        timeout = 30

        def setup(self) -> None:
            super().setup()
            with hub._lock:
                hub._conns.add(self.connection)

        def finish(self) -> None:
            with hub._lock:
                hub._conns.discard(self.connection)
            try:
                super().finish()
            except OSError:
                pass

        def log_message(self, *args) -> None:  # keep test output quiet
            pass

        def do_GET(self) -> None:
            self._dispatch()

        def do_HEAD(self) -> None:
            self._dispatch()

        # ------------------------------------------------------------ helpers
        def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
            self.send_response(status)
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _json(self, obj, headers: dict[str, str] | None = None) -> None:
            self._send(200, json.dumps(obj).encode(), {"Content-Type": "application/json", **(headers or {})})

        def _error(self, code: str | None, message: str, headers: dict[str, str] | None = None) -> None:
            h = {"Content-Type": "application/json", "X-Error-Message": message, **(headers or {})}
            if code:
                h["X-Error-Code"] = code
            self._send(404, json.dumps({"error": message}).encode(), h)

        # ----------------------------------------------------------- routing
        def _dispatch(self) -> None:
            hub.requests.append((self.command, self.path, {k.lower(): v for k, v in self.headers.items()}))
            split = urlsplit(self.path)
            segs = split.path.split("/")[1:]
            if len(segs) >= 3 and segs[0] == "api" and segs[1] in _REPO_TYPES:
                if self.command == "GET" and self._api(_REPO_TYPES[segs[1]], segs[2:], split.query):
                    return
            else:
                repo_type = "model"
                if segs and segs[0] in ("datasets", "spaces"):
                    repo_type, segs = segs[0][:-1], segs[1:]
                for i in (2, 1):  # "org/name/resolve/..." or "name/resolve/..."
                    if len(segs) > i + 2 and segs[i] == "resolve":
                        repo_id = "/".join(unquote(s) for s in segs[:i])
                        revision = unquote(segs[i + 1])
                        filename = unquote("/".join(segs[i + 2 :]))
                        return self._resolve(repo_type, repo_id, revision, filename)
            self._error(None, f"Not found: {self.command} {self.path}")

        def _api(self, repo_type: str, segs: list[str], query: str) -> bool:
            for i in (2, 1):
                if len(segs) >= i + 2 and segs[i] in ("revision", "tree"):
                    repo_id, kind, revision = "/".join(segs[:i]), segs[i], unquote(segs[i + 1])
                    sub = unquote("/".join(segs[i + 2 :]))
                    break
            else:
                if len(segs) not in (1, 2):
                    return False
                repo_id, kind, revision, sub = "/".join(segs), "revision", None, ""
            repo_id = unquote(repo_id)
            err, sha, tree = hub._lookup(repo_type, repo_id, revision)
            if err:
                self._error(err, f"{err}: {repo_type} {repo_id} @ {revision}")
            elif kind == "revision":
                self._json(_repo_info(repo_type, repo_id, sha, tree, blobs="blobs=true" in query.lower()))
            else:
                entries = _tree_entries(tree, sub, recursive="recursive=true" in query.lower())
                if entries is None:
                    self._error("EntryNotFound", f"{sub} does not exist on {revision}", {"X-Repo-Commit": sha})
                else:
                    self._json(entries)
            return True

        def _resolve(self, repo_type: str, repo_id: str, revision: str, filename: str) -> None:
            err, sha, tree = hub._lookup(repo_type, repo_id, revision)
            if err:
                self._error(err, f"{err}: {repo_type} {repo_id} @ {revision}")
                return
            f = tree.get(filename)
            if f is None:
                self._error("EntryNotFound", f"Entry not found: {filename}", {"X-Repo-Commit": sha})
                return
            headers = {
                "Content-Type": "application/octet-stream",
                "Accept-Ranges": "bytes",
                "X-Repo-Commit": sha,
                "ETag": f'"{f.etag}"',
            }
            if f.lfs:
                headers["X-Linked-Etag"] = f'"{f.sha256}"'
                headers["X-Linked-Size"] = str(len(f.data))
            data, status = f.data, 200
            rng = self.headers.get("Range")
            if rng:
                span = _parse_range(rng, len(data))
                if span is None:
                    self._send(416, b"", {**headers, "Content-Range": f"bytes */{len(data)}"})
                    return
                start, end = span
                data, status = data[start : end + 1], 206
                headers["Content-Range"] = f"bytes {start}-{end}/{len(f.data)}"
            fault = hub._take_fault(filename) if self.command == "GET" else None
            if fault and fault[0] == "truncate":
                data = data[: fault[1]]
            if fault and fault[0] == "interrupt" and fault[1] < len(data):
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data[: fault[1]])
                self.wfile.flush()
                self.close_connection = True
                try:
                    self.connection.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                return
            self._send(status, data, headers)

    return Handler


def _parse_range(value: str, size: int) -> tuple[int, int] | None:
    """Parse a single ``bytes=`` range into an inclusive (start, end); None if unsatisfiable."""
    unit, _, spec = value.partition("=")
    if unit.strip() != "bytes" or "," in spec:
        return None
    first, _, last = spec.strip().partition("-")
    if first == "":
        if not last or int(last) == 0:
            return None
        start, end = max(size - int(last), 0), size - 1
    else:
        start = int(first)
        end = min(int(last), size - 1) if last else size - 1
    if start >= size or start > end:
        return None
    return start, end


def _repo_info(repo_type: str, repo_id: str, sha: str, tree: dict[str, _File], blobs: bool) -> dict:
    siblings = []
    for path in sorted(tree):
        sib: dict = {"rfilename": path}
        if blobs:
            f = tree[path]
            sib.update(size=len(f.data), blobId=f.blob_oid)
            if f.lfs:
                sib["lfs"] = {"sha256": f.sha256, "size": len(f.data), "pointerSize": f.pointer_size}
        siblings.append(sib)
    info = {
        "_id": hashlib.sha1(f"{repo_type}/{repo_id}".encode()).hexdigest()[:24],
        "id": repo_id,
        "author": repo_id.split("/")[0] if "/" in repo_id else None,
        "sha": sha,
        "lastModified": _DATE,
        "createdAt": _DATE,
        "private": False,
        "gated": False,
        "disabled": False,
        "downloads": 0,
        "likes": 0,
        "tags": [],
        "siblings": siblings,
        "usedStorage": sum(len(f.data) for f in tree.values()),
    }
    if repo_type == "model":
        info["modelId"] = repo_id
    return info


def _tree_entries(tree: dict[str, _File], sub: str, recursive: bool) -> list[dict] | None:
    """Entries of the tree API under folder ``sub`` ("" = root); None if ``sub`` is not a folder."""
    prefix = f"{sub.strip('/')}/" if sub.strip("/") else ""
    dirs: set[str] = set()
    files: list[str] = []
    for path in tree:
        if not path.startswith(prefix):
            continue
        parts = path[len(prefix) :].split("/")
        for k in range(1, len(parts) if recursive else min(len(parts), 2)):
            dirs.add(prefix + "/".join(parts[:k]))
        if recursive or len(parts) == 1:
            files.append(path)
    if prefix and not files and not dirs:
        return None
    out: list[dict] = [
        {"type": "directory", "oid": hashlib.sha1(d.encode()).hexdigest(), "size": 0, "path": d} for d in sorted(dirs)
    ]
    for path in sorted(files):
        f = tree[path]
        entry: dict = {"type": "file", "oid": f.blob_oid, "size": len(f.data), "path": path}
        if f.lfs:
            entry["lfs"] = {"oid": f.sha256, "size": len(f.data), "pointerSize": f.pointer_size}
        out.append(entry)
    return out


def client_env(home: Path, url: str | None, **extra: str) -> dict[str, str]:
    """Hermetic env for a client subprocess: no HF_* from the outside world, no proxy for 127.0.0.1."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_", "TRANSFORMERS_"))}
    env.update(
        HF_HOME=str(home),
        HF_HUB_CACHE=str(home / "hub"),
        HF_HUB_DISABLE_TELEMETRY="1",
        HF_HUB_DISABLE_PROGRESS_BARS="1",
        NO_PROXY="127.0.0.1,localhost",
        no_proxy="127.0.0.1,localhost",
    )
    if url is not None:
        env["HF_ENDPOINT"] = url
    env.update(extra)
    return env
