"""The web front: HTTP(S) reverse proxy to the mailbox servers' web ports.

Per request, in Carbonio's order (reference §6): a REST path names the user
(``/home/<user>/…``, ``/service/home/~<user>/…``), else the ``ZM_AUTH_TOKEN``
cookie names the account (``ZM_ADMIN_AUTH_TOKEN`` on the admin port), else
the request is balanced across healthy upstreams. Bodies stream both ways
with backpressure, WebSocket upgrades become a raw splice, and nothing in a
response names a backend. Port 80 follows the mail mode from LDAP.
"""
from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from http import HTTPStatus
from urllib.parse import parse_qs, unquote

from carbotui import audit
from carbotui.authtoken import zimbra_id_from_token
from carbotui.routes import RouteError
from workers import http11
from workers.httpconn import HttpConnection
from workers.listeners import session_addresses
from workers.relay import Splice
from workers.upstreams import Upstream

log = logging.getLogger("workers.web")

_REST = re.compile(rb"^/(?:service/)?home/~?([^/?#]+)")
_HOST = re.compile(rb"^[A-Za-z0-9.\-]{1,253}(?::\d{1,5})?$|^\[[0-9A-Fa-f:.]{2,45}\](?::\d{1,5})?$")
LOGIN_PATHS = {b"/login": "soap", b"/service/soap/AuthRequest": "soap",
               b"/service/soap": "soap"}
AUDIT_BODY_LIMIT = 64 * 1024
RESPONSE_DROP = (b"server", b"x-powered-by")


class Throttled(Exception):
    """A web login refused by the user throttle; the text is Carbonio's."""


def error_page(status: int, text: str, *, close: bool = True, extra=()) -> bytes:
    title = f"{status} {HTTPStatus(status).phrase}"
    body = (f"<!doctype html><html><head><title>{title}</title></head><body>"
            f"<h1>{title}</h1><p>{text}</p></body></html>\n").encode()
    headers = [(b"Content-Type", b"text/html; charset=utf-8"),
               (b"Content-Length", str(len(body)).encode()), *extra]
    if close:
        headers.append((b"Connection", b"close"))
    return http11.serialize_response_head(status, None, headers) + body


def cookie(headers, name: bytes) -> bytes | None:
    for value in http11.get_all(headers, b"cookie"):
        for part in value.split(b";"):
            key, _, val = part.strip().partition(b"=")
            if key == name:
                return val
    return None


def login_name(path: bytes, body: bytes) -> str:
    """The account a web login names (form field or SOAP AuthRequest), '' if none."""
    text = body.decode("utf-8", "replace")
    if path == b"/login":
        return (parse_qs(text).get("username") or [""])[0]
    try:
        doc = json.loads(text)
        account = doc["Body"]["AuthRequest"]["account"]
        return str(account.get("_content", "")) if isinstance(account, dict) else str(account)
    except (ValueError, KeyError, TypeError, AttributeError):
        m = re.search(r"<account[^>]*>([^<]{1,320})</account>", text)
        return m.group(1) if m else ""


