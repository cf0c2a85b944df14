"""audit.log: one line per login attempt, in Carbonio/Zimbra's format.

    2026-11-27 21:09:01,123 INFO  [ImapSSLServer-0] [ip=10.0.0.1;oip=203.0.113.5;ua=Thunderbird/115;] security - cmd=Auth; account=user01@demo.test; protocol=imap;
    2026-11-27 21:09:02,456 WARN  [Pop3Server-1] [ip=10.0.0.1;oip=203.0.113.5;] security - cmd=Auth; account=bob@demo.test; protocol=pop3; error=authentication failed for [bob], invalid password;

The layout is log4j's ``%d %-5p [%t] [%z] %c{1} - %m%n`` (reference §9.1):
``ip`` is the proxy, ``oip`` the real client. Values are encoded as Zimbra
does (``;`` doubled, CR/LF to spaces); every other character that any reader
takes for a line break (VT, FF, FS/GS/RS, NEL, U+2028, U+2029) becomes a
space too and the other C0/C1 controls are replaced, so a hostile login name
or User-Agent cannot forge a line. Readers split on ``b"\\n"`` before
decoding. Passwords are never an input.

Every worker appends with one ``write()`` on an ``O_APPEND`` descriptor, so
lines from several processes never interleave or overwrite each other.
"""
from __future__ import annotations

import math
import os
import re
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Final

# Characters some reader of the log takes for the end of a line: str.splitlines()
# breaks on all of these (CR, LF, VT, FF, FS/GS/RS, NEL, LINE and PARAGRAPH
# SEPARATOR), byte-oriented tools on the ASCII ones. Each becomes a space, as
# Zimbra does for CR/LF. Every other C0 and C1 control and DEL becomes "?".
LINE_BREAKS: Final = "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"
_REPLACE: Final = {c: "?" for c in [*range(0x20), 0x7f, *range(0x80, 0xa0)]}
_REPLACE.update({ord(c): " " for c in LINE_BREAKS})
_UNSAFE: Final = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_NEEDS_ENCODING: Final = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029;]")


# Every byte but printable ASCII other than ";" maps to another byte: bytes.translate
# (native in compiled code) gives back the very object it was given only for a text that
# needs no encoding (a regex search costs ~3,000 instructions a call there).
_PLAIN_TABLE: Final = bytes([b if 0x20 <= b < 0x7f and b != 0x3b else (0 if b else 1)
                             for b in range(256)])


def _plain(text: str) -> bool:
    """Printable ASCII without ``;``: nothing in it for encode_value to change. False
    for anything else, encodable or not (those take the regex's word)."""
    try:
        data = text.encode("utf-8")
    except UnicodeEncodeError:          # lone surrogates
        return False
    return data.translate(_PLAIN_TABLE) is data


def encode_value(value: str) -> str:
    """A value as it may stand in an audit line: no line break any reader knows, no
    control character, ``;`` doubled (the pair separator)."""
    if _plain(value) or not _NEEDS_ENCODING.search(value):
        return value                     # the usual case: one scan, no copies
    if _UNSAFE.search(value):            # rare: only hostile or broken clients
        value = value.translate(_REPLACE)
    return value.replace(";", ";;")      # common in User-Agents


def canonical_login(login: str, domain: str = "") -> str:
    """The login name as audit lines, auditwatch's rules and the user throttle key it:
    surrounding whitespace stripped, inner runs collapsed to one space (what LDAP's
    IA5 matching ignores), lower-cased, and qualified with ``domain`` when it has no
    ``@`` and a domain is given. The canonical *account* (the route's) is better still
    where it is known: this form only makes the spellings of one typed name one key."""
    name = " ".join(login.split()).lower()
    if domain and "@" not in name:
        name = f"{name}@{domain.lower()}"
    return name


def _split_pairs(text: str, sep: str) -> dict[str, str]:
    """Parse 'k=v;k=v;' (sep=';') or 'k=v; k=v;' (sep='; '), honouring ';;'."""
    out, i, n = {}, 0, len(text)
    while i < n:
        while i < n and text[i] == " ":
            i += 1
        eq = text.find("=", i)
        if eq < 0:
            break
        key, j, value = text[i:eq], eq + 1, []
        while j < n:
            if text[j] == ";":
                if j + 1 < n and text[j + 1] == ";":
                    value.append(";")
                    j += 2
                    continue
                break
            value.append(text[j])
            j += 1
        out[key] = "".join(value)
        i = j + 1
    return out


