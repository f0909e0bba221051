"""The router: ``http://APP.localhost:PORT/`` reaches the app's web dynos.

An aiohttp server and client in one process, apart from the daemon (docs/platform.md,
"The router"). Per request:

1. the ``Host`` header names the app (``APP.localhost``, or ``APP.`` any ``--domain``);
2. a backend is chosen among the app's routable web dynos: the one with the fewest
   outstanding requests in all the router's workers (ties: the fewest in this worker,
   then the one used longest ago);
3. the request goes to its host port with Heroku's ``X-Forwarded-*``,
   ``X-Request-Id`` and ``X-Request-Start`` headers; the response streams back;
4. one ``heroku[router]`` line goes to the app's log, in Heroku's format.

**Health.** A backend is routable while its process lives, a socket listens on its
``$PORT`` in its namespace and none of its processes is stopped; a probe reads that
from /proc every ``probe_interval`` (:mod:`selfhost.platform.runtime.probe`). A failed
connection or a connection closed without a response takes a backend out at once; a
backend out for more than ``restart_after`` seconds while the daemon still lists it
(frozen, say) is restarted through the Platform API, and the supervisor replaces it.

**Retries.** A request whose connection failed before anything was sent is re-sent to
another backend, whatever its method; one that reached a backend is re-sent only if
its method is idempotent (GET, HEAD, OPTIONS, PUT, DELETE, TRACE), also when its backend
froze while it waited. Request bodies are read whole first (so they can be re-sent).

**Errors**, as Heroku's router names them: H10 (app crashed: web dynos wanted, none
routable), H12 (no response within ``request_timeout``), H13 (connection closed without
a response), H14 (no web dynos: ``web=0``), H20 (a started dyno did not bind its port in
time), H99 (the router's own failure). Each is a 503 with an HTML page and an
``at=error code=...`` log line.

**Per-request dynos.** For an app with ``SELFHOST_AUTOSTART=1``, a request at ``web=0``
scales web to 1 through the Platform API and waits until the dyno has bound its port;
after ``SELFHOST_IDLE_SECONDS`` without requests the router scales it back to 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

from selfhost.platform.paths import PlatformPaths
from selfhost.platform.router.activity import Activity, dyno_key
from selfhost.platform.router.table import AppRoute, Backend, Table, read_table
from selfhost.platform.router.upstream import Broken, Pool, Refused, Response
from selfhost.platform.runtime import probe
from selfhost.platform.runtime.dynos import AppLog

IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
#: request headers not passed on: hop-by-hop, and those the router sets itself
REPLACED = HOP_BY_HOP | {
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-port",
    "x-request-id",
    "content-length",  # set again: the body was read whole (and may have come chunked)
    "expect",  # the body is sent with the head: no 100-continue
}
REPLACED_B = frozenset(name.encode() for name in REPLACED)
ERRORS = {
    "H10": "App crashed",
    "H12": "Request timeout",
    "H13": "Connection closed without response",
    "H14": "No web processes running",
    "H18": "Server Request Interrupted",
    "H20": "App boot timeout",
    "H99": "Platform error",
}
MAX_BODY = 64 * 1024 * 1024
SMALL = 1024 * 1024  # responses up to this size are read whole, then sent at once
API_ACCEPT = "application/vnd.heroku+json; version=3"


@dataclass(frozen=True)
class RouterSettings:
    request_timeout: float = 30.0  # until the response's headers (H12)
    connect_timeout: float = 5.0
    probe_interval: float = 0.1
    restart_after: float = 1.0  # out of rotation this long: ask the daemon to restart it
    wait_for_dyno: float = 5.0  # web>0 but none routable: wait this long (then H10)
    boot_timeout: float = 60.0  # an autostarted dyno binds its port within (else H20)
    domain: str = "localhost"
    failover: bool = True  # False: a weakened router for the tests (no probe, no retry)


@dataclass(eq=False)
class Live:
    """A backend as the router sees it now."""

    backend: Backend
    slot: int  # its record in the workers' shared activity (all workers' requests)
    outstanding: int = 0  # this worker's requests to it
    routable: bool = False
    checked: bool = False  # probed at least once
    out_since: float | None = None  # when it left the rotation
    restart_asked: bool = False
    ever: bool = False  # it has been routable (a booting dyno is R10's, not ours)
    last_used: float = 0.0
    #: idempotent requests waiting for its answer: re-sent elsewhere if it dies or freezes
    waiting: set[asyncio.Task[Any]] = field(default_factory=set)

    def leave(self) -> None:
        if self.routable or not self.checked:
            self.out_since = time.monotonic()
        self.routable = False
        self.checked = True

    def join(self) -> None:
        self.routable, self.checked, self.out_since, self.ever = True, True, None, True


def new_request_id() -> str:
    """A random (version 4) UUID, as ``str(uuid.uuid4())`` spells it, in a third of the
    time (one per request)."""
    n = random.getrandbits(128) & ~(0xF000 << 64 | 0xC000 << 48) | (0x4000 << 64 | 0x8000 << 48)
    h = f"{n:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


class Attempt(Exception):
    """One backend failed a request: whether anything reached it, and the error code."""

    def __init__(self, code: str, sent: bool):
        super().__init__(code)
        self.code = code
        self.sent = sent


class Router:
    def __init__(
        self,
        paths: PlatformPaths,
        settings: RouterSettings = RouterSettings(),
        log: Callable[[str], None] = print,
        activity: Activity | None = None,
    ):
        self.paths = paths
        self.settings = settings
        self.log = log
        #: this worker's requests, and the other workers' (the idle stop reads them all)
        self.activity = activity or Activity()
        self.table = Table.empty()
        self.table_stamp: tuple[int, int, int] | None = None
        self.routes = str(paths.routes)  # stat'ed at every request
        self.live: dict[str, Live] = {}  # backend dyno id -> its state
        self.logs: dict[str, AppLog] = {}
        self.autostarted: set[str] = set()
        self.waiting = 0  # requests waiting for a routable dyno
        self.evicted: set[asyncio.Task[Any]] = set()  # cancelled: their backend died
        self.pending: dict[str, list[str]] = {}  # router log lines, by app, to write
        self.changed = asyncio.Event()  # the table or a backend's state changed
        self.session: aiohttp.ClientSession | None = None  # the Platform API's client
        self.pool = Pool()
        self.port = 0
        self.tasks: list[asyncio.Task[None]] = []

    # ------------------------------------------------------------------ table
    def reload(self, look: bool = False) -> bool:
        """Read the routing table if its file changed; True if it did. Its stamp (inode,
        mtime, size) is what a request checks; ``look`` (the watcher's passes) reads it
        anyway: two writes within one clock tick, of the same size, into a reused inode
        have the same stamp, and only the serial inside tells them apart."""
        try:
            st = os.stat(self.routes)
            stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
        except FileNotFoundError:
            stamp = None
        if stamp == self.table_stamp and not look:
            return False
        try:
            table = read_table(self.paths.routes)
        except (OSError, ValueError) as exc:
            self.log(f"router: keeping the last routing table: {exc}")
            return False
        if stamp == self.table_stamp and table.serial == self.table.serial:
            return False
        self.table_stamp = stamp
        self.table = table
        ids = {b.id for app in table.apps.values() for b in app.backends}
        for app in table.apps.values():
            for b in app.backends:
                if b.id not in self.live:
                    self.live[b.id] = Live(b, Activity.slot(dyno_key(b.id)))
                    self._probe(self.live[b.id])
        for gone in set(self.live) - ids:
            left = self.live.pop(gone)
            left.leave()
            self.pool.forget(left.backend.port)
        # a namespace's descriptor keeps it alive: none for a dyno no longer routed to
        self.pool.namespaces.keep_only(b.netns for app in table.apps.values() for b in app.backends)
        self.changed.set()
        return True

    def _probe(self, live: Live) -> None:
        b = live.backend
        ok = probe.alive(b.pid) and probe.bound(b.pid, b.port, b.netns) and not probe.frozen(b.pid)
        if ok and not live.routable:
            live.join()
            self.changed.set()
        elif not ok and (live.routable or not live.checked):
            live.leave()
            self.changed.set()
        if not ok:  # dead, unbound or frozen: what waits for it goes elsewhere
            for task in list(live.waiting):
                self.evicted.add(task)
                task.cancel()
            live.waiting.clear()

    async def _watch(self) -> None:
        while True:
            try:
                self.reload(look=True)
                for live in list(self.live.values()):
                    if not self.settings.failover:
                        continue
                    self._probe(live)
                    if (
                        self.activity.worker == 0  # one worker asks, not each of them
                        and live.ever
                        and live.out_since is not None
                        and not live.restart_asked
                        and time.monotonic() - live.out_since > self.settings.restart_after
                        and probe.alive(live.backend.pid)
                    ):
                        live.restart_asked = True
                        asyncio.get_running_loop().create_task(self._restart(live.backend))
                await self._stop_idle()
                self.flush_logs()
            except Exception as exc:  # keep watching whatever one pass does
                self.log(f"router: {exc!r}")
            self.changed.set()
            self.changed = asyncio.Event()
            # a request waits for a dyno (a cold start): look every 2 ms, not every 100
            await asyncio.sleep(0.002 if self.waiting else self.settings.probe_interval)

    # ------------------------------------------------------------------ API
    async def _api(self, method: str, path: str, body: dict[str, Any] | None = None) -> int:
        """A call to the Platform API (the daemon may be down: then it fails)."""
        assert self.session is not None
        url = self.table.api
        if not url:
            return 0
        token = self.paths.token.read_text().strip()
        headers = {"Authorization": f"Bearer {token}", "Accept": API_ACCEPT}
        try:
            async with self.session.request(
                method,
                url + path,
                json=body,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=10),
            ) as resp:
                await resp.read()
                return resp.status
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            self.log(f"router: {method} {path}: {exc!r}")
            return 0

    async def _restart(self, b: Backend) -> None:
        self.app_log(b.app).write(
            "heroku", "router", f'at=warning desc="{b.dyno} unresponsive: restarting it"'
        )
        # by id: the name may be its replacement's by the time the call arrives
        status = await self._api("DELETE", f"/apps/{b.app}/dynos/{b.id}")
        self.log(f"router: restart {b.app} {b.dyno}: {status}")

    async def _scale_web(self, app: str, quantity: int) -> int:
        return await self._api("PATCH", f"/apps/{app}/formation/web", {"quantity": quantity})

    async def _stop_idle(self) -> None:
        now = time.monotonic()
        for app in list(self.autostarted):
            route = self.table.apps.get(app)
            if route is None or route.web == 0:
                self.autostarted.discard(app)
                continue
            # any worker's request counts: another may be serving the app all along
            last = self.activity.last_request(app) or now
            if not self.activity.in_flight(app) and now - last > route.idle:
                self.autostarted.discard(app)
                self.app_log(app).write(
                    "heroku", "router", f'at=info desc="idle for {route.idle:g}s: web=0"'
                )
                await self._scale_web(app, 0)

    # ------------------------------------------------------------------ choice
    def choose(self, route: AppRoute, tried: set[str]) -> Live | None:
        busy = self.activity.in_flight_slot
        best: Live | None = None
        best_key: tuple[int, int, float] = (0, 0, 0.0)
        for b in route.backends:
            live = self.live.get(b.id)
            if live is None or not live.routable or b.id in tried:
                continue
            key = (busy(live.slot), live.outstanding, live.last_used)
            if best is None or key < best_key:
                best, best_key = live, key
        return best

    async def wait_for_backend(
        self, app: str, tried: set[str], deadline: float
    ) -> tuple[AppRoute | None, Live | None]:
        self.waiting += 1
        try:
            return await self._wait_for_backend(app, tried, deadline)
        finally:
            self.waiting -= 1

    async def _wait_for_backend(
        self, app: str, tried: set[str], deadline: float
    ) -> tuple[AppRoute | None, Live | None]:
        while True:
            route = self.table.apps.get(app)
            if route is None:
                return None, None
            chosen = self.choose(route, tried)
            if chosen is not None or time.monotonic() >= deadline:
                return route, chosen
            changed = self.changed
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(changed.wait(), max(0.0, deadline - time.monotonic()))

    # ------------------------------------------------------------------ requests
    def app_of(self, host: str) -> str | None:
        name = host.rsplit(":", 1)[0].lower().rstrip(".") if host else ""
        suffix = "." + self.settings.domain
        if name.endswith(suffix):
            return name[: -len(suffix)] or None
        return None

    def app_log(self, app: str) -> AppLog:
        log = self.logs.get(app)
        if log is None:
            log = self.logs[app] = AppLog(self.paths.logs / f"{app}.log")
        return log

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        started = time.monotonic()
        self.reload()  # a stat: a change the API just made is seen by the next request
        request_id = request.headers.get("X-Request-Id") or new_request_id()
        app = self.app_of(request.host)
        route = self.table.apps.get(app) if app else None
        if app is None or route is None:
            return web.Response(
                status=404,
                text=NO_SUCH_APP,
                content_type="text/html",
                headers={"X-Request-Id": request_id},
            )
        info: dict[str, Any] = {"dyno": "", "connect": 0, "service": 0, "bytes": 0}
        counted = self.activity.begin(app)
        try:
            response = await self._route(request, app, request_id, started, info)
        except Attempt as failed:
            response = self.error_page(failed.code, request_id)
            info["code"] = failed.code
        except (ConnectionResetError, asyncio.CancelledError):
            info["code"], info["status"] = "H27", 499  # the client went away
            self._log_request(app, request, request_id, info)
            raise
        finally:
            self.activity.end(counted)
        info.setdefault("status", response.status)
        self._log_request(app, request, request_id, info)
        return response

    async def _route(
        self,
        request: web.BaseRequest,
        app: str,
        request_id: str,
        started: float,
        info: dict[str, Any],
    ) -> web.StreamResponse:
        s = self.settings
        body = await request.read() if request.can_read_body else b""
        deadline = started + s.request_timeout
        tried: set[str] = set()
        idempotent = request.method in IDEMPOTENT
        last = "H10"
        while True:
            route = self.table.apps[app]
            live = self.choose(route, tried)
            if live is None:
                live, code = await self._await_backend(app, route, tried, deadline)
                if live is None:
                    raise Attempt(last if tried else code, sent=False)
            tried.add(live.backend.id)
            info["dyno"] = live.backend.dyno
            try:
                return await self._forward(request, body, live, request_id, deadline, info)
            except Attempt as failed:
                if failed.code == "H12" or (failed.sent and not idempotent) or not s.failover:
                    raise
                # nothing reached a dyno: the app is down (H10); else it hung up (H13)
                last = failed.code if failed.sent else "H10"

    async def _await_backend(
        self, app: str, route: AppRoute, tried: set[str], deadline: float
    ) -> tuple[Live | None, str]:
        """No routable backend now: wait for one (a starting dyno, an autostart) or say
        why there is none."""
        s = self.settings
        now = time.monotonic()
        if route.web == 0 and not route.autostart:
            return None, "H14"
        if route.web == 0:  # per-request dynos: scale up and hold the request
            if await self._scale_web(app, 1) != 200:
                return None, "H14"
            if app not in self.autostarted:
                self.autostarted.add(app)
                self.app_log(app).write("heroku", "router", 'at=info desc="autostart: web=1"')
        if app in self.autostarted:  # it is booting: wait as long as a boot may take
            _, live = await self.wait_for_backend(app, tried, min(deadline, now + s.boot_timeout))
            return live, "H20"
        _, live = await self.wait_for_backend(app, tried, min(deadline, now + s.wait_for_dyno))
        return live, "H10"

    def _head(self, request: web.BaseRequest, request_id: str, body: bytes) -> bytes:
        """The request line and headers the dyno gets: the client's, less hop-by-hop
        ones, plus Heroku's ``X-Forwarded-*``, ``X-Request-*`` and ``Via``."""
        peer = request.remote or ""
        forwarded = request.headers.get("X-Forwarded-For")
        lines = [f"{request.method} {request.raw_path} HTTP/1.1".encode("latin-1")]
        lines += [k + b": " + v for k, v in request.raw_headers if k.lower() not in REPLACED_B]
        extra = (
            f"X-Forwarded-For: {forwarded + ', ' + peer if forwarded else peer}\r\n"
            f"X-Forwarded-Proto: http\r\nX-Forwarded-Port: {self.port}\r\n"
            f"X-Request-Id: {request_id}\r\nX-Request-Start: {int(time.time() * 1000)}\r\n"
            "Via: 1.1 selfhost-router\r\n"
        )
        if body or request.method in ("POST", "PUT", "PATCH"):
            extra += f"Content-Length: {len(body)}\r\n"
        lines.append(extra.encode("utf-8", "replace"))
        return b"\r\n".join(lines) + b"\r\n"

    async def _forward(
        self,
        request: web.BaseRequest,
        body: bytes,
        live: Live,
        request_id: str,
        deadline: float,
        info: dict[str, Any],
    ) -> web.StreamResponse:
        s = self.settings
        b = live.backend
        head = self._head(request, request_id, body)
        live.outstanding += 1
        counted = self.activity.begin_slot(live.slot)  # seen by every worker
        live.last_used = t0 = time.monotonic()
        task = asyncio.current_task()
        assert task is not None
        if request.method in IDEMPOTENT and s.failover:
            live.waiting.add(task)
        try:
            remaining = deadline - t0
            if remaining <= 0:
                raise Attempt("H12", sent=True)
            try:
                async with asyncio.timeout(remaining):
                    upstream = await self.pool.send(
                        b.port,
                        head,
                        body,
                        method=request.method,
                        connect_timeout=s.connect_timeout,
                        where=(b.pid, b.netns),
                    )
            except TimeoutError:
                info["service"] = int((time.monotonic() - t0) * 1000)
                raise Attempt("H12", sent=True) from None
            except asyncio.CancelledError:
                if task not in self.evicted:
                    raise  # the client went away
                self.evicted.discard(task)
                task.uncancel()
                raise Attempt("H13", sent=True) from None  # it froze or died meanwhile
            except (Refused, Broken) as failed:  # refused: nothing reached the dyno
                if s.failover:
                    live.leave()
                    self.pool.forget(b.port)
                raise Attempt("H13", sent=isinstance(failed, Broken)) from None
            finally:
                live.waiting.discard(task)
            info["connect"] = 0
            return await self._relay(request, upstream, info, t0)
        finally:
            live.outstanding -= 1
            self.activity.end(counted)

    async def _relay(
        self,
        request: web.BaseRequest,
        upstream: Response,
        info: dict[str, Any],
        t0: float,
    ) -> web.StreamResponse:
        """The dyno's response to the client: a small one (its length known, at most
        :data:`SMALL`) read whole and sent at once; any other streamed as it comes."""
        head = request.method == "HEAD"
        try:
            headers: list[tuple[str, str]] = []
            length: str | None = None
            for k, v in upstream.headers:  # one pass: the headers of every response
                name = k.lower()
                if name == "content-length":
                    length = v
                    if not head:  # aiohttp sets it itself, but for HEAD keeps the dyno's
                        continue
                elif name in HOP_BY_HOP:
                    continue
                headers.append((k, v))
            known = length is not None and length.isdigit()
            if head or (known and int(length or 0) <= SMALL):
                try:
                    body = await upstream.read()
                except Broken:
                    raise Attempt("H13", sent=True) from None  # it hung up mid-answer
                info["bytes"] = len(body)
                info["service"] = int((time.monotonic() - t0) * 1000)
                return web.Response(
                    status=upstream.status, reason=upstream.reason, headers=headers, body=body
                )
            response = web.StreamResponse(
                status=upstream.status, reason=upstream.reason, headers=headers
            )
            if known:
                response.content_length = int(length or 0)
            elif request.version >= aiohttp.HttpVersion11:
                response.enable_chunked_encoding()
            await response.prepare(request)
            sent = 0
            try:
                async for chunk in upstream.chunks():
                    await response.write(chunk)
                    sent += len(chunk)
            except Broken:
                # the dyno hung up after its answer began: the client's is cut short
                info["code"] = "H18"
                if request.transport is not None:
                    request.transport.close()
            else:
                await response.write_eof()
            info["bytes"] = sent
            info["service"] = int((time.monotonic() - t0) * 1000)
            return response
        finally:
            upstream.release()

    def error_page(self, code: str, request_id: str) -> web.Response:
        return web.Response(
            status=503,
            text=ERROR_PAGE.format(code=code, desc=ERRORS.get(code, "")),
            content_type="text/html",
            headers={"X-Request-Id": request_id, "Cache-Control": "no-cache, no-store"},
        )

    def _log_request(
        self, app: str, request: web.BaseRequest, request_id: str, info: dict[str, Any]
    ) -> None:
        code = info.get("code")
        head = f'at=error code={code} desc="{ERRORS.get(code, "")}" ' if code else "at=info "
        path = request.raw_path.replace('"', "%22")  # the request target, as it came
        line = (
            f'{head}method={request.method} path="{path}" host={request.host} '
            f'request_id={request_id} fwd="{request.remote}" dyno={info["dyno"]} '
            f"connect={info['connect']}ms service={info['service']}ms "
            f"status={info['status']} bytes={info['bytes']} protocol=http"
        )
        self.pending.setdefault(app, []).append(AppLog.lines("heroku", "router", line))

    def flush_logs(self) -> None:
        """Write the router's log lines (batched: one append per app per pass)."""
        pending, self.pending = self.pending, {}
        for app, lines in pending.items():
            with contextlib.suppress(OSError):
                self.app_log(app).append("".join(lines))

    # ------------------------------------------------------------------ state
    def state(self) -> dict[str, Any]:
        """What ``GET /router`` (on the router's own host) answers: each backend's state."""
        apps: dict[str, Any] = {}
        for name, route in self.table.apps.items():
            apps[name] = {
                "web": route.web,
                "autostart": route.autostart,
                "dynos": [
                    {
                        "dyno": b.dyno,
                        "id": b.id,
                        "port": b.port,
                        "pid": b.pid,
                        "routable": self.live[b.id].routable if b.id in self.live else False,
                        # this worker's requests to it, and all workers'
                        "outstanding": self.live[b.id].outstanding if b.id in self.live else 0,
                        "in_flight": self.activity.in_flight(dyno_key(b.id)),
                    }
                    for b in route.backends
                ],
            }
        return {
            "serial": self.table.serial,
            "port": self.port,
            "worker": self.activity.worker,
            "workers": self.activity.workers,
            "pid": os.getpid(),
            "apps": apps,
        }

    async def dispatch(self, request: web.BaseRequest) -> web.StreamResponse:
        host = request.host.rsplit(":", 1)[0]
        if host in ("127.0.0.1", "localhost", self.settings.domain) and request.path == "/router":
            self.reload()  # this worker may not have looked since another changed it
            return web.json_response(self.state())
        return await self.handle(request)

    # ------------------------------------------------------------------ lifecycle
    async def start(self, sock: socket.socket) -> web.ServerRunner:
        """Serve on ``sock``, a listening socket of the router's workers."""
        self.session = aiohttp.ClientSession()
        self.reload()
        loop = asyncio.get_running_loop()
        self.tasks.append(loop.create_task(self._watch()))

        def make_request(
            message: Any, payload: Any, protocol: Any, writer: Any, task: Any
        ) -> web.BaseRequest:
            return web.BaseRequest(
                message, payload, protocol, writer, task, loop, client_max_size=MAX_BODY
            )

        # aiohttp's low-level server: one handler for every path, no application router
        handler = web.Server(self.dispatch, request_factory=make_request, access_log=None)
        runner = web.ServerRunner(handler, handle_signals=False, shutdown_timeout=2.0)
        await runner.setup()
        site = web.SockSite(runner, sock, backlog=1024)
        await site.start()
        listening = site._server
        assert listening is not None
        self.port = listening.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
        return runner

    async def close(self, runner: web.ServerRunner) -> None:
        for task in self.tasks:
            task.cancel()
        await runner.cleanup()
        self.flush_logs()
        self.pool.close()
        if self.session is not None:
            await self.session.close()


NO_SUCH_APP = """<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>No such app</title></head>
<body><h1>There's nothing here, yet.</h1>
<p>No app of this platform has this name. Check the URL: http://APP.localhost:PORT/</p>
</body></html>
"""

ERROR_PAGE = """<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>Application Error</title></head>
<body><h1>Application error</h1>
<p>An error occurred in the application and your page could not be served
({code}: {desc}). If you are the application owner, check your logs for details:
<code>heroku logs --tail</code></p>
</body></html>
"""
