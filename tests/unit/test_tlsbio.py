"""carbotui/proxy/tlsbio.py (the IMAPS/POP3S listeners' TLS) on a real event loop, against a
real TLS client (Python's ssl over a blocking loopback socket, in a thread): handshake,
SNI and ALPN, the handshake deadline, garbage instead of a ClientHello, a bad record after
the handshake, close_notify both ways, TCP half-close, big writes with the transport's
flow control (a client that stops reading, then reads it all), big uploads, and
pause_reading holding records back. Each test runs on uvloop (the workers' loop) and on
asyncio's own loop.
"""
from __future__ import annotations

import asyncio
import hashlib
import socket
import ssl
import threading
import time

import pytest
import uvloop

from carbotui.core import certs
from carbotui.proxy import listeners, tlsbio

DEADLINE = 10.0


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("pki")
    ca_cert, ca_key = certs.make_ca("tlsbio test CA")
    certs.write_pair(ca_cert, ca_key, d / "ca.crt", d / "ca.key")
    for name in ("imap.test", "other.test"):
        cert, key = certs.issue(ca_cert, ca_key, [name])
        certs.write_pair(cert, key, d / f"{name}.crt", d / f"{name}.key")
    return d


def server_context(pki, name="imap.test") -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(pki / f"{name}.crt", pki / f"{name}.key")
    ctx.num_tickets = 0
    return ctx


def client_context(pki) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(pki / "ca.crt"))
    return ctx


@pytest.fixture(params=["uvloop", "asyncio"])
def run(request):
    def run(coro):
        loop = uvloop.new_event_loop() if request.param == "uvloop" else asyncio.new_event_loop()
        try:
            return loop.run_until_complete(asyncio.wait_for(coro, 60))
        finally:
            loop.close()
    return run


class App(asyncio.Protocol):
    """Records what the TLS transport tells it; ``greeting`` is written on connection."""

    def __init__(self, greeting=b"* OK hello\r\n", keep_open=False, on_data=None):
        loop = asyncio.get_running_loop()
        self.greeting, self.keep_open, self.on_data = greeting, keep_open, on_data
        self.made = loop.create_future()
        self.lost = loop.create_future()
        self.eof = loop.create_future()
        self.paused = loop.create_future()
        self.resumed = loop.create_future()
        self.data = bytearray()
        self.chunks: list[bytes] = []
        self.transport = None

    def connection_made(self, transport):
        self.transport = transport
        self.made.set_result(transport)
        if self.greeting:
            transport.write(self.greeting)

    def data_received(self, data):
        assert isinstance(data, bytes)
        self.data += data
        self.chunks.append(data)
        if self.on_data:
            self.on_data(self, data)

    def eof_received(self):
        self.eof.set_result(True)
        return self.keep_open

    def pause_writing(self):
        if not self.paused.done():
            self.paused.set_result(self.transport.get_write_buffer_size())

    def resume_writing(self):
        if not self.resumed.done():
            self.resumed.set_result(True)

    def connection_lost(self, exc):
        self.lost.set_result(exc)


