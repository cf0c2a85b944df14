"""HTTP/2 by ALPN on the HTTPS and admin listeners (RFC 9113), against the real demo
web apps: curl --http2 and nghttp as clients, then hostile frames written with the h2
project's own hpack/hyperframe against a single custom worker, which must answer a
normal request right after each."""
from __future__ import annotations

import base64
import hashlib
import json
import os
import socket
import ssl
import subprocess
import sys
import time

import hpack
import psutil
import pytest
from hyperframe.frame import (ContinuationFrame, DataFrame, Frame, GoAwayFrame, HeadersFrame,
                              PingFrame, RstStreamFrame, SettingsFrame, WindowUpdateFrame)

from tests.stack.conftest import (CA, HOST, PASSWORD, REPO, WEB_PORTS, CustomWorker,
                                  tls_context, wait_for)

pytestmark = pytest.mark.usefixtures("proxy_up")

VHOST = "mail.demo.test"
HTTPS, ADMIN = WEB_PORTS["https"], WEB_PORTS["admin"]
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
NO_ERROR, PROTOCOL_ERROR, FLOW_CONTROL_ERROR, CANCEL, ENHANCE_YOUR_CALM = 0, 1, 3, 8, 11
ATTACKER = "127.0.0.31"         # not the whitelisted 127.0.0.1


def curl(*args: str, port: int = HTTPS, timeout: float = 60) -> subprocess.CompletedProcess:
    cmd = ["curl", "-sS", "--max-time", str(int(timeout)), "--cacert", str(CA),
           "--resolve", f"{VHOST}:{port}:{HOST}", *args]
    return subprocess.run(cmd, capture_output=True, timeout=timeout + 10)


def url(path: str, port: int = HTTPS) -> str:
    return f"https://{VHOST}:{port}{path}"


def version_and_status(port: int, *flags: str) -> str:
    out = curl(*flags, "-o", "/dev/null", "-w", "%{http_version} %{http_code}", url("/health",
                                                                                  port), port=port)
    assert out.returncode == 0, out.stderr
    return out.stdout.decode()


def head_of(out: subprocess.CompletedProcess) -> dict[str, list[str]]:
    assert out.returncode == 0, out.stderr
    head = out.stdout.partition(b"\r\n\r\n")[0].decode("latin-1").split("\r\n")
    fields: dict[str, list[str]] = {"": [head[0]]}
    for line in head[1:]:
        name, _, value = line.partition(":")
        fields.setdefault(name.strip().lower(), []).append(value.strip())
    return fields


# ------------------------------------------------------------ real clients

@pytest.mark.parametrize("port", [HTTPS, ADMIN])
def test_curl_gets_http2_by_alpn_and_http1_clients_are_unchanged(port):
    assert version_and_status(port, "--http2") == "2 200"
    assert version_and_status(port, "--http1.1") == "1.1 200"


def test_mail_listeners_offer_no_alpn():
    ctx = tls_context()
    ctx.set_alpn_protocols(["h2", "http/1.1"])
    for port in (10993, 10995):
        with ctx.wrap_socket(socket.create_connection((HOST, port), timeout=10),
                             server_hostname=VHOST) as sock:
            assert sock.selected_alpn_protocol() is None


@pytest.mark.parametrize("user, server", [("user02@demo.test", "mbox2"),
                                          ("user05@demo.test", "mbox1")])
def test_rest_paths_over_http2_reach_the_users_server(user, server):
    fields = head_of(curl("--http2", "-i", url(f"/home/{user}/inbox")))
    assert fields[""][0].startswith("HTTP/2 200")
    assert fields["x-demo-server"] == [server]
    for name in ("connection", "keep-alive", "transfer-encoding", "server"):
        assert name not in fields


@pytest.mark.parametrize("user, server", [("user07@demo.test", "mbox1"),
                                          ("user08@demo.test", "mbox2")])
def test_login_over_http2_works_as_over_http1(user, server, tmp_path, audit):
    jar = str(tmp_path / "cookies")
    fields = head_of(curl("--http2", "-i", "-c", jar, "-d",
                          f"username={user}&password={PASSWORD}", url("/login")))
    assert fields[""][0].startswith("HTTP/2 302") and fields["x-demo-server"] == [server]
    assert any(c.startswith("ZM_AUTH_TOKEN=") for c in fields["set-cookie"])
    for _ in range(4):
        out = curl("--http2", "-i", "-b", jar, url("/mail"))
        fields = head_of(out)
        assert fields[""][0].startswith("HTTP/2 200") and fields["x-demo-server"] == [server]
        assert f"Rendered by {server}".encode() in out.stdout
    line = audit.wait(f"account={user}; protocol=soap;")[0]
    assert " INFO  [" in line and "oip=127.0.0.1;" in line


