"""The directory in LDAP (ldap3): accounts, domains, servers, global config.

Attribute names are Carbonio/Zimbra's, so the same code can read an existing
Carbonio directory. Calls block; the workers run them in a thread
(``asyncio.to_thread``) so the event loop never waits on LDAP.
"""
from __future__ import annotations

import logging
import math
import socket
import ssl
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import ldap3
from ldap3.core.exceptions import LDAPBindError, LDAPException, LDAPStartTLSError
from ldap3.utils.conv import escape_filter_chars

from carbotui.core.settings import ConfigError, Settings

log = logging.getLogger("carbotui.backends.directory")

# Which server attribute holds the port for each upstream protocol, like
# zimbraReverseProxy{Imap,ImapSSL,...}PortAttribute in Carbonio.
PORT_ATTRIBUTES = {
    "imap": "zimbraImapBindPort",
    "imapssl": "zimbraImapSSLBindPort",
    "pop3": "zimbraPop3BindPort",
    "pop3ssl": "zimbraPop3SSLBindPort",
    "http": "zimbraMailPort",
    "httpssl": "zimbraMailSSLPort",
    "admin": "zimbraAdminPort",
}
PORT_DEFAULTS = {"imap": 7143, "imapssl": 7993, "pop3": 7110, "pop3ssl": 7995,
                 "http": 8080, "httpssl": 8443, "admin": 7071}

ACCOUNT_ATTRS = ["zimbraMailDeliveryAddress", "zimbraMailAlias", "zimbraId",
                 "zimbraMailHost", "zimbraAccountStatus", "uid"]
DOMAIN_ATTRS = ["zimbraDomainName", "zimbraId", "zimbraVirtualHostname",
                "zimbraVirtualIPAddress", "zimbraSSLCertificate", "zimbraSSLPrivateKey"]
SERVER_ATTRS = ["cn", "zimbraServiceHostname", "zimbraServiceEnabled",
                "zimbraReverseProxyLookupTarget", "zimbraReverseProxyMailMode",
                *PORT_ATTRIBUTES.values()]


RESPONSE_HEADER_ATTRS = ["zimbraReverseProxyResponseHeaders",
                         "carbonioReverseProxyResponseCSPHeader"]


@dataclass(frozen=True)
class ResponseHeaderAttrs:
    """The response-header attributes as LDAP holds them (checked by their readers:
    carbotui/protocols/webheaders.py): the global config's, and per domain name
    (values, csp) for the domains that set either."""
    values: tuple[str, ...] = ()
    csp: str = ""
    domains: dict[str, tuple[tuple[str, ...], str]] = field(default_factory=dict)


class DirectoryUnavailable(RuntimeError):
    """LDAP cannot be reached or answered with an error: a temporary failure."""


@dataclass(frozen=True)
class Account:
    name: str                    # canonical address (zimbraMailDeliveryAddress)
    zimbra_id: str
    mail_host: str
    aliases: tuple[str, ...] = ()
    status: str = "active"


@dataclass(frozen=True)
class MailServer:
    hostname: str
    address: str
    ports: dict[str, int] = field(default_factory=dict)
    lookup_target: bool = False
    services: tuple[str, ...] = ()
    mail_mode: str = ""

    @property
    def short_name(self) -> str:
        return self.hostname.split(".", 1)[0]

    def endpoint(self, proto: str) -> str:
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"{host}:{self.ports[proto]}"


@dataclass(frozen=True)
class Domain:
    name: str
    zimbra_id: str = ""
    virtual_hostnames: tuple[str, ...] = ()
    virtual_ips: tuple[str, ...] = ()
    certificate_pem: str = ""
    private_key_pem: str = field(default="", repr=False)


def _first(entry: dict, attr: str, default=""):
    value = entry.get(attr)
    if isinstance(value, list):
        return value[0] if value else default
    return default if value is None else value


def _all(entry: dict, attr: str) -> tuple:
    value = entry.get(attr) or []
    return tuple(value) if isinstance(value, list) else (value,)


