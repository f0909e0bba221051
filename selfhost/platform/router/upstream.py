"""The router's side towards the dynos: HTTP/1.1 over asyncio protocols, its responses
parsed by httptools (llhttp), with idle keep-alive connections kept per port.

Why not aiohttp's client: it spent about 0.5 ms of CPU per proxied request (its
connector, happy eyeballs, request and response objects) where the router's whole
server side spends 0.05 ms; ``bench/router.py`` measures what this module gives.

What the router needs to know about a failure is all this module reports:

- :class:`Refused`: the connection could not be made: nothing reached the dyno;
- :class:`Broken`: the connection broke before a whole response head came (the dyno may
  have seen the request);
- a response whose body broke off ends its :meth:`Response.chunks` with :class:`Broken`.

A request on a reused keep-alive connection that the dyno had closed meanwhile (it got
no byte of an answer) is sent once more on a fresh connection, whatever its method, as
Go's HTTP transport does: the dyno closed the connection before it read the request.

**Inside the dyno's network namespace.** A dyno's ``$PORT`` is forwarded from a host
loopback port by pasta, which splices every connection in user space: a new
connection through it costs more than the whole proxying. So where the router may
(it runs as root, as the platform does), it makes its socket *in* the dyno's network
namespace (``setns(2)`` to the namespace, ``socket(2)``, ``setns(2)`` back: a socket
stays in the namespace it was made in) and connects to ``127.0.0.1:$PORT`` there, over
that namespace's own loopback. The namespace is the one the routing table names: the
file ``/proc/<pid>/ns/net`` is opened and used only if its inode is the table's
``netns`` (a reused pid leads nowhere else); the descriptors are closed as soon as
their dyno leaves the table. The socket is the router's: nothing of the tenant's runs,
and the dyno's firewall (its output chain) lets replies on loopback through as it does
pasta's. Anything else (not root, a namespace gone) connects to the host port.
There the request is written the moment the connection is made, before the transport
around it exists: the dyno works on it meanwhile (:func:`connect_loopback`, then one
``sendmsg``; what the socket buffer did not take follows through the transport).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import errno
import os
import socket
import time
from collections.abc import AsyncIterator, Iterable

import httptools

from selfhost.syscalls import CLONE_NEWNET, libc

IDLE_SECONDS = 4.0  # below the usual server keep-alive (5 s): reuse, do not race a close
IDLE_PER_PORT = 32
HIGH_WATER = 256 * 1024  # buffered body bytes before reading from the dyno pauses


class Refused(Exception):
    """No connection: the request reached nothing."""


class Broken(Exception):
    """The connection broke before the response was whole."""


class Connection(asyncio.Protocol):
    """One connection to a dyno, carrying one exchange at a time; made ready for the
    answer to a request in ``method``."""

    def __init__(self, method: str) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.closed = asyncio.get_running_loop().create_future()
        self.ready: asyncio.Future[None] | None = None  # body bytes, or the end, arrived
        self.complete = False
        self.reason = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.body: collections.deque[bytes] = collections.deque()
        self.paused = False
        self.idle_since = 0.0
        self.begin(method)

    def begin(self, method: str) -> None:
        """Ready for the answer to a request in ``method``."""
        self.head: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.head_only = method == "HEAD"  # no body follows the head
        self.received = False  # a byte of the answer came
        self.keep = False  # the dyno keeps the connection open after this answer
        self.until_close = False  # the body has no length: it ends with the connection
        self.status = 0
        self.body.clear()
        self.buffered = 0

    # ------------------------------------------------------------ the transport
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no subclass

    def data_received(self, data: bytes) -> None:
        self.received = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self._fail()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)
        if self.complete:
            return
        if self.until_close and self.status and exc is None:
            self._finish(keep=False)  # a body without a length ends here
        else:
            self._fail()

    # ------------------------------------------------------------ the parser's calls
    def on_message_begin(self) -> None:
        self.headers = []
        self.reason = b""

    def on_status(self, reason: bytes) -> None:
        self.reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if 100 <= status < 200:  # informational: the real answer follows
            return
        self.status = status
        names = {k.lower() for k, _ in self.headers}
        self.until_close = (
            b"content-length" not in names
            and b"transfer-encoding" not in names
            and status not in (204, 304)
        )
        if not self.head.done():
            self.head.set_result(None)
        if self.head_only:
            self._finish(keep=False)

    def on_body(self, body: bytes) -> None:
        if self.complete or 100 <= self.parser.get_status_code() < 200:
            return
        self.body.append(body)
        self.buffered += len(body)
        if self.buffered > HIGH_WATER and not self.paused and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        if self.status and not self.complete:
            self._finish(keep=self.parser.should_keep_alive())

    # ------------------------------------------------------------ state
    def _finish(self, keep: bool) -> None:
        self.complete = True
        self.keep = keep
        self._wake()

    def _fail(self) -> None:
        if not self.head.done():
            self.head.set_exception(Broken("the connection closed before a response"))
            self.head.exception()  # retrieved: the caller may be gone already
        self._wake()
        if self.transport is not None:
            self.transport.abort()

    def _wake(self) -> None:
        if self.ready is not None and not self.ready.done():
            self.ready.set_result(None)

    def abort(self) -> None:
        self.complete = True
        if self.transport is not None:
            self.transport.abort()

    @property
    def usable(self) -> bool:
        return (
            not self.closed.done()
            and self.transport is not None
            and not self.transport.is_closing()
            and time.monotonic() - self.idle_since < IDLE_SECONDS
        )


class Response:
    """A dyno's response: its head now, its body as it comes."""

    def __init__(self, pool: Pool, port: int, conn: Connection):
        self.pool, self.port, self.conn = pool, port, conn
        self.status = conn.status
        self.reason = conn.reason.decode("latin-1")
        self.headers = [
            (k.decode("latin-1"), v.decode("utf-8", "replace")) for k, v in conn.headers
        ]
        self.released = False

    def header(self, name: str) -> str | None:
        name = name.lower()
        for k, v in self.headers:
            if k.lower() == name:
                return v
        return None

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body as it arrives; :class:`Broken` if the dyno hung up before its end."""
        conn = self.conn
        loop = asyncio.get_running_loop()
        while True:
            while conn.body:
                chunk = conn.body.popleft()
                conn.buffered -= len(chunk)
                if conn.paused and conn.buffered <= HIGH_WATER // 2 and conn.transport:
                    conn.paused = False
                    conn.transport.resume_reading()
                yield chunk
            if conn.complete:
                return
            if conn.closed.done():
                raise Broken("the connection closed mid-answer")
            conn.ready = loop.create_future()
            try:
                await conn.ready
            finally:
                conn.ready = None

    async def read(self) -> bytes:
        conn = self.conn
        if conn.complete and not conn.paused:  # it all came with the head (small answers)
            body = b"".join(conn.body)
            conn.body.clear()
            conn.buffered = 0
            return body
        return b"".join([chunk async for chunk in self.chunks()])

    def release(self) -> None:
        """Done with it: the connection goes back to the pool if it can be reused."""
        if self.released:
            return
        self.released = True
        conn = self.conn
        if conn.complete and conn.keep and not conn.body:
            self.pool.put(self.port, conn)
        else:
            conn.abort()


class Namespaces:
    """Open descriptors of the dynos' network namespaces, checked by inode."""

    def __init__(self) -> None:
        self.fds: dict[int, int] = {}  # namespace inode -> descriptor
        self.own: int | None = None
        if os.geteuid() == 0:
            with contextlib.suppress(OSError):
                self.own = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)

    def _fd(self, pid: int, inode: int) -> int | None:
        fd = self.fds.get(inode)
        if fd is not None:
            return fd
        try:
            fd = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return None
        if os.fstat(fd).st_ino != inode:  # the pid is another process's now
            os.close(fd)
            return None
        self.fds[inode] = fd
        return fd

    def socket(self, pid: int, inode: int) -> socket.socket | None:
        """A non-blocking TCP socket in the namespace ``inode`` (entered through ``pid``),
        or None."""
        if self.own is None or not inode or not pid:
            return None
        fd = self._fd(pid, inode)
        if fd is None or libc.setns(fd, CLONE_NEWNET) != 0:
            return None
        try:
            return socket.socket(socket.AF_INET, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
        finally:
            if libc.setns(self.own, CLONE_NEWNET) != 0:
                os._exit(70)  # never serve on from inside a tenant's namespace

    def keep_only(self, inodes: Iterable[int]) -> None:
        """Close the descriptors of namespaces no longer routed to."""
        wanted = set(inodes)
        for inode in [i for i in self.fds if i not in wanted]:
            os.close(self.fds.pop(inode))

    def close(self) -> None:
        self.keep_only(())
        if self.own is not None:
            os.close(self.own)
            self.own = None


async def connect_loopback(sock: socket.socket, port: int, timeout: float) -> None:
    """Connect the non-blocking ``sock`` to ``127.0.0.1:port``.

    On loopback the call itself says ``EINPROGRESS``, but the handshake is done by the
    time it returns (the dyno's kernel answers the SYN while the call holds the socket):
    asking once more finds it connected, or refused. Only if it is still under way (a
    full accept queue drops the SYN) does this wait for the socket to turn writable.
    The loop's ``sock_connect`` is no shortcut: uvloop's resolves the address in a
    thread first, a hand-over to another thread and back at every request."""
    address = ("127.0.0.1", port)
    err = sock.connect_ex(address)
    if err == errno.EINPROGRESS:
        err = sock.connect_ex(address)  # connected by now: EISCONN; or refused
    if err in (0, errno.EISCONN):
        return
    if err not in (errno.EINPROGRESS, errno.EALREADY):
        raise OSError(err, os.strerror(err))
    loop = asyncio.get_running_loop()
    writable = loop.create_future()
    fd = sock.fileno()

    def turned_writable() -> None:
        if not writable.done():
            writable.set_result(None)

    loop.add_writer(fd, turned_writable)
    try:
        async with asyncio.timeout(timeout):
            await writable
    finally:
        loop.remove_writer(fd)
    err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    if err:
        raise OSError(err, os.strerror(err))


class Pool:
    """Connections to the dynos, idle ones kept for reuse (per host port, which names
    a dyno)."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host
        self.idle: dict[int, list[Connection]] = {}
        self.namespaces = Namespaces()

    def put(self, port: int, conn: Connection) -> None:
        idle = self.idle.setdefault(port, [])
        if len(idle) >= IDLE_PER_PORT:
            conn.abort()
            return
        conn.complete = False
        conn.idle_since = time.monotonic()
        conn.parser = httptools.HttpResponseParser(conn)
        idle.append(conn)

    def _reuse(self, port: int) -> Connection | None:
        idle = self.idle.get(port)
        while idle:
            conn = idle.pop()
            if conn.usable:
                return conn
            conn.abort()
        return None

    def forget(self, port: int) -> None:
        """The dyno on ``port`` is gone: drop its idle connections."""
        for conn in self.idle.pop(port, []):
            conn.abort()

    async def _connect(
        self, port: int, timeout: float, where: tuple[int, int], method: str, request: list[bytes]
    ) -> tuple[Connection, list[bytes]]:
        """A new connection, ready for the answer to ``request``; and what of the request
        is still to be written. In the dyno's namespace the request is written as soon as
        the connection is made: the dyno works on it while the transport is set up."""
        loop = asyncio.get_running_loop()
        sock = self.namespaces.socket(*where)
        sent = 0
        try:
            if sock is None:
                async with asyncio.timeout(timeout):
                    transport, conn = await loop.create_connection(
                        lambda: Connection(method), self.host, port
                    )
            else:
                await connect_loopback(sock, port, timeout)
                with contextlib.suppress(BlockingIOError):
                    sent = sock.sendmsg(request)
                transport, conn = await loop.create_connection(
                    lambda: Connection(method), sock=sock
                )
        except (OSError, TimeoutError) as exc:
            if sock is not None:
                sock.close()
            if sent:
                raise Broken(f"port {port}: {exc}") from None
            raise Refused(f"connecting to port {port}: {exc}") from None
        conn.transport = transport  # uvloop may call connection_made a step later
        unsent = []
        for part in request:
            if sent < len(part):
                unsent.append(part[sent:] if sent else part)
            sent = max(0, sent - len(part))
        return conn, unsent

    async def send(
        self,
        port: int,
        head: bytes,
        body: bytes,
        *,
        method: str,
        connect_timeout: float,
        where: tuple[int, int] = (0, 0),
    ) -> Response:
        """Send a request (its head already serialized) and wait for the response head.
        ``where``: (pid, namespace inode) of the dyno, to connect inside its network
        namespace; (0, 0) or a namespace out of reach: through the host port."""
        request = [head, body] if body else [head]
        conn = self._reuse(port)
        reused = conn is not None
        while True:
            if conn is None:
                conn, unsent = await self._connect(port, connect_timeout, where, method, request)
            else:
                conn.begin(method)
                unsent = request
            try:
                return await self._exchange(port, conn, unsent)
            except Broken:
                if reused and not conn.received:  # it had closed the idle connection
                    conn, reused = None, False
                    continue
                raise
            except BaseException:  # cancelled or timed out: the exchange is abandoned
                conn.abort()
                raise

    async def _exchange(self, port: int, conn: Connection, unsent: list[bytes]) -> Response:
        assert conn.transport is not None
        if unsent:
            conn.transport.writelines(unsent)
        await conn.head
        return Response(self, port, conn)

    def close(self) -> None:
        for port in list(self.idle):
            self.forget(port)
        self.namespaces.close()
