"""The API's web layer on Starlette: routes, the caller as a dependency, one error shape.

A resource module (:mod:`.apps`, :mod:`.slugs`, :mod:`.dynos`, :mod:`.jobs`) lists its
:class:`Endpoint` objects: a method, a path, who may call it (:class:`Access`) and a plain
function ``handler(call, **path_params) -> (status, body)``. :func:`build` turns them into
one Starlette application:

- a ``GET`` handler runs on the event loop (it reads SQLite, which in WAL mode never
  waits for a writer, or it hands back a stream whose chunks are fetched in worker
  threads); any other runs in a worker thread (a write may wait for SQLite's lock, a
  dyno starts with ``Popen``, an upload streams to disk). A handler sees the request as
  a :class:`Call`: the caller (authenticated and authorized before the
  handler runs), the query, the JSON body (read on demand, at most :data:`MAX_JSON_BYTES`),
  an upload streamed to a temporary file while it is hashed, and Heroku's ``Range``;
- a body is JSON (with an ``ETag``; ``If-None-Match`` gives 304), nothing, or a
  :class:`~selfhost.platform.api.streams.Stream` (chunked, ended when the client goes);
- every error, whatever raised it, leaves as Heroku's ``{"id", "message"}`` with the
  status of :mod:`.errors`; a bug is a 500 of that shape, logged, and the server stays up;
- every response carries ``Request-Id`` (the client's, if it sent a sane one) and
  ``RateLimit-Remaining``; the daemon logs one line per request.
"""

from __future__ import annotations

import contextlib
import enum
import hashlib
import json
import os
import re
import tempfile
import urllib.parse
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import anyio.from_thread
import anyio.to_thread
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from selfhost.platform.api.auth import Principal, authenticate
from selfhost.platform.api.errors import ApiError, status_of
from selfhost.platform.api.ranges import paginate
from selfhost.platform.api.streams import Stream
from selfhost.platform.errors import Refused
from selfhost.platform.paths import PlatformPaths
from selfhost.platform.store.db import Store

ACCEPT_V3 = "application/vnd.heroku+json; version=3"
MAX_JSON_BYTES = 1 << 20
RATE_LIMIT = 4500  # what /account/rate-limits and RateLimit-Remaining report (not enforced)
#: Worker threads for handlers and streams (a followed log holds one while it waits).
THREADS = 256
Reply = tuple[int, Any]


class Access(enum.Enum):
    """Who may call an endpoint."""

    PLATFORM = "platform"  # the platform's token only
    DYNO = "dyno"  # also a dyno's token, for its own app (the ``app`` path parameter)
    URL = "url"  # no token: the URL carries its own secret, checked by the handler


PLATFORM, DYNO, URL = Access.PLATFORM, Access.DYNO, Access.URL


@dataclass(frozen=True)
class Endpoint:
    """One route: ``method path`` served by ``handler(call, **params)``."""

    method: str
    path: str
    handler: Callable[..., Reply]
    access: Access = PLATFORM

    @property
    def name(self) -> str:
        return self.handler.__name__


@dataclass
class Context:
    """What every handler may reach: the platform's paths, store, token and limits."""

    paths: PlatformPaths
    store: Store
    token: str
    default_stack: str
    max_blob_bytes: int
    log: Callable[[str], None] | None = None


