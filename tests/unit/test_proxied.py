"""carbotui/proxy/proxied.py's listener on a real event loop and real loopback sockets: what
a drain does to the connections a balancer sent just before its health checks took the
node out. A connection still in the kernel's accept queue, one whose PROXY header has not
arrived, one in the middle of its TLS handshake: each becomes a session that answers, and
``wait_closed()`` returns only once it has. A health check refused while draining is hung up at
once, not when read_header's duplicate descriptor goes a second later.

Clients are blocking sockets in threads (``asyncio.to_thread``), so the kernel completes
their handshakes whatever the loop is doing; each test runs on uvloop (the workers' loop)
and on asyncio's own.
"""
from __future__ import annotations

import asyncio
import ipaddress
import select
import socket
from types import SimpleNamespace

import pytest
from carbotui.protocols.proxyproto import build_v1, build_v2
from carbotui.proxy import listeners, proxied, tlsbio
# the event loops each test runs on, the test PKI and its TLS contexts
from tests.unit.test_tlsbio import client_context, pki, run, server_context  # noqa: F401

CLIENT = ("203.0.113.9", 5555)
DEADLINE = 10.0


class Greeter(asyncio.Protocol):
    """A stand-in session: registered and greeting on connection_made, as MailSession."""

    def __init__(self, services, addresses):
        self.services, self.addresses = services, addresses

    def connection_made(self, transport):
        self.services.sessions.append(self.addresses[0])
        transport.write(b"* OK hello\r\n")


def services_for(trusted="127.0.0.0/8"):
    services = SimpleNamespace(
        settings=SimpleNamespace(proxy_trusted=(ipaddress.ip_network(trusted),),
                                 proxy_timeout=DEADLINE),
        stats=SimpleNamespace(proxy_refused=0), draining=False, sessions=[])
    return services


def listener(services, tls_ctx=None) -> proxied.ProxiedListener:
    sock = _bind()
    factory = lambda addresses: Greeter(services, addresses)     # noqa: E731
    if tls_ctx is not None:
        factory = tlsbio.server_factory(factory, tls_ctx)
    return proxied.ProxiedListener(services, sock, factory, None, "test listener")


def _bind() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(listeners.BACKLOG)
    sock.setblocking(False)
    return sock


def connect(port: int) -> socket.socket:
    """A blocking client; the kernel completes its handshake, accepted or not."""
    return socket.create_connection(("127.0.0.1", port), timeout=DEADLINE)


def read_line(sock) -> bytes:
    out = b""
    while not out.endswith(b"\r\n"):
        chunk = sock.recv(4096)
        if not chunk:
            break
        out += chunk
    return out


async def accepted(lst) -> None:
    """Until the listener has accepted a connection (it is being set up): the loop's turns,
    no clock."""
    for _ in range(100_000):
        if lst.setting_up:
            return
        await asyncio.sleep(0)
    raise AssertionError("the listener accepted nothing")


def ended(sock) -> bool:
    """Closed without a byte of answer (an EOF, or a reset: unread input was dropped)."""
    try:
        return sock.recv(4096) == b""
    except ConnectionResetError:
        return True


def header() -> bytes:
    return build_v2(CLIENT, ("127.0.0.1", 143))


def test_the_accept_queue_is_served_not_reset_on_close(run):
    async def main():
        services = services_for()
        lst = listener(services)
        port = lst.sock.getsockname()[1]
        await asyncio.sleep(0)                          # the loop has watched the listener
        # Three connections the loop has not run to accept (no await since the connects)
        clients = [connect(port) for _ in range(3)]
        for c in clients:
            c.sendall(header())
        lst.close()                                     # before the loop's next turn
        closing = asyncio.get_running_loop().create_task(lst.wait_closed())
        greetings = await asyncio.gather(*(asyncio.to_thread(read_line, c) for c in clients))
        await closing
        assert greetings == [b"* OK hello\r\n"] * 3
        assert services.sessions == [CLIENT] * 3
        assert lst.sock.fileno() == -1                 # and the listener is closed
        with pytest.raises(ConnectionRefusedError):
            connect(port)
        for c in clients:
            c.close()
    run(main())


