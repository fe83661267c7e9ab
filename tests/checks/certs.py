"""A throwaway PKI for TLS tests, generated at test time.

One CA signs the server certificates ``valid``, ``expired``, ``expiring`` (in 3
days) and ``wrong_host`` (for ``other.example`` only); ``self_signed`` is its
own issuer. Every server certificate except ``wrong_host`` names
``localhost`` and ``127.0.0.1``. Keys are P-256: fast to make.
"""

from __future__ import annotations

import ipaddress
import ssl
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

LOCAL_NAMES: tuple[x509.GeneralName, ...] = (
    x509.DNSName("localhost"),
    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
)


@dataclass(frozen=True, slots=True)
class ServerCert:
    cert_file: Path
    key_file: Path
    not_after: datetime

    def server_context(self) -> ssl.SSLContext:
        """A server-side context presenting this certificate."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.cert_file, self.key_file)
        return context


@dataclass(frozen=True, slots=True)
class Pki:
    ca_file: Path
    valid: ServerCert
    expired: ServerCert
    expiring: ServerCert
    wrong_host: ServerCert
    self_signed: ServerCert


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


def _server(
    directory: Path,
    label: str,
    *,
    issuer: tuple[x509.Name, ec.EllipticCurvePrivateKey] | None,
    not_before: datetime,
    not_after: datetime,
    names: tuple[x509.GeneralName, ...] = LOCAL_NAMES,
) -> ServerCert:
    key = _key()
    subject = _name(f"{label} server")
    issuer_name, issuer_key = issuer if issuer is not None else (subject, key)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.SubjectAlternativeName(list(names)), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
            critical=False,
        )
        .sign(issuer_key, hashes.SHA256())
    )
    cert_file = directory / f"{label}.pem"
    key_file = directory / f"{label}.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _write_key(key_file, key)
    return ServerCert(cert_file, key_file, cert.not_valid_after_utc)


def make_pki(directory: Path) -> Pki:
    """Write a CA and the server certificates into ``directory``."""
    now = datetime.now(UTC).replace(microsecond=0)
    day = timedelta(days=1)
    ca_key = _key()
    ca_name = _name("snmp-watchdog test CA")
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - 365 * day)
        .not_valid_after(now + 3650 * day)
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
            x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    ca_file = directory / "ca.pem"
    ca_file.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    ca = (ca_name, ca_key)
    return Pki(
        ca_file=ca_file,
        valid=_server(
            directory, "valid", issuer=ca, not_before=now - day, not_after=now + 400 * day
        ),
        expired=_server(
            directory, "expired", issuer=ca, not_before=now - 30 * day, not_after=now - day
        ),
        expiring=_server(
            directory, "expiring", issuer=ca, not_before=now - day, not_after=now + 3 * day
        ),
        wrong_host=_server(
            directory,
            "wrong_host",
            issuer=ca,
            not_before=now - day,
            not_after=now + 400 * day,
            names=(x509.DNSName("other.example"),),
        ),
        self_signed=_server(
            directory, "self_signed", issuer=None, not_before=now - day, not_after=now + 400 * day
        ),
    )
