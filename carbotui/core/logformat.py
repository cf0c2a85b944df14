"""The lines of access.log and sessions.log, from plain values (pure: no I/O).

access.log: one line per web request, in Carbonio's ``nginx.access.log`` field order::

    $remote_addr:$remote_port - $remote_user [$time_local] "$request_method $scheme://$host$request_uri $server_protocol" $status $bytes_sent "$http_referer" "$http_user_agent" "$upstream_addr" "$server_addr:$server_port"

    127.0.0.1:50412 - - [01/Dec/2026:12:40:03 +0000] "GET https://mail.demo.test/mail?zauthtoken=-&view=1 HTTP/1.1" 200 1432 "-" "curl/7.88.1" "127.0.0.2:8080" "127.0.0.1:10443"

Every field a client controls (method, Host, target, Referer, User-Agent, the Basic user
name) is escaped as nginx's ``escape=default`` does: ``"``, ``\\`` and every byte outside
printable ASCII become ``\\xHH`` (so CR, LF, NUL and bytes that are not UTF-8 cannot forge or
break a line), and each field is cut to a fixed length (``...`` marks a cut), which keeps a
line below PIPE_BUF (4096 bytes): one ``write()`` on an O_APPEND descriptor, never
interleaved with another worker's. Query and path-parameter values whose name says token,
auth, password, secret, session ... (``zauthtoken``, ``authtoken``, ``jsessionid``) become
``-`` (in the target and the Referer); userinfo in a URL is dropped; ``$remote_user`` is
only the user name of a Basic ``Authorization``, never its password; cookies are never an
input. ``$host`` is nginx's: the name, lower case, without the port.

sessions.log: one line per ended (logged-in) mail session, ``key=value`` pairs::

    2026-12-01T12:40:03.512+00:00 protocol=imaps client=127.0.0.1:50418 account=user01@demo.test server=mbox1 duration=0.084 bytes_in=52 bytes_out=1169 reason=logout worker=proxy_01 session=10000000007

A value made only of ``[A-Za-z0-9._@:+/-]`` (and ``[]`` around an IPv6 address) stands
bare; any other is double-quoted with ``"``, ``\\``, space and every byte outside printable
ASCII as ``\\xHH``, cut to a fixed length: no value holds a space, so splitting a line on
spaces always gives its pairs.
"""
from __future__ import annotations

import base64
import binascii
import re
import time
from typing import Final
from urllib.parse import unquote_to_bytes

PIPE_BUF = 4096          # POSIX: a write this size or smaller to a pipe is atomic

# Field budgets (characters after escaping). Their sum plus the fixed part of a line stays
# below PIPE_BUF, whatever a client sends.
METHOD_MAX: Final = 20
HOST_MAX: Final = 260
URI_MAX: Final = 1600
REFERER_MAX: Final = 600
USER_AGENT_MAX: Final = 600
USER_MAX: Final = 100
VALUE_MAX: Final = 330          # a sessions.log value (an address is at most 320 characters)
CUT: Final = "..."

_ESCAPE: Final = [f"\\x{b:02X}" if b < 0x20 or b > 0x7e or b in (0x22, 0x5c) else chr(b)
           for b in range(256)]
_ESCAPE_SPACE: Final = [*_ESCAPE[:0x20], "\\x20", *_ESCAPE[0x21:]]
_PLAIN: Final = re.compile(rb"[\x20\x21\x23-\x5b\x5d-\x7e]*")      # printable ASCII but " and \
_PLAIN_WORD: Final = re.compile(rb"[\x21\x23-\x5b\x5d-\x7e]*")      # ... and no space
_PLAIN_BYTES: Final = bytes(b for b in range(0x20, 0x7f) if b not in (0x22, 0x5c))   # as _PLAIN


