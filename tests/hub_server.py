"""A local, in-memory Hugging Face Hub for tests (stdlib HTTP server on 127.0.0.1).

It speaks the subset of the Hub HTTP API that ``huggingface_hub`` 2.4 uses to create model repos,
upload files (regular inline commits and plain git-LFS) and download them again, so that
``HfApi().upload_folder``, ``Trainer.push_to_hub``, ``AutoModel*.from_pretrained(repo_id)``,
``hf_hub_download``, ``snapshot_download``, ``ModelCard.load`` and ``RepoCard.validate`` run their real
client code paths against it. Nothing leaves 127.0.0.1.

Usage::

    server = HubServer().start()
    server.add_user("alice", "hf_alice", orgs=("acme",))
    os.environ["HF_ENDPOINT"] = server.endpoint      # before huggingface_hub is imported, or:
    patch_hub_endpoint(monkeypatch, server.endpoint)  # after (see below)
    ...
    server.stop()

Two listeners
-------------
``endpoint`` is the Hub itself (API, ``/resolve``, LFS batch/verify). ``cdn_endpoint`` is a second
listener on another port playing the part of the LFS storage/CDN: LFS uploads are ``PUT`` to signed
URLs on it and LFS downloads are served from it. ``HEAD``/``GET /{repo}/resolve/{rev}/{path}`` of an
LFS file answers ``302`` to that other origin, exactly like the real Hub. ``huggingface_hub`` follows
redirects only within the same origin (or a known Hub origin) and otherwise takes the file metadata
from the 302 response itself, so that response carries what the real Hub sends: ``X-Repo-Commit``,
``X-Linked-Etag`` (``"<sha256>"``), ``X-Linked-Size``, ``ETag`` (git oid of the LFS pointer) and
``Location``. The client then GETs the ``Location`` directly, *without* the Authorization header
(another origin), so CDN URLs are HMAC-signed and need no token (like S3/CloudFront signed URLs).

Xet, LFS and regular uploads (what decides, in huggingface_hub 2.4)
------------------------------------------------------------------
* ``POST /api/models/{repo}/preupload/{rev}`` answers ``uploadMode`` per file: ``"regular"`` (content
  goes base64-inline in the commit ndjson) or ``"lfs"``. Empty files are always regular (client side).
* For ``"lfs"`` files the client picks the transport with ``utils._runtime.is_xet_available()``:
  ``not constants.HF_HUB_DISABLE_XET and hf_xet importable``. It does NOT look at the LFS batch
  response any more: with Xet available it never calls the LFS batch endpoint, it goes straight to
  ``hf_xet`` with ``token_refresh_url = {endpoint}/api/models/{repo}/xet-write-token/{rev}``.
  ``upload_folder`` even takes a different code path (``_upload_pipeline.pipelined_upload``) when
  Xet is available (it still posts ``/api/validate-yaml`` first, and it retries commits on 5xx).
* ``constants.HF_HUB_DISABLE_XET`` is read from the environment at import time but
  ``is_xet_available`` reads the module attribute at call time: set ``HF_HUB_DISABLE_XET=1`` before
  import, or monkeypatch ``huggingface_hub.constants.HF_HUB_DISABLE_XET = True``.
* So the two working modes are: (a) Xet disabled -> LFS: preupload -> ``POST
  /{repo}.git/info/lfs/objects/batch`` -> ``PUT`` (signed CDN url) -> ``POST .../objects/verify`` ->
  commit with ``lfsFile`` lines; (b) Xet left on and ``HubServer(regular_only=True)`` -> preupload
  says ``"regular"`` for every file -> everything inline in one commit, hf_xet never contacted
  (a local ``XetSession`` object is created but makes no request).
* Xet on and the server answering ``"lfs"``: the client cannot fall back to plain LFS in 2.4. This
  server never advertises Xet anywhere (the LFS batch reply says ``"transfer": "basic"`` and never
  ``"xet"`` -- older clients switched to Xet on ``transfer == "xet"``; resolve responses never carry
  ``X-Xet-Hash``/``Link: xet-auth``; tree entries never carry ``xetHash``), and the
  ``xet-read-token``/``xet-write-token`` routes answer ``501`` with ``X-Error-Code: XetNotSupported``
  and no ``X-Xet-Cas-Url``, so hf_xet is never handed a CAS server address: the upload fails fast
  (one request, <1 s) at the token request with the builtin ``ConnectionError`` raised by hf_xet
  ("HTTP status server error (501 Not Implemented) ... xet-write-token"), and nothing is committed.

Endpoint constants (what made the client use this server)
---------------------------------------------------------
``huggingface_hub.constants.ENDPOINT`` and ``HUGGINGFACE_CO_URL_TEMPLATE`` are computed from
``HF_ENDPOINT`` at import; ``utils._http._HUB_ORIGINS`` too. ``hf_hub_url`` formats the *template*
and swaps in an explicit ``endpoint=`` only if the URL starts with ``constants.ENDPOINT``, so the two
constants must always be patched together. ``RepoCard.validate`` posts to ``constants.ENDPOINT``
(no endpoint argument). ``HfApi()`` copies ``constants.ENDPOINT`` at construction, so
``huggingface_hub.hf_api.api`` (behind the module-level ``create_repo``, ``upload_folder``, ...) and
transformers' cached ``transformers.utils.hub._hf_api`` (behind ``push_to_hub``) keep the endpoint
they were built with. Offline mode is ``constants.HF_HUB_OFFLINE`` (read at import from
``HF_HUB_OFFLINE``/``TRANSFORMERS_OFFLINE``; ``is_offline_mode()`` returns the module attribute at call
time, and transformers uses that same function). ``patch_hub_endpoint`` handles all of this. The
robust way for a whole session: start the server and set ``HF_ENDPOINT`` before anything imports
huggingface_hub (then ``_HUB_ORIGINS`` also knows the server).

Auth
----
``Authorization: Bearer <token>``; tokens registered with ``add_user``. A token that is present but
unknown answers 401 ``X-Error-Message: Invalid credentials in Authorization header`` on every route
(like the Hub). Writes without a token: 401. Writes outside the user's name and orgs: 403. Private
repos are visible to the owner and members of the owning org only; others get 401 (anonymous) or 404
(authenticated) with ``X-Error-Code: RepoNotFound``.

Failure injection: ``fail_next(kind, times=1)`` or ``with failing(kind):`` for kind in ``"401"`` (the
next request that carries a token or needs one), ``"403"`` (next write), ``"500-commit"``,
``"500-preupload"``, ``"500-after-commit"`` (the commit is stored, then answered 500: a gateway that
timed out after the Hub stored it), ``"stall-commit"`` (the commit request is read, then not answered for 30 s or
until the server stops: a Hub that hangs). Note that the client retries 5xx with backoff (1, 2, 4, 8, 8 s) on preupload,
LFS batch/PUT/verify and, in the Xet pipelined ``upload_folder`` path, on the commit too: one injected
500 is absorbed there. ``create_commit``/``upload_file`` (and ``upload_folder`` with Xet disabled)
post the commit once.

What the client raises (huggingface_hub 2.4, measured against this server)
-------------------------------------------------------------------------
* 401 on a write (no token, unknown token, injected "401"): ``HfHubHTTPError`` (status 401), not
  ``RepositoryNotFoundError``. ``HfApi(token=False).whoami()`` raises ``ValueError`` before any call.
* 401/404 with ``X-Error-Code: RepoNotFound`` (missing repo, private repo read by others):
  ``RepositoryNotFoundError`` (transformers wraps it in ``OSError``). Missing file:
  ``RemoteEntryNotFoundError``; unknown revision: ``RevisionNotFoundError``.
* 403: ``HfHubHTTPError`` (status 403). 409 on ``create_repo`` without ``exist_ok``: ``HfHubHTTPError``.
* 500 on the commit: ``HfHubHTTPError`` (status 500), no commit stored (``500-commit``; ``500-after-commit``
  stores it first).
* Server unreachable: ``create_repo`` -> ``httpx2.ConnectError`` at once; uploads -> ``httpx2.ConnectError``
  after ~23 s of backoff; ``hf_hub_download`` -> ``LocalEntryNotFoundError`` after ~23 s.

Inspection: ``server.files(repo_id, revision="main") -> {path: bytes}``, ``server.lfs_paths(repo_id)``,
``server.commits(repo_id)`` (oldest first; ``create_repo`` makes an empty initial commit, or one with
the Hub's ``.gitattributes`` if ``initial_gitattributes=True``), ``server.repos``, ``server.lfs_objects``
(sha256 -> bytes) and ``server.requests`` (``(method, path, status)`` of every request, both listeners).
``/api/validate-yaml`` warns (like the Hub) when a README has no metadata.

README metadata is parsed with PyYAML (a hard dependency of huggingface_hub), imported lazily.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import ipaddress
import json
import math
import re
import secrets
import socket
import threading
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import cached_property
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, quote, unquote, urlsplit

__all__ = ["HubServer", "assert_loopback", "patch_hub_endpoint", "FAIL_KINDS"]

FAIL_KINDS = ("401", "403", "500-commit", "500-preupload", "500-after-commit", "stall-commit")

_LOOPBACK_NAMES = {"localhost", "ip6-localhost"}
_REPO_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_YAML_BLOCK = re.compile(r"^(\s*---[\r\n]+)([\S\s]*?)([\r\n]+---(\r\n|\n|$))")
# Extensions the Hub's default .gitattributes tracks with LFS.
_LFS_SUFFIXES = (
    ".7z", ".arrow", ".bin", ".bz2", ".ckpt", ".ftz", ".gz", ".h5", ".joblib", ".mlmodel", ".model",
    ".msgpack", ".npy", ".npz", ".onnx", ".ot", ".parquet", ".pb", ".pickle", ".pkl", ".pt", ".pth",
    ".rar", ".safetensors", ".tar", ".tflite", ".tgz", ".wasm", ".xz", ".zip", ".zst",
)
_LFS_MIN_SIZE = 10 * 1024 * 1024
_GITATTRIBUTES = "".join(f"*{s} filter=lfs diff=lfs merge=lfs -text\n" for s in _LFS_SUFFIXES).encode()


def assert_loopback(url: str) -> None:
    """Raise ``RuntimeError`` unless ``url``'s host is 127.0.0.1 (any 127/8), ``localhost`` or ``::1``."""
    host = (urlsplit(url).hostname or "").lower()
    if host in _LOOPBACK_NAMES:
        return
    try:
        if ipaddress.ip_address(host).is_loopback:
            return
    except ValueError:
        pass
    raise RuntimeError(f"Refusing non-loopback Hub endpoint {url!r}: tests must only talk to 127.0.0.1")