@dataclass
class Call:
    """One request, as a handler (in a worker thread) sees it."""

    request: Request
    ctx: Context
    principal: Principal = field(default_factory=Principal)
    extra_headers: dict[str, str] = field(default_factory=dict)

    @property
    def headers(self) -> Any:
        return self.request.headers

    @property
    def query(self) -> dict[str, list[str]]:
        return urllib.parse.parse_qs(self.request.url.query)

    def query_str(self, name: str, default: str = "") -> str:
        return (self.query.get(name) or [default])[0]

    def query_int(self, name: str, default: int) -> int:
        """A whole-number query parameter, or 400."""
        value = self.query_str(name) or str(default)
        if not value.isdigit():
            raise ApiError(400, "bad_request", f"{name} must be a whole number, not {value!r}.")
        return int(value)

    @property
    def base_url(self) -> str:
        """This server as the client reached it (for URLs handed back to it)."""
        host = self.request.headers.get("host") or self.request.url.netloc
        return f"http://{host}"

    def json(self) -> dict[str, Any]:
        """The request's JSON object body (``{}`` when there is none), or 400/413."""
        declared = self.content_length()
        if declared is not None and declared > MAX_JSON_BYTES:
            raise ApiError(413, "payload_too_large", "Request body too large.")

        async def read() -> bytes:
            data = bytearray()
            async for chunk in self.request.stream():
                data += chunk
                if len(data) > MAX_JSON_BYTES:
                    raise ApiError(413, "payload_too_large", "Request body too large.")
            return bytes(data)

        try:
            raw = anyio.from_thread.run(read)
        except ClientDisconnect:
            raise ApiError(400, "bad_request", "The request body was cut short.") from None
        if not raw.strip():
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

    def content_length(self) -> int | None:
        value = self.request.headers.get("content-length")
        if value is None:
            return None
        if not value.strip().isdigit():  # the HTTP parser refuses these first
            raise ApiError(
                400, "bad_request", f"Content-Length must be a whole number, not {value!r}."
            )
        return int(value)

    @contextlib.contextmanager
    def receive_body(self, what: str) -> Iterator[tuple[str, int, Path]]:
        """Stream the request body (it needs a Content-Length within the blob limit) to a
        temporary file in ``blobs/tmp``, hashing it as it comes; yields ``(sha256,
        length, path)``. The file is removed afterwards unless the caller moved it."""
        length = self.content_length()
        if length is None or "chunked" in self.request.headers.get("transfer-encoding", ""):
            raise ApiError(411, "length_required", f"Send the {what} with a Content-Length.")
        limit = self.ctx.max_blob_bytes
        if length > limit:
            raise ApiError(
                413,
                "payload_too_large",
                f"The {what} is {length} bytes; the limit is {limit} bytes.",
            )
        chunks = self.request.stream().__aiter__()

        async def next_chunk() -> bytes | None:
            try:
                return await chunks.__anext__()
            except (StopAsyncIteration, ClientDisconnect):
                return None

        sha = hashlib.sha256()
        fd, tmp_name = tempfile.mkstemp(dir=self.ctx.paths.blob_tmp, prefix="upload-")
        tmp = Path(tmp_name)
        try:
            received = 0
            with os.fdopen(fd, "wb") as out:
                while (chunk := anyio.from_thread.run(next_chunk)) is not None:
                    sha.update(chunk)
                    out.write(chunk)
                    received += len(chunk)
            if received != length:
                raise ApiError(400, "bad_request", f"The {what} upload was cut short.")
            yield sha.hexdigest(), length, tmp
        finally:
            tmp.unlink(missing_ok=True)

    def page(self, items: list[dict[str, Any]], fields: Sequence[str]) -> Reply:
        """A list answer, ranged as the client's ``Range`` header asks (:mod:`.ranges`)."""
        found = paginate(items, self.request.headers.get("range"), fields)
        self.extra_headers.update(found.headers)
        return found.status, found.items


def caller(call: Call, endpoint: Endpoint, params: dict[str, str]) -> Principal:
    """The dependency every endpoint but :data:`URL` ones has: who is calling, checked
    against what the endpoint allows (401 or 403 otherwise), speaking version 3."""
    store = call.ctx.store
    principal = authenticate(store, call.ctx.token, call.request.headers.get("authorization", ""))
    accept = call.request.headers.get("accept", "")
    m = re.search(r"version=(\d+)", accept)
    if m and m.group(1) != "3":
        raise ApiError(
            400, "bad_request", f"Unsupported API version {m.group(1)}: send Accept: {ACCEPT_V3}."
        )
    if principal.platform:
        return principal
    if endpoint.access is not DYNO:
        raise ApiError(
            403,
            "forbidden",
            f"This token belongs to a dyno of {principal.app_name}: it may not call "
            f"{endpoint.name.replace('_', ' ')} (a dyno's token acts only for its own app).",
        )
    if "app" in params:
        principal.require_app(store.app(params["app"])["id"], f"act on {params['app']}")
    return principal


def error_body(exc: Refused) -> tuple[int, dict[str, str]]:
    return status_of(exc), exc.to_json()


def _json_response(call: Call, status: int, body: Any) -> Response:
    data = b"" if body is None else json.dumps(body, separators=(",", ":")).encode()
    headers = dict(call.extra_headers)
    if call.request.method == "GET" and status in (200, 206):
        etag = f'"{hashlib.sha256(data).hexdigest()[:32]}"'
        headers["ETag"] = etag
        wanted = {t.strip() for t in call.request.headers.get("if-none-match", "").split(",")}
        if etag in wanted:
            return Response(status_code=304, headers=headers)  # the client's copy is current
    return Response(data, status, headers, media_type="application/json")