def test_forwarding_headers_over_http2_are_the_proxys_own():
    out = curl("--http2", url("/headers"), "-H", "X-Forwarded-For: 6.6.6.6",
               "-H", "X-Real-IP: 6.6.6.6", "-H", "Forwarded: for=6.6.6.6",
               "-H", "X-Forwarded-Host: evil.test", "-H", "Cookie: a=1", "-H", "Cookie: b=2")
    assert out.returncode == 0, out.stderr
    seen = {}
    for name, value in json.loads(out.stdout)["headers"]:
        seen.setdefault(name.lower(), []).append(value)
    assert seen["x-forwarded-for"] == ["127.0.0.1"] and seen["x-real-ip"] == ["127.0.0.1"]
    assert seen["x-forwarded-proto"] == ["https"] and "forwarded" not in seen
    assert "x-forwarded-host" not in seen
    assert seen["host"] == [f"{VHOST}:{HTTPS}"]          # from :authority
    assert seen["cookie"] == ["a=1; b=2"]                # one field for HTTP/1.1 (§8.2.3)


def test_nghttp_fifty_concurrent_streams_are_all_answered():
    out = subprocess.run(["nghttp", "-nv", "-m", "50", "-y",
                          f"https://{HOST}:{HTTPS}/home/user02@demo.test/inbox"],
                         capture_output=True, timeout=60)
    text = out.stdout.decode(errors="replace")
    assert out.returncode == 0, text[-2000:]
    assert text.count(":status: 200") == 50, text[-2000:]
    # Our SETTINGS: the stream limit, and no extended CONNECT (WebSockets stay HTTP/1.1).
    settings = text.split("recv SETTINGS frame", 1)[1].split("\n\n", 1)[0]
    assert "SETTINGS_MAX_CONCURRENT_STREAMS(0x03):100" in settings, settings
    assert "(0x08):1" not in settings, settings      # SETTINGS_ENABLE_CONNECT_PROTOCOL off


def test_five_megabytes_each_way_are_byte_exact(tmp_path):
    sys.path.insert(0, str(REPO))
    from demo.mailbox_web import download_pattern
    size = 5 * 1000 * 1000
    want = hashlib.sha256()
    for piece in download_pattern(size):
        want.update(piece)
    got = tmp_path / "down"
    out = curl("--http2", "-o", str(got), "-w", "%{http_version}", url(f"/download?size={size}"))
    assert out.returncode == 0 and out.stdout == b"2", out.stderr
    assert hashlib.sha256(got.read_bytes()).hexdigest() == want.hexdigest()
    blob = tmp_path / "up"
    blob.write_bytes(os.urandom(size))
    for extra in ((), ("-H", "Transfer-Encoding: chunked")):    # with and without a length
        out = curl("--http2", "--data-binary", f"@{blob}", *extra, url("/upload"))
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout) == {"bytes": size,
                                          "sha256": hashlib.sha256(blob.read_bytes()).hexdigest()}


def test_websocket_still_works_over_http1_when_alpn_picks_it():
    ctx = tls_context()
    ctx.set_alpn_protocols(["http/1.1"])          # what a browser offers for a WebSocket
    sock = ctx.wrap_socket(socket.create_connection((HOST, HTTPS), timeout=10),
                           server_hostname=VHOST)
    assert sock.selected_alpn_protocol() == "http/1.1"
    key = base64.b64encode(os.urandom(16))
    sock.sendall(b"GET /ws/echo HTTP/1.1\r\nHost: mail.demo.test\r\nUpgrade: websocket\r\n"
                 b"Connection: Upgrade\r\nSec-WebSocket-Key: " + key +
                 b"\r\nSec-WebSocket-Version: 13\r\n\r\n")
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(4096)
    assert head.startswith(b"HTTP/1.1 101")
    payload, mask = b"still HTTP/1.1", os.urandom(4)
    sock.sendall(bytes([0x81, 0x80 | len(payload)]) + mask +
                 bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))
    frame = head.partition(b"\r\n\r\n")[2]
    while len(frame) < 2 + len(payload):
        frame += sock.recv(4096)
    assert frame[0] == 0x81 and frame[2:2 + len(payload)] == payload
    sock.close()


