"""One IMAP or POP3 client session: asyncio glue around the sans-IO machines.

    accept -> greeting -> pre-auth commands (ImapClientSide/Pop3ClientSide)
           -> Authenticate -> route (memcached, else LDAP) -> connect to the
           mailbox server -> ID/XOIP + LOGIN (ImapBackendLogin/...) -> audit
           -> Splice (relay.py) until either side ends.

The glue only moves bytes and events; every protocol decision is in the
machines, which have transcript tests of their own.
"""
from __future__ import annotations

import asyncio
import logging
import math
import time
from typing import TYPE_CHECKING, Any

from carbotui.core import audit
from carbotui.services.routes import Route, RouteError
# the event classes by name: compiled, `type(event) is Send` compares with the class itself
# (``Send`` would be a module attribute lookup per test)
from carbotui.protocols.events import (Authenticate, BackendFailed, ClientId, Close, LoginOK,
                                       LoginRejected, Send, StartTLS)
from carbotui.proxy.listeners import session_addresses
from carbotui.protocols.imap import ImapBackendLogin, ImapClientSide
from carbotui.protocols.imapstream import ImapStream
from carbotui.protocols.pop3 import Pop3BackendLogin, Pop3ClientSide
from carbotui.protocols.sasl import Event
from carbotui.proxy.relay import Splice, SpliceEnd
from carbotui.proxy.timers import Deadline, Timers

if TYPE_CHECKING:
    from carbotui.proxy.context import MailConfig, SessionServices
    from carbotui.proxy.stats import BackendCounters

log = logging.getLogger("carbotui.proxy.mail")

RETRY_PAUSE = 0.5        # between connects to a mailbox server that did not answer
# A POP3 server's CAPA answer is reused this long by later logins to it (they skip
# CAPA: one round trip less); forgotten at once when a login with it goes wrong.
POP3_CAPA_TTL = 60.0


class LoginFailure(Exception):
    """The login cannot succeed now. ``temporary`` decides NO [UNAVAILABLE]
    versus NO [AUTHENTICATIONFAILED]; ``reason`` goes to the audit log."""

    def __init__(self, reason: str, *, temporary: bool):
        super().__init__(reason)
        self.reason, self.temporary = reason, temporary


class _LoginDeadline:
    """asyncio.timeout's job on the login path for a fraction of its cost: the login
    deadline and each connect attempt's shorter limit share one timer, which cancels the
    login task. A login normally arms it once; it re-arms itself only when it fires
    before the deadline that applies then (a slow login after a quick connect).
    ``expired`` tells its cancel apart from others, ``login_expired`` which limit it was.
    """

    __slots__ = ("_timers", "_task", "_handle", "_armed_at", "expired", "login_at",
                 "connect_at", "_short")

    def __init__(self, timers: Timers, task: asyncio.Task, seconds: float,
                 first_check: float):
        self._timers, self._task = timers, task
        self.expired = self._short = False
        now = timers.loop.time()
        self.login_at = now + seconds
        self.connect_at = math.inf          # no connect attempt running
        # The first check at the earliest moment a connect limit could matter, so the
        # usual login (route at once, then connect) needs no second timer.
        self._armed_at = now + min(seconds, first_check)
        self._handle = timers.call_at(self._armed_at, self._fire)

    def _fire(self) -> None:
        now = self._timers.loop.time()
        self._armed_at = math.inf
        if now >= self.login_at or now >= self.connect_at:
            self.expired = True
            self._short = now < self.login_at
            self._task.cancel()
        else:
            self._arm(min(self.login_at, self.connect_at))

    def _arm(self, at: float) -> None:
        self._handle.cancel()
        self._armed_at = at
        self._handle = self._timers.call_at(at, self._fire)

    def limit(self, seconds: float) -> None:
        """A connect attempt starts: it may take ``seconds`` (within the login's time)."""
        self.connect_at = self._timers.loop.time() + seconds
        if self._armed_at > min(self.login_at, self.connect_at):
            self._arm(min(self.login_at, self.connect_at))

    def restore(self) -> None:
        """The connect attempt is over; only the login deadline applies again."""
        self.connect_at = math.inf

    def login_expired(self) -> bool:
        return self.expired and not self._short

    def absorb(self) -> None:
        """Our own shorter limit fired: the login goes on."""
        self.expired = False
        self._task.uncancel()

    def clear(self) -> None:
        self._handle.cancel()