def escape(raw: bytes | str, limit: int, *, space: bool = False) -> str:
    """``raw`` as nginx's access log writes it (``\\xHH`` for ``"``, ``\\`` and bytes
    outside 0x20-0x7e; with ``space``, for spaces too: a field that stands unquoted), at
    most ``limit`` characters; ``-`` when empty."""
    if not raw:
        return "-"
    if isinstance(raw, str):
        raw = raw.encode("utf-8", "surrogateescape")
    if len(raw) <= limit and (_PLAIN_WORD if space else _PLAIN).fullmatch(raw):
        return raw.decode("ascii")                # the usual case: nothing to escape or cut
    if (_PLAIN_WORD if space else _PLAIN).fullmatch(raw, 0, limit + 1):
        text = raw[:limit + 1].decode("ascii")
    else:
        table = _ESCAPE_SPACE if space else _ESCAPE
        text = "".join([table[b] for b in raw[:limit + 1]])
    if len(text) <= limit:
        return text
    cut = limit - len(CUT)
    # every backslash in the text starts a 4-character \xHH: never cut one in half
    back = text.rfind("\\", max(0, cut - 3), cut)
    if back >= 0:
        cut = back
    return text[:cut] + CUT


# --- secrets in a request target ------------------------------------------------------------

_SECRET_PART: Final = re.compile(rb"token|auth|passw|secret|sess|jwt|credential|signature|apikey|"
                          rb"api_key|ticket|otp")
_SECRET_NAMES: Final = {b"pw", b"pwd", b"pass", b"key", b"sig", b"code", b"sid", b"csrf"}
# Could any parameter of this (not percent-encoded) text be a secret one? Cheap first look.
_MAYBE_SECRET: Final = re.compile(rb"(?i)token|auth|passw|secret|sess|jwt|credential|signature|"
                           rb"apikey|api_key|ticket|otp|(?:^|[?&;/])(?:pw|pwd|pass|key|sig|code|"
                           rb"sid|csrf)(?:=|$)")
_ABSOLUTE: Final = re.compile(rb"(?i)([a-z][a-z0-9+.-]*://)([^/?#]*)")
REDACTED: Final = b"-"


def secret_name(name: bytes) -> bool:
    """Whether a query or path parameter of this name may carry a credential
    (``zauthtoken``, ``authToken``, ``JSESSIONID``, ``password`` ...); percent-encoding
    and case do not hide one."""
    plain = unquote_to_bytes(name).lower().strip()
    return plain in _SECRET_NAMES or _SECRET_PART.search(plain) is not None


def _redact_params(text: bytes, sep: bytes) -> bytes:
    parts = text.split(sep)
    changed = False
    for i, part in enumerate(parts):
        name, eq, _ = part.partition(b"=")
        if eq and secret_name(name):
            parts[i] = name + b"=" + REDACTED
            changed = True
    return sep.join(parts) if changed else text


def clean_target(target: bytes) -> tuple[bytes, bytes]:
    """(authority, request URI) of a request target for the log: an absolute-form
    target gives its authority without userinfo (RFC 9112 §3.2.2: it wins over Host),
    others ``b""``; the URI keeps its path and query, with the values of secret
    parameters (query, and ``;name=value`` path parameters) replaced by ``-`` and no
    fragment."""
    authority = b""
    if target[:1] != b"/":
        m = _ABSOLUTE.match(target)
        if m:
            authority = m.group(2).rpartition(b"@")[2]
            target = target[m.end():] or b"/"
    # find, not `in`: CPython's `bytes in bytes` first tries the operand as an int and
    # formats the TypeError it gets (twice the cost of the search itself)
    find = target.find
    if find(b"#") >= 0:
        target = target.partition(b"#")[0]
        find = target.find
    if (find(b"?") < 0 and find(b";") < 0) or \
            (find(b"%") < 0 and not _MAYBE_SECRET.search(target)):
        return authority, target                  # the usual case: nothing to redact
    path, q, query = target.partition(b"?")
    if path.find(b";") >= 0:
        path = b"/".join(_redact_params(seg, b";") for seg in path.split(b"/"))
    if q:
        query = _redact_params(query, b"&")
    return authority, path + q + query


