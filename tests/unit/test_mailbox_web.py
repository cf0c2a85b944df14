"""demo.mailbox_web, served in-process on an ephemeral port and driven with
http.client and raw sockets."""
from __future__ import annotations

import asyncio
import base64
import hashlib
import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
from pathlib import Path

import pytest

from carbotui.core.authtoken import decode_token, encode_token
from demo.mailbox_web import DemoWeb, download_pattern, make_ssha512, ws_frame, ws_unmask

USER1_ID = "11111111-2222-4333-8444-555555555555"
USER2_ID = "aaaaaaaa-bbbb-4ccc-8ddd-eeeeeeeeeeee"
REPO = Path(__file__).resolve().parents[2]


def write_accounts(path: Path) -> Path:
    """An accounts file shaped like the demo generator's."""
    path.write_text(json.dumps({
        "server": "mbox1.demo.test",
        "short": "mbox1",
        "accounts": {
            "user01@demo.test": {"zimbraId": USER1_ID, "password": make_ssha512("demo-pass")},
            "user02@demo.test": {"zimbraId": USER2_ID, "password": make_ssha512("other-pass")},
        },
    }))
    return path


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    accounts = write_accounts(tmp_path_factory.mktemp("mbox1") / "accounts.json")
    app = DemoWeb(accounts)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    (host, port), = asyncio.run_coroutine_threadsafe(
        app.start([("127.0.0.1", 0)]), loop).result(10)
    yield host, port
    asyncio.run_coroutine_threadsafe(app.close(), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)
    loop.close()


def request(server, method, path, body=None, headers=None):
    conn = http.client.HTTPConnection(*server, timeout=10)
    conn.request(method, path, body=body, headers=headers or {})
    response = conn.getresponse()
    data = response.read()
    conn.close()
    return response, data


def login_cookie(server, username="user01@demo.test", password="demo-pass") -> str:
    response, _ = request(server, "POST", "/login",
                          urllib.parse.urlencode({"username": username, "password": password}),
                          {"Content-Type": "application/x-www-form-urlencoded"})
    assert response.status == 302
    return response.getheader("Set-Cookie").split(";")[0]


def test_login_form(server):
    response, body = request(server, "GET", "/")
    assert response.status == 200
    assert response.getheader("X-Demo-Server") == "mbox1"
    assert response.getheader("Server") == "demo-mailbox"
    assert b'action="/login"' in body and b'name="username"' in body and b'name="password"' in body


def test_login_success_sets_a_decodable_cookie(server):
    before = time.time() * 1000
    response, _ = request(server, "POST", "/login", "username=User01%40demo.test&password=demo-pass",
                          {"Content-Type": "application/x-www-form-urlencoded"})
    assert response.status == 302 and response.getheader("Location") == "/mail"
    set_cookie = response.getheader("Set-Cookie")
    m = re.fullmatch(r"ZM_AUTH_TOKEN=(0_[0-9a-f]+_[0-9a-f]+); Path=/; HttpOnly", set_cookie)
    assert m, set_cookie
    token = m.group(1)
    data = bytes.fromhex(token.split("_", 2)[2])
    assert re.fullmatch(rb"id=36:" + USER1_ID.encode() + rb";exp=13:[0-9]{13};type=6:zimbra;", data)
    fields = decode_token(token)
    assert fields["id"] == USER1_ID
    lifetime = int(fields["exp"]) - before
    assert 47 * 3600e3 < lifetime < 49 * 3600e3


@pytest.mark.parametrize("form", [
    "username=user01%40demo.test&password=wrong",
    "username=user01%40demo.test&password=other-pass",       # user02's password
    "username=nobody%40demo.test&password=demo-pass",
    "username=user01%40demo.test",
    "",
])
def test_login_failure(server, form):
    response, body = request(server, "POST", "/login", form,
                             {"Content-Type": "application/x-www-form-urlencoded"})
    assert response.status == 401
    assert response.getheader("Set-Cookie") is None
    assert b"incorrect" in body and b'action="/login"' in body


