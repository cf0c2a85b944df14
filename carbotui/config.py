"""Node-local settings: one TOML file, like Carbonio's localconfig.

Loaded once at start and again on SIGHUP. Every value is checked here, so a
bad file fails with the key and the reason instead of a traceback later.
Cluster-wide settings (accounts, domains, servers, mail mode) live in LDAP.
"""
from __future__ import annotations

import ipaddress
import os
import socket
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from workers.events import MailLimits

MAIL_PROTOCOLS = ("imap", "imaps", "pop3", "pop3s")
WEB_PROTOCOLS = ("http", "https", "admin")
BALANCE_METHODS = ("round-robin", "least-conn", "ip-hash")
# The seed's public ports, on every IPv4 and IPv6 address, when [listen] omits a kind.
DEFAULT_PORTS = {"imap": 143, "imaps": 993, "pop3": 110, "pop3s": 995,
                 "http": 80, "https": 443, "admin": 6071}


class ConfigError(ValueError):
    """A setting is missing or wrong; the message names the key."""


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int
    proxy_protocol: bool = False      # expects a PROXY v1/v2 header from a trusted peer

    def __str__(self) -> str:
        text = f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"
        return text + (" proxy_protocol" if self.proxy_protocol else "")


def parse_endpoint(text: str, key: str) -> Endpoint:
    """'127.0.0.1:143', '[::1]:143' or '*:143' (every IPv4 address), optionally
    followed by ' proxy_protocol' as in nginx's listen directive."""
    if not isinstance(text, str) or ":" not in text:
        raise ConfigError(f"{key}: expected 'address:port', got {text!r}")
    text, *flags = text.split()
    if any(f != "proxy_protocol" for f in flags):
        raise ConfigError(f"{key}: unknown listener option in {' '.join(flags)!r} "
                          "(only proxy_protocol)")
    host, _, port_text = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if host == "*":
        host = "0.0.0.0"
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if host != "localhost":
            raise ConfigError(f"{key}: {host!r} is not an IP address") from None
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ConfigError(f"{key}: port {port_text!r} is not in 1..65535")
    return Endpoint(host, int(port_text), proxy_protocol=bool(flags))


@dataclass(frozen=True)
class MailSettings:
    limits: MailLimits = MailLimits()
    auth_wait: float = 10.0
    preauth_timeout: float = 60.0
    imap_idle_timeout: float = 1800.0
    pop3_idle_timeout: float = 600.0
    connect_timeout: float = 5.0
    connect_retries: int = 3
    login_timeout: float = 30.0
    max_connections: int = 10000
    max_connections_per_ip: int = 1000  # per worker, whitelist exempt; 0 = no cap
    upstream_tls: bool = False
    upstream_ca: Path | None = None     # CA bundle for verifying mailbox servers
    send_imap_id: bool = True
    send_pop3_xoip: bool = True
    drain_timeout: float = 30.0


@dataclass(frozen=True)
class WebSettings:
    balance: str = "round-robin"
    connect_timeout: float = 25.0       # zimbraReverseProxyUpstreamConnectTimeout
    read_timeout: float = 60.0          # zimbraReverseProxyUpstreamReadTimeout
    polling_timeout: float = 3600.0     # long polls and WebSockets
    header_timeout: float = 10.0        # a head must arrive within this of its first byte
    body_timeout: float = 60.0          # and a body keep moving (at most this between pieces)
    body_min_rate: int = 500            # ... and average this many bytes/s after body_timeout
    keepalive_timeout: float = 75.0     # idle client connection between requests
    send_timeout: float = 60.0          # a client that accepts nothing this long is cut
    max_connections_per_ip: int = 1000  # per worker, whitelist exempt; 0 = no cap
    login_body_limit: int = 65536       # login bodies are read whole up to this; larger: 413
    extend_forwarded_for: bool = False  # PROXY-protocol listeners: append to the balancer's XFF
    upstream_keepalive: int = 32        # idle upstream connections kept per server
    max_header_bytes: int = 16384
    health_interval: float = 2.0
    health_path: str = "/health"
    fail_timeout: float = 10.0          # a failed upstream is skipped this long
    upstream_tls: bool = False