@dataclass(frozen=True)
class AuditEvent:
    account: str
    protocol: str
    client_ip: str
    proxy_ip: str = ""
    error: str = ""                   # empty: success
    user_agent: str = ""
    thread: str = "proxy"
    cmd: str = "Auth"
    timestamp: float = field(default_factory=time.time)
    client_port: int = 0

    @property
    def ok(self) -> bool:
        return not self.error

    def format(self) -> str:
        return format_line(self.timestamp, self.thread, self.proxy_ip, self.client_ip,
                           self.client_port, self.user_agent, self.cmd, self.account,
                           self.protocol, self.error)


# Values found plain before (the node's addresses, accounts, protocols, User-Agents): set
# lookups instead of a scan per line. Only texts _plain() passed; bounded: emptied when full.
_KNOWN_PLAIN: Final[set[str]] = set()
KNOWN_PLAIN_MAX: Final = 4096


def format_line(timestamp: float, thread: str, proxy_ip: str, client_ip: str,
                client_port: int, user_agent: str, cmd: str, account: str, protocol: str,
                error: str) -> str:
    """One audit line. A function of plain values, so the login path (thousands a second)
    does not build an AuditEvent for each."""
    scaled = timestamp * 1000
    if 0.0 <= scaled < 4503599627370496.0:          # 2**52: scaled + 0.5 is exact
        stamp = int(scaled + 0.5)
        if stamp & 1 and stamp - scaled == 0.5:     # a tie: round() goes to the even one
            stamp -= 1
    else:                                           # before 1970, NaN, inf: round() says
        stamp = round(scaled)
    seconds = stamp // 1000
    millis = stamp - seconds * 1000
    known = _KNOWN_PLAIN
    if not (proxy_ip in known and client_ip in known and account in known
            and protocol in known and (not user_agent or user_agent in known)):
        if _plain(f"{proxy_ip}{client_ip}{user_agent}{account}{protocol}"):
            if len(known) >= KNOWN_PLAIN_MAX:
                known.clear()
            known.update((proxy_ip, client_ip, user_agent, account, protocol))
        else:
            # rare (hostile or broken clients, non-ASCII names): encode_value leaves a
            # clean value as it is
            proxy_ip = encode_value(proxy_ip)
            client_ip = encode_value(client_ip)
            user_agent = encode_value(user_agent)
            account = encode_value(account)
            protocol = encode_value(protocol)
    # one native string build for the line: the optional pairs as pieces of it
    port = str(client_port) if client_port else ""
    port_key, port_end = ("oport=", ";") if client_port else ("", "")
    agent_key, agent_end = ("ua=", ";") if user_agent else ("", "")
    level = "WARN " if error else "INFO "
    why = f" error={encode_value(error)};" if error else ""
    return (f"{_local_time(seconds)},{MILLIS[millis]} {level} [{thread}] "
            f"[ip={proxy_ip};oip={client_ip};{port_key}{port}{port_end}"
            f"{agent_key}{user_agent}{agent_end}] security - "
            f"cmd={cmd}; account={account}; protocol={protocol};{why}\n")


class _Stamp:
    """_local_time's text for the current second (attributes of a compiled class: no
    module-dictionary lookups per line)."""

    def __init__(self) -> None:
        self.second = -1
        self.text = ""


_STAMP: Final = _Stamp()
# "000".."999": a line's milliseconds by index (an f-string's :03d costs a format call)
MILLIS: Final = tuple([f"{i:03d}" for i in range(1000)])


def _local_time(seconds: int) -> str:
    """'YYYY-mm-dd HH:MM:SS' in local time; remembered for the current second, since a
    busy worker writes many lines per second and strftime is the dearest part."""
    stamp = _STAMP
    if seconds != stamp.second:
        stamp.text = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(seconds))
        stamp.second = seconds
    return stamp.text


_LINE: Final = re.compile(
    r"^(?P<date>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(?P<ms>\d{3}) (?P<level>[A-Z]+) +"
    r"\[(?P<thread>[^\]]*)\] \[(?P<context>.*?)\] security - (?P<body>.*)$")


