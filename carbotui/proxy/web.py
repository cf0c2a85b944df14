"""The web front: HTTP(S) reverse proxy to the mailbox servers' web ports.

Per request, in Carbonio's order (``webrules.route_hint``): a login names its
account; a REST path names the user (``/home/<user>/…``, ``/service/home/~<user>/…``);
ActiveSync its Basic-auth user (``DOMAIN\\user`` is ``user@DOMAIN``), else its
``User=``; a DAV path its user (``/dav/<user>/…``, ``/principals/users/<user>/…``);
else the ``ZM_AUTH_TOKEN`` cookie or a ``zauthtoken=`` argument names the account
(``ZM_ADMIN_AUTH_TOKEN`` on the admin port); else the request is balanced across
healthy upstreams. A name that resolves to no account is balanced. Basic
credentials are a login wherever they go: throttled before, audited and counted
after a 401 (failed) or the first 2xx/3xx of those credentials in a while
(``CredentialCache``), so a phone's steady traffic is one login. The response
head waits ``path_timeouts`` for its path (ActiveSync: ``polling_timeout``), else
``read_timeout``; a held long poll costs one timer and no buffer. Bodies stream both ways
with backpressure, WebSocket upgrades become a raw splice, and nothing in a
response names a backend. Port 80 follows the mail mode from LDAP.

Logins (security review M2, M4): a request that may log in (the form, and any
``POST /service/soap*`` however its target is spelled: ``webrules.login_kind``)
has its body read whole first, up to ``login_body_limit`` whatever its framing,
so the name is known before a mailbox server sees anything: the user throttle
is checked, the login routed to the account's server, and after the answer the
same name is audited and counted. A form over the limit is a 413; a larger
SOAP body streams through but is cut (413) before its end if it spells a login.

What reaches a mailbox server (M3, L5): forwarding headers are ours only
(``webrules.upstream_headers``), header names with ``_`` are dropped, and only
a WebSocket handshake may become a tunnel, only on a 101 that accepts it.

Slow or greedy clients (L2, L3): a head must arrive within ``header_timeout``
of its first byte (``keepalive_timeout`` is only the wait for that byte), a
body keeps moving at ``body_min_rate``, a client that accepts nothing for
``send_timeout`` is cut, and one address holds at most
``max_connections_per_ip`` connections per worker.
"""
from __future__ import annotations

import asyncio
import logging
import os
import re
import time
from dataclasses import dataclass
from http import HTTPStatus
from typing import TYPE_CHECKING, Any, Final

from carbotui.core import audit
from carbotui.services.routes import RouteError
from carbotui.protocols import http11
from carbotui.protocols import webrules
from carbotui.protocols import acme, webheaders
from carbotui.proxy import acme as acme_files
from carbotui.proxy.httpconn import HttpConnection, SendTimeout
from carbotui.proxy.listeners import session_addresses
from carbotui.proxy.relay import Splice
from carbotui.protocols.sasl import safe_text
from carbotui.proxy.upstreams import Upstream
from carbotui.protocols.webrules import FORM, BodyDeadline, CredentialCache, LoginMarkerScan

if TYPE_CHECKING:
    from carbotui.proxy.context import SessionServices

try:                         # where setup.py compiles this module (mypyc brings it)
    from mypy_extensions import mypyc_attr
except ImportError:          # pure Python: the decorator means nothing
    def mypyc_attr(*_args: Any, **_kwargs: Any) -> Any:  # type: ignore[misc]
        return lambda cls: cls

log: Final = logging.getLogger("carbotui.proxy.web")

BASIC: Final = "basic"                    # a Login from Authorization: Basic (ActiveSync, DAV, REST)
# Basic credentials that logged in lately, as keyed hashes (this process's own key):
# a phone sends them on every request; it is audited and counted once per login.
_RECENT_CREDENTIALS: Final = CredentialCache(os.urandom(32))
_HOST: Final = re.compile(rb"^[A-Za-z0-9.\-]{1,253}(?::\d{1,5})?$|^\[[0-9A-Fa-f:.]{2,45}\](?::\d{1,5})?$")
# Host values _HOST matched before: a set lookup instead of a regex call per request.
# Only values it matched (at most 259 bytes each), at most _GOOD_HOSTS_MAX (emptied when
# full); any other value is judged by _HOST every time.
_GOOD_HOSTS: Final[set[bytes]] = set()
_GOOD_HOSTS_MAX: Final = 1024


def _good_host(host: bytes) -> bool:
    """Whether ``_HOST.match(host)`` matches, remembered for the values it matched."""
    if host in _GOOD_HOSTS:
        return True
    if _HOST.match(host) is None:
        return False
    if len(_GOOD_HOSTS) >= _GOOD_HOSTS_MAX:
        _GOOD_HOSTS.clear()
    _GOOD_HOSTS.add(host)
    return True
RESPONSE_DROP: Final = frozenset({b"server", b"x-powered-by"})
# request headers dropped by (expect answered here, body length ours)
_DROP_BY_CASE: Final = {(False, False): frozenset(), (True, False): frozenset({b"expect"}),
                        (False, True): frozenset({b"content-length"}),
                        (True, True): frozenset({b"expect", b"content-length"})}
COALESCE_LIMIT: Final = 64 * 1024         # body bytes sent in one write with the response head
DISCARD_LIMIT: Final = 1024 * 1024        # body bytes read and dropped before closing after a refusal
ALLOW: Final = b"GET, HEAD, POST, PUT, DELETE, OPTIONS, PATCH"


