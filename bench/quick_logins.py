"""Quick IMAP login rate through the proxy and directly to Dovecot.

    .venv/bin/python bench/quick_logins.py [--seconds 5] [--concurrency 8]

Each session: connect, greeting, (TLS), LOGIN, LOGOUT. Prints sessions/s,
p50/p99 latency and the proxy workers' CPU per session (utime+stime from
/proc, summed over the supervisord-managed workers). Loopback only, bounded
in time. The full side-by-side with nginx is `make bench` (bench/).
"""
from __future__ import annotations

import argparse
import asyncio
import os
import ssl
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CA = REPO / "var/certs/ca.crt"


def proxy_pids() -> list[int]:
    out = subprocess.run([str(REPO / ".venv/bin/supervisorctl"), "-c", str(REPO / "supervisord.conf"),
                          "status"], capture_output=True, text=True).stdout
    return [int(l.split("pid ")[1].split(",")[0]) for l in out.splitlines()
            if l.startswith("proxy:") and "RUNNING" in l]


def cpu_seconds(pids: list[int]) -> float:
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total / tick


async def session(host: str, port: int, tls: ssl.SSLContext | None, user: str) -> float:
    started = time.perf_counter()
    reader, writer = await asyncio.open_connection(host, port, ssl=tls,
                                                   server_hostname=host if tls else None)
    await reader.readline()
    writer.write(f'a LOGIN {user} demo-pass\r\nb LOGOUT\r\n'.encode())
    while True:
        line = await reader.readline()
        if not line or line.startswith(b"b "):
            break
        if line.startswith(b"a ") and not line.startswith(b"a OK"):
            raise RuntimeError(f"login failed: {line!r}")
    writer.close()
    return time.perf_counter() - started


async def run(host, port, tls, seconds, concurrency, users):
    latencies: list[float] = []
    deadline = time.monotonic() + seconds

    async def loop(i):
        n = 0
        while time.monotonic() < deadline:
            latencies.append(await session(host, port, tls, users[(i + n) % len(users)]))
            n += 1
    started = time.monotonic()
    await asyncio.gather(*(loop(i) for i in range(concurrency)))
    return latencies, time.monotonic() - started


def measure(name, host, port, tls, args, users, pids=None):
    before = cpu_seconds(pids) if pids else 0.0
    lat, elapsed = asyncio.run(run(host, port, tls, args.seconds, args.concurrency, users))
    cpu = cpu_seconds(pids) - before if pids else 0.0
    lat.sort()
    row = {"target": name, "sessions/s": len(lat) / elapsed,
           "p50 ms": statistics.median(lat) * 1000, "p99 ms": lat[int(len(lat) * 0.99) - 1] * 1000,
           "proxy CPU us/session": cpu / len(lat) * 1e6 if pids else None}
    print(f"{name:28} {row['sessions/s']:8.0f}/s  p50 {row['p50 ms']:6.1f} ms  "
          f"p99 {row['p99 ms']:6.1f} ms" +
          (f"  proxy CPU {row['proxy CPU us/session']:6.0f} us/session" if pids else ""))
    return row


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--seconds", type=float, default=5)
    p.add_argument("--concurrency", type=int, default=8)
    args = p.parse_args()
    tls = ssl.create_default_context(cafile=str(CA))
    tls.check_hostname = False
    odd = [f"user{n:02d}@demo.test" for n in range(1, 21, 2)]   # all on mbox1
    pids = proxy_pids()
    print(f"{len(pids)} proxy workers; {os.cpu_count()} cores; client in this process")
    measure("direct Dovecot IMAPS 7993", "127.0.0.1", 7993, tls, args, odd)
    measure("proxy IMAPS 10993", "127.0.0.1", 10993, tls, args, odd, pids)
    measure("direct Dovecot IMAP 7143", "127.0.0.1", 7143, None, args, odd)
    return 0


if __name__ == "__main__":
    sys.exit(main())
