"""Node-local settings: the model and the one loader.

One TOML file per node, like Carbonio's localconfig; cluster-wide settings (accounts,
domains, servers, mail mode) live in LDAP. Loaded at start and again on SIGHUP.

**The model.** Every TOML table is a frozen dataclass below, every key one field of it,
declared once with ``opt(...)``: its type (the annotation), its default (the field's),
the checks on its value, and the Carbonio/Zimbra attribute or localconfig key it mirrors
(``mirrors=``). ``Settings`` is the file: its ``table="tls"`` fields are the keys of
``[tls]`` (flat, ``settings.tls_certificate``), its ``sub`` fields whole tables with a
class of their own (``settings.mail.auth_wait``). ``keys()`` lists the lot.

**The reader** (``_read``) walks those fields for every table, so for every table alike:

* a key no field declares is refused, naming the closest known one
  (``mail.preauth_timeuot: unknown key (did you mean preauth_timeout?)``);
* a value of the wrong type or out of range is refused, naming the dotted key;
* a key left out takes the field's default, written nowhere else;
* every problem of a file is reported, not only the first (``ConfigError.problems``).

``load`` is what every program runs: the workers (start and SIGHUP), auditwatch, the
dashboard, ``carbotui prov``/``blocks``/``stats``/``fleet`` and ``carbotui check``.

**Files.** ``include = "base.toml"`` merges a base file under this one: tables merge key
by key at every depth, any other value (a list too) is replaced whole; the including file
wins. A relative file name is relative to the file that sets it: one set in an included
file to that file's folder, one set in the node's file to the node's folder. A file name
no file sets takes its default (``var``, ``var/ldap/admin.secret``,
``var/spool/alerts``), relative to the file loaded. So ``etc/cluster/node1.toml``, which
includes ``../../carbotui.toml`` and sets its own ``var_dir``, keeps its audit.log and
sockets under var/cluster/node1 and uses the demo's certificates, secrets, alert log and
mail spool (the names carbotui.toml sets). An empty name ("") means "none" where the
default is none (``alerts.log``, ``ldap.ca_file``, ``mail.upstream_ca``…).

This module imports nothing else of carbotui or workers.
"""
from __future__ import annotations

import dataclasses
import difflib
import functools
import ipaddress
import os
import socket
import tomllib
import types
import typing
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar

MAIL_PROTOCOLS = ("imap", "imaps", "pop3", "pop3s")
WEB_PROTOCOLS = ("http", "https", "admin")
BALANCE_METHODS = ("round-robin", "least-conn", "ip-hash")
# The seed's public ports, on every IPv4 and IPv6 address, when [listen] omits a kind.
DEFAULT_PORTS = {"imap": 143, "imaps": 993, "pop3": 110, "pop3s": 995,
                 "http": 80, "https": 443, "admin": 6071}
# [throttle]
IP_REJECT = "Login rejected from this IP"        # zimbraReverseProxyIpThrottleMsg
USER_REJECT = "Login rejected for this user"     # zimbraReverseProxyUserThrottleMsg
MAX_TTL = 30 * 24 * 3600         # memcached reads an expiry above 30 days as a Unix time
PROTO_LETTER = {"imap": "i", "imaps": "i", "i": "i", "pop3": "p", "pop3s": "p", "p": "p",
                "http": "h", "https": "h", "admin": "h", "web": "h", "h": "h"}
# [alerts]: zmauditswatch's rules, and those whose key names one IP to block
RULES = ("ipacct", "acct", "ip", "total")
BLOCKING_RULES = ("ipacct", "ip")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class ConfigError(ValueError):
    """Settings that cannot be used; each problem names its dotted key."""

    def __init__(self, problems: str | list[str]):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("; ".join(self.problems))


# -- how a key is declared ---------------------------------------------------------------

@dataclass(frozen=True)
class Opt:
    """What the reader needs to know of one field (``dataclasses.field`` metadata)."""
    key: str = ""                 # the TOML key (default: the field's name)
    table: str = ""               # Settings only: the table the key is in ("tls")
    mirrors: str = ""             # the Carbonio/Zimbra attribute or localconfig key
    checks: tuple = ()            # value -> None, or what is wrong with it
    parse: Callable | None = None  # (TOML value, dotted key) -> value; raises ConfigError
    path: bool = False            # a file name: made absolute (see the module doc)
    required: bool = False
    sub: bool = False             # a table of its own, read by its class
    inline: bool = False          # a group of keys of this same table, in a class of its own


def opt(default: Any = dataclasses.MISSING, *, factory: Any = dataclasses.MISSING,
        check: Callable | tuple = (), **kw) -> Any:
    checks = check if isinstance(check, tuple) else (check,)
    return field(default=default, default_factory=factory,
                 metadata={"opt": Opt(checks=checks, **kw)})


def positive(value) -> str | None:
    return None if value > 0 else f"must be greater than 0, got {value!r}"


def not_negative(value) -> str | None:
    return None if value >= 0 else f"must not be negative (0 = off), got {value!r}"


def one_of(*choices: str) -> Callable:
    def check(value):
        return None if value in choices else \
            f"must be one of {', '.join(choices)}, got {value!r}"
    return check


