"""HTTP/2 through WebSession's request pipeline on a real event loop: h2conn's H2Session
and H2Stream are Python subclasses of WebSession, which mypyc compiles (setup.py); the
stream's own next_event, send and write must be the ones the compiled _handle/_proxy call.
An h2 client over plain TCP (prior knowledge: H2Session directly) against a scripted
upstream; the stack's tests/stack/test_http2.py does the same over TLS with curl.
"""
from __future__ import annotations

import asyncio

import h2.config
import h2.connection
import h2.events
import pytest

from carbotui.proxy import web
from carbotui.proxy.h2conn import H2Session
from tests.unit.test_web_session import scripted_upstream, stand_in_services

pytestmark = pytest.mark.timeout(30)

BODY = b"hello over h2\n"
ANSWER = (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nServer: mbox9-internal\r\n"
          b"Content-Length: %d\r\n\r\n" % len(BODY) + BODY)


async def h2_get(port: int, paths: list[str]) -> dict[int, tuple[list, bytes]]:
    """GET each path on its own stream of one connection; {stream: (headers, body)}."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True,
                                                                  header_encoding=None))
    client.initiate_connection()
    ids = []
    for path in paths:
        sid = client.get_next_available_stream_id()
        ids.append(sid)
        client.send_headers(sid, [(b":method", b"GET"), (b":scheme", b"https"),
                                  (b":authority", b"mail.demo.test"), (b":path", path.encode()),
                                  (b"user-agent", b"h2-test")], end_stream=True)
    writer.write(client.data_to_send())
    got: dict[int, tuple[list, bytes]] = {sid: ([], b"") for sid in ids}
    ended: set[int] = set()
    while len(ended) < len(ids):
        data = await asyncio.wait_for(reader.read(65536), 10)
        assert data, "the proxy closed before answering every stream"
        for event in client.receive_data(data):
            if isinstance(event, h2.events.ResponseReceived):
                got[event.stream_id] = (event.headers, got[event.stream_id][1])
            elif isinstance(event, h2.events.DataReceived):
                headers, body = got[event.stream_id]
                got[event.stream_id] = (headers, body + event.data)
                client.acknowledge_received_data(len(event.data), event.stream_id)
            elif isinstance(event, h2.events.StreamEnded):
                ended.add(event.stream_id)
        writer.write(client.data_to_send())
    writer.close()
    return got


async def through_h2(paths: list[str]):
    up, port, seen = await scripted_upstream(ANSWER)
    services = stand_in_services(asyncio.get_running_loop(), port)
    server = await services.loop.create_server(
        lambda: H2Session(services, "https", None), "127.0.0.1", 0)
    try:
        got = await h2_get(server.sockets[0].getsockname()[1], paths)
    finally:
        server.close()
        up.close()
    return got, seen, services


def test_h2_streams_go_through_the_compiled_pipeline():
    got, seen, services = asyncio.run(through_h2(["/health", "/mail?zauthtoken=x&view=1"]))
    assert len(got) == 2
    for headers, body in got.values():
        fields = dict(headers)
        assert fields[b":status"] == b"200" and body == BODY
        assert b"server" not in fields                 # nothing names a backend
    assert len(seen) == 2
    assert sorted(head.split(b" ", 2)[1] for head in seen) == \
        [b"/health", b"/mail?zauthtoken=x&view=1"]
    assert all(b"Host: mail.demo.test" in head or b"host: mail.demo.test" in head.lower()
               for head in seen)
    assert services.stats.web_requests["https"] == 2
    assert issubclass(H2Session, web.WebSession)