class _VerifiedTls(ldap3.Tls):
    """ldaps:// and StartTLS with the server's certificate checked by OpenSSL: the chain
    against ``ca_file`` (or the system CAs) and the name or IP address of the url's host.
    ldap3's own Tls defaults to CERT_NONE, turns ``check_hostname`` off and matches names
    itself (with a backport that refuses IP addresses once ssl.match_hostname is gone)."""

    def __init__(self, ca_file: Path | None, host: str):
        super().__init__(validate=ssl.CERT_REQUIRED,
                         ca_certs_file=str(ca_file) if ca_file else None, sni=host)
        self.context = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
        self.context.minimum_version = ssl.TLSVersion.TLSv1_2

    def wrap_socket(self, connection, do_handshake=False):
        connection.socket = self.context.wrap_socket(
            connection.socket, server_side=False, do_handshake_on_connect=do_handshake,
            server_hostname=self.sni)


def _ldap_key(s: Settings) -> tuple:
    """What a connection depends on: a reload that changes any of it reconnects."""
    return (s.ldap_urls, s.ldap_bind_dn, s.ldap_password_file, s.ldap_lookup_bind_dn,
            s.ldap_lookup_password_file, s.ldap_start_tls, s.ldap_ca_file, s.ldap_timeout)


def _whole_seconds(timeout: float) -> int:
    # ldap3 packs receive_timeout into SO_RCVTIMEO as whole seconds.
    return max(1, math.ceil(timeout))


def uses_tls(settings: Settings, url: str) -> bool:
    """ldaps://, or ldap:// with StartTLS: the server's certificate is verified."""
    scheme = url.split(":", 1)[0].lower()
    return scheme == "ldaps" or (scheme == "ldap" and settings.ldap_start_tls)


def make_server(settings: Settings, url: str) -> ldap3.Server:
    """One server of ``ldap.url``, with its own verified TLS (the url's host is the name
    its certificate must carry) and a connect timeout of ``ldap.timeout``."""
    tls = None
    if uses_tls(settings, url):
        tls = _VerifiedTls(settings.ldap_ca_file, urlsplit(url).hostname or "")
    return ldap3.Server(url, connect_timeout=_whole_seconds(settings.ldap_timeout),
                        get_info=ldap3.NONE, tls=tls)


def _ok(result) -> bool:
    """A SAFE_SYNC answer is (status, result, response, request); others a bool."""
    return bool(result[0] if isinstance(result, tuple) else result)


def connect(settings: Settings, server: ldap3.Server, user: str, password, *,
            read_only: bool) -> ldap3.Connection:
    """Open, StartTLS when configured (before the bind), bind; every step bounded by
    ``ldap.timeout``. Raises LDAPException (an OSError/ssl.SSLError subclass too when
    the socket or TLS failed) or ConfigError (a password file that cannot be read).
    A step that fails closes the socket at once (ldap3's auto_bind leaves it to the
    garbage collector)."""
    timeout = _whole_seconds(settings.ldap_timeout)
    start_tls = settings.ldap_start_tls and not server.ssl and not server.ipc
    conn = ldap3.Connection(
        server, user=user or None, password=password() if user else None,
        client_strategy=ldap3.SAFE_SYNC, auto_bind=ldap3.AUTO_BIND_NONE,
        receive_timeout=timeout, raise_exceptions=True, read_only=read_only)
    try:
        conn.open(read_server_info=False)
        if start_tls and not _ok(conn.start_tls(read_server_info=False)):
            raise LDAPStartTLSError(f"StartTLS refused: {conn.result}")
        if not _ok(conn.bind(read_server_info=False)):
            raise LDAPBindError(f"bind refused: {conn.result}")
    except BaseException:
        try:
            conn.unbind()                      # closes the socket
        except Exception:  # noqa: BLE001 - already broken; the first error is the one
            pass
        raise
    return conn


