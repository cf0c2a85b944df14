"""Certificates: a small CA, leaf issuance, PEM I/O and the checks an admin needs.

Used by the demo (to generate var/certs) and by the proxy and dashboard (to validate a
certificate/key pair before it is loaded or written to LDAP, and to show expiry).
EC P-256 keys: fast to generate, accepted by every client we care about.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes as PrivateKey
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def make_ca(common_name: str, days: int = 3650) -> tuple[x509.Certificate, PrivateKey]:
    """A self-signed CA that may only sign leaf certificates (path length 0)."""
    key = _new_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_now() - dt.timedelta(minutes=5))  # tolerate small clock skew
        .not_valid_after(_now() + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, key_cert_sign=True, crl_sign=True,
                content_commitment=False, key_encipherment=False, data_encipherment=False,
                key_agreement=False, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def issue(
    ca_cert: x509.Certificate,
    ca_key: PrivateKey,
    names: list[str],
    ips: list[str] | None = None,
    days: int = 825,
    start: dt.datetime | None = None,
) -> tuple[x509.Certificate, PrivateKey]:
    """A TLS server certificate for `names` (first one is the CN) and `ips`, signed by the CA,
    valid `days` from `start` (default: now, less five minutes of clock skew)."""
    if not names:
        raise ValueError("a certificate needs at least one DNS name")
    key = _new_key()
    san = [x509.DNSName(n) for n in names] + [
        x509.IPAddress(ipaddress.ip_address(ip)) for ip in (ips or [])
    ]
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start or _now() - dt.timedelta(minutes=5))
        .not_valid_after((start or _now()) + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(san), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    return cert, key


# --- PEM ---------------------------------------------------------------------------------

def cert_to_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def key_to_pem(key: PrivateKey) -> bytes:
    # Unencrypted PKCS#8: what nginx, Dovecot and Python's ssl module all read.
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def load_cert(pem: bytes | str) -> x509.Certificate:
    """The first certificate in `pem` (a chain file starts with the leaf)."""
    return x509.load_pem_x509_certificate(pem.encode() if isinstance(pem, str) else pem)


def load_key(pem: bytes | str) -> PrivateKey:
    return serialization.load_pem_private_key(
        pem.encode() if isinstance(pem, str) else pem, password=None
    )


def write_pair(cert: x509.Certificate, key: PrivateKey, cert_path: Path, key_path: Path) -> None:
    """Write cert (0644) and key (0600); the key file is never world-readable, even briefly."""
    cert_path.write_bytes(cert_to_pem(cert))
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        os.fchmod(fd, 0o600)  # an existing file keeps its old mode otherwise
        f.write(key_to_pem(key))


def read_pair(cert_path: Path, key_path: Path) -> tuple[x509.Certificate, PrivateKey]:
    return load_cert(cert_path.read_bytes()), load_key(key_path.read_bytes())


# --- checks ------------------------------------------------------------------------------

def check_pair(cert: x509.Certificate, key: PrivateKey) -> bool:
    """True when `key` is the private key of `cert` (same public key)."""
    fmt = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return cert.public_key().public_bytes(*fmt) == key.public_key().public_bytes(*fmt)


def san_names(cert: x509.Certificate) -> list[str]:
    """DNS names then IP addresses from the subjectAltName extension (empty if none)."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return san.get_values_for_type(x509.DNSName) + [
        str(ip) for ip in san.get_values_for_type(x509.IPAddress)
    ]


def _dns_match(pattern: str, hostname: str) -> bool:
    """RFC 6125: a wildcard is only the whole left-most label and matches exactly one label."""
    pattern, hostname = pattern.lower().rstrip("."), hostname.lower().rstrip(".")
    if not pattern.startswith("*."):
        return pattern == hostname
    head, _, rest = hostname.partition(".")
    return bool(head) and rest == pattern[2:] and "." in rest  # no "*.com"-style matches


def covers(cert: x509.Certificate, hostname: str) -> bool:
    """True when the certificate's SAN matches `hostname` (a DNS name or an IP address).

    The subject CN is ignored, as modern clients do.
    """
    try:
        ip = ipaddress.ip_address(hostname.strip("[]"))
    except ValueError:
        ip = None
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    if ip is not None:
        return ip in san.get_values_for_type(x509.IPAddress)
    return any(_dns_match(p, hostname) for p in san.get_values_for_type(x509.DNSName))


def expires_in(cert: x509.Certificate) -> dt.timedelta:
    """Time left until notAfter (negative when already expired)."""
    return cert.not_valid_after_utc - _now()


def is_signed_by(cert: x509.Certificate, ca_cert: x509.Certificate) -> bool:
    """True when `cert` was issued by `ca_cert` (signature and issuer name check)."""
    try:
        cert.verify_directly_issued_by(ca_cert)
    except (InvalidSignature, ValueError, TypeError):  # bad signature, issuer or key type
        return False
    return True


def describe(cert: x509.Certificate) -> dict:
    """What an admin wants to see about a certificate, JSON-friendly."""
    return {
        "subject": cert.subject.rfc4514_string(),
        "issuer": cert.issuer.rfc4514_string(),
        "names": san_names(cert),
        "not_after": cert.not_valid_after_utc.isoformat(),
        "expires_in_days": expires_in(cert).days,
        "serial": format(cert.serial_number, "x"),
    }


# --- what `carbotui check` says about a pair ------------------------------------------------

EXPIRY_WARNING = dt.timedelta(days=14)


def pair_problems(cert: x509.Certificate, key: PrivateKey | None, names=(), *,
                  warn_within: dt.timedelta = EXPIRY_WARNING,
                  now: dt.datetime | None = None) -> list[tuple[bool, str]]:
    """What is wrong with a certificate (and its key, unless None) for serving ``names``:
    (is_error, text) each. Errors: the key is another certificate's, not yet valid,
    expired, a name it does not cover. Warning: it expires within ``warn_within``."""
    now = now or _now()
    out: list[tuple[bool, str]] = []
    if key is not None and not check_pair(cert, key):
        out.append((True, "the private key does not match the certificate"))
    if cert.not_valid_before_utc > now:
        out.append((True, f"not valid before {cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC"))
    left = cert.not_valid_after_utc - now
    if left <= dt.timedelta(0):
        out.append((True, f"expired on {cert.not_valid_after_utc:%Y-%m-%d} "
                          f"({(-left).days} days ago)"))
    elif left <= warn_within:
        out.append((False, f"expires on {cert.not_valid_after_utc:%Y-%m-%d} "
                           f"(in {left.days} days)"))
    missing = [n for n in names if not covers(cert, n)]
    if missing:
        listed = ", ".join(san_names(cert)) or "no subjectAltName"
        out.append((True, f"does not cover {', '.join(missing)} (it names {listed})"))
    return out
