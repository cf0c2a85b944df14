"""Admin changes: validated first, then written to LDAP through Directory.modify.

Used by the dashboard and by `carbotui prov`. Each change is checked against
what the directory holds right now:

  mail mode         one of MAIL_MODES
  virtual hostname  FQDN syntax; not already a virtual hostname of any domain;
                    the domain's certificate (new or existing) covers it
  virtual IP        an IP address not used by another domain
  certificate       parses; the key is its key; covers every virtual hostname of
                    the domain; not expired. Expiring within 30 days: allowed,
                    with a warning. From files (certbot's deploy hook): every
                    domain one of whose virtual hostnames it names, all checked
                    before any is written.
  response headers  zimbraReverseProxyResponseHeaders (global or per domain):
                    each 'Name: value' a token name, no CR/LF/NUL, bounded, no
                    framing header, no name twice; the CSP attribute one
                    Content-Security-Policy (carbotui/protocols/webheaders.py).

Validation functions are pure (no LDAP) and raise AdminError with a sentence
an admin can act on. Workers pick changes up from LDAP without a restart
(carbotui/proxy/live.py) and report what they run; see fleet.config_applied.
"""
from __future__ import annotations

import asyncio
import ipaddress
import re
from dataclasses import dataclass, field
from pathlib import Path

import ldap3

from carbotui.core import certs
from carbotui.protocols import webheaders
from carbotui.backends.directory import Directory
from carbotui.backends.memcache import Memcache
from carbotui.services.routes import flush_keys
from carbotui.admin.node import EXPIRY_WARNING_DAYS

MAIL_MODES = ("https", "redirect")
MAIL_MODE_ATTR = "zimbraReverseProxyMailMode"
VHOST_ATTR = "zimbraVirtualHostname"
VIP_ATTR = "zimbraVirtualIPAddress"
CERT_ATTR, KEY_ATTR = "zimbraSSLCertificate", "zimbraSSLPrivateKey"
HEADERS_ATTR, CSP_ATTR = webheaders.HEADERS_ATTR, webheaders.CSP_ATTR

_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")


class AdminError(ValueError):
    """A change was refused; the message says why and what to do instead."""


# --- pure validation -------------------------------------------------------------------------

def validate_mail_mode(mode: str) -> str:
    mode = mode.strip().lower()
    if mode not in MAIL_MODES:
        raise AdminError(f"mail mode must be one of {', '.join(MAIL_MODES)}, not {mode!r}")
    return mode


def validate_fqdn(name: str) -> str:
    """A fully qualified host name (RFC 1123 labels, two or more, no wildcard), lowercased."""
    fqdn = name.strip().lower().rstrip(".")
    if not fqdn:
        raise AdminError("a virtual hostname is required")
    if len(fqdn) > 253:
        raise AdminError(f"{fqdn[:40]}…: a host name is at most 253 characters")
    labels = fqdn.split(".")
    if len(labels) < 2:
        raise AdminError(f"{fqdn}: not fully qualified (expected a name like mail.example.com)")
    for label in labels:
        if not label:
            raise AdminError(f"{fqdn}: empty label (two dots in a row)")
        if len(label) > 63:
            raise AdminError(f"{fqdn}: label {label[:20]}… is longer than 63 characters")
        if not _LABEL.match(label):
            raise AdminError(f"{fqdn}: label {label!r} may only hold letters, digits and inner "
                             f"hyphens")
    if labels[-1].isdigit():
        raise AdminError(f"{fqdn}: looks like an IP address; a virtual hostname is a DNS name")
    return fqdn


def validate_ip(text: str) -> str:
    try:
        return str(ipaddress.ip_address(text.strip()))
    except ValueError:
        raise AdminError(f"{text.strip()!r} is not an IPv4 or IPv6 address") from None


def check_vhost_free(fqdn: str, domain: str, domains) -> None:
    """Refuse a name any domain (this one included) already has."""
    for d in domains:
        if fqdn in d.virtual_hostnames:
            where = "this domain" if d.name == domain else f"domain {d.name}"
            raise AdminError(f"{fqdn} is already a virtual hostname of {where}")


def check_vip_free(ip: str, domain: str, domains) -> None:
    for d in domains:
        if d.name != domain and ip in d.virtual_ips:
            raise AdminError(f"{ip} is already the virtual IP of domain {d.name}; a POP/IMAP "
                             f"client reaching it could not tell the domains apart")