def parse_line(line: str) -> AuditEvent | None:
    """An audit line back into an event; None for anything else (never raises)."""
    m = _LINE.match(line.rstrip("\n"))
    if not m:
        return None
    ctx = _split_pairs(m["context"], ";")
    body = _split_pairs(m["body"], ";")
    try:
        ts = datetime.strptime(m["date"], "%Y-%m-%d %H:%M:%S").timestamp() + int(m["ms"]) / 1000
        port = int(ctx.get("oport", "0") or 0)
    except ValueError:
        return None
    return AuditEvent(
        account=body.get("account", ""), protocol=body.get("protocol", ""),
        client_ip=ctx.get("oip", ctx.get("ip", "")), proxy_ip=ctx.get("ip", ""),
        error=body.get("error", ""), user_agent=ctx.get("ua", ""), thread=m["thread"],
        cmd=body.get("cmd", ""), timestamp=ts, client_port=port)


def failure(login: str, reason: str) -> str:
    """Zimbra's failure text: 'authentication failed for [<login>], <reason>'."""
    return f"authentication failed for [{login}], {reason}"


# Final: compiled code calls them from C statics (not a module attribute lookup a line)
_write: Final = os.write
_monotonic: Final = time.monotonic


def _encoded(line: str) -> bytes:
    """``line.encode("utf-8", "replace")``; the strict encoder first, which compiled code
    calls directly (an errors argument goes through the codec lookup)."""
    try:
        return line.encode("utf-8")
    except UnicodeEncodeError:          # lone surrogates
        return line.encode("utf-8", "replace")


class AuditLog:
    """Appends lines (audit.log, and access.log and sessions.log through
    carbotui/proxy/logs.py); notices rotation (a new file at the path) by itself within
    CHECK_EVERY unless ``follow`` is off, and at once on ``reopen()`` (SIGUSR1,
    logrotate's postrotate).

    Writing never raises: a file that cannot be opened (a rotated log whose new file is
    not there yet, in a directory the service user may not create files in) keeps the
    previous descriptor, or drops the line when there is none; either is reported on
    stderr at most once a minute, and counted in ``dropped``."""

    CHECK_EVERY = 1.0
    COMPLAIN_EVERY = 60.0

    def __init__(self, path: os.PathLike | str, *, follow: bool = True):
        self.path = os.fspath(path)
        # follow=False: no look at the path per CHECK_EVERY; only reopen() moves to a new
        # file, as nginx's logs do on USR1 (access.log and sessions.log).
        self.follow = follow
        self._fd = -1
        self._ino: int | None = None
        self._checked = 0.0
        self._complained = -math.inf
        self.written = 0
        self.dropped = 0

    def _open(self) -> None:
        try:
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC,
                         0o640)
        except OSError as exc:
            self._complain(f"cannot open {self.path}: {exc}"
                           + ("; still writing to the file opened before" if self._fd >= 0
                              else "; its lines are dropped"))
            return
        if self._fd >= 0:
            os.close(self._fd)
        self._fd, self._ino = fd, os.fstat(fd).st_ino

    def _complain(self, text: str) -> None:
        now = time.monotonic()
        if now - self._complained >= self.COMPLAIN_EVERY:
            self._complained = now
            print(f"carbotui: {text}", file=sys.stderr, flush=True)

    def reopen(self) -> None:
        """Open the path again now (after logrotate moved the file away)."""
        self._open()
        self._checked = time.monotonic()

    def _rotated(self) -> bool:
        try:
            return os.stat(self.path).st_ino != self._ino
        except FileNotFoundError:
            return True

    def write(self, event: AuditEvent) -> None:
        self.write_line(event.format())

    def write_line(self, line: str) -> None:
        if not self.follow and self._fd >= 0:
            # access.log, sessions.log: no look at the path, only reopen() moves on
            try:
                _write(self._fd, _encoded(line))
            except OSError as exc:
                self.dropped += 1
                self._complain(f"cannot write to {self.path}: {exc}")
                return
            self.written += 1
            return
        now = _monotonic()
        every = self.CHECK_EVERY if self.follow else math.inf
        if self._fd < 0 or (now - self._checked > every and self._rotated()):
            self._open()
        if now - self._checked > every:
            self._checked = now
        if self._fd < 0:
            self.dropped += 1
            return
        data = _encoded(line)
        try:
            _write(self._fd, data)     # one write per line: atomic append
        except OSError as exc:         # a full disk: the session goes on
            self.dropped += 1
            self._complain(f"cannot write to {self.path}: {exc}")
            return
        self.written += 1

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
