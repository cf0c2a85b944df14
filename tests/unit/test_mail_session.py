"""A mail session's glue (carbotui/proxy/mail.py) on a real event loop with real sockets: the
login deadlines (a mailbox server that accepts but never greets: login_timeout; one
whose accept queue is full, so connecting hangs: connect_timeout, then a retry), the
pre-auth timeout, and an ended session freed without the cycle collector.

The session gets the worker's real SessionServices, with stand-ins for the router (fixed
to the test's server), the throttle and the audit log. Whole-stack behaviour (LDAP,
memcached, Dovecot) is in tests/stack.
"""
from __future__ import annotations

import asyncio
import gc
import socket
import time
from types import SimpleNamespace

import pytest

from carbotui.core.audit import AuditEvent, parse_line
from carbotui.backends.directory import MailServer
from carbotui.services.routes import Route
from carbotui.protocols.events import MailLimits
from carbotui.proxy.context import SessionServices
from carbotui.proxy.logs import NodeLogs
from carbotui.proxy.mail import MailSession
from carbotui.core.settings import MailSettings, WebSettings


class AuditRecorder:
    def __init__(self):
        self.events: list[AuditEvent] = []

    def write_line(self, line: str) -> None:
        self.events.append(parse_line(line))


class FixedRouter:
    def __init__(self, port: int):
        server = MailServer("mbox9.demo.test", "127.0.0.1", {"imap": port})
        self.route = Route("user01@demo.test", server, "127.0.0.1", port, cached=True,
                           short_name=server.short_name)

    def recent_mail_route(self, login, proto, local_ip):
        return None                    # as after LOCAL_TTL: the awaited lookup is used

    async def route_mail(self, login, proto, local_ip):
        return self.route


class NoThrottle:
    def exempt(self, ip):
        return True                    # greeted at once, no IP check

    def counts_users(self, ip):
        return True                    # goes through both awaits, which allow

    async def check_user(self, login, *, ip=None):
        return None

    async def count_user(self, login, *, success, ip=None):
        return None


def stand_in_services(loop, backend_port: int, **mail) -> SessionServices:
    """The real context, with stand-ins for what would reach LDAP, memcached and the
    audit log."""
    settings = SimpleNamespace(mail=MailSettings(limits=MailLimits(starttls="off"), **mail),
                               web=WebSettings())
    return SessionServices(settings=settings, loop=loop, router=FixedRouter(backend_port),
                           throttle=NoThrottle(), audit=AuditRecorder())