async def serve(ctx, app_factory=App, timeout=DEADLINE):
    apps: list[App] = []

    def make():
        apps.append(app_factory())
        return apps[-1]
    server = await asyncio.get_running_loop().create_server(
        listeners.implicit_tls(make, ctx, timeout), "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1], apps


def connect(port: int, ctx: ssl.SSLContext | None, name="imap.test", **kw):
    raw = socket.create_connection(("127.0.0.1", port), timeout=DEADLINE)
    if ctx is None:
        return raw
    return ctx.wrap_socket(raw, server_hostname=name, **kw)


def on_raw(tls_sock: ssl.SSLSocket, do) -> None:
    """``do(socket)`` on the TCP socket under a TLS one, past the TLS layer (SSLSocket's
    own shutdown() would end TLS too)."""
    raw = socket.socket(fileno=tls_sock.fileno())
    try:
        do(raw)
    finally:
        raw.detach()


def read_until(sock, marker: bytes) -> bytes:
    got = b""
    while marker not in got:
        chunk = sock.recv(65536)
        if not chunk:
            break
        got += chunk
    return got


async def until(predicate, what: str):
    deadline = time.monotonic() + DEADLINE
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


def test_handshake_greeting_and_extra_info(pki, run):
    async def main():
        server, port, apps = await serve(server_context(pki))

        def client():
            with connect(port, client_context(pki)) as s:
                assert read_until(s, b"\r\n") == b"* OK hello\r\n"
                s.sendall(b"a1 NOOP\r\n")
                return s.getsockname(), s.cipher()[0], s.version()
        local, cipher, version = await asyncio.to_thread(client)
        t = await apps[0].made
        await apps[0].lost
        assert bytes(apps[0].data) == b"a1 NOOP\r\n"
        assert t.get_extra_info("peername") == local
        assert t.get_extra_info("sockname")[1] == port
        assert isinstance(t.get_extra_info("ssl_object"), ssl.SSLObject)
        assert t.get_extra_info("ssl_object").version() == version
        assert t.get_extra_info("cipher")[0] == cipher
        assert t.get_extra_info("peercert") is None          # no client certificate
        assert t.get_extra_info("sslcontext") is not None
        assert t.get_extra_info("nothing", "dflt") == "dflt"
        assert t.is_closing()
        server.close()
    run(main())


def test_sni_switches_context_and_alpn(pki, run):
    async def main():
        ctx, other = server_context(pki), server_context(pki, "other.test")
        seen = []

        def pick(sslobj, name, _ctx):
            seen.append((sslobj, name))
            if name == "other.test":
                sslobj.context = other
        ctx.sni_callback = pick
        ctx.set_alpn_protocols(["imap"])
        other.set_alpn_protocols(["imap"])
        server, port, apps = await serve(ctx)

        def client():
            cctx = client_context(pki)
            cctx.set_alpn_protocols(["imap"])
            with connect(port, cctx, name="other.test") as s:      # verified as other.test
                read_until(s, b"\r\n")
                return s.selected_alpn_protocol()
        assert await asyncio.to_thread(client) == "imap"
        t = await apps[0].made
        # the callback got the connection's SSL object (its context is the one it set)
        assert [name for _, name in seen] == ["other.test"]
        assert seen[0][0].context is other
        assert t.get_extra_info("sslcontext") is other
        assert t.get_extra_info("ssl_object").context is other
        assert t.get_extra_info("ssl_object").selected_alpn_protocol() == "imap"
        server.close()
    run(main())


def test_handshake_deadline_closes_a_silent_client(pki, run):
    async def main():
        server, port, apps = await serve(server_context(pki), timeout=0.3)

        def client():
            with connect(port, None) as s:           # TCP only, never a ClientHello
                started = time.monotonic()
                try:
                    got = s.recv(100)
                except ConnectionResetError:     # the deadline aborts: RST
                    got = b""
                return got, time.monotonic() - started
        got, waited = await asyncio.to_thread(client)
        assert got == b"" and 0.2 < waited < 5
        assert not apps[0].made.done() and not apps[0].lost.done()
        server.close()
    run(main())


def test_garbage_instead_of_client_hello_is_closed(pki, run):
    async def main():
        server, port, apps = await serve(server_context(pki))

        def client():
            with connect(port, None) as s:
                s.sendall(b"a1 LOGIN user01 secret\r\n")          # plaintext on IMAPS
                got = b""
                while chunk := s.recv(100):
                    got += chunk
                return got
        got = await asyncio.to_thread(client)
        # at most a TLS alert record (content type 21), never anything of the app's
        assert got == b"" or got[0] == 21
        assert not apps[0].made.done()
        server.close()
    run(main())


def test_bad_record_after_handshake_aborts(pki, run):
    async def main():
        server, port, apps = await serve(server_context(pki))

        def client():
            with connect(port, client_context(pki)) as s:
                read_until(s, b"\r\n")
                # an application-data record that fails to decrypt, on the raw socket
                on_raw(s, lambda raw: raw.sendall(b"\x17\x03\x03\x00\x20" + b"\x00" * 32))
                try:
                    return s.recv(100)
                except (ssl.SSLError, OSError) as exc:
                    return exc
        await asyncio.to_thread(client)
        await apps[0].lost
        assert apps[0].data == b""
        server.close()
    run(main())


def test_client_close_notify_is_answered(pki, run):
    async def main():
        server, port, apps = await serve(server_context(pki))

        def client():
            s = connect(port, client_context(pki))
            read_until(s, b"\r\n")
            s.sendall(b"a1 LOGOUT\r\n")
            plain = s.unwrap()          # our close_notify, then waits for the server's
            leftover = plain.recv(100)
            plain.close()
            return leftover
        assert await asyncio.to_thread(client) == b""
        assert await apps[0].eof is True
        assert await apps[0].lost is None
        assert bytes(apps[0].data) == b"a1 LOGOUT\r\n"
        server.close()
    run(main())


def test_server_close_sends_close_notify(pki, run):
    def closer(app, data):
        app.transport.write(b"* BYE\r\n")
        app.transport.close()
        app.transport.write(b"dropped after close")

    async def main():
        server, port, apps = await serve(server_context(pki), lambda: App(on_data=closer))

        def client():
            with connect(port, client_context(pki)) as s:
                read_until(s, b"\r\n")
                s.sendall(b"a1 LOGOUT\r\n")
                got = b""
                while chunk := s.recv(100):     # b"" only on a clean close_notify
                    got += chunk
                return got
        assert await asyncio.to_thread(client) == b"* BYE\r\n"
        assert await apps[0].lost is None
        server.close()
    run(main())


@pytest.mark.parametrize("keep_open", [False, True])
def test_tcp_half_close(pki, run, keep_open):
    """A FIN without close_notify: eof_received; a false answer closes (with our
    close_notify), a true one keeps the writing side open."""
    async def main():
        server, port, apps = await serve(server_context(pki), lambda: App(keep_open=keep_open))

        def client():
            with connect(port, client_context(pki)) as s:
                read_until(s, b"\r\n")
                s.sendall(b"a1 NOOP\r\n")
                on_raw(s, lambda raw: raw.shutdown(socket.SHUT_WR))   # FIN, no close_notify
                got = b""
                try:
                    while chunk := s.recv(100):
                        got += chunk
                except ssl.SSLError as exc:
                    return got, exc
                return got, None
        task = asyncio.create_task(asyncio.to_thread(client))
        await until(lambda: apps, "the session")
        await apps[0].eof
        if keep_open:
            assert not apps[0].transport.is_closing()
            apps[0].transport.write(b"still here\r\n")
            apps[0].transport.close()
        got, error = await task
        assert error is None                            # ended by a close_notify
        assert got == (b"still here\r\n" if keep_open else b"")
        assert bytes(apps[0].data) == b"a1 NOOP\r\n"
        assert await apps[0].lost is None
        server.close()
    run(main())


BLOCK = hashlib.sha256(b"x").digest() * 2048          # 64 KiB
TOTAL = 64 * len(BLOCK)                               # 4 MiB


class Pump(App):
    """Writes TOTAL bytes as fast as flow control lets it, then closes."""

    def __init__(self):
        super().__init__(greeting=None)
        self.written = self.pauses = self.max_buffered = 0
        self.holding = False
        self.first_pause = asyncio.get_running_loop().create_future()

    def connection_made(self, transport):
        super().connection_made(transport)
        transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16384)
        self.more()

    def more(self):
        while not self.holding and self.written < TOTAL:
            self.transport.write(BLOCK)
            self.written += len(BLOCK)
            self.max_buffered = max(self.max_buffered, self.transport.get_write_buffer_size())
        if self.written >= TOTAL and not self.transport.is_closing():
            self.transport.close()

    def pause_writing(self):
        self.holding = True
        self.pauses += 1
        if not self.first_pause.done():
            self.first_pause.set_result(self.written)

    def resume_writing(self):
        self.holding = False
        self.more()


