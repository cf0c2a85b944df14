"""carbotui/proxy/tlsbio.py driven by hand, without sockets: a client ssl.SSLObject over
memory BIOs, a fake TCP transport, and the client's bytes handed to the server through each
of its two doors (get_buffer/buffer_updated, as uvloop calls it; data_received, as asyncio's
own loop calls it), whole and one byte at a time. Every way must give the application the
same bytes and the client the same answers; records that come with the client's Finished
are delivered at once (the server reads after the handshake only when something is left);
garbage instead of a ClientHello, fed byte by byte, closes without the application hearing
of it.
"""
from __future__ import annotations

import asyncio
import ssl

import pytest

from carbotui.core import certs
from carbotui.proxy import tlsbio


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("pki")
    ca_cert, ca_key = certs.make_ca("tlsbio feed test CA")
    certs.write_pair(ca_cert, ca_key, d / "ca.crt", d / "ca.key")
    cert, key = certs.issue(ca_cert, ca_key, ["imap.test"])
    certs.write_pair(cert, key, d / "imap.test.crt", d / "imap.test.key")
    return d


def server_context(pki) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(pki / "imap.test.crt", pki / "imap.test.key")
    ctx.num_tickets = 0
    return ctx


class FakeTcp:
    def __init__(self):
        self.sent = bytearray()
        self.closed = False
        self.aborted = False

    def write(self, data):
        assert not self.closed
        self.sent += data

    def writelines(self, chunks):
        for c in chunks:
            self.write(c)

    def is_closing(self):
        return self.closed

    def close(self):
        self.closed = True

    def abort(self):
        self.closed = self.aborted = True

    def get_extra_info(self, name, default=None):
        return default

    def take(self) -> bytes:
        out, self.sent = bytes(self.sent), bytearray()
        return out


class App(asyncio.Protocol):
    def __init__(self):
        self.made = 0
        self.data = bytearray()
        self.eof = 0
        self.lost = 0

    def connection_made(self, transport):
        self.made += 1
        self.transport = transport
        transport.write(b"* OK hello\r\n")

    def data_received(self, data):
        assert isinstance(data, bytes)
        self.data += data
        if data.endswith(b"LOGOUT\r\n"):
            self.transport.write(b"* BYE\r\na9 OK\r\n")
            self.transport.close()

    def eof_received(self):
        self.eof += 1
        return False

    def connection_lost(self, exc):
        self.lost += 1


def feed(server: tlsbio.TlsServer, data: bytes, door: str, bytewise: bool) -> None:
    pieces = [data[i:i + 1] for i in range(len(data))] if bytewise else [data]
    for piece in pieces:
        if door == "buffer":
            buf = server.get_buffer(len(piece))
            buf[:len(piece)] = piece
            server.buffer_updated(len(piece))
        else:
            server.data_received(piece)


class Client:
    def __init__(self, pki):
        ctx = ssl.create_default_context(cafile=str(pki / "ca.crt"))
        self.inc, self.out = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.obj = ctx.wrap_bio(self.inc, self.out, server_hostname="imap.test")

    def handshake(self) -> bool:
        try:
            self.obj.do_handshake()
            return True
        except ssl.SSLWantReadError:
            return False

    def read_all(self) -> bytes:
        got = bytearray()
        while True:
            try:
                chunk = self.obj.read(65536)
            except (ssl.SSLWantReadError, ssl.SSLZeroReturnError):
                return bytes(got)
            if not chunk:
                return bytes(got)
            got += chunk


def session(pki, door: str, bytewise: bool, commands: list[bytes]):
    """Handshake, then each command as its own flight; the first one goes with the
    client's Finished. -> (what the app got, what the client read, app, tcp)"""
    async def main():
        app, tcp, client = App(), FakeTcp(), Client(pki)
        server = tlsbio.TlsServer(app, server_context(pki), handshake_timeout=30.0)
        server.connection_made(tcp)
        assert not client.handshake()
        feed(server, client.out.read(), door, bytewise)         # ClientHello
        assert app.made == 0
        client.inc.write(tcp.take())
        assert client.handshake()                                # client's Finished written
        client.obj.write(commands[0])
        feed(server, client.out.read(), door, bytewise)         # Finished + a command
        assert app.made == 1
        assert bytes(app.data) == commands[0]                    # delivered at once
        answers = bytearray()
        for command in commands[1:]:
            client.inc.write(tcp.take())
            answers += client.read_all()
            client.obj.write(command)
            feed(server, client.out.read(), door, bytewise)
        client.inc.write(tcp.take())
        answers += client.read_all()
        return bytes(app.data), bytes(answers), app, tcp
    return asyncio.run(main())


COMMANDS = [b"a1 NOOP\r\n", b"a2 LOGIN x " + b"y" * 20000 + b"\r\n", b"a3 LOGOUT\r\n"]


@pytest.mark.parametrize("door", ["buffer", "data_received"])
@pytest.mark.parametrize("bytewise", [False, True])
def test_every_door_and_fragmentation_gives_the_same_session(pki, door, bytewise):
    data, answers, app, tcp = session(pki, door, bytewise, COMMANDS)
    assert data == b"".join(COMMANDS)        # a 20 KB command spans two records
    assert answers == b"* OK hello\r\n* BYE\r\na9 OK\r\n"
    assert tcp.closed and not tcp.aborted    # close_notify, then the TCP close
    assert app.made == 1 and app.eof == 0


def test_big_flight_through_data_received_larger_than_the_shared_buffer(pki):
    # asyncio reads at most 256 KiB; data_received copes with more all the same
    big = [b"a1 NOOP\r\n", b"a2 APPEND " + b"z" * (300 * 1024) + b"\r\n", b"a3 LOGOUT\r\n"]
    data, answers, _, tcp = session(pki, "data_received", False, big)
    assert data == b"".join(big)
    assert answers.endswith(b"a9 OK\r\n") and tcp.closed


@pytest.mark.parametrize("door", ["buffer", "data_received"])
def test_garbage_for_a_client_hello_byte_by_byte_closes_unheard(pki, door):
    async def main():
        app, tcp = App(), FakeTcp()
        server = tlsbio.TlsServer(app, server_context(pki), handshake_timeout=30.0)
        server.connection_made(tcp)
        for i in range(64):
            if tcp.closed:
                break
            feed(server, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[i % 27:i % 27 + 1], door, False)
        return app, tcp, server
    app, tcp, server = asyncio.run(main())
    assert tcp.closed                          # refused within the first bytes
    assert app.made == 0 and app.lost == 0     # the application never knew of it
    assert server.is_closing()