def at_most(limit: int, what: str) -> Callable:
    def check(value):
        return None if value <= limit else f"at most {limit} ({what}), got {value!r}"
    return check


def between(low: int, high: int, what: str) -> Callable:
    def check(value):
        return None if low <= value <= high else f"must be {low}..{high} ({what}), got {value!r}"
    return check


def one_line(value: str) -> str | None:
    return "must be one non-empty line" if not value.strip() or any(
        c in value for c in "\r\n") else None


def a_port(value: int) -> str | None:
    return None if 0 < value < 65536 else f"port {value} is not in 1..65535"


class Table:
    """A TOML table's class; ``TABLE`` is its dotted name when read on its own."""
    __slots__ = ()
    TABLE: ClassVar[str] = ""

    @classmethod
    def from_table(cls, data: dict, base: str | os.PathLike | None = None,
                   prefix: str | None = None):
        """This table from a parsed TOML table; relative file names are relative to
        ``base`` (default: the working directory). Raises ConfigError."""
        reader = _Reader(Path(base) if base is not None else Path.cwd())
        prefix = cls.TABLE if prefix is None else prefix
        if not isinstance(data, dict):
            raise ConfigError(f"{prefix}: expected a table, got {data!r}")
        value = _read(cls, data, prefix, reader)
        reader.done()
        return value

    def problems(self) -> Iterator[tuple[str, str]]:
        """Checks across keys: (key relative to this table, what is wrong)."""
        return iter(())


# -- values ------------------------------------------------------------------------------

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


def parse_endpoints(items: list, key: str) -> tuple[Endpoint, ...]:
    return tuple(parse_endpoint(x, key) for x in items)


def parse_networks(items, key: str) -> tuple[Network, ...]:
    out = []
    for item in items:
        if not isinstance(item, str):
            raise ConfigError(f"{key}: expected CIDR strings, got {item!r}")
        try:
            out.append(ipaddress.ip_network(item.strip(), strict=False))
        except ValueError:
            raise ConfigError(f"{key}: {item!r} is not an IP network (CIDR)") from None
    return tuple(out)


def parse_hosts(table: dict, key: str) -> dict[str, str]:
    out = {}
    for name, addr in table.items():
        try:
            ipaddress.ip_address(addr)
        except (ValueError, TypeError):
            raise ConfigError(f"{key}.{name}: {addr!r} is not an IP address") from None
        out[name.lower()] = addr
    return out


def _any_address(kind: str, mirrors: str = "") -> Any:
    port = DEFAULT_PORTS[kind]
    return opt((Endpoint("0.0.0.0", port), Endpoint("::", port)), parse=parse_endpoints,
               mirrors=mirrors)


class LdapUrls(tuple):
    """[ldap] url: the directory's servers, tried in this order (the first that answers
    is used until its connection breaks). A tuple of "scheme://host[:port]" strings."""
    __slots__ = ()


LDAP_SCHEMES = ("ldap", "ldaps", "ldapi")


def parse_ldap_urls(raw, key: str) -> LdapUrls:
    """One URL, a list of them, or Zimbra's localconfig form: one string of URLs separated
    by spaces ("ldap://a:389 ldap://b:389"). Each is scheme://host[:port] with no DN,
    attributes or filter (RFC 4516 parts this setting does not use); ldap:// and ldaps://
    may be mixed (each server gets its own TLS), ldapi:// (a local socket) may not."""
    if isinstance(raw, str):
        items = raw.split()
    elif isinstance(raw, list) and all(isinstance(x, str) for x in raw):
        items = [word for x in raw for word in x.split()]
    else:
        raise ConfigError(f"{key}: expected a URL, a list of URLs or URLs separated by "
                          f"spaces, got {raw!r}")
    if not items:
        raise ConfigError(f"{key}: no URL given")
    seen = set()
    # "ldap://host:389/" is a valid RFC 4516 URL that ldap3 cannot parse: no trailing "/"
    items = [u[:-1] if u.partition("://")[2].endswith("/") and
             not u.lower().startswith("ldapi:") else u for u in items]
    for url in items:
        problem = _ldap_url_problem(url)
        if problem:
            raise ConfigError(f"{key}: {url!r}: {problem}")
        if url.lower() in seen:
            raise ConfigError(f"{key}: {url!r} is listed twice")
        seen.add(url.lower())
    schemes = {url.split(":", 1)[0].lower() for url in items}
    if "ldapi" in schemes and len(items) > 1:
        raise ConfigError(f"{key}: ldapi:// is this host's own slapd socket; it cannot be "
                          "one of several servers (list ldap:// or ldaps:// URLs, or only "
                          "the ldapi:// one)")
    return LdapUrls(items)