def test_big_write_flow_control_and_a_client_that_stops_reading(pki, run):
    """pause_writing comes while the client reads nothing, so what the proxy holds stays
    bounded; nothing more is taken while paused; then the client reads it all, intact."""
    async def main():
        server, port, apps = await serve(server_context(pki), Pump)
        release = threading.Event()

        def client():
            raw = socket.socket()
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
            raw.settimeout(DEADLINE)
            raw.connect(("127.0.0.1", port))
            with client_context(pki).wrap_socket(raw, server_hostname="imap.test") as s:
                release.wait(DEADLINE)               # not reading until told
                digest = hashlib.sha256()
                total = 0
                while chunk := s.recv(1 << 20):
                    digest.update(chunk)
                    total += len(chunk)
                return total, digest.hexdigest()
        task = asyncio.create_task(asyncio.to_thread(client))
        await until(lambda: apps, "the session")
        app = apps[0]
        await app.first_pause
        # The kernel's buffers fill up meanwhile (pause, resume, ...), then it stays
        # paused: what the proxy took of the 4 MiB stays bounded.
        await asyncio.sleep(0.3)
        assert app.holding and app.written < 1024 * 1024
        release.set()
        total, digest = await task
        assert total == TOTAL and digest == hashlib.sha256(BLOCK * 64).hexdigest()
        assert app.pauses >= 1 and app.max_buffered < 1024 * 1024
        assert await app.lost is None
        server.close()
    run(main())


