"""The platform's certificate authority: TLS for rendezvous (``heroku run``).

Heroku's CLI attaches to a one-off dyno over TLS (``rendezvous://host:port/secret``).
The platform makes its own authority the first time it needs one, with the
``cryptography`` package, and a server certificate for the addresses it serves on:

    <platform>/tls/ca.crt      the authority's certificate: what a client trusts
                               (Node: ``NODE_EXTRA_CA_CERTS=<platform>/tls/ca.crt``;
                               Python: ``ssl.create_default_context(cafile=...)``)
    <platform>/tls/ca.key      its private key (0600), never leaves the directory
    <platform>/tls/server.crt  the rendezvous server's certificate, signed by the CA,
    <platform>/tls/server.key  for every address in ``hosts`` (remade when they change
                               or when it has less than 30 days left)

Keys are ECDSA P-256; the authority lasts 10 years, a server certificate one.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_DAYS = 3650
SERVER_DAYS = 365
RENEW_DAYS = 30


@dataclass(frozen=True)
class Authority:
    """A platform's authority and server certificate (see the module docstring)."""

    root: Path  # <platform>/tls

    @property
    def ca_cert(self) -> Path:
        return self.root / "ca.crt"

    @property
    def ca_key(self) -> Path:
        return self.root / "ca.key"

    @property
    def server_cert(self) -> Path:
        return self.root / "server.crt"

    @property
    def server_key(self) -> Path:
        return self.root / "server.key"

    @classmethod
    def ensure(cls, root: Path, hosts: list[str]) -> Authority:
        """The authority at ``root``, made if missing, with a server certificate valid
        for ``hosts`` (IP addresses or DNS names)."""
        authority = cls(root)
        root.mkdir(parents=True, exist_ok=True)
        os.chmod(root, 0o700)
        if not (authority.ca_cert.exists() and authority.ca_key.exists()):
            authority._make_ca()
        if not authority._server_ok(hosts):
            authority._make_server(hosts)
        return authority

    def server_context(self) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(self.server_cert, self.server_key)
        return context

    def client_context(self) -> ssl.SSLContext:
        """What a client of the rendezvous server uses: trusts this authority only."""
        return ssl.create_default_context(cafile=str(self.ca_cert))

    # ------------------------------------------------------------------ making
    def _make_ca(self) -> None:
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "selfhost platform CA")])
        now = _now()
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=CA_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=False,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
            )
            .sign(key, hashes.SHA256())
        )
        _write_private(self.ca_key, key)
        _write_public(self.ca_cert, cert)

    def _server_ok(self, hosts: list[str]) -> bool:
        try:
            cert = x509.load_pem_x509_certificate(self.server_cert.read_bytes())
            ca = x509.load_pem_x509_certificate(self.ca_cert.read_bytes())
            if not self.server_key.exists() or cert.issuer != ca.subject:
                return False
            sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        except (OSError, ValueError, x509.ExtensionNotFound):
            return False
        left = cert.not_valid_after_utc - _now()
        return set(_names(hosts)) == set(sans) and left > datetime.timedelta(days=RENEW_DAYS)

    def _make_server(self, hosts: list[str]) -> None:
        ca_key = serialization.load_pem_private_key(self.ca_key.read_bytes(), password=None)
        assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
        ca = x509.load_pem_x509_certificate(self.ca_cert.read_bytes())
        key = ec.generate_private_key(ec.SECP256R1())
        now = _now()
        cert = (
            x509.CertificateBuilder()
            .subject_name(
                x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "selfhost rendezvous")])
            )
            .issuer_name(ca.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=SERVER_DAYS))
            .add_extension(x509.SubjectAlternativeName(_names(hosts)), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                critical=False,
            )
            .sign(ca_key, hashes.SHA256())
        )
        _write_private(self.server_key, key)
        _write_public(self.server_cert, cert)


def _names(hosts: list[str]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return names


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _write_private(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    """Written 0600 from the start, then renamed into place (never half-written)."""
    data = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def _write_public(path: Path, cert: x509.Certificate) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