def _ldap_url_problem(url: str) -> str | None:
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() not in LDAP_SCHEMES:
        return "expected ldap://, ldaps:// or ldapi://"
    if scheme.lower() == "ldapi":
        return None if rest.strip("/") else "ldapi:// needs the socket's path " \
            "(ldapi://%2Frun%2Fslapd%2Fldapi or ldapi:///run/slapd/ldapi)"
    where = rest
    if any(c in where for c in "/?#"):
        return "only scheme://host[:port] (a DN, attributes or a filter in the URL are " \
               "not used: set ldap.base)"
    host, port = where, ""
    if where.startswith("["):
        host, _, tail = where[1:].partition("]")
        if tail and not tail.startswith(":"):
            return "malformed [IPv6] host"
        port = tail[1:]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            return f"{host!r} is not an IPv6 address"
    elif ":" in where:
        host, _, port = where.rpartition(":")
    if not host or any(c in host for c in " @%"):
        return "no host name"
    if port and not (port.isdigit() and 0 < int(port) < 65536):
        return f"port {port!r} is not in 1..65535"
    return None


def _argv(value: tuple) -> str | None:
    return None if all(value) else "expected a list of non-empty strings (argv, no shell)"


def _email(value: str) -> bool:
    return "@" in value and not any(c in value for c in "\r\n <>")


# -- the tables --------------------------------------------------------------------------

@dataclass(frozen=True)
class ListenSettings(Table, Mapping):
    """[listen]: "address:port" lists per kind; also a mapping kind -> endpoints."""
    TABLE: ClassVar[str] = "listen"
    imap: tuple[Endpoint, ...] = _any_address("imap", "zimbraImapProxyBindPort")
    imaps: tuple[Endpoint, ...] = _any_address("imaps", "zimbraImapSSLProxyBindPort")
    pop3: tuple[Endpoint, ...] = _any_address("pop3", "zimbraPop3ProxyBindPort")
    pop3s: tuple[Endpoint, ...] = _any_address("pop3s", "zimbraPop3SSLProxyBindPort")
    http: tuple[Endpoint, ...] = _any_address("http", "zimbraMailProxyPort")
    https: tuple[Endpoint, ...] = _any_address("https", "zimbraMailSSLProxyPort")
    admin: tuple[Endpoint, ...] = _any_address("admin")  # the admin console (to 7071)

    def __getitem__(self, kind: str) -> tuple[Endpoint, ...]:
        if kind not in DEFAULT_PORTS:
            raise KeyError(kind)
        return getattr(self, kind)

    def __iter__(self):
        return iter(MAIL_PROTOCOLS + WEB_PROTOCOLS)

    def __len__(self) -> int:
        return len(DEFAULT_PORTS)


@dataclass(frozen=True, slots=True)
class MailLimits(Table):
    """Pre-auth behaviour shared by the IMAP and POP3 client-side machines. The fields
    with ``opt`` are keys of [mail]; the others are fixed here."""
    starttls: str = opt("only", check=one_of("only", "on", "off"),  # ignored when already TLS
                        mirrors="zimbraReverseProxyImapStartTlsMode, ...Pop3StartTlsMode")
    max_line: int = opt(65536, check=positive)
    max_literal: int = opt(65536, check=positive)
    max_auth_failures: int = opt(3, check=positive)
    sasl_plain: bool = True
    imap_capabilities: tuple[str, ...] = (
        "IMAP4rev1", "ID", "LITERAL+", "SASL-IR", "IDLE", "NAMESPACE", "ENABLE",
    )
    pop3_capabilities: tuple[str, ...] = ("TOP", "USER", "UIDL", "PIPELINING", "RESP-CODES",
                                          "AUTH-RESP-CODE")
    imap_greeting: str = "IMAP4rev1 proxy ready"
    pop3_greeting: str = "POP3 proxy ready"
    imap_id: tuple[tuple[str, str], ...] = (("name", "carbotui"),)


@dataclass(frozen=True)
class MailSettings(Table):
    """[mail]: the IMAP/POP3 proxy."""
    TABLE: ClassVar[str] = "mail"
    limits: MailLimits = opt(MailLimits(), inline=True)
    auth_wait: float = opt(10.0, check=not_negative, mirrors="zimbraReverseProxyAuthWaitInterval")
    preauth_timeout: float = opt(60.0, check=positive,
                                 mirrors="imap_max_idle_time, pop3_max_idle_time (localconfig)")
    imap_idle_timeout: float = opt(1800.0, check=positive,
                                   mirrors="imap_authenticated_max_idle_time (localconfig)")
    pop3_idle_timeout: float = opt(600.0, check=positive)
    connect_timeout: float = opt(5.0, check=positive, mirrors="zimbraReverseProxyConnectTimeout")
    connect_retries: int = opt(3)
    login_timeout: float = opt(30.0, check=positive)
    max_connections: int = opt(10000, check=positive,     # per worker
                               mirrors="zimbraReverseProxyWorkerConnections")
    max_connections_per_ip: int = opt(1000)  # per worker, whitelist exempt; 0 = no cap
    upstream_tls: bool = opt(False, mirrors="zimbraReverseProxySSLToUpstreamEnabled")
    upstream_ca: Path | None = opt(None, path=True)  # CA bundle for verifying mailbox servers
    send_imap_id: bool = opt(True, mirrors="zimbraReverseProxySendImapId")
    send_pop3_xoip: bool = opt(True, mirrors="zimbraReverseProxySendPop3Xoip")
    drain_timeout: float = opt(30.0, check=positive)