class _Pumped:
    """The body pump of a request with nothing to pump: as a future that finished with
    True (what _relay_response and _proxy ask of it), without a future per request."""

    def done(self) -> bool:
        return True

    def cancelled(self) -> bool:
        return False

    def result(self) -> bool:
        return True

    def cancel(self) -> bool:
        return False


_PUMPED: Final = _Pumped()


class Throttled(Exception):
    """A web login refused by the user throttle; the text is Carbonio's."""


@dataclass(slots=True)
class Login:
    """A request that logs in. As for mail logins (M1), the canonical form of the
    name it gives is checked and routed, and the account the route resolved (alias,
    bare name ...) is checked, audited and counted when there is one."""
    kind: str                  # webrules.FORM | webrules.SOAP | BASIC
    typed: str                 # as the body (or the Basic user-id) gives it; '' for none
    name: str                  # audit.canonical_login(typed)
    account: str = ""          # route.account, once routed
    proto: str = "soap"        # audit protocol=: soap, zsync, http_dav, http_basic
    digest: bytes = b""        # BASIC: the credentials' keyed hash (CredentialCache)

    @property
    def counted(self) -> str:
        """The user-throttle counter (and audit account) this login goes to."""
        return self.account or self.name


def error_page(status: int, text: str, *, close: bool = True, extra=(),
               head_only: bool = False) -> bytes:
    """A small HTML error response. ``head_only`` for HEAD: the same head, no
    content (RFC 9110 §9.3.2), or the client would read the page as the next
    response."""
    title = f"{status} {HTTPStatus(status).phrase}"
    body = (f"<!doctype html><html><head><title>{title}</title></head><body>"
            f"<h1>{title}</h1><p>{text}</p></body></html>\n").encode()
    headers = [(b"Content-Type", b"text/html; charset=utf-8"),
               (b"Content-Length", str(len(body)).encode()), *extra]
    if close:
        headers.append((b"Connection", b"close"))
    head = http11.serialize_response_head(status, None, headers)
    return head if head_only else head + body


def cookie(headers, name: bytes) -> bytes | None:
    return webrules.cookie_value(headers, name)


