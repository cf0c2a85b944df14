"""Differential transcripts: the same mail session straight at Dovecot and through carbotui.

A *run* is: put the account's mailbox into a known state (``reset_account`` + a setup
session straight at Dovecot), connect (plain + STARTTLS/STLS or implicit TLS), log in, then
play a script and record every byte the server sends after the login reply, until the
script ends (a tagged LOGOUT reply and the close that must follow, or the client closing).
The same script is run straight at the account's Dovecot and through carbotui, and the two
transcripts, after the narrow normalisers below, must be equal byte for byte.

Reading is framed, never timed: an IMAP response is a line plus the {n} literals it
announces (read by count, so a 20 MB literal is one response), and a step waits for a
named tag, a continuation request, an untagged response matching a pattern, or EOF. POP3
responses are one status line, or for multi-line commands everything up to CRLF.CRLF.

Accounts: the differential scenarios own user16 and user20 (mbox2); no other test uses
them. Their mailboxes are wiped before each run (``reset_account``), so both runs start
from the same state: INBOX and every folder new, UIDs from 1.
"""
from __future__ import annotations

import datetime as dt
import difflib
import re
import shutil
import socket
import ssl
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from tests.stack.conftest import HOST, PASSWORD, PORTS, REPO, tls_context, wait_for

CRLF = b"\r\n"
TIMEOUT = 30.0               # a hard guard per socket operation, not a synchronisation


# ------------------------------------------------------------------ endpoints

@dataclass(frozen=True)
class Endpoint:
    name: str                # "dovecot" or "carbotui"
    host: str
    port: int
    kind: str                # imap | imaps | pop3 | pop3s
    server_hostname: str

    @property
    def proto(self) -> str:
        return self.kind.rstrip("s")

    @property
    def implicit_tls(self) -> bool:
        return self.kind.endswith("s")


DOVECOT_PORTS = {"imap": 7143, "imaps": 7993, "pop3": 7110, "pop3s": 7995}


def mbox_of(account: str) -> tuple[str, str]:
    """(short name, address) of the Dovecot that holds ``account``: odd users on mbox1."""
    number = int(re.match(r"user(\d+)@", account).group(1))
    return ("mbox1", "127.0.0.1") if number % 2 else ("mbox2", "127.0.0.2")


def dovecot(account: str, kind: str) -> Endpoint:
    _, address = mbox_of(account)
    return Endpoint("dovecot", address, DOVECOT_PORTS[kind], kind, address)


def carbotui(kind: str) -> Endpoint:
    return Endpoint("carbotui", HOST, PORTS[kind], kind, HOST)


def both(account: str, kind: str) -> tuple[Endpoint, Endpoint]:
    return dovecot(account, kind), carbotui(kind)


# --------------------------------------------------------------- the account

def home_of(account: str) -> Path:
    short, _ = mbox_of(account)
    local, domain = account.split("@")
    return REPO / "var" / short / "mail" / domain / local


def dovecot_sessions(account: str) -> str:
    """Dovecot's own list of the account's open sessions (doveadm who)."""
    short, _ = mbox_of(account)
    proc = subprocess.run(["doveadm", "-c", str(REPO / "var" / short / "dovecot.conf"), "who",
                           account], capture_output=True, text=True, timeout=10)
    return "\n".join(l for l in proc.stdout.splitlines()[1:] if l.strip())


def wait_no_sessions(account: str, timeout: float = 10.0) -> None:
    wait_for(lambda: not dovecot_sessions(account), timeout, interval=0.02,
             what=f"Dovecot to end every session of {account}")


def reset_account(account: str) -> None:
    """An empty mailbox (a new INBOX, no folders, no subscriptions), once Dovecot has no
    session of the account open. The home is made again with its old owner."""
    wait_no_sessions(account)
    home = home_of(account)
    parent = home.parent.stat()
    if home.exists():
        shutil.rmtree(home)
    for sub in ("", "cur", "new", "tmp"):
        path = home / sub
        path.mkdir(exist_ok=True)
        shutil.chown(path, parent.st_uid, parent.st_gid)


# ---------------------------------------------------------------- messages

def message(subject: str, body: bytes = b"", *, sender: str = "alice@demo.test",
            date: str = "Mon, 01 Jan 2024 10:00:00 +0000", extra: bytes = b"",
            msgid: str | None = None, refs: str | None = None) -> bytes:
    head = (b"From: %s\r\nTo: user@demo.test\r\nSubject: %s\r\nDate: %s\r\n" %
            (sender.encode(), subject.encode(), date.encode()))
    if msgid:
        head += b"Message-ID: <%s>\r\n" % msgid.encode()
    if refs:
        head += b"References: <%s>\r\nIn-Reply-To: <%s>\r\n" % (refs.encode(), refs.encode())
    return head + extra + b"\r\n" + body