# [web] path_timeouts: Carbonio's per-path upstream read timeouts. ActiveSync's is
# polling_timeout itself (one source of truth, "polling_timeout" in the table), NoOp and
# WaitSet are zimbra_noop_max_timeout and zimbra_waitset_max_request_timeout (1200 s) + 20.
PATH_TIMEOUTS = {"/Microsoft-Server-ActiveSync": "polling_timeout",
                 "/service/soap/NoOpRequest": 1220.0, "/service/soap/WaitSetRequest": 1220.0}


class PathTimeouts(dict[str, "float | str"]):
    """The [web] path_timeouts table, with its prefixes also held as ``encoded``:
    (lower-cased UTF-8 prefix, value) pairs, longest first (equal lengths in table
    order), made once here so that ``webrules.path_timeout`` does not encode the
    table on every request. Build a new one to change it (it is not re-encoded)."""

    encoded: tuple[tuple[bytes, float | str], ...]

    def __init__(self, table=(), /) -> None:
        super().__init__(table)
        pairs = [(prefix.lower().encode("utf-8"), value) for prefix, value in self.items()]
        self.encoded = tuple(sorted(pairs, key=lambda pair: -len(pair[0])))


def parse_path_timeouts(table: dict, key: str) -> PathTimeouts:
    """path prefix -> seconds (> 0) or "polling_timeout"; each prefix starts with "/"."""
    out: dict[str, float | str] = {}
    for prefix, value in table.items():
        if not prefix.startswith("/") or any(c in prefix for c in "?# \t\r\n"):
            raise ConfigError(f"{key}: {prefix!r} is not a path prefix (it starts with /)")
        if value == "polling_timeout":
            out[prefix] = value
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
            out[prefix] = float(value)
        else:
            raise ConfigError(f"{key}.{prefix}: expected seconds (> 0) or "
                              f"\"polling_timeout\", got {value!r}")
    return PathTimeouts(out)


@dataclass(frozen=True)
class WebSettings(Table):
    """[web]: the HTTP(S) and admin proxy."""
    TABLE: ClassVar[str] = "web"
    balance: str = opt("round-robin", check=one_of(*BALANCE_METHODS))
    connect_timeout: float = opt(25.0, check=positive,
                                 mirrors="zimbraReverseProxyUpstreamConnectTimeout")
    read_timeout: float = opt(60.0, check=positive, mirrors="zimbraReverseProxyUpstreamReadTimeout")
    polling_timeout: float = opt(3600.0, check=positive,   # long polls and WebSockets
                                 mirrors="zimbraReverseProxyUpstreamPollingTimeout")
    path_timeouts: dict[str, float | str] = opt(
        factory=lambda: PathTimeouts(PATH_TIMEOUTS), parse=parse_path_timeouts,
        mirrors="zimbraReverseProxyUpstreamPollingTimeout (ActiveSync), "
                "zimbra_noop_max_timeout, zimbra_waitset_max_request_timeout (+ 20 s)")
    header_timeout: float = opt(10.0, check=positive)  # a head must arrive within this
    body_timeout: float = opt(60.0, check=positive)    # at most this between body pieces
    body_min_rate: int = opt(500, check=not_negative)  # bytes/s to average after body_timeout
    keepalive_timeout: float = opt(75.0, check=positive)  # idle client connection
    send_timeout: float = opt(60.0, check=positive)    # a client accepting nothing is cut
    max_connections_per_ip: int = opt(1000, check=not_negative)  # per worker; whitelist exempt
    login_body_limit: int = opt(65536, check=positive)  # login bodies read whole; larger: 413
    extend_forwarded_for: bool = opt(False)  # PROXY-protocol listeners: append to the XFF
    upstream_keepalive: int = opt(32)        # idle upstream connections kept per server
    max_header_bytes: int = opt(16384, check=positive)
    health_interval: float = opt(2.0, check=positive)
    health_path: str = opt("/health")
    fail_timeout: float = opt(10.0, check=positive,    # a failed upstream is skipped this long
                              mirrors="zimbraMailProxyReconnectTimeout")
    upstream_tls: bool = opt(False, mirrors="zimbraReverseProxySSLToUpstreamEnabled")
    # port 80 serves <acme_webroot>/.well-known/acme-challenge/<token> (certbot --webroot -w)
    acme_webroot: Path | None = opt(None, path=True)
    # HTTP/2 by ALPN on https and admin (RFC 9113); false: HTTP/1.1 only
    h2: bool = opt(True)
    h2_max_concurrent_streams: int = opt(100, check=(positive, at_most(2**31 - 1, "RFC 9113")))
    h2_max_header_list_size: int = opt(0, check=not_negative)   # 0: max_header_bytes


def _count(mirrors: str = "") -> Any:
    return opt(0, check=not_negative, mirrors=mirrors)


def _ttl(default: int, mirrors: str = "", zero_ok: bool = False) -> Any:
    return opt(default, check=(not_negative if zero_ok else positive,
                               at_most(MAX_TTL, "30 days")), mirrors=mirrors)


