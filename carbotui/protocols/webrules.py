"""What the web front decides about a request, as pure functions (no I/O).

* Which requests are logins (`login_kind`): the request-target normalised the
  ways a backend might read it, and any ``POST /service/soap*``, since a SOAP
  servlet picks the request from the body, not from the URL.
* Whom a login names (`login_name`): the form's ``username``, or the account of
  the one ``AuthRequest`` in a SOAP body, read with real JSON and XML parsers
  that are linear and bounded (objects, elements, nesting). Anything a server
  could read as a login but we cannot read unambiguously is refused
  (`BadLogin`, a 400): the throttle must count what the server authenticates.
* Which SOAP bodies may be a login at all (`LoginMarkerScan`): one that spells
  no ``AuthRequest`` cannot be one, so a large SOAP body streams through while
  it is scanned, and is cut (413) before its end if it turns out to spell one.
* Which headers reach a mailbox server (`upstream_headers`) and which upgrades
  may become a tunnel (`websocket_request`, `websocket_accepted`).
* How long a request body may take (`BodyDeadline`), and how long a response may
  take by path (`path_timeout`: ActiveSync's long polls, NoOp and WaitSet).
* Which mailbox server a request names (`route_hint`, Carbonio's order) and which
  Basic credentials it carries (`basic_auth`, `CredentialCache`).
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import xml.parsers.expat
from dataclasses import dataclass, field, replace
from typing import Final
from urllib.parse import parse_qs, unquote_to_bytes

from carbotui.core.authtoken import zimbra_id_from_token
from carbotui.protocols import http11
from carbotui.protocols.sasl import AuthDataError, decode_username

FORM: Final = "form"                 # the web login form (POST /login)
SOAP: Final = "soap"                 # anything a SOAP servlet may read as an AuthRequest

MAX_FORM_FIELDS: Final = 100         # a login form has a handful
MAX_JSON_OBJECTS: Final = 1000       # a JSON AuthRequest has about ten
MAX_XML_ELEMENTS: Final = 1000
MAX_DEPTH: Final = 64                # nesting of objects/arrays or elements
XML_ENCODINGS: Final = (b"utf-8", b"utf8", b"us-ascii", b"ascii", b"iso-8859-1", b"latin1")


class BadLogin(Exception):
    """A login request that cannot be read unambiguously: answer 400. ``str()`` is a
    short reason, safe to send and to log (it never quotes the body)."""


# ------------------------------------------------------------------ targets

_SCHEME: Final = re.compile(rb"[A-Za-z][A-Za-z0-9+.\-]*://")


def target_path(target: bytes) -> bytes:
    """The path of a request-target, without query or fragment (RFC 9112 §3.2).
    Origin-form ``/p?q`` and absolute-form ``http://host/p?q`` (which a server MUST
    accept, §3.2.2) have one; authority-form (CONNECT) and ``*`` give b""."""
    if not target.startswith(b"/"):
        m = _SCHEME.match(target)
        if m is None:
            return b""
        rest = target[m.end():]
        ends = [i for i in (rest.find(b"/"), rest.find(b"?"), rest.find(b"#")) if i >= 0]
        target = b"/" + rest[min(ends):].lstrip(b"/") if ends else b"/"
    return target.split(b"?", 1)[0].split(b"#", 1)[0]


_NOT_PLAIN: Final = re.compile(rb"[%\\;]|/[/.]")     # what _plain_path refuses: %, \\, ;, //, /.


def _plain_path(path: bytes) -> bool:
    """A path (from `target_path`) that every rule of `canonical_paths` leaves as it
    is but for the case: no ``%``, ``\\`` or ``;``, no empty segment (``//``, a
    trailing ``/``), no ``.`` or ``..`` segment (no ``/.`` at all). Its one canonical
    form is ``path.lower()``."""
    # One C search for the five substrings (each ``in`` on bytes costs ~2k instructions
    # in compiled code: CPython tries the operand as an int first).
    return _NOT_PLAIN.search(path) is None and (path[-1:] != b"/" or path == b"/")


def canonical_paths(path: bytes) -> set[bytes]:
    """The forms a backend might read ``path`` as, for matching (over-inclusive on
    purpose: matching too much costs a buffered body, too little a bypass):
    percent-decoded (repeatedly, as a chain of decoders would), ``\\`` read as ``/``,
    ``;params`` dropped from every segment (servlet containers do), empty and ``.``
    segments dropped, lower-cased; once with ``..`` resolved (RFC 3986 §5.2.4), once
    without."""
    if path[:1] == b"/" and _plain_path(path):
        return {path.lower()}
    for _ in range(4):
        if b"%" not in path:
            break
        path = unquote_to_bytes(path)
    path = path.replace(b"\\", b"/").lower()
    plain: list[bytes] = []
    resolved: list[bytes] = []
    for segment in path.split(b"/"):
        segment = segment.split(b";", 1)[0]
        if not segment or segment == b".":
            continue
        plain.append(segment)
        if segment == b"..":
            if resolved:
                resolved.pop()
        else:
            resolved.append(segment)
    return {b"/" + b"/".join(plain), b"/" + b"/".join(resolved)}


def login_kind(method: bytes, target: bytes) -> str | None:
    """FORM or SOAP when the request may be a login, else None. Only POST logs in
    (methods are case-sensitive, RFC 9110 §9.1)."""
    if method != b"POST":
        return None
    path = target_path(target)
    if not path:
        return None
    forms = canonical_paths(path)
    if any(p.startswith(b"/service/soap") for p in forms):
        return SOAP
    if b"/login" in forms:
        return FORM
    return None


# ------------------------------------------------------------ login bodies

# What a SOAP body must contain for a server to find an AuthRequest in it: the
# element name (no XML escape can spell a name; any case, to be safe), a JSON \u
# escape of an ASCII letter (which could spell it in a key; no ordinary encoder
# escapes letters), or a NUL byte (UTF-16/32 text, which does not spell it in
# these bytes). One alternation, searched by the C engine in linear time.
_MARKER: Final = re.compile(rb"[Aa][Uu][Tt][Hh][Rr][Ee][Qq][Uu][Ee][Ss][Tt]"
                     rb"|\\u00(?:4[1-9A-Fa-f]|5[0-9Aa]|6[1-9A-Fa-f]|7[0-9Aa])|\x00")
_MARKER_SPAN: Final = 10             # the longest marker minus one: kept across pieces


def has_login_marker(data: bytes) -> bool:
    return _MARKER.search(data) is not None


class LoginMarkerScan:
    """`has_login_marker` over a body that arrives in pieces (a marker may straddle
    two). Feed each piece before forwarding it: True means stop, do not send it."""

    def __init__(self, seen: bytes = b"") -> None:
        self._tail = seen[-_MARKER_SPAN:]

    def feed(self, data: bytes) -> bool:
        hit = (_MARKER.search(self._tail + data[:_MARKER_SPAN]) is not None
               or _MARKER.search(data) is not None)
        self._tail = (self._tail + data)[-_MARKER_SPAN:] if len(data) < _MARKER_SPAN \
            else data[-_MARKER_SPAN:]
        return hit


_XML_DECL: Final = re.compile(rb"<\?xml[ \t\r\n][^>]{0,300}>")
_XML_ENCODING: Final = re.compile(rb"encoding[ \t\r\n]*=[ \t\r\n]*[\"']([^\"']{0,40})[\"']")


def soap_body_problem(head: bytes) -> str | None:
    """Why a SOAP body starting with ``head`` is refused, None when it is fine: it
    must be JSON or XML in an ASCII-compatible encoding we read the same way as the
    server (Xerces also reads EBCDIC or UTF-16, in which no marker shows)."""
    text = head[3:] if head.startswith(b"\xef\xbb\xbf") else head
    text = text.lstrip(b" \t\r\n")
    if not text:
        return None
    if text[:1] not in (b"{", b"["):
        if text[:1] != b"<":
            return "a SOAP body must be JSON or XML"
        decl = _XML_DECL.match(text)
        if decl:
            enc = _XML_ENCODING.search(decl.group())
            if enc and enc.group(1).lower() not in XML_ENCODINGS:
                return "a SOAP body must be UTF-8, ASCII or ISO-8859-1"
    return None


def login_name(kind: str, body: bytes) -> str | None:
    """The name a complete login body gives: '' when it gives none; None when a SOAP
    body is not a login. Raises BadLogin for a login we cannot read unambiguously
    (two usernames or AuthRequests, duplicate JSON keys, too deep, too many parts,
    a DOCTYPE, control characters in the name), and for a SOAP body that spells a
    login but does not parse. Linear in the body; bounded work per byte."""
    if kind == FORM:
        try:
            fields = parse_qs(body.decode("utf-8", "replace"),
                              max_num_fields=MAX_FORM_FIELDS)
        except ValueError:
            raise BadLogin("too many form fields") from None
        names = fields.get("username", [])
        if len(names) > 1:
            raise BadLogin("more than one username")
        return _checked(names[0]) if names else ""
    problem = soap_body_problem(body[:512])
    if problem:
        raise BadLogin(problem)
    if not has_login_marker(body):
        return None
    text = body[3:] if body.startswith(b"\xef\xbb\xbf") else body
    if text.lstrip(b" \t\r\n")[:1] == b"<":
        requests = _xml_auth_requests(body)
    else:
        requests = _json_auth_requests(text)
    if requests is None:
        raise BadLogin("a login request that does not parse")
    if not requests:
        return None
    if len(requests) > 1:
        raise BadLogin("more than one AuthRequest")
    return _checked(requests[0])


def _checked(name: str) -> str:
    """The same rule as the mail logins (sasl.decode_username): no control characters."""
    if not name:
        return ""
    try:
        return decode_username(name.encode("utf-8", "surrogatepass"))
    except AuthDataError as exc:
        raise BadLogin(str(exc)) from None


def _json_auth_requests(body: bytes) -> list[str] | None:
    """Account names of every AuthRequest in a JSON SOAP body (any depth: Body, a
    BatchRequest); None when it is not JSON."""
    objects = 0

    def pairs(items):
        nonlocal objects
        objects += 1
        if objects > MAX_JSON_OBJECTS:
            raise BadLogin("too many JSON objects")
        obj = dict(items)
        if len(obj) != len(items):
            raise BadLogin("duplicate keys in a JSON object")
        return obj

    try:
        doc = json.loads(body, object_pairs_hook=pairs)
    except RecursionError:              # the C decoder's guard: nesting is bounded
        raise BadLogin("JSON nested too deeply") from None
    except ValueError:                  # not JSON (UnicodeDecodeError included)
        return None
    names: list[str] = []
    stack = [(doc, 0)]
    while stack:                        # iterative: no recursion on attacker depth
        node, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise BadLogin("JSON nested too deeply")
        if isinstance(node, dict):
            for key, value in node.items():
                if key.lower() == "authrequest":
                    for request in value if isinstance(value, list) else [value]:
                        names.append(_json_account(request))
                stack.append((value, depth + 1))
        elif isinstance(node, list):
            stack.extend((item, depth + 1) for item in node
                         if isinstance(item, (dict, list)))
    return names


def _json_account(request) -> str:
    account = request.get("account") if isinstance(request, dict) else None
    if isinstance(account, list):
        if len(account) > 1:
            raise BadLogin("more than one account in an AuthRequest")
        account = account[0] if account else None
    if isinstance(account, dict):
        account = account.get("_content", "")
    return "" if account is None or isinstance(account, (dict, list)) else str(account)


def _xml_auth_requests(body: bytes) -> list[str] | None:
    """Account names of every AuthRequest element in an XML SOAP body (any
    namespace, any depth); None when it is not well-formed XML. Expat reads it in
    linear time; a DOCTYPE (entity expansion) is refused, as Zimbra does."""
    parser = xml.parsers.expat.ParserCreate(namespace_separator=" ")
    parser.buffer_text = True
    names: list[str] = []
    stack: list[str] = []
    elements = 0
    auth_depth = -1                    # depth of the AuthRequest being read
    account: list[str] | None = None   # text of its <account>, while inside it

    def refuse(*_):
        raise BadLogin("XML with a DOCTYPE or entity declaration")

    def start(name, _attrs):
        nonlocal elements, auth_depth, account
        elements += 1
        if elements > MAX_XML_ELEMENTS:
            raise BadLogin("too many XML elements")
        if len(stack) >= MAX_DEPTH:
            raise BadLogin("XML nested too deeply")
        local = name.rsplit(" ", 1)[-1].lower()
        if local == "authrequest":
            if auth_depth >= 0:
                raise BadLogin("an AuthRequest inside an AuthRequest")
            auth_depth = len(stack)
            names.append("")
        elif local == "account" and auth_depth >= 0 and len(stack) == auth_depth + 1:
            if account is not None or names[-1]:
                raise BadLogin("more than one account in an AuthRequest")
            account = []
        stack.append(local)

    def end(_name):
        nonlocal auth_depth, account
        stack.pop()
        if account is not None and len(stack) == auth_depth + 1:
            names[-1] = "".join(account).strip()
            account = None
        elif len(stack) == auth_depth:
            auth_depth = -1

    def text(data):
        if account is not None and len(stack) == auth_depth + 2:
            account.append(data)

    parser.StartDoctypeDeclHandler = refuse
    parser.EntityDeclHandler = refuse
    parser.StartElementHandler = start
    parser.EndElementHandler = end
    parser.CharacterDataHandler = text
    try:
        parser.Parse(body, True)
    except xml.parsers.expat.ExpatError:
        return None
    return names


# ----------------------------------------------------------------- headers

# Forwarding headers a client could use to speak for the proxy (M3): removed from
# every request; ours (X-Forwarded-For, -Proto, X-Real-IP) are then set.
FORWARDING: Final = frozenset({
    b"forwarded", b"x-forwarded-for", b"x-originating-ip", b"x-client-ip",
    b"true-client-ip", b"x-real-ip", b"x-cluster-client-ip", b"client-ip",
})


def without_underscored(req: http11.Request) -> http11.Request:
    """The request without header fields whose name holds ``_`` (nginx's
    ``underscores_in_headers off``): ``X_Real_IP`` is X-Real-IP to some backends
    (CGI-style name mapping) and must not slip past the rules above."""
    # one C search over the names joined (not an ``in`` per name, ~2k instructions each)
    if b"".join([name for name, _ in req.headers]).find(b"_") < 0:
        return req
    return replace(req, headers=[(n, v) for n, v in req.headers if b"_" not in n])


def upstream_headers(headers: http11.Headers, *, client_ip: str, scheme: str,
                     extend_forwarded_for: bool = False) -> http11.Headers:
    """Request headers as a mailbox server gets them: the client's forwarding
    headers (`FORWARDING`, every ``X-Forwarded-*``) dropped, then our own set.
    X-Forwarded-For is the client address alone, because backends such as Jetty
    believe its leftmost entry; ``extend_forwarded_for`` (a trusted PROXY-protocol
    hop that speaks HTTP and sets the header itself) appends to what came instead."""
    out: http11.Headers = []
    chain: list[bytes] = []
    for name, value in headers:
        low = name.lower()
        if low == b"x-forwarded-for":
            chain.append(value)
        elif low not in FORWARDING and not low.startswith(b"x-forwarded-"):
            out.append((name, value))
    client = client_ip.encode()
    forwarded_for = b", ".join([*chain, client]) if extend_forwarded_for and chain else client
    out += [(b"X-Forwarded-For", forwarded_for), (b"X-Forwarded-Proto", scheme.encode()),
            (b"X-Real-IP", client)]
    return out


_FORWARD_DROP: Final = http11.HOP_BY_HOP | (FORWARDING - {b"x-forwarded-for"})


def forward_request_headers(headers: http11.Headers, *, client_ip: str, scheme: str,
                            extend_forwarded_for: bool = False,
                            drop: frozenset[bytes] = frozenset()
                            ) -> tuple[http11.Headers, bool]:
    """``upstream_headers(remove_headers(remove_hop_by_hop(headers), *drop), ...)`` in
    one pass over the client's headers (``drop`` lower-cased, never ``host``), and
    whether a Host header is among them (the proxy adds one when not)."""
    lows = [name.lower() for name, _ in headers]
    gone = _FORWARD_DROP | drop if drop else _FORWARD_DROP
    if b"connection" in lows:            # what it names is hop-by-hop (X-Forwarded-For too)
        gone = gone | http11.connection_named(headers, lows)
    out: http11.Headers = []
    chain: list[bytes] = []
    host = False
    for header, low in zip(headers, lows):
        if low in gone:
            continue
        if low == b"x-forwarded-for":
            chain.append(header[1])
        elif not low.startswith(b"x-forwarded-"):
            if low == b"host":
                host = True
            out.append(header)
    client = client_ip.encode()
    forwarded_for = b", ".join([*chain, client]) if extend_forwarded_for and chain else client
    out += [(b"X-Forwarded-For", forwarded_for), (b"X-Forwarded-Proto", scheme.encode()),
            (b"X-Real-IP", client)]
    return out, host


# ---------------------------------------------------------------- upgrades

def websocket_request(req: http11.Request) -> bool:
    """A WebSocket opening handshake (RFC 6455 §4.1): GET on HTTP/1.1 with
    ``Connection: upgrade``, ``Upgrade: websocket`` and nothing else, one
    Sec-WebSocket-Key (16 bytes in base64) and one Sec-WebSocket-Version. Only
    this becomes a tunnel; any other Upgrade (h2c ...) is dropped as hop-by-hop
    and the request goes on as plain HTTP (RFC 9110 §7.8: a server may ignore it)."""
    if req.body_mode.kind != "upgrade" or req.method != b"GET" or req.version != b"1.1":
        return False
    if http11.header_tokens(req.headers, b"upgrade") != [b"websocket"]:
        return False
    keys = http11.get_all(req.headers, b"sec-websocket-key")
    versions = http11.get_all(req.headers, b"sec-websocket-version")
    if len(keys) != 1 or len(versions) != 1 or not versions[0].isdigit():
        return False
    try:
        return len(base64.b64decode(keys[0], validate=True)) == 16
    except ValueError:
        return False


def websocket_accepted(resp: http11.Response) -> bool:
    """A 101 that switches to what we asked for: WebSocket (RFC 9110 §15.2.2: a
    server MUST NOT switch to a protocol the client did not list)."""
    return (resp.status == 101
            and http11.header_tokens(resp.headers, b"upgrade") == [b"websocket"]
            and b"upgrade" in http11.header_tokens(resp.headers, b"connection"))


# -------------------------------------------------------------------- bodies

class BodyDeadline:
    """How long to wait for the next piece of a request body. A body must keep
    moving (``idle`` seconds at most between pieces, nginx's client_body_timeout)
    and, after a first ``idle`` seconds of grace, average ``min_rate`` bytes a
    second (Apache mod_reqtimeout's MinRate): a client that trickles a byte per
    idle period is cut. ``min_rate`` 0: only the idle limit."""

    __slots__ = ("started", "idle", "min_rate", "received")

    def __init__(self, now: float, idle: float, min_rate: float) -> None:
        self.started, self.idle, self.min_rate = now, idle, min_rate
        self.received = 0

    def timeout(self, now: float) -> float:
        """Seconds to wait for more; <= 0: the body is too slow, give up now."""
        if self.min_rate <= 0:
            return self.idle
        allowed = self.started + self.idle + self.received / self.min_rate
        return min(self.idle, allowed - now)


# ----------------------------------------------------------------- routing

# Carbonio's order for a web request's mailbox server (its zmauth upstream logic):
# a REST path, ActiveSync's Basic-auth user (else its User= argument), a DAV path,
# the auth token (cookie, else zauthtoken=), else balanced (`route_hint`).
REST: Final = "rest"
ACTIVESYNC: Final = "activesync"
DAV: Final = "dav"
TOKEN: Final = "token"
BALANCED: Final = "balanced"

ACTIVESYNC_PATH: Final = b"/microsoft-server-activesync"    # matched without case
_REST_PREFIXES: Final = (b"/home/", b"/service/home/")
_DAV_PREFIXES: Final = (b"/dav/", b"/principals/users/")
_ACTIVESYNC_DIR: Final = ACTIVESYNC_PATH + b"/"
MAX_USER: Final = 320                # RFC 5321 §4.5.3.1: 64 (local part) + "@" + 255 (domain)
MAX_BASIC_TOKEN: Final = 2048        # base64 of a user and a password; real ones are < 200
MAX_QUERY_ARGS: Final = 100
# Never in a name we route by: path and query delimiters (a name that spells one would
# be read as another path by the server), "%" (a second decoding), controls, spaces.
_NOT_IN_USER: Final = re.compile(r"[\x00-\x20\x7f-\x9f/\\?#%;&=\"<>\u2028\u2029]")


@dataclass(frozen=True, slots=True)
class Basic:
    """``Authorization: Basic`` credentials (RFC 7617). ``typed`` is the user-id as
    sent, ``login`` the account it names (``DOMAIN\\user`` is ``user@DOMAIN``), or ''
    when it is no name to route by (then the login is still checked and counted, on
    ``typed``: a server may read a name we do not). The password is never shown by
    repr, never logged: the glue keys a hash of it."""
    typed: str
    login: str
    secret: bytes = field(repr=False)

    @property
    def counted(self) -> str:
        """The name the user throttle and the audit go by."""
        return self.login or self.typed


@dataclass(frozen=True, slots=True)
class RouteHint:
    """What a request names to route by, in Carbonio's order: ``user`` (a login, from
    the REST path, ActiveSync's credentials or User=, or the DAV path), else
    ``zimbra_id`` (from the auth token), else nothing (balanced). ``basic`` is any
    Basic credential the request carries, wherever it goes: a login to audit and
    throttle."""
    by: str = BALANCED
    user: str = ""
    zimbra_id: str = ""
    basic: Basic | None = None


def checked_user(name: str) -> str:
    """``name`` as a login to route by, or '' when it cannot be one: empty, over
    MAX_USER, a control or space, a path or query delimiter, ``%``, more than one
    ``@``. ``DOMAIN\\user`` (the Windows form) becomes ``user@DOMAIN``."""
    if "\\" in name:
        domain, _, user = name.partition("\\")
        if not domain or not user or "@" in user or "@" in domain or "\\" in user:
            return ""
        name = f"{user}@{domain}"
    if not name or len(name) > MAX_USER or _NOT_IN_USER.search(name) \
            or name.count("@") > 1 or name.startswith("@") or name.endswith("@"):
        return ""
    return name


def basic_auth(headers: http11.Headers) -> Basic | None:
    """The Basic credentials of a request, or None: no Authorization, another
    scheme, more than one Authorization field, base64 that is not strict or longer
    than MAX_BASIC_TOKEN, no ``:`` (RFC 7617 §2). A user-id that is not UTF-8 is read
    as ISO-8859-1; one that is no name (`checked_user`) gives ``login`` ''."""
    return _basic_of(http11.get_all(headers, b"authorization"))


def _basic_of(values: list[bytes]) -> Basic | None:
    """`basic_auth` of the Authorization values."""
    if len(values) != 1:
        return None
    scheme, _, token = values[0].strip().partition(b" ")
    token = token.strip()
    if scheme.lower() != b"basic" or not token or len(token) > MAX_BASIC_TOKEN:
        return None
    try:
        raw = base64.b64decode(token, validate=True)
    except ValueError:
        return None
    user_id, colon, secret = raw.partition(b":")
    if not colon:
        return None
    try:
        typed = user_id.decode("utf-8")
    except UnicodeDecodeError:
        typed = user_id.decode("latin-1")
    return Basic(typed, checked_user(typed.strip()), secret)


def cookie_value(headers: http11.Headers, name: bytes) -> bytes | None:
    """The first ``name=value`` of the Cookie fields."""
    return _cookie_of(http11.get_all(headers, b"cookie"), name)


def _cookie_of(values: list[bytes], name: bytes) -> bytes | None:
    """`cookie_value` of the Cookie values."""
    for value in values:
        for part in value.split(b";"):
            key, _, val = part.strip().partition(b"=")
            if key == name:
                return val
    return None


def query_arg(target: bytes, name: bytes) -> bytes | None:
    """The one value of a query argument (name matched without case, as nginx's
    ``$arg_``), percent-decoded; None when absent, repeated (ambiguous: which one
    would the server read?) or past MAX_QUERY_ARGS."""
    _, q, query = target.partition(b"?")
    if not q:
        return None
    found: list[bytes] = []
    for i, pair in enumerate(query.split(b"#", 1)[0].split(b"&")):
        if i >= MAX_QUERY_ARGS:
            return None
        key, _, value = pair.partition(b"=")
        if key.lower() == name:
            found.append(value)
    return unquote_to_bytes(found[0]) if len(found) == 1 else None


def path_user(path: bytes, prefixes: tuple[bytes, ...]) -> str | None:
    """The user segment after one of ``prefixes`` (``/dav/<user>/…``), decoded once;
    '' when the path has one of the prefixes but no usable user (then the request is
    not routed by its path); None when the prefix does not match. A path with an
    encoded ``/`` or ``\\``, a ``\\``, a dot segment, or an encoding left after one
    decoding is never routed by its path: a server might read another user in it."""
    if not path.startswith(prefixes):        # the usual case: one C call
        return None
    prefix = next(p for p in prefixes if path.startswith(p))
    low = path.lower()
    if b"%2f" in low or b"%5c" in low or b"\\" in path:
        return ""
    decoded = unquote_to_bytes(path)
    if any(s in (b".", b"..") for s in decoded.split(b"/")):
        return ""
    segment = decoded[len(prefix):].split(b"/", 1)[0]
    try:
        user = segment.decode("utf-8")
    except UnicodeDecodeError:
        return ""
    return checked_user(user.removeprefix("~"))


def route_hint(target: bytes, headers: http11.Headers, *, admin: bool = False) -> RouteHint:
    """What to route a (non-login) request by, in Carbonio's order (see RouteHint).
    Anything malformed names nobody and the next rule applies; nothing here raises."""
    authorization: list[bytes] = []
    cookies: list[bytes] = []
    for name, value in headers:          # one pass for both (each name lowered once)
        low = name.lower()
        if low == b"cookie":
            cookies.append(value)
        elif low == b"authorization":
            authorization.append(value)
    basic = _basic_of(authorization)
    path = target_path(target) if target.startswith(b"/") else b""
    if not admin and path:
        user = path_user(path, _REST_PREFIXES)
        if user:
            return RouteHint(REST, user=user, basic=basic)
        low_path = path.lower()
        if low_path == ACTIVESYNC_PATH or low_path.startswith(_ACTIVESYNC_DIR):
            user = basic.login if basic else ""
            if not user:
                arg = query_arg(target, b"user")
                if arg is not None:
                    try:
                        user = checked_user(arg.decode("utf-8"))
                    except UnicodeDecodeError:
                        user = ""
            if user:
                return RouteHint(ACTIVESYNC, user=user, basic=basic)
        user = path_user(path, _DAV_PREFIXES)
        if user:
            return RouteHint(DAV, user=user, basic=basic)
    token = _cookie_of(cookies, b"ZM_ADMIN_AUTH_TOKEN" if admin else b"ZM_AUTH_TOKEN")
    zimbra_id = zimbra_id_from_token(token) if token else None
    if not zimbra_id:
        arg = query_arg(target, b"zauthtoken")
        zimbra_id = zimbra_id_from_token(arg) if arg else None
    if zimbra_id:
        return RouteHint(TOKEN, zimbra_id=zimbra_id, basic=basic)
    return RouteHint(BALANCED, basic=basic) if basic is not None else _BALANCED


# The hint of most requests: frozen, so one instance serves them all (a RouteHint made
# per request costs ~6k instructions: the dataclass __init__ is interpreted).
_BALANCED: Final = RouteHint(BALANCED)


def basic_protocol(target: bytes) -> str:
    """The audit ``protocol=`` of a Basic-auth login, Zimbra's names for them:
    ``zsync`` (ActiveSync), ``http_dav`` (CalDAV/CardDAV), else ``http_basic``."""
    path = target_path(target).lower()
    if path == ACTIVESYNC_PATH or path.startswith(ACTIVESYNC_PATH + b"/"):
        return "zsync"
    if path.startswith(_DAV_PREFIXES) or path.startswith(b"/.well-known/ca"):
        return "http_dav"
    return "http_basic"


class CredentialCache:
    """Basic credentials that recently logged in, so that a phone's steady traffic
    (credentials on every request) is audited and counted as one login, not one per
    request. Holds keyed hashes only (HMAC-SHA256 with a key of the process's own,
    never written anywhere): no password, no reversible form. Bounded in size
    (oldest first out) and in time (``ttl`` seconds); the clock is the caller's."""

    def __init__(self, key: bytes, *, ttl: float = 600.0, size: int = 10000) -> None:
        self._key, self.ttl, self.size = key, ttl, size
        self._seen: dict[bytes, float] = {}       # insertion-ordered: oldest first

    def digest(self, login: str, secret: bytes) -> bytes:
        return hmac.new(self._key, login.encode("utf-8", "surrogatepass") + b"\0" + secret,
                        hashlib.sha256).digest()

    def fresh(self, digest: bytes, now: float) -> bool:
        until = self._seen.get(digest)
        if until is None:
            return False
        if until <= now:
            del self._seen[digest]
            return False
        return True

    def remember(self, digest: bytes, now: float) -> None:
        self._seen.pop(digest, None)
        while len(self._seen) >= self.size:
            del self._seen[next(iter(self._seen))]
        self._seen[digest] = now + self.ttl

    def forget(self, digest: bytes) -> None:
        self._seen.pop(digest, None)

    def __len__(self) -> int:
        return len(self._seen)


# ---------------------------------------------------------------- timeouts

POLLING: Final = "polling_timeout"   # a path_timeouts value: web.polling_timeout's


def path_timeout(target: bytes, table: dict[str, float | str], read_timeout: float,
                 polling_timeout: float) -> float:
    """How long to wait for the response head (and between two pieces of its body) of
    a request to ``target``: the longest prefix of ``table`` (matched without case on
    the normalised path, `canonical_paths`) that the path starts with, ``POLLING``
    meaning ``polling_timeout``; else ``read_timeout``."""
    path = target_path(target)
    if not path or not table:
        return read_timeout
    # settings.PathTimeouts holds the prefixes encoded, longest first (made once when
    # the settings were read); a plain dict (tests, callers of this function) is
    # encoded here the same way.
    prefixes: tuple[tuple[bytes, float | str], ...] | None = getattr(table, "encoded", None)
    if prefixes is None:
        prefixes = tuple(sorted(((prefix.lower().encode("utf-8"), seconds)
                                 for prefix, seconds in table.items()),
                                key=lambda pair: -len(pair[0])))
    if path[:1] == b"/" and _plain_path(path):
        low_path = path.lower()
        for low, seconds in prefixes:
            if low_path.startswith(low):
                return polling_timeout if seconds == POLLING else float(seconds)
        return read_timeout
    forms = canonical_paths(path)
    for low, seconds in prefixes:          # the longest prefix any form starts with
        for form in forms:
            if form.startswith(low):
                return polling_timeout if seconds == POLLING else float(seconds)
    return read_timeout
