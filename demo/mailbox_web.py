"""Demo web mailbox app: what the proxy forwards web traffic to in the demo.

Each demo mailbox server runs one::

    python -m demo.mailbox_web --accounts var/mbox1/accounts.json \\
        --listen 127.0.0.1:8080 --listen 127.0.0.1:7071

It speaks HTTP/1.1 with the proxy's own parser (carbotui.protocols.http11) on plain
asyncio, and answers every response with ``X-Demo-Server: <short name>`` so a
test can tell which backend served it (``Server: demo-mailbox`` is there for
the proxy to strip).

Accounts file (written by the demo generator; re-read when it changes)::

    {"server": "mbox1.demo.test", "short": "mbox1",
     "accounts": {"user01@demo.test": {"zimbraId": "<uuid>",
                                        "password": "{SSHA512}<base64(sha512(pw+salt)+salt)>"}}}

Endpoints:

``GET /``                 login form; posts ``username`` and ``password``
``POST /login``           form login; 302 to /mail with the ZM_AUTH_TOKEN cookie,
                          or 401 and the form with an error
``POST /service/soap/AuthRequest`` (also ``/service/soap``)
                          JSON SOAP, as Zimbra's JSON clients send it::

                              {"Body": {"AuthRequest": {
                                  "account": {"by": "name", "_content": "user01@demo.test"},
                                  "password": {"_content": "demo-pass"}}}}

                          200 ``{"Body": {"AuthResponse": {"authToken": [{"_content": T}],
                          "lifetime": ms, ...}}}`` plus the cookie; 401 with a Zimbra-style
                          ``Fault`` whose ``Detail.Error.Code`` is ``account.AUTH_FAILED``;
                          400 (``service.PARSE_ERROR``) for a body that is not that shape
``GET /mail``             the mailbox page (needs a valid, unexpired cookie; else 302 to /)
``GET /home/<user>/...``, ``/home/~<user>/...``, ``/service/home/[~]<user>/...``
                          REST-ish page naming server and user; 404 when the user's
                          mailbox is not on this server; ``~`` alone means the cookie's user
``GET /health``           ``ok``
``/headers`` (any method) the request as it arrived, JSON: ``{"method", "target",
                          "headers": [[name, value], ...], "body_bytes"}``, so a test can
                          see what a proxy forwarded (names and values as latin-1)
``GET /download?size=N``  N bytes of a deterministic pattern (byte i is i % 251), streamed
``POST /upload``          streams the body (length or chunked, Expect: 100-continue
                          honoured) and answers ``{"bytes": n, "sha256": "<hex>"}``
``GET /ws/echo``          WebSocket (RFC 6455) echo: text/binary frames come back as sent
                          (fragments too), pings get pongs, close is answered
``/Microsoft-Server-ActiveSync?Cmd=...`` (any method)
                          needs ``Authorization: Basic`` of an account on this server
                          (``DOMAIN\\user`` read as ``user@DOMAIN``), else 401 with
                          WWW-Authenticate; answers ``<short>: activesync Cmd=<cmd> for
                          <account>`` with ``X-Demo-User``. ``delay=S`` holds the answer
                          S seconds (a ``Cmd=Ping`` long poll); ``then=S`` sends the first
                          half of the body, then the rest S seconds later
``PROPFIND /dav/<user>/...``, ``/principals/users/<user>/...``
                          Basic auth as above; a small 207 multistatus naming the server
                          and the account; 404 when <user> has no mailbox here
``POST /service/soap/NoOpRequest``, ``.../WaitSetRequest``
                          answered after ``?delay=S`` seconds (a SOAP long poll)

The token is ``0_<DEMO_KEY>_<hex>`` (carbotui.core.authtoken); the demo does not sign
it, so it proves nothing: fine for a demo, which is all this is.
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import hmac
import html
import json
import logging
import os
import signal
import time
import urllib.parse
from collections import deque
from dataclasses import dataclass
from email.utils import formatdate
from pathlib import Path

from carbotui.core.authtoken import decode_token, encode_token
from carbotui.protocols.http11 import (
    Data, EndOfMessage, ParseError, Request, RequestParser, expects_continue, get_all,
    get_header, header_tokens, serialize_response_head,
)

log = logging.getLogger("demo.mailbox_web")

DEMO_KEY = "0b5e1c0de0"                  # stands in for the HMAC a real server signs with
TOKEN_LIFETIME_MS = 2 * 24 * 3600 * 1000  # zimbraAuthTokenLifetime default: 2d
READ_SIZE = 256 * 1024
IDLE_TIMEOUT = 75.0                      # keep-alive: wait this long for the next request
BODY_TIMEOUT = 60.0                      # between two reads of a body
SMALL_BODY_LIMIT = 64 * 1024             # forms and SOAP requests
DRAIN_LIMIT = 1024 * 1024                # unread body we still skip to keep the connection
MAX_DELAY = 3600.0                       # longest hold of a long poll (polling_timeout)
MAX_DOWNLOAD = 1 << 40
WS_MAX_PAYLOAD = 16 * 1024 * 1024
WS_IDLE_TIMEOUT = 300.0
WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

PATTERN_PERIOD = 251                     # prime, so the pattern never lines up with 2^k
_PATTERN_BLOCK = bytes(range(PATTERN_PERIOD)) * 1044     # ~256 KiB, whole periods


def download_pattern(size: int):
    """The bytes /download sends, as pieces (tests hash the same stream)."""
    block = _PATTERN_BLOCK
    while size > 0:
        piece = block if size >= len(block) else block[:size]
        size -= len(piece)
        yield piece


# ------------------------------------------------------------------ accounts

def check_ssha512(password: str, stored: str) -> bool:
    """Dovecot's {SSHA512}: base64(sha512(password + salt) + salt)."""
    scheme = "{SSHA512}"
    if not stored.upper().startswith(scheme):
        return False
    try:
        raw = base64.b64decode(stored[len(scheme):], validate=True)
    except ValueError:
        return False
    digest, salt = raw[:64], raw[64:]
    if len(digest) != 64:
        return False
    return hmac.compare_digest(hashlib.sha512(password.encode() + salt).digest(), digest)