@dataclass(frozen=True)
class CertCheck:
    """A certificate/key pair that passed the checks, with what to tell the admin."""
    cert_pem: str
    key_pem: str
    subject: str
    names: tuple[str, ...]
    days_left: int
    warnings: tuple[str, ...] = ()


def check_certificate(cert_pem: str | bytes, key_pem: str | bytes,
                      hostnames: list[str] | tuple[str, ...]) -> CertCheck:
    """Key matches, covers every hostname, not expired; warns when expiring soon."""
    try:
        cert = certs.load_cert(cert_pem)
    except ValueError as exc:
        raise AdminError(f"the certificate is not a PEM X.509 certificate ({exc})") from None
    try:
        key = certs.load_key(key_pem)
    except (ValueError, TypeError) as exc:
        raise AdminError(f"the private key is not an unencrypted PEM key ({exc})") from None
    if not certs.check_pair(cert, key):
        raise AdminError("the private key does not belong to the certificate")
    missing = [h for h in hostnames if not certs.covers(cert, h)]
    if missing:
        names = ", ".join(certs.san_names(cert)) or "no subjectAltName"
        raise AdminError(f"the certificate does not cover {', '.join(missing)} "
                         f"(it names: {names})")
    left = certs.expires_in(cert)
    if left.total_seconds() <= 0:
        raise AdminError(f"the certificate expired on {cert.not_valid_after_utc:%Y-%m-%d}")
    warnings = []
    if left.days < EXPIRY_WARNING_DAYS:
        warnings.append(f"the certificate expires in {left.days} days "
                        f"({cert.not_valid_after_utc:%Y-%m-%d}); renew it soon")
    as_text = (lambda v: v.decode() if isinstance(v, bytes) else v)
    return CertCheck(cert_pem=as_text(cert_pem), key_pem=as_text(key_pem),
                     subject=cert.subject.rfc4514_string(), names=tuple(certs.san_names(cert)),
                     days_left=left.days, warnings=tuple(warnings))


def generate_certificate(ca_dir: str | Path, hostnames: list[str], days: int = 825
                         ) -> tuple[str, str]:
    """A leaf for `hostnames` signed by the node's CA (ca.crt/ca.key in `ca_dir`)."""
    ca_dir = Path(ca_dir)
    try:
        ca_cert, ca_key = certs.read_pair(ca_dir / "ca.crt", ca_dir / "ca.key")
    except OSError as exc:
        raise AdminError(f"cannot read the CA in {ca_dir} ({exc.strerror}); "
                         f"import a certificate instead") from None
    cert, key = certs.issue(ca_cert, ca_key, list(hostnames), days=days)
    return certs.cert_to_pem(cert).decode(), certs.key_to_pem(key).decode()


# --- changes written to LDAP -------------------------------------------------------------------

@dataclass(frozen=True)
class Result:
    message: str
    warnings: tuple[str, ...] = field(default=())

    def __str__(self) -> str:
        return "; ".join((self.message, *self.warnings))


