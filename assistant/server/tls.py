"""HTTPS for `assistant serve`: the certificate files uvicorn gets, and a cached
self-signed certificate for `--ssl-self-signed`.

Browsers hand the microphone and camera only to secure contexts (W3C Secure Contexts;
`getUserMedia` is [SecureContext] in Media Capture and Streams), so a page served as
`http://gpu-host:8000/` cannot start a call. A self-signed certificate is the shortest
way to a secure page on a LAN: the browser warns once, the user compares the SHA-256
fingerprint we print with the one the browser shows, and accepts it.

The certificate names this host (its hostname, `localhost`, a --host name) and its
addresses (every interface address but IPv6 link-local ones, read with ifaddr as aioice
does; no DNS lookup) as subjectAltNames, which is all browsers read (CA/Browser Forum BR
7.1.4.2: the CN is not checked). It is made
once and reused until it lacks a name the host now has or is within 30 days of expiry.
The key is ECDSA P-256: every browser takes it, and it is made in milliseconds.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import logging
import os
import socket
from dataclasses import dataclass
from pathlib import Path

from ..settings import Settings

log = logging.getLogger("assistant.server")

VALID_DAYS = 365
RENEW_BEFORE_DAYS = 30
CERT_NAME, KEY_NAME = "self-signed-cert.pem", "self-signed-key.pem"


@dataclass(frozen=True)
class TlsFiles:
    certfile: str
    keyfile: str | None  # None: the key is in the certfile (uvicorn/ssl accept both)
    fingerprint: str = ""  # SHA-256 of the DER certificate, colon-separated hex (self-signed only)


def check_tls(settings: Settings) -> str | None:
    """Why these TLS settings are refused, or None."""
    if settings.ssl_self_signed and (settings.ssl_certfile or settings.ssl_keyfile):
        return (
            "--ssl-self-signed makes its own certificate: drop --ssl-certfile/--ssl-keyfile, or drop --ssl-self-signed"
        )
    if settings.ssl_keyfile and not settings.ssl_certfile:
        return "--ssl-keyfile needs --ssl-certfile (the certificate that goes with the key)"
    for flag, path in (("--ssl-certfile", settings.ssl_certfile), ("--ssl-keyfile", settings.ssl_keyfile)):
        if path and not Path(path).is_file():
            return f"{flag} {path}: no such file"
    return None


def tls_files(settings: Settings, cache_dir: Path) -> TlsFiles | None:
    """What uvicorn should serve HTTPS with, or None for plain HTTP. Makes (or reuses)
    the self-signed certificate under `cache_dir` when --ssl-self-signed is set."""
    if settings.ssl_certfile:
        return TlsFiles(settings.ssl_certfile, settings.ssl_keyfile or None)
    if not settings.ssl_self_signed:
        return None
    return self_signed(cache_dir, host_names(settings.host))


def host_names(bind_host: str) -> tuple[list[str], list[str]]:
    """(DNS names, IP addresses) this host answers to: what a browser elsewhere may type."""
    import ifaddr

    names = {"localhost", socket.gethostname().lower()} - {""}
    addrs = {"127.0.0.1", "::1"}
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            # IPv4 as a str; IPv6 as (address, flowinfo, scope_id): a scope id marks link-local.
            if isinstance(ip.ip, str):
                addrs.add(ip.ip)
            elif ip.ip[2] == 0:
                addrs.add(ip.ip[0])
    bind = bind_host.strip("[]")
    if bind:
        try:
            ip = ipaddress.ip_address(bind)
            if not ip.is_unspecified:
                addrs.add(str(ip))
        except ValueError:
            names.add(bind.lower())
    return sorted(names), sorted(addrs, key=lambda a: (":" in a, a))


def fingerprint(cert) -> str:
    from cryptography.hazmat.primitives import hashes

    return ":".join(f"{b:02X}" for b in cert.fingerprint(hashes.SHA256()))


def self_signed(cache_dir: Path, names: tuple[list[str], list[str]]) -> TlsFiles:
    """The cached certificate if it still covers `names` and is not near expiry; else a new one."""
    dns, ips = names
    cert_path, key_path = cache_dir / CERT_NAME, cache_dir / KEY_NAME
    cert = _load_if_fit(cert_path, key_path, dns, ips)
    if cert is None:
        cert = _make(cert_path, key_path, dns, ips)
        log.info("made a self-signed certificate %s for %s", cert_path, ", ".join(dns + ips))
    return TlsFiles(str(cert_path), str(key_path), fingerprint(cert))


def _load_if_fit(cert_path: Path, key_path: Path, dns: list[str], ips: list[str]):
    from cryptography import x509

    if not (cert_path.is_file() and key_path.is_file()):
        return None
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (ValueError, x509.ExtensionNotFound) as exc:
        log.warning("ignoring unreadable cached certificate %s: %s", cert_path, exc)
        return None
    have_dns = set(san.get_values_for_type(x509.DNSName))
    have_ips = {str(ip) for ip in san.get_values_for_type(x509.IPAddress)}
    renew_at = cert.not_valid_after_utc - dt.timedelta(days=RENEW_BEFORE_DAYS)
    if not (set(dns) <= have_dns and set(ips) <= have_ips) or dt.datetime.now(dt.UTC) >= renew_at:
        return None
    return cert


def _make(cert_path: Path, key_path: Path, dns: list[str], ips: list[str]):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "assistant (self-signed)"),
            x509.NameAttribute(NameOID.COMMON_NAME, dns[0] if dns else "localhost"),
        ]
    )
    now = dt.datetime.now(dt.UTC)
    alt = [x509.DNSName(n) for n in dns] + [x509.IPAddress(ipaddress.ip_address(a)) for a in ips]
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))  # clocks of other machines differ a little
        .not_valid_after(now + dt.timedelta(days=VALID_DAYS))
        .add_extension(x509.SubjectAlternativeName(alt), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path.parent.mkdir(parents=True, exist_ok=True)
    # The key first, created 0600 so that no other user can ever read it.
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert
