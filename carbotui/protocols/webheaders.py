"""The response headers the proxy adds on HTTPS, as pure functions (no I/O).

Carbonio's ``zimbraReverseProxyResponseHeaders`` (multi-valued, global config,
overridden per domain) holds one ``Name: value`` per value, and
``carbonioReverseProxyResponseCSPHeader`` one ``Content-Security-Policy: value``.
Unset, Carbonio's default set applies (``DEFAULT_HEADERS``, ``DEFAULT_CSP``).
Values may quote their value as nginx's ``add_header`` does
(``Referrer-Policy: "same-origin"``, how Carbonio stores them); the quotes go.

* `parse_header` checks one value: the name a token (RFC 9110 §5.6.2) of at most
  ``MAX_NAME`` characters and not one that frames or routes a message
  (``FORBIDDEN``); the value visible ASCII, spaces and tabs only (§5.5: no CR,
  LF, NUL or other controls), at most ``MAX_VALUE`` characters.
  `BadHeader` says why; ``prov`` refuses the change, a worker skips the value.
* `header_set` turns the LDAP values into what is sent; `ResponseHeaders` picks
  the set of a request's virtual host (the ``Host``'s domain) or the global one.
* `add_missing` adds to a response head only the headers it does not carry
  (names compared case-insensitively): a mailbox server's own header wins;
  `missing_lines` gives the same as header lines made once per set (the proxy's
  response path, which does not check them again per response).
"""
from __future__ import annotations

import re
from typing import Iterable, Iterator

MAX_NAME = 64
MAX_VALUE = 8192              # the schema's bound too (etc/ldap/carbotui.schema)
MAX_HEADERS = 32              # values of one list
HEADERS_ATTR = "zimbraReverseProxyResponseHeaders"
CSP_ATTR = "carbonioReverseProxyResponseCSPHeader"
CSP_NAMES = ("content-security-policy", "content-security-policy-report-only")

# Carbonio's defaults (its attrs.xml globalConfigValue), sent when the attribute is unset.
DEFAULT_HEADERS = (
    "Strict-Transport-Security: max-age=31536000; includeSubDomains; preload",
    "Permissions-Policy: geolocation=(self), microphone=(self)",
    "Referrer-Policy: same-origin",
    "X-Content-Type-Options: nosniff",
    "X-Robots-Tag: noindex, nofollow",
    "X-XSS-Protection: 1; mode=block",
    "X-Frame-Options: sameorigin",
    "Expect-CT: max-age=86400",
)
# Carbonio's default policy without the hosts of Zextras' own CDNs (*.zextras.tools,
# *.jsdelivr.net), which a carbotui site has no reason to trust for scripts.
DEFAULT_CSP = ("Content-Security-Policy: default-src 'self' data: blob: cid:; "
               "script-src 'self' 'unsafe-inline' 'unsafe-eval'; style-src * 'unsafe-inline'; "
               "img-src * data: blob: cid:; font-src * data:; connect-src 'self'; "
               "media-src * blob: data: cid:; object-src 'self'; child-src 'self' blob: data: "
               "cid:; frame-src 'self' blob: data: cid:; frame-ancestors 'self'; "
               "form-action 'self';")

# Framing, hop-by-hop and routing headers: never configurable.
FORBIDDEN = frozenset({
    "connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer",
    "upgrade", "content-length", "host", "location", "content-encoding", "content-type",
})

_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")        # RFC 9110 §5.6.2 tchar
_VALUE = re.compile(r"[\x21-\x7e]+(?:[ \t]+[\x21-\x7e]+)*")  # §5.5, ASCII only, trimmed

# (name, value, lower-cased name), bytes as they go on the wire
Header = tuple[bytes, bytes, bytes]


class BadHeader(ValueError):
    """A configured header that is not sent. ``str()`` never quotes the value whole:
    a short, escaped start of it at most, safe for a log line."""


def _shown(text: str) -> str:
    return repr(text[:40]) + ("…" if len(text) > 40 else "")


