"""The platform's HTTP API: the part of Heroku's Platform API that selfhost needs.

Same paths, JSON field names and error shape (``{"id", "message"}``) as Heroku:

==========  ==========================================  ===================================
method      path                                        what
==========  ==========================================  ===================================
GET         /apps                                       list apps
POST        /apps                                       create ``{name, stack}``
GET         /apps/{app}                                 app info (id or name)
POST        /apps/{app}/slugs                           create; answers ``blob: {method, url}``
GET         /apps/{app}/slugs/{slug}                    slug info
PUT         /blobs/{slug}?token=...                     upload the slug archive (the blob URL)
GET         /blobs/{slug}?token=...                     download it (``blob.url`` of slug info)
GET         /apps/{app}/releases                        list releases
POST        /apps/{app}/releases                        ``{slug}`` release, ``{release}`` rollback
GET         /apps/{app}/releases/{id or version}        release info
GET/PATCH   /apps/{app}/config-vars                     config vars (PATCH: null unsets)
GET/PATCH   /apps/{app}/formation                       formation; PATCH ``{updates: [...]}``
GET         /health                                     liveness (no token needed)
==========  ==========================================  ===================================

Every request but ``/health`` and the blob URL needs ``Authorization: Bearer <token>``
(HTTP Basic with the token as password also works, as Heroku's CLI sends it): the
platform's token, or a dyno's token scoped to its own app (see
:mod:`selfhost.platform.api.auth`: anything else it asks for is 403). The blob URL
carries its own per-slug secret, like Heroku's pre-signed URLs. An uploaded blob is
hashed while it streams to disk; if its sha256 differs from the slug's declared
checksum it is discarded and the slug stays unreleasable.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import select
import socket
import tempfile
import threading
import urllib.parse
import uuid
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from selfhost.archive import Limits
from selfhost.errors import SlugError
from selfhost.platform.api.auth import Principal, authenticate, authorize
from selfhost.platform.api.errors import ApiError, status_of
from selfhost.platform.api.ranges import paginate
from selfhost.platform.api.streams import Stream, file_chunks
from selfhost.platform.errors import Refused
from selfhost.platform.paths import PlatformPaths
from selfhost.platform.slugs.slug import UNPACK_LIMITS, check_slug
from selfhost.platform.store.db import Store

ACCEPT_V3 = "application/vnd.heroku+json; version=3"
MAX_JSON_BYTES = 1 << 20
RATE_LIMIT = 4500  # what /account/rate-limits reports (requests are not limited)
IDLE_SECONDS = 120  # an idle connection is closed after this long
Handler = Callable[..., tuple[int, Any]]


class PlatformServer(ThreadingHTTPServer):
    """The API server; holds the store, the token and the limits."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128  # the listen backlog (socketserver's default is 5)

    def __init__(
        self,
        address: tuple[str, int],
        paths: PlatformPaths,
        *,
        stack: str,
        max_blob_bytes: int,
        routes: dict[str, Handler] | None = None,
        on_change: Callable[[str], None] | None = None,
        log: Callable[[str], None] | None = None,
        unpack_limits: Limits = UNPACK_LIMITS,
    ):
        super().__init__(address, RequestHandler)
        self.paths = paths
        self.store = Store(paths)
        self.token = paths.ensure_token()
        self.default_stack = stack
        self.max_blob_bytes = max_blob_bytes
        self.unpack_limits = unpack_limits  # what an uploaded slug may unpack to
        self.routes = routes or {}  # handlers of routes served by other parts (dynos)
        self.on_change = on_change  # called with the app after a release or a scale
        self.log = log
        paths.blobs.mkdir(parents=True, exist_ok=True)
        paths.blob_tmp.mkdir(parents=True, exist_ok=True)
        for stale in paths.blob_tmp.iterdir():  # uploads cut off by a crash
            stale.unlink(missing_ok=True)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host!s}:{port}"