class BackendProtocol(SpliceEnd):
    """The proxy's connection to a mailbox server: login first, then relay."""

    machine: ImapBackendLogin | Pop3BackendLogin
    result: asyncio.Future
    session: MailSession | None

    def __init__(self, machine: ImapBackendLogin | Pop3BackendLogin,
                 loop: asyncio.AbstractEventLoop):
        self.machine = machine
        self.transport = None
        self.result = loop.create_future()
        self.splice = None
        self.session = None

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        splice = self.splice
        if splice is not None:
            splice.from_backend(data)
            return
        for event in self.machine.feed(data):
            if type(event) is Send:
                self.transport.write(event.data)
            elif not self.result.done():
                self.result.set_result(event)
                # Whatever follows the login reply belongs to the client; wait
                # for the splice before reading on.
                self.transport.pause_reading()

    def eof_received(self) -> bool:
        return False              # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.result.done():
            self.result.set_result(BackendFailed(f"closed during login ({exc or 'EOF'})"))
        elif self.session is not None:
            self.session.backend_closed(exc)



class MailSession(SpliceEnd):
    # Defaults at class level: a session sets only what differs (compiled, mypyc sets
    # them in its constructor; transport and splice: SpliceEnd's).
    machine: ImapClientSide | Pop3ClientSide     # from connection_made on (a native call)
    backend: BackendProtocol | None = None
    client_ip: str = ""
    local_ip: str = ""
    client_port: int = 0
    local_port: int = 0
    account: str = ""
    server: str = ""
    user_agent: str = ""
    state: str = "preauth"
    _timer: Deadline | None = None    # on the worker's timers (timers.py)
    _last_input: float = 0.0
    _task: Any = None                 # asyncio.Task
    _ip_counted: bool = False         # holds a place in services.connections_per_ip
    _counters: Any = None             # the mailbox server's BackendCounters, once logged in there
    # [mail] as this session found it at its start (a reload's settings are for the
    # sessions after it), as native fields: one load per use
    _mail: MailConfig
    services: SessionServices         # a native class (context.py): its fields read in one load
    addresses: Any
    kind: str
    proto: str
    tls: bool
    thread: str
    id: int
    started: float

    def __init__(self, services: SessionServices, kind: str, proto: str, implicit_tls: bool,
                 thread: str, addresses: Any = None):
        self.services = services
        self.addresses = addresses        # ((client ip, port), (local ip, port)) from PROXY
        self.kind = kind                  # listener: imap | imaps | pop3 | pop3s
        self.proto = proto                # imap | pop3
        self.tls = implicit_tls
        self.thread = thread
        self.id = services.next_session_id()
        self.started = time.time()

    @property
    def bytes_in(self) -> int:
        return self.splice.bytes_in if self.splice else 0

    @property
    def bytes_out(self) -> int:
        return self.splice.bytes_out if self.splice else 0

    # -- connection ---------------------------------------------------------
    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        (self.client_ip, self.client_port,
         self.local_ip, self.local_port) = session_addresses(transport, self.addresses)
        w = self.services
        stats = w.stats
        stats.connections[self.kind] += 1
        self._mail = mail = w.mail_config()
        limits = mail.limits
        machine: ImapClientSide | Pop3ClientSide
        if self.proto == "imap":
            machine = ImapClientSide(limits, tls=self.tls)
        else:
            machine = Pop3ClientSide(limits, tls=self.tls)
        self.machine = machine
        # A connection accepted while draining is still served: refusing it would
        # turn a graceful restart into a failed login.
        if len(w.sessions) >= mail.max_connections:
            stats.rejected_busy += 1
            transport.write(machine.BUSY)
            transport.close()
            return
        exempt = w.throttle.exempt(self.client_ip)
        if not exempt:
            # One address may hold at most max_connections_per_ip of this worker's mail
            # connections (the per-worker cap above is everyone's).
            if not w.connections_per_ip.acquire("mail", self.client_ip,
                                                mail.max_connections_per_ip):
                stats.rejected_busy += 1
                transport.write(machine.TOO_MANY_FROM_ADDRESS)
                transport.close()
                return
            self._ip_counted = True
        w.sessions[self.id] = self          # type: ignore[assignment]  # a LiveSession
        self._start_timer()
        if exempt:
            transport.write(machine.greeting())
        else:
            # The IP throttle (and blocks) first, as Carbonio's nginx: no greeting yet.
            transport.pause_reading()
            self._task = w.loop.create_task(self._admit())

    async def _admit(self) -> None:
        reject = await self.services.throttle.check_ip(self.kind, self.client_ip)
        if self.transport.is_closing():
            return
        if reject:
            self.services.stats.throttled["ip"] += 1
            self._run(self.machine.throttled(reject))
            return
        self.transport.write(self.machine.greeting())
        self.transport.resume_reading()

    def _start_timer(self) -> None:
        # One lazy timer for the session's whole life: input only moves _last_input
        # and the timer re-arms itself when it fires early, so a command costs no timer
        # cancel and re-create; after login it checks the relay's idle time.
        timers = self.services.timers
        self._last_input = timers.loop.time()
        self._timer = timers.call_later(self._mail.preauth_timeout, self._timer_fired)

    def _timer_fired(self) -> None:
        timers = self.services.timers
        if self.splice is not None:
            wait = self.splice.check_idle()
            if wait is not None:
                self._timer = timers.call_later(wait, self._timer_fired)
            return
        remaining = self._last_input + self._mail.preauth_timeout - timers.loop.time()
        if remaining > 0:
            self._timer = timers.call_later(remaining, self._timer_fired)
            return
        if self.transport and not self.transport.is_closing():
            self.transport.write(self.machine.IDLE_TIMEOUT)
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        splice = self.splice
        if splice is not None:
            splice.from_client(data)
            return
        self._last_input = self.services.loop.time()
        self._run(self.machine.feed(data))

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if self.splice is None or self.splice.closed:
            self.services.session_ended(self.id)
        # else splice.close below ends the session (_ended): once, not twice
        if self._ip_counted:
            self._ip_counted = False
            self.services.connections_per_ip.release("mail", self.client_ip)
        if self._timer:
            self._timer.cancel()
        if self.splice is not None:
            self.splice.close("client closed")
        elif self._task is not None and not self._task.done():
            self._task.cancel()
        if self.backend and self.backend.transport and self.splice is None:
            self.backend.transport.close()
        if self.backend is not None:
            # Break the session <-> backend protocol cycle, so reference counting frees
            # the session now: left to the collector, hundreds of ended sessions waited
            # for each collection, which then had to walk them all.
            self.backend.session = None


    def shutdown(self, reason: str) -> None:
        """The worker is stopping: say goodbye and close."""
        farewell = self.machine.SHUTTING_DOWN
        if self.splice is not None:
            self.splice.close(reason, farewell=self._farewell(farewell))
        elif self.transport and not self.transport.is_closing():
            self.transport.write(farewell)
            self.transport.close()

    # -- pre-auth events ----------------------------------------------------
    def _run(self, events: list[Event]) -> None:
        # type(event) is X, not isinstance: the machines emit the classes themselves (and
        # each test narrows event for mypyc: native reads of its fields)
        for event in events:
            if type(event) is Send:
                self.transport.write(event.data)
            elif type(event) is Authenticate:
                self.transport.pause_reading()
                self._task = self.services.loop.create_task(self._login(event))
            elif type(event) is StartTLS:
                self.transport.pause_reading()     # nothing more in plaintext
                self._task = self.services.loop.create_task(self._start_tls())
            elif type(event) is ClientId:
                name = event.fields.get("name") or ""
                version = event.fields.get("version") or ""
                self.user_agent = f"{name}/{version}" if version else name
            elif type(event) is Close:
                self.transport.close()
                return

    async def _start_tls(self) -> None:
        loop = self.services.loop
        contexts: Any = self.services.tls       # TlsContexts: set where STARTTLS is offered
        try:
            self.transport = await loop.start_tls(self.transport, self, contexts.front,
                                                  server_side=True, ssl_handshake_timeout=10)
        except (OSError, ConnectionError, asyncio.TimeoutError) as exc:
            log.info("STARTTLS with %s failed: %s", self.client_ip, exc)
            if self.transport:
                self.transport.close()
            return
        self.tls = True
        self._run(self.machine.tls_started())

    # -- login --------------------------------------------------------------
    @property
    def route_proto(self) -> str:
        return self.proto + ("ssl" if self._mail.upstream_tls else "")

    async def _login(self, auth: Authenticate) -> None:
        w = self.services
        settings = self._mail
        self.state = "login"
        typed = auth.username
        # Every spelling of one name is one throttle key and one route (M1): case,
        # surrounding and repeated spaces. Aliases and bare names meet on route.account.
        login = audit.canonical_login(typed)
        # Plain calls first: a whitelisted client and a route used seconds ago (the
        # usual login) need no await before the connect.
        throttled = w.throttle.counts_users(self.client_ip)
        reject = throttled and await w.throttle.check_user(login, ip=self.client_ip)
        route = None
        if not reject:
            # One deadline for the whole login; no task per step.
            deadline = _LoginDeadline(w.timers, self._task, settings.login_timeout,
                                      settings.connect_timeout)
            try:
                try:
                    route = self._check_route(
                        w.router.recent_mail_route(login, self.route_proto, self.local_ip)
                        or await self._route(login))
                    if throttled and route.account != login:
                        # an alias, a bare name: the account's own counter decides
                        reject = await w.throttle.check_user(route.account, ip=self.client_ip)
                    if not reject:
                        self.account = route.account
                        self.server = route.short_name
                        backend, response = await self._connect_and_login(route, auth,
                                                                          deadline)
                finally:
                    deadline.clear()
            except LoginFailure as failure:
                await self._login_failed(login, failure, typed)
                return
            except asyncio.CancelledError:
                if not deadline.expired:
                    raise
                deadline.absorb()
                await self._login_failed(login, LoginFailure("login timed out", temporary=True),
                                         typed)
                return
        if reject:
            w.stats.throttled["user"] += 1
            self._audit(route.account if route else login,
                        audit.failure(typed, "login rejected: too many failed logins"))
            if not self.transport.is_closing():
                self._run(self.machine.throttled(reject))
            return
        self._audit(self.account, "")
        w.stats.logins_ok[self.proto] += 1
        reject = throttled and await w.throttle.count_user(self.account, success=True,
                                                           ip=self.client_ip)
        if reject:                # Carbonio's "successes" mode: too many logins
            w.stats.throttled["user"] += 1
            backend.transport.close()
            if not self.transport.is_closing():
                self._run(self.machine.throttled(reject))
            return
        self._login_succeeded(backend, response)

    async def _route(self, login: str) -> Route | None:
        try:
            return await self.services.router.route_mail(login, self.route_proto, self.local_ip)
        except RouteError as exc:
            raise LoginFailure(f"no route: {exc}", temporary=True) from None

    def _check_route(self, route: Route | None) -> Route:
        if route is None:
            raise LoginFailure("account not found", temporary=False)
        if self.services.in_maintenance(route.server.hostname):
            raise LoginFailure(f"mailbox server {route.server.hostname} is in maintenance",
                               temporary=True)
        return route

    def _backend_machine(self, route: Route,
                         auth: Authenticate) -> ImapBackendLogin | Pop3BackendLogin:
        s = self._mail
        if self.proto == "imap":
            return ImapBackendLogin(route.account, auth.password, client_ua=self.user_agent,
                                    send_id=s.send_imap_id, client_ip=self.client_ip,
                                    client_port=self.client_port, local_ip=self.local_ip,
                                    local_port=self.local_port)
        known = self.services.pop3_server_capa.get((route.address, route.port))
        capabilities = known[1] if known and known[0] > self.services.loop.time() else None
        return Pop3BackendLogin(route.account, auth.password, send_xoip=s.send_pop3_xoip,
                                capabilities=capabilities, client_ip=self.client_ip,
                                client_port=self.client_port, local_ip=self.local_ip,
                                local_port=self.local_port)

    def _learn_capabilities(self, route: Route, machine: Any, ok: bool) -> None:
        if self.proto != "pop3":
            return
        memory = self.services.pop3_server_capa
        if machine.learned is not None and ok:
            memory[(route.address, route.port)] = (self.services.loop.time() + POP3_CAPA_TTL,
                                                   machine.learned)
        elif machine.remembered and not ok:
            memory.pop((route.address, route.port), None)

    async def _connect_and_login(self, route: Route, auth: Authenticate,
                                 deadline: _LoginDeadline):
        """Connect (a few tries within the login deadline) and log in upstream."""
        s = self._mail
        loop = self.services.loop
        stats = self.services.stats.backend(self.server)      # route.server.short_name
        last_error = "no attempt"
        for attempt in range(max(1, s.connect_retries + 1)):
            if attempt:
                await asyncio.sleep(RETRY_PAUSE)
            protocol = BackendProtocol(self._backend_machine(route, auth), loop)
            started = time.monotonic()
            tls = self.services.mail_upstream_tls
            deadline.limit(s.connect_timeout)
            failed = ""        # (no `continue` in the try: mypyc has none inside a finally)
            try:
                await loop.create_connection(
                    lambda: protocol, route.address, route.port, ssl=tls,
                    server_hostname=route.server.hostname if tls else None)
            except OSError as exc:
                failed = f"connect to {route.server.hostname}: {exc}"
            except asyncio.CancelledError:
                if not deadline.expired or deadline.login_expired():
                    raise
                deadline.absorb()           # this attempt's connect_timeout, not the login's
                failed = f"connect to {route.server.hostname}: timeout"
            finally:
                deadline.restore()
            if failed:
                stats.errors += 1
                last_error = failed
                continue
            try:
                result = await protocol.result
            except asyncio.CancelledError:
                protocol.transport.close()        # login deadline passed
                raise
            ok = isinstance(result, LoginOK)
            self._learn_capabilities(route, protocol.machine, ok)
            if ok:
                stats.connected((time.monotonic() - started) * 1000)
                self._counters = stats               # (for _login_succeeded, _ended)
                return protocol, result.response
            protocol.transport.close()
            if isinstance(result, LoginRejected):
                if result.temporary:
                    raise LoginFailure(f"mailbox server says {_text(result.response)}",
                                       temporary=True)
                raise LoginFailure("invalid password", temporary=False)
            stats.errors += 1
            last_error = f"{route.server.hostname}: {result.reason}"
        raise LoginFailure(f"mailbox server unavailable ({last_error})", temporary=True)

    async def _login_failed(self, login: str, failure: LoginFailure, typed: str = "") -> None:
        """``login`` is the canonical form of the ``typed`` name; the audit line and the
        user throttle name the account the route resolved when there was one."""
        w = self.services
        account = self.account or login
        self._audit(account, audit.failure(typed or login, failure.reason))
        if failure.temporary:
            w.stats.logins_temp[self.proto] += 1
            log.warning("login of %r from %s failed temporarily: %s", typed or login,
                        self.client_ip, failure.reason)
        else:
            w.stats.logins_failed[self.proto] += 1
            await w.throttle.count_user(account, success=False, ip=self.client_ip)
            # The route may be stale (a moved mailbox): forget it, as Carbonio does.
            await w.router.forget(login, self.route_proto, self.local_ip, self.account)
            # Tarpit: slow down password guessing; reading stays paused meanwhile.
            await asyncio.sleep(self._mail.auth_wait)
        self.account = self.server = ""
        self.state = "preauth"
        if self.transport.is_closing():
            return
        self.transport.resume_reading()
        self._run(self.machine.auth_failed(temporary=failure.temporary))

    def _login_succeeded(self, backend: BackendProtocol, response: bytes) -> None:
        if self.transport.is_closing():
            backend.transport.close()
            return
        events, leftover = self.machine.auth_succeeded(response)
        self._run(events)
        s = self._mail
        loop = self.services.loop
        idle = s.imap_idle_timeout if self.proto == "imap" else s.pop3_idle_timeout
        self.splice = Splice(self.transport, backend.transport, idle_timeout=idle,
                             on_close=self._ended, loop=loop, own_timer=False,
                             watch=ImapStream() if self.proto == "imap" else Pop3Quit())
        timer = self._timer
        if timer is not None and timer.when() > loop.time() + idle:  # an idle limit below preauth's
            timer.cancel()
            self._timer = self.services.timers.call_later(idle, self._timer_fired)
        self.backend = backend
        backend.session = self
        backend.splice = self.splice
        self.state = "proxy"
        # Open sessions per mailbox server: up here, down in _ended (every way a relay
        # ends goes through Splice.close, once).
        counters: BackendCounters = self._counters      # _connect_and_login's
        counters.active += 1
        extra = backend.machine.leftover()
        if extra:
            self.splice.from_backend(extra)
        if leftover:
            self.splice.from_client(leftover)
        backend.transport.resume_reading()
        self.transport.resume_reading()

    def _farewell(self, line: bytes) -> bytes:
        """``line`` if the proxy may add it to a logged-in session, else nothing: only IMAP
        gets one (POP3 has no untagged line: its client just sees the close), and only
        while the server has not said BYE, the client has not asked for LOGOUT or
        COMPRESS, and the server's stream is between two responses (imapstream.py)."""
        splice = self.splice
        watch = splice.watch if splice is not None else None
        return line if watch is not None and watch.may_add_line() else b""

    def backend_closed(self, exc: Exception | None) -> None:
        """The mailbox server went away: tell the client, if the transparency rule lets."""
        splice = self.splice
        if splice is None or splice.closed:
            return
        farewell = self._farewell(b"* BYE [UNAVAILABLE] Mailbox server connection lost\r\n")
        if exc is not None:
            self._counters.errors += 1
        splice.close("mailbox server closed", farewell=farewell)

    def _ended(self, reason: str) -> None:
        counters: BackendCounters = self._counters
        counters.active -= 1
        services = self.services
        services.session_ended(self.id)
        splice = self.splice
        logs = services.logs
        if logs is not None and splice is not None:    # sessions.log (mail_session_ended)
            watch = splice.watch           # narrowed: native reads of its flag
            logged_out = (watch.client.logout if isinstance(watch, ImapStream)
                          else isinstance(watch, Pop3Quit) and watch.quit)
            logs.mail_line(self.kind, self.client_ip, self.client_port, self.account,
                           self.server, self.started, splice.bytes_in, splice.bytes_out,
                           reason, logged_out, self.id)

    def _audit(self, account: str, error: str) -> None:
        self.services.audit.write_line(audit.format_line(
            time.time(), self.thread, self.local_ip, self.client_ip, self.client_port,
            self.user_agent, "Auth", account, self.proto, error))