def make_ssha512(password: str, salt: bytes | None = None) -> str:
    """The stored form check_ssha512 accepts (for fixtures)."""
    salt = os.urandom(8) if salt is None else salt
    return "{SSHA512}" + base64.b64encode(
        hashlib.sha512(password.encode() + salt).digest() + salt).decode()


@dataclass(frozen=True)
class Account:
    name: str
    zimbra_id: str
    password: str


class AccountBook:
    """The accounts file, re-read when its modification time changes."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self._stamp: tuple[int, int] | None = None
        self.server = ""
        self.short = ""
        self._by_name: dict[str, Account] = {}
        self._by_id: dict[str, Account] = {}
        self.refresh()

    def refresh(self) -> None:
        stat = self.path.stat()
        stamp = (stat.st_mtime_ns, stat.st_size)
        if stamp == self._stamp:
            return
        doc = json.loads(self.path.read_text())
        accounts = [Account(name.lower(), entry["zimbraId"], entry["password"])
                    for name, entry in doc["accounts"].items()]
        self.server = doc["server"]
        self.short = doc.get("short") or self.server.split(".")[0]
        self._by_name = {a.name: a for a in accounts}
        self._by_id = {a.zimbra_id: a for a in accounts}
        self._stamp = stamp

    def _fresh(self) -> None:
        try:
            self.refresh()
        except (OSError, ValueError, KeyError, TypeError) as exc:
            # A half-written file during regeneration: keep serving the last good one.
            log.warning("accounts file %s unreadable (%s); still using the previous copy",
                        self.path, exc)

    def authenticate(self, name: str, password: str) -> Account | None:
        self._fresh()
        account = self._by_name.get(name.strip().lower())
        if account and check_ssha512(password, account.password):
            return account
        return None

    def by_id(self, zimbra_id: str) -> Account | None:
        self._fresh()
        return self._by_id.get(zimbra_id)

    def find_user(self, user: str) -> Account | None:
        """An address, or a local part that names exactly one account here."""
        self._fresh()
        user = user.lower()
        if "@" in user:
            return self._by_name.get(user)
        matches = [a for a in self._by_name.values() if a.name.split("@")[0] == user]
        return matches[0] if len(matches) == 1 else None


# ------------------------------------------------------------ HTTP plumbing

class ClientGone(Exception):
    """The client closed or stalled mid-request."""


class BadBody(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status, self.reason = status, reason


class HttpConnection:
    """One client connection: the parser, pending events and the writer."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.parser = RequestParser(max_header_bytes=32 * 1024)
        self.pending: deque = deque()
        self.request: Request | None = None
        self.body_done = False
        self.continue_sent = False
        self.close_after = False

    async def next_event(self, timeout: float):
        while not self.pending:
            try:
                data = await asyncio.wait_for(self.reader.read(READ_SIZE), timeout)
            except (asyncio.TimeoutError, ConnectionError) as exc:
                raise ClientGone(str(exc) or type(exc).__name__) from None
            self.pending.extend(self.parser.feed(data) if data else self.parser.feed_eof())
            if not data and not self.pending:
                return None
        return self.pending.popleft()

    def begin(self, request: Request) -> None:
        self.request = request
        self.body_done = False
        self.continue_sent = False

    async def body(self):
        """The request body, piece by piece (sends 100 Continue if asked)."""
        request = self.request
        if (not self.body_done and not self.continue_sent and request.version == b"1.1"
                and expects_continue(request.headers) and not self.parser.done):
            self.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            self.continue_sent = True
        while not self.body_done:
            event = await self.next_event(BODY_TIMEOUT)
            if event is None:
                raise ClientGone("closed mid-body")
            if isinstance(event, Data):
                yield event.data
            elif isinstance(event, EndOfMessage):
                self.body_done = True
            elif isinstance(event, ParseError):
                self.close_after = True
                raise BadBody(event.status, event.reason)

    async def read_small_body(self, limit: int = SMALL_BODY_LIMIT) -> bytes:
        parts, size = [], 0
        async for piece in self.body():
            size += len(piece)
            if size > limit:
                self.close_after = True
                raise BadBody(413, "request body too large for this endpoint")
            parts.append(piece)
        return b"".join(parts)

    def will_close(self) -> bool:
        """Decided before a response head goes out, so it can say so."""
        if self.close_after or not self.parser.keep_alive:
            return True
        if (not self.body_done and not self.parser.done and not self.continue_sent
                and self.request is not None and expects_continue(self.request.headers)):
            # The client may or may not send the body now: no safe way to
            # tell the next request from it, so end the connection.
            self.close_after = True
        return self.close_after

    async def finish(self) -> bool:
        """Skip what is left of the request body; True if the connection can
        carry another request."""
        if self.close_after:
            return False
        skipped = 0
        try:
            async for piece in self.body():
                skipped += len(piece)
                if skipped > DRAIN_LIMIT:
                    return False
        except (BadBody, ClientGone):
            return False
        return self.parser.keep_alive