# Compiled by mypyc (setup.py); h2conn's H2Session and H2Stream subclass it in Python.
@mypyc_attr(allow_interpreted_subclasses=True)
class WebSession(HttpConnection):
    """One client connection to an HTTP, HTTPS or admin listener."""

    _scanned = False        # the request in flight has a large SOAP body being scanned

    def __init__(self, services: SessionServices, kind: str, tls: bool, addresses=None):
        super().__init__(http11.RequestParser(
            max_header_bytes=services.settings.web.max_header_bytes))
        self.services: SessionServices = services     # native (context.py): one load a field
        self.addresses: Any = addresses      # ((client ip, port), (local ip, port)) from PROXY
        self.kind = kind                # http | https | admin
        self.scheme = "https" if tls else "http"
        self.id = services.next_session_id()
        self.client_ip = self.local_ip = ""
        self.client_port = self.local_port = 0
        self.account = self.server = ""
        self.state = "http"
        self.started = time.time()
        self.bytes_out = 0
        self._task: asyncio.Task | None = None
        self._ip_counted = False          # holds a place in connections_per_ip
        # per request
        self._method = b"GET"
        self._head_sent = False           # the response head went out: no error page now
        # the request body broke off (a ParseError; None: client gone)
        self._bad_body: Any = False
        self._body_done = False           # its EndOfMessage was taken
        self._body: BodyDeadline | None = None
        self._idle = False                # between requests (a drain may close it now)
        self._up: HttpConnection | None = None   # the upstream of the request in flight
        self._status = 0                  # of the response head sent (access.log)
        self._sent_before = 0             # bytes_out when the request began
        self._upstream: Upstream | None = None
        # per request on HTTPS: the response headers of its Host's domain (webheaders)
        self._added_headers = webheaders.EMPTY

    # -- lifecycle ----------------------------------------------------------
    def connection_made(self, transport) -> None:
        if self.scheme == "https" and type(self) is WebSession:
            # The TLS handshake is over: one that picked h2 by ALPN goes to an H2Session.
            # Chosen here, not by a Python subclass: on an instance of one, every method
            # call of the compiled code goes through a Python lookup.
            hand_over = self.services.h2_hand_over
            if hand_over is not None and hand_over(self, transport):
                return
        super().connection_made(transport)
        (self.client_ip, self.client_port,
         self.local_ip, self.local_port) = session_addresses(transport, self.addresses)
        w = self.services
        stats = w.stats                     # compiled: its counters read natively
        stats.connections[self.kind] += 1
        # A connection accepted while draining is still served: refusing it would
        # turn a graceful restart into a failed login.
        if len(w.sessions) >= w.settings.mail.max_connections:
            stats.rejected_busy += 1
            transport.write(error_page(503, "The service is busy. Please try again shortly.",
                                       extra=[(b"Retry-After", b"5")]))
            transport.close()
            return
        per_ip = w.settings.web.max_connections_per_ip
        if per_ip and not w.throttle.exempt(self.client_ip):
            if not w.connections_per_ip.acquire("web", self.client_ip, per_ip):
                # nginx's limit_conn answers 503 too
                stats.throttled["ip_connections"] += 1
                transport.write(error_page(503, "Too many connections from your address. "
                                                "Please try again shortly.",
                                           extra=[(b"Retry-After", b"5")]))
                transport.close()
                return
            self._ip_counted = True
        w.sessions[self.id] = self
        self._task = w.loop.create_task(self._serve())

    async def _admitted(self) -> bool:
        """Blocks and the web IP limit (throttle:proto=h), checked once per connection."""
        if self.services.throttle.exempt(self.client_ip):
            return True
        reject = await self.services.throttle.check_ip(self.kind, self.client_ip)
        if reject:
            self.services.stats.throttled["ip"] += 1
            self.send(error_page(403, reject + "."))
        return not reject

    def connection_lost(self, exc) -> None:
        super().connection_lost(exc)
        if self._up is not None and self.splice is None:
            # The client went away while its request was held (a long poll): the
            # upstream is let go now, not when it answers an hour later.
            self._up.close()
        if self._ip_counted:
            self._ip_counted = False
            self.services.connections_per_ip.release("web", self.client_ip)
        self.services.session_ended(self.id)

    def shutdown(self, reason: str) -> None:
        self.close()

    def drain_started(self) -> None:
        """SIGTERM: a connection between two requests is closed now (RFC 9112 §9.6: a
        client retries a request that met the close); one with a request in flight
        finishes it (its response says ``Connection: close``) until drain_timeout."""
        if self._idle and not self.parser.buffered and not self.events:
            self.close()

    def send(self, data: bytes) -> None:
        self.bytes_out += len(data)
        if self._status < 200 and data[:5] == b"HTTP/":     # a response head (access.log)
            self._status = int(data[9:12]) if data[9:12].isdigit() else 0
        self.write(data)

    def _request_done(self, req: http11.Request | None) -> None:
        """_ws_request_done (a module function: compiled code calls it natively)."""
        return _ws_request_done(self, req)

    def _page(self, status: int, text: str, *, close: bool = True, extra=()) -> bytes:
        return error_page(status, text, close=close, head_only=self._method == b"HEAD",
                          extra=webheaders.add_missing(list(extra), self._added_headers))

    async def _refuse(self, status: int, text: str, extra=()) -> bool:
        """An error page that ends the connection, as its ``Connection: close`` says.
        What is left of the body is read (bounded) and dropped first, so that the
        client reads the page rather than a reset."""
        self.send(self._page(status, text, extra=extra))
        await self._discard_body()
        return False

    # -- request loop -------------------------------------------------------
    async def _serve(self) -> None:
        web = self.services.settings.web
        try:
            if not await self._admitted():
                return
            first = True
            while True:
                try:
                    if not first:
                        # Between requests the client may think for keepalive_timeout; from
                        # the first byte of a head on, header_timeout applies to the whole
                        # head, as for the first request (no slow head on a kept-alive
                        # connection).
                        # (no break inside the try/finally: mypyc has none)
                        stop = False
                        self._idle = True
                        try:
                            if self.services.draining:
                                stop = True
                            else:
                                await self.wait_readable(web.keepalive_timeout)
                        except asyncio.TimeoutError:
                            stop = True
                        finally:
                            self._idle = False
                        if stop:
                            break
                    event = await self.next_event(web.header_timeout)
                except asyncio.TimeoutError:
                    if self.parser.buffered:       # a head started but never finished
                        self.send(error_page(408, "The request took too long to arrive."))
                        _ws_request_done(self, None)
                    break
                if event is None:
                    break
                if isinstance(event, http11.ParseError):
                    self.send(error_page(event.status, "The request could not be understood."))
                    _ws_request_done(self, None)
                    break
                if not isinstance(event, http11.Request):
                    break
                try:
                    keep = await _ws_handle(self, event)
                finally:
                    _ws_request_done(self, event)
                if not keep or not self.parser.keep_alive or self.closed \
                        or self.services.draining:
                    break
                self.start_next()
                first = False
        except (ConnectionError, OSError) as exc:
            log.debug("client %s: %s", self.client_ip, exc)
        finally:
            if self.splice is None:
                self.close()
            self.services.session_ended(self.id)

    async def _handle(self, req: http11.Request) -> bool:
        """_ws_handle (a module function: compiled code calls it natively)."""
        return await _ws_handle(self, req)

    async def _body_event(self):
        """The next event of the request body within its deadline (BodyDeadline);
        None when the client went away. Raises TimeoutError when it is too slow."""
        clock = self._body
        timeout = clock.timeout(self.services.loop.time())
        if timeout <= 0:
            raise asyncio.TimeoutError
        event = await self.next_event(timeout)
        if type(event) is http11.Data:
            clock.received += len(event.data)
        elif type(event) is http11.EndOfMessage:
            self._body_done = True
        return event

    async def _read_login_body(self, req: http11.Request, kind: str
                               ) -> tuple[bytes, bool] | None:
        """(body, whole): the body of a possible login, read up to login_body_limit
        whatever its framing (a chunked login is checked like any other); whole is
        False when there is more. None when the client was answered (or is gone)."""
        limit = self.services.settings.web.login_body_limit
        mode = req.body_mode
        if kind == FORM and mode.kind == "length" and mode.length is not None \
                and mode.length > limit:
            self.send(self._page(413, "The login request is too large."))
            if not http11.expects_continue(req.headers):   # (those never send it)
                await self._discard_body()
            return None
        if req.version == b"1.1" and http11.expects_continue(req.headers):
            self.send(b"HTTP/1.1 100 Continue\r\n\r\n")
        body = bytearray()
        try:
            while len(body) <= limit:
                event = await self._body_event()
                if type(event) is http11.Data:
                    body += event.data
                elif type(event) is http11.EndOfMessage:
                    return bytes(body), True
                else:
                    if isinstance(event, http11.ParseError):
                        self.send(self._page(event.status,
                                             "The request body could not be understood."))
                    return None
        except asyncio.TimeoutError:
            self.send(self._page(408, "The request took too long to arrive."))
            return None
        return bytes(body), False

    async def _discard_body(self, max_bytes: int = DISCARD_LIMIT) -> bool:
        """Read and drop what is left of the request body: True when it ended (then
        another request may follow), False when it broke off, was too slow or went
        on past ``max_bytes``."""
        seen = 0
        try:
            while not self._body_done:
                event = await self._body_event()
                if event is None or isinstance(event, http11.ParseError):
                    return False
                if type(event) is http11.Data:
                    seen += len(event.data)
                    if seen > max_bytes:
                        return False
        except asyncio.TimeoutError:
            return False
        return True

    async def _plain_http(self, req: http11.Request, host: bytes) -> bool:
        """Port 80: 'redirect' sends the same URL over https; 'https' refuses."""
        webroot = self.services.settings.web.acme_webroot
        if webroot is not None and acme.is_challenge(req.target):      # in every mail mode
            self.send(await acme_files.respond(webroot, req.method, req.target))
            return await self._discard_body()
        live = self.services.live
        if live.mail_mode == "redirect" and host:
            hostname = host.rsplit(b":", 1)[0] if not host.endswith(b"]") else host
            port = live.https_port
            authority = hostname + (b":%d" % port if port and port != 443 else b"")
            location = b"https://" + authority + req.target
            if not req.target.startswith(b"/"):
                location = b"https://" + authority + b"/"
            self.send(http11.serialize_response_head(
                301, None, [(b"Location", location), (b"Content-Length", b"0")]))
            return await self._discard_body()
        self.send(self._page(403, "This service is available over HTTPS only.", close=False))
        return await self._discard_body()

    def _basic_login(self, req: http11.Request, basic: webrules.Basic) -> Login | None:
        """A Login for Basic credentials, or None when these very credentials logged
        in lately (CredentialCache): then they are not checked or audited again."""
        name = audit.canonical_login(basic.counted)
        digest = _RECENT_CREDENTIALS.digest(name, basic.secret)
        if _RECENT_CREDENTIALS.fresh(digest, self.services.loop.time()):
            return None
        return Login(BASIC, basic.typed, name, proto=webrules.basic_protocol(req.target),
                     digest=digest)

    async def _choose(self, req: http11.Request, login: Login | None,
                      hint: webrules.RouteHint | None = None) -> tuple[Upstream | None, bool]:
        """(upstream, routed): routed means it must be this user's own server."""
        w = self.services
        ups = w.upstreams_for(self.kind)
        if hint is None:
            hint = webrules.route_hint(req.target, req.headers, admin=self.kind == "admin")
        if login is not None and login.kind == BASIC:
            # Not a route key in itself (ActiveSync's user is in the hint).
            await self._check_login(login, req, self._basic_route)
        elif login is not None and login.name:
            # Checked before anything reaches a mailbox server, counted after its
            # answer (_audit_web_login), on the same key.
            route = await self._check_login(
                login, req, lambda name: w.router.route_mail(name, "http", self.local_ip))
            if route is not None:
                if w.in_maintenance(route.server.hostname):
                    return None, True          # no new logins there: 503
                return ups.for_server(route.server.hostname), True
        if hint.user:
            # REST, ActiveSync (Basic user, else User=), DAV: that user's own server;
            # a name that is no account is balanced (never refused outright).
            route = await w.router.route_mail(hint.user, "http", self.local_ip)
            if route is not None:
                self.account = route.account
                return ups.for_server(route.server.hostname), True
        if hint.zimbra_id:
            route = await w.router.route_by_id(hint.zimbra_id, "http",
                                               admin=self.kind == "admin")
            if route is not None:
                self.account = route.account
                return ups.for_server(route.server.hostname), True
        return ups.pick(self.client_ip, w.settings.web.balance), False

    async def _check_login(self, login: Login, req, resolve):
        """The user throttle on the name as typed, then on the account ``resolve(name)``
        finds (an alias, a bare name: the account's own counter decides), before anything
        is sent; Throttled when either refuses. Returns the route (or None)."""
        w = self.services
        throttled = w.throttle.counts_users(self.client_ip)
        reject = throttled and await w.throttle.check_user(login.name, ip=self.client_ip)
        route = None
        if not reject:
            route = await resolve(login.name)
            if route is not None:
                login.account = route.account
                if throttled and route.account != login.name:
                    reject = await w.throttle.check_user(route.account, ip=self.client_ip)
        if reject:
            self._throttled(login, req)
            raise Throttled(reject)
        return route

    async def _basic_route(self, name: str):
        """The account of Basic credentials, or None: no lookup of garbage, and an
        unreachable directory counts the name as typed."""
        if not webrules.checked_user(name):
            return None
        try:
            return await self.services.router.route_mail(name, "http", self.local_ip)
        except RouteError:
            return None

    def _throttled(self, login: Login, req) -> None:
        self.services.stats.throttled["user"] += 1
        self._audit_login(login.counted, login.proto, audit.failure(
            login.typed, "login rejected: too many failed logins"), req)

    # -- proxying -----------------------------------------------------------
    def _request_head(self, req: http11.Request, upstream: Upstream, *, expect: bool = True,
                      length: int | None = None, websocket: bool = False) -> bytes:
        """_ws_request_head (a module function: compiled code calls it natively)."""
        return _ws_request_head(self, req, upstream, expect=expect, length=length,
                                websocket=websocket)

    def _response_head(self, resp: http11.Response, req: http11.Request,
                       upstream: Upstream) -> tuple[bytes, bool]:
        """_ws_response_head (a module function: compiled code calls it natively)."""
        return _ws_response_head(self, resp, req, upstream)

    def _public_location(self, location: bytes, req, upstream: Upstream) -> bytes:
        """A redirect to a backend address becomes one to the public host."""
        m = re.match(rb"^(https?)://([^/?#]*)(.*)$", location, re.S)
        if not m:
            return location
        authority = m.group(2).lower()
        names = set()
        for u in self.services.all_upstreams():
            for host in (u.address.encode(), u.server.hostname.encode()):
                names.add(host)
                names.add(host + b":%d" % u.port)
        if authority not in names:
            return location
        host = http11.get_header(req.headers, b"host") or self.local_ip.encode()
        return self.scheme.encode() + b"://" + host + (m.group(3) or b"/")

    @staticmethod
    def _idle_connection(upstream: Upstream, method: bytes) -> HttpConnection | None:
        """_ws_idle_connection (a module function: compiled code calls it natively)."""
        return _ws_idle_connection(upstream, method)

    async def _connect(self, upstream: Upstream, method: bytes) -> HttpConnection:
        """A connection to the upstream whose parser expects the answer to ``method``
        (a HEAD answer has no body whatever its headers say, RFC 9110 §9.3.2)."""
        conn = _ws_idle_connection(upstream, method)
        if conn is not None:
            return conn
        loop = self.services.loop
        conn = HttpConnection(http11.ResponseParser(method))
        tls = self.services.web_upstream_tls
        await asyncio.wait_for(loop.create_connection(
            lambda: conn, upstream.address, upstream.port, ssl=tls,
            server_hostname=upstream.server.hostname if tls else None),
            self.services.settings.web.connect_timeout)
        return conn

    async def _proxy(self, req: http11.Request, upstream: Upstream, routed: bool,
                     body: bytes | None, whole: bool, login: Login | None) -> bool:
        """_ws_proxy (a module function: compiled code calls it natively)."""
        return await _ws_proxy(self, req, upstream, routed, body, whole, login)

    def _take_end(self) -> None:
        """_ws_take_end (a module function: compiled code calls it natively)."""
        return _ws_take_end(self)

    async def _pump_body(self, req, up: HttpConnection, scan: LoginMarkerScan | None) -> bool:
        """Client body -> upstream, re-framed, with backpressure both ways. With
        ``scan``, a piece that spells a login is never sent: the upstream is cut
        before the end of the body, so it never acts on it (413 to the client)."""
        kind = req.body_mode.kind
        if kind in ("none", "upgrade"):
            _ws_take_end(self)
            return True
        while True:
            try:
                event = await self._body_event()
            except asyncio.TimeoutError:
                event = http11.ParseError(408, "the request body arrived too slowly")
            if event is None or isinstance(event, http11.ParseError):
                self._bad_body = event      # _proxy answers the client with its status
                up.close()
                return False
            if type(event) is http11.Data:
                if scan is not None and scan.feed(event.data):
                    log.info("client %s: a SOAP body over %d bytes spells a login; cut",
                             self.client_ip, self.services.settings.web.login_body_limit)
                    self._bad_body = http11.ParseError(413, "login in a large SOAP body")
                    up.abort()
                    return False
                up.write(http11.chunk(event.data) if kind == "chunked" else event.data)
                await up.drain()
            elif type(event) is http11.EndOfMessage:
                if kind == "chunked":
                    up.write(http11.LAST_CHUNK)
                return True

    async def _relay_response(self, req, up: HttpConnection, upstream: Upstream,
                              body_task, login: Login | None, websocket: bool) -> bool:
        """_ws_relay_response (a module function: compiled code calls it natively)."""
        return await _ws_relay_response(self, req, up, upstream, body_task, login, websocket)

    async def _splice(self, up: HttpConnection) -> bool:
        """After 101: raw bytes both ways until either side closes."""
        done = self.services.loop.create_future()

        def ended(reason: str) -> None:
            if not done.done():
                done.set_result(reason)

        splice = Splice(self.transport, up.transport,
                        idle_timeout=self.services.settings.web.polling_timeout, on_close=ended)
        self.splice, up.splice = splice, splice
        self.on_splice_data, up.on_splice_data = splice.from_client, splice.from_backend
        self.state = "websocket"
        for data in (self.parser.take_remainder(),):
            if data:
                splice.from_client(data)
        for data in (up.parser.take_remainder(),):
            if data:
                splice.from_backend(data)
        self.transport.resume_reading()
        up.transport.resume_reading()
        if self.closed or up.closed:
            splice.close("closed during upgrade")
        await done
        return False

    # -- audit --------------------------------------------------------------
    def _audit_web_login(self, req, resp: http11.Response, login: Login) -> None:
        """The login's answer: audited and counted on the account (or canonical name)
        that was checked before, as for mail logins."""
        name = login.counted[:320] or "(unknown)"
        w = self.services
        if login.kind == BASIC:
            # A 401 is a failed login; a 2xx/3xx a login (then these credentials are
            # not audited again for a while); anything else says nothing of them.
            if resp.status == 401:
                ok = False
                _RECENT_CREDENTIALS.forget(login.digest)
            elif 200 <= resp.status < 400:
                ok = True
                _RECENT_CREDENTIALS.remember(login.digest, w.loop.time())
            else:
                return
        else:
            cookies = b" ".join(http11.get_all(resp.headers, b"set-cookie"))
            ok = resp.status < 400 and b"ZM_AUTH_TOKEN=" in cookies
        if ok:
            error = ""
            self.account = name
            w.stats.logins_ok[login.proto] += 1
        else:
            reason = ("invalid password" if resp.status in (401, 403)
                      else f"login failed (HTTP {resp.status})")
            error = audit.failure(login.typed[:320] or name, reason)
            w.stats.logins_failed[login.proto] += 1
        self._audit_login(name, login.proto, error, req)
        if login.name and w.throttle.counts_users(self.client_ip):
            w.loop.create_task(w.throttle.count_user(login.counted, success=ok,
                                                     ip=self.client_ip))

    def _audit_login(self, name: str, proto: str, error: str, req) -> None:
        user_agent = (http11.get_header(req.headers, b"user-agent") or b"").decode("latin-1")
        self.services.audit.write(audit.AuditEvent(
            account=name, protocol=proto, client_ip=self.client_ip, client_port=self.client_port,
            proxy_ip=self.local_ip, error=error,
            user_agent=safe_text(user_agent, 120),       # C0/C1 controls never reach a log
            thread=f"{'Admin' if self.kind == 'admin' else 'Https'}Server-{self.services.index}"))