def clean_url(url: bytes) -> bytes:
    """A URL a client sent (the Referer) for the log: as ``clean_target``, keeping the
    scheme and the authority (without userinfo)."""
    find = url.find
    if not url or (find(b"?") < 0 and find(b";") < 0 and find(b"@") < 0 and find(b"#") < 0):
        return url
    m = _ABSOLUTE.match(url)
    if not m:
        return clean_target(url)[1]
    authority, rest = clean_target(url)
    return m.group(1) + authority + (rest if url[m.end():] else b"")


def basic_user(authorization: bytes | None) -> bytes:
    """The user name of a Basic ``Authorization`` (RFC 7617), never the password; b""
    for any other scheme or a value that is not one."""
    if not authorization:
        return b""
    scheme, _, value = authorization.strip().partition(b" ")
    if scheme.lower() != b"basic":
        return b""
    try:
        decoded = base64.b64decode(value.strip()[:1024], validate=True)
    except (binascii.Error, ValueError):
        return b""
    user, colon, _ = decoded.partition(b":")
    return user if colon else b""


# --- time stamps ----------------------------------------------------------------------------

_MONTHS: Final = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
# "000".."999" by index (an f-string's :03d costs a format call per line)
_MILLIS: Final = tuple([f"{i:03d}" for i in range(1000)])


class _LocalStamp:
    """time_local's text for the current second (a compiled object's attributes: no
    module-dictionary lookup, no tuple to unpack per line)."""

    def __init__(self) -> None:
        self.second = -1
        self.text = ""          # 01/Dec/2026:12:40:03 +0000


_LOCAL: Final = _LocalStamp()


def time_local(timestamp: float) -> str:
    """nginx's $time_local: ``01/Dec/2026:12:40:03 +0000`` (English month names whatever
    the locale), remembered for the current second."""
    stamp = _LOCAL
    second = int(timestamp)
    if stamp.second != second:
        t = time.localtime(second)
        stamp.text = (f"{t.tm_mday:02d}/{_MONTHS[t.tm_mon - 1]}/{t.tm_year}:"
                      f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} "
                      f"{time.strftime('%z', t)}")
        stamp.second = second
    return stamp.text


class _IsoStamp:
    """iso_time's text for the current second (attributes of a compiled class: no
    module-dictionary lookups, no tuple to unpack per line)."""

    def __init__(self) -> None:
        self.second = -1
        self.text = ""          # 2026-12-01T12:40:03
        self.zone = ""          # +00:00


_ISO: Final = _IsoStamp()


def _iso_millis(timestamp: float) -> str:
    """The milliseconds of iso_time; _ISO made current for the second."""
    stamp = _ISO
    second = int(timestamp)
    if stamp.second != second:
        t = time.localtime(second)
        zone = time.strftime("%z", t)
        stamp.text = time.strftime("%Y-%m-%dT%H:%M:%S", t)
        stamp.zone = f"{zone[:3]}:{zone[3:]}"
        stamp.second = second
    millis = min(999, int((timestamp - second) * 1000))
    return _MILLIS[millis] if millis >= 0 else f"{millis:03d}"     # < 0: before 1970


def iso_time(timestamp: float) -> str:
    """``2026-12-01T12:40:03.512+00:00``: local time with milliseconds and the offset."""
    millis = _iso_millis(timestamp)
    return f"{_ISO.text}.{millis}{_ISO.zone}"


# --- access.log -----------------------------------------------------------------------------

# Escaped texts of fields that repeat from request to request (methods, versions, Host
# values, User-Agents): a dict lookup instead of escaping per line. Each is a pure function
# of its key (escape() of it, as the strict path writes it); keys no longer than the
# field's budget, at most _TEXTS_MAX of each (emptied when full: ~2 MB at most). Targets
# and Referers are not kept (they vary, and may hold secrets before clean_target).
_METHODS: Final[dict[bytes, str]] = {}
_VERSIONS: Final[dict[bytes, str]] = {}
_HOSTS: Final[dict[bytes, str]] = {}
_AGENTS: Final[dict[bytes, str]] = {}
_TEXTS_MAX: Final = 1024
# A request target made only of these (and starting with "/") has nothing to redact, cut
# from or escape: printable ASCII but " and \, and none of ? ; # (query, path parameter,
# fragment)
_PLAIN_PATH: Final = bytes(b for b in _PLAIN_BYTES if b not in b"?;#")