def patch_hub_endpoint(monkeypatch, endpoint: str, *, disable_xet: bool | None = None) -> None:
    """Point an already-imported huggingface_hub (and transformers) at ``endpoint``, online.

    Uses pytest's ``monkeypatch`` so everything is undone at teardown. Patches: env ``HF_ENDPOINT``,
    ``HF_HUB_OFFLINE``/``TRANSFORMERS_OFFLINE`` unset; ``constants.ENDPOINT``,
    ``constants.HUGGINGFACE_CO_URL_TEMPLATE``, ``constants.HF_HUB_OFFLINE = False``;
    ``hf_api.api.endpoint``; transformers' cached ``utils.hub._hf_api`` reset to ``None`` (if
    transformers is imported). ``disable_xet`` (if not None) sets ``HF_HUB_DISABLE_XET`` and
    ``constants.HF_HUB_DISABLE_XET``.
    """
    import sys

    assert_loopback(endpoint)
    endpoint = endpoint.rstrip("/")
    from huggingface_hub import constants, hf_api

    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "ENDPOINT", endpoint)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", endpoint + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hf_api.api, "endpoint", endpoint)
    if disable_xet is not None:
        monkeypatch.setenv("HF_HUB_DISABLE_XET", "1" if disable_xet else "0")
        monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", bool(disable_xet))
    tf_hub = sys.modules.get("transformers.utils.hub")
    if tf_hub is not None and hasattr(tf_hub, "_hf_api"):
        monkeypatch.setattr(tf_hub, "_hf_api", None)