def test_mail_needs_a_valid_cookie(server):
    cookie = login_cookie(server)
    response, body = request(server, "GET", "/mail", headers={"Cookie": f"a=b; {cookie}; c=d"})
    assert response.status == 200
    assert b"user01@demo.test" in body and b"mbox1" in body
    assert response.getheader("X-Demo-Server") == "mbox1"

    for bad in [None, "ZM_AUTH_TOKEN=garbage", "ZM_AUTH_TOKEN=0_ab_zz",
                "ZM_AUTH_TOKEN=" + encode_token(USER1_ID, int(time.time() * 1000) - 1),
                "ZM_AUTH_TOKEN=" + encode_token("99999999-2222-4333-8444-555555555555",
                                                int(time.time() * 1000) + 60000)]:
        response, _ = request(server, "GET", "/mail", headers={"Cookie": bad} if bad else {})
        assert response.status == 302 and response.getheader("Location") == "/", bad


def test_mail_for_the_second_user(server):
    cookie = login_cookie(server, "user02@demo.test", "other-pass")
    _, body = request(server, "GET", "/mail", headers={"Cookie": cookie})
    assert b"user02@demo.test" in body


def soap(server, body):
    response, data = request(server, "POST", "/service/soap/AuthRequest", body,
                             {"Content-Type": "application/json"})
    return response, json.loads(data)


def test_soap_auth(server):
    response, doc = soap(server, json.dumps({"Body": {"AuthRequest": {
        "_jsns": "urn:zimbraAccount",
        "account": {"by": "name", "_content": "user01@demo.test"},
        "password": {"_content": "demo-pass"}}}}))
    assert response.status == 200
    token = doc["Body"]["AuthResponse"]["authToken"][0]["_content"]
    assert decode_token(token)["id"] == USER1_ID
    assert response.getheader("Set-Cookie").startswith(f"ZM_AUTH_TOKEN={token};")


def test_soap_auth_failure_is_a_zimbra_fault(server):
    response, doc = soap(server, json.dumps({"Body": {"AuthRequest": {
        "account": {"by": "name", "_content": "user01@demo.test"},
        "password": {"_content": "nope"}}}}))
    assert response.status == 401
    assert doc["Body"]["Fault"]["Detail"]["Error"]["Code"] == "account.AUTH_FAILED"
    assert response.getheader("Set-Cookie") is None


@pytest.mark.parametrize("body", ["not json", "{}", '{"Body": {"AuthRequest": {}}}',
                                  '{"Body": {"AuthRequest": {"account": 5, "password": "x"}}}'])
def test_soap_malformed(server, body):
    response, doc = soap(server, body)
    assert response.status == 400
    assert doc["Body"]["Fault"]["Detail"]["Error"]["Code"] == "service.PARSE_ERROR"


@pytest.mark.parametrize("path, status, who", [
    ("/home/user01@demo.test/inbox", 200, b"user01@demo.test"),
    ("/home/~user01@demo.test/Inbox?fmt=json", 200, b"user01@demo.test"),
    ("/service/home/~user02@demo.test/Calendar", 200, b"user02@demo.test"),
    ("/service/home/user02/Contacts", 200, b"user02@demo.test"),
    ("/home/user01%40demo.test/", 200, b"user01@demo.test"),
    ("/home/elsewhere@demo.test/inbox", 404, b"elsewhere@demo.test"),
])
def test_rest_pages_name_server_and_user(server, path, status, who):
    response, body = request(server, "GET", path)
    assert response.status == status
    assert who in body and b"mbox1" in body
    assert response.getheader("X-Demo-Server") == "mbox1"