class Admin:
    """Validated writes. `directory` is a carbotui.backends.directory.Directory (or the same API)."""

    def __init__(self, directory, *, ca_dir: str | Path | None = None):
        self.directory = directory
        self.ca_dir = Path(ca_dir) if ca_dir else None

    def _domain(self, name: str, domains=None):
        """The domain called ``name``, among ``domains`` (default: the directory's)."""
        name = name.strip().lower()
        for d in self.directory.domains() if domains is None else domains:
            if d.name == name:
                return d
        raise AdminError(f"domain {name} not found")

    def _domain_dn(self, name: str) -> str:
        return self._dn("zimbraDomain", "zimbraDomainName", name, "domain")

    def _dn(self, object_class: str, attr: str, value: str, what: str) -> str:
        dn = self.directory.entry_dn(object_class, attr, value)
        if not dn:
            raise AdminError(f"{what} {value} not found")
        return dn

    # mail mode ------------------------------------------------------------
    def set_mail_mode(self, server: str, mode: str) -> Result:
        mode = validate_mail_mode(mode)
        server = server.strip().lower()
        dn = self._dn("zimbraServer", "zimbraServiceHostname", server, "server")
        self.directory.modify(dn, {MAIL_MODE_ATTR: [(ldap3.MODIFY_REPLACE, [mode])]})
        return Result(f"{server}: mail mode is now {mode}")

    # virtual hostnames ----------------------------------------------------
    def plan_vhost(self, domain: str, fqdn: str, *, cert_pem: str | None = None,
                   key_pem: str | None = None, generate: bool = False
                   ) -> tuple[str, str, CertCheck | None]:
        """Validate adding `fqdn` to `domain`; returns (domain, fqdn, new cert or None).

        Without a new certificate the domain's current one must cover the name."""
        fqdn = validate_fqdn(fqdn)
        domains = self.directory.domains()
        d = self._domain(domain, domains)
        check_vhost_free(fqdn, d.name, domains)
        hostnames = [*d.virtual_hostnames, fqdn]
        if generate:
            if self.ca_dir is None:
                raise AdminError("no CA is configured to generate a certificate; import one")
            cert_pem, key_pem = generate_certificate(self.ca_dir, hostnames)
        if cert_pem or key_pem:
            if not (cert_pem and key_pem):
                raise AdminError("a certificate needs its private key (and the other way round)")
            return d.name, fqdn, check_certificate(cert_pem, key_pem, hostnames)
        if not d.certificate_pem:
            raise AdminError(f"domain {d.name} has no certificate for {fqdn}: generate one or "
                             f"import a certificate and key that cover it")
        try:
            check_certificate(d.certificate_pem, d.private_key_pem, [fqdn])
        except AdminError as exc:
            raise AdminError(f"the current certificate of {d.name} cannot serve {fqdn} ({exc}); "
                             f"generate or import one that covers it") from None
        return d.name, fqdn, None

    def add_vhost(self, domain: str, fqdn: str, *, cert_pem: str | None = None,
                  key_pem: str | None = None, generate: bool = False) -> Result:
        name, fqdn, cert = self.plan_vhost(domain, fqdn, cert_pem=cert_pem, key_pem=key_pem,
                                           generate=generate)
        changes = {VHOST_ATTR: [(ldap3.MODIFY_ADD, [fqdn])]}
        warnings: tuple[str, ...] = ()
        if cert is not None:
            changes[CERT_ATTR] = [(ldap3.MODIFY_REPLACE, [cert.cert_pem])]
            changes[KEY_ATTR] = [(ldap3.MODIFY_REPLACE, [cert.key_pem])]
            warnings = cert.warnings
        dn = self._domain_dn(name)
        self.directory.modify(dn, changes)
        how = " with a new certificate" if cert else ""
        return Result(f"{name}: added virtual hostname {fqdn}{how}", warnings)

    def remove_vhost(self, domain: str, fqdn: str) -> Result:
        fqdn = fqdn.strip().lower().rstrip(".")
        d = self._domain(domain)
        if fqdn not in d.virtual_hostnames:
            raise AdminError(f"{fqdn} is not a virtual hostname of {d.name}")
        dn = self._domain_dn(d.name)
        self.directory.modify(dn, {VHOST_ATTR: [(ldap3.MODIFY_DELETE, [fqdn])]})
        return Result(f"{d.name}: removed virtual hostname {fqdn}")

    # certificate from files (certbot's deploy hook) -----------------------------
    def install_certificate(self, names, cert_pem: str, key_pem: str) -> Result:
        """The certificate (chain) and key for every domain one of whose virtual
        hostnames is in ``names`` (certbot's RENEWED_DOMAINS); each domain's whole set
        of virtual hostnames must be covered. Every domain is checked before any is
        written: a refusal writes nothing."""
        wanted = {n.strip().lower().rstrip(".") for n in names if n.strip()}
        if not wanted:
            raise AdminError("no names given: which virtual hostnames is the certificate for?")
        domains = [d for d in self.directory.domains()
                   if wanted & set(d.virtual_hostnames)]
        if not domains:
            raise AdminError(f"none of {', '.join(sorted(wanted))} is a virtual hostname of a "
                             f"domain; add it first (+zimbraVirtualHostName)")
        checks = []
        for d in domains:
            try:
                checks.append((d, check_certificate(cert_pem, key_pem, d.virtual_hostnames)))
            except AdminError as exc:
                raise AdminError(f"domain {d.name}: {exc}; nothing was written") from None
        for d, cert in checks:
            self.directory.modify(self._domain_dn(d.name), {
                CERT_ATTR: [(ldap3.MODIFY_REPLACE, [cert.cert_pem])],
                KEY_ATTR: [(ldap3.MODIFY_REPLACE, [cert.key_pem])]})
        cert = checks[0][1]
        done = ", ".join(d.name for d, _ in checks)
        others = sorted(wanted - {h for d, _ in checks for h in d.virtual_hostnames})
        note = f" ({', '.join(others)}: no domain's virtual hostname)" if others else ""
        return Result(f"{done}: installed the certificate for {', '.join(cert.names)} "
                      f"({cert.days_left} days left){note}", cert.warnings)

    # response headers ---------------------------------------------------------
    def _headers_dn(self, domain: str | None) -> tuple[str, str]:
        if domain is None:
            return self._dn("zimbraGlobalConfig", "cn", "config", "global config"), \
                "global config"
        d = self._domain(domain)
        return self._domain_dn(d.name), f"domain {d.name}"

    def set_response_headers(self, domain: str | None, op: str, values) -> Result:
        """zimbraReverseProxyResponseHeaders of the global config (``domain`` None) or
        of a domain: ``op`` "=" replaces the list ([] removes it: back to the global set,
        or Carbonio's default), "+" adds values, "-" removes them. "+" and "-" start from
        the list in force when the attribute is unset (a domain: the global list; the
        global config: Carbonio's default set), so adding one header keeps the others.
        The list that would result is checked whole before anything is written."""
        values = [v for v in values if v != ""]
        dn, where = self._headers_dn(domain)
        attrs = self.directory.response_headers()
        inherited = list(attrs.values or webheaders.DEFAULT_HEADERS)
        if domain is None:
            current = inherited
        else:
            current = list(attrs.domains.get(domain.strip().lower(), ((), ""))[0]) or inherited
        if op == "=":
            after = values
        elif op == "+":
            after = current + values
        elif op == "-":
            missing = [v for v in values if v not in current]
            if missing:
                raise AdminError(f"{where} has no {HEADERS_ATTR} value {missing[0]!r}")
            after = [v for v in current if v not in values]
        else:
            raise AdminError(f"unknown change {op!r}")
        try:
            webheaders.check_list(after)
        except webheaders.BadHeader as exc:
            raise AdminError(f"{HEADERS_ATTR}: {exc}") from None
        self.directory.modify(dn, {HEADERS_ATTR: [(ldap3.MODIFY_REPLACE, after)]})
        return Result(f"{where}: {len(after)} response header(s) set" if after else
                      f"{where}: {HEADERS_ATTR} removed ("
                      f"{'Carbonio default set' if domain is None else 'the global set'})")

    def set_csp_header(self, domain: str | None, value: str) -> Result:
        """carbonioReverseProxyResponseCSPHeader ("" removes it)."""
        dn, where = self._headers_dn(domain)
        if value:
            try:
                webheaders.check_list([value], csp=True)
            except webheaders.BadHeader as exc:
                raise AdminError(f"{CSP_ATTR}: {exc}") from None
        self.directory.modify(dn, {CSP_ATTR: [(ldap3.MODIFY_REPLACE, [value] if value else [])]})
        return Result(f"{where}: {CSP_ATTR} {'set' if value else 'removed'}")

    # virtual IP -----------------------------------------------------------
    def set_vip(self, domain: str, ip: str) -> Result:
        ip = validate_ip(ip)
        domains = self.directory.domains()
        d = self._domain(domain, domains)
        check_vip_free(ip, d.name, domains)
        dn = self._domain_dn(d.name)
        self.directory.modify(dn, {VIP_ATTR: [(ldap3.MODIFY_REPLACE, [ip])]})
        return Result(f"{d.name}: virtual IP is now {ip}")


def flush_routes(settings, directory: Directory, name: str) -> tuple[str, int, int]:
    """Delete every cached route of one account (like zmproxypurge -a).

    Returns (account, entries deleted, keys checked). Used by `prov flushCache` and the dashboard."""
    acct = directory.find_account(name)
    if acct is None:
        raise AdminError(f"account {name} not found")
    ips = {e.host for eps in settings.listen.values() for e in eps}
    for d in directory.domains():
        ips.update(d.virtual_ips)
    keys = flush_keys(acct, sorted(ips))
    if not settings.memcached_servers:
        raise AdminError("no memcached servers are configured")

    async def purge() -> int:
        cache = Memcache(settings.memcached_servers, timeout=settings.memcached_timeout,
                         reconnect=settings.memcached_reconnect)
        try:
            deleted = 0
            for key in keys:
                deleted += await cache.delete(key)
            if not cache.available:
                raise AdminError("memcached is not reachable; nothing was flushed")
            return deleted
        finally:
            await cache.close()

    return acct.name, asyncio.run(purge()), len(keys)