class Directory:
    """Lookups bind as ``ldap.lookup_bind_dn`` (read-only, what the workers need) when it
    is set, else as ``ldap.bind_dn``; either way the connection refuses writes. Changes
    (``modify``: carbotui prov, the dashboard) open a second connection with the admin
    bind, on first use only, so a worker never binds as the admin.

    Several ``ldap.url`` servers fail over in order (Zimbra's ldap_url replicas): a
    connection goes to the first server not marked down, and stays there until it
    breaks. A server whose connect, TLS handshake or bind fails is marked down for
    ``RETRY_AFTER`` seconds, so while the first replica is dead each new connection
    goes straight to the next one instead of waiting for the dead one's timeout; when
    every server is marked down they are all tried again, in order. A connection
    attempt costs at most ``ldap.timeout`` per server (connect, then each answer).
    (ldap3's ServerPool is not used: its ``active=True`` loops for ever with a 10 s
    sleep between rounds when no server answers, and it judges a server by a bare TCP
    connect, so a replica that accepts connections but fails TLS or the bind would
    never be failed over.)"""

    QUALIFY_TTL = 5.0                # seconds a local address's login domain is reused
    RETRY_AFTER = 30.0               # seconds a failed server is skipped

    def __init__(self, settings: Settings):
        self.settings = settings
        self._conn: ldap3.Connection | None = None       # lookups
        self._admin: ldap3.Connection | None = None      # changes
        self._conn_key: tuple | None = None
        self._servers: list[tuple[str, ldap3.Server]] = []   # (url as configured, server)
        self._down_until: dict[str, float] = {}          # url -> monotonic time
        self.in_use = ""                                 # url of the last server connected
        self._lock = threading.Lock()
        self._login_domains: dict[str, tuple[float, str]] = {}   # local ip -> (until, domain)
        self.searches = 0            # every LDAP search, for stats and tests

    # -- connection -------------------------------------------------------
    def _open(self, user: str, password, *, read_only: bool) -> ldap3.Connection:
        """A bound connection to the first server that takes it (see the class doc)."""
        now = time.monotonic()
        up = [s for s in self._servers if self._down_until.get(s[0], 0.0) <= now]
        down = [s for s in self._servers if s not in up]
        failures = []
        for url, server in up or down:
            try:
                conn = connect(self.settings, server, user, password, read_only=read_only)
            except ConfigError:
                raise                                   # a password file: not the server's
            except Exception as exc:  # noqa: BLE001 - ldap3 lets a garbled answer out as
                # KeyError/IndexError; whatever the server did, it is the next one's turn
                if url not in self._down_until and len(self._servers) > 1:
                    log.warning("LDAP %s failed (%s); the next server is tried, this one "
                                "again in %gs", url, exc, self.RETRY_AFTER)
                self._down_until[url] = time.monotonic() + self.RETRY_AFTER
                failures.append(f"{url}: {exc}")
                # ldap3's Server remembers a failed address and refuses it ("invalid
                # server address") for RESET_AVAILABILITY_TIMEOUT (5 s) more: a lone slapd
                # back after a restart would stay refused. Skipping is decided above.
                self._servers = [(u, make_server(self.settings, u) if u == url else s)
                                 for u, s in self._servers]
                continue
            self._down_until.pop(url, None)
            if url != self.in_use:
                if self.in_use or len(self._servers) > 1:
                    log.warning("LDAP: now using %s", url)
                self.in_use = url
            return conn
        raise DirectoryUnavailable("LDAP " + "; ".join(failures))

    def _current(self) -> None:
        key = _ldap_key(self.settings)
        if key != self._conn_key:
            self._drop()
            self._conn_key = key
            self._servers = [(url, make_server(self.settings, url))
                             for url in self.settings.ldap_urls]
            self._down_until.clear()

    def _connection(self) -> ldap3.Connection:
        self._current()
        if self._conn is not None and not self._conn.closed:
            return self._conn
        s = self.settings
        if s.ldap_lookup_bind_dn:
            self._conn = self._open(s.ldap_lookup_bind_dn, s.ldap_lookup_password, read_only=True)
        else:
            self._conn = self._open(s.ldap_bind_dn, s.ldap_password, read_only=True)
        return self._conn

    def _admin_connection(self) -> ldap3.Connection:
        self._current()
        if self._admin is None or self._admin.closed:
            self._admin = self._open(self.settings.ldap_bind_dn, self.settings.ldap_password,
                                     read_only=False)
        return self._admin

    def _search(self, filt: str, attrs: list[str], base: str | None = None) -> list[dict]:
        """One subtree search; returns entries as {attr: [values]} plus 'dn'."""
        with self._lock:
            self.searches += 1
            for attempt in (1, 2):
                try:
                    conn = self._connection()
                    _, _, response, _ = conn.search(base or self.settings.ldap_base, filt,
                                                    ldap3.SUBTREE, attributes=attrs)
                    break
                except DirectoryUnavailable:
                    self._drop()                 # no server took a new connection
                    raise
                except (LDAPException, OSError) as exc:
                    # A dropped connection is re-opened once; a second failure is real.
                    self._drop()
                    if attempt == 2:
                        raise DirectoryUnavailable(f"LDAP {self.in_use}: {exc}") from None
        out = []
        for item in response:
            if item.get("type") != "searchResEntry":
                continue
            entry = {k: v for k, v in item["attributes"].items()}
            entry["dn"] = item["dn"]
            out.append(entry)
        return out

    def _drop(self) -> None:
        for conn in (self._conn, self._admin):
            if conn is not None:
                try:
                    conn.unbind()
                except Exception:  # noqa: BLE001 - already broken; nothing to save
                    pass
        self._conn = self._admin = None

    def close(self) -> None:
        with self._lock:
            self._drop()

    # -- reads ------------------------------------------------------------
    def default_domain(self) -> str:
        entries = self._search("(objectClass=zimbraGlobalConfig)", ["zimbraDefaultDomainName"])
        for e in entries:
            name = _first(e, "zimbraDefaultDomainName")
            if name:
                return name.lower()
        return ""

    def domain_for_ip(self, ip: str) -> str:
        filt = f"(&(objectClass=zimbraDomain)(zimbraVirtualIPAddress={escape_filter_chars(ip)}))"
        entries = self._search(filt, ["zimbraDomainName"])
        return _first(entries[0], "zimbraDomainName").lower() if entries else ""

    def qualify(self, login: str, local_ip: str) -> str:
        """A bare login gets the domain of the virtual IP the client reached,
        else the default domain (Carbonio's getQualifiedUsername)."""
        login = login.lower()
        if "@" in login:
            return login
        domain = self._login_domain(local_ip)
        return f"{login}@{domain}" if domain else login

    def _login_domain(self, local_ip: str) -> str:
        """qualify's domain for a local address, remembered QUALIFY_TTL seconds: two
        searches that do not depend on the name (review L4: random bare names cost
        three searches each). Local addresses are few; the map is bounded anyway."""
        now = time.monotonic()
        known = self._login_domains.get(local_ip)
        if known is not None and known[0] > now:
            return known[1]
        domain = self.domain_for_ip(local_ip) or self.default_domain()
        if len(self._login_domains) >= 256:
            self._login_domains.clear()
        self._login_domains[local_ip] = (now + self.QUALIFY_TTL, domain)
        return domain

    def find_account(self, address: str) -> Account | None:
        a = escape_filter_chars(address.lower())
        filt = (f"(&(objectClass=zimbraAccount)"
                f"(|(zimbraMailDeliveryAddress={a})(zimbraMailAlias={a})))")
        return self._account(filt)

    def find_account_by_id(self, zimbra_id: str) -> Account | None:
        return self._account(
            f"(&(objectClass=zimbraAccount)(zimbraId={escape_filter_chars(zimbra_id)}))")

    def _account(self, filt: str) -> Account | None:
        entries = self._search(filt, ACCOUNT_ATTRS)
        if not entries:
            return None
        e = entries[0]
        return Account(
            name=_first(e, "zimbraMailDeliveryAddress").lower(),
            zimbra_id=_first(e, "zimbraId"),
            mail_host=_first(e, "zimbraMailHost").lower(),
            aliases=tuple(x.lower() for x in _all(e, "zimbraMailAlias")),
            status=_first(e, "zimbraAccountStatus", "active"),
        )

    def servers(self) -> dict[str, MailServer]:
        """Every server entry, keyed by hostname, with its resolved address."""
        out = {}
        for e in self._search("(objectClass=zimbraServer)", SERVER_ATTRS):
            hostname = (_first(e, "zimbraServiceHostname") or _first(e, "cn")).lower()
            ports = {}
            for proto, attr in PORT_ATTRIBUTES.items():
                value = _first(e, attr, None)
                ports[proto] = int(value) if value not in (None, "") else PORT_DEFAULTS[proto]
            lookup = _first(e, "zimbraReverseProxyLookupTarget", False)
            services = tuple(_all(e, "zimbraServiceEnabled"))
            # Only mailbox servers are ever proxied to; don't ask DNS for the rest.
            mailbox = "mailbox" in services or not services
            out[hostname] = MailServer(
                hostname=hostname,
                address=self.resolve(hostname) if mailbox else "",
                ports=ports,
                lookup_target=lookup is True or str(lookup).upper() == "TRUE",
                services=services,
                mail_mode=_first(e, "zimbraReverseProxyMailMode"),
            )
        return out

    def domains(self) -> list[Domain]:
        out = []
        for e in self._search("(objectClass=zimbraDomain)", DOMAIN_ATTRS):
            out.append(Domain(
                name=_first(e, "zimbraDomainName").lower(),
                zimbra_id=_first(e, "zimbraId"),
                virtual_hostnames=tuple(x.lower() for x in _all(e, "zimbraVirtualHostname")),
                virtual_ips=tuple(_all(e, "zimbraVirtualIPAddress")),
                certificate_pem=_first(e, "zimbraSSLCertificate"),
                private_key_pem=_first(e, "zimbraSSLPrivateKey"),
            ))
        return out

    def response_headers(self) -> ResponseHeaderAttrs:
        """zimbraReverseProxyResponseHeaders and carbonioReverseProxyResponseCSPHeader of
        the global config and of every domain that sets them, in one search."""
        filt = "(|(objectClass=zimbraGlobalConfig)(objectClass=zimbraDomain))"
        attrs = ["objectClass", "zimbraDomainName", *RESPONSE_HEADER_ATTRS]
        global_values: tuple = ()
        global_csp = ""
        domains = {}
        for e in self._search(filt, attrs):
            values = tuple(_all(e, RESPONSE_HEADER_ATTRS[0]))
            csp = _first(e, RESPONSE_HEADER_ATTRS[1])
            if "zimbraglobalconfig" in {c.lower() for c in _all(e, "objectClass")}:
                global_values, global_csp = values, csp
            elif values or csp:
                domains[_first(e, "zimbraDomainName").lower()] = (values, csp)
        return ResponseHeaderAttrs(global_values, global_csp, domains)

    # -- admin writes (validated by the caller, see carbotui/admin/changes.py) --------
    def entry_dn(self, object_class: str, attr: str, value: str) -> str:
        filt = f"(&(objectClass={object_class})({attr}={escape_filter_chars(value)}))"
        entries = self._search(filt, ["objectClass"])
        return entries[0]["dn"] if entries else ""

    def modify(self, dn: str, changes: dict[str, list]) -> None:
        """ldap3 modify: {attr: [(MODIFY_REPLACE|MODIFY_ADD|MODIFY_DELETE, [values])]}."""
        with self._lock:
            try:
                self._admin_connection().modify(dn, changes)
            except (LDAPException, OSError) as exc:
                self._drop()
                raise DirectoryUnavailable(f"LDAP modify of {dn} failed: {exc}") from None

    def resolve(self, hostname: str) -> str:
        """The [hosts] table first (like /etc/hosts), then DNS; '' if unknown."""
        if hostname in self.settings.hosts:
            return self.settings.hosts[hostname]
        try:
            infos = socket.getaddrinfo(hostname, None, proto=socket.IPPROTO_TCP)
        except OSError:
            return ""
        # IPv4 first, as Carbonio does in "both" IP mode.
        infos.sort(key=lambda i: i[0] != socket.AF_INET)
        return infos[0][4][0] if infos else ""
