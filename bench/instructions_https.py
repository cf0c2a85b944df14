"""Instructions per HTTPS keep-alive GET /health in one carbotui worker, by callgrind.

    flock /tmp/carbotui-callgrind.lock .venv/bin/python bench/instructions_https.py [N [KEEPDIR]]

As bench/instructions.py (the same quiet worker, bench config and memcached; the demo
stack's web1/web2 upstream): 4 keep-alive TLS connections, one request at a time each,
50 requests each to warm up, then N each (default 250) counted.
"""
import socket, ssl, sys, time, threading
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import instructions as ins
from run import REPO

BENCH = ins.BENCH
PORT = 12443
REQ = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1:12443\r\nUser-Agent: bench\r\n\r\n"

def conn():
    ctx = ssl.create_default_context(cafile=str(REPO / "var/certs/ca.crt"))
    ctx.check_hostname = False
    s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", PORT), timeout=60))
    return s

def one(s):
    s.sendall(REQ)
    buf = b""
    while b"\r\n\r\n" not in buf:
        buf += s.recv(65536)
    head, _, body = buf.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head[:100]
    n = int([l.split(b":")[1] for l in head.split(b"\r\n") if l.lower().startswith(b"content-length")][0])
    while len(body) < n:
        body += s.recv(65536)

def run(conns, n):
    errs = []
    def w(s):
        try:
            for _ in range(n): one(s)
        except Exception as e: errs.append(e)
    ts = [threading.Thread(target=w, args=(s,)) for s in conns]
    [t.start() for t in ts]; [t.join() for t in ts]
    if errs: raise errs[0]

def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 250
    conns = []

    def warm():
        deadline = time.monotonic() + 120     # the cluster settings are applied after listen
        while True:
            s = conn()
            try:
                one(s); s.close(); break
            except AssertionError:
                s.close()
                if time.monotonic() > deadline: raise
                time.sleep(1)
        conns.extend(conn() for _ in range(4))
        run(conns, 50)

    total, _ = ins.counted([BENCH / "quiet_worker.py", "--config", None, "--worker", "0"],
                           PORT, warm, lambda: run(conns, n),
                           Path(sys.argv[2]) / "callgrind.out.https" if len(sys.argv) > 2 else None)
    for s in conns: s.close()
    print(f"https keep-alive: {total / (4 * n):,.0f} instructions per request ({4 * n} requests, callgrind)")

main()