class WebSession(HttpConnection):
    """One client connection to an HTTP, HTTPS or admin listener."""

    def __init__(self, worker, kind: str, tls: bool, addresses=None):
        super().__init__(http11.RequestParser(
            max_header_bytes=worker.settings.web.max_header_bytes))
        self.worker = worker
        self.addresses = addresses      # ((client ip, port), (local ip, port)) from PROXY
        self.kind = kind                # http | https | admin
        self.scheme = "https" if tls else "http"
        self.id = worker.next_session_id()
        self.client_ip = self.local_ip = ""
        self.client_port = self.local_port = 0
        self.account = self.server = ""
        self.state = "http"
        self.started = time.time()
        self.bytes_out = 0
        self._task: asyncio.Task | None = None
        self._bad_body = False            # the request body broke off (None: client gone)

    # -- lifecycle ----------------------------------------------------------
    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        (self.client_ip, self.client_port,
         self.local_ip, self.local_port) = session_addresses(transport, self.addresses)
        w = self.worker
        w.stats.connections[self.kind] += 1
        # A connection accepted while draining is still served: refusing it would
        # turn a graceful restart into a failed login.
        if len(w.sessions) >= w.settings.mail.max_connections:
            w.stats.rejected_busy += 1
            transport.write(error_page(503, "The service is busy. Please try again shortly.",
                                       extra=[(b"Retry-After", b"5")]))
            transport.close()
            return
        w.sessions[self.id] = self
        self._task = asyncio.get_running_loop().create_task(self._serve())

    async def _admitted(self) -> bool:
        """Blocks and the web IP limit (throttle:proto=h), checked once per connection."""
        if self.worker.throttle.exempt(self.client_ip):
            return True
        reject = await self.worker.throttle.check_ip(self.kind, self.client_ip)
        if reject:
            self.worker.stats.throttled["ip"] += 1
            self.send(error_page(403, reject + "."))
        return not reject

    def connection_lost(self, exc) -> None:
        super().connection_lost(exc)
        self.worker.session_ended(self.id)

    def shutdown(self, reason: str) -> None:
        self.close()

    def send(self, data: bytes) -> None:
        self.bytes_out += len(data)
        self.write(data)

    # -- request loop -------------------------------------------------------
    async def _serve(self) -> None:
        web = self.worker.settings.web
        timeout = web.header_timeout
        try:
            if not await self._admitted():
                return
            while True:
                try:
                    event = await self.next_event(timeout)
                except asyncio.TimeoutError:
                    if self.parser.buffered:       # a head started but never finished
                        self.send(error_page(408, "The request took too long to arrive."))
                    break
                if event is None:
                    break
                if isinstance(event, http11.ParseError):
                    self.send(error_page(event.status, "The request could not be understood."))
                    break
                if not isinstance(event, http11.Request):
                    break
                keep = await self._handle(event)
                if not keep or not self.parser.keep_alive:
                    break
                self.start_next()
                timeout = web.keepalive_timeout
                # After the first byte of a new head the header timeout applies again;
                # a keep-alive client that sends nothing is closed after keepalive_timeout.
        except (ConnectionError, OSError) as exc:
            log.debug("client %s: %s", self.client_ip, exc)
        finally:
            if self.splice is None:
                self.close()
            self.worker.session_ended(self.id)

    async def _handle(self, req: http11.Request) -> bool:
        w = self.worker
        w.stats.web_requests[self.kind] += 1
        host = http11.get_header(req.headers, b"host") or b""
        if host and not _HOST.match(host):
            self.send(error_page(400, "Bad Host header."))
            return False
        if self.kind == "http":
            return await self._plain_http(req, host)
        body = None
        path = req.target.split(b"?", 1)[0]
        if (self.kind != "admin" and req.method == b"POST" and path in LOGIN_PATHS
                and req.body_mode.kind == "length" and req.body_mode.length <= AUDIT_BODY_LIMIT):
            # A login goes to the server that holds the account, like a mail login:
            # read the (small) body first to learn the name.
            body = await self._read_small_body(req)
            if body is None:
                return False
        try:
            upstream, routed = await self._choose(req, body)
        except Throttled as reject:
            self.send(error_page(403, f"{reject}."))
            return False
        except RouteError:
            self.send(error_page(503, "The mail service is temporarily unavailable. "
                                      "Please try again in a moment.",
                                 extra=[(b"Retry-After", b"10")]))
            return await self._discard_body()
        if upstream is None:
            self.send(error_page(503 if routed else 502,
                                 "Your mailbox is temporarily unavailable. Please try again "
                                 "in a moment." if routed else
                                 "The mail service is temporarily unavailable.",
                                 extra=[(b"Retry-After", b"10")]))
            return await self._discard_body()
        return await self._proxy(req, upstream, routed, body)

    async def _read_small_body(self, req: http11.Request) -> bytes | None:
        if http11.expects_continue(req.headers):
            self.send(b"HTTP/1.1 100 Continue\r\n\r\n")
        body = bytearray()
        try:
            while True:
                event = await self.next_event(self.worker.settings.web.body_timeout)
                if isinstance(event, http11.Data):
                    body += event.data
                elif isinstance(event, http11.EndOfMessage):
                    return bytes(body)
                else:
                    return None
        except asyncio.TimeoutError:
            self.send(error_page(408, "The request took too long to arrive."))
            return None

    async def _discard_body(self) -> bool:
        """Read and drop a request body (bounded by the body timeout)."""
        if self.parser.keep_alive is False:
            return False
        try:
            while True:
                event = await self.next_event(self.worker.settings.web.body_timeout)
                if event is None or isinstance(event, http11.ParseError):
                    return False
                if isinstance(event, http11.EndOfMessage):
                    return True
        except asyncio.TimeoutError:
            return False

    async def _plain_http(self, req: http11.Request, host: bytes) -> bool:
        """Port 80: 'redirect' sends the same URL over https; 'https' refuses."""
        live = self.worker.live
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
        self.send(error_page(403, "This service is available over HTTPS only.", close=False))
        return await self._discard_body()

    async def _choose(self, req: http11.Request, body: bytes | None
                      ) -> tuple[Upstream | None, bool]:
        """(upstream, routed): routed means it must be this user's own server."""
        w = self.worker
        ups = w.admin_upstreams if self.kind == "admin" else w.web_upstreams
        path = req.target.split(b"?", 1)[0]
        if body is not None:
            name = login_name(path, body)
            reject = await w.throttle.check_user(name, ip=self.client_ip) if name else None
            if reject:
                w.stats.throttled["user"] += 1
                self._audit_login(name, "soap", audit.failure(name, "login rejected: too many "
                                                              "failed logins"), req)
                raise Throttled(reject)
            route = await w.router.route_mail(name, "http", self.local_ip) if name else None
            if route is not None:
                if w.in_maintenance(route.server.hostname):
                    return None, True          # no new logins there: 503
                return ups.for_server(route.server.hostname), True
        if self.kind != "admin":
            m = _REST.match(path)
            if m and m.group(1) not in (b"", b"~"):
                user = unquote(m.group(1).decode("utf-8", "replace"))
                route = await w.router.route_mail(user, "http", self.local_ip)
                if route is not None:
                    self.account = route.account
                    return ups.for_server(route.server.hostname), True
        token = cookie(req.headers, b"ZM_ADMIN_AUTH_TOKEN" if self.kind == "admin"
                       else b"ZM_AUTH_TOKEN")
        zimbra_id = zimbra_id_from_token(token) if token else None
        if zimbra_id:
            route = await w.router.route_by_id(zimbra_id, "http", admin=self.kind == "admin")
            if route is not None:
                self.account = route.account
                return ups.for_server(route.server.hostname), True
        return ups.pick(self.client_ip, w.settings.web.balance), False

    # -- proxying -----------------------------------------------------------
    def _request_head(self, req: http11.Request, upstream: Upstream, *, expect: bool = True
                      ) -> bytes:
        headers = http11.remove_hop_by_hop(req.headers)
        if not expect:          # we answered 100-continue ourselves
            headers = http11.remove_headers(headers, b"expect")
        headers = http11.remove_headers(headers, b"x-forwarded-proto", b"x-real-ip")
        xff = http11.get_header(headers, b"x-forwarded-for")
        headers = http11.remove_headers(headers, b"x-forwarded-for")
        client = self.client_ip.encode()
        headers.append((b"X-Forwarded-For", xff + b", " + client if xff else client))
        headers.append((b"X-Forwarded-Proto", self.scheme.encode()))
        headers.append((b"X-Real-IP", client))
        if http11.get_header(headers, b"host") is None:
            headers.append((b"Host", upstream.server.hostname.encode()))
        mode = req.body_mode
        if mode.kind == "chunked":
            headers.append((b"Transfer-Encoding", b"chunked"))
        elif mode.kind == "upgrade":
            headers.append((b"Connection", b"upgrade"))
            headers.append((b"Upgrade", http11.get_header(req.headers, b"upgrade") or b""))
        return http11.serialize_request_head(req.method, req.target, headers)

    def _response_head(self, resp: http11.Response, req: http11.Request,
                       upstream: Upstream) -> tuple[bytes, bool]:
        """Headers for the client, and whether the body is re-chunked."""
        headers = http11.remove_hop_by_hop(resp.headers)
        headers = http11.remove_headers(headers, *RESPONSE_DROP)
        location = http11.get_header(headers, b"location")
        if location is not None:
            fixed = self._public_location(location, req, upstream)
            if fixed != location:
                headers = [(k, fixed if k.lower() == b"location" else v) for k, v in headers]
        rechunk = False
        if not self.parser.keep_alive:
            headers.append((b"Connection", b"close"))       # the client asked for it
        if resp.status == 101:
            headers.append((b"Connection", b"upgrade"))
            headers.append((b"Upgrade", http11.get_header(resp.headers, b"upgrade") or b""))
        elif resp.body_mode.kind in ("chunked", "until-close"):
            if req.version == b"1.1":
                headers.append((b"Transfer-Encoding", b"chunked"))
                rechunk = True
            else:
                headers.append((b"Connection", b"close"))
        return http11.serialize_response_head(resp.status, resp.reason, headers), rechunk

    def _public_location(self, location: bytes, req, upstream: Upstream) -> bytes:
        """A redirect to a backend address becomes one to the public host."""
        m = re.match(rb"^(https?)://([^/?#]*)(.*)$", location, re.S)
        if not m:
            return location
        authority = m.group(2).lower()
        names = set()
        for u in self.worker.all_upstreams():
            for host in (u.address.encode(), u.server.hostname.encode()):
                names.add(host)
                names.add(host + b":%d" % u.port)
        if authority not in names:
            return location
        host = http11.get_header(req.headers, b"host") or self.local_ip.encode()
        return self.scheme.encode() + b"://" + host + (m.group(3) or b"/")

    async def _connect(self, upstream: Upstream) -> HttpConnection:
        while upstream.idle:
            conn = upstream.idle.pop()
            if conn.reusable:
                return conn
        loop = asyncio.get_running_loop()
        conn = HttpConnection(http11.ResponseParser())
        tls = self.worker.upstream_web_tls
        await asyncio.wait_for(loop.create_connection(
            lambda: conn, upstream.address, upstream.port, ssl=tls,
            server_hostname=upstream.server.hostname if tls else None),
            self.worker.settings.web.connect_timeout)
        return conn

    async def _proxy(self, req: http11.Request, upstream: Upstream, routed: bool,
                     body: bytes | None) -> bool:
        w = self.worker
        web = w.settings.web
        try:
            up = await self._connect(upstream)
        except (OSError, asyncio.TimeoutError):
            upstream.failed(web.fail_timeout)
            retry = None if routed else w.upstreams_for(self.kind).pick(self.client_ip,
                                                                         web.balance)
            if retry is None:
                self.send(error_page(503 if routed else 502,
                                     "Your mailbox is temporarily unavailable." if routed else
                                     "The mail service is temporarily unavailable."))
                return False
            upstream = retry
            try:
                up = await self._connect(upstream)
            except (OSError, asyncio.TimeoutError):
                upstream.failed(web.fail_timeout)
                self.send(error_page(502, "The mail service is temporarily unavailable."))
                return False
        self.server = upstream.name
        upstream.active += 1
        upstream.requests += 1
        path = req.target.split(b"?", 1)[0]
        audit_proto = LOGIN_PATHS.get(path) if req.method == b"POST" else None
        captured = bytearray() if audit_proto else None
        up.write(self._request_head(req, upstream, expect=body is None))
        if body is not None:
            up.write(body)
            captured = bytearray(body[:AUDIT_BODY_LIMIT]) if audit_proto else None
            body_task = asyncio.get_running_loop().create_future()
            body_task.set_result(True)
        else:
            body_task = asyncio.get_running_loop().create_task(
                self._pump_body(req, up, captured))
        try:
            keep = await self._relay_response(req, up, upstream, body_task, audit_proto,
                                              captured)
        except (asyncio.TimeoutError, ConnectionError, OSError):
            bad = self._bad_body
            if isinstance(bad, http11.ParseError):
                self.send(error_page(bad.status, "The request body could not be understood."))
            elif bad is False:
                self.send(error_page(504, "The mail service did not answer in time."))
            keep = False
            up.close()
        finally:
            upstream.active -= 1
            if not body_task.done():
                body_task.cancel()
                keep = False
        return keep

    async def _pump_body(self, req, up: HttpConnection, captured) -> bool:
        """Client body -> upstream, re-framed, with backpressure both ways."""
        kind = req.body_mode.kind
        if kind in ("none", "upgrade"):
            # The parser emits a body-less request's end with its head: take it, or
            # the request loop would read it as the next message.
            if self.events and isinstance(self.events[0], http11.EndOfMessage):
                self.events.popleft()
            return True
        timeout = self.worker.settings.web.body_timeout
        while True:
            event = await self.next_event(timeout)
            if event is None or isinstance(event, http11.ParseError):
                self._bad_body = event      # _proxy answers the client with its status
                up.close()
                return False
            if isinstance(event, http11.Data):
                if captured is not None and len(captured) < AUDIT_BODY_LIMIT:
                    captured += event.data[:AUDIT_BODY_LIMIT - len(captured)]
                up.write(http11.chunk(event.data) if kind == "chunked" else event.data)
                await up.drain()
            elif isinstance(event, http11.EndOfMessage):
                if kind == "chunked":
                    up.write(http11.LAST_CHUNK)
                return True

    async def _relay_response(self, req, up: HttpConnection, upstream: Upstream,
                              body_task, audit_proto, captured) -> bool:
        web = self.worker.settings.web
        timeout = web.read_timeout
        while True:
            event = await up.next_event(timeout)
            if event is None:
                raise ConnectionError("upstream closed before answering")
            if isinstance(event, http11.ParseError):
                up.close()
                self.send(error_page(502, "The mail service sent an invalid answer."))
                return False
            if isinstance(event, http11.Response):
                if event.informational:
                    self.send(http11.serialize_response_head(event.status, event.reason,
                                                             http11.remove_hop_by_hop(
                                                                 event.headers)))
                    continue
                resp = event
                break
        head, rechunk = self._response_head(resp, req, upstream)
        if audit_proto:
            if not body_task.done():
                await asyncio.wait([body_task], timeout=web.body_timeout)
            self._audit_web_login(req, resp, audit_proto, bytes(captured or b""))
        self.send(head)
        if resp.status == 101:
            return await self._splice(up)
        while True:
            event = await up.next_event(timeout)
            if event is None or isinstance(event, http11.ParseError):
                # Cut short: the client must not take a partial body for a whole one.
                up.close()
                return False
            if isinstance(event, http11.Data):
                self.send(http11.chunk(event.data) if rechunk else event.data)
                await self.drain()
                if self.closed:
                    up.close()
                    return False
            elif isinstance(event, http11.EndOfMessage):
                if rechunk:
                    self.send(http11.LAST_CHUNK)
                break
        body_ok = body_task.done() and not body_task.cancelled() and body_task.result()
        if up.parser.keep_alive and up.reusable and body_ok \
                and len(upstream.idle) < web.upstream_keepalive:
            up.start_next()
            upstream.idle.append(up)
        else:
            up.close()
        # A body framed by closing (HTTP/1.0 client, not re-chunked) ends the connection.
        return bool(body_ok) and (rechunk or resp.body_mode.kind in ("length", "none"))

    async def _splice(self, up: HttpConnection) -> bool:
        """After 101: raw bytes both ways until either side closes."""
        done = asyncio.get_running_loop().create_future()

        def ended(reason: str) -> None:
            if not done.done():
                done.set_result(reason)

        splice = Splice(self.transport, up.transport,
                        idle_timeout=self.worker.settings.web.polling_timeout, on_close=ended)
        self.splice, up.splice = splice, splice
        self.on_splice_data, up.on_splice_data = splice.from_client, splice.from_backend
        self.on_pause_writing, self.on_resume_writing = (splice.client_write_paused,
                                                         splice.client_write_resumed)
        up.on_pause_writing, up.on_resume_writing = (splice.backend_write_paused,
                                                     splice.backend_write_resumed)
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
    def _audit_web_login(self, req, resp: http11.Response, proto: str, body: bytes) -> None:
        path = req.target.split(b"?", 1)[0]
        name = login_name(path, body)[:320] or "(unknown)"
        cookies = b" ".join(http11.get_all(resp.headers, b"set-cookie"))
        ok = resp.status < 400 and b"ZM_AUTH_TOKEN=" in cookies
        if ok:
            error = ""
            self.account = name
            self.worker.stats.logins_ok[proto] += 1
        else:
            reason = ("invalid password" if resp.status in (401, 403)
                      else f"login failed (HTTP {resp.status})")
            error = audit.failure(name, reason)
            self.worker.stats.logins_failed[proto] += 1
        self._audit_login(name, proto, error, req)
        if name != "(unknown)":
            asyncio.get_running_loop().create_task(
                self.worker.throttle.count_user(name, success=ok, ip=self.client_ip))

    def _audit_login(self, name: str, proto: str, error: str, req) -> None:
        self.worker.audit.write(audit.AuditEvent(
            account=name, protocol=proto, client_ip=self.client_ip, client_port=self.client_port,
            proxy_ip=self.local_ip, error=error,
            user_agent=(http11.get_header(req.headers, b"user-agent") or b"")
            .decode("latin-1")[:120],
            thread=f"{'Admin' if self.kind == 'admin' else 'Https'}Server-{self.worker.index}"))