# --------------------------------------------------------------------------- state


def _git_blob_oid(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _lfs_pointer(sha256: str, size: int) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


def _now_iso() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


@dataclass(frozen=True)
class StoredFile:
    data: bytes
    lfs: bool
    sha256: str

    @property
    def size(self) -> int:
        return len(self.data)

    @cached_property
    def pointer(self) -> bytes:
        return _lfs_pointer(self.sha256, self.size)

    @cached_property
    def oid(self) -> str:
        """Git blob oid (of the pointer file for LFS files), as the Hub reports it."""
        return _git_blob_oid(self.pointer if self.lfs else self.data)


@dataclass
class Commit:
    oid: str
    parent: str | None
    title: str
    description: str
    author: str
    date: str
    files: dict[str, StoredFile]


@dataclass
class Repo:
    repo_id: str
    private: bool
    created_at: str
    commits: list[Commit] = field(default_factory=list)  # history of `main`, oldest first
    lfs_oids: set[str] = field(default_factory=set)  # LFS objects uploaded to this repo

    @property
    def head(self) -> Commit:
        return self.commits[-1]

    def resolve(self, revision: str) -> Commit | None:
        if revision == "main":
            return self.head
        if re.fullmatch(r"[0-9a-f]{7,40}", revision):
            for c in reversed(self.commits):
                if c.oid.startswith(revision):
                    return c
        return None


@dataclass
class User:
    name: str
    token: str
    orgs: tuple[str, ...]


class _HttpError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.headers = status, message, code, headers or {}


# --------------------------------------------------------------------------- server


class HubServer:
    """In-memory Hub. See the module docstring. ``start()`` returns ``self``; also a context manager."""

    def __init__(self, *, regular_only: bool = False, initial_gitattributes: bool = False):
        self.regular_only = regular_only  # answer "regular" for every file in preupload
        self.initial_gitattributes = initial_gitattributes  # new repos start with a .gitattributes, like the Hub
        self.users: dict[str, User] = {}  # token -> user
        self.repos: dict[str, Repo] = {}
        self.lfs_objects: dict[str, bytes] = {}  # sha256 hex -> content
        self.requests: list[tuple[str, str, int]] = []  # (method, path, status), for debugging/asserts
        self._fail: dict[str, float] = {}
        self._lock = threading.RLock()
        self._stopping = threading.Event()  # releases stalled requests
        self._secret = secrets.token_bytes(16)
        self._servers: list[ThreadingHTTPServer] = []
        self._threads: list[threading.Thread] = []
        self._conns: set[socket.socket] = set()
        self.endpoint = ""
        self.cdn_endpoint = ""

    # ---- lifecycle
    def start(self) -> "HubServer":
        if self._servers:
            return self
        self._stopping.clear()
        for is_cdn in (False, True):
            handler = type("Handler", (_Handler,), {"hub": self, "is_cdn": is_cdn})
            srv = ThreadingHTTPServer(("127.0.0.1", 0), handler)
            srv.daemon_threads = True
            t = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True,
                                 name=f"hub-server-{'cdn' if is_cdn else 'api'}")
            t.start()
            self._servers.append(srv)
            self._threads.append(t)
        self.endpoint = f"http://127.0.0.1:{self._servers[0].server_address[1]}"
        self.cdn_endpoint = f"http://127.0.0.1:{self._servers[1].server_address[1]}"
        return self

    def stop(self) -> None:
        self._stopping.set()
        for srv in self._servers:
            srv.shutdown()
            srv.server_close()
        with self._lock:
            conns, self._conns = list(self._conns), set()
        for c in conns:  # keep-alive connections would otherwise keep being served
            with contextlib.suppress(OSError):
                c.shutdown(socket.SHUT_RDWR)
        for t in self._threads:
            t.join(timeout=5)
        self._servers, self._threads = [], []

    def __enter__(self) -> "HubServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ---- users / inspection
    def add_user(self, name: str, token: str, orgs=()) -> User:
        user = User(name=name, token=token, orgs=tuple(orgs))
        with self._lock:
            self.users[token] = user
        return user

    def repo(self, repo_id: str) -> Repo:
        return self.repos[repo_id]

    def files(self, repo_id: str, revision: str = "main") -> dict[str, bytes]:
        """``{path: bytes}`` stored at ``revision`` of ``repo_id``."""
        with self._lock:
            commit = self.repos[repo_id].resolve(revision)
            if commit is None:
                raise KeyError(revision)
            return {p: f.data for p, f in commit.files.items()}

    def commits(self, repo_id: str) -> list[Commit]:
        with self._lock:
            return list(self.repos[repo_id].commits)

    def lfs_paths(self, repo_id: str, revision: str = "main") -> set[str]:
        with self._lock:
            return {p for p, f in self.repos[repo_id].resolve(revision).files.items() if f.lfs}

    # ---- failure injection
    def fail_next(self, kind: str, times: int = 1) -> None:
        if kind not in FAIL_KINDS:
            raise ValueError(f"unknown failure kind {kind!r}; expected one of {FAIL_KINDS}")
        with self._lock:
            self._fail[kind] = self._fail.get(kind, 0) + times

    @contextlib.contextmanager
    def failing(self, kind: str):
        """Every matching request fails while the block runs."""
        if kind not in FAIL_KINDS:
            raise ValueError(f"unknown failure kind {kind!r}; expected one of {FAIL_KINDS}")
        with self._lock:
            self._fail[kind] = math.inf
        try:
            yield self
        finally:
            with self._lock:
                self._fail.pop(kind, None)

    def _take_failure(self, kind: str) -> bool:
        with self._lock:
            n = self._fail.get(kind, 0)
            if n <= 0:
                return False
            self._fail[kind] = n - 1
            if self._fail[kind] <= 0:
                self._fail.pop(kind)
            return True

    # ---- helpers used by the handler
    def _sign(self, *parts: str) -> str:
        return hmac.new(self._secret, "\0".join(parts).encode(), hashlib.sha256).hexdigest()

    def _can_write(self, user: User | None, namespace: str) -> bool:
        return user is not None and (namespace == user.name or namespace in user.orgs)

    def _new_commit(self, repo: Repo, files: dict[str, StoredFile], title: str, description: str,
                    author: str) -> Commit:
        parent = repo.commits[-1].oid if repo.commits else None
        date = _now_iso()
        digest = hashlib.sha1()
        digest.update(json.dumps([repo.repo_id, parent, title, description, author, date,
                                  sorted((p, f.oid) for p, f in files.items()), secrets.token_hex(8)]).encode())
        commit = Commit(oid=digest.hexdigest(), parent=parent, title=title, description=description,
                        author=author, date=date, files=files)
        repo.commits.append(commit)
        return commit