# -- the per-request path, as module functions -----------------------------------
# WebSession's methods of the same names call these; so does the compiled code itself: a
# method call on an instance of a Python subclass (h2conn's H2Session, H2Stream) goes
# through a Python lookup and argument parsing, a module function is a direct C call.
# (Only methods no subclass overrides.)

def _ws_request_done(self: WebSession, req: http11.Request | None) -> None:
    """One line in access.log and the web metrics per request, answered or not
    (``req`` None: no head could be parsed); then the next request starts afresh."""
    logs = self.services.logs
    if logs is not None:
        # the session's fields read here (native attributes), not by logs.web_request
        logs.web_line(self.kind, self.client_ip, self.client_port, self.scheme,
                      self.local_ip, self.local_port, req, self._status,
                      self.bytes_out - self._sent_before, self._upstream)
    self._status, self._sent_before, self._upstream = 0, self.bytes_out, None


async def _ws_handle(self: WebSession, req: http11.Request) -> bool:
    w = self.services
    web = w.settings.web
    w.stats.web_requests[self.kind] += 1
    req = webrules.without_underscored(req)
    self._method = req.method
    self._head_sent = False
    self._bad_body = False
    self._body_done = False
    self._body = BodyDeadline(w.loop.time(), web.body_timeout, web.body_min_rate)
    host = http11.get_header(req.headers, b"host") or b""
    if host and not _good_host(host):
        self.send(self._page(400, "Bad Host header."))
        return False
    if self.kind == "http":
        return await self._plain_http(req, host)
    self._added_headers = w.live.response_headers.for_host(host)     # HTTPS only
    if req.method == b"CONNECT":
        # RFC 9110 §9.3.6: CONNECT asks a forward proxy for a tunnel; this is not one.
        return await self._refuse(405, "CONNECT is not supported here.",
                                  extra=[(b"Allow", ALLOW)])
    kind = webrules.login_kind(req.method, req.target) if self.kind != "admin" else None
    body: bytes | None = None
    whole = True
    login = None
    if kind is not None:
        got = await self._read_login_body(req, kind)
        if got is None:
            return False
        body, whole = got
        problem = None
        if whole:
            try:
                name = webrules.login_name(kind, body)
            except webrules.BadLogin as exc:
                problem = str(exc)
            else:
                if name is not None:
                    login = Login(kind, name, audit.canonical_login(name))
        elif kind == FORM or webrules.has_login_marker(body):
            log.info("client %s: login body over %d bytes refused", self.client_ip,
                     web.login_body_limit)
            return await self._refuse(413, "The login request is too large.")
        else:
            problem = webrules.soap_body_problem(body[:512])
        if problem:
            log.info("client %s: login request refused: %s", self.client_ip, problem)
            return await self._refuse(400, "The login request could not be understood.")
    hint = webrules.route_hint(req.target, req.headers, admin=self.kind == "admin")
    if login is None and hint.basic is not None:
        login = self._basic_login(req, hint.basic)
    try:
        if login is None and not hint.user and not hint.zimbra_id:
            # balanced, as _choose would decide it, without a coroutine per request
            upstream, routed = w.upstreams_for(self.kind).pick(self.client_ip,
                                                               web.balance), False
        else:
            upstream, routed = await self._choose(req, login, hint)
    except Throttled as reject:
        self.send(self._page(403, f"{reject}."))
        return False
    except RouteError:
        return await self._refuse(503, "The mail service is temporarily unavailable. "
                                       "Please try again in a moment.",
                                  extra=[(b"Retry-After", b"10")])
    if upstream is None:
        return await self._refuse(503 if routed else 502,
                                  "Your mailbox is temporarily unavailable. Please try "
                                  "again in a moment." if routed else
                                  "The mail service is temporarily unavailable.",
                                  extra=[(b"Retry-After", b"10")])
    return await _ws_proxy(self, req, upstream, routed, body, whole, login)