def _error_response(request: Request, status: int, body: dict[str, str]) -> Response:
    headers = {}
    if request.method in ("PUT", "POST", "PATCH"):
        headers["Connection"] = "close"  # its unread body may still be in flight
    return Response(
        json.dumps(body, separators=(",", ":")).encode(), status, headers, "application/json"
    )


async def _stream_body(chunks: Iterator[bytes]) -> AsyncIterator[bytes]:
    """A blocking iterator's chunks, each fetched in a worker thread; empty chunks (keep-
    alive ticks) are skipped. When the client goes, Starlette cancels this; the pending
    fetch finishes first, then the iterator is closed (a dyno's output, a followed log)."""
    try:
        while (chunk := await anyio.to_thread.run_sync(next, chunks, None)) is not None:
            if chunk:
                yield chunk
    finally:
        close = getattr(chunks, "close", None)
        if close is not None:
            close()


def _stream_response(status: int, stream: Stream) -> Response:
    return StreamingResponse(
        _stream_body(iter(stream.chunks)),
        status,
        {"Cache-Control": "no-store"},
        media_type=stream.content_type,
    )


def _endpoint(ctx: Context, endpoint: Endpoint) -> Callable[[Request], Any]:
    def run(call: Call, params: dict[str, str]) -> Reply:
        if endpoint.access is not URL:
            call.principal = caller(call, endpoint, params)
        return endpoint.handler(call, **params)

    async def serve(request: Request) -> Response:
        call = Call(request, ctx)
        params = dict(request.path_params)
        try:
            if request.method == "GET":  # reads: SQLite in WAL mode never waits to read
                status, body = run(call, params)
            else:
                status, body = await anyio.to_thread.run_sync(run, call, params)
        except Refused as exc:
            return _error_response(request, *error_body(exc))
        except Exception as exc:  # a bug: answer in Heroku's shape, log it, stay up
            if ctx.log:
                ctx.log(f"internal error on {request.method} {request.url.path}: {exc!r}")
            return _error_response(
                request,
                500,
                {
                    "id": "internal_server_error",
                    "message": "Internal error; see the platform's daemon.log.",
                },
            )
        if isinstance(body, Stream):
            return _stream_response(status, body)
        return _json_response(call, status, body)

    serve.__name__ = endpoint.name
    return serve


async def _http_error(request: Request, exc: Exception) -> Response:
    """The router's own refusals (no such path, wrong method) in Heroku's shape."""
    assert isinstance(exc, HTTPException)
    if exc.status_code == 405:
        body = {
            "id": "method_not_allowed",
            "message": f"{request.method} is not allowed on {request.url.path}.",
        }
    elif exc.status_code == 404:
        body = {"id": "not_found", "message": f"No such resource: {request.url.path}."}
    else:
        body = {"id": "bad_request", "message": str(exc.detail)}
    return _error_response(request, exc.status_code, body)


class Conventions:
    """Pure ASGI middleware: ``Request-Id`` and ``RateLimit-Remaining`` on every response,
    and one log line per request (streams are logged when they end)."""

    def __init__(self, app: ASGIApp, log: Callable[[str], None] | None):
        self.app = app
        self.log = log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = ""
        for name, value in scope["headers"]:
            if name == b"request-id":
                given = value.decode("latin-1")
        request_id = given if re.fullmatch(r"[\w.:-]{1,200}", given) else str(uuid.uuid4())
        status = 0

        async def send_with_headers(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [
                    *message.get("headers", []),
                    (b"request-id", request_id.encode()),
                    (b"ratelimit-remaining", str(RATE_LIMIT).encode()),
                ]
            await send(message)

        try:
            await self.app(scope, receive, send_with_headers)
        finally:
            if self.log:
                self.log(f"{scope['method']} {scope['path']} {status}")


def build(ctx: Context, endpoints: Sequence[Endpoint]) -> ASGIApp:
    """The API as one ASGI application."""
    routes = [Route(e.path, _endpoint(ctx, e), methods=[e.method], name=e.name) for e in endpoints]
    app = Starlette(routes=routes, exception_handlers={HTTPException: _http_error})
    return Conventions(app, ctx.log)
