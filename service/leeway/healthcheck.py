"""`leeway health` over TLS and mutual TLS: which CA to trust, which client certificate to show, and which name the
server's certificate must carry.

The check usually runs beside the server (a container's HEALTHCHECK, with the server's environment), so the
server's own settings say whether TLS is on (``LEEWAY_TLS_CERT_FILE``) and a client certificate is required
(``LEEWAY_TLS_CLIENT_CA_FILE``). What the check itself presents comes from options or ``LEEWAY_HEALTH_*``:

- the CA: ``--ca-file`` / ``LEEWAY_HEALTH_CA_FILE``; else the self-signed root at the end of the server's
  certificate chain file, if it holds one (a self-signed certificate is its own root); else the system's CAs;
- the client certificate for mutual TLS: ``--cert-file`` + ``--key-file`` / ``LEEWAY_HEALTH_CERT_FILE`` +
  ``LEEWAY_HEALTH_KEY_FILE``;
- the name to verify: ``--server-name`` / ``LEEWAY_HEALTH_SERVER_NAME``; else, when the server's certificate does
  not cover the address checked (127.0.0.1 for a server on 0.0.0.0), the certificate's first DNS name.
"""

from __future__ import annotations

import argparse
import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import grpc


class HealthTlsError(ValueError):
    """The check's own TLS configuration is wrong (a file missing, a certificate without its key)."""


def local_target(address: str) -> str:
    """HOST:PORT to call: a wildcard listen address (0.0.0.0, [::], empty) is checked on the loopback."""
    host, _, port = address.rpartition(":")
    if host in ("0.0.0.0", "[::]", "::", ""):
        host = "127.0.0.1"
    return f"{host}:{port}"


def _option(value: str | None, environ: Mapping[str, str], name: str) -> tuple[str, str]:
    """(path or value, where it came from)."""
    if value:
        return value, "--" + name.removeprefix("LEEWAY_HEALTH_").lower().replace("_", "-")
    return environ.get(name, "").strip(), name


def _read(path: str, where: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as error:
        raise HealthTlsError(f"{where}={path!r}: cannot read it ({error.strerror})") from None


def _certificates(pem: bytes) -> list[object]:
    from cryptography import x509

    try:
        return list(x509.load_pem_x509_certificates(pem))
    except ValueError:
        return []


def _self_signed_root(chain: bytes) -> bytes | None:
    """The PEM of the last certificate of ``chain`` if it is self-signed (a root, or a self-signed server)."""
    from cryptography.hazmat.primitives.serialization import Encoding

    certificates = _certificates(chain)
    if not certificates:
        return None
    last = certificates[-1]
    if last.issuer == last.subject:  # type: ignore[attr-defined]
        return bytes(last.public_bytes(Encoding.PEM))  # type: ignore[attr-defined]
    return None


def _name_for(chain: bytes, host: str) -> str | None:
    """A name the leaf of ``chain`` carries, if it does not already cover ``host``; None when it does."""
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    certificates = _certificates(chain)
    if not certificates:
        return None
    leaf = certificates[0]
    try:
        names = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value  # type: ignore[attr-defined]
        dns = names.get_values_for_type(x509.DNSName)
        ips = [str(ip) for ip in names.get_values_for_type(x509.IPAddress)]
    except x509.ExtensionNotFound:
        dns, ips = [a.value for a in leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)], []  # type: ignore[attr-defined]
    host = host.strip("[]")
    try:
        if str(ipaddress.ip_address(host)) in ips:
            return None
    except ValueError:
        if host in dns or any(d.startswith("*.") and host.split(".", 1)[-1] == d[2:] for d in dns):
            return None
    plain = [d for d in dns if not d.startswith("*.")]
    return str(plain[0]) if plain else None


@dataclass(frozen=True)
class HealthTls:
    root_certificates: bytes | None
    certificate_chain: bytes | None
    private_key: bytes | None
    server_name: str | None
    trust: str  # where the CA came from, for messages
    client_certificate_required: bool

    @classmethod
    def from_options(cls, args: argparse.Namespace, environ: Mapping[str, str], target: str) -> HealthTls | None:
        """The TLS of the check, or None for plaintext."""
        if getattr(args, "plaintext", False):
            return None
        ca, ca_from = _option(args.ca_file, environ, "LEEWAY_HEALTH_CA_FILE")
        cert, cert_from = _option(args.cert_file, environ, "LEEWAY_HEALTH_CERT_FILE")
        key, key_from = _option(args.key_file, environ, "LEEWAY_HEALTH_KEY_FILE")
        name, _ = _option(args.server_name, environ, "LEEWAY_HEALTH_SERVER_NAME")
        server_cert = environ.get("LEEWAY_TLS_CERT_FILE", "").strip()
        if not (args.tls or ca or cert or key or name or server_cert):
            return None
        if bool(cert) != bool(key):
            raise HealthTlsError(
                "a client certificate needs its key: give both --cert-file and --key-file "
                "(or LEEWAY_HEALTH_CERT_FILE and LEEWAY_HEALTH_KEY_FILE)"
            )
        chain = _read(server_cert, "LEEWAY_TLS_CERT_FILE") if server_cert and Path(server_cert).is_file() else None
        roots, trust = None, "the system's CAs"
        if ca:
            roots, trust = _read(ca, ca_from), ca_from
        elif chain is not None:
            roots = _self_signed_root(chain)
            if roots is not None:
                trust = "the root in LEEWAY_TLS_CERT_FILE"
        if not name and chain is not None:
            name = _name_for(chain, target.rpartition(":")[0]) or ""
        return cls(
            root_certificates=roots,
            certificate_chain=_read(cert, cert_from) if cert else None,
            private_key=_read(key, key_from) if key else None,
            server_name=name or None,
            trust=trust,
            client_certificate_required=bool(environ.get("LEEWAY_TLS_CLIENT_CA_FILE", "").strip()),
        )

    def channel(self, target: str) -> grpc.Channel:
        credentials = grpc.ssl_channel_credentials(
            root_certificates=self.root_certificates, private_key=self.private_key, certificate_chain=self.certificate_chain
        )
        options = [("grpc.ssl_target_name_override", self.server_name)] if self.server_name else []
        return grpc.secure_channel(target, credentials, options=options)

    def describe(self) -> str:
        kind = "mutual TLS" if self.certificate_chain else "TLS"
        name = f", as {self.server_name}" if self.server_name else ""
        return f"{kind}, trusting {self.trust}{name}"

    def hint(self, error: grpc.RpcError) -> str:
        """What to check when the call failed (the TLS handshake shows only as UNAVAILABLE)."""
        if error.code() is not grpc.StatusCode.UNAVAILABLE:  # type: ignore[attr-defined]
            return ""
        if self.client_certificate_required and self.certificate_chain is None:
            return (
                " (the server asks for a client certificate, LEEWAY_TLS_CLIENT_CA_FILE: give --cert-file and "
                "--key-file, or LEEWAY_HEALTH_CERT_FILE and LEEWAY_HEALTH_KEY_FILE)"
            )
        return f" ({self.describe()}: is that the CA of the server's certificate? --ca-file / LEEWAY_HEALTH_CA_FILE)"