def _ws_request_head(self: WebSession, req: http11.Request, upstream: Upstream, *,
                     expect: bool = True, length: int | None = None,
                     websocket: bool = False) -> bytes:
    """The head for the mailbox server. ``length``: the body was read whole and
    goes with that Content-Length, whatever framing the client used."""
    # we answered 100-continue ourselves; the body goes with its own length
    drop = _DROP_BY_CASE[(not expect, length is not None)]
    headers, has_host = webrules.forward_request_headers(
        req.headers, client_ip=self.client_ip, scheme=self.scheme,
        extend_forwarded_for=self.addresses is not None
        and self.services.settings.web.extend_forwarded_for, drop=drop)
    if not has_host:
        headers.append((b"Host", upstream.server.hostname.encode()))
    if length is not None:
        headers.append((b"Content-Length", b"%d" % length))
    elif req.body_mode.kind == "chunked":
        headers.append((b"Transfer-Encoding", b"chunked"))
    if websocket:
        headers.append((b"Connection", b"upgrade"))
        headers.append((b"Upgrade", b"websocket"))
    return http11.serialize_request_head(req.method, req.target, headers)


def _ws_response_head(self: WebSession, resp: http11.Response, req: http11.Request,
                      upstream: Upstream) -> tuple[bytes, bool]:
    """Headers for the client, and whether the body is re-chunked."""
    headers, lows = http11.forwardable(resp.headers, RESPONSE_DROP)
    if b"location" in lows:
        location = headers[lows.index(b"location")][1]
        fixed = self._public_location(location, req, upstream)
        if fixed != location:
            headers = [(k, fixed if low == b"location" else v)
                       for (k, v), low in zip(headers, lows)]
    rechunk = False
    if not self.parser.keep_alive or self.services.draining:
        headers.append((b"Connection", b"close"))       # the client asked, or we stop
        lows.append(b"connection")
    if resp.status == 101:
        headers.append((b"Connection", b"upgrade"))
        headers.append((b"Upgrade", b"websocket"))      # the only one let through
    elif resp.body_mode.kind in ("chunked", "until-close"):
        if req.version == b"1.1":
            headers.append((b"Transfer-Encoding", b"chunked"))
            lows.append(b"transfer-encoding")
            rechunk = True
        else:
            headers.append((b"Connection", b"close"))
            lows.append(b"connection")
    # the server's own headers win; ours were checked when their set was made
    added = webheaders.missing_lines(headers, self._added_headers, lows) \
        if resp.status != 101 else b""
    return http11.serialize_response_head(resp.status, resp.reason, headers,
                                          checked=added), rechunk


