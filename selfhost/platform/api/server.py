"""The API server: the Starlette application of :mod:`.web` on uvicorn (httptools).

The daemon (and a test) builds one :class:`PlatformServer` with everything its routes
need passed in: the platform's paths and store, and, when the platform runs dynos, the
dyno routes and the job service. The listening socket is bound when the server is made
(backlog :data:`BACKLOG`), so its URL is known before anything else starts.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Sequence

import anyio.to_thread
import uvicorn

from selfhost.archive import Limits
from selfhost.platform.api import apps, slugs
from selfhost.platform.api.web import THREADS, Context, Endpoint, build
from selfhost.platform.paths import PlatformPaths
from selfhost.platform.slugs.slug import UNPACK_LIMITS
from selfhost.platform.store.db import Store

BACKLOG = 128
IDLE_SECONDS = 120  # an idle keep-alive connection is closed after this long
GRACE_SECONDS = 2  # at shutdown, open streams (followed logs) get this long to end


def listen(host: str, port: int) -> socket.socket:
    """A listening TCP socket (``port`` 0: any free port)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP named: asyncio sets TCP_NODELAY only on sockets that say they are TCP,
    # and without it a response's second write waits for the client's delayed ACK (40 ms)
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(BACKLOG)
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(False)
    return sock


class PlatformServer:
    """The platform API, listening on ``address`` (or on the socket given)."""

    def __init__(
        self,
        address: tuple[str, int] | socket.socket,
        paths: PlatformPaths,
        *,
        stack: str,
        max_blob_bytes: int,
        store: Store | None = None,
        endpoints: Sequence[Endpoint] = (),
        on_change: Callable[[str], None] | None = None,
        retire: Callable[[str], None] | None = None,
        log: Callable[[str], None] | None = None,
        unpack_limits: Limits = UNPACK_LIMITS,
    ):
        self.socket = address if isinstance(address, socket.socket) else listen(*address)
        self.paths = paths
        self.store = store or Store(paths)
        self.token = paths.ensure_token()
        paths.blobs.mkdir(parents=True, exist_ok=True)
        paths.blob_tmp.mkdir(parents=True, exist_ok=True)
        for stale in paths.blob_tmp.iterdir():  # uploads cut off by a crash
            stale.unlink(missing_ok=True)
        self.context = Context(paths, self.store, self.token, stack, max_blob_bytes, log)
        routes = [*apps.endpoints(on_change, retire), *slugs.endpoints(unpack_limits), *endpoints]
        config = uvicorn.Config(
            build(self.context, routes),
            http="httptools",
            loop="asyncio",
            lifespan="off",
            access_log=False,
            log_level="warning",
            timeout_keep_alive=IDLE_SECONDS,
            timeout_graceful_shutdown=GRACE_SECONDS,
            server_header=False,
        )
        self._uvicorn = uvicorn.Server(config)
        self._serving = False
        self._done = threading.Event()

    @property
    def server_address(self) -> tuple[str, int]:
        host, port = self.socket.getsockname()[:2]
        return str(host), int(port)

    @property
    def url(self) -> str:
        host, port = self.server_address
        return f"http://{host}:{port}"

    def serve_forever(self) -> None:
        """Serve until :meth:`shutdown` (or SIGTERM/SIGINT in the main thread)."""

        async def serve() -> None:
            anyio.to_thread.current_default_thread_limiter().total_tokens = THREADS
            await self._uvicorn.serve(sockets=[self.socket])

        self._serving = True
        try:
            anyio.run(serve)
        finally:
            self._done.set()

    def shutdown(self) -> None:
        """Stop serving and wait until the server has stopped."""
        self._uvicorn.should_exit = True
        if self._serving:
            self._done.wait()

    def server_close(self) -> None:
        self.socket.close()
        self.store.close()

    def start(self) -> threading.Thread:
        """Serve in a background thread (tests and benchmarks); returns once listening."""
        thread = threading.Thread(target=self.serve_forever, daemon=True)
        thread.start()
        while not self._uvicorn.started and thread.is_alive():
            self._done.wait(0.01)
        return thread


def serve_in_thread(server: PlatformServer) -> threading.Thread:
    """Run a server in a background thread (for tests and benchmarks)."""
    return server.start()