def test_rest_tilde_alone_uses_the_session(server):
    cookie = login_cookie(server, "user02@demo.test", "other-pass")
    response, body = request(server, "GET", "/service/home/~/inbox", headers={"Cookie": cookie})
    assert response.status == 200 and b"user02@demo.test" in body


def test_health_and_unknown_paths(server):
    response, body = request(server, "GET", "/health")
    assert (response.status, body) == (200, b"ok")
    response, body = request(server, "GET", "/nope")
    assert response.status == 404 and response.getheader("X-Demo-Server") == "mbox1"
    response, _ = request(server, "DELETE", "/health")
    assert response.status == 405


def expected_sha256(size: int) -> str:
    digest = hashlib.sha256()
    for piece in download_pattern(size):
        digest.update(piece)
    return digest.hexdigest()


def test_headers_echoes_the_request_as_it_arrived(server):
    response, body = request(server, "POST", "/headers?x=1", b"abc",
                             {"X-Forwarded-For": "6.6.6.6", "X-Test": "v"})
    assert response.status == 200
    doc = json.loads(body)
    assert doc["method"] == "POST" and doc["target"] == "/headers?x=1"
    assert ["X-Forwarded-For", "6.6.6.6"] in doc["headers"] and ["X-Test", "v"] in doc["headers"]
    assert doc["body_bytes"] == 3


@pytest.mark.parametrize("size", [0, 1, 251, 3 * 1024 * 1024 + 7])
def test_download_is_byte_exact(server, size):
    response, body = request(server, "GET", f"/download?size={size}")
    assert response.status == 200
    assert response.getheader("Content-Length") == str(size)
    assert len(body) == size
    assert hashlib.sha256(body).hexdigest() == expected_sha256(size)
    assert body[:3] == bytes([0, 1, 2])[:size] and (size < 252 or body[251] == 0)


def test_download_rejects_bad_sizes(server):
    for query in ["size=-1", "size=abc", "size=1&size=2", "size=" + "9" * 20]:
        response, _ = request(server, "GET", f"/download?{query}")
        assert response.status == 400, query


def test_head_download_has_length_but_no_body(server):
    conn = http.client.HTTPConnection(*server, timeout=10)
    conn.request("HEAD", "/download?size=1000")
    response = conn.getresponse()
    assert response.getheader("Content-Length") == "1000" and response.read() == b""
    conn.request("GET", "/health")                 # and the connection is still in sync
    assert conn.getresponse().read() == b"ok"
    conn.close()


