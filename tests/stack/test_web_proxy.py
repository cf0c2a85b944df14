"""The web front against the real demo web apps, with curl and openssl as clients."""
from __future__ import annotations

import base64
import hashlib
import os
import socket
import subprocess
import time

import psutil
import pytest

from tests.stack.conftest import (CA, HOST, PASSWORD, REPO, WEB_PORTS, process_pid,
                                        supervisorctl, tls_context, wait_for)

pytestmark = pytest.mark.usefixtures("proxy_up")

VHOST = "mail.demo.test"
HTTPS = WEB_PORTS["https"]


def curl(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    # HTTP/1.1 behaviour is what these tests check (curl would pick h2 by ALPN)
    cmd = ["curl", "-sS", "--http1.1", "--max-time", str(int(timeout)), "--cacert", str(CA),
           "--resolve", f"{VHOST}:{HTTPS}:{HOST}", "--resolve", f"{VHOST}:{WEB_PORTS['http']}:{HOST}",
           *args]
    return subprocess.run(cmd, capture_output=True, timeout=timeout + 10)


def served_by(headers: bytes) -> str:
    for line in headers.splitlines():
        if line.lower().startswith(b"x-demo-server:"):
            return line.split(b":", 1)[1].strip().decode()
    return ""


def get(path: str, *extra: str) -> tuple[bytes, bytes]:
    out = curl("-i", *extra, f"https://{VHOST}:{HTTPS}{path}")
    assert out.returncode == 0, out.stderr
    head, _, body = out.stdout.partition(b"\r\n\r\n")
    return head, body


def cert_subject(port: int, servername: str | None) -> str:
    args = ["openssl", "s_client", "-connect", f"{HOST}:{port}", "-CAfile", str(CA)]
    if servername:
        args += ["-servername", servername]
    out = subprocess.run(args, input=b"", capture_output=True, timeout=20)
    for line in out.stdout.decode(errors="replace").splitlines():
        if line.startswith("subject="):
            return line
    raise AssertionError(out.stdout.decode(errors="replace")[-500:])


def test_sni_picks_the_virtual_host_certificate_everywhere():
    out = curl("-v", "-o", "/dev/null", f"https://{VHOST}:{HTTPS}/")
    assert out.returncode == 0, out.stderr
    assert b"subject: CN=mail.demo.test" in out.stderr
    out = curl("-v", "-o", "/dev/null", f"https://{HOST}:{HTTPS}/")
    assert out.returncode == 0, out.stderr
    assert b"subject: CN=mail.demo.test" not in out.stderr     # the default certificate
    for port in (10993, 10995, HTTPS):
        assert "mail.demo.test" in cert_subject(port, VHOST)
        assert "mail.demo.test" not in cert_subject(port, "other.demo.test")


@pytest.mark.parametrize("user, server", [("user01@demo.test", "mbox1"),
                                          ("user02@demo.test", "mbox2")])
def test_login_then_every_request_reaches_the_users_server(user, server, tmp_path, audit):
    jar = str(tmp_path / "cookies")
    out = curl("-i", "-c", jar, "-d", f"username={user}&password={PASSWORD}",
               f"https://{VHOST}:{HTTPS}/login")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(b"HTTP/1.1 302") and served_by(out.stdout) == server
    assert b"ZM_AUTH_TOKEN=" in out.stdout
    for _ in range(6):
        head, body = get("/mail", "-b", jar)
        assert head.startswith(b"HTTP/1.1 200") and served_by(head) == server
        assert f"Rendered by {server}".encode() in body
    line = audit.wait(f"account={user}; protocol=soap;")[0]
    assert " INFO  [" in line and "oip=127.0.0.1;" in line


def test_failed_web_login_is_audited(audit):
    out = curl("-i", "-d", "username=user03@demo.test&password=nope",
               f"https://{VHOST}:{HTTPS}/login")
    assert out.stdout.startswith(b"HTTP/1.1 401")
    line = audit.wait("account=user03@demo.test; protocol=soap;")[0]
    assert "invalid password" in line and "nope" not in line


def test_rest_paths_route_by_user():
    head, body = get("/home/user04@demo.test/inbox")
    assert served_by(head) == "mbox2"
    head, _ = get("/service/home/~user05@demo.test/inbox")
    assert served_by(head) == "mbox1"


def test_anonymous_requests_reach_both_servers_and_no_backend_leaks():
    seen = set()
    for _ in range(12):
        head, body = get("/health")
        assert head.startswith(b"HTTP/1.1 200")
        assert b"\nServer:" not in head and b"127.0.0.2" not in head
        seen.add(served_by(head))
    assert seen == {"mbox1", "mbox2"}


def test_plain_http_redirects_with_path_and_query():
    out = curl("-i", f"http://{VHOST}:{WEB_PORTS['http']}/x?y=1")
    assert out.stdout.startswith(b"HTTP/1.1 301")
    assert f"Location: https://{VHOST}:{HTTPS}/x?y=1".encode() in out.stdout


def test_a_stopped_backend_is_avoided_and_comes_back(tmp_path):
    jar = str(tmp_path / "cookies")
    curl("-c", jar, "-d", f"username=user02@demo.test&password={PASSWORD}",
         f"https://{VHOST}:{HTTPS}/login")
    supervisorctl("stop", "web1")
    try:
        # Within seconds every anonymous request succeeds on the remaining server.
        def all_ok():
            heads = [get("/health")[0] for _ in range(6)]
            return all(h.startswith(b"HTTP/1.1 200") and served_by(h) == "mbox2" for h in heads)
        wait_for(all_ok, 15, interval=0.2, what="requests to avoid the stopped web1")
        head, body = get("/mail", "-b", jar)       # user02 lives on mbox2: unaffected
        assert served_by(head) == "mbox2"
        head, body = get("/home/user01@demo.test/inbox")   # user01's server is down
        assert head.startswith(b"HTTP/1.1 503")
        assert b"mbox1" not in head + body and b"127.0.0.1" not in body
    finally:
        supervisorctl("start", "web1")
    wait_for(lambda: "mbox1" in {served_by(get("/health")[0]) for _ in range(6)}, 15,
             interval=0.2, what="web1 back in rotation")


def test_websocket_round_trip():
    raw = socket.create_connection((HOST, HTTPS), timeout=10)
    sock = tls_context().wrap_socket(raw, server_hostname=VHOST)
    key = base64.b64encode(os.urandom(16))
    sock.sendall(b"GET /ws/echo HTTP/1.1\r\nHost: mail.demo.test\r\nUpgrade: websocket\r\n"
                 b"Connection: Upgrade\r\nSec-WebSocket-Key: " + key +
                 b"\r\nSec-WebSocket-Version: 13\r\n\r\n")
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(4096)
    assert head.startswith(b"HTTP/1.1 101")
    accept = base64.b64encode(hashlib.sha1(key + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11")
                              .digest())
    assert accept in head
    payload, mask = b"hello through the proxy", os.urandom(4)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    sock.sendall(bytes([0x81, 0x80 | len(payload)]) + mask + masked)
    frame = head.partition(b"\r\n\r\n")[2]
    while len(frame) < 2 + len(payload):
        frame += sock.recv(4096)
    assert frame[0] == 0x81 and frame[2:2 + len(payload)] == payload
    sock.close()


def worker_rss() -> int:
    names = [l.split()[0] for l in supervisorctl("status").splitlines() if l.startswith("proxy:")]
    return sum(psutil.Process(process_pid(n)).memory_info().rss for n in names)


def test_100mb_upload_and_download_are_byte_exact_with_bounded_memory(tmp_path):
    size = 100 * 1024 * 1024
    blob = tmp_path / "blob"
    with open(blob, "wb") as f:
        chunk = hashlib.sha256(b"x").digest() * 32768     # 1 MiB, not all zeros
        for _ in range(size // len(chunk)):
            f.write(chunk)
    want = hashlib.sha256(blob.read_bytes()).hexdigest()
    before = worker_rss()
    out = curl("-T", str(blob), "-H", "Expect: 100-continue",
               f"https://{VHOST}:{HTTPS}/upload", timeout=120)
    assert out.returncode == 0, out.stderr
    assert want in out.stdout.decode()
    down = tmp_path / "down"
    out = curl("-o", str(down), f"https://{VHOST}:{HTTPS}/download?size={size}", timeout=120)
    assert out.returncode == 0, out.stderr
    assert down.stat().st_size == size
    from demo.mailbox_web import download_pattern
    digest = hashlib.sha256()
    for piece in download_pattern(size):
        digest.update(piece)
    assert hashlib.sha256(down.read_bytes()).hexdigest() == digest.hexdigest()
    assert worker_rss() - before < 64 * 1024 * 1024


def raw_https(request: bytes) -> bytes:
    raw = socket.create_connection((HOST, HTTPS), timeout=10)
    sock = tls_context().wrap_socket(raw, server_hostname=VHOST)
    sock.sendall(request)
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except (ConnectionError, TimeoutError):
        pass
    sock.close()
    return data


@pytest.mark.parametrize("request_bytes, status", [
    (b"POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n"
     b"\r\n0\r\n\r\n", b"400"),
    (b"POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello",
     b"400"),
    (b"POST /upload HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhi\r\n0\r\n\r\n",
     b"400"),
    (b"GET / HTTP/1.1\r\nHost: a\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n", b"431"),
    (b"GET / HTTP/1.1\r\nHost: a\r\n\tfolded\r\n\r\n", b"400"),
    (b"GET / HTTP/2.0\r\nHost: a\r\n\r\n", b"505"),
])
def test_smuggling_and_oversize_are_refused(request_bytes, status):
    reply = raw_https(request_bytes)
    assert reply.startswith(b"HTTP/1.1 " + status), reply[:200]


def test_slow_client_gets_408_and_others_are_served(custom_worker):
    w = custom_worker(port_base=24000)
    cfg_text = (REPO / "carbotui.toml").read_text()
    assert "header_timeout" in cfg_text
    sock = socket.create_connection((HOST, w.ports["http"]), timeout=30)
    sock.sendall(b"GET / HTTP/1.1\r\nHost: a\r\n")     # and never the end of the head
    started = time.monotonic()
    reply = sock.recv(1000)
    assert reply.startswith(b"HTTP/1.1 408"), reply
    assert time.monotonic() - started < 20
    sock.close()


def test_chunked_upload_and_keep_alive_reuse(tmp_path):
    blob = tmp_path / "blob"
    blob.write_bytes(os.urandom(5 * 1024 * 1024))
    want = hashlib.sha256(blob.read_bytes()).hexdigest()
    # Chunked in (curl reads stdin with Transfer-Encoding: chunked), then two more
    # requests on the same client connection.
    common = ["--http1.1", "--cacert", str(CA), "--resolve", f"{VHOST}:{HTTPS}:{HOST}", "-sS",
              "-v"]
    out = subprocess.run(["curl", *common, "-H", "Transfer-Encoding: chunked",
                          "--data-binary", f"@{blob}", f"https://{VHOST}:{HTTPS}/upload",
                          "--next", *common, f"https://{VHOST}:{HTTPS}/health",
                          f"https://{VHOST}:{HTTPS}/health"], capture_output=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert want in out.stdout.decode()
    assert out.stderr.count(b"Re-using existing connection") >= 2
    assert b"Connection died" not in out.stderr and b"Closing connection 0" not in out.stderr


def test_keep_alive_serves_many_requests_on_one_connection():
    raw = socket.create_connection((HOST, HTTPS), timeout=10)
    sock = tls_context().wrap_socket(raw, server_hostname=VHOST)
    f = sock.makefile("rb")
    for i in range(5):
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: mail.demo.test\r\n\r\n")
        status = f.readline()
        assert status.startswith(b"HTTP/1.1 200"), (i, status)
        length = 0
        while (line := f.readline()) != b"\r\n":
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":")[1])
            assert not line.lower().startswith(b"connection: close"), line
        f.read(length)
    sock.sendall(b"GET /health HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    head = f.read()
    assert b"Connection: close" in head and head.startswith(b"HTTP/1.1 200")
    sock.close()