@dataclass(frozen=True)
class Settings:
    path: Path
    node_name: str
    node_id: str                          # this node in the fleet view (default: host name)
    var_dir: Path
    listen: dict[str, tuple[Endpoint, ...]]
    tls_certificate: Path
    tls_private_key: Path
    tls_min_version: str
    tls_ciphers: str
    memcached_servers: tuple[Endpoint, ...]
    memcached_timeout: float
    memcached_ttl: int
    memcached_reconnect: float
    ldap_url: str
    ldap_bind_dn: str
    ldap_password_file: Path
    ldap_base: str
    ldap_timeout: float
    ldap_start_tls: bool                 # StartTLS on ldap:// before binding
    ldap_ca_file: Path | None            # must have signed the server's cert (None: system CAs)
    ldap_lookup_bind_dn: str             # read-only bind for lookups ("" = the admin bind_dn)
    ldap_lookup_password_file: Path | None
    hosts: dict[str, str]
    proxy_trusted: tuple = ()            # ip_network objects allowed to send PROXY headers
    proxy_timeout: float = 3.0
    proxy_drain_grace: float = 3.0       # SIGTERM: accept this long while checks fail
    mail: MailSettings = field(default_factory=MailSettings)
    web: WebSettings = field(default_factory=WebSettings)
    throttle: object = None              # carbotui.throttle.ThrottleSettings
    alerts: object = None                # carbotui.alerts.AlertSettings

    @property
    def audit_log(self) -> Path:
        return self.var_dir / "log" / "audit.log"

    @property
    def run_dir(self) -> Path:
        return self.var_dir / "run"

    def ldap_password(self) -> str:
        try:
            return self.ldap_password_file.read_text().strip()
        except OSError as exc:
            raise ConfigError(f"ldap.password_file: cannot read {self.ldap_password_file}: "
                              f"{exc.strerror}") from None

    def ldap_lookup_password(self) -> str:
        try:
            return self.ldap_lookup_password_file.read_text().strip()
        except OSError as exc:
            raise ConfigError(f"ldap.lookup_password_file: cannot read "
                              f"{self.ldap_lookup_password_file}: {exc.strerror}") from None


class _Table:
    """Typed access to one TOML table; errors name the dotted key."""

    def __init__(self, data: dict, prefix: str):
        self.data, self.prefix = data, prefix

    def key(self, name: str) -> str:
        return f"{self.prefix}.{name}" if self.prefix else name

    def get(self, name, kind, default=None, *, required=False):
        if name not in self.data:
            if required:
                raise ConfigError(f"{self.key(name)}: required setting is missing")
            return default
        value = self.data[name]
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise ConfigError(f"{self.key(name)}: expected {kind.__name__}, got {value!r}")
        return value

    def positive(self, name, kind, default):
        value = self.get(name, kind, default)
        if value <= 0:
            raise ConfigError(f"{self.key(name)}: must be greater than 0, got {value!r}")
        return value

    def choice(self, name, choices, default):
        value = self.get(name, str, default)
        if value not in choices:
            raise ConfigError(f"{self.key(name)}: must be one of {', '.join(choices)}, got {value!r}")
        return value

    def table(self, name) -> "_Table":
        return _Table(self.get(name, dict, {}), self.key(name))


# Settings that name files: made absolute against the file that set them, so an
# included base file and the including file can live in different folders.
PATH_KEYS = {("node", "var_dir"), ("tls", "certificate"), ("tls", "private_key"),
             ("ldap", "password_file"), ("ldap", "lookup_password_file"), ("ldap", "ca_file"),
             ("mail", "upstream_ca")}