# --------------------------------------------------------- hostile frames

class Raw:
    """An HTTP/2 client that writes whatever frames it is told (hyperframe, hpack),
    reads the server's frames and decodes its header blocks."""

    def __init__(self, port: int, *, preface: bytes = PREFACE, settings: bool = True):
        ctx = tls_context()
        ctx.set_alpn_protocols(["h2"])
        raw = socket.create_connection((HOST, port), timeout=10, source_address=(ATTACKER, 0))
        self.sock = ctx.wrap_socket(raw, server_hostname=VHOST)
        assert self.sock.selected_alpn_protocol() == "h2"
        self.encoder, self.decoder = hpack.Encoder(), hpack.Decoder()
        self.decoder.max_header_list_size = 1 << 20
        self.buf = b""
        self.closed = False
        self.got: list[Frame] = []
        self.sock.sendall(preface + (SettingsFrame(0).serialize() if settings else b""))

    def send(self, *frames: Frame) -> None:
        try:
            self.sock.sendall(b"".join(f.serialize() for f in frames))
        except OSError:
            self.closed = True              # the server closed first: its GOAWAY is read

    def headers(self, sid: int, path: str = "/health", extra=(), method: str = "GET",
                end_stream: bool = True, end_headers: bool = True) -> HeadersFrame:
        block = self.encoder.encode([(":method", method), (":scheme", "https"),
                                     (":authority", VHOST), (":path", path), *extra])
        flags = (["END_STREAM"] if end_stream else []) + (["END_HEADERS"] if end_headers
                                                          else [])
        return HeadersFrame(sid, block, flags=flags)

    def _read(self, timeout: float) -> None:
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(65536)
        except (socket.timeout, TimeoutError):
            return
        except (ConnectionError, ssl.SSLError, OSError):
            data = b""
        if not data:
            self.closed = True
            return
        self.buf += data
        while len(self.buf) >= 9:
            frame, length = Frame.parse_frame_header(memoryview(self.buf[:9]))
            if len(self.buf) < 9 + length:
                break
            frame.parse_body(memoryview(self.buf[9:9 + length]))
            self.buf = self.buf[9 + length:]
            if isinstance(frame, (HeadersFrame, ContinuationFrame)):
                frame.decoded = dict(self.decoder.decode(frame.data, raw=True))
            self.got.append(frame)

    def until(self, predicate, timeout: float = 10.0) -> Frame | None:
        """The first frame (seen or coming) that satisfies predicate, else None once the
        connection closed or the time is up."""
        deadline = time.monotonic() + timeout
        seen = 0
        while True:
            for frame in self.got[seen:]:
                if predicate(frame):
                    return frame
            seen = len(self.got)
            if self.closed or time.monotonic() > deadline:
                return None
            self._read(min(0.5, max(0.01, deadline - time.monotonic())))

    def goaway(self, timeout: float = 10.0) -> GoAwayFrame:
        frame = self.until(lambda f: isinstance(f, GoAwayFrame), timeout)
        assert frame is not None, f"no GOAWAY; got {[type(f).__name__ for f in self.got]}"
        return frame

    def wait_closed(self, timeout: float = 10.0) -> None:
        self.until(lambda f: False, timeout)
        assert self.closed, "the server kept the connection open"

    def close(self) -> None:
        self.sock.close()


def status_of(frame) -> int | None:
    if isinstance(frame, HeadersFrame):
        return int(frame.decoded[b":status"])
    return None


@pytest.fixture(scope="module")
def lone_worker(tmp_path_factory):
    """One worker process of its own (the floods hit it, and nothing else), with small
    limits: 10 streams, a 4 KiB header list, 2 s header and send timeouts."""
    worker = CustomWorker(tmp_path_factory.mktemp("h2worker"), {
        "h2_max_concurrent_streams": "10", "h2_max_header_list_size": "4096",
        "header_timeout": "2", "send_timeout": "3", "keepalive_timeout": "4"}, 32000, index=92)
    yield worker
    worker.stop()