def _kept(cache: dict[bytes, str], raw: bytes, limit: int) -> str:
    """escape(raw, limit), from ``cache`` when it was made before."""
    text = cache.get(raw)
    if text is None:
        text = escape(raw, limit)
        if len(raw) <= limit:
            if len(cache) >= _TEXTS_MAX:
                cache.clear()
            cache[raw] = text
    return text


def _host_text(authority: bytes) -> str:
    """escape(host_name(authority), HOST_MAX), from _HOSTS when it was made before."""
    text = _HOSTS.get(authority)
    if text is None:
        text = escape(host_name(authority), HOST_MAX)
        if len(authority) <= HOST_MAX:
            if len(_HOSTS) >= _TEXTS_MAX:
                _HOSTS.clear()
            _HOSTS[authority] = text
    return text


def access_line(timestamp: float, client_ip: str, client_port: int, remote_user: bytes,
                method: bytes | None, scheme: str, host: bytes, target: bytes, version: bytes,
                status: int, bytes_sent: int, referer: bytes, user_agent: bytes,
                upstream: str, server_ip: str, server_port: int) -> str:
    """One access.log line (with its newline). ``method`` None: no request could be
    parsed (a 400 or 408 before a whole head), and the request field is ``"-"``.
    (Positional or keyword: the worker calls it positionally, once per request, which
    spares the compiled function's keyword matching.)

    Every client field is ``escape()``d with its budget: the method, version, Host and
    User-Agent from bounded caches of those texts, a target with nothing to redact or
    escape as it is (one C pass judges it), any other through clean_target."""
    if method is None:
        request = "-"
    else:
        if target[:1] == b"/" and len(target) <= URI_MAX \
                and not target.translate(None, _PLAIN_PATH):
            uri = target.decode("ascii")          # what clean_target and escape give it
            host_text = _host_text(host)
        else:
            authority, clean = clean_target(target)
            host_text = _host_text(authority or host)
            uri = escape(clean, URI_MAX)
        request = (f"{_kept(_METHODS, method, METHOD_MAX)} {scheme}://{host_text}{uri} "
                   f"HTTP/{_kept(_VERSIONS, version, 8)}")
    user = escape(remote_user, USER_MAX, space=True) if remote_user else "-"
    referer_text = escape(clean_url(referer), REFERER_MAX) if referer else "-"
    agent_text = _kept(_AGENTS, user_agent, USER_AGENT_MAX) if user_agent else "-"
    return (f"{_address(client_ip)}:{client_port} - {user} "
            f"[{time_local(timestamp)}] \"{request}\" {status} {bytes_sent} "
            f"\"{referer_text}\" \"{agent_text}\" "
            f"\"{upstream or '-'}\" \"{_address(server_ip)}:{server_port}\"\n")


def host_name(authority: bytes) -> bytes:
    """nginx's $host: the name of an authority, lower case, without its port."""
    name = authority.lower()
    if name.startswith(b"["):
        end = name.find(b"]")
        return name[:end + 1] if end > 0 else name
    return name.partition(b":")[0]


def _address(ip: str) -> str:
    return f"[{ip}]" if ":" in ip else (ip or "-")


# --- sessions.log ---------------------------------------------------------------------------

_BARE: Final = re.compile(r"[A-Za-z0-9._@:+/\[\]\-]{1,%d}" % VALUE_MAX)


# Values already found bare (protocols, reasons, workers, the node's accounts and
# servers): a set lookup instead of a regex per field per line. Bounded: emptied when full.
_KNOWN_BARE: Final[set[str]] = set()
KNOWN_BARE_MAX: Final = 4096