@dataclass(frozen=True)
class ThrottleSettings(Table):
    """[throttle]: login throttling, counted in memcached (nginx's mail_login_* directives)."""
    TABLE: ClassVar[str] = "throttle"
    ip_limit: int = _count("zimbraReverseProxyIPLoginLimit")  # 0 = off
    ip_ttl: int = _ttl(3600, "zimbraReverseProxyIPLoginLimitTime")
    imap_ip_limit: int = _count("zimbraReverseProxyIPLoginImapLimit")  # 0: use ip_limit
    imap_ip_ttl: int = _ttl(0, "zimbraReverseProxyIPLoginImapLimitTime", zero_ok=True)
    pop3_ip_limit: int = _count("zimbraReverseProxyIPLoginPop3Limit")
    pop3_ip_ttl: int = _ttl(0, "zimbraReverseProxyIPLoginPop3LimitTime", zero_ok=True)
    web_ip_limit: int = _count()
    web_ip_ttl: int = _ttl(0, zero_ok=True)
    user_limit: int = _count("zimbraReverseProxyUserLoginLimit")  # 0 = off
    user_ttl: int = _ttl(3600, "zimbraReverseProxyUserLoginLimitTime")
    count_user: str = opt("failures", check=one_of("failures", "successes"))  # Carbonio: successes
    whitelist: tuple[Network, ...] = opt((), parse=parse_networks,
                                         mirrors="zimbraReverseProxyIPThrottleWhitelist")
    ip_reject_message: str = opt(IP_REJECT, check=one_line,
                                 mirrors="zimbraReverseProxyIpThrottleMsg")
    user_reject_message: str = opt(USER_REJECT, check=one_line,
                                   mirrors="zimbraReverseProxyUserThrottleMsg")

    def ip_limit_for(self, proto: str) -> tuple[int, int]:
        """(limit, ttl) for a protocol, with nginx's fallback to the general values."""
        prefix = {"i": "imap", "p": "pop3", "h": "web"}[PROTO_LETTER[proto]]
        limit = getattr(self, f"{prefix}_ip_limit") or self.ip_limit
        ttl = getattr(self, f"{prefix}_ip_ttl") or self.ip_ttl
        return limit, ttl


@dataclass(frozen=True)
class RuleSettings(Table):
    """[alerts.<rule>]: one zmauditswatch rule."""
    threshold: int = opt(check=not_negative)                 # 0: rule off
    block_seconds: int = opt(0, check=between(0, MAX_TTL, "30 days"))  # >0: block the IP


@dataclass(frozen=True)
class SmtpSettings(Table):
    """[alerts.smtp]: alert e-mail through an on-disk spool; off without a host."""
    TABLE: ClassVar[str] = "alerts.smtp"
    host: str = opt("")
    port: int = opt(25, check=a_port)
    sender: str = opt("", key="from")
    recipients: tuple[str, ...] = opt((), key="to", mirrors="zimbra_swatch_notice_user")
    spool: Path = opt(Path("var/spool/alerts"), path=True)
    starttls: bool = opt(False)
    tls_ca: Path | None = opt(None, path=True)
    username: str = opt("")
    password_file: Path | None = opt(None, path=True)   # never the password in the file
    timeout: float = opt(10.0, check=positive)
    retry_min: float = opt(5.0, check=positive)          # doubles on each failure ...
    retry_max: float = opt(300.0, check=positive)        # ... up to this

    @property
    def enabled(self) -> bool:
        return bool(self.host)

    @property
    def where(self) -> str:
        return f"{self.host}:{self.port}"

    def problems(self):
        if not self.recipients:
            # zmauditswatch: "Must have a notification email address defined."
            yield "to", "must have a notification e-mail address"
        for key, addr in [("from", self.sender)] + [("to", a) for a in self.recipients]:
            if not _email(addr):
                yield key, f"{addr!r} is not an e-mail address"
        if self.username and not self.password_file:
            yield "password_file", "required with username (the password is never written " \
                                   "in this file)"
        if self.retry_max < self.retry_min:
            yield "retry_max", f"must be at least retry_min ({self.retry_min})"


def _rule(threshold: int, rule: str) -> Any:
    return opt(RuleSettings(threshold), sub=True,
               mirrors=f"zimbra_swatch_{rule}_threshold (its threshold)")


@dataclass(frozen=True)
class AlertSettings(Table):
    """[alerts]: auditwatch (zmauditswatch's rules) and its sinks."""
    TABLE: ClassVar[str] = "alerts"
    window: int = opt(60, check=positive, mirrors="zimbra_swatch_threshold_seconds")
    cooldown: int = opt(300)
    ipacct: RuleSettings = _rule(10, "ipacct")
    acct: RuleSettings = _rule(10, "acct")
    ip: RuleSettings = _rule(20, "ip")
    total: RuleSettings = _rule(100, "total")
    log: Path | None = opt(None, path=True)     # JSON lines; the dashboard reads it
    smtp: SmtpSettings | None = opt(None, sub=True)
    command: tuple[str, ...] = opt((), check=_argv)
    command_timeout: float = opt(10.0, check=positive)
    poll_interval: float = opt(0.25, check=positive)   # how often auditwatch looks at audit.log
    rotate_grace: float = opt(5.0, check=positive)     # keep reading a rotated file this long

    @property
    def rules(self) -> dict[str, RuleSettings]:
        return {rule: getattr(self, rule) for rule in RULES}

    def problems(self):
        for rule in RULES:
            if getattr(self, rule).block_seconds and rule not in BLOCKING_RULES:
                yield f"{rule}.block_seconds", "only the ipacct and ip rules name one IP to block"


