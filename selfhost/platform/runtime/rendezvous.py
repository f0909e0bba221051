"""Rendezvous: how a client attaches to a one-off dyno, as Heroku's CLI does.

A dyno created with ``attach: true`` has ``attach_url``
``rendezvous://HOST:PORT/SECRET``. The client connects with TLS (the platform's
authority, :mod:`selfhost.platform.tls`), writes the secret and CRLF (heroku3 writes the
bare secret); the server answers ``rendezvous\\r\\n`` and from then on the connection is
the dyno's terminal: what the client sends is the dyno's stdin, what the dyno writes
comes back, and the server closes the connection when the dyno has ended. End of input
is the client closing its side, or EOT (Ctrl-D, ``\x04``) at the end of what it sends,
which is how Heroku's CLI ends a stdin that is not a terminal (the dyno has no pty that
would read it as end of file). When the dyno ends first, the server gives the client
:data:`LINGER_SECONDS` to send its end of input before it closes: the CLI writes its EOT
when its own stdin ends, and a write after the server's close crashes it. A wrong
secret, or none within :data:`HELLO_SECONDS`, gets the connection closed without a word.

The server is asyncio's (one event loop in a thread of its own): a TLS connection is
full duplex here, and OpenSSL does not let two threads read and write one connection.
A dyno's output is an iterator that blocks; a thread per attached client drains it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import socket
import threading
from collections.abc import Callable, Iterator
from typing import Protocol

from selfhost.platform.tls import Authority

HELLO_SECONDS = 10.0
LINGER_SECONDS = 0.5
EOT = b"\x04"
MAX_SECRET = 256


class Attachable(Protocol):
    """What rendezvous needs of a dyno."""

    attach_token: str
    tty: tuple[int, int] | None  # a terminal: what the client sends passes as it is

    def output(self) -> Iterator[bytes]: ...

    def write_input(self, data: bytes) -> None: ...

    def close_input(self) -> None: ...


class Rendezvous:
    """A TLS server that joins clients to their dynos by the dyno's secret."""

    def __init__(
        self,
        authority: Authority,
        lookup: Callable[[str], Attachable | None],
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        log: Callable[[str], None] | None = None,
    ):
        self.context = authority.server_context()
        self.lookup = lookup
        self.log = log or (lambda line: None)
        self.listener = socket.create_server((host, port), backlog=128)
        self.host = host
        self.port = self.listener.getsockname()[1]
        self.loop = asyncio.new_event_loop()
        self.thread: threading.Thread | None = None

    def url(self, secret: str) -> str:
        return f"rendezvous://{self.host}:{self.port}/{secret}"

    def start(self) -> None:
        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(self.loop)
            self.loop.run_until_complete(
                asyncio.start_server(
                    self._client,
                    sock=self.listener,
                    ssl=self.context,
                    ssl_handshake_timeout=HELLO_SECONDS,
                    limit=MAX_SECRET + 2,
                )
            )
            ready.set()
            self.loop.run_forever()
            # stopped: end the connections still open, so none is left pending
            pending = asyncio.all_tasks(self.loop)
            for task in pending:
                task.cancel()
            if pending:
                self.loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            self.loop.close()

        self.thread = threading.Thread(target=run, daemon=True, name="rendezvous")
        self.thread.start()
        ready.wait(10)

    def stop(self) -> None:
        if self.thread is not None:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(timeout=10)
        with contextlib.suppress(OSError):
            self.listener.close()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            hello = await self._hello(reader)
            if hello is None:
                return
            dyno, rest = hello
            writer.write(b"rendezvous\r\n")
            await writer.drain()  # its own record: the CLI drops the first one it reads
            ended = asyncio.Event()
            feed = asyncio.create_task(_feed(reader, dyno, ended, rest))
            chunks: asyncio.Queue[bytes | None] = asyncio.Queue()
            loop = asyncio.get_running_loop()

            def drain() -> None:  # the dyno's output blocks: a thread of its own
                # (the loop may have been closed meanwhile: the server stopped)
                with contextlib.suppress(RuntimeError):
                    try:
                        for chunk in dyno.output():
                            loop.call_soon_threadsafe(chunks.put_nowait, chunk)
                    finally:
                        loop.call_soon_threadsafe(chunks.put_nowait, None)

            threading.Thread(target=drain, daemon=True, name="rendezvous-out").start()
            while (chunk := await chunks.get()) is not None:
                if chunk:
                    writer.write(chunk)
                    await writer.drain()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(ended.wait(), LINGER_SECONDS)
            feed.cancel()
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
            self.log(f"rendezvous: {type(exc).__name__}: {exc}")
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _hello(self, reader: asyncio.StreamReader) -> tuple[Attachable, bytes] | None:
        """The secret the client sends first, and its dyno if it is one, with what
        followed the secret (the first of the dyno's input). Heroku's CLI ends the secret
        with CRLF; heroku3 sends it bare, in one write, and waits for the answer."""
        received = b""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + HELLO_SECONDS
        while len(received) <= MAX_SECRET:
            line, crlf, rest = received.partition(b"\r\n")
            if crlf or (received and self.lookup(received.decode("ascii", "replace"))):
                secret = line.decode("ascii", "replace")
                dyno = self.lookup(secret)
                if dyno is None or not hmac.compare_digest(dyno.attach_token, secret):
                    return None
                return dyno, rest
            try:
                chunk = await asyncio.wait_for(reader.read(4096), deadline - loop.time())
            except (TimeoutError, OSError):
                return None
            if not chunk:
                return None
            received += chunk
        return None


async def _feed(
    reader: asyncio.StreamReader, dyno: Attachable, ended: asyncio.Event, first: bytes = b""
) -> None:
    """The client's bytes (``first``, then what it sends) to the dyno's stdin, until the
    client closes or ends with EOT."""
    try:
        while chunk := first or await reader.read(65536):
            first = b""
            if dyno.tty is not None:  # a terminal reads Ctrl-D itself, and goes on
                await asyncio.to_thread(dyno.write_input, chunk)
                continue
            last = chunk.endswith(EOT)
            if last:
                chunk = chunk[: -len(EOT)]
            if chunk:
                await asyncio.to_thread(dyno.write_input, chunk)
            if last:
                break
    except (OSError, ConnectionError):
        pass
    finally:
        dyno.close_input()
        ended.set()