ROUTES: list[tuple[str, re.Pattern[str], str]] = [
    (m, re.compile(p), h)
    for m, p, h in [
        ("GET", r"^/health$", "health"),
        ("GET", r"^/account$", "account_info"),
        ("GET", r"^/account/rate-limits$", "rate_limits"),
        ("GET", r"^/users/(?P<user>[^/]+)/apps$", "users_apps"),
        ("GET", r"^/apps/(?P<app>[^/]+)/addons$", "addons_list"),
        ("GET", r"^/apps$", "apps_list"),
        ("POST", r"^/apps$", "apps_create"),
        ("GET", r"^/apps/(?P<app>[^/]+)$", "apps_info"),
        ("POST", r"^/apps/(?P<app>[^/]+)/slugs$", "slugs_create"),
        ("GET", r"^/apps/(?P<app>[^/]+)/slugs/(?P<slug>[^/]+)$", "slugs_info"),
        ("PUT", r"^/blobs/(?P<slug>[^/]+)$", "blob_put"),
        ("GET", r"^/blobs/(?P<slug>[^/]+)$", "blob_get"),
        ("GET", r"^/apps/(?P<app>[^/]+)/releases$", "releases_list"),
        ("POST", r"^/apps/(?P<app>[^/]+)/releases$", "releases_create"),
        ("GET", r"^/apps/(?P<app>[^/]+)/releases/(?P<release>[^/]+)$", "releases_info"),
        ("GET", r"^/apps/(?P<app>[^/]+)/config-vars$", "config_info"),
        ("PATCH", r"^/apps/(?P<app>[^/]+)/config-vars$", "config_update"),
        ("GET", r"^/apps/(?P<app>[^/]+)/formation$", "formation_list"),
        ("GET", r"^/apps/(?P<app>[^/]+)/formation/(?P<type>[^/]+)$", "formation_info"),
        ("PATCH", r"^/apps/(?P<app>[^/]+)/formation/(?P<type>[^/]+)$", "formation_one"),
        (
            "GET",
            r"^/apps/(?P<app>[^/]+)/releases/(?P<release>[^/]+)/config-vars$",
            "release_config",
        ),
        ("PATCH", r"^/apps/(?P<app>[^/]+)/formation$", "formation_update"),
        ("POST", r"^/apps/(?P<app>[^/]+)/dynos$", "dynos_create"),
        ("GET", r"^/apps/(?P<app>[^/]+)/dynos$", "dynos_list"),
        ("GET", r"^/apps/(?P<app>[^/]+)/dynos/(?P<dyno>[^/]+)$", "dynos_info"),
        ("POST", r"^/apps/(?P<app>[^/]+)/dynos/(?P<dyno>[^/]+)/actions/stop$", "dynos_stop"),
        ("GET", r"^/dynos/(?P<dyno>[^/]+)/attach$", "dyno_attach"),
        ("POST", r"^/apps/(?P<app>[^/]+)/log-sessions$", "log_sessions_create"),
        ("GET", r"^/logs/(?P<app>[^/]+)$", "log_stream"),
        # compile jobs (job_api.py)
        ("POST", r"^/apps/(?P<app>[^/]+)/jobs$", "jobs_create"),
        ("GET", r"^/apps/(?P<app>[^/]+)/jobs$", "jobs_list"),
        ("GET", r"^/apps/(?P<app>[^/]+)/jobs/(?P<job>[^/]+)$", "jobs_info"),
        ("POST", r"^/apps/(?P<app>[^/]+)/jobs/(?P<job>[^/]+)/actions/cancel$", "jobs_cancel"),
        ("POST", r"^/jobs/(?P<job>[^/]+)/claim$", "jobs_claim"),
        ("POST", r"^/jobs/(?P<job>[^/]+)/heartbeat$", "jobs_heartbeat"),
        ("POST", r"^/jobs/(?P<job>[^/]+)/finish$", "jobs_finish"),
        ("POST", r"^/jobs/(?P<job>[^/]+)/requeue$", "jobs_requeue"),
        ("POST", r"^/jobs/(?P<job>[^/]+)/sandbox$", "jobs_sandbox"),
        ("PUT", r"^/jobs/(?P<job>[^/]+)/artifact$", "jobs_artifact"),
        ("GET", r"^/jobs/(?P<job>[^/]+)/source$", "jobs_source"),
        ("GET", r"^/stages/(?P<key>[0-9a-f]{64})$", "stages_info"),
        ("GET", r"^/stages/(?P<key>[0-9a-f]{64})/blob$", "stages_blob"),
        ("PUT", r"^/stages/(?P<key>[0-9a-f]{64})$", "stages_put"),
    ]
]
#: Routes whose URL carries its own secret instead of the API token.
UNAUTHENTICATED = {"health", "blob_put", "blob_get", "dyno_attach", "log_stream"}