def _ws_idle_connection(upstream: Upstream, method: bytes) -> HttpConnection | None:
    """A kept-alive connection to the upstream, restarted for the answer to
    ``method``; None when there is none (then _connect makes one)."""
    while upstream.idle:
        conn = upstream.idle.pop()
        # An idle connection that has sent anything since is not in step any more.
        if conn.reusable and not conn.events and not conn.parser.buffered:
            conn.start_next(method)
            return conn
        conn.close()
    return None


async def _ws_proxy(self: WebSession, req: http11.Request, upstream: Upstream, routed: bool,
                    body: bytes | None, whole: bool, login: Login | None) -> bool:
    w = self.services
    web = w.settings.web
    try:
        # a kept-alive connection without the coroutine _connect costs
        up = _ws_idle_connection(upstream, req.method)
        if up is None:
            up = await self._connect(upstream, req.method)
    except (OSError, asyncio.TimeoutError):
        upstream.failed(web.fail_timeout)
        retry = None if routed else w.upstreams_for(self.kind).pick(self.client_ip,
                                                                     web.balance)
        if retry is None:
            return await self._refuse(503 if routed else 502,
                                      "Your mailbox is temporarily unavailable." if routed
                                      else "The mail service is temporarily unavailable.")
        upstream = retry
        try:
            up = await self._connect(upstream, req.method)
        except (OSError, asyncio.TimeoutError):
            upstream.failed(web.fail_timeout)
            return await self._refuse(502, "The mail service is temporarily unavailable.")
    self.server = upstream.name
    self._upstream = upstream
    upstream.active += 1
    upstream.requests += 1
    self._up = up
    websocket = webrules.websocket_request(req)
    read_whole = body is not None and whole
    head = _ws_request_head(self, req, upstream, expect=body is None, websocket=websocket,
                            length=len(body) if body is not None and whole else None)
    if read_whole or (body is None and req.body_mode.kind in ("none", "upgrade")):
        up.write(head + body if body else head)      # one write
        if body is None:
            _ws_take_end(self)
        body_task: Any = _PUMPED                     # nothing left to pump
    else:
        up.write(head)
        scan = None
        if body is not None:           # a large SOAP body: its start, then the rest
            scan = LoginMarkerScan(body)
            self._scanned = True
            up.write(http11.chunk(body) if req.body_mode.kind == "chunked" else body)
        body_task = w.loop.create_task(self._pump_body(req, up, scan))
    try:
        keep = await _ws_relay_response(self, req, up, upstream, body_task, login, websocket)
    except SendTimeout as exc:
        log.info("client %s: %s; closed", self.client_ip, exc)
        up.close()
        self.abort()
        keep = False
    except (asyncio.TimeoutError, ConnectionError, OSError):
        up.close()
        keep = False
        if not body_task.done():
            if not self._scanned:
                body_task.cancel()
            # else a large SOAP body's scan decides the answer (our 413 when it
            # spells a login): let it run to the marker or the body's end (bounded
            # by the body timeouts); the upstream is gone, nothing more reaches it
            await asyncio.wait([body_task])
        bad = self._bad_body
        if self._head_sent:
            pass                   # cut short: closing says so; a page would be garbage
        elif isinstance(bad, http11.ParseError):
            self.send(self._page(bad.status, "The request body could not be accepted."))
            if bad.status == 413:
                await self._discard_body()
        elif bad is False:
            self.send(self._page(504, "The mail service did not answer in time."))
    finally:
        self._up = None
        self._scanned = False
        upstream.active -= 1
        if not body_task.done():
            body_task.cancel()
            keep = False
    return keep