def _read_toml(path: Path, seen: tuple = ()) -> dict:
    """One file, with `include = "base.toml"` merged under it (this file wins)."""
    if path in seen:
        raise ConfigError(f"{path}: include loop")
    try:
        raw = tomllib.loads(path.read_text())
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    for table, key in PATH_KEYS:
        value = raw.get(table, {}).get(key) if isinstance(raw.get(table), dict) else None
        if isinstance(value, str):
            raw[table][key] = str((path.parent / value).resolve())
    include = raw.pop("include", None)
    if include is None:
        return raw
    if not isinstance(include, str):
        raise ConfigError(f"{path}: include: expected a file name")
    merged = _read_toml((path.parent / include).resolve(), seen + (path,))
    for name, value in raw.items():
        if isinstance(value, dict) and isinstance(merged.get(name), dict):
            merged[name] = {**merged[name], **value}
        else:
            merged[name] = value
    return merged


def load(path: str | os.PathLike) -> Settings:
    path = Path(path).resolve()
    raw = _read_toml(path)
    base = path.parent
    root = _Table(raw, "")

    def rel(p: str) -> Path:
        return (base / p).resolve()

    node = root.table("node")
    listen_t = root.table("listen")
    listen = {}
    for proto in MAIL_PROTOCOLS + WEB_PROTOCOLS:
        port = DEFAULT_PORTS[proto]
        items = listen_t.get(proto, list, [f"0.0.0.0:{port}", f"[::]:{port}"])
        listen[proto] = tuple(parse_endpoint(x, listen_t.key(proto)) for x in items)

    tls = root.table("tls")
    mc = root.table("memcached")
    ldap = root.table("ldap")
    hosts_t = root.table("hosts")
    hosts = {}
    for name, addr in hosts_t.data.items():
        try:
            ipaddress.ip_address(addr)
        except (ValueError, TypeError):
            raise ConfigError(f"hosts.{name}: {addr!r} is not an IP address") from None
        hosts[name.lower()] = addr

    m = root.table("mail")
    limits = MailLimits(
        starttls=m.choice("starttls", ("only", "on", "off"), "only"),
        max_line=m.positive("max_line", int, 65536),
        max_literal=m.positive("max_literal", int, 65536),
        max_auth_failures=m.positive("max_auth_failures", int, 3),
    )
    mail = MailSettings(
        limits=limits,
        auth_wait=m.get("auth_wait", float, 10.0),
        preauth_timeout=m.positive("preauth_timeout", float, 60.0),
        imap_idle_timeout=m.positive("imap_idle_timeout", float, 1800.0),
        pop3_idle_timeout=m.positive("pop3_idle_timeout", float, 600.0),
        connect_timeout=m.positive("connect_timeout", float, 5.0),
        connect_retries=m.get("connect_retries", int, 3),
        login_timeout=m.positive("login_timeout", float, 30.0),
        max_connections=m.positive("max_connections", int, 10000),
        max_connections_per_ip=m.get("max_connections_per_ip", int, 1000),
        upstream_tls=m.get("upstream_tls", bool, False),
        upstream_ca=rel(m.get("upstream_ca", str)) if m.get("upstream_ca", str) else None,
        send_imap_id=m.get("send_imap_id", bool, True),
        send_pop3_xoip=m.get("send_pop3_xoip", bool, True),
        drain_timeout=m.positive("drain_timeout", float, 30.0),
    )
    if mail.auth_wait < 0:
        raise ConfigError("mail.auth_wait: must not be negative")

    wt = root.table("web")
    web = WebSettings(
        balance=wt.choice("balance", BALANCE_METHODS, "round-robin"),
        connect_timeout=wt.positive("connect_timeout", float, 25.0),
        read_timeout=wt.positive("read_timeout", float, 60.0),
        polling_timeout=wt.positive("polling_timeout", float, 3600.0),
        header_timeout=wt.positive("header_timeout", float, 10.0),
        body_timeout=wt.positive("body_timeout", float, 60.0),
        body_min_rate=wt.get("body_min_rate", int, 500),
        keepalive_timeout=wt.positive("keepalive_timeout", float, 75.0),
        send_timeout=wt.positive("send_timeout", float, 60.0),
        max_connections_per_ip=wt.get("max_connections_per_ip", int, 1000),
        login_body_limit=wt.positive("login_body_limit", int, 65536),
        extend_forwarded_for=wt.get("extend_forwarded_for", bool, False),
        upstream_keepalive=wt.get("upstream_keepalive", int, 32),
        max_header_bytes=wt.positive("max_header_bytes", int, 16384),
        health_interval=wt.positive("health_interval", float, 2.0),
        health_path=wt.get("health_path", str, "/health"),
        fail_timeout=wt.positive("fail_timeout", float, 10.0),
        upstream_tls=wt.get("upstream_tls", bool, False),
    )
    for name in ("body_min_rate", "max_connections_per_ip"):
        if getattr(web, name) < 0:
            raise ConfigError(f"web.{name}: must not be negative (0 = off)")

    pp = root.table("proxy_protocol")
    trusted = []
    for cidr in pp.get("trusted", list, []):
        try:
            trusted.append(ipaddress.ip_network(cidr, strict=False))
        except (ValueError, TypeError):
            raise ConfigError(f"proxy_protocol.trusted: {cidr!r} is not a network") from None
    proxy_timeout = pp.positive("timeout", float, 3.0)
    proxy_drain_grace = pp.get("drain_grace", float, 3.0)

    # Imported here: those modules import this one for ConfigError.
    from carbotui.alerts import AlertSettings
    from carbotui.throttle import ThrottleSettings
    throttle = ThrottleSettings.from_table(root.get("throttle", dict, {}))
    alerts = AlertSettings.from_table(root.get("alerts", dict, {}), base=base)

    url = ldap.get("url", str, required=True)
    if not url.startswith(("ldap://", "ldaps://", "ldapi://")):
        raise ConfigError(f"ldap.url: expected ldap://, ldaps:// or ldapi://, got {url!r}")
    ldap_start_tls = ldap.get("start_tls", bool, False)
    if ldap_start_tls and not url.startswith("ldap://"):
        raise ConfigError("ldap.start_tls: only for an ldap:// url (ldaps:// is TLS from the "
                          "start, ldapi:// a local socket)")
    ldap_ca = ldap.get("ca_file", str, "")
    lookup_dn = ldap.get("lookup_bind_dn", str, "")
    lookup_pw = ldap.get("lookup_password_file", str, "")
    if bool(lookup_dn) != bool(lookup_pw):
        raise ConfigError("ldap.lookup_bind_dn and ldap.lookup_password_file go together")

    return Settings(
        path=path,
        node_name=node.get("name", str, required=True).lower(),
        node_id=node.get("id", str, socket.gethostname()),
        var_dir=rel(node.get("var_dir", str, "var")),
        listen=listen,
        tls_certificate=rel(tls.get("certificate", str, required=True)),
        tls_private_key=rel(tls.get("private_key", str, required=True)),
        tls_min_version=tls.choice("min_version", ("TLSv1.2", "TLSv1.3"), "TLSv1.2"),
        tls_ciphers=tls.get("ciphers", str, "ECDHE+AESGCM:ECDHE+CHACHA20"),
        memcached_servers=tuple(parse_endpoint(x, "memcached.servers")
                                for x in mc.get("servers", list, [])),
        memcached_timeout=mc.positive("timeout", float, 3.0),
        memcached_ttl=mc.positive("ttl", int, 3600),
        memcached_reconnect=mc.positive("reconnect", float, 60.0),
        ldap_url=url,
        ldap_bind_dn=ldap.get("bind_dn", str, ""),
        ldap_password_file=rel(ldap.get("password_file", str, "var/ldap/admin.secret")),
        ldap_base=ldap.get("base", str, required=True),
        ldap_timeout=ldap.positive("timeout", float, 5.0),
        ldap_start_tls=ldap_start_tls,
        ldap_ca_file=rel(ldap_ca) if ldap_ca else None,
        ldap_lookup_bind_dn=lookup_dn,
        ldap_lookup_password_file=rel(lookup_pw) if lookup_pw else None,
        hosts=hosts,
        proxy_trusted=tuple(trusted),
        proxy_timeout=proxy_timeout,
        proxy_drain_grace=proxy_drain_grace,
        mail=mail,
        web=web,
        throttle=throttle,
        alerts=alerts,
    )