class RequestHandler(BaseHTTPRequestHandler):
    """Routes a request, checks the token, and answers JSON or a Heroku-style error."""

    server: PlatformServer
    protocol_version = "HTTP/1.1"
    timeout = IDLE_SECONDS  # an idle keep-alive connection does not hold a thread forever
    server_version = "selfhost-platform"

    def setup(self) -> None:
        # http.server writes the headers and the body separately; with Nagle's algorithm
        # and the client's delayed ACK that costs ~40 ms per response on loopback.
        self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        super().setup()

    def log_message(self, format: str, *args: Any) -> None:
        pass  # the daemon logs one line per request itself

    def _dispatch(self) -> None:
        self.extra_headers: dict[str, str] = {}
        # the client's Request-Id if it sent one (to follow a request through logs)
        given = self.headers.get("Request-Id", "")
        self.request_id = given if re.fullmatch(r"[\w.:-]{1,200}", given) else str(uuid.uuid4())
        parsed = urllib.parse.urlsplit(self.path)
        self.query = urllib.parse.parse_qs(parsed.query)
        try:
            route = None
            allowed = False
            for verb, pattern, name in ROUTES:
                m = pattern.match(parsed.path)
                if m:
                    allowed = True
                    if verb == self.command:
                        route = (
                            name,
                            {k: urllib.parse.unquote(v) for k, v in m.groupdict().items()},
                        )
                        break
            if route is None:
                if allowed:
                    raise ApiError(
                        405,
                        "method_not_allowed",
                        f"{self.command} is not allowed on {parsed.path}.",
                    )
                raise ApiError(404, "not_found", f"No such resource: {parsed.path}.")
            name, params = route
            self.principal = Principal()
            if name not in UNAUTHENTICATED:
                self.principal = authenticate(
                    self.server.store, self.server.token, self.headers.get("Authorization", "")
                )
                authorize(self.principal, name, params, self.server.store)
                self._check_accept()
            method = getattr(self, f"do_{name}", None)
            if method is not None:
                status, body = method(**params)
            elif name in self.server.routes:
                status, body = self.server.routes[name](self, **params)
            else:
                raise ApiError(501, "not_implemented", f"{name} is not available here.")
            self._send(status, body)
        except Refused as exc:  # from any layer; only here does it get its status
            self._send(status_of(exc), exc.to_json())
        except Exception as exc:  # a bug: answer in Heroku's shape, log it, stay up
            self.server_log(f"internal error on {self.command} {self.path}: {exc!r}")
            self._send(
                500,
                {
                    "id": "internal_server_error",
                    "message": "Internal error; see the platform's daemon.log.",
                },
            )

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _dispatch

    def server_log(self, line: str) -> None:
        if self.server.log:
            self.server.log(line)

    # ------------------------------------------------------------------ plumbing
    def _check_accept(self) -> None:
        accept = self.headers.get("Accept", "")
        m = re.search(r"version=(\d+)", accept)
        if m and m.group(1) != "3":
            raise ApiError(
                400,
                "bad_request",
                f"Unsupported API version {m.group(1)}: send Accept: {ACCEPT_V3}.",
            )

    def content_length(self) -> int:
        """The request's Content-Length: a whole number, or 400."""
        value = (self.headers.get("Content-Length") or "0").strip()
        if not value.isdigit():
            self.close_connection = True  # where the body ends is unknown
            raise ApiError(
                400, "bad_request", f"Content-Length must be a whole number, not {value!r}."
            )
        return int(value)

    def _json_body(self) -> dict[str, Any]:
        length = self.content_length()
        if length > MAX_JSON_BYTES:
            raise ApiError(413, "payload_too_large", "Request body too large.")
        raw = self.rfile.read(length) if length else b""
        if not raw:
            return {}
        try:
            body = json.loads(raw)
        except ValueError as exc:
            raise ApiError(400, "bad_request", f"Malformed JSON body: {exc}.") from None
        except RecursionError:
            raise ApiError(400, "bad_request", "The JSON body is nested too deeply.") from None
        if not isinstance(body, dict):
            raise ApiError(400, "bad_request", "The JSON body must be an object.")
        return body

    def query_int(self, name: str, default: int) -> int:
        """A whole-number query parameter, or 400."""
        value = (self.query.get(name) or [str(default)])[0] or str(default)
        if not value.isdigit():
            raise ApiError(400, "bad_request", f"{name} must be a whole number, not {value!r}.")
        return int(value)

    @property
    def base_url(self) -> str:
        """This server as the client reached it (for URLs handed back to it)."""
        return f"http://{self.headers.get('Host') or self.server.url.removeprefix('http://')}"

    @contextlib.contextmanager
    def receive_body(self, what: str) -> Iterator[tuple[str, int, Path]]:
        """Stream the request body (it needs a Content-Length within the blob limit) to a
        temporary file in ``blobs/tmp``, hashing it as it comes; yields ``(sha256,
        length, path)``. The file is removed afterwards unless the caller moved it."""
        if (
            self.headers.get("Transfer-Encoding", "").lower() == "chunked"
            or self.headers.get("Content-Length") is None
        ):
            raise ApiError(411, "length_required", f"Send the {what} with a Content-Length.")
        length = self.content_length()
        if length > self.server.max_blob_bytes:
            raise ApiError(
                413,
                "payload_too_large",
                f"The {what} is {length} bytes; the limit is {self.server.max_blob_bytes} bytes.",
            )
        sha = hashlib.sha256()
        fd, tmp_name = tempfile.mkstemp(dir=self.server.paths.blob_tmp, prefix="upload-")
        tmp = Path(tmp_name)
        try:
            remaining = length
            with os.fdopen(fd, "wb") as out:
                while remaining:
                    chunk = self.rfile.read(min(remaining, 1 << 20))
                    if not chunk:
                        raise ApiError(400, "bad_request", "The upload was cut short.")
                    sha.update(chunk)
                    out.write(chunk)
                    remaining -= len(chunk)
            yield sha.hexdigest(), length, tmp
        finally:
            tmp.unlink(missing_ok=True)

    def _client_gone(self) -> bool:
        """True when the client closed its end (checked between stream chunks)."""
        readable, _, _ = select.select([self.connection], [], [], 0)
        if not readable:
            return False
        try:
            return self.connection.recv(1, socket.MSG_PEEK) == b""
        except OSError:
            return True

    def _send_stream(self, status: int, stream: Any) -> None:
        """A chunked response fed by ``stream.chunks``; ends when they do or the client
        goes away."""
        self.send_response(status)
        self.send_header("Content-Type", stream.content_type)
        self.send_header("Request-Id", self.request_id)
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("Cache-Control", "no-store")
        self.send_header("Connection", "close")  # a stream ends its connection: say so
        self.end_headers()
        try:
            for chunk in stream.chunks:
                if chunk:
                    self.wfile.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
                    self.wfile.flush()
                elif self._client_gone():
                    break
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            pass
        finally:
            close = getattr(stream.chunks, "close", None)
            if close:
                close()
        self.close_connection = True
        self.server_log(
            f"{self.command} {urllib.parse.urlsplit(self.path).path} {status} (streamed)"
        )

    def _send(self, status: int, body: Any) -> None:
        if hasattr(body, "chunks"):
            self._send_stream(status, body)
            return
        data = b"" if body is None else (json.dumps(body, indent=2) + "\n").encode()
        etag = None
        if self.command == "GET" and status in (200, 206):
            etag = f'"{hashlib.sha256(data).hexdigest()[:32]}"'
            if etag in {t.strip() for t in self.headers.get("If-None-Match", "").split(",")}:
                status, data = 304, b""  # the client's copy is current
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Request-Id", self.request_id)
        self.send_header("RateLimit-Remaining", str(RATE_LIMIT))
        if etag:
            self.send_header("ETag", etag)
        for name, value in self.extra_headers.items():
            self.send_header(name, value)
        if status >= 400 and self.command in ("PUT", "POST", "PATCH"):
            self.send_header("Connection", "close")  # the unread body may still be in flight
            self.close_connection = True
        self.end_headers()
        self.wfile.write(data)
        self.server_log(f"{self.command} {urllib.parse.urlsplit(self.path).path} {status}")

    # ------------------------------------------------------------------ handlers
    def do_health(self) -> tuple[int, Any]:
        return 200, {"status": "ok"}

    def page(self, items: list[dict[str, Any]], fields: tuple[str, ...]) -> tuple[int, Any]:
        """A list answer, ranged as the client's Range header asks (see ranges.py)."""
        found = paginate(items, self.headers.get("Range"), fields)
        self.extra_headers.update(found.headers)
        return found.status, found.items

    def do_account_info(self) -> tuple[int, Any]:
        return 200, self.server.store.account()

    def do_rate_limits(self) -> tuple[int, Any]:
        return 200, {"remaining": RATE_LIMIT}

    def do_users_apps(self, user: str) -> tuple[int, Any]:
        """The apps a user owns: every app, for the platform's one account."""
        account = self.server.store.account()
        if user not in ("~", account["id"], account["email"]):
            raise ApiError(404, "not_found", "Couldn't find that user.")
        return self.page(self.server.store.apps(), ("name", "id"))

    def do_addons_list(self, app: str) -> tuple[int, Any]:
        self.server.store.app(app)  # 404 for an unknown app; the platform has no add-ons
        return 200, []

    def do_apps_list(self) -> tuple[int, Any]:
        return self.page(self.server.store.apps(), ("name", "id"))

    def do_apps_create(self) -> tuple[int, Any]:
        body = self._json_body()
        name = body.get("name")
        if name is not None and not isinstance(name, str):
            raise ApiError(422, "invalid_params", "name must be a string.")
        return 201, self.server.store.create_app(
            name, body.get("stack") or self.server.default_stack
        )

    def do_apps_info(self, app: str) -> tuple[int, Any]:
        return 200, self.server.store.app(app)

    def do_slugs_create(self, app: str) -> tuple[int, Any]:
        slug, token = self.server.store.create_slug(app, self._json_body())
        slug["blob"] = {"method": "put", "url": f"{self.base_url}/blobs/{slug['id']}?token={token}"}
        return 201, slug

    def do_slugs_info(self, app: str, slug: str) -> tuple[int, Any]:
        found = self.server.store.slug(app, slug)
        token = self.server.store.download_token(found["id"])
        if token:  # uploaded: its blob is a pre-signed GET URL, as Heroku's
            url = f"{self.base_url}/blobs/{found['id']}?token={token}"
            found["blob"] = {"method": "get", "url": url}
        return 200, found

    def do_blob_get(self, slug: str) -> tuple[int, Any]:
        """The slug archive, streamed, from its download URL (its own secret)."""
        row = self.server.store.slug_for_download(slug, (self.query.get("token") or [""])[0])
        path = self.server.paths.blob(row["blob_sha256"])
        return 200, Stream(file_chunks(path), "application/gzip")

    def do_blob_put(self, slug: str) -> tuple[int, Any]:
        token = (self.query.get("token") or [""])[0]
        row = self.server.store.slug_for_upload(slug, token)
        with self.receive_body("blob") as (digest, length, tmp):
            declared = row["checksum"]
            if declared and declared != f"SHA256:{digest}":
                raise ApiError(
                    422,
                    "checksum_mismatch",
                    f"The uploaded blob's checksum is SHA256:{digest} but the slug "
                    f"declares {declared}; the blob was discarded.",
                )
            try:
                # refuse escaping entries and bombs before anything could unpack them
                check_slug(tmp, self.server.unpack_limits)
            except SlugError as exc:
                raise ApiError(422, "invalid_slug", exc.message) from None
            os.chmod(tmp, 0o644)
            os.replace(tmp, self.server.paths.blob(digest))  # in place before it is recorded
            self.server.store.attach_blob(slug, digest, length)
            return 200, None

    def do_releases_list(self, app: str) -> tuple[int, Any]:
        return self.page(self.server.store.releases(app), ("version", "id"))

    def do_releases_create(self, app: str) -> tuple[int, Any]:
        body = self._json_body()
        if "release" in body:  # Heroku's rollback: {"release": id or version}
            release = self.server.store.rollback(app, str(body["release"]))
            self._changed(app)
            return 201, release
        slug = body.get("slug")
        if not isinstance(slug, str):
            raise ApiError(422, "invalid_params", "slug (a slug id) is required.")
        release = self.server.store.create_release(app, slug, body.get("description"))
        self._changed(app)
        return 201, release

    def do_releases_info(self, app: str, release: str) -> tuple[int, Any]:
        return 200, self.server.store.release(app, release)

    def do_config_info(self, app: str) -> tuple[int, Any]:
        return 200, self.server.store.config(app)

    def do_config_update(self, app: str) -> tuple[int, Any]:
        return 200, self.server.store.update_config(app, self._json_body())

    def do_formation_list(self, app: str) -> tuple[int, Any]:
        return 200, self.server.store.formation(app)

    def do_formation_update(self, app: str) -> tuple[int, Any]:
        result = self.server.store.update_formation(app, self._json_body().get("updates"))
        self._changed(app)
        return 200, result

    def do_formation_info(self, app: str, type: str) -> tuple[int, Any]:
        for entry in self.server.store.formation(app):
            if type in (entry["type"], entry["id"]):
                return 200, entry
        raise ApiError(404, "not_found", f"Couldn't find that process type ({type}).")

    def do_formation_one(self, app: str, type: str) -> tuple[int, Any]:
        """PATCH one process type: ``{quantity, size}`` (Heroku's CLI for ps:scale)."""
        body = self._json_body()
        update: dict[str, Any] = {"type": type}
        update.update({k: body[k] for k in ("quantity", "size") if k in body})
        result = self.server.store.update_formation(app, [update])
        self._changed(app)
        return 200, result[0]

    def do_release_config(self, app: str, release: str) -> tuple[int, Any]:
        return 200, self.server.store.release_config(app, release)

    def _changed(self, app: str) -> None:
        if self.server.on_change:
            self.server.on_change(app)


def serve_in_thread(server: PlatformServer) -> threading.Thread:
    """Run a server in a background thread (for tests and benchmarks)."""
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return thread