async def login_through(services) -> tuple[bytes, float]:
    loop = services.loop
    server = await loop.create_server(
        lambda: MailSession(services, "imap", "imap", False, "ImapServer-0"), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        greeting = await reader.readline()
        assert greeting.startswith(b"* OK")
        started = time.monotonic()
        writer.write(b"a1 LOGIN user01@demo.test demo-pass\r\n")
        reply = await asyncio.wait_for(reader.readline(), 10)
        return reply, time.monotonic() - started
    finally:
        writer.close()
        server.close()


def test_a_server_that_never_greets_ends_in_a_temporary_no_at_the_login_deadline():
    async def main():
        silent = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
        port = silent.sockets[0].getsockname()[1]
        services = stand_in_services(asyncio.get_running_loop(), port, login_timeout=0.3,
                                     auth_wait=0)
        reply, took = await login_through(services)
        silent.close()
        return services, reply, took

    services, reply, took = asyncio.run(main())
    assert reply.startswith(b"a1 NO [UNAVAILABLE]")
    assert 0.3 <= took < 3
    [event] = services.audit.events
    assert event.error.endswith("login timed out")
    assert services.stats.logins_temp["imap"] == 1


@pytest.fixture
def full_accept_queue():
    """A listening socket nobody accepts from, its queue filled: connects to it hang."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    for _ in range(8):                 # more than the queue takes; the rest are pending
        s = socket.socket()
        s.setblocking(False)
        s.connect_ex(("127.0.0.1", port))
        fillers.append(s)
    yield port
    for s in fillers:
        s.close()
    listener.close()


def test_a_hanging_connect_is_retried_after_connect_timeout_within_the_login(
        full_accept_queue):
    async def main():
        services = stand_in_services(asyncio.get_running_loop(), full_accept_queue,
                                     connect_timeout=0.2, connect_retries=1, login_timeout=20,
                                     auth_wait=0)
        reply, took = await login_through(services)
        return services, reply, took

    services, reply, took = asyncio.run(main())
    assert reply.startswith(b"a1 NO [UNAVAILABLE]")
    # two attempts of 0.2 s and the pause between them, far below the login deadline
    assert 0.4 <= took < 5
    [event] = services.audit.events
    assert "mailbox server unavailable" in event.error and "timeout" in event.error
    assert services.stats.backend("mbox9").errors == 2


def test_the_preauth_timeout_counts_from_the_last_command():
    async def main():
        loop = asyncio.get_running_loop()
        services = stand_in_services(loop, 1, preauth_timeout=0.6)
        server = await loop.create_server(
            lambda: MailSession(services, "imap", "imap", False, "ImapServer-0"), "127.0.0.1", 0)
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", server.sockets[0].getsockname()[1])
        await reader.readline()
        started = time.monotonic()
        for n in range(5):                  # 1.25 s of commands, each within 0.6 s
            await asyncio.sleep(0.25)
            writer.write(b"n%d NOOP\r\n" % n)
            assert (await reader.readline()).startswith(b"n%d OK" % n)
        quiet_from = time.monotonic()
        bye = await asyncio.wait_for(reader.readline(), 5)
        closed = await reader.read()
        writer.close()
        server.close()
        return started, quiet_from, time.monotonic(), bye, closed

    started, quiet_from, ended, bye, closed = asyncio.run(main())
    assert quiet_from - started > 0.6        # longer than the timeout in all
    assert bye.startswith(b"* BYE Autologout") and closed == b""
    assert 0.5 <= ended - quiet_from < 3


async def tiny_imap_server(reader, writer, greeting_delay: float = 0.0,
                           logout_text: bytes = b"done"):
    """Just enough of a mailbox server: greeting, ID, LOGIN, LOGOUT; DROP makes it
    close without a word (a crashed server)."""
    if greeting_delay:
        await asyncio.sleep(greeting_delay)     # a slow server, not synchronisation
    writer.write(b"* OK [CAPABILITY IMAP4rev1 ID LITERAL+] ready\r\n")
    while line := await reader.readline():
        tag, command = line.rstrip().split(b" ", 2)[:2]
        if command == b"DROP":
            break
        if command == b"LOGOUT":
            # One write: BYE and the tagged OK reach the proxy in one read.
            writer.write(b"* BYE bye\r\n" + tag + b" OK " + logout_text + b"\r\n")
            await writer.drain()
            break
        writer.write(tag + b" OK " + (b"[CAPABILITY IMAP4rev1] Logged in" if command == b"LOGIN"
                                       else b"done") + b"\r\n")
    writer.close()


def test_an_ended_session_is_freed_by_reference_counting():
    """No reference cycle survives a session (it would leave every ended session to the
    collector, which then walks hundreds of them per collection under load)."""
    async def main():
        loop = asyncio.get_running_loop()
        backend = await asyncio.start_server(tiny_imap_server, "127.0.0.1", 0)
        services = stand_in_services(loop, backend.sockets[0].getsockname()[1])
        made = []

        def factory():
            made.append(MailSession(services, "imap", "imap", False, "ImapServer-0"))
            return made[-1]
        server = await loop.create_server(factory, "127.0.0.1", 0)
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", server.sockets[0].getsockname()[1])
        await reader.readline()
        writer.write(b"a1 LOGIN user01@demo.test demo-pass\r\n")
        assert (await reader.readline()).startswith(b"a1 OK")
        writer.write(b"a2 LOGOUT\r\n")
        assert await reader.read() == b"* BYE bye\r\na2 OK done\r\n"
        writer.close()
        made.clear()
        await asyncio.wait_for(services.sessions_gone(), 5)
        for _ in range(5):                  # uvloop's close callbacks
            await asyncio.sleep(0)
        server.close()
        backend.close()
        return services

    # No weak reference: a compiled MailSession takes none. The collector's list of the
    # objects it tracks (a session is one, compiled or not) shows whether one is left.
    gc.collect()                            # earlier tests' garbage
    gc.disable()
    try:
        services = asyncio.run(main())
        assert services.stats.logins_ok["imap"] == 1
        assert [o for o in gc.get_objects() if type(o) is MailSession] == []
    finally:
        gc.enable()


def test_a_slow_login_after_a_quick_connect_is_not_cut_by_the_connect_limit():
    """connect_timeout bounds the TCP connect only; the greeting and LOGIN may take up
    to login_timeout."""
    async def main():
        loop = asyncio.get_running_loop()
        backend = await asyncio.start_server(
            lambda r, w: tiny_imap_server(r, w, greeting_delay=0.4), "127.0.0.1", 0)
        services = stand_in_services(loop, backend.sockets[0].getsockname()[1],
                                     connect_timeout=0.1, login_timeout=5)
        reply, took = await login_through(services)
        backend.close()
        return services, reply, took

    services, reply, took = asyncio.run(main())
    assert reply.startswith(b"a1 OK"), reply
    assert took >= 0.4
    assert services.stats.logins_ok["imap"] == 1 and not services.audit.events[0].error


def test_an_idle_logged_in_session_is_closed_at_the_idle_timeout():
    """After login the session's one timer watches the relay: idle longer than
    imap_idle_timeout (here far below preauth_timeout) and both sides are closed."""
    async def main():
        loop = asyncio.get_running_loop()
        backend = await asyncio.start_server(tiny_imap_server, "127.0.0.1", 0)
        services = stand_in_services(loop, backend.sockets[0].getsockname()[1],
                                     imap_idle_timeout=0.5, preauth_timeout=60)
        server, reader, writer = await _logged_in(services)
        writer.write(b"a2 NOOP\r\n")             # activity after login moves the limit
        assert (await reader.readline()).startswith(b"a2 OK")
        quiet_from = time.monotonic()
        rest = await asyncio.wait_for(reader.read(), 10)
        closed_after = time.monotonic() - quiet_from
        writer.close()
        server.close()
        backend.close()
        return rest, closed_after, services

    rest, closed_after, services = asyncio.run(main())
    assert rest == b""
    assert 0.4 <= closed_after < 3
    assert not services.sessions


async def _logged_in(services):
    """A listening IMAP session and a client logged in through it: (server, reader, writer)."""
    server = await services.loop.create_server(
        lambda: MailSession(services, "imap", "imap", False, "ImapServer-0"), "127.0.0.1", 0)
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", server.sockets[0].getsockname()[1])
    await reader.readline()
    writer.write(b"a1 LOGIN user01@demo.test demo-pass\r\n")
    assert (await reader.readline()).startswith(b"a1 OK")
    return server, reader, writer


async def _relayed(services, script: bytes) -> bytes:
    """Log in through a session, send ``script``, return all the client gets after the
    login reply until the close."""
    server, reader, writer = await _logged_in(services)
    assert services.stats.backend("mbox9").active == 1
    writer.write(script)
    rest = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    await asyncio.wait_for(services.sessions_gone(), 5)
    server.close()
    return rest


@pytest.mark.parametrize("text", [b"done", b"Logout completed (0.001 + 0.000 + 0.001 secs)."
                                  + b" " * 40])
def test_nothing_follows_the_tagged_logout_reply(text):
    """The mailbox server's BYE and tagged OK in one read (longer than 64 bytes in the
    second case, as Dovecot's with its timing figures): the client gets exactly those
    bytes, then the close; the proxy adds no BYE of its own (RFC 9051 section 6.1.3)."""
    async def main():
        loop = asyncio.get_running_loop()
        backend = await asyncio.start_server(
            lambda r, w: tiny_imap_server(r, w, logout_text=text), "127.0.0.1", 0)
        services = stand_in_services(loop, backend.sockets[0].getsockname()[1])
        rest = await _relayed(services, b"a2 LOGOUT\r\n")
        backend.close()
        return rest, services

    rest, services = asyncio.run(main())
    assert rest == b"* BYE bye\r\na2 OK " + text + b"\r\n"
    assert services.stats.backend("mbox9").active == 0


def test_a_server_lost_mid_session_gets_the_client_one_bye():
    async def main():
        loop = asyncio.get_running_loop()
        backend = await asyncio.start_server(tiny_imap_server, "127.0.0.1", 0)
        services = stand_in_services(loop, backend.sockets[0].getsockname()[1])
        rest = await _relayed(services, b"a2 NOOP\r\na3 DROP\r\n")
        backend.close()
        return rest, services

    rest, services = asyncio.run(main())
    assert rest == b"a2 OK done\r\n* BYE [UNAVAILABLE] Mailbox server connection lost\r\n"
    assert services.stats.backend("mbox9").active == 0


async def tiny_pop3_server(reader, writer):
    """Just enough of a POP3 mailbox server: no CAPA, USER/PASS, QUIT."""
    writer.write(b"+OK ready\r\n")
    while line := await reader.readline():
        command = line.split(b" ", 1)[0].strip().upper()
        if command == b"CAPA":
            writer.write(b"-ERR no CAPA here\r\n")
        elif command == b"QUIT":
            writer.write(b"+OK bye\r\n")
            await writer.drain()
            break
        else:
            writer.write(b"+OK\r\n")
    writer.close()


def sessions_log_fields(path) -> list[dict[str, str]]:
    return [dict(word.split("=", 1) for word in line.split() if "=" in word)
            for line in path.read_text().splitlines()]


@pytest.mark.parametrize("proto,login,script,reason", [
    ("imap", b"a1 LOGIN user01@demo.test demo-pass\r\n", b"a2 LOGOUT\r\n", "logout"),
    ("imap", b"a1 LOGIN user01@demo.test demo-pass\r\n", b"a2 NOOP\r\na3 DROP\r\n",
     "server_closed"),
    ("pop3", b"USER user01@demo.test\r\nPASS demo-pass\r\n", b"QUIT\r\n", "logout"),
    ("pop3", b"USER user01@demo.test\r\nPASS demo-pass\r\n", b"NOOP\r\n", "client_closed"),
])
def test_an_ended_relayed_session_writes_its_sessions_log_line(tmp_path, proto, login, script,
                                                               reason):
    """MailSession's end (_ended) hands sessions.log its fields (logs.mail_line): the
    account, the server, the bytes each way, whether the client had said LOGOUT/QUIT,
    the worker and the session id."""
    async def main():
        loop = asyncio.get_running_loop()
        backend = await asyncio.start_server(
            tiny_imap_server if proto == "imap" else tiny_pop3_server, "127.0.0.1", 0)
        services = stand_in_services(loop, backend.sockets[0].getsockname()[1])
        services.settings.access_log = tmp_path / "access.log"
        services.settings.sessions_log = tmp_path / "sessions.log"
        services.logs = NodeLogs(services)
        server = await loop.create_server(
            lambda: MailSession(services, proto, proto, False, "Server-0"), "127.0.0.1", 0)
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", server.sockets[0].getsockname()[1])
        await reader.readline()
        writer.write(login)
        while not (line := await asyncio.wait_for(reader.readline(), 10)).startswith(
                (b"a1 ", b"+OK Logged", b"+OK\r")):
            assert line.startswith(b"+OK"), line
        assert line.startswith((b"a1 OK", b"+OK")), line
        writer.write(script)
        if reason == "client_closed":
            assert await asyncio.wait_for(reader.readline(), 10) == b"+OK\r\n"
            writer.close()
            rest = b""
        else:
            rest = await asyncio.wait_for(reader.read(), 10)
            writer.close()
        await asyncio.wait_for(services.sessions_gone(), 5)
        server.close()
        backend.close()
        services.logs.close()
        return services, rest

    services, rest = asyncio.run(main())
    [line] = sessions_log_fields(tmp_path / "sessions.log")
    assert line["protocol"] == proto and line["reason"] == reason
    assert line["account"] == "user01@demo.test" and line["server"] == "mbox9"
    assert line["client"].startswith("127.0.0.1:")
    assert (line["worker"], line["session"]) == ("proxy_00", "1")
    assert int(line["bytes_in"]) == len(script) and int(line["bytes_out"]) > 0
    assert services.stats.sessions_ended == {(proto, reason): 1}