def answers_normally(worker) -> None:
    """The worker, right after an attack, still serves a plain HTTP/2 request."""
    port = worker.ports["https"]
    out = curl("--http2", "-o", "/dev/null", "-w", "%{http_version} %{http_code}",
               url("/home/user02@demo.test/inbox", port), port=port, timeout=20)
    assert out.stdout == b"2 200", out.stderr


def rss(worker) -> int:
    return psutil.Process(worker.proc.pid).memory_info().rss


def test_a_bad_preface_gets_goaway_protocol_error(lone_worker):
    c = Raw(lone_worker.ports["https"], preface=b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" + b"x" * 40)
    assert c.goaway().error_code == PROTOCOL_ERROR
    c.wait_closed()
    c.close()
    answers_normally(lone_worker)


def test_oversized_headers_get_431_then_goaway_past_twice_the_limit(lone_worker):
    c = Raw(lone_worker.ports["https"])
    c.send(c.headers(1, extra=[("x-big", "a" * 5000)]))           # over 4096, under 8192
    reply = c.until(lambda f: isinstance(f, HeadersFrame) and f.stream_id == 1)
    assert reply is not None and status_of(reply) == 431
    c.send(c.headers(3))                                          # the connection goes on
    reply = c.until(lambda f: isinstance(f, HeadersFrame) and f.stream_id == 3)
    assert reply is not None and status_of(reply) == 200
    block = c.encoder.encode([(":method", "GET"), (":scheme", "https"), (":authority", VHOST),
                              (":path", "/"), ("x-huge", os.urandom(6000).hex())])
    c.send(HeadersFrame(5, block[:16000], flags=[]),
           ContinuationFrame(5, block[16000:], flags=["END_HEADERS"]))
    assert c.goaway().error_code == ENHANCE_YOUR_CALM
    c.wait_closed()
    c.close()
    answers_normally(lone_worker)


def test_more_streams_than_advertised_end_the_connection(lone_worker):
    c = Raw(lone_worker.ports["https"])
    settings = c.until(lambda f: isinstance(f, SettingsFrame) and "ACK" not in f.flags)
    assert settings.settings[SettingsFrame.MAX_CONCURRENT_STREAMS] == 10
    assert SettingsFrame.MAX_HEADER_LIST_SIZE in settings.settings
    assert settings.settings.get(0x8, 0) == 0            # no extended CONNECT (RFC 8441)
    # ten open uploads (no END_STREAM), then an eleventh
    c.send(*(c.headers(1 + 2 * i, "/upload", method="POST", end_stream=False)
             for i in range(11)))
    frame = c.goaway()
    # the ten (1 ... 19) were taken, the eleventh (21) never was
    assert frame.error_code == PROTOCOL_ERROR and frame.last_stream_id == 19
    assert not any(isinstance(f, RstStreamFrame) and f.stream_id < 21 for f in c.got)
    c.wait_closed()
    c.close()
    answers_normally(lone_worker)


def test_rapid_reset_flood_gets_enhance_your_calm(lone_worker):
    before = rss(lone_worker)
    c = Raw(lone_worker.ports["https"])
    sent = 0
    for batch in range(50):                          # up to 5000 streams opened and reset
        frames = []
        for i in range(100):
            sid = 1 + 2 * (batch * 100 + i)
            frames += [c.headers(sid), RstStreamFrame(sid, error_code=CANCEL)]
        c.send(*frames)
        sent += 100
        if c.closed or c.until(lambda f: isinstance(f, GoAwayFrame), 0.01):
            break
    frame = c.goaway()
    assert frame.error_code == ENHANCE_YOUR_CALM, frame
    assert sent < 5000 and frame.last_stream_id < 2 * 1000
    c.wait_closed()
    c.close()
    assert rss(lone_worker) - before < 30 * 1024 * 1024
    answers_normally(lone_worker)


def test_a_continuation_flood_without_end_headers_is_cut(lone_worker):
    c = Raw(lone_worker.ports["https"])
    c.send(c.headers(1, end_headers=False))
    for _ in range(200):                             # 200 x 1000 bytes, never END_HEADERS
        c.send(ContinuationFrame(1, b"\x00" * 1000, flags=[]))
        if c.closed:
            break
    assert c.goaway().error_code == ENHANCE_YOUR_CALM
    c.wait_closed()
    c.close()
    answers_normally(lone_worker)


def test_a_header_block_that_never_ends_is_cut_after_header_timeout(lone_worker):
    c = Raw(lone_worker.ports["https"])
    started = time.monotonic()
    c.send(c.headers(1, end_headers=False))
    frame = c.goaway(timeout=10)
    waited = time.monotonic() - started
    assert frame.error_code == ENHANCE_YOUR_CALM and 1.5 < waited < 6, waited
    c.close()
    answers_normally(lone_worker)


def test_a_window_update_overflow_is_a_flow_control_error(lone_worker):
    c = Raw(lone_worker.ports["https"])
    c.send(WindowUpdateFrame(0, window_increment=2**31 - 1))     # 65535 + that > 2^31 - 1
    assert c.goaway().error_code == FLOW_CONTROL_ERROR
    c.wait_closed()
    c.close()
    answers_normally(lone_worker)


def test_a_ping_flood_is_cut_and_its_answers_bounded(lone_worker):
    c = Raw(lone_worker.ports["https"])
    for i in range(20):
        c.send(*(PingFrame(0, opaque_data=(i * 50 + j).to_bytes(8, "big")) for j in range(50)))
        if c.closed:
            break
    assert c.goaway().error_code == ENHANCE_YOUR_CALM
    c.wait_closed()
    acks = sum(1 for f in c.got if isinstance(f, PingFrame) and "ACK" in f.flags)
    assert acks <= 2 * 10 + 100                      # the bucket's burst, not 1000
    c.close()
    answers_normally(lone_worker)


def test_a_client_that_grants_no_window_gets_one_window_then_a_reset(lone_worker):
    """Flow control is honoured: 50 MB asked, the initial 65,535 bytes sent, then
    nothing; after send_timeout (3 s) the stream is reset and the worker is unharmed."""
    before = rss(lone_worker)
    c = Raw(lone_worker.ports["https"])
    c.send(c.headers(1, f"/download?size={50 * 1000 * 1000}"))
    reset = c.until(lambda f: isinstance(f, RstStreamFrame) and f.stream_id == 1, 15)
    assert reset is not None and reset.error_code == CANCEL
    data = sum(len(f.data) for f in c.got if isinstance(f, DataFrame) and f.stream_id == 1)
    assert 0 < data <= 65535
    assert rss(lone_worker) - before < 30 * 1024 * 1024
    c.close()
    answers_normally(lone_worker)


def test_an_idle_connection_gets_goaway_after_keepalive_timeout(lone_worker):
    c = Raw(lone_worker.ports["https"])
    c.send(c.headers(1))
    assert status_of(c.until(lambda f: isinstance(f, HeadersFrame))) == 200
    started = time.monotonic()
    frame = c.goaway(timeout=15)
    assert frame.error_code == NO_ERROR and 3 < time.monotonic() - started < 10
    c.wait_closed()
    c.close()


def test_head_and_connect_over_http2(lone_worker):
    port = lone_worker.ports["https"]
    out = curl("--http2", "-sI", url("/download?size=1000", port), port=port)
    fields = head_of(out)
    assert fields[""][0].startswith("HTTP/2 200") and fields["content-length"] == ["1000"]
    assert out.stdout.endswith(b"\r\n\r\n")                     # a head, no body
    c = Raw(port)
    block = c.encoder.encode([(":method", "CONNECT"), (":authority", "mbox1.demo.test:7143")])
    c.send(HeadersFrame(1, block, flags=["END_HEADERS"]))       # a tunnel asked, body open
    reply = c.until(lambda f: isinstance(f, HeadersFrame) and f.stream_id == 1)
    assert reply is not None and status_of(reply) == 405
    # the page, END_STREAM, then RST_STREAM(NO_ERROR): the tunnel's body is not wanted
    assert c.until(lambda f: isinstance(f, RstStreamFrame) and f.stream_id == 1
                   and f.error_code == NO_ERROR) is not None
    c.send(c.headers(3))
    assert status_of(c.until(lambda f: isinstance(f, HeadersFrame) and f.stream_id == 3)) == 200
    c.close()


def test_no_session_outlives_its_connection(lone_worker):
    """After every attack above, the lone worker holds no session (no stream, task or
    upstream left behind by a reset, a GOAWAY or a timeout)."""
    from tests.stack.conftest import read_stats
    wait_for(lambda: not read_stats(str(lone_worker.stats_path))["sessions"], 15,
             what="the lone worker idle")
    answers_normally(lone_worker)