def sized_message(size: int, seed: str = "m") -> bytes:
    """A message of exactly ``size`` bytes (0 allowed): a header block if it fits, then
    76-character lines."""
    if size == 0:
        return b""
    head = message(f"{seed} {size} bytes")
    if size < len(head) + 2:
        return (b"X" * size)[:size] if size < 2 else b"X" * (size - 2) + CRLF
    line = (seed.encode() * 80)[:74] + CRLF
    body_len = size - len(head)
    body = line * (body_len // len(line))
    rest = body_len - len(body)
    if rest >= 2:
        body += b"y" * (rest - 2) + CRLF
    elif rest == 1:
        body += b"z"
    out = head + body
    assert len(out) == size, (len(out), size)
    return out


MULTIPART = (b"From: bob@demo.test\r\nTo: user@demo.test\r\nSubject: parts\r\n"
             b"Date: Tue, 02 Jan 2024 11:00:00 +0100\r\nMIME-Version: 1.0\r\n"
             b"Content-Type: multipart/mixed; boundary=\"b1\"\r\n\r\n"
             b"preamble\r\n--b1\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
             b"Hello, first part.\r\n--b1\r\nContent-Type: application/octet-stream\r\n"
             b"Content-Transfer-Encoding: base64\r\n\r\nAAECAwQFBgcICQoLDA0ODw==\r\n"
             b"--b1--\r\n")


@dataclass
class Fixture:
    """What a setup session puts into the mailbox before a run (straight at Dovecot)."""
    folders: dict[str, list[tuple[bytes, str, bytes]]] = field(default_factory=dict)
    subscribe: list[str] = field(default_factory=list)

    def add(self, folder: str, body: bytes, flags: str = "",
            date: bytes = b"01-Jan-2024 10:00:00 +0000") -> "Fixture":
        self.folders.setdefault(folder, []).append((body, flags, date))
        return self


def standard_fixture() -> Fixture:
    """INBOX and two folders with threads, flags, a multipart and sizes to sort by."""
    f = Fixture(subscribe=["work"])
    f.add("INBOX", message("hello", b"first message\r\n", msgid="a1@demo"), "")
    f.add("INBOX", message("Re: hello", b"a reply\r\n", sender="bob@demo.test",
                           msgid="a2@demo", refs="a1@demo",
                           date="Tue, 02 Jan 2024 10:00:00 +0000"), "\\Seen",
          b"02-Jan-2024 10:00:00 +0000")
    f.add("INBOX", MULTIPART, "\\Flagged $Label1", b"03-Jan-2024 09:30:00 +0100")
    f.add("INBOX", message("zebra", b"z" * 500 + CRLF, sender="carol@demo.test",
                           date="Thu, 04 Jan 2024 08:00:00 +0000"), "\\Answered \\Seen",
          b"04-Jan-2024 08:00:00 +0000")
    f.add("INBOX", message("Re: Re: hello", b"again\r\n", msgid="a3@demo", refs="a2@demo",
                           date="Fri, 05 Jan 2024 08:00:00 +0000"), "\\Deleted",
          b"05-Jan-2024 08:00:00 +0000")
    f.add("work", message("report", b"numbers\r\n"), "\\Seen")
    f.add("work", message("plan", b"words\r\n", sender="dave@demo.test"), "")
    f.add("work.2024", message("deep", b"nested\r\n"), "")
    f.folders["empty"] = []
    return f


# ------------------------------------------------------------- wire reading

_LITERAL_RE = re.compile(rb"~?\{(\d+)\}\Z")


class Closed(Exception):
    """The server closed the connection (EOF, reset, or a TLS close)."""


class Wire:
    """A blocking socket with one receive buffer that keeps every byte it has read."""

    def __init__(self, endpoint: Endpoint, rcvbuf: int = 0):
        self.endpoint = endpoint
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.settimeout(TIMEOUT)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if rcvbuf:                   # before connect, so the window is small from the start
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.connect((endpoint.host, endpoint.port))
        if endpoint.implicit_tls:
            self.start_tls()
        self.buf = bytearray()
        self.pos = 0                 # start of the next unparsed response
        self.greeted = 0             # end of the greeting (and STARTTLS)
        self.eof = False

    def start_tls(self) -> None:
        self.sock = tls_context().wrap_socket(self.sock,
                                              server_hostname=self.endpoint.server_hostname)

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def fill(self) -> None:
        if self.eof:
            raise Closed()
        try:
            chunk = self.sock.recv(1 << 20)
        except (ssl.SSLEOFError, ssl.SSLZeroReturnError, ConnectionResetError):
            chunk = b""
        except socket.timeout:
            raise AssertionError(
                f"{self.endpoint.name} {self.endpoint.kind}: nothing received for {TIMEOUT}s; "
                f"last bytes: {bytes(self.buf[-300:])!r}") from None
        if not chunk:
            self.eof = True
            raise Closed()
        self.buf += chunk

    def line_end(self, start: int) -> int:
        """Index just past the CRLF of the line that starts at ``start``."""
        scan = start
        while True:
            i = self.buf.find(CRLF, scan)
            if i >= 0:
                return i + 2
            scan = max(start, len(self.buf) - 1)
            self.fill()

    def need(self, end: int) -> None:
        while len(self.buf) < end:
            self.fill()

    def until_eof(self) -> None:
        try:
            while True:
                self.fill()
        except Closed:
            pass
        self.pos = len(self.buf)

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


@dataclass
class Response:
    first: bytes             # the first line, without CRLF
    start: int
    end: int

    @property
    def tag(self) -> bytes:
        return self.first.split(b" ", 1)[0]

    @property
    def status(self) -> bytes:
        parts = self.first.split(b" ", 2)
        return parts[1].upper() if len(parts) > 1 else b""


class ImapWire(Wire):
    def response(self) -> Response:
        """One response: a line and the literals it announces, read by their counts."""
        start = p = self.pos
        first = None
        while True:
            e = self.line_end(p)
            line = bytes(self.buf[p:e - 2])
            if first is None:
                first = line
            m = _LITERAL_RE.search(line[-24:]) if line.endswith(b"}") else None
            if m and not line.startswith(b"+"):
                p = e + int(m.group(1))
                self.need(p)
                continue
            self.pos = e
            return Response(first, start, e)

    def until_tag(self, tag: bytes) -> Response:
        while True:
            r = self.response()
            if r.tag == tag:
                return r

    def until(self, pred: Callable[[Response, "ImapWire"], bool]) -> Response:
        while True:
            r = self.response()
            if pred(r, self):
                return r


class Pop3Wire(Wire):
    def response(self, multiline: bool = False) -> Response:
        start = self.pos
        e = self.line_end(start)
        first = bytes(self.buf[start:e - 2])
        if multiline and first.startswith(b"+OK"):
            scan = e - 2
            while True:
                i = self.buf.find(b"\r\n.\r\n", scan)
                if i >= 0:
                    e = i + 5
                    break
                scan = max(e - 2, len(self.buf) - 4)
                self.fill()
        self.pos = e
        return Response(first, start, e)


# ------------------------------------------------------------------ scripts

@dataclass
class Step:
    """Send ``send`` (placeholders filled), then wait for ``until``:
    tag      the tagged response ``arg``
    cont     a continuation request (+)
    match    a response whose bytes match the regex ``arg``
    multi    POP3: a multi-line response (``line`` for a one-line one)
    line     POP3: a one-line response
    eof      the server to close (after LOGOUT/QUIT: nothing may follow the reply)
    close    nothing: the client closes the connection here
    none     nothing (bytes the server does not answer on their own)
    ``call`` (optional) runs before sending, e.g. to change the mailbox from elsewhere."""
    send: bytes = b""
    until: str = "tag"
    arg: object = None
    call: Callable[[], None] | None = None
    split: int = 0           # > 0: send in writes of this many bytes (each its own TLS record)


def cmd(tag: str | bytes, text: str | bytes) -> Step:
    tag = tag.encode() if isinstance(tag, str) else tag
    text = text.encode() if isinstance(text, str) else text
    return Step(tag + b" " + text + CRLF, "tag", tag)


def imap_script(*items) -> list[Step]:
    """Strings become commands with tags t1, t2, ...; Steps are kept as they are."""
    out, n = [], 0
    for item in items:
        if isinstance(item, Step):
            out.append(item)
        else:
            n += 1
            out.append(cmd(f"t{n}", item))
    return out


def logout(tag: str = "z") -> list[Step]:
    return [cmd(tag, "LOGOUT"), Step(until="eof")]


@dataclass
class Transcript:
    endpoint: Endpoint
    login_reply: bytes       # the reply to LOGIN/AUTHENTICATE/PASS (may differ: see tests)
    data: bytes              # everything the server sent after it
    facts: dict              # what setup learnt (UIDVALIDITY per folder)
    closed: bool             # the server closed the connection
    seconds: float

    def normalised(self) -> bytes:
        return normalise(self.data, self.endpoint.proto)


# ----------------------------------------------------------------- logins

def imap_login_bytes(account: str, style: str, tag: bytes = b"L") -> list[Step]:
    """Ways of logging in; each ends at the tagged reply (the login reply)."""
    pw = PASSWORD.encode()
    user = account.encode()
    if style == "login":
        return [Step(tag + b" LOGIN " + user + b" " + pw + CRLF, "tag", tag)]
    if style == "login-quoted":
        return [Step(tag + b' LOGIN "' + user + b'" "' + pw + b'"' + CRLF, "tag", tag)]
    if style == "login-literal":          # synchronising literals for both arguments
        return [Step(tag + b" LOGIN {%d}\r\n" % len(user), "cont"),
                Step(user + b" {%d}\r\n" % len(pw), "cont"),
                Step(pw + CRLF, "tag", tag)]
    if style == "login-literal+":
        return [Step(tag + b" LOGIN {%d+}\r\n%s {%d+}\r\n%s\r\n" % (len(user), user, len(pw),
                                                                    pw), "tag", tag)]
    import base64
    ir = base64.b64encode(b"\0" + user + b"\0" + pw)
    if style == "sasl-ir":
        return [Step(tag + b" AUTHENTICATE PLAIN " + ir + CRLF, "tag", tag)]
    if style == "sasl":
        return [Step(tag + b" AUTHENTICATE PLAIN" + CRLF, "cont"), Step(ir + CRLF, "tag", tag)]
    raise ValueError(style)


def _fill(data: bytes, facts: dict) -> bytes:
    return re.sub(rb"<<UV:([^>]+)>>", lambda m: str(facts["uidvalidity"][m.group(1).decode()])
                  .encode(), data)


def _imap_greeting(wire: ImapWire) -> None:
    # Dovecot may say "* OK Waiting for authentication process to respond.." first.
    wire.until(lambda r, w: r.first.startswith(b"* OK") and b"Waiting for" not in r.first)


def open_imap(endpoint: Endpoint, rcvbuf: int = 0) -> ImapWire:
    wire = ImapWire(endpoint, rcvbuf)
    _imap_greeting(wire)
    if not endpoint.implicit_tls:
        wire.send(b"S STARTTLS\r\n")
        r = wire.until_tag(b"S")
        assert r.status == b"OK", r.first
        wire.start_tls()
    wire.greeted = wire.pos
    return wire


def _play(wire, steps: Iterable[Step], send: Callable[[Step], None],
          wait: Callable[[Step], bool]) -> bool:
    """Play steps on either protocol's wire; True if the server closed the connection.
    ``wait(step)`` waits for the protocol's own ``until``s, False for one it does not know."""
    for step in steps:
        if step.call:
            step.call()
        if step.send:
            send(step)
        try:
            if step.until == "eof":
                wire.until_eof()
                return True
            if step.until == "close":
                wire.close()
                return False
            if step.until != "none" and not wait(step):
                raise ValueError(step.until)
        except Closed:
            return True
    return False


def play_imap(wire: ImapWire, steps: Iterable[Step], facts: dict) -> bool:
    """Play steps; True if the server closed the connection.

    A "cont" step with a tag as ``arg`` also stops at that tag's reply: the server refused
    the command instead of asking for its literal (APPEND to a missing mailbox, say), and
    the steps that would have sent the rest of that command are skipped."""
    refused = None

    def send(step: Step) -> None:
        data = _fill(step.send, facts)
        for i in range(0, len(data), step.split or len(data)):
            wire.send(data[i:i + (step.split or len(data))])

    def wait(step: Step) -> bool:
        nonlocal refused
        if step.until == "tag":
            wire.until_tag(step.arg)
        elif step.until == "cont":
            r = wire.until(lambda r, w: r.first.startswith(b"+") or
                           (step.arg is not None and r.tag == step.arg))
            if not r.first.startswith(b"+"):
                refused = step.arg
        elif step.until == "match":
            rx = re.compile(step.arg)
            wire.until(lambda r, w: rx.search(bytes(w.buf[r.start:r.end])) is not None)
        else:
            return False
        return True

    return _play(wire, (step for step in steps if refused is None or step.arg != refused),
                 send, wait)


def run_imap(endpoint: Endpoint, account: str, steps: list[Step], *,
             fixture: Fixture | None = None, login: str = "login",
             login_extra: bytes = b"", login_steps: list[Step] | None = None,
             before: Callable[[ImapWire], None] | None = None,
             after: Callable[[], object] | None = None, rcvbuf: int = 0) -> Transcript:
    """Reset the account, set it up (straight at Dovecot), then log in at ``endpoint`` and
    play ``steps``. ``login_extra`` is sent in the same write as the (last part of the)
    login command: pipelined commands. ``before`` runs on the connection before the login
    (pre-auth commands, not recorded); ``after`` once the session is over, its result is
    compared too (``facts["after"]``: the mailbox state the session left)."""
    facts = prepare(account, fixture)
    started = time.monotonic()
    wire = open_imap(endpoint, rcvbuf)
    login_steps = list(login_steps or imap_login_bytes(account, login))
    last = login_steps[-1]
    login_steps[-1] = Step(last.send + login_extra, last.until, last.arg)

    def pre_auth() -> None:
        if before:
            try:
                before(wire)
            except Closed:
                raise AssertionError(f"{endpoint}: closed before login: "
                                     f"{bytes(wire.buf[wire.greeted:])[-300:]!r}") from None

    return _session(endpoint, wire, lambda s: play_imap(wire, s, facts), login_steps, steps,
                    facts, started, after, pre_auth)


def _session(endpoint: Endpoint, wire, play: Callable[[list[Step]], bool],
             login_steps: list[Step], steps: list[Step], facts: dict, started: float,
             after: Callable[[], object] | None,
             pre_auth: Callable[[], None] | None = None) -> Transcript:
    """Log in with ``login_steps`` and play ``steps`` on an open wire (either protocol),
    then close it; the transcript is what the server sent after the login reply."""
    try:
        if pre_auth:
            pre_auth()
        pre = wire.pos
        if play(login_steps):
            raise AssertionError(f"{endpoint}: closed during login: {bytes(wire.buf[pre:])!r}")
        # The login reply is the last response read; everything after it is the transcript.
        login_end = wire.pos
        login_reply = bytes(wire.buf[pre:login_end])
        closed = play(steps)
    finally:
        wire.close()
    if after:
        facts["after"] = after()
    return Transcript(endpoint, login_reply, bytes(wire.buf[login_end:]), facts, closed,
                      time.monotonic() - started)


# ------------------------------------------------------------------- setup

def prepare(account: str, fixture: Fixture | None) -> dict:
    reset_account(account)
    facts = {"uidvalidity": {}}
    if fixture is None:
        return facts
    wire = open_imap(dovecot(account, "imaps"))
    steps = imap_login_bytes(account, "login")
    n = 0

    def go(text: bytes) -> Response:
        nonlocal n
        n += 1
        tag = b"s%d" % n
        wire.send(tag + b" " + text + CRLF)
        r = wire.until_tag(tag)
        assert r.status == b"OK", (text[:80], r.first)
        return r

    play_imap(wire, steps, facts)
    for folder, items in fixture.folders.items():
        if folder != "INBOX":
            go(b"CREATE " + folder.encode())
        for body, flags, date in items:
            go(b"APPEND %s (%s) \"%s\" {%d+}\r\n%s" % (folder.encode(), flags.encode(), date,
                                                      len(body), body))
    for folder in fixture.subscribe:
        go(b"SUBSCRIBE " + folder.encode())
    for folder in ["INBOX", *[f for f in fixture.folders if f != "INBOX"]]:
        n += 1
        tag = b"s%d" % n
        wire.send(tag + b" STATUS " + folder.encode() + b" (UIDVALIDITY)" + CRLF)
        r = wire.response()
        m = re.search(rb"UIDVALIDITY (\d+)", r.first)
        assert m, r.first
        facts["uidvalidity"][folder] = int(m.group(1))
        wire.until_tag(tag)
    wire.send(b"s0 LOGOUT\r\n")
    wire.until_tag(b"s0")
    wire.close()
    return facts


def imap_append(account: str, folder: str, body: bytes, flags: str = "") -> None:
    """APPEND from another connection, straight at Dovecot (the IDLE/NOTIFY scenarios)."""
    wire = open_imap(dovecot(account, "imaps"))
    play_imap(wire, imap_login_bytes(account, "login"), {})
    wire.send(b"x1 APPEND %s (%s) \"06-Jan-2024 12:00:00 +0000\" {%d+}\r\n%s\r\n"
              % (folder.encode(), flags.encode(), len(body), body))
    r = wire.until_tag(b"x1")
    assert r.status == b"OK", r.first
    wire.send(b"x2 LOGOUT\r\n")
    wire.until_tag(b"x2")
    wire.close()


# -------------------------------------------------------------------- POP3

def open_pop3(endpoint: Endpoint) -> Pop3Wire:
    wire = Pop3Wire(endpoint)
    greeting = wire.response()
    assert greeting.first.startswith(b"+OK"), greeting.first
    if not endpoint.implicit_tls:
        wire.send(b"STLS\r\n")
        r = wire.response()
        assert r.first.startswith(b"+OK"), r.first
        wire.start_tls()
    return wire


def pop3_login_steps(account: str, style: str) -> list[Step]:
    if style == "user":
        return [Step(b"USER " + account.encode() + CRLF, "line"),
                Step(b"PASS " + PASSWORD.encode() + CRLF, "line")]
    if style == "user-pipelined":        # USER and PASS in one write (RFC 2449 PIPELINING)
        return [Step(b"USER %s\r\nPASS %s\r\n" % (account.encode(), PASSWORD.encode()),
                     "line"), Step(b"", "line")]
    if style in ("auth-plain", "auth-plain-cont"):
        import base64
        ir = base64.b64encode(b"\0" + account.encode() + b"\0" + PASSWORD.encode())
        if style == "auth-plain-cont":      # the credentials after the server's "+ "
            return [Step(b"AUTH PLAIN\r\n", "line"), Step(ir + CRLF, "line")]
        return [Step(b"AUTH PLAIN " + ir + CRLF, "line")]
    raise ValueError(style)


def play_pop3(wire: Pop3Wire, steps: Iterable[Step]) -> bool:
    def wait(step: Step) -> bool:
        if step.until not in ("line", "multi"):
            return False
        wire.response(step.until == "multi")
        return True

    return _play(wire, steps, lambda step: wire.send(step.send), wait)


def pop(text: str | bytes, multi: bool = False) -> Step:
    text = text.encode() if isinstance(text, str) else text
    return Step(text + CRLF, "multi" if multi else "line")


def run_pop3(endpoint: Endpoint, account: str, steps: list[Step], *,
             fixture: Fixture | None = None, login: str = "user",
             login_extra: bytes = b"", after: Callable[[], object] | None = None) -> Transcript:
    facts = prepare(account, fixture)
    started = time.monotonic()
    wire = open_pop3(endpoint)
    login_steps = pop3_login_steps(account, login)
    if login_extra:
        # Pipelined after the login: goes in the same write as the login's last command
        # (for "user-pipelined", the one write with USER and PASS).
        i = max(i for i, s in enumerate(login_steps) if s.send)
        s = login_steps[i]
        login_steps[i] = Step(s.send + login_extra, s.until, s.arg)
    return _session(endpoint, wire, lambda s: play_pop3(wire, s), login_steps, steps, facts,
                    started, after)


# -------------------------------------------------------------- normalisers
#
# Only what legitimately differs between two runs of the same script against the same
# Dovecot, each after a fresh reset. Each rule is narrow: it matches Dovecot's own
# wording, and replaces values in a way that keeps their equalities (the same UIDVALIDITY
# in two places stays the same placeholder).

# 1. Dovecot's timing figures at the end of tagged OK texts: "(0.001 + 0.000 secs)." and
#    "(0.002 + 0.000 + 0.001 secs)." (the number of terms varies with what was waited for:
#    a lock, a search, the client's reading). Only the figures go, the words stay.
_TIMING_RE = re.compile(rb" \((?:\d+\.\d{3} \+ )+\d+\.\d{3} secs\)\.\r\n")

# 2. UIDVALIDITY: a new mailbox gets one from the clock (seconds), so two runs a second
#    apart differ. Where Dovecot reports it: [UIDVALIDITY n], STATUS (... UIDVALIDITY n),
#    [APPENDUID n uid], [COPYUID n ...]. Values map to <uv1>, <uv2>... by first appearance.
_UIDVALIDITY_RE = re.compile(rb"(\[UIDVALIDITY |[( ]UIDVALIDITY |\[APPENDUID |\[COPYUID )(\d+)")

# 3. Dates Dovecot makes itself: INTERNALDATE of a message APPENDed without a date, and
#    SAVEDATE (when a message was saved). Only a date within an hour of now is replaced:
#    every date a script gives is in 2024, so it still has to come back unchanged.
_DATE_RE = re.compile(rb'((?:INTERNALDATE|SAVEDATE) )"(\d\d?-[A-Z][a-z]{2}-\d{4} '
                      rb'\d\d:\d\d:\d\d [+-]\d{4})"')

# 4. POP3 UIDL: Dovecot's pop3_uidl_format %08Xu%08Xv is the UID and the INBOX's
#    UIDVALIDITY in hex (rule 2 again; Dovecot writes it in lower case); the UID half is kept.
_UIDL_RE = re.compile(rb"(?m)^((?:\+OK )?\d+ [0-9a-fA-F]{8})([0-9a-fA-F]{8})(?=\r$)")


def _recent(text: bytes) -> bool:
    when = dt.datetime.strptime(text.decode().strip(), "%d-%b-%Y %H:%M:%S %z")
    return abs((dt.datetime.now(dt.timezone.utc) - when).total_seconds()) < 3600


def normalise(data: bytes, proto: str = "imap") -> bytes:
    seen: dict[bytes, bytes] = {}

    def uv(value: bytes) -> bytes:
        return seen.setdefault(value, b"<uv%d>" % (len(seen) + 1))

    if proto == "imap":
        data = _TIMING_RE.sub(b" (<t> secs).\r\n", data)
        data = _UIDVALIDITY_RE.sub(lambda m: m.group(1) + uv(m.group(2)), data)
        data = _DATE_RE.sub(lambda m: m.group(1) + (b'"<now>"' if _recent(m.group(2))
                                                    else b'"' + m.group(2) + b'"'), data)
    else:
        data = _UIDL_RE.sub(lambda m: m.group(1) + uv(m.group(2)), data)
    return data


# --------------------------------------------------------------- comparing

def _lines(data: bytes, limit: int = 200) -> list[str]:
    out = []
    for line in data.split(CRLF):
        text = repr(line[:limit])[2:-1]
        out.append(text + (f"... ({len(line)} bytes)" if len(line) > limit else ""))
    return out


def _first_difference(a: bytes, b: bytes) -> int:
    lo, step = 0, 65536
    while lo < min(len(a), len(b)) and a[lo:lo + step] == b[lo:lo + step]:
        lo += step
    return next((i for i in range(lo, min(len(a), len(b), lo + step)) if a[i] != b[i]),
                min(len(a), len(b), lo + step))


def diff(a: bytes, b: bytes, names=("dovecot", "carbotui"), context: int = 3) -> str:
    if a == b:
        return ""
    # Find the first differing byte so huge equal prefixes are not diffed line by line.
    n = _first_difference(a, b)
    cut = max(0, a.rfind(CRLF, 0, max(0, n - 2000)) + 2)
    head = f"first difference at byte {n} (of {len(a)} / {len(b)}):\n"
    lines = difflib.unified_diff(_lines(a[cut:cut + 20000]), _lines(b[cut:cut + 20000]),
                                 names[0], names[1], n=context, lineterm="")
    return head + "\n".join(list(lines)[:80])


def assert_same(direct: Transcript, proxied: Transcript) -> None:
    a, b = direct.normalised(), proxied.normalised()
    assert a == b, ("server transcripts after login differ\n" + diff(a, b))
    assert direct.closed == proxied.closed, (direct.closed, proxied.closed)
    assert direct.facts.get("after") == proxied.facts.get("after"), (
        "the mailbox state after the session differs",
        direct.facts.get("after"), proxied.facts.get("after"))


def _compare(run, account: str, kind: str, steps: list[Step], **kw) -> tuple[Transcript,
                                                                              Transcript]:
    d, p = both(account, kind)
    direct = run(d, account, steps, **kw)
    proxied = run(p, account, steps, **kw)
    assert_same(direct, proxied)
    return direct, proxied


def compare_imap(account: str, kind: str, steps: list[Step], **kw) -> tuple[Transcript,
                                                                         Transcript]:
    return _compare(run_imap, account, kind, steps, **kw)


def compare_pop3(account: str, kind: str, steps: list[Step], **kw) -> tuple[Transcript,
                                                                         Transcript]:
    return _compare(run_pop3, account, kind, steps, **kw)


# ---------------------------------------------------------- response checker

@dataclass
class Checker:
    """Checks one IMAP session's server bytes: every tag answered exactly once and with
    OK, no tagged reply with a tag never sent, no `* BYE` except one just before the
    tagged LOGOUT reply, and nothing at all after that reply."""
    errors: list[str] = field(default_factory=list)

    def check(self, data: bytes, sent_tags: list[bytes], logout_tag: bytes | None) -> int:
        """Check one session; returns the number of errors it added."""
        before = len(self.errors)
        answered: dict[bytes, int] = {}
        wire = ImapWire.__new__(ImapWire)
        wire.buf, wire.pos, wire.eof, wire.endpoint = bytearray(data), 0, True, None
        pending_bye = None
        logged_out = False
        while wire.pos < len(wire.buf):
            if logged_out:
                self.errors.append(f"bytes after the tagged LOGOUT reply: "
                                   f"{bytes(wire.buf[wire.pos:wire.pos + 100])!r}")
                break
            try:
                r = wire.response()
            except Closed:
                self.errors.append(f"incomplete response at the end: "
                                   f"{bytes(wire.buf[wire.pos:wire.pos + 100])!r}")
                break
            if pending_bye is not None and not (logout_tag and r.tag == logout_tag):
                self.errors.append(f"unexpected BYE: {pending_bye[:100]!r}")
            elif pending_bye is None and logout_tag and r.tag == logout_tag:
                self.errors.append(f"LOGOUT reply without a BYE first: {r.first[:100]!r}")
            pending_bye = None
            if r.tag == b"*":
                if r.status == b"BYE":
                    pending_bye = r.first
                continue
            if r.tag == b"+":
                continue
            answered[r.tag] = answered.get(r.tag, 0) + 1
            if r.tag not in sent_tags:
                self.errors.append(f"reply with a tag never sent: {r.first[:100]!r}")
            elif answered[r.tag] > 1:
                self.errors.append(f"tag answered twice: {r.first[:100]!r}")
            elif r.status != b"OK":
                self.errors.append(f"not OK: {r.first[:100]!r}")
            logged_out = r.tag == logout_tag
        if pending_bye is not None:
            self.errors.append(f"unexpected BYE: {pending_bye[:100]!r}")
        for tag in sent_tags:
            if tag not in answered:
                self.errors.append(f"tag never answered: {tag[:40]!r}")
        return len(self.errors) - before


def imap_state(account: str) -> bytes:
    """The mailbox as a later session sees it (straight at Dovecot, once the recorded
    session has ended there): folders, subscriptions, counts, and every message's flags."""
    wait_no_sessions(account)
    wire = open_imap(dovecot(account, "imaps"))
    play_imap(wire, imap_login_bytes(account, "login"), {})
    start = wire.pos
    wire.send(b'q1 LIST "" * RETURN (SUBSCRIBED STATUS (MESSAGES UIDNEXT UNSEEN))\r\n')
    wire.until_tag(b"q1")
    folders = re.findall(rb'\* LIST \([^)]*\) "." (\S+)\r\n', bytes(wire.buf[start:]))
    for n, folder in enumerate(folders):
        tag = b"e%d" % n
        wire.send(tag + b" EXAMINE " + folder + b"\r\n")
        wire.until_tag(tag)
        wire.send(tag + b"f UID FETCH 1:* (FLAGS RFC822.SIZE)\r\n")
        wire.until_tag(tag + b"f")
    wire.send(b"q9 LOGOUT\r\n")
    wire.until_tag(b"q9")
    wire.close()
    return normalise(bytes(wire.buf[start:]))


def pop3_state(account: str) -> bytes:
    """What a later POP3 session lists (straight at Dovecot)."""
    wait_no_sessions(account)
    wire = open_pop3(dovecot(account, "pop3s"))
    play_pop3(wire, pop3_login_steps(account, "user"))
    start = wire.pos
    play_pop3(wire, [pop("STAT"), pop("LIST", True), pop("QUIT")])
    wire.close()
    return bytes(wire.buf[start:])


def restore_demo_mailbox(account: str) -> None:
    """Leave the account as `make up` made it: an empty mailbox with the demo's welcome
    message (demo.stack.WELCOME), for people trying the demo after the tests."""
    import json
    from demo.stack import WELCOME
    reset_account(account)
    short, ip = mbox_of(account)
    info = json.loads((REPO / "var" / short / "accounts.json").read_text())
    home = home_of(account)
    path = home / "new" / f"{int(time.time())}.welcome.{short}"
    path.write_text(WELCOME.format(
        address=account, short=short, host=info["server"], ip=ip,
        zid=info["accounts"][account]["zimbraId"],
        date=time.strftime("%a, %d %b %Y %H:%M:%S +0000", time.gmtime())))
    owner = home.stat()
    shutil.chown(path, owner.st_uid, owner.st_gid)


def responses(data: bytes) -> list[Response]:
    """The IMAP responses in a transcript, framed as the client read them."""
    wire = ImapWire.__new__(ImapWire)
    wire.buf, wire.pos, wire.eof, wire.endpoint = bytearray(data), 0, True, None
    out = []
    while wire.pos < len(wire.buf):
        try:
            out.append(wire.response())
        except Closed:
            break
    return out
