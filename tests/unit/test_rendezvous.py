"""Rendezvous over real TLS on loopback, with a stand-in dyno that echoes its stdin."""

from __future__ import annotations

import queue
import socket
import threading
from collections.abc import Iterator

from selfhost.platform.runtime.rendezvous import Rendezvous
from selfhost.platform.tls import Authority


class EchoDyno:
    """Writes a banner, then upper-cases its input until end of input."""

    def __init__(self, token: str):
        self.attach_token = token
        self.tty = None  # its input is a pipe: EOT ends it
        self.inbox: queue.Queue[bytes | None] = queue.Queue()

    def output(self) -> Iterator[bytes]:
        yield b"hello\n"
        while (data := self.inbox.get(timeout=10)) not in (None, b"quit\n"):
            assert data is not None
            yield data.upper()
        yield b"bye\n"

    def write_input(self, data: bytes) -> None:
        self.inbox.put(data)

    def close_input(self) -> None:
        self.inbox.put(None)


def connect(server: Rendezvous, authority: Authority, secret: str):
    raw = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    tls = authority.client_context().wrap_socket(raw, server_hostname="127.0.0.1")
    tls.sendall(secret.encode() + b"\r\n")
    return tls


def read_all(tls) -> bytes:
    data = b""
    while chunk := tls.recv(65536):
        data += chunk
    return data


def test_a_client_with_the_secret_is_the_dyno_s_terminal(tmp_path):
    authority = Authority.ensure(tmp_path / "tls", ["127.0.0.1"])
    dyno = EchoDyno("s3cret")
    server = Rendezvous(authority, lambda secret: dyno if secret == "s3cret" else None)
    server.start()
    try:
        assert server.url("s3cret") == f"rendezvous://127.0.0.1:{server.port}/s3cret"
        tls = connect(server, authority, "s3cret")
        tls.sendall(b"abc\n")
        received = b""
        while b"ABC" not in received:
            received += tls.recv(100)
        tls.sendall(b"quit\n")  # the dyno ends: the server closes the connection
        received += read_all(tls)
        assert received == b"rendezvous\r\nhello\nABC\nbye\n"
    finally:
        server.stop()


def test_a_wrong_secret_gets_nothing(tmp_path):
    authority = Authority.ensure(tmp_path / "tls", ["127.0.0.1"])
    dyno = EchoDyno("s3cret")
    server = Rendezvous(authority, lambda secret: dyno if secret == "s3cret" else None)
    server.start()
    try:
        tls = connect(server, authority, "guess")
        assert read_all(tls) == b"", "closed without a word"
        assert dyno.inbox.empty()
        # a lookup that returns the dyno for any secret is still checked against its own
        lax = Rendezvous(authority, lambda secret: dyno)
        lax.start()
        try:
            assert read_all(connect(lax, authority, "guess")) == b""
        finally:
            lax.stop()
    finally:
        server.stop()


def test_a_client_that_says_nothing_is_dropped(tmp_path, monkeypatch):
    from selfhost.platform.runtime import rendezvous

    monkeypatch.setattr(rendezvous, "HELLO_SECONDS", 0.5)
    authority = Authority.ensure(tmp_path / "tls", ["127.0.0.1"])
    server = Rendezvous(authority, lambda secret: None)
    server.start()
    try:
        raw = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        tls = authority.client_context().wrap_socket(raw, server_hostname="127.0.0.1")
        done = threading.Event()

        def wait() -> None:
            read_all(tls)
            done.set()

        threading.Thread(target=wait, daemon=True).start()
        assert done.wait(5), "the silent client was dropped"
    finally:
        server.stop()


def test_eot_ends_the_input_as_heroku_s_cli_sends_it(tmp_path):
    """A stdin that is not a terminal ends with EOT: the dyno's input ends, the rest of
    its output still comes."""
    authority = Authority.ensure(tmp_path / "tls", ["127.0.0.1"])
    dyno = EchoDyno("s3cret")
    server = Rendezvous(authority, lambda secret: dyno)
    server.start()
    try:
        tls = connect(server, authority, "s3cret")
        tls.sendall(b"abc\n\x04")
        assert read_all(tls) == b"rendezvous\r\nhello\nABC\nbye\n"
    finally:
        server.stop()