class Pop3Quit:
    """A relayed POP3 session's watch (relay.Splice): has the client sent QUIT? (for
    sessions.log: a session ended by its client's goodbye). POP3 gets no farewell line."""

    __slots__ = ("quit",)

    def __init__(self) -> None:
        self.quit = False

    def from_client(self, data: bytes) -> None:
        size = len(data)
        if size < 256:                             # commands, not a pipelined batch
            # Is the last line, stripped, QUIT in any case? That is
            # data.rstrip(b"\r\n").rpartition(b"\n")[2].strip().upper() == b"QUIT", by index:
            # compiled, no method call per chunk (test_mail_pop3quit compares the two).
            end = size
            while end and (data[end - 1] == 10 or data[end - 1] == 13):
                end -= 1
            start = end
            while start and data[start - 1] != 10:
                start -= 1
            while end > start and _is_space(data[end - 1]):
                end -= 1
            while start < end and _is_space(data[start]):
                start += 1
            # b | 32 is the lower case of a letter; only Q and q give q, and so on
            self.quit = (end - start == 4 and data[start] | 32 == 113
                         and data[start + 1] | 32 == 117 and data[start + 2] | 32 == 105
                         and data[start + 3] | 32 == 116)

    # The server's side tells nothing here: Splice makes no call per server chunk.
    from_server = None

    def may_add_line(self) -> bool:
        return False


def _is_space(c: int) -> bool:
    """What bytes.strip() strips: ASCII whitespace, b" \\t\\n\\r\\x0b\\x0c"."""
    return c == 32 or 9 <= c <= 13


def _text(response: bytes) -> str:
    return response.decode("utf-8", "replace")[:200]