@dataclass
class Reply:
    status: int
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"
    headers: tuple = ()


@dataclass
class Streamed:
    """The handler wrote its response itself (downloads, WebSocket)."""
    status: int


# --------------------------------------------------------------------- pages

def _page(title: str, body: str) -> bytes:
    return (f"<!doctype html><html><head><meta charset=utf-8><title>{html.escape(title)}"
            f"</title></head><body>{body}</body></html>\n").encode()


def _login_page(server: str, error: str = "") -> bytes:
    error_html = f'<p class="error">{html.escape(error)}</p>' if error else ""
    return _page("Demo Mail: sign in", f"""
<h1>Demo Mail</h1>{error_html}
<form method="post" action="/login">
<label>Username <input name="username" autocomplete="username"></label>
<label>Password <input name="password" type="password" autocomplete="current-password"></label>
<button type="submit">Sign in</button>
</form>
<p class="server">Served by {html.escape(server)}</p>""")


def _soap_fault(code: str, text: str) -> bytes:
    return json.dumps({
        "Header": {"context": {"_jsns": "urn:zimbra"}},
        "Body": {"Fault": {
            "Code": {"Value": "soap:Sender"},
            "Reason": {"Text": text},
            "Detail": {"Error": {"Code": code, "_jsns": "urn:zimbra"}},
        }},
        "_jsns": "urn:zimbraSoap",
    }).encode()


def _soap_credentials(body: bytes) -> tuple[str, str] | None:
    """(account name, password) from a JSON AuthRequest, or None."""
    def content(node):
        if isinstance(node, str):
            return node
        if isinstance(node, dict) and isinstance(node.get("_content"), str):
            return node["_content"]
        return None
    try:
        doc = json.loads(body)
        request = doc["Body"]["AuthRequest"]
        account, password = request["account"], request["password"]
    except (ValueError, KeyError, TypeError):
        return None
    if isinstance(account, dict) and account.get("by", "name") != "name":
        return None
    name, secret = content(account), content(password)
    if name is None or secret is None:
        return None
    return name, secret