def value(text: str, limit: int = VALUE_MAX) -> str:
    """A sessions.log value: bare when it is made of safe characters, else quoted with
    ``"``, ``\\`` and bytes outside printable ASCII as ``\\xHH``; ``-`` when empty.
    (A bare value is never longer than VALUE_MAX, whatever ``limit``: so whether it is
    bare does not depend on ``limit``, and _KNOWN_BARE needs no key but the text.)"""
    if text in _KNOWN_BARE:
        return text
    if not text:
        return "-"
    if _BARE.fullmatch(text):
        if len(_KNOWN_BARE) >= KNOWN_BARE_MAX:
            _KNOWN_BARE.clear()
        _KNOWN_BARE.add(text)
        return text
    return f'"{escape(text, limit, space=True)}"'


# Why a session ended: Splice.close's reason (carbotui/proxy/relay.py and its callers)
# -> the word in sessions.log. Anything else is "other".
END_REASONS: Final = {
    "client closed": "client_closed",
    "mailbox server closed": "server_closed",
    "idle timeout": "idle_timeout",
    "worker stopping": "shutdown",
    "kicked by an administrator": "kicked",
}
LOGOUT: Final = "logout"


def end_reason(reason: str, logged_out: bool) -> str:
    """The sessions.log word for how a session ended: ``logout`` when the client had
    asked for it (IMAP LOGOUT, POP3 QUIT) and either side then closed."""
    word = END_REASONS.get(reason, "other")
    if logged_out and word in ("client_closed", "server_closed"):
        return LOGOUT
    return word


def _fixed3(number: float) -> str:
    """``f"{number:.3f}"`` (a format call per line in compiled code: ~1,500 instructions)
    for 0 <= number < 1e9, from the nearest integer of thousandths; a value whose
    thousandths lie within 1e-4 of a tie, and any other value, is formatted as before,
    since only the exact value decides those. (Away from a tie ``number * 1000`` is off by
    less than 2**-13 below 1e12, too little to move it across the half.)"""
    if 0.0 <= number < 1e9:                     # False for NaN
        scaled = number * 1000.0
        whole = int(scaled)                     # floor: scaled >= 0
        frac = scaled - whole                   # exact below 2**52
        if frac < 0.4999 or frac > 0.5001:
            if frac > 0.5:
                whole += 1
            return f"{whole // 1000}.{_MILLIS[whole % 1000]}"
    return f"{number:.3f}"


def session_line(timestamp: float, protocol: str, client_ip: str, client_port: int,
                 account: str, server: str, duration: float, bytes_in: int, bytes_out: int,
                 reason: str, worker: str, session: int) -> str:
    """One sessions.log line (with its newline). ``bytes_in``: client to mailbox
    server; ``bytes_out``: mailbox server to client. (Positional or keyword: the worker
    calls it positionally, once per session, which spares the compiled function's
    keyword matching.)"""
    # value(), inlined for the values seen before. One f-string without a format spec:
    # mypyc builds it in one native call (a spec anywhere makes every piece a
    # str.format call).
    known = _KNOWN_BARE
    client = f"[{client_ip}]" if ":" in client_ip else client_ip
    if protocol not in known:
        protocol = value(protocol, 16)
    if client not in known:
        client = value(client or "-", 60)
    if account not in known:
        account = value(account)
    if server not in known:
        server = value(server, 260)
    if reason not in known:
        reason = value(reason, 32)
    if worker not in known:
        worker = value(worker, 32)
    millis = _iso_millis(timestamp)            # iso_time's pieces, in the line's one build
    stamp = _ISO
    return (f"{stamp.text}.{millis}{stamp.zone} protocol={protocol} "
            f"client={client}:{client_port} account={account} server={server} "
            f"duration={_fixed3(max(0.0, duration))} bytes_in={bytes_in} "
            f"bytes_out={bytes_out} reason={reason} worker={worker} session={session}\n")
