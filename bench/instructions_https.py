"""Instructions per HTTPS keep-alive GET /health in one carbotui worker, by callgrind.

    flock /tmp/carbotui-callgrind.lock .venv/bin/python bench/instructions_https.py \
        [N [KEEPDIR]] [--download BYTES]

As bench/instructions.py (the same quiet worker, bench config and memcached; the demo
stack's web1/web2 upstream): 4 keep-alive TLS connections, one request at a time each,
50 requests each to warm up, then N each (default 250) counted. --download BYTES asks
for GET /download?size=BYTES instead (make bench's 1 MB load: 1048576; 5 to warm up,
N = 10 is enough); the dump is then callgrind.out.download.
"""
import argparse, socket, ssl, sys, time, threading
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import instructions as ins
from run import REPO

BENCH = ins.BENCH
PORT = 12443
_p = argparse.ArgumentParser()
_p.add_argument("n", nargs="?", type=int, default=250, help="requests per connection")
_p.add_argument("keep", nargs="?", type=Path, help="copy the counted dump into this folder")
_p.add_argument("--download", type=int, metavar="BYTES")
ARGS = _p.parse_args()
DOWNLOAD = ARGS.download
PATH = b"/download?size=%d" % DOWNLOAD if DOWNLOAD else b"/health"
REQ = b"GET %s HTTP/1.1\r\nHost: 127.0.0.1:12443\r\nUser-Agent: bench\r\n\r\n" % PATH

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
    body = bytearray(body)
    while len(body) < n:
        body += s.recv(1 << 20)

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
    n = ARGS.n
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
        run(conns, 5 if DOWNLOAD else 50)

    total, _ = ins.counted([BENCH / "quiet_worker.py", "--config", None, "--worker", "0"],
                           PORT, warm, lambda: run(conns, n),
                           ARGS.keep / f"callgrind.out.{'download' if DOWNLOAD else 'https'}"
                           if ARGS.keep else None)
    for s in conns: s.close()
    what = f"GET of {DOWNLOAD:,} bytes" if DOWNLOAD else "https keep-alive"
    print(f"{what}: {total / (4 * n):,.0f} instructions per request ({4 * n} requests, callgrind)")

main()