def test_close_waits_for_a_header_still_on_its_way(run):
    async def main():
        services = services_for()
        lst = listener(services)
        c = await asyncio.to_thread(connect, lst.sock.getsockname()[1])
        await accepted(lst)                             # reading its header
        lst.close()
        closing = asyncio.get_running_loop().create_task(lst.wait_closed())
        done, _ = await asyncio.wait([closing], timeout=0.2)
        assert not done and services.sessions == []    # a connection, no session yet
        c.sendall(build_v1(CLIENT, ("127.0.0.1", 143)))
        assert await asyncio.to_thread(read_line, c) == b"* OK hello\r\n"
        await closing
        assert services.sessions == [CLIENT]
        c.close()
    run(main())


def test_close_waits_for_a_tls_handshake_then_the_session_exists(run, pki):
    async def main():
        ctx, client_ctx = server_context(pki), client_context(pki)
        services = services_for()
        lst = listener(services, ctx)
        c = await asyncio.to_thread(connect, lst.sock.getsockname()[1])
        c.sendall(header())
        await accepted(lst)
        lst.close()
        closing = asyncio.get_running_loop().create_task(lst.wait_closed())
        done, _ = await asyncio.wait([closing], timeout=0.2)
        assert not done and services.sessions == []    # header read, no handshake yet

        def handshake_and_greeting():
            tls = client_ctx.wrap_socket(c, server_hostname="imap.test")
            return tls, read_line(tls)
        tls, greeting = await asyncio.to_thread(handshake_and_greeting)
        assert greeting == b"* OK hello\r\n"
        await closing
        assert services.sessions == [CLIENT]
        tls.close()
    run(main())


def test_a_failed_handshake_ends_the_wait_too(run, pki):
    async def main():
        ctx = server_context(pki)
        services = services_for()
        lst = listener(services, ctx)
        c = await asyncio.to_thread(connect, lst.sock.getsockname()[1])
        c.sendall(header() + b"this is no ClientHello\r\n" * 4)
        lst.close()
        await asyncio.wait_for(lst.wait_closed(), DEADLINE)
        assert services.sessions == []

        def rest():
            out = b""
            while chunk := c.recv(4096):
                out += chunk
            return out
        assert b"* OK" not in await asyncio.to_thread(rest)   # an alert at most, then EOF
        c.close()
    run(main())


def test_a_health_check_while_draining_is_hung_up_at_once(run):
    async def main():
        services = services_for()
        services.draining = True
        lst = listener(services)
        c = await asyncio.to_thread(connect, lst.sock.getsockname()[1])
        c.sendall(build_v2(command="LOCAL"))             # HAProxy's health check
        await accepted(lst)
        await asyncio.wait(list(lst.setting_up))
        # The loop stands still from here: read_header's duplicate descriptor (closed
        # by a timer a second later) stays open. The peer must see the end anyway.
        readable, _, _ = select.select([c], [], [], DEADLINE)
        assert readable and c.recv(4096) == b""
        assert services.sessions == []
        c.close()
        lst.close()
        await lst.wait_closed()
    run(main())


def test_an_untrusted_peer_and_a_bad_header_are_dropped_unanswered(run):
    async def main():
        services = services_for(trusted="10.0.0.0/8")
        lst = listener(services)
        c = await asyncio.to_thread(connect, lst.sock.getsockname()[1])
        c.sendall(header())
        assert await asyncio.to_thread(ended, c)
        c.close()
        services.settings.proxy_trusted = (ipaddress.ip_network("127.0.0.0/8"),)
        c = await asyncio.to_thread(connect, lst.sock.getsockname()[1])
        c.sendall(b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n")
        assert await asyncio.to_thread(ended, c)
        c.close()
        assert services.stats.proxy_refused == 2 and services.sessions == []
        lst.close()
        await lst.wait_closed()
    run(main())