def test_big_upload_arrives_whole_in_order(pki, run):
    payload = b"".join(i.to_bytes(4, "big") for i in range(1 << 20))     # 4 MiB

    async def main():
        server, port, apps = await serve(server_context(pki))

        def client():
            with connect(port, client_context(pki)) as s:
                read_until(s, b"\r\n")
                s.sendall(payload)
        await asyncio.to_thread(client)
        await apps[0].lost
        assert bytes(apps[0].data) == payload
        # records arrive gathered: fewer calls than the 256 records sent
        assert len(apps[0].chunks) < 256
        server.close()
    run(main())


class Holder(App):
    """Pauses reading on its first data and records any data delivered while paused."""

    def __init__(self):
        super().__init__()
        self.holding = False
        self.violations = 0

    def data_received(self, data):
        self.violations += self.holding
        super().data_received(data)
        if len(self.chunks) == 1:
            self.holding = True
            self.transport.pause_reading()
            assert not self.transport.is_reading()
            self.transport.write(b"held\r\n")

    def resume(self):
        self.holding = False
        self.transport.resume_reading()


def test_pause_reading_holds_records_back(pki, run):
    """As a mail session after LOGIN: paused, nothing is delivered; resumed, the rest
    comes in order."""
    async def main():
        server, port, apps = await serve(server_context(pki), Holder)
        loop = asyncio.get_running_loop()
        sent = loop.create_future()

        def client():
            with connect(port, client_context(pki)) as s:
                read_until(s, b"\r\n")
                s.sendall(b"a1 LOGIN u p\r\n")
                read_until(s, b"held\r\n")
                for i in range(2, 6):
                    s.sendall(b"a%d NOOP\r\n" % i)
                loop.call_soon_threadsafe(sent.set_result, None)
                return read_until(s, b"done\r\n")
        task = asyncio.create_task(asyncio.to_thread(client))
        await sent
        await asyncio.sleep(0.2)      # the records are here; none may be delivered
        app = apps[0]
        assert bytes(app.data) == b"a1 LOGIN u p\r\n"
        app.resume()
        assert app.transport.is_reading()
        await until(lambda: app.data.endswith(b"a5 NOOP\r\n"), "the held records")
        assert bytes(app.data) == b"a1 LOGIN u p\r\n" + b"".join(
            b"a%d NOOP\r\n" % i for i in range(2, 6))
        app.transport.write(b"done\r\n")
        assert (await task).endswith(b"done\r\n")
        assert app.violations == 0
        server.close()
    run(main())