def _cookie(headers, name: bytes) -> str | None:
    for raw in get_all(headers, b"cookie"):
        for part in raw.split(b";"):
            key, sep, value = part.strip().partition(b"=")
            if sep and key == name:
                return value.strip().strip(b'"').decode("latin-1")
    return None


# ----------------------------------------------------------------------- app

class DemoWeb:
    """The app: routes requests, serves connections on any number of listeners."""

    def __init__(self, accounts_path: str | os.PathLike) -> None:
        self.accounts = AccountBook(accounts_path)
        self._servers: list[asyncio.AbstractServer] = []
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def short(self) -> str:
        return self.accounts.short

    async def start(self, listens: list[tuple[str, int]], tls_listens=(), tls=None
                    ) -> list[tuple[str, int]]:
        """Bind every listener (``tls_listens`` with the ``tls`` SSLContext, like a
        mailbox server's 8443); returns the bound (host, port) pairs."""
        bound = []
        for (host, port), ctx in [*((x, None) for x in listens),
                                  *((x, tls) for x in tls_listens)]:
            server = await asyncio.start_server(self._serve, host, port, reuse_address=True,
                                                ssl=ctx)
            self._servers.append(server)
            bound += [sock.getsockname()[:2] for sock in server.sockets]
        return bound

    async def close(self) -> None:
        for server in self._servers:
            server.close()
        for writer in list(self._writers):
            writer.close()
        for server in self._servers:
            await server.wait_closed()
        self._servers.clear()

    # connections -----------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        writer.transport.set_write_buffer_limits(high=READ_SIZE)
        conn = HttpConnection(reader, writer)
        peer = writer.get_extra_info("peername")
        try:
            await self._serve_requests(conn, peer)
        except (ClientGone, ConnectionError):
            pass
        except Exception:
            log.exception("demo web: request handling failed (client %s); connection closed", peer)
        finally:
            self._writers.discard(writer)
            writer.close()

    async def _serve_requests(self, conn: HttpConnection, peer) -> None:
        while True:
            conn.request = None
            event = await conn.next_event(IDLE_TIMEOUT)
            if event is None:
                return
            if isinstance(event, ParseError):
                conn.close_after = True
                await self._send(conn, Reply(event.status, f"{event.reason}\n".encode()))
                log.info("%s %s bad request: %s", self.short, peer, event.reason)
                return
            conn.begin(event)
            status = await self._dispatch(conn, event)
            log.info("%s %s \"%s %s\" %s", self.short, peer and peer[0],
                     event.method.decode(), event.target.decode("latin-1"), status)
            if status == 101 or not await conn.finish():
                return
            conn.pending.extend(conn.parser.start_next())

    async def _dispatch(self, conn: HttpConnection, request: Request) -> int:
        try:
            reply = await self._route(conn, request)
        except BadBody as exc:
            conn.close_after = True
            reply = Reply(exc.status, f"{exc.reason}\n".encode())
        if isinstance(reply, Streamed):
            return reply.status
        await self._send(conn, reply)
        return reply.status

    def _head(self, conn: HttpConnection, status: int, headers: list) -> bytes:
        base = [(b"Server", b"demo-mailbox"), (b"X-Demo-Server", self.short.encode()),
                (b"Date", formatdate(usegmt=True).encode())]
        if conn.will_close():
            base.append((b"Connection", b"close"))
        elif conn.request is not None and conn.request.version == b"1.0":
            base.append((b"Connection", b"keep-alive"))
        return serialize_response_head(status, None, base + headers)

    async def _send(self, conn: HttpConnection, reply: Reply) -> None:
        headers = [(b"Content-Type", reply.content_type.encode()),
                   (b"Content-Length", b"%d" % len(reply.body)), *reply.headers]
        conn.writer.write(self._head(conn, reply.status, headers))
        if reply.body and not (conn.request and conn.request.method == b"HEAD"):
            conn.writer.write(reply.body)
        await conn.writer.drain()

    # routing ---------------------------------------------------------------

    async def _route(self, conn: HttpConnection, request: Request) -> Reply | Streamed:
        target = request.target.decode("latin-1")
        path, _, query = target.partition("?")
        method = request.method
        reading = method in (b"GET", b"HEAD")

        if path.startswith(("/home/", "/service/home/")):
            return self._rest(request, path) if reading else self._not_allowed("GET, HEAD")
        if path.lower() == "/microsoft-server-activesync":
            return await self._activesync(conn, request, query)
        if path.startswith(("/dav/", "/principals/users/")):
            return await self._dav(conn, request, path) if method == b"PROPFIND" \
                else self._not_allowed("PROPFIND")
        if path in ("/service/soap/NoOpRequest", "/service/soap/WaitSetRequest"):
            return await self._soap_wait(conn, path, query) if method == b"POST" \
                else self._not_allowed("POST")
        routes = {
            "/": (reading, lambda: Reply(200, _login_page(self.accounts.server),
                                         "text/html; charset=utf-8")),
            "/health": (reading, lambda: Reply(200, b"ok")),
            "/mail": (reading, lambda: self._mailbox(request)),
        }
        if path in routes:
            allowed, handler = routes[path]
            return handler() if allowed else self._not_allowed("GET, HEAD")
        if path == "/headers":
            return await self._echo_headers(conn, request)
        if path == "/login":
            return await self._login(conn) if method == b"POST" else self._not_allowed("POST")
        if path in ("/service/soap/AuthRequest", "/service/soap"):
            return await self._soap_auth(conn) if method == b"POST" else self._not_allowed("POST")
        if path == "/upload":
            return await self._upload(conn) if method in (b"POST", b"PUT") \
                else self._not_allowed("POST, PUT")
        if path == "/download":
            return await self._download(conn, query) if reading else self._not_allowed("GET, HEAD")
        if path == "/ws/echo":
            return await self._websocket(conn, request) if method == b"GET" \
                else self._not_allowed("GET")
        return Reply(404, f"{self.short}: no such page {path}\n".encode())

    @staticmethod
    def _not_allowed(allow: str) -> Reply:
        return Reply(405, b"method not allowed\n", headers=((b"Allow", allow.encode()),))

    # handlers --------------------------------------------------------------

    def _token_cookie(self, account: Account) -> tuple[str, tuple]:
        token = encode_token(account.zimbra_id, int(time.time() * 1000) + TOKEN_LIFETIME_MS,
                             key=DEMO_KEY)
        cookie = f"ZM_AUTH_TOKEN={token}; Path=/; HttpOnly".encode()
        return token, ((b"Set-Cookie", cookie),)

    def _session(self, request: Request) -> Account | None:
        fields = decode_token(_cookie(request.headers, b"ZM_AUTH_TOKEN") or "")
        if not fields or not fields.get("exp", "").isdigit():
            return None
        if int(fields["exp"]) <= time.time() * 1000:
            return None
        return self.accounts.by_id(fields.get("id", ""))

    async def _login(self, conn: HttpConnection) -> Reply:
        form = urllib.parse.parse_qs((await conn.read_small_body()).decode("utf-8", "replace"),
                                     keep_blank_values=True)
        username = (form.get("username") or [""])[0]
        account = self.accounts.authenticate(username, (form.get("password") or [""])[0])
        if account is None:
            log.info("%s web login failed for %r", self.short, username)
            return Reply(401, _login_page(self.accounts.server,
                                          "The username or password is incorrect."),
                         "text/html; charset=utf-8")
        _, cookie = self._token_cookie(account)
        return Reply(302, _page("Signed in", '<a href="/mail">Continue</a>'),
                     "text/html; charset=utf-8", cookie + ((b"Location", b"/mail"),))

    async def _soap_auth(self, conn: HttpConnection) -> Reply:
        credentials = _soap_credentials(await conn.read_small_body())
        if credentials is None:
            return Reply(400, _soap_fault("service.PARSE_ERROR", "expected a JSON AuthRequest"),
                         "application/json")
        name, password = credentials
        account = self.accounts.authenticate(name, password)
        if account is None:
            return Reply(401, _soap_fault("account.AUTH_FAILED",
                                          f"authentication failed for [{name}]"),
                         "application/json")
        token, cookie = self._token_cookie(account)
        body = json.dumps({
            "Header": {"context": {"_jsns": "urn:zimbra"}},
            "Body": {"AuthResponse": {
                "authToken": [{"_content": token}],
                "lifetime": TOKEN_LIFETIME_MS,
                "_jsns": "urn:zimbraAccount",
            }},
            "_jsns": "urn:zimbraSoap",
        }).encode()
        return Reply(200, body, "application/json", cookie)

    def _mailbox(self, request: Request) -> Reply:
        account = self._session(request)
        if account is None:
            return Reply(302, b"sign in first\n", headers=((b"Location", b"/"),))
        server, name = html.escape(self.accounts.server), html.escape(account.name)
        body = _page(f"Inbox: {account.name}", f"""
<h1>Inbox of {name}</h1>
<p class="server">Rendered by {html.escape(self.short)} ({server})</p>
<ul><li>Welcome to the demo mailbox</li><li>Your mail lives on {server}</li></ul>""")
        return Reply(200, body, "text/html; charset=utf-8",
                     ((b"Cache-Control", b"no-store"),))

    def _rest(self, request: Request, path: str) -> Reply:
        rest = path[len("/service"):] if path.startswith("/service/") else path
        user = urllib.parse.unquote(rest[len("/home/"):].split("/", 1)[0]).lstrip("~")
        account = self.accounts.find_user(user) if user else self._session(request)
        if account is None:
            who = user or "(no session)"
            return Reply(404, f"{self.short}: no mailbox for {who} on {self.accounts.server}\n"
                         .encode())
        return Reply(200, f"{self.short}: {path} for {account.name} "
                          f"on {self.accounts.server}\n".encode())

    def _basic_account(self, request: Request) -> Account | None:
        """The account of the request's Basic credentials, if they are right here."""
        values = get_all(request.headers, b"authorization")
        if len(values) != 1 or not values[0][:6].lower() == b"basic ":
            return None
        try:
            user, colon, password = base64.b64decode(values[0][6:].strip(),
                                                     validate=True).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            return None
        if "\\" in user:
            domain, _, local = user.partition("\\")
            user = f"{local}@{domain}"
        account = self.accounts.find_user(user.strip()) if colon else None   # bare names too
        return account if account and check_ssha512(password, account.password) else None

    @staticmethod
    def _unauthorized() -> Reply:
        return Reply(401, b"authentication required\n",
                     headers=((b"WWW-Authenticate", b'Basic realm="demo"'),))

    @staticmethod
    def _delay(query: str, name: str = "delay") -> float | None:
        """A hold in seconds from the query (0 when absent); None when not one."""
        values = urllib.parse.parse_qs(query).get(name, ["0"])
        try:
            delay = float(values[0]) if len(values) == 1 else -1.0
        except ValueError:
            return None
        return delay if 0 <= delay <= MAX_DELAY else None

    async def _activesync(self, conn: HttpConnection, request: Request,
                          query: str) -> Reply | Streamed:
        await conn.read_small_body()                 # a Ping's WBXML body; not read here
        account = self._basic_account(request)
        if account is None:
            return self._unauthorized()
        delay, then = self._delay(query), self._delay(query, "then")
        if delay is None or then is None:
            return Reply(400, b"delay and then are seconds, 0..3600\n")
        command = (urllib.parse.parse_qs(query).get("Cmd") or ["(none)"])[0][:40]
        await asyncio.sleep(delay)                   # the server holds a long poll
        body = f"{self.short}: activesync Cmd={command} for {account.name}\n".encode()
        headers = [(b"Content-Type", b"text/plain; charset=utf-8"),
                   (b"Content-Length", b"%d" % len(body)),
                   (b"X-Demo-User", account.name.encode()), (b"MS-Server-ActiveSync", b"16.1")]
        writer = conn.writer
        writer.write(self._head(conn, 200, headers) + body[:len(body) // 2])
        await writer.drain()
        if then:
            await asyncio.sleep(then)
        writer.write(body[len(body) // 2:])
        await writer.drain()
        return Streamed(200)

    async def _dav(self, conn: HttpConnection, request: Request, path: str) -> Reply:
        await conn.read_small_body()                 # the PROPFIND body; any props
        account = self._basic_account(request)
        if account is None:
            return self._unauthorized()
        prefix = "/dav/" if path.startswith("/dav/") else "/principals/users/"
        owner = self.accounts.find_user(
            urllib.parse.unquote(path[len(prefix):].split("/", 1)[0]))
        if owner is None:
            return Reply(404, f"{self.short}: no DAV collection {path} here\n".encode())
        body = (f'<?xml version="1.0" encoding="utf-8"?>\n<D:multistatus xmlns:D="DAV:">'
                f"<D:response><D:href>{html.escape(path)}</D:href><D:propstat><D:prop>"
                f"<D:displayname>{html.escape(owner.name)} on {html.escape(self.short)}"
                f"</D:displayname></D:prop><D:status>HTTP/1.1 200 OK</D:status>"
                f"</D:propstat></D:response></D:multistatus>\n").encode()
        return Reply(207, body, "application/xml; charset=utf-8",
                     ((b"X-Demo-User", account.name.encode()),))

    async def _soap_wait(self, conn: HttpConnection, path: str, query: str) -> Reply:
        await conn.read_small_body()
        delay = self._delay(query)
        if delay is None:
            return Reply(400, b"delay is seconds, 0..3600\n")
        await asyncio.sleep(delay)
        name = path.rsplit("/", 1)[1].replace("Request", "Response")
        return Reply(200, json.dumps({"Body": {name: {"_jsns": "urn:zimbraMail"}},
                                      "_jsns": "urn:zimbraSoap"}).encode(), "application/json")

    async def _echo_headers(self, conn: HttpConnection, request: Request) -> Reply:
        size = 0
        async for piece in conn.body():
            size += len(piece)
        body = json.dumps({
            "method": request.method.decode("latin-1"),
            "target": request.target.decode("latin-1"),
            "headers": [[k.decode("latin-1"), v.decode("latin-1")] for k, v in request.headers],
            "body_bytes": size,
        }).encode()
        return Reply(200, body, "application/json", ((b"Cache-Control", b"no-store"),))

    async def _upload(self, conn: HttpConnection) -> Reply:
        digest, size = hashlib.sha256(), 0
        async for piece in conn.body():
            digest.update(piece)
            size += len(piece)
        body = json.dumps({"bytes": size, "sha256": digest.hexdigest()}).encode()
        return Reply(200, body, "application/json")

    async def _download(self, conn: HttpConnection, query: str) -> Reply | Streamed:
        values = urllib.parse.parse_qs(query).get("size", ["0"])
        if len(values) != 1 or not values[0].isdigit() or int(values[0]) > MAX_DOWNLOAD:
            return Reply(400, b"size must be a byte count\n")
        size = int(values[0])
        writer = conn.writer
        writer.write(self._head(conn, 200, [(b"Content-Type", b"application/octet-stream"),
                                            (b"Content-Length", b"%d" % size)]))
        if conn.request.method != b"HEAD":
            for piece in download_pattern(size):
                writer.write(piece)
                await writer.drain()     # bounded memory: wait for the socket
        await writer.drain()
        return Streamed(200)

    async def _websocket(self, conn: HttpConnection, request: Request) -> Reply | Streamed:
        headers = request.headers
        key = get_header(headers, b"sec-websocket-key", b"")
        try:
            key_ok = len(base64.b64decode(key, validate=True)) == 16
        except ValueError:
            key_ok = False
        if (request.body_mode.kind != "upgrade"
                or b"websocket" not in header_tokens(headers, b"upgrade")):
            return Reply(426, b"WebSocket upgrade required\n",
                         headers=((b"Upgrade", b"websocket"),))
        if get_header(headers, b"sec-websocket-version") != b"13":
            return Reply(426, b"WebSocket version 13 required\n",
                         headers=((b"Sec-WebSocket-Version", b"13"),))
        if not key_ok:
            return Reply(400, b"bad Sec-WebSocket-Key\n")
        accept = base64.b64encode(hashlib.sha1(key + WS_GUID).digest())
        conn.writer.write(serialize_response_head(101, None, [
            (b"Server", b"demo-mailbox"), (b"X-Demo-Server", self.short.encode()),
            (b"Upgrade", b"websocket"), (b"Connection", b"Upgrade"),
            (b"Sec-WebSocket-Accept", accept),
        ]))
        await conn.writer.drain()
        await websocket_echo(conn.reader, conn.writer, conn.parser.take_remainder())
        return Streamed(101)


# ------------------------------------------------------------------ WebSocket

def ws_frame(opcode: int, payload: bytes = b"", fin: bool = True, mask: bytes | None = None) -> bytes:
    """One frame. Servers send unmasked; clients (tests) pass a 4-byte mask."""
    first = (0x80 if fin else 0) | opcode
    n = len(payload)
    mask_bit = 0x80 if mask else 0
    if n < 126:
        head = bytes((first, mask_bit | n))
    elif n < 1 << 16:
        head = bytes((first, mask_bit | 126)) + n.to_bytes(2, "big")
    else:
        head = bytes((first, mask_bit | 127)) + n.to_bytes(8, "big")
    if mask:
        return head + mask + ws_unmask(payload, mask)
    return head + payload


def ws_unmask(payload: bytes, mask: bytes) -> bytes:
    """XOR with the repeating 4-byte mask, done on big integers (C speed)."""
    n = len(payload)
    if not n:
        return b""
    key = (mask * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "little") ^ int.from_bytes(key, "little")).to_bytes(n, "little")


class _WsClosed(Exception):
    pass


async def websocket_echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                         initial: bytes) -> None:
    """Echo frames until a close frame, EOF or a protocol error."""
    buf = bytearray(initial)

    async def need(n: int) -> None:
        while len(buf) < n:
            data = await asyncio.wait_for(reader.read(READ_SIZE), WS_IDLE_TIMEOUT)
            if not data:
                raise _WsClosed
            buf.extend(data)

    async def close(code: int) -> None:
        writer.write(ws_frame(0x8, code.to_bytes(2, "big")))
        await writer.drain()

    try:
        while True:
            await need(2)
            first, second = buf[0], buf[1]
            fin, opcode, length = bool(first & 0x80), first & 0x0F, second & 0x7F
            offset = 2
            if length == 126:
                await need(4)
                length, offset = int.from_bytes(buf[2:4], "big"), 4
            elif length == 127:
                await need(10)
                length, offset = int.from_bytes(buf[2:10], "big"), 10
            if first & 0x70 or not second & 0x80 or opcode not in (0, 1, 2, 8, 9, 10):
                return await close(1002)          # RSV bits, unmasked client frame, opcode
            if opcode >= 8 and (length > 125 or not fin):
                return await close(1002)          # control frames are short and whole
            if length > WS_MAX_PAYLOAD:
                return await close(1009)
            await need(offset + 4 + length)
            mask = bytes(buf[offset:offset + 4])
            payload = ws_unmask(bytes(buf[offset + 4:offset + 4 + length]), mask)
            del buf[:offset + 4 + length]
            if opcode in (0, 1, 2):               # echo as sent, fragments included
                writer.write(ws_frame(opcode, payload, fin))
            elif opcode == 9:
                writer.write(ws_frame(0xA, payload))
            elif opcode == 8:
                if len(payload) == 1:
                    return await close(1002)
                writer.write(ws_frame(0x8, payload[:2]))   # echo the status code
                await writer.drain()
                return
            await writer.drain()
    except (_WsClosed, asyncio.TimeoutError, ConnectionError):
        return


# ----------------------------------------------------------------------- CLI

def _parse_listen(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected host:port, got {value!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


async def _run(accounts: str, listens: list[tuple[str, int]], tls_listens=(),
               tls=None) -> None:
    app = DemoWeb(accounts)
    bound = await app.start(listens, tls_listens, tls)
    for host, port in bound:
        log.info("demo web %s listening on %s:%d", app.short, host, port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("demo web %s stopping", app.short)
    await app.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m demo.mailbox_web",
                                     description="Demo web mailbox app for one demo server.")
    parser.add_argument("--accounts", required=True, help="accounts.json of this server")
    parser.add_argument("--listen", action="append", type=_parse_listen, required=True,
                        metavar="HOST:PORT", help="address to serve on (repeatable)")
    parser.add_argument("--tls-listen", action="append", type=_parse_listen, default=[],
                        metavar="HOST:PORT", help="address to serve HTTPS on (repeatable)")
    parser.add_argument("--cert", help="certificate (PEM) for --tls-listen")
    parser.add_argument("--key", help="private key (PEM) for --tls-listen")
    parser.add_argument("--no-uvloop", action="store_true", help="use the stock asyncio loop")
    args = parser.parse_args(argv)
    tls = None
    if args.tls_listen:
        if not (args.cert and args.key):
            parser.error("--tls-listen needs --cert and --key")
        import ssl
        tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        tls.load_cert_chain(args.cert, args.key)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    run = asyncio.run
    if not args.no_uvloop:
        try:
            import uvloop
            run = uvloop.run
        except ImportError:
            pass
    run(_run(args.accounts, args.listen, args.tls_listen, tls))


if __name__ == "__main__":
    main()
