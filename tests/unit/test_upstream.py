"""The router's HTTP client towards the dynos (selfhost.platform.router.upstream)
against real sockets: servers written byte by byte so that each case is exact."""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from selfhost.platform.router.upstream import Broken, Pool, Refused, connect_loopback

Serve = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def run(serve: Serve, client: Callable[[int, list[int]], Awaitable[None]]) -> list[int]:
    """Serve on a free port; run ``client(port, accepted)``; return ``accepted`` (one
    entry per connection the server accepted)."""
    accepted: list[int] = []

    async def main() -> None:
        async def on_connect(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            accepted.append(1)
            try:
                await serve(r, w)
            finally:
                w.close()

        server = await asyncio.start_server(on_connect, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            await client(port, accepted)
        finally:
            server.close()

    asyncio.run(main())
    return accepted


async def read_request(r: asyncio.StreamReader) -> tuple[bytes, bytes]:
    head = await r.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    return head, await r.readexactly(length)


def request(method: str = "GET", path: str = "/") -> bytes:
    return f"{method} {path} HTTP/1.1\r\nHost: t\r\n\r\n".encode()


def test_keep_alive_connections_are_reused() -> None:
    async def serve(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        while True:
            try:
                await read_request(r)
            except asyncio.IncompleteReadError:
                return
            w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            await w.drain()

    async def client(port: int, accepted: list[int]) -> None:
        pool = Pool()
        for _ in range(5):
            response = await pool.send(port, request(), b"", method="GET", connect_timeout=2)
            assert (response.status, await response.read()) == (200, b"ok")
            response.release()
        pool.close()

    assert len(run(serve, client)) == 1


def test_a_dyno_that_closes_its_idle_connection_gets_the_request_on_a_fresh_one() -> None:
    """Even a POST: the dyno hung up on the reused connection without a byte of answer
    (its keep-alive ran out as the request came), so it did not act on it."""
    bodies: list[bytes] = []

    async def serve(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        _, body = await read_request(r)
        bodies.append(body)
        w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await w.drain()
        await r.read(1)  # the next request comes: hang up on it unanswered

    async def client(port: int, accepted: list[int]) -> None:
        pool = Pool()
        for body in (b"one", b"two"):
            head = f"POST / HTTP/1.1\r\nContent-Length: {len(body)}\r\n\r\n".encode()
            response = await pool.send(port, head, body, method="POST", connect_timeout=2)
            assert await response.read() == b"ok"
            response.release()
        pool.close()

    assert len(run(serve, client)) == 2
    assert bodies == [b"one", b"two"]


def test_chunked_close_delimited_and_head_responses() -> None:
    answers = {
        b"/chunked": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
        b"/until-close": b"HTTP/1.0 200 OK\r\n\r\nall of it",
        b"/head": b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n",
        b"/continue": b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 1\r\n\r\nx",
    }

    async def serve(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        head, _ = await read_request(r)
        path = head.split(b" ")[1]
        w.write(answers[path])
        await w.drain()

    async def client(port: int, accepted: list[int]) -> None:
        pool = Pool()
        got = {}
        for path, method in (
            ("/chunked", "GET"),
            ("/until-close", "GET"),
            ("/head", "HEAD"),
            ("/continue", "GET"),
        ):
            response = await pool.send(
                port, request(method, path), b"", method=method, connect_timeout=2
            )
            got[path] = (response.status, await response.read(), response.header("content-length"))
            response.release()
        pool.close()
        assert got == {
            "/chunked": (200, b"abcde", None),
            "/until-close": (200, b"all of it", None),
            "/head": (200, b"", "1000"),
            "/continue": (201, b"x", "1"),
        }

    run(serve, client)


def test_failures_say_whether_the_request_reached_the_dyno() -> None:
    async def serve(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        head, _ = await read_request(r)
        if b"/mid-body" in head:
            w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly this")
            await w.drain()
        # /no-answer: hang up without a byte

    async def client(port: int, accepted: list[int]) -> None:
        pool = Pool()
        with pytest.raises(Broken):
            await pool.send(
                port, request("GET", "/no-answer"), b"", method="GET", connect_timeout=2
            )
        response = await pool.send(
            port, request("GET", "/mid-body"), b"", method="GET", connect_timeout=2
        )
        with pytest.raises(Broken):
            await response.read()
        response.release()
        server_gone = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
        free = server_gone.sockets[0].getsockname()[1]
        server_gone.close()
        await server_gone.wait_closed()
        with pytest.raises(Refused):
            await pool.send(free, request(), b"", method="GET", connect_timeout=2)
        pool.close()

    run(serve, client)


def test_a_large_body_streams_with_backpressure() -> None:
    size = 8 * 1024 * 1024

    async def serve(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await read_request(r)
        w.write(f"HTTP/1.1 200 OK\r\nContent-Length: {size}\r\n\r\n".encode())
        block = b"x" * 65536
        for _ in range(size // len(block)):
            w.write(block)
            await w.drain()

    async def client(port: int, accepted: list[int]) -> None:
        pool = Pool()
        response = await pool.send(port, request(), b"", method="GET", connect_timeout=2)
        total, most = 0, 0
        async for chunk in response.chunks():
            total += len(chunk)
            most = max(most, response.conn.buffered)
            await asyncio.sleep(0)  # a slow reader
        response.release()
        pool.close()
        assert total == size
        assert most <= 2 * 1024 * 1024  # reading paused: not the whole body in memory

    run(serve, client)


SERVER = """
import socket, sys
s = socket.socket(); s.bind(("127.0.0.1", int(sys.argv[1]))); s.listen()
print("ready", flush=True)
while True:
    c, _ = s.accept(); c.recv(65536)
    c.sendall(b"HTTP/1.1 200 OK\\r\\nContent-Length: 6\\r\\nConnection: close\\r\\n\\r\\ninside"); c.close()
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="entering a network namespace needs root")
def test_a_dyno_is_reached_inside_its_network_namespace() -> None:
    """The server listens only in a namespace of its own (as a dyno does behind pasta):
    through the host port nothing answers; inside the namespace, named by pid and
    checked by inode, it does. A wrong inode is not entered."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # free on the host, and stays so
    proc = subprocess.Popen(
        [
            *("unshare", "--net", "sh", "-c", 'ip link set lo up && exec "$0" -c "$1" "$2"'),
            *(sys.executable, SERVER, str(port)),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        inode = os.stat(f"/proc/{proc.pid}/ns/net").st_ino
        assert inode != os.stat("/proc/self/ns/net").st_ino

        async def main() -> tuple[bytes, str, str]:
            pool = Pool()
            try:
                got = await pool.send(
                    port, request(), b"", method="GET", connect_timeout=2, where=(proc.pid, inode)
                )
                body = await got.read()
                outcomes = []
                for where in ((0, 0), (proc.pid, inode + 1)):  # the host port; a wrong inode
                    try:
                        await pool.send(
                            port, request(), b"", method="GET", connect_timeout=2, where=where
                        )
                        outcomes.append("answered")
                    except Refused:
                        outcomes.append("refused")
                assert list(pool.namespaces.fds) == [inode]
                pool.namespaces.keep_only(())
                assert pool.namespaces.fds == {}
                return body, *outcomes
            finally:
                pool.close()

        body, host, wrong = asyncio.run(main())
        assert body == b"inside" and host == "refused" and wrong == "refused"
        assert os.stat("/proc/self/ns/net").st_ino != inode  # and we came back
    finally:
        proc.kill()
        proc.wait()


CONNECT_IN_A_FRESH_PROCESS = """
import asyncio, os, socket, sys
import uvloop
from selfhost.platform.router.upstream import connect_loopback

async def main():
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    for _ in range(20):
        sock = socket.socket()
        sock.setblocking(False)
        await connect_loopback(sock, port, 2.0)
        listener.accept()[0].close()
        sock.close()
    listener.close()
    sock = socket.socket()
    sock.setblocking(False)
    try:
        await connect_loopback(sock, port, 2.0)
    except ConnectionRefusedError:
        print("refused")
    print("threads", len(os.listdir("/proc/self/task")))

uvloop.run(main())
"""


def test_connecting_to_a_dyno_hands_nothing_to_another_thread() -> None:
    """On loopback the connection is made in the router's own thread: uvloop's
    ``sock_connect`` resolved the address in libuv's thread pool first, a hand-over to
    another thread and back at every request (a quarter of the router's CPU). A fresh
    process that connected 20 times, and was refused once, still has one thread."""
    out = subprocess.run(
        [sys.executable, "-c", CONNECT_IN_A_FRESH_PROCESS],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["refused", "threads", "1"]


def test_a_connection_still_under_way_is_waited_for_then_times_out() -> None:
    """A dyno whose accept queue is full drops the SYN: the connection stays under way.
    It is waited for (and made when the dyno accepts and the SYN is sent again), or it
    times out."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)  # one connection fills the queue
    port = listener.getsockname()[1]
    filler = socket.create_connection(("127.0.0.1", port))

    async def attempt(timeout: float, accept_after: float | None) -> str:
        loop = asyncio.get_running_loop()
        if accept_after is not None:
            loop.call_later(accept_after, lambda: listener.accept()[0].close())
        sock = socket.socket()
        sock.setblocking(False)
        try:
            await connect_loopback(sock, port, timeout)
            return "connected"
        except TimeoutError:
            return "timed out"
        finally:
            sock.close()

    try:
        assert asyncio.run(attempt(0.3, None)) == "timed out"
        assert asyncio.run(attempt(5.0, 0.2)) == "connected"  # the SYN is re-sent at 1 s
    finally:
        filler.close()
        listener.close()


def own_namespace() -> tuple[int, int]:
    """(pid, inode) of this process's own network namespace: the router's way in to a
    dyno's namespace, used on one whose server runs here."""
    return os.getpid(), os.stat("/proc/self/ns/net").st_ino


@pytest.mark.skipif(os.geteuid() != 0, reason="entering a network namespace needs root")
def test_in_a_namespace_the_request_is_on_its_way_before_the_transport_is_made(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The request is written as soon as the connection is made, so the dyno works on it
    while the router sets up its transport: the server has it before
    ``create_connection`` is called."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    arrived = threading.Event()

    def serve() -> None:
        conn, _ = listener.accept()
        with conn:
            if conn.recv(65536):
                arrived.set()
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")

    threading.Thread(target=serve, daemon=True).start()
    seen: list[bool] = []

    async def main() -> bytes:
        loop = asyncio.get_running_loop()
        create_connection = loop.create_connection

        async def watched(*args: Any, **kwargs: Any) -> Any:
            seen.append(arrived.wait(2))  # blocks the loop: only bytes already sent count
            return await create_connection(*args, **kwargs)

        monkeypatch.setattr(loop, "create_connection", watched)
        pool = Pool()
        try:
            got = await pool.send(
                port, request(), b"", method="GET", connect_timeout=2, where=own_namespace()
            )
            return await got.read()
        finally:
            pool.close()

    try:
        assert asyncio.run(main()) == b"ok"
        assert seen == [True]
    finally:
        listener.close()


@pytest.mark.skipif(os.geteuid() != 0, reason="entering a network namespace needs root")
def test_in_a_namespace_a_body_larger_than_the_socket_buffer_arrives_whole() -> None:
    """The first write takes what the socket buffer holds; the rest follows through the
    transport, in order."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    body = os.urandom(8 * 1024 * 1024)

    def serve() -> None:
        conn, _ = listener.accept()
        with conn, conn.makefile("rb") as f:
            length = 0
            while (line := f.readline()) not in (b"\r\n", b""):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            digest = hashlib.sha256(f.read(length)).hexdigest().encode()
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 64\r\n\r\n" + digest)

    threading.Thread(target=serve, daemon=True).start()
    head = f"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: {len(body)}\r\n\r\n".encode()

    async def main() -> bytes:
        pool = Pool()
        try:
            got = await pool.send(
                port, head, body, method="POST", connect_timeout=2, where=own_namespace()
            )
            return await got.read()
        finally:
            pool.close()

    try:
        assert asyncio.run(main()) == hashlib.sha256(body).hexdigest().encode()
    finally:
        listener.close()