def _ws_take_end(self: WebSession) -> None:
    """The parser emits a body-less request's end with its head: take it, or the
    request loop would read it as the next message."""
    if self.events and type(self.events[0]) is http11.EndOfMessage:
        self.events.popleft()
        self._body_done = True


async def _ws_relay_response(self: WebSession, req, up: HttpConnection, upstream: Upstream,
                             body_task, login: Login | None, websocket: bool) -> bool:
    web = self.services.settings.web
    # One timer for the whole wait, however long the path's timeout (a long poll
    # costs no more than an idle session).
    timeout = webrules.path_timeout(req.target, web.path_timeouts, web.read_timeout,
                                    web.polling_timeout)
    while True:
        event = await up.next_event(timeout)
        if event is None:
            raise ConnectionError("upstream closed before answering")
        if isinstance(event, http11.ParseError):
            up.close()
            self.send(self._page(502, "The mail service sent an invalid answer."))
            return False
        if isinstance(event, http11.Response):
            if event.informational:
                # RFC 9110 §15.2: a server MUST NOT send a 1xx response to an
                # HTTP/1.0 client.
                if req.version != b"1.0":
                    self.send(http11.serialize_response_head(
                        event.status, event.reason, http11.remove_hop_by_hop(event.headers)))
                continue
            resp = event
            break
    if self._scanned and not body_task.done():
        # A large SOAP body is still being scanned: its verdict comes first (one
        # that spells a login is our 413, whatever the server answered before its
        # end, which it never got).
        await asyncio.wait([body_task])
    if self._scanned and isinstance(self._bad_body, http11.ParseError):
        raise ConnectionError("request body refused")
    if resp.status == 101 and not (websocket and webrules.websocket_accepted(resp)):
        up.close()
        log.warning("upstream %s switched protocols unasked (%r); refused", upstream.name,
                    http11.get_header(resp.headers, b"upgrade"))
        self.send(self._page(502, "The mail service sent an invalid answer."))
        return False
    head, rechunk = _ws_response_head(self, resp, req, upstream)
    if login is not None:
        self._audit_web_login(req, resp, login)
    self._head_sent = True
    if resp.status == 101:
        self.send(head)
        return await self._splice(up)
    send_timeout = web.send_timeout
    # The body bytes already read go out with the head: a small response is one
    # write, one TLS record and one send, not two. A piece that would take the total
    # past the limit (a download's first 256 KB) is sent after the head rather than
    # copied into one buffer with it.
    out = [head]
    size = 0
    big = b""
    while size < COALESCE_LIMIT:
        event = up.next_ready(http11.Data)
        if event is None:
            break
        piece = http11.chunk(event.data) if rechunk else event.data
        size += len(event.data)
        if size > COALESCE_LIMIT:
            big = piece
            break
        out.append(piece)
    ended = size < COALESCE_LIMIT and up.next_ready(http11.EndOfMessage) is not None
    if ended and rechunk:
        out.append(http11.LAST_CHUNK)
    self.send(b"".join(out) if len(out) > 1 else head)
    if big:
        self.send(big)
    if size:
        await self.drain(send_timeout)
        if self.closed:
            up.close()
            return False
    while not ended:
        event = await up.next_event(timeout)
        if event is None or isinstance(event, http11.ParseError):
            # Cut short: the client must not take a partial body for a whole one.
            up.close()
            return False
        if type(event) is http11.Data:
            self.send(http11.chunk(event.data) if rechunk else event.data)
            await self.drain(send_timeout)
            if self.closed:
                up.close()
                return False
        elif type(event) is http11.EndOfMessage:
            if rechunk:
                self.send(http11.LAST_CHUNK)
            ended = True
    body_ok = body_task.done() and not body_task.cancelled() and body_task.result()
    if up.parser.keep_alive and up.reusable and body_ok \
            and len(upstream.idle) < web.upstream_keepalive:
        upstream.idle.append(up)          # _connect restarts its parser for the method
    else:
        up.close()
    # A body framed by closing (HTTP/1.0 client, not re-chunked) ends the connection.
    return bool(body_ok) and (rechunk or resp.body_mode.kind in ("length", "none"))