def test_upload_with_content_length(server):
    data = os.urandom(3 * 1024 * 1024)
    response, body = request(server, "POST", "/upload", data,
                             {"Content-Type": "application/octet-stream"})
    assert response.status == 200
    assert json.loads(body) == {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def test_upload_chunked(server):
    pieces = [os.urandom(n) for n in (1, 65536, 100000, 7, 1024 * 1024)]
    conn = http.client.HTTPConnection(*server, timeout=10)
    conn.request("POST", "/upload", body=iter(pieces), encode_chunked=True)
    response = conn.getresponse()
    whole = b"".join(pieces)
    assert json.loads(response.read()) == {"bytes": len(whole),
                                           "sha256": hashlib.sha256(whole).hexdigest()}
    conn.close()


def read_response(sock) -> tuple[bytes, bytes]:
    """Head and Content-Length body of one response from a raw socket."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    m = re.search(rb"(?i)\r\ncontent-length: *(\d+)", head)
    length = int(m.group(1)) if m else 0
    while len(body) < length:
        body += sock.recv(65536)
    return head, body


def test_expect_100_continue(server):
    data = os.urandom(200000)
    with socket.create_connection(server, timeout=10) as sock:
        sock.sendall(b"POST /upload HTTP/1.1\r\nHost: mbox1\r\nExpect: 100-continue\r\n"
                     b"Content-Length: %d\r\n\r\n" % len(data))
        interim = sock.recv(100)
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(data)
        head, body = read_response(sock)
        assert head.startswith(b"HTTP/1.1 200 ")
        assert json.loads(body)["sha256"] == hashlib.sha256(data).hexdigest()


def test_expect_100_continue_refused_closes(server):
    # /health does not read bodies: no 100 Continue, and the connection ends
    # because the client may or may not send the body next.
    with socket.create_connection(server, timeout=10) as sock:
        sock.sendall(b"POST /health HTTP/1.1\r\nHost: mbox1\r\nExpect: 100-continue\r\n"
                     b"Content-Length: 5\r\n\r\n")
        head, _ = read_response(sock)
        assert head.startswith(b"HTTP/1.1 405 ") and b"Connection: close" in head
        assert sock.recv(100) == b""


def test_pipelined_requests_on_one_connection(server):
    with socket.create_connection(server, timeout=10) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: a\r\n\r\n"
                     b"POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc"
                     b"GET /health HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    assert data.count(b"HTTP/1.1 200 OK") == 3
    assert hashlib.sha256(b"abc").hexdigest().encode() in data
    assert data.rstrip().endswith(b"ok")


@pytest.mark.parametrize("raw, status", [
    (b"POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n"
     b"Transfer-Encoding: chunked\r\n\r\n", 400),
    (b"GET / HTTP/2.0\r\nHost: a\r\n\r\n", 505),
    (b"GET /" + b"a" * 10000 + b" HTTP/1.1\r\n\r\n", 414),
])
def test_bad_requests_get_an_error_and_close(server, raw, status):
    with socket.create_connection(server, timeout=10) as sock:
        sock.sendall(raw)
        head, _ = read_response(sock)
        assert head.startswith(b"HTTP/1.1 %d " % status)
        assert b"Connection: close" in head and b"X-Demo-Server: mbox1" in head


# ----------------------------------------------------------------- WebSocket

def ws_connect(server):
    sock = socket.create_connection(server, timeout=10)
    key = base64.b64encode(os.urandom(16))
    sock.sendall(b"GET /ws/echo HTTP/1.1\r\nHost: mbox1\r\nUpgrade: websocket\r\n"
                 b"Connection: Upgrade\r\nSec-WebSocket-Key: " + key +
                 b"\r\nSec-WebSocket-Version: 13\r\n\r\n")
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(1)
    accept = base64.b64encode(hashlib.sha1(key + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest())
    assert head.startswith(b"HTTP/1.1 101 ")
    assert b"Sec-WebSocket-Accept: " + accept + b"\r\n" in head
    assert b"X-Demo-Server: mbox1" in head
    return sock


def recv_exact(sock, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        assert chunk
        data += chunk
    return data


def ws_read(sock) -> tuple[bool, int, bytes]:
    first, second = recv_exact(sock, 2)
    assert not second & 0x80                       # servers do not mask
    length = second & 0x7F
    if length == 126:
        length = int.from_bytes(recv_exact(sock, 2), "big")
    elif length == 127:
        length = int.from_bytes(recv_exact(sock, 8), "big")
    return bool(first & 0x80), first & 0x0F, recv_exact(sock, length)


def test_websocket_echo_round_trip(server):
    with ws_connect(server) as sock:
        mask = os.urandom(4)
        sock.sendall(ws_frame(0x1, "héllo".encode(), mask=mask))
        assert ws_read(sock) == (True, 0x1, "héllo".encode())
        big = os.urandom(70000)                     # 64-bit length form
        sock.sendall(ws_frame(0x2, big, mask=os.urandom(4)))
        assert ws_read(sock) == (True, 0x2, big)
        mid = os.urandom(300)                       # 16-bit length form
        sock.sendall(ws_frame(0x2, mid, mask=os.urandom(4)))
        assert ws_read(sock) == (True, 0x2, mid)
        sock.sendall(ws_frame(0x9, b"ping!", mask=mask))
        assert ws_read(sock) == (True, 0xA, b"ping!")
        # fragments come back as fragments, and a ping may sit between them
        sock.sendall(ws_frame(0x1, b"frag", fin=False, mask=mask)
                     + ws_frame(0x9, b"", mask=mask)
                     + ws_frame(0x0, b"ment", mask=mask))
        assert ws_read(sock) == (False, 0x1, b"frag")
        assert ws_read(sock) == (True, 0xA, b"")
        assert ws_read(sock) == (True, 0x0, b"ment")
        sock.sendall(ws_frame(0x8, (1000).to_bytes(2, "big") + b"bye", mask=mask))
        assert ws_read(sock) == (True, 0x8, (1000).to_bytes(2, "big"))
        assert sock.recv(10) == b""


def test_websocket_frames_in_the_upgrade_packet(server):
    sock = socket.create_connection(server, timeout=10)
    key = base64.b64encode(os.urandom(16))
    sock.sendall(b"GET /ws/echo HTTP/1.1\r\nHost: mbox1\r\nUpgrade: websocket\r\n"
                 b"Connection: Upgrade\r\nSec-WebSocket-Key: " + key +
                 b"\r\nSec-WebSocket-Version: 13\r\n\r\n" + ws_frame(0x1, b"early", mask=b"abcd"))
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(1)
    assert ws_read(sock) == (True, 0x1, b"early")
    sock.close()


def test_websocket_unmasked_client_frame_is_a_protocol_error(server):
    with ws_connect(server) as sock:
        sock.sendall(ws_frame(0x1, b"no mask"))
        assert ws_read(sock) == (True, 0x8, (1002).to_bytes(2, "big"))
        assert sock.recv(10) == b""


def test_websocket_needs_an_upgrade(server):
    response, _ = request(server, "GET", "/ws/echo")
    assert response.status == 426
    response, _ = request(server, "GET", "/ws/echo", headers={
        "Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Key": "x",
        "Sec-WebSocket-Version": "13"})
    assert response.status == 400


def test_unmask_is_an_involution():
    payload, mask = os.urandom(1001), b"\x01\x02\x03\x04"
    assert ws_unmask(ws_unmask(payload, mask), mask) == payload
    assert ws_unmask(b"\x00" * 5, mask) == b"\x01\x02\x03\x04\x01"


# ------------------------------------------------------------------------ CLI

def test_cli_serves_a_200_mb_download_in_bounded_memory(tmp_path):
    accounts = write_accounts(tmp_path / "accounts.json")
    proc = subprocess.Popen(
        [sys.executable, "-m", "demo.mailbox_web", "--accounts", str(accounts),
         "--listen", "127.0.0.1:0", "--listen", "127.0.0.1:0"],
        cwd=REPO, stderr=subprocess.PIPE, text=True)
    try:
        ports = []
        while len(ports) < 2:
            line = proc.stderr.readline()
            assert line, "demo.mailbox_web exited before listening"
            m = re.search(r"listening on 127\.0\.0\.1:(\d+)", line)
            if m:
                ports.append(int(m.group(1)))
        size = 200 * 1024 * 1024
        conn = http.client.HTTPConnection("127.0.0.1", ports[1], timeout=30)
        conn.request("GET", f"/download?size={size}")
        response = conn.getresponse()
        digest, received = hashlib.sha256(), 0
        while piece := response.read(1024 * 1024):
            digest.update(piece)
            received += len(piece)
        assert received == size
        assert digest.hexdigest() == expected_sha256(size)
        peak_kib = int(re.search(r"VmHWM:\s+(\d+)", Path(f"/proc/{proc.pid}/status").read_text())
                       .group(1))
        assert peak_kib < 100 * 1024, f"server peaked at {peak_kib} KiB"
        response, _ = request(("127.0.0.1", ports[0]), "GET", "/health")
        assert response.getheader("X-Demo-Server") == "mbox1"
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
        proc.stderr.close()