@dataclass(frozen=True, kw_only=True)
class Settings(Table):
    """The node's settings file."""
    path: Path                            # the file loaded (not a key)
    # [node]
    node_name: str = opt(table="node", key="name", required=True,   # its server entry in LDAP
                         parse=lambda v, key: v.lower(), mirrors="zimbra_server_hostname")
    node_id: str = opt(table="node", key="id", factory=socket.gethostname)  # in the fleet view
    var_dir: Path = opt(Path("var"), table="node", path=True)
    # production puts logs and sockets in the system's places (/var/log/carbotui,
    # /run/carbotui); unset: var_dir/log and var_dir/run
    log_dir_set: Path | None = opt(None, table="node", key="log_dir", path=True)
    run_dir_set: Path | None = opt(None, table="node", key="run_dir", path=True)
    # the supervisord that runs the workers (the dashboard's Workers screen, restarts); unset:
    # run_dir/supervisor.sock (the demo). Debian's supervisor: /var/run/supervisor.sock
    supervisor_socket_set: Path | None = opt(None, table="node", key="supervisor_socket",
                                             path=True)
    listen: ListenSettings = opt(ListenSettings(), sub=True)
    # [tls]
    tls_certificate: Path = opt(table="tls", key="certificate", path=True, required=True)
    tls_private_key: Path = opt(table="tls", key="private_key", path=True, required=True)
    tls_min_version: str = opt("TLSv1.2", table="tls", key="min_version",
                               check=one_of("TLSv1.2", "TLSv1.3"),
                               mirrors="zimbraReverseProxySSLProtocols")
    tls_ciphers: str = opt("ECDHE+AESGCM:ECDHE+CHACHA20", table="tls", key="ciphers",
                           mirrors="zimbraReverseProxySSLCiphers")
    # [memcached]
    memcached_servers: tuple[Endpoint, ...] = opt((), table="memcached", key="servers",
                                                  parse=parse_endpoints)
    memcached_timeout: float = opt(3.0, table="memcached", key="timeout", check=positive,
                                   mirrors="zimbraReverseProxyCacheFetchTimeout")
    memcached_ttl: int = opt(3600, table="memcached", key="ttl", check=positive,
                             mirrors="zimbraReverseProxyCacheEntryTTL")
    memcached_reconnect: float = opt(60.0, table="memcached", key="reconnect", check=positive,
                                     mirrors="zimbraReverseProxyCacheReconnectInterval")
    # [ldap]
    # the servers in order: one URL, a list, or "ldap://a:389 ldap://b:389" (localconfig's)
    ldap_urls: LdapUrls = opt(table="ldap", key="url", required=True, parse=parse_ldap_urls,
                              mirrors="ldap_url (localconfig)")
    ldap_bind_dn: str = opt("", table="ldap", key="bind_dn")  # changes (prov, dashboard)
    ldap_password_file: Path = opt(Path("var/ldap/admin.secret"), table="ldap",
                                   key="password_file", path=True)
    ldap_base: str = opt(table="ldap", key="base", required=True)
    ldap_timeout: float = opt(5.0, table="ldap", key="timeout", check=positive)
    ldap_start_tls: bool = opt(False, table="ldap", key="start_tls")  # StartTLS before binding
    # must have signed the server's certificate (None: the system CAs)
    ldap_ca_file: Path | None = opt(None, table="ldap", key="ca_file", path=True)
    # read-only bind for the workers' lookups ("" = the admin bind_dn)
    ldap_lookup_bind_dn: str = opt("", table="ldap", key="lookup_bind_dn")
    ldap_lookup_password_file: Path | None = opt(None, table="ldap", key="lookup_password_file",
                                                 path=True, mirrors="ldap_nginx_password")
    # [hosts]: mailbox server host name -> address, like /etc/hosts
    hosts: dict[str, str] = opt(factory=dict, parse=parse_hosts)
    # [proxy_protocol]
    proxy_trusted: tuple[Network, ...] = opt((), table="proxy_protocol", key="trusted",
                                             parse=parse_networks, mirrors="set_real_ip_from")
    proxy_timeout: float = opt(3.0, table="proxy_protocol", key="timeout", check=positive)
    # SIGTERM: accept this long while health checks fail
    proxy_drain_grace: float = opt(3.0, table="proxy_protocol", key="drain_grace")
    # [metrics]: the node's Prometheus text endpoint (all workers summed); None = off
    metrics_listen: Endpoint | None = opt(None, table="metrics", key="listen",
                                          parse=parse_endpoint)
    mail: MailSettings = opt(MailSettings(), sub=True)
    web: WebSettings = opt(WebSettings(), sub=True)
    throttle: ThrottleSettings = opt(ThrottleSettings(), sub=True)
    alerts: AlertSettings = opt(AlertSettings(), sub=True)

    @property
    def log_dir(self) -> Path:
        return self.log_dir_set or self.var_dir / "log"

    @property
    def run_dir(self) -> Path:
        return self.run_dir_set or self.var_dir / "run"

    @property
    def supervisor_socket(self) -> Path:
        return self.supervisor_socket_set or self.run_dir / "supervisor.sock"

    @property
    def audit_log(self) -> Path:
        return self.log_dir / "audit.log"

    @property
    def access_log(self) -> Path:
        """One line per web request, in Carbonio's nginx.access.log field order."""
        return self.log_dir / "access.log"

    @property
    def sessions_log(self) -> Path:
        """One line per ended mail session."""
        return self.log_dir / "sessions.log"

    def ldap_password(self) -> str:
        return _secret("ldap.password_file", self.ldap_password_file)

    def ldap_lookup_password(self) -> str:
        return _secret("ldap.lookup_password_file", self.ldap_lookup_password_file)

    def problems(self):
        if self.ldap_start_tls and not any(u.lower().startswith("ldap://")
                                           for u in self.ldap_urls):
            yield "ldap.start_tls", "only for an ldap:// url (ldaps:// is TLS from the " \
                                    "start, ldapi:// a local socket)"
        if bool(self.ldap_lookup_bind_dn) != bool(self.ldap_lookup_password_file):
            yield "ldap.lookup_bind_dn", "goes together with ldap.lookup_password_file"