class BigHolder(App):
    """Pauses after its first MiB and records data delivered while paused."""

    def __init__(self):
        super().__init__()
        self.holding = False
        self.violations = 0
        self.held = asyncio.get_running_loop().create_future()

    def data_received(self, data):
        self.violations += self.holding
        super().data_received(data)
        if len(self.data) >= 1 << 20 and not self.held.done():
            self.holding = True
            self.transport.pause_reading()
            self.held.set_result(len(self.data))


def test_pause_in_a_big_upload_keeps_the_rest_until_resumed(pki, run):
    """Paused in the middle of a big read: the rest of it waits in the BIO and comes,
    in order, after resume_reading."""
    payload = b"".join(i.to_bytes(4, "big") for i in range(1 << 20))     # 4 MiB

    async def main():
        server, port, apps = await serve(server_context(pki), BigHolder)

        def client():
            with connect(port, client_context(pki)) as s:
                read_until(s, b"\r\n")
                s.sendall(payload)
                s.sendall(b"end")
                return read_until(s, b"bye")
        task = asyncio.create_task(asyncio.to_thread(client))
        await until(lambda: apps, "the session")
        app = apps[0]
        at = await app.held
        assert len(app.data) == at
        app.holding = False
        app.transport.resume_reading()
        await until(lambda: app.data.endswith(b"end"), "the rest of the upload")
        assert bytes(app.data) == payload + b"end"
        assert app.violations == 0
        app.transport.write(b"bye")
        app.transport.close()
        await task
        server.close()
    run(main())


def test_abort_resets_and_reports_lost(pki, run):
    async def main():
        server, port, apps = await serve(server_context(pki))

        def client():
            with connect(port, client_context(pki)) as s:
                read_until(s, b"\r\n")
                s.sendall(b"x\r\n")
                try:
                    return s.recv(100)
                except (OSError, ssl.SSLError) as exc:
                    return exc
        task = asyncio.create_task(asyncio.to_thread(client))
        await until(lambda: apps and apps[0].data, "the command")
        apps[0].transport.abort()
        result = await task
        assert result == b"" or isinstance(result, (OSError, ssl.SSLError))
        await apps[0].lost
        server.close()
    run(main())


class Addressed(App):
    def __init__(self, addresses=None):
        super().__init__()
        self.addresses = addresses


def test_behind_a_proxy_protocol_listener(pki, run):
    """A PROXY-protocol IMAPS listener (proxied.py) hands the header's addresses to the
    session inside the TLS wrapper; the TLS handshake follows the header."""
    from types import SimpleNamespace
    from carbotui.proxy import proxied

    async def main():
        apps: list[Addressed] = []

        def factory(addresses=None):
            apps.append(Addressed(addresses))
            return apps[-1]
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        sock.setblocking(False)
        services = SimpleNamespace(
            settings=SimpleNamespace(proxy_trusted=("127.0.0.0/8",), proxy_timeout=5.0),
            stats=SimpleNamespace(proxy_refused=0), draining=False)
        listener = proxied.ProxiedListener(
            services, sock, listeners.implicit_tls(factory, server_context(pki)), None, None)

        def client():
            raw = socket.create_connection(sock.getsockname(), timeout=DEADLINE)
            raw.sendall(b"PROXY TCP4 192.0.2.7 127.0.0.1 40000 993\r\n")
            with client_context(pki).wrap_socket(raw, server_hostname="imap.test") as s:
                return read_until(s, b"\r\n")
        assert await asyncio.to_thread(client) == b"* OK hello\r\n"
        await apps[0].lost
        assert apps[0].addresses == (("192.0.2.7", 40000), ("127.0.0.1", 993))
        listener.close()
        await listener.wait_closed()
    run(main())
