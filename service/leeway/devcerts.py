"""Development certificates: a local CA, a server certificate for localhost and a client certificate.

For trying TLS and mutual TLS in a minute (`leeway dev-certs DIR`); not for production (keys unencrypted,
one-year validity).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Leeway dev"), x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def write_dev_certs(directory: Path, *, client_name: str = "leeway-client", days: int = 365) -> dict[str, str]:
    directory.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=5)
    ca_key = _key()
    ca = (
        x509.CertificateBuilder()
        .subject_name(_name("Leeway dev CA"))
        .issuer_name(_name("Leeway dev CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True
        )
        .sign(ca_key, hashes.SHA256())
    )

    def leaf(common_name: str, usage: x509.ObjectIdentifier, sans: list[x509.GeneralName]) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        key = _key()
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(common_name))
            .issuer_name(ca.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now)
            .not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        )
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        return builder.sign(ca_key, hashes.SHA256()), key

    server, server_key = leaf(
        "localhost",
        ExtendedKeyUsageOID.SERVER_AUTH,
        [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.IPAddress(ipaddress.ip_address("::1"))],
    )
    client, client_key = leaf(client_name, ExtendedKeyUsageOID.CLIENT_AUTH, [])
    files = {
        "ca_cert": ("ca.pem", ca.public_bytes(serialization.Encoding.PEM)),
        "server_cert": ("server.pem", server.public_bytes(serialization.Encoding.PEM)),
        "server_key": ("server-key.pem", _pem_key(server_key)),
        "client_cert": ("client.pem", client.public_bytes(serialization.Encoding.PEM)),
        "client_key": ("client-key.pem", _pem_key(client_key)),
    }
    paths = {}
    for name, (filename, data) in files.items():
        path = directory / filename
        path.unlink(missing_ok=True)
        mode = 0o600 if name.endswith("_key") else 0o644
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)  # keys are never world-readable
        with os.fdopen(descriptor, "wb") as file:
            file.write(data)
        paths[name] = str(path)
    return paths
