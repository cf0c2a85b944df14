"""Flow control through a Splice (carbotui/proxy/relay.py) and its protocol ends
(carbotui/proxy/mail.py), compiled or not: a transport whose buffer is full pauses reading
the other side until it drains. The transports stand in as uvloop's do: duck-typed, not
asyncio.Transport subclasses (uvloop.loop.TCPTransport is none), which the compiled
signatures must accept."""
from __future__ import annotations

import asyncio

from carbotui.protocols.imap import ImapBackendLogin
from carbotui.proxy.mail import BackendProtocol, MailSession
from carbotui.proxy.relay import Splice, SpliceEnd


class Transport:
    def __init__(self) -> None:
        self.reading, self.closing, self.written = True, False, b""

    def is_closing(self) -> bool:
        return self.closing

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def write(self, data: bytes) -> None:
        self.written += data

    def close(self) -> None:
        self.closing = True


def _spliced(loop):
    client, backend = Transport(), Transport()
    ended = []
    splice = Splice(client, backend, idle_timeout=60.0, on_close=ended.append, loop=loop,
                    own_timer=False)
    end = BackendProtocol(ImapBackendLogin("u", "p", client_ip="192.0.2.1", client_port=1,
                                           local_ip="192.0.2.2", local_port=143), loop)
    end.transport, end.splice = backend, splice
    return client, backend, splice, end, ended


def test_a_full_backend_pauses_the_client_until_it_drains():
    loop = asyncio.new_event_loop()
    try:
        client, backend, splice, end, ended = _spliced(loop)
        assert not isinstance(end, asyncio.BufferedProtocol)     # uvloop: data_received
        end.pause_writing()
        assert client.reading is False and backend.reading is True
        end.resume_writing()
        assert client.reading is True
        client.closing = True                  # a closing side is left alone
        end.pause_writing()
        assert client.reading is True
        splice.from_client(b"a1 NOOP\r\n")
        splice.from_backend(b"a1 OK\r\n")
        assert (backend.written, client.written) == (b"a1 NOOP\r\n", b"a1 OK\r\n")
        assert (splice.bytes_in, splice.bytes_out) == (9, 7)
        splice.close("client closed", farewell=b"bye\r\n")
        splice.close("again")
        assert ended == ["client closed"] and backend.closing
        assert client.written == b"a1 OK\r\n"      # closing: no farewell written
    finally:
        loop.close()


def test_a_full_client_pauses_the_backend():
    loop = asyncio.new_event_loop()
    try:
        client, backend, splice, _, _ = _spliced(loop)
        splice.write_paused(client)
        assert backend.reading is False and client.reading is True
        splice.write_resumed(client)
        assert backend.reading is True
    finally:
        loop.close()


def test_an_end_without_a_splice_ignores_flow_control():
    loop = asyncio.new_event_loop()
    try:
        end = BackendProtocol(ImapBackendLogin("u", "p", client_ip="192.0.2.1", client_port=1,
                                               local_ip="192.0.2.2", local_port=143), loop)
        end.transport = Transport()
        end.pause_writing()
        end.resume_writing()
        assert end.transport.reading is True and end.splice is None
        assert issubclass(MailSession, SpliceEnd) and issubclass(BackendProtocol, SpliceEnd)
    finally:
        loop.close()