def parse_header(text: str) -> tuple[str, str]:
    """One ``Name: value`` (the value optionally in double quotes) -> (name, value)."""
    if not isinstance(text, str):
        raise BadHeader("a header must be text")
    if len(text) > MAX_NAME + 2 + MAX_VALUE:
        raise BadHeader(f"{_shown(text)} is longer than {MAX_NAME + 2 + MAX_VALUE} characters")
    for bad, what in (("\r", "CR"), ("\n", "LF"), ("\x00", "NUL")):
        if bad in text:
            raise BadHeader(f"{_shown(text)} holds a {what}: one header per value, on one line")
    name, colon, value = text.partition(":")
    if not colon:
        raise BadHeader(f"{_shown(text)}: expected 'Name: value'")
    name, value = name.strip(), value.strip(" \t")
    if not name or len(name) > MAX_NAME or not _TOKEN.fullmatch(name):
        raise BadHeader(f"{_shown(name)}: a header name is a token (letters, digits, "
                        f"!#$%&'*+.^_`|~-) of 1 to {MAX_NAME} characters")
    if name.lower() in FORBIDDEN:
        raise BadHeader(f"{name}: frames or routes the response; the proxy sets it itself")
    if len(value) >= 2 and value[0] == value[-1] == '"':
        value = value[1:-1].strip(" \t")
    if not value:
        raise BadHeader(f"{name}: the value is empty")
    if len(value) > MAX_VALUE:
        raise BadHeader(f"{name}: the value is longer than {MAX_VALUE} characters")
    if not _VALUE.fullmatch(value):
        raise BadHeader(f"{name}: the value may hold visible ASCII characters, spaces and "
                        f"tabs only")
    return name, value


def check_list(values, *, csp: bool = False) -> list[tuple[str, str]]:
    """Every value of one attribute checked, as ``prov`` does before writing: the first
    bad one raises BadHeader; so do two values with the same name and too many values.
    ``csp``: the CSP attribute, whose one header must be a Content-Security-Policy."""
    values = list(values)
    if len(values) > MAX_HEADERS:
        raise BadHeader(f"at most {MAX_HEADERS} headers, got {len(values)}")
    out, seen = [], set()
    for text in values:
        name, value = parse_header(text)
        low = name.lower()
        if csp and low not in CSP_NAMES:
            raise BadHeader(f"{CSP_ATTR} holds a Content-Security-Policy header, not {name}")
        if low in seen:
            raise BadHeader(f"{name} is given twice; a header is sent once")
        seen.add(low)
        out.append((name, value))
    return out


def header_set(values, csp, problems: list | None = None) -> HeaderSet:
    """What is sent for one list (``values``; empty: the default set) and one CSP value
    (empty: the default policy). A bad value is skipped, and said in ``problems``; of
    two headers with one name the first is kept, and the CSP attribute's header comes
    after the list's (so a list that names a CSP keeps its own)."""
    values = tuple(values or ()) or DEFAULT_HEADERS
    texts = [*values[:MAX_HEADERS], csp or DEFAULT_CSP]
    if len(values) > MAX_HEADERS and problems is not None:
        problems.append(f"{len(values) - MAX_HEADERS} headers over {MAX_HEADERS} skipped")
    out: list[Header] = []
    seen: set[str] = set()
    for i, text in enumerate(texts):
        try:
            name, value = parse_header(text)
            if i == len(texts) - 1 and name.lower() not in CSP_NAMES:
                raise BadHeader(f"{CSP_ATTR} must be a Content-Security-Policy header, "
                                f"not {name}")
        except BadHeader as exc:
            if problems is not None:
                problems.append(f"skipped: {exc}")
            continue
        low = name.lower()
        if low in seen:
            continue
        seen.add(low)
        out.append((name.encode("ascii"), value.encode("ascii"), low.encode("ascii")))
    return HeaderSet(out)