def _parse_front_matter(text: str):
    """(metadata or None, error message or None) for a README's YAML block."""
    match = _YAML_BLOCK.search(text)
    if match is None:
        return None, None
    import yaml  # dependency of huggingface_hub

    try:
        data = yaml.safe_load(match.group(2))
    except yaml.YAMLError as exc:
        return None, f"Invalid YAML in README.md metadata: {exc}"
    if data is None:
        return None, None
    if not isinstance(data, dict):
        return None, "README.md metadata must be a YAML mapping"
    return data, None


class _Handler(BaseHTTPRequestHandler):
    hub: HubServer
    is_cdn: bool
    protocol_version = "HTTP/1.1"
    server_version = "pakd-test-hub/1"

    # ---- plumbing
    def setup(self):
        super().setup()
        with self.hub._lock:
            self.hub._conns.add(self.connection)

    def finish(self):
        with contextlib.suppress(OSError):
            super().finish()
        with self.hub._lock:
            self.hub._conns.discard(self.connection)

    def log_message(self, format, *args):  # noqa: A002 - keep the test output clean
        pass

    def _body(self) -> bytes:
        return self._raw_body

    def _read_body(self) -> bytes:
        # Always read the whole body before answering: an error answered early must not leave it
        # in a keep-alive connection, where it would be parsed as the next request.
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            out = bytearray()
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return bytes(out)
                out += self.rfile.read(size)
                self.rfile.readline()
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def _json_body(self):
        raw = self._body()
        try:
            return json.loads(raw or b"{}")
        except ValueError:
            raise _HttpError(400, "Invalid JSON body")

    def _send(self, status: int, body: bytes = b"", headers: dict | None = None,
              content_type: str = "application/json; charset=utf-8") -> None:
        self.send_response(status)
        hdrs = {"Content-Type": content_type, "Content-Length": str(len(body))}
        hdrs.update(headers or {})
        for k, v in hdrs.items():
            self.send_header(k, str(v))
        self.end_headers()
        if self.command != "HEAD" and body:
            self.wfile.write(body)
        with self.hub._lock:
            self.hub.requests.append((self.command, self.path, status))

    def _send_json(self, status: int, obj, headers: dict | None = None) -> None:
        self._send(status, json.dumps(obj).encode(), headers)

    def _send_error(self, err: _HttpError) -> None:
        headers = {"X-Error-Message": err.message, **err.headers}
        if err.code:
            headers["X-Error-Code"] = err.code
        if "text/plain" in self.headers.get("Accept", "") and "json" not in self.headers.get("Accept", ""):
            self._send(err.status, err.message.encode(), headers, content_type="text/plain; charset=utf-8")
        else:
            self._send_json(err.status, {"error": err.message}, headers)

    def _dispatch(self) -> None:
        try:
            self._raw_body = self._read_body()
            split = urlsplit(self.path)
            self.query = {k: v[-1] for k, v in parse_qs(split.query).items()}
            self.segments = [unquote(s) for s in split.path.split("/")[1:]]
            self.raw_segments = split.path.split("/")[1:]
            if self._stalls():  # outside the lock: the rest of the Hub keeps answering
                # The client must give up on its own; bounded, so a client that never does fails its
                # test (with the wrong error) instead of hanging it.
                self.hub._stopping.wait(timeout=30)
                self.close_connection = True
                return
            with self.hub._lock:
                (self._route_cdn if self.is_cdn else self._route)()
        except _HttpError as err:
            self._send_error(err)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        except Exception as exc:  # a bug in the test server: report it loudly to the client
            self._send_error(_HttpError(500, f"test hub internal error: {type(exc).__name__}: {exc}"))

    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = _dispatch

    def _stalls(self) -> bool:
        s = self.segments
        is_commit = (not self.is_cdn and self.command == "POST" and len(s) == 6 and s[:2] == ["api", "models"]
                     and s[4] == "commit")
        return is_commit and self.hub._take_failure("stall-commit")

    # ---- auth
    def _user(self, *, needs_token: bool = False) -> User | None:
        auth = self.headers.get("Authorization", "")
        token = auth[7:].strip() if auth.lower().startswith("bearer ") else None
        if token is not None or needs_token:
            if self.hub._take_failure("401"):
                raise _HttpError(401, "Invalid credentials in Authorization header")
        if token is None:
            if needs_token:
                raise _HttpError(401, "Invalid username or password.")
            return None
        user = self.hub.users.get(token)
        if user is None:
            raise _HttpError(401, "Invalid credentials in Authorization header")
        return user

    def _readable_repo(self, repo_id: str, user: User | None) -> Repo:
        repo = self.hub.repos.get(repo_id)
        ns = repo_id.split("/")[0]
        if repo is None or (repo.private and not self.hub._can_write(user, ns)):
            raise _HttpError(404 if user is not None else 401, "Repository not found", code="RepoNotFound")
        return repo

    def _writable_repo(self, repo_id: str) -> tuple[Repo, User]:
        user = self._user(needs_token=True)
        repo = self._readable_repo(repo_id, user)
        ns = repo_id.split("/")[0]
        if self.hub._take_failure("403") or not self.hub._can_write(user, ns):
            raise _HttpError(403, f"You don't have the rights to write to {repo_id}")
        return repo, user

    @staticmethod
    def _commit_or_404(repo: Repo, revision: str) -> Commit:
        commit = repo.resolve(revision)
        if commit is None:
            raise _HttpError(404, f"Invalid rev id: {revision}", code="RevisionNotFound")
        return commit

    # ---- routing (Hub)
    def _route(self) -> None:
        s, m = self.segments, self.command
        if s[:2] == ["api", "whoami-v2"] and m == "GET":
            return self._whoami()
        if s[:3] == ["api", "repos", "create"] and m == "POST":
            return self._create_repo()
        if s[:3] == ["api", "repos", "delete"] and m == "DELETE":
            return self._delete_repo()
        if s[:2] == ["api", "validate-yaml"] and m == "POST":
            return self._validate_yaml()
        if len(s) >= 4 and s[0] == "api" and s[1] in ("models", "datasets", "spaces"):
            if s[1] != "models":
                raise _HttpError(404, "Repository not found", code="RepoNotFound")
            repo_id, rest = f"{s[2]}/{s[3]}", s[4:]
            if not rest and m == "GET":
                return self._model_info(repo_id, "main")
            if len(rest) == 2 and rest[0] == "revision" and m == "GET":
                return self._model_info(repo_id, rest[1])
            if len(rest) >= 2 and rest[0] == "tree" and m == "GET":
                return self._tree(repo_id, rest[1], "/".join(rest[2:]))
            if len(rest) == 2 and rest[0] == "paths-info" and m == "POST":
                return self._paths_info(repo_id, rest[1])
            if len(rest) == 2 and rest[0] == "commits" and m == "GET":
                return self._list_commits(repo_id, rest[1])
            if len(rest) == 2 and rest[0] == "preupload" and m == "POST":
                return self._preupload(repo_id, rest[1])
            if len(rest) == 2 and rest[0] == "commit" and m == "POST":
                return self._commit(repo_id, rest[1])
            if rest and rest[0] in ("xet-read-token", "xet-write-token"):
                raise _HttpError(501, "This test Hub has no Xet storage: disable Xet (HF_HUB_DISABLE_XET=1) or"
                                      " run the server with regular_only=True", code="XetNotSupported")
        if len(s) == 6 and s[1].endswith(".git") and s[2:5] == ["info", "lfs", "objects"] and m == "POST":
            repo_id = f"{s[0]}/{s[1][:-4]}"
            if s[5] == "batch":
                return self._lfs_batch(repo_id)
            if s[5] == "verify":
                return self._lfs_verify(repo_id)
        if len(s) >= 5 and s[2] == "resolve" and m in ("GET", "HEAD"):
            return self._resolve(f"{s[0]}/{s[1]}", s[3], "/".join(s[4:]))
        raise _HttpError(404, f"Not found: {m} {urlsplit(self.path).path}")

    # ---- routing (CDN / LFS storage)
    def _route_cdn(self) -> None:
        s, m, q = self.segments, self.command, self.query
        if len(s) == 2 and s[0] == "lfs" and m == "PUT":
            oid, repo_id = s[1], q.get("repo", "")
            if not hmac.compare_digest(q.get("sig", ""), self.hub._sign("put", repo_id, oid, q.get("size", ""))):
                raise _HttpError(403, "Bad signature")
            data = self._body()
            if hashlib.sha256(data).hexdigest() != oid or str(len(data)) != q.get("size"):
                raise _HttpError(400, "Uploaded content does not match the announced oid/size")
            self.hub.lfs_objects[oid] = data
            if repo_id in self.hub.repos:
                self.hub.repos[repo_id].lfs_oids.add(oid)
            return self._send(200, b"", {"ETag": f'"{hashlib.md5(data).hexdigest()}"'})
        if len(s) == 2 and s[0] == "lfs" and m in ("GET", "HEAD"):
            oid = s[1]
            if not hmac.compare_digest(q.get("sig", ""), self.hub._sign("get", oid)) or oid not in self.hub.lfs_objects:
                raise _HttpError(403, "Access denied")
            return self._send_bytes(self.hub.lfs_objects[oid], {"ETag": f'"{oid}"'})
        raise _HttpError(404, "Not found")

    def _send_bytes(self, data: bytes, headers: dict) -> None:
        rng = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", "").strip())
        if rng:
            start = int(rng.group(1))
            end = int(rng.group(2)) if rng.group(2) else len(data) - 1
            part = data[start:end + 1]
            headers = {**headers, "Content-Range": f"bytes {start}-{start + len(part) - 1}/{len(data)}"}
            return self._send(206, part, headers, content_type="application/octet-stream")
        return self._send(200, data, headers, content_type="application/octet-stream")

    # ---- endpoints
    def _whoami(self) -> None:
        user = self._user(needs_token=True)
        self._send_json(200, {
            "type": "user", "id": hashlib.sha1(user.name.encode()).hexdigest()[:24], "name": user.name,
            "fullname": user.name, "email": f"{user.name}@example.invalid", "emailVerified": True,
            "isPro": False, "canPay": False, "periodEnd": None,
            "orgs": [{"type": "org", "name": o, "fullname": o, "roleInOrg": "write"} for o in user.orgs],
            "auth": {"type": "access_token", "accessToken": {"displayName": f"{user.name}-token", "role": "write",
                                                              "createdAt": "2024-01-01T00:00:00.000Z"}},
        })

    def _create_repo(self) -> None:
        body = self._json_body()
        name, org = body.get("name"), body.get("organization")
        user = self._user(needs_token=True)
        ns = org or user.name
        repo_type = body.get("type") or "model"
        if repo_type != "model":
            raise _HttpError(400, f"This test Hub only hosts model repos, not {repo_type!r}")
        if not (isinstance(name, str) and _REPO_PART.match(name) and _REPO_PART.match(ns)) or "--" in name \
                or ".." in name:
            raise _HttpError(400, f"Invalid repo name {ns}/{name}")
        if self.hub._take_failure("403") or not self.hub._can_write(user, ns):
            raise _HttpError(403, f"You don't have the rights to create a model under the namespace \"{ns}\"")
        repo_id = f"{ns}/{name}"
        url = f"{self.hub.endpoint}/{repo_id}"
        if repo_id in self.hub.repos:
            return self._send_json(409, {"error": "You already created this model repo", "url": url},
                                   {"X-Error-Message": "You already created this model repo"})
        private = bool(body.get("private", False)) or body.get("visibility") == "private"
        repo = Repo(repo_id=repo_id, private=private, created_at=_now_iso())
        files = {}
        if self.hub.initial_gitattributes:
            files[".gitattributes"] = StoredFile(_GITATTRIBUTES, False, hashlib.sha256(_GITATTRIBUTES).hexdigest())
        self.hub._new_commit(repo, files, "initial commit", "", user.name)
        self.hub.repos[repo_id] = repo
        self._send_json(200, {"url": url, "name": repo_id, "id": hashlib.sha1(repo_id.encode()).hexdigest()[:24]})

    def _delete_repo(self) -> None:
        body = self._json_body()
        ns = body.get("organization") or self._user(needs_token=True).name
        repo, _ = self._writable_repo(f"{ns}/{body.get('name')}")
        del self.hub.repos[repo.repo_id]
        self._send_json(200, {})

    def _validate_yaml(self) -> None:
        self._user()  # an invalid token is rejected; no token is fine
        body = self._json_body()
        content = body.get("content")
        if not isinstance(content, str):
            raise _HttpError(400, "Missing 'content'")
        data, error = _parse_front_matter(content)
        errors = [{"message": error}] if error else []
        if data is not None and "model-index" in data and not isinstance(data["model-index"], list):
            errors.append({"message": '"model-index" must be an array'})
        if errors:
            if "text/plain" in self.headers.get("Accept", ""):
                return self._send(400, "\n".join(e["message"] for e in errors).encode(),
                                  {"X-Error-Message": errors[0]["message"]}, content_type="text/plain; charset=utf-8")
            return self._send_json(400, {"errors": errors, "warnings": []}, {"X-Error-Message": errors[0]["message"]})
        warnings = [] if data else [{"message": "empty or missing yaml metadata in repo card"}]
        self._send_json(200, {"errors": [], "warnings": warnings})

    def _model_info(self, repo_id: str, revision: str) -> None:
        repo = self._readable_repo(repo_id, self._user())
        commit = self._commit_or_404(repo, revision)
        blobs = self.query.get("blobs", "").lower() in ("1", "true")
        siblings = []
        for path, f in sorted(commit.files.items()):
            sib = {"rfilename": path}
            if blobs:
                sib.update(size=f.size, blobId=f.oid)
                if f.lfs:
                    sib["lfs"] = {"sha256": f.sha256, "size": f.size, "pointerSize": len(f.pointer)}
            siblings.append(sib)
        info = {
            "_id": hashlib.sha1(repo_id.encode()).hexdigest()[:24], "id": repo_id, "modelId": repo_id,
            "author": repo_id.split("/")[0], "sha": commit.oid, "lastModified": commit.date,
            "createdAt": repo.created_at, "private": repo.private, "disabled": False, "gated": False,
            "downloads": 0, "likes": 0, "tags": [], "siblings": siblings,
            "usedStorage": sum(f.size for f in commit.files.values()),
        }
        readme = commit.files.get("README.md")
        if readme is not None:
            data, _ = _parse_front_matter(readme.data.decode("utf-8", "replace"))
            if data:
                info["cardData"] = data
                tags = data.get("tags")
                info["tags"] = list(tags) if isinstance(tags, list) else ([tags] if isinstance(tags, str) else [])
                for key, out in (("library_name", "library_name"), ("pipeline_tag", "pipeline_tag")):
                    if key in data:
                        info[out] = data[key]
        self._send_json(200, info)

    @staticmethod
    def _tree_entry(path: str, f: StoredFile) -> dict:
        entry = {"type": "file", "oid": f.oid, "size": f.size, "path": path}
        if f.lfs:
            entry["lfs"] = {"oid": f.sha256, "size": f.size, "pointerSize": len(f.pointer)}
        return entry

    def _tree(self, repo_id: str, revision: str, path: str) -> None:
        repo = self._readable_repo(repo_id, self._user())
        commit = self._commit_or_404(repo, revision)
        recursive = self.query.get("recursive", "").lower() in ("1", "true")
        prefix = path.strip("/")
        if prefix and prefix in commit.files:
            raise _HttpError(400, f"{prefix} is a file, not a directory")
        base = prefix + "/" if prefix else ""
        dirs: set[str] = set()
        files = []
        for p, f in sorted(commit.files.items()):
            if not p.startswith(base):
                continue
            rel_parts = p[len(base):].split("/")
            for i in range(1, len(rel_parts)):
                if recursive or i == 1:
                    dirs.add(base + "/".join(rel_parts[:i]))
            if recursive or len(rel_parts) == 1:
                files.append(self._tree_entry(p, f))
        if prefix and not files and not dirs:
            raise _HttpError(404, f"{prefix} does not exist on \"{revision}\"", code="EntryNotFound")
        entries = [{"type": "directory", "oid": hashlib.sha1(d.encode()).hexdigest(), "size": 0, "path": d}
                   for d in sorted(dirs)] + files
        self._send_json(200, entries)

    def _paths_info(self, repo_id: str, revision: str) -> None:
        repo = self._readable_repo(repo_id, self._user())
        commit = self._commit_or_404(repo, revision)
        raw = self._body()
        if "json" in self.headers.get("Content-Type", ""):
            paths = json.loads(raw or b"{}").get("paths", [])
        else:
            paths = parse_qs(raw.decode()).get("paths", [])
        out = []
        for p in paths:
            p = p.strip("/")
            if p in commit.files:
                out.append(self._tree_entry(p, commit.files[p]))
            elif any(q.startswith(p + "/") for q in commit.files):
                out.append({"type": "directory", "oid": hashlib.sha1(p.encode()).hexdigest(), "size": 0, "path": p})
        self._send_json(200, out)

    def _list_commits(self, repo_id: str, revision: str) -> None:
        repo = self._readable_repo(repo_id, self._user())
        commit = self._commit_or_404(repo, revision)
        history, oid = [], commit.oid
        by_oid = {c.oid: c for c in repo.commits}
        while oid is not None:
            c = by_oid[oid]
            history.append({"id": c.oid, "title": c.title, "message": c.description, "date": c.date,
                            "authors": [{"user": c.author}]})
            oid = c.parent
        self._send_json(200, history)

    def _upload_mode(self, path: str, size: int, sample: bytes) -> str:
        if self.hub.regular_only:
            return "regular"
        if size >= _LFS_MIN_SIZE or path.lower().endswith(_LFS_SUFFIXES) or b"\0" in sample:
            return "lfs"
        try:
            sample.decode("utf-8")
        except UnicodeDecodeError as exc:  # a multi-byte char cut at the 512-byte sample edge is still text
            if exc.start < len(sample) - 4:
                return "lfs"
        return "regular"

    def _preupload(self, repo_id: str, revision: str) -> None:
        repo, _ = self._writable_repo(repo_id)
        if self.hub._take_failure("500-preupload"):
            raise _HttpError(500, "Internal Error (injected: 500-preupload)")
        commit = self._commit_or_404(repo, revision)
        body = self._json_body()
        out = []
        for item in body.get("files", []):
            path = item["path"]
            sample = base64.b64decode(item.get("sample", ""))
            mode = self._upload_mode(path, int(item.get("size", 0)), sample)
            existing = commit.files.get(path)
            remote_oid = None
            if existing is not None:
                remote_oid = existing.sha256 if existing.lfs else existing.oid
            out.append({"path": path, "uploadMode": mode, "shouldIgnore": False, "oid": remote_oid})
        self._send_json(200, {"files": out, "commitOid": commit.oid})

    def _lfs_batch(self, repo_id: str) -> None:
        repo, _ = self._writable_repo(repo_id)
        body = self._json_body()
        if body.get("operation") != "upload":
            raise _HttpError(422, "This test Hub only supports the LFS 'upload' operation (downloads use /resolve)")
        objects = []
        for obj in body.get("objects", []):
            oid, size = str(obj.get("oid", "")), obj.get("size")
            if not _SHA256.match(oid) or not isinstance(size, int):
                objects.append({"oid": oid, "size": size if isinstance(size, int) else 0,
                                "error": {"code": 422, "message": "Invalid oid or size"}})
                continue
            entry = {"oid": oid, "size": size, "authenticated": True}
            if oid not in repo.lfs_oids:  # absent "actions" = already uploaded, client skips it
                q = f"repo={quote(repo_id, safe='')}&size={size}&sig={self.hub._sign('put', repo_id, oid, str(size))}"
                entry["actions"] = {
                    "upload": {"href": f"{self.hub.cdn_endpoint}/lfs/{oid}?{q}", "expires_in": 86400},
                    "verify": {"href": f"{self.hub.endpoint}/{repo_id}.git/info/lfs/objects/verify",
                               "expires_in": 86400},
                }
            objects.append(entry)
        # "basic" only: never "xet" (older clients switched to Xet when the server chose it).
        self._send(200, json.dumps({"transfer": "basic", "objects": objects, "hash_algo": "sha256"}).encode(),
                   content_type="application/vnd.git-lfs+json")

    def _lfs_verify(self, repo_id: str) -> None:
        repo, _ = self._writable_repo(repo_id)
        body = self._json_body()
        oid, size = body.get("oid"), body.get("size")
        data = self.hub.lfs_objects.get(oid)
        if oid not in repo.lfs_oids or data is None or len(data) != size:
            raise _HttpError(404, f"LFS object {oid} not found or of the wrong size")
        self._send_json(200, {"success": True})

    def _commit(self, repo_id: str, revision: str) -> None:
        repo, user = self._writable_repo(repo_id)
        raw = self._body()
        if self.hub._take_failure("500-commit"):
            raise _HttpError(500, "Internal Error (injected: 500-commit)")
        if self.query.get("create_pr") in ("1", "true"):
            raise _HttpError(400, "This test Hub does not support pull requests")
        if revision != "main":
            raise _HttpError(404, f"Invalid rev id: {revision}", code="RevisionNotFound")
        try:
            lines = [json.loads(line) for line in raw.splitlines() if line.strip()]
        except ValueError:
            raise _HttpError(400, "Malformed ndjson payload")
        if not lines or lines[0].get("key") != "header":
            raise _HttpError(400, "The first ndjson line must be the commit header")
        header = lines[0].get("value") or {}
        parent = header.get("parentCommit")
        if parent and not repo.head.oid.startswith(parent):
            raise _HttpError(412, f"Parent commit {parent} is not the head of {revision}")
        files = dict(repo.head.files)
        for line in lines[1:]:
            key, value = line.get("key"), line.get("value") or {}
            path = str(value.get("path", "")).lstrip("/")
            if not path or any(part in ("", ".", "..") for part in path.split("/")):
                raise _HttpError(422, f"Invalid path {path!r}")
            if key == "file":
                if value.get("encoding", "base64") != "base64":
                    raise _HttpError(422, f"Unsupported encoding {value.get('encoding')!r}")
                data = base64.b64decode(value.get("content", ""))
                files[path] = StoredFile(data, False, hashlib.sha256(data).hexdigest())
            elif key == "lfsFile":
                oid = value.get("oid")
                if value.get("algo", "sha256") != "sha256" or oid not in repo.lfs_oids:
                    raise _HttpError(422, f"LFS object {oid} for '{path}' was never uploaded to {repo_id}")
                data = self.hub.lfs_objects[oid]
                if value.get("size") is not None and value["size"] != len(data):
                    raise _HttpError(422, f"Size mismatch for LFS file '{path}'")
                files[path] = StoredFile(data, True, oid)
            elif key == "deletedFile":
                if path not in files:
                    raise _HttpError(404, "A file with this name doesn't exist", code="EntryNotFound")
                del files[path]
            elif key == "deletedFolder":
                prefix = path.rstrip("/") + "/"
                for p in [p for p in files if p.startswith(prefix)]:
                    del files[p]
            else:
                raise _HttpError(422, f"Unsupported commit operation {key!r}")
        commit = self.hub._new_commit(repo, files, header.get("summary") or "", header.get("description") or "",
                                      user.name)
        if self.hub._take_failure("500-after-commit"):  # stored, and the answer lost (a gateway timing out)
            raise _HttpError(500, "Internal Error (injected: 500-after-commit)")
        self._send_json(200, {"success": True, "commitOid": commit.oid, "pullRequestUrl": None,
                              "commitUrl": f"{self.hub.endpoint}/{repo_id}/commit/{commit.oid}", "hookOutput": ""})

    def _resolve(self, repo_id: str, revision: str, path: str) -> None:
        repo = self._readable_repo(repo_id, self._user())
        commit = self._commit_or_404(repo, revision)
        f = commit.files.get(path)
        if f is None:
            raise _HttpError(404, "Entry not found", code="EntryNotFound", headers={"X-Repo-Commit": commit.oid})
        headers = {"X-Repo-Commit": commit.oid, "Accept-Ranges": "bytes"}
        if not f.lfs:
            headers["ETag"] = f'"{f.oid}"'
            return self._send_bytes(f.data, headers)
        location = f"{self.hub.cdn_endpoint}/lfs/{f.sha256}?sig={self.hub._sign('get', f.sha256)}"
        body = f"Found. Redirecting to {location}".encode()
        headers.update({"ETag": f'"{f.oid}"', "X-Linked-Etag": f'"{f.sha256}"', "X-Linked-Size": str(f.size),
                        "Location": location})
        self._send(302, body, headers, content_type="text/plain; charset=utf-8")
