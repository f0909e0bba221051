"""The platform's certificate authority, with real TLS handshakes on loopback."""

from __future__ import annotations

import os
import socket
import ssl
import stat
import threading

import pytest

from selfhost.platform.tls import Authority


def handshake(authority: Authority, client: ssl.SSLContext, host: str) -> bytes:
    """A TLS server with the authority's certificate; what the client reads from it."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    server = authority.server_context()

    def serve() -> None:
        conn, _ = listener.accept()
        try:
            with server.wrap_socket(conn, server_side=True) as tls:
                tls.sendall(b"rendezvous\r\n")
        except (ssl.SSLError, OSError):
            pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        with (
            socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
            client.wrap_socket(raw, server_hostname=host) as tls,
        ):
            return tls.recv(100)
    finally:
        thread.join(timeout=10)
        listener.close()


def test_a_client_that_trusts_the_authority_connects(tmp_path):
    authority = Authority.ensure(tmp_path / "tls", ["127.0.0.1", "localhost"])
    assert handshake(authority, authority.client_context(), "127.0.0.1") == b"rendezvous\r\n"
    assert stat.S_IMODE(os.stat(authority.ca_key).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(authority.server_key).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(tmp_path / "tls").st_mode) == 0o700


def test_a_client_that_does_not_trust_it_is_refused(tmp_path):
    authority = Authority.ensure(tmp_path / "tls", ["127.0.0.1"])
    with pytest.raises(ssl.SSLCertVerificationError):
        handshake(authority, ssl.create_default_context(), "127.0.0.1")
    other = Authority.ensure(tmp_path / "other", ["127.0.0.1"])  # another platform's CA
    with pytest.raises(ssl.SSLCertVerificationError):
        handshake(authority, other.client_context(), "127.0.0.1")


def test_a_name_the_certificate_does_not_cover_is_refused(tmp_path):
    authority = Authority.ensure(tmp_path / "tls", ["127.0.0.1"])
    with pytest.raises(ssl.SSLCertVerificationError):
        handshake(authority, authority.client_context(), "example.org")


def test_the_authority_is_kept_and_the_server_certificate_follows_the_hosts(tmp_path):
    first = Authority.ensure(tmp_path / "tls", ["127.0.0.1"])
    ca, server = first.ca_cert.read_bytes(), first.server_cert.read_bytes()
    again = Authority.ensure(tmp_path / "tls", ["127.0.0.1"])
    assert again.ca_cert.read_bytes() == ca and again.server_cert.read_bytes() == server
    moved = Authority.ensure(tmp_path / "tls", ["127.0.0.1", "10.1.2.3"])
    assert moved.ca_cert.read_bytes() == ca, "clients keep trusting the same authority"
    assert moved.server_cert.read_bytes() != server
    assert handshake(moved, moved.client_context(), "10.1.2.3") == b"rendezvous\r\n"