class HeaderSet:
    """`header_set`'s (name, value, lower-cased name) triples (``items``), with ``wire``:
    all of them as header lines (``Name: value`` CRLF), joined once, and ``names``, the
    lower-cased names, for `missing_lines`. It iterates, indexes and compares as the tuple
    of its triples. (A class of its own, not a tuple subclass: mypyc compiles this module,
    and a compiled class cannot subclass tuple.) Never changed once made."""

    def __init__(self, items: Iterable[Header] = ()) -> None:
        self.items: tuple[Header, ...] = tuple(items)
        self.wire = b"".join([name + b": " + value + b"\r\n" for name, value, _ in self.items])
        self.names: frozenset[bytes] = frozenset([low for _, _, low in self.items])

    def __iter__(self) -> Iterator[Header]:
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)

    def __bool__(self) -> bool:
        return len(self.items) > 0

    def __getitem__(self, index: int) -> Header:
        return self.items[index]

    def __eq__(self, other: object) -> bool:
        if isinstance(other, HeaderSet):
            return self.items == other.items
        return isinstance(other, tuple) and self.items == other

    def __hash__(self) -> int:
        return hash(self.items)

    def __repr__(self) -> str:
        return f"HeaderSet({self.items!r})"


EMPTY = HeaderSet()             # what a plain-HTTP request adds: nothing


def host_name(host: bytes) -> bytes:
    """A Host header's name, lower-cased, without the port (``[v6]`` kept as it is)."""
    if host.endswith(b"]") or b":" not in host:
        return host.lower()
    return host.rpartition(b":")[0].lower()


class ResponseHeaders:
    """The global set (``default``), and the set of each virtual hostname whose domain
    overrides it (``by_host``). Never changed once made: a new directory read makes a
    new one (live.py)."""

    def __init__(self, default: HeaderSet | None = None,
                 by_host: dict[bytes, HeaderSet] | None = None) -> None:
        self.default: HeaderSet = default if default is not None else header_set((), "")
        self.by_host: dict[bytes, HeaderSet] = by_host if by_host is not None else {}

    def for_host(self, host: bytes | None) -> HeaderSet:
        if not self.by_host or not host:
            return self.default
        return self.by_host.get(host_name(host), self.default)


def build(global_values, global_csp: str, domains: dict, vhosts: dict,
          problems: list | None = None) -> ResponseHeaders:
    """``domains``: domain name -> (values, csp) as LDAP holds them; ``vhosts``: virtual
    hostname -> domain name. A domain that sets either attribute overrides that one."""
    default = header_set(global_values, global_csp, problems)
    per_domain: dict[str, HeaderSet] = {}
    for name, (values, csp) in domains.items():
        if values or csp:
            per_domain[name] = header_set(values or global_values, csp or global_csp,
                                          problems)
    by_host = {host.encode("ascii", "replace").lower(): per_domain[domain]
               for host, domain in vhosts.items() if domain in per_domain}
    return ResponseHeaders(default, by_host)


def missing_lines(headers, extra: Iterable[Header], lows: list[bytes] | None = None) -> bytes:
    """What `add_missing` would add, as header lines ready for the wire
    (http11.serialize_response_head's ``checked``): ``extra`` comes from `header_set`,
    whose values were checked when the set was built, so they are not checked again
    per response; when the head carries none of its names (the usual case), the lines
    joined once. ``lows``: the head's names lower-cased, when the caller has them."""
    if lows is None:
        lows = [key.lower() for key, _ in headers]
    if isinstance(extra, HeaderSet):
        if not extra:
            return b""
        names = extra.names
        for low in lows:
            if low in names:
                break
        else:
            return extra.wire
    present = set(lows)
    return b"".join([name + b": " + value + b"\r\n" for name, value, low in extra
                     if low not in present])


def add_missing(headers: list, extra: Iterable[Header]) -> list:
    """``headers`` (a response head's (name, value) list) with every header of ``extra``
    whose name it does not carry; the list is extended in place and returned."""
    if extra:
        present = {key.lower() for key, _ in headers}
        headers.extend((name, value) for name, value, low in extra if low not in present)
    return headers