def _secret(key: str, path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError as exc:
        raise ConfigError(f"{key}: cannot read {path}: {exc.strerror}") from None


# -- the reader --------------------------------------------------------------------------

class _Reader:
    """One read: where relative names start, and the problems found so far."""

    def __init__(self, base: Path):
        self.base, self.errors = base, []

    def fail(self, key: str, message: str) -> None:
        self.errors.append(f"{key}: {message}")

    def done(self) -> None:
        if self.errors:
            raise ConfigError(self.errors)


def _join(*parts: str) -> str:
    return ".".join(p for p in parts if p)


@functools.cache
def _fields(cls) -> tuple[tuple[dataclasses.Field, Opt, Any], ...]:
    """(field, Opt, resolved type) of each field of ``cls`` that is a setting."""
    hints = typing.get_type_hints(cls)
    return tuple((f, f.metadata["opt"], hints[f.name])
                 for f in dataclasses.fields(cls) if "opt" in f.metadata)


def _table_class(hint) -> type:
    """SmtpSettings of ``SmtpSettings | None``."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        return next(a for a in typing.get_args(hint) if a is not type(None))
    return hint


@functools.cache
def _keys(cls) -> dict[str, tuple[str, ...]]:
    """The keys of ``cls``'s table ("") and of the tables its ``table=`` fields fill."""
    out: dict[str, list[str]] = {"": []}
    for f, o, hint in _fields(cls):
        if o.inline:
            out[""] += _keys(hint)[""]
            continue
        if o.table and o.table not in out:
            out[o.table] = []
            out[""].append(o.table)
        out[o.table].append(o.key or f.name)
    return {table: tuple(keys) for table, keys in out.items()}


def _refuse_unknown(data: dict, known: tuple[str, ...], prefix: str, r: _Reader) -> None:
    for name, value in data.items():
        if name not in known:
            what = "table" if isinstance(value, dict) else "key"
            near = difflib.get_close_matches(name, known, n=1)
            r.fail(_join(prefix, name),
                   f"unknown {what}" + (f" (did you mean {near[0]}?)" if near else ""))


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def _absolute(value: Any, base: Path) -> Any:
    if isinstance(value, Path) and not value.is_absolute():
        return (base / value).resolve()
    return value


_SCALARS = (bool, int, float, str)


def _value(raw: Any, key: str, hint: Any, o: Opt, f: dataclasses.Field, base: Path) -> Any:
    """One TOML value as the field's type; raises ConfigError."""
    origin = typing.get_origin(hint)
    kind = str if o.path else hint if hint in _SCALARS else \
        list if origin is tuple else dict if dict in (hint, origin) else None
    if kind is float and isinstance(raw, int) and not isinstance(raw, bool):
        raw = float(raw)
    if kind is not None and (not isinstance(raw, kind) or (kind is int and isinstance(raw, bool))):
        raise ConfigError(f"{key}: expected {'a table' if kind is dict else kind.__name__}, "
                          f"got {raw!r}")
    if o.parse is not None:
        value = o.parse(raw, key)
    elif o.path:
        value = None if raw == "" and f.default is None else (base / raw).resolve()
    elif kind is list:
        item = typing.get_args(hint)[0]
        if item in _SCALARS and not all(isinstance(x, item) for x in raw):
            raise ConfigError(f"{key}: expected a list of {item.__name__}, got {raw!r}")
        value = tuple(raw)
    else:
        value = raw
    for check in o.checks:
        problem = check(value)
        if problem:
            raise ConfigError(f"{key}: {problem}")
    return value


def _read(cls, data: dict, prefix: str, r: _Reader, default: Any = None, *,
          inline: bool = False, extra: dict | None = None) -> Any:
    """An instance of the table class ``cls`` from the TOML table ``data``. Keys left out
    take ``default``'s values (a table's default instance), else the fields' defaults.
    Problems go to ``r``; then the result is ``default`` (the caller raises in the end).
    A table whose ``enabled`` is false reads as None."""
    start = len(r.errors)
    known = _keys(cls)
    tables = {"": data}
    for name in known:
        if name:
            table = data.get(name, {})
            if not isinstance(table, dict):
                r.fail(_join(prefix, name), f"expected a table, got {table!r}")
                table = {}
            tables[name] = table
    if not inline:
        for name, table in tables.items():
            _refuse_unknown(table, known[name], _join(prefix, name), r)
    values = dict(extra or {})
    for f, o, hint in _fields(cls):
        fallback = getattr(default, f.name) if default is not None else _default(f)
        if o.inline:
            values[f.name] = _read(hint, data, prefix, r, fallback, inline=True)
            continue
        table, key = tables[o.table], o.key or f.name
        dotted = _join(prefix, o.table, key)
        if o.sub:
            raw = table.get(key, None if fallback is None else {})
            if raw is None:
                values[f.name] = None
            elif not isinstance(raw, dict):
                r.fail(dotted, f"expected a table, got {raw!r}")
            else:
                values[f.name] = _read(_table_class(hint), raw, dotted, r, fallback)
        elif key in table:
            try:
                values[f.name] = _value(table[key], dotted, hint, o, f, r.base)
            except ConfigError as exc:
                r.errors += exc.problems
        elif o.required or fallback is dataclasses.MISSING:
            r.fail(dotted, "required setting is missing")
        else:
            values[f.name] = _absolute(fallback, r.base) if o.path else fallback
    if len(r.errors) > start:
        return default
    value = cls(**values)
    if not getattr(value, "enabled", True):
        return None
    for key, problem in value.problems():
        r.fail(_join(prefix, key), problem)
    return value


# -- the files ---------------------------------------------------------------------------

@functools.cache
def path_keys(cls=Settings) -> tuple[tuple[str, ...], ...]:
    """Where file names are, as TOML key paths: ("node", "var_dir"), ("alerts", "smtp",
    "spool")... From the model, so a new path setting is made absolute like the others."""
    out = []
    for f, o, hint in _fields(cls):
        where = tuple(p for p in (o.table, o.key or f.name) if p)
        if o.path:
            out.append(where)
        elif o.sub:
            out += [where + p for p in path_keys(_table_class(hint))]
        elif o.inline:
            out += path_keys(hint)
    return tuple(out)


def keys(cls=Settings, prefix: str = "", default: Any = None
         ) -> Iterator[tuple[str, str, Any, str]]:
    """Every key of the model: (dotted key, type, default, what it mirrors in Carbonio);
    a table that mirrors something has a row of its own."""
    for f, o, hint in _fields(cls):
        key = _join(prefix, o.table, o.key or f.name)
        value = getattr(default, f.name) if default is not None else _default(f)
        if o.inline:
            yield from keys(hint, prefix, value)
        elif o.sub:
            if o.mirrors:
                yield key, "table", "", o.mirrors
            yield from keys(_table_class(hint), key, value)
        else:
            kind = hint.__name__ if isinstance(hint, type) else str(hint)
            for module in ("pathlib.", "ipaddress.", __name__ + "."):
                kind = kind.replace(module, "")
            yield key, kind, "(required)" if o.required else value, o.mirrors


def _make_absolute(raw: dict, folder: Path) -> None:
    for *tables, key in path_keys():
        table = raw
        for name in tables:
            table = table.get(name)
            if not isinstance(table, dict):
                break
        else:
            value = table.get(key)
            if isinstance(value, str) and value:
                table[key] = str((folder / value).resolve())


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for name, value in over.items():
        both = isinstance(value, dict) and isinstance(out.get(name), dict)
        out[name] = _merge(out[name], value) if both else value
    return out


def read_toml(path: Path, seen: tuple = ()) -> dict:
    """One file, with ``include = "base.toml"`` merged under it (this file wins), its file
    names made absolute against the folder of the file that sets them."""
    if path in seen:
        raise ConfigError(f"{path}: include loop")
    try:
        raw = tomllib.loads(path.read_text())
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    _make_absolute(raw, path.parent)
    include = raw.pop("include", None)
    if include is None:
        return raw
    if not isinstance(include, str):
        raise ConfigError(f"{path}: include: expected a file name")
    return _merge(read_toml((path.parent / include).resolve(), seen + (path,)), raw)


def load(path: str | os.PathLike) -> Settings:
    """The settings file at ``path``, checked whole; raises ConfigError naming every
    problem. What the workers, auditwatch, the dashboard and ``carbotui check`` all run."""
    path = Path(path).resolve()
    raw = read_toml(path)
    reader = _Reader(path.parent)
    settings = _read(Settings, raw, "", reader, extra={"path": path})
    reader.done()
    return settings
