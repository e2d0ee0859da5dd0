"""Certificates for the security and cluster suites, made fresh for each run by the
`cryptography` package: nothing is committed, nothing outlives the run's
temporary directory.

One trusted CA signs the broker's certificate (CN localhost, SAN
DNS:localhost and IP:127.0.0.1, so a client checking the host name
accepts 127.0.0.1) and a good client certificate; an expired client
certificate comes from the same CA, so the only thing wrong with it is its
dates; another CA the broker does not trust signs a third client
certificate. Keys are ECDSA P-256: quick to make, and accepted by rustls,
OpenSSL (librdkafka, Python's ssl) alike.
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass(frozen=True)
class Issued:
    """A certificate and its key as PEM files, and the certificate's serial."""

    cert: Path
    key: Path
    serial: int


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def key_pem(key) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


class Authority:
    """A CA that issues server and client certificates into `directory`."""

    def __init__(self, directory: Path, name: str):
        self.directory = directory
        self.name = name
        self.key = _key()
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"Sluice test CA {name}")])
        now = _now()
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True, content_commitment=False, key_encipherment=False,
                    data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                    encipher_only=False, decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(self.key.public_key()), critical=False)
            .sign(self.key, hashes.SHA256())
        )
        self.pem = _write(directory / f"ca-{name}.pem", self.cert.public_bytes(serialization.Encoding.PEM))

    def _issue(self, common_name: str, usage, sans=None, valid_from=None, valid_until=None,
               serial: int | None = None, organization: str | None = None) -> tuple[bytes, bytes, int]:
        """`usage`: one extended key usage, or a list of them."""
        key = _key()
        now = _now()
        serial = serial if serial is not None else x509.random_serial_number()
        # O before CN in the certificate, so that its distinguished name
        # reads CN=...,O=... (RFC 4514 writes the last one first).
        names = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization)] if organization else []
        names.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name(names))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(serial)
            .not_valid_before(valid_from or now - datetime.timedelta(hours=1))
            .not_valid_after(valid_until or now + datetime.timedelta(days=7))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True, content_commitment=False, key_encipherment=False,
                    data_encipherment=False, key_agreement=False, key_cert_sign=False, crl_sign=False,
                    encipher_only=False, decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.ExtendedKeyUsage(usage if isinstance(usage, list) else [usage]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), critical=False,
            )
        )
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        cert = builder.sign(self.key, hashes.SHA256())
        return cert.public_bytes(serialization.Encoding.PEM), key_pem(key), serial

    def _files(self, stem: str, cert: bytes, key: bytes, serial: int) -> Issued:
        """Writes `stem`.pem and `stem`.key; the Issued naming them."""
        return Issued(_write(self.directory / f"{stem}.pem", cert), _write(self.directory / f"{stem}.key", key), serial)

    def server_pem(self, serial: int | None = None) -> tuple[bytes, bytes, int]:
        """(certificate PEM, key PEM, serial) for CN localhost, valid for
        the name localhost and the address 127.0.0.1."""
        return self._issue(
            "localhost", ExtendedKeyUsageOID.SERVER_AUTH,
            sans=[x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))],
            serial=serial,
        )

    def issue_server(self, stem: str, serial: int | None = None) -> Issued:
        cert, key, serial = self.server_pem(serial)
        return self._files(stem, cert, key, serial)

    def issue_client(self, stem: str, expired: bool = False) -> Issued:
        now = _now()
        dates = {}
        if expired:
            dates = {"valid_from": now - datetime.timedelta(days=20), "valid_until": now - datetime.timedelta(days=10)}
        cert, key, serial = self._issue(f"client {stem}", ExtendedKeyUsageOID.CLIENT_AUTH, **dates)
        return self._files(stem, cert, key, serial)


    def issue_node(self, stem: str) -> Issued:
        """A cluster node's certificate: server and client usage (it both
        accepts and dials other nodes), for localhost and 127.0.0.1."""
        cert, key, serial = self._issue(
            f"node {stem}", [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH],
            sans=[x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))],
        )
        return self._files(stem, cert, key, serial)

    def issue_subject(self, stem: str, common_name: str, organization: str | None = None) -> Issued:
        """A client certificate whose subject is CN=`common_name`, then
        O=`organization` if given."""
        cert, key, serial = self._issue(common_name, ExtendedKeyUsageOID.CLIENT_AUTH, organization=organization)
        return self._files(stem, cert, key, serial)


@dataclass(frozen=True)
class Pki:
    """Everything a test needs: the trusted CA's PEM, the broker's
    certificate, and the four client certificates."""

    directory: Path
    ca: Authority
    ca_file: Path
    server: Issued
    client: Issued
    untrusted_client: Issued
    expired_client: Issued
    untrusted_ca_file: Path


def make_pki(directory: Path) -> Pki:
    directory.mkdir(parents=True, exist_ok=True)
    ca = Authority(directory, "trusted")
    other = Authority(directory, "untrusted")
    return Pki(
        directory=directory,
        ca=ca,
        ca_file=ca.pem,
        server=ca.issue_server("server"),
        client=ca.issue_client("client"),
        untrusted_client=other.issue_client("client-untrusted"),
        expired_client=ca.issue_client("client-expired", expired=True),
        untrusted_ca_file=other.pem,
    )


def serial_of(der: bytes) -> int:
    """The serial number of a DER certificate (what a TLS peer presented)."""
    return x509.load_der_x509_certificate(der).serial_number
