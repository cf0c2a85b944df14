"""Load generators for bench/run.py (uvloop, one process each; loopback only, bounded).

Every mode talks to the orchestrator the same way, so it can sample the proxies' CPU
exactly around the load: print `ready`, wait for `go` on stdin, run, print one JSON line.

    sessions  --proto imap|pop3 --port P [--tls] --seconds S --concurrency C --max N
              IMAP: connect, greeting, LOGIN, SELECT INBOX, LOGOUT.
              POP3: connect, greeting, USER, PASS, STAT, QUIT.
              -> {"n", "errors", "elapsed", "lat_ms": [...], "first_error"}
    idle      --port P [--tls] --count N
              opens N sessions (LOGIN, SELECT, IDLE, waits for "+ idling") and keeps them;
              -> {"opened", "failed", "elapsed"}; then on stdin `check` -> {"alive",
              "dropped"}, `close` -> DONE + LOGOUT on each, {"closed"}, exit.
    storm     --port P [--tls] --count N --spread S
              starts N clients evenly over S seconds (connect, greeting, LOGIN, then LOGOUT,
              and the server closes first), each given --timeout seconds to be logged in;
              -> {"n", "failed", "lat_ms": [...], "first_error", "go_at", "last_start_at",
              "last_ok_at"} (the *_at are time.time(), comparable across processes).

`--source A` binds every client socket to source address A (127.x): one source address
per client process keeps each under the ~28,000 ephemeral ports of one address pair.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import socket
import ssl
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PASSWORD = "demo-pass"
SESSION_TIMEOUT = 15.0
SNI = "bench.demo.test"        # no virtual host: both proxies present the default certificate


# The differential suite's own accounts (tests/stack/test_differential.py): a bench or a
# callgrind count running beside it would change their \Recent flags and sessions.
NOT_LOADED = (16, 20)


def users(spec: str) -> list[str]:
    """'all' | 'odd' | 'even' -> demo accounts (but NOT_LOADED)."""
    numbers = {"all": range(1, 21), "odd": range(1, 21, 2), "even": range(2, 21, 2)}[spec]
    return [f"user{n:02d}@demo.test" for n in numbers if n not in NOT_LOADED]


def client_tls() -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(REPO / "var/certs/ca.crt"))
    ctx.check_hostname = False        # we connect to 127.0.0.1; the chain is still verified
    return ctx


async def stdin_lines():
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    return reader


def emit(obj) -> None:
    sys.stdout.write((obj if isinstance(obj, str) else json.dumps(obj)) + "\n")
    sys.stdout.flush()


# -- sessions ---------------------------------------------------------------------------

async def _until(reader: asyncio.StreamReader, tag: bytes) -> bytes:
    while True:
        line = await reader.readline()
        if not line:
            raise ConnectionError(f"closed while waiting for {tag!r}")
        if line.startswith(tag):
            return line


async def imap_session(host, port, tls, user) -> None:
    reader, writer = await asyncio.open_connection(host, port, ssl=tls,
                                                   server_hostname=SNI if tls else None)
    try:
        greeting = await reader.readline()
        if not greeting.startswith(b"* OK"):
            raise RuntimeError(f"greeting {greeting[:80]!r}")
        writer.write(b"a LOGIN %s %s\r\n" % (user.encode(), PASSWORD.encode()))
        line = await _until(reader, b"a ")
        if not line.startswith(b"a OK"):
            raise RuntimeError(f"LOGIN {line[:80]!r}")
        writer.write(b"b SELECT INBOX\r\n")
        line = await _until(reader, b"b ")
        if not line.startswith(b"b OK"):
            raise RuntimeError(f"SELECT {line[:80]!r}")
        writer.write(b"c LOGOUT\r\n")
        await _until(reader, b"c ")
    finally:
        writer.close()


async def pop3_session(host, port, tls, user) -> None:
    reader, writer = await asyncio.open_connection(host, port, ssl=tls,
                                                   server_hostname=SNI if tls else None)
    try:
        for command in (None, b"USER %s" % user.encode(), b"PASS " + PASSWORD.encode(),
                        b"STAT", b"QUIT"):
            if command is not None:
                writer.write(command + b"\r\n")
            line = await reader.readline()
            if not line.startswith(b"+OK"):
                raise RuntimeError(f"{(command or b'greeting').split()[0]!r}: {line[:80]!r}")
    finally:
        writer.close()


async def run_sessions(args) -> dict:
    session = imap_session if args.proto == "imap" else pop3_session
    tls = client_tls() if args.tls else None
    accounts = users(args.users)
    lat: list[float] = []
    errors = 0
    first_error = ""
    started = time.perf_counter()
    deadline = started + args.seconds

    async def loop(i: int) -> None:
        nonlocal errors, first_error
        n = i
        while time.perf_counter() < deadline and len(lat) + errors < args.max:
            t0 = time.perf_counter()
            try:
                async with asyncio.timeout(SESSION_TIMEOUT):
                    await session(args.host, args.port, tls, accounts[n % len(accounts)])
                lat.append((time.perf_counter() - t0) * 1000)
            except (OSError, RuntimeError, ConnectionError, TimeoutError, ssl.SSLError) as exc:
                errors += 1
                first_error = first_error or f"{type(exc).__name__}: {exc}"
                await asyncio.sleep(0.01)
            n += args.concurrency

    await asyncio.gather(*(loop(i) for i in range(args.concurrency)))
    elapsed = time.perf_counter() - started
    return {"n": len(lat), "errors": errors, "elapsed": elapsed,
            "lat_ms": [round(x, 3) for x in lat], "first_error": first_error}


# -- idle -------------------------------------------------------------------------------

class IdleClient(asyncio.Protocol):
    """LOGIN, SELECT, IDLE; then hold. `ready` resolves when "+ idling" arrives."""

    def __init__(self, user: bytes, book: dict):
        self.user = user
        self.book = book
        self.buf = b""
        self.step = 0
        self.transport = None
        self.ready = asyncio.get_running_loop().create_future()

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while b"\r\n" in self.buf:
            line, self.buf = self.buf.split(b"\r\n", 1)
            self.line(line)

    def line(self, line: bytes) -> None:
        w = self.transport.write
        if self.step == 0 and line.startswith(b"* OK"):
            w(b"a LOGIN %s %s\r\n" % (self.user, PASSWORD.encode()))
            self.step = 1
        elif self.step == 1 and line.startswith(b"a "):
            if not line.startswith(b"a OK"):
                return self.fail(f"LOGIN {line[:80]!r}")
            w(b"b SELECT INBOX\r\n")
            self.step = 2
        elif self.step == 2 and line.startswith(b"b "):
            if not line.startswith(b"b OK"):
                return self.fail(f"SELECT {line[:80]!r}")
            w(b"c IDLE\r\n")
            self.step = 3
        elif self.step == 3 and line.startswith(b"+"):
            self.step = 4
            if not self.ready.done():
                self.ready.set_result(True)
        elif line.startswith(b"* BYE"):
            self.book["bye"] = self.book.get("bye", 0) + 1

    def fail(self, why: str) -> None:
        if not self.ready.done():
            self.ready.set_exception(RuntimeError(why))
        self.transport.close()

    def connection_lost(self, exc) -> None:
        if self.step == 4 and not self.book.get("closing"):
            self.book["dropped"] = self.book.get("dropped", 0) + 1
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(f"closed at step {self.step}: {exc}"))
        self.step = 5


async def run_idle(args, commands: asyncio.StreamReader) -> None:
    loop = asyncio.get_running_loop()
    tls = client_tls() if args.tls else None
    accounts = [u.encode() for u in users(args.users)]
    book: dict = {}
    clients: list[IdleClient] = []
    failed = 0
    first_error = ""
    gate = asyncio.Semaphore(args.open_concurrency)

    async def open_one(i: int) -> None:
        nonlocal failed, first_error
        async with gate:
            client = IdleClient(accounts[(i + args.offset) % len(accounts)], book)
            try:
                async with asyncio.timeout(SESSION_TIMEOUT * 2):
                    await connect(loop, lambda: client, args, tls)
                    await client.ready
                clients.append(client)
            except (OSError, RuntimeError, ConnectionError, TimeoutError, ssl.SSLError) as exc:
                failed += 1
                first_error = first_error or f"{type(exc).__name__}: {exc}"
                if client.transport:
                    client.transport.abort()

    started = time.perf_counter()
    await asyncio.gather(*(open_one(i) for i in range(args.count)))
    emit({"opened": len(clients), "failed": failed, "elapsed": time.perf_counter() - started,
          "first_error": first_error})
    while True:
        line = (await commands.readline()).decode().strip()
        if line == "check":
            alive = sum(1 for c in clients if c.step == 4)
            emit({"alive": alive, "dropped": book.get("dropped", 0), "bye": book.get("bye", 0)})
        elif line in ("close", ""):
            book["closing"] = True
            for c in clients:
                if c.step == 4 and not c.transport.is_closing():
                    c.transport.write(b"DONE\r\nz LOGOUT\r\n")
            # the server closes first after LOGOUT (its side keeps the TIME_WAIT): wait for
            # that, bounded, before closing what is left
            deadline = time.perf_counter() + 20
            while time.perf_counter() < deadline and any(c.step != 5 for c in clients):
                await asyncio.sleep(0.1)
            for c in clients:
                c.transport.close()
            await asyncio.sleep(0.2)
            emit({"closed": len(clients)})
            return


IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)     # linux/in.h


async def connect(loop, factory, args, tls):
    """A client connection, from args.source when given. The source is bound with
    IP_BIND_ADDRESS_NO_PORT: a plain bind(source, 0) reserves its port for the whole
    machine, and the proxies' own connects to their backends (no bind) then find that many
    fewer ephemeral ports: 50,000 such clients left nginx ~21,000 per backend address."""
    if not args.source:
        return await loop.create_connection(factory, args.host, args.port, ssl=tls,
                                            server_hostname=SNI if tls else None)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
        sock.bind((args.source, 0))
        sock.setblocking(False)
        await loop.sock_connect(sock, (args.host, args.port))
    except BaseException:
        sock.close()
        raise
    return await loop.create_connection(factory, sock=sock, ssl=tls,
                                        server_hostname=SNI if tls else None)


# -- storm ------------------------------------------------------------------------------

class StormClient(asyncio.Protocol):
    """Greeting, LOGIN; `done` resolves at the tagged OK. Then LOGOUT, and the server
    closes first, so the TIME_WAIT of the proxy's connection to its backend is kept by
    the backend (a proxy that closed first would hold one ephemeral port per session for
    a minute, and the next phase would run out of them); `closed` resolves then."""

    def __init__(self, user: bytes):
        self.user = user
        self.buf = b""
        self.step = 0
        self.transport = None
        self.done = asyncio.get_running_loop().create_future()
        self.closed = asyncio.get_running_loop().create_future()

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while b"\r\n" in self.buf:
            line, self.buf = self.buf.split(b"\r\n", 1)
            if self.step == 2:
                continue                         # the LOGOUT's answer: the server closes
            if self.step == 0 and line.startswith(b"* OK"):
                self.transport.write(b"a LOGIN %s %s\r\n" % (self.user, PASSWORD.encode()))
                self.step = 1
            elif self.step == 1 and line.startswith(b"a "):
                self.step = 2
                if line.startswith(b"a OK"):
                    self.done.set_result(time.time())
                    self.transport.write(b"z LOGOUT\r\n")
                else:
                    self.done.set_exception(RuntimeError(f"LOGIN {line[:80]!r}"))
                    self.transport.close()
            elif self.step == 0:
                self.done.set_exception(RuntimeError(f"greeting {line[:80]!r}"))
                self.step = 2
                self.transport.close()

    def connection_lost(self, exc) -> None:
        if not self.done.done():
            self.done.set_exception(ConnectionError(f"closed at step {self.step}: {exc}"))
        if not self.closed.done():
            self.closed.set_result(None)


async def run_storm(args) -> dict:
    loop = asyncio.get_running_loop()
    tls = client_tls() if args.tls else None
    accounts = [u.encode() for u in users(args.users)]
    lat: list[float] = []
    oks: list[float] = []
    starts: list[float] = []
    opened: list[StormClient] = []
    failed = 0
    first_error = ""
    go_at = time.time()
    t0 = loop.time()

    async def one(i: int) -> None:
        nonlocal failed, first_error
        await asyncio.sleep(max(0.0, t0 + i * args.spread / args.count - loop.time()))
        client = StormClient(accounts[(i + args.offset) % len(accounts)])
        opened.append(client)
        started = time.perf_counter()
        starts.append(time.time())
        try:
            async with asyncio.timeout(args.timeout):
                await connect(loop, lambda: client, args, tls)
                oks.append(await client.done)
            lat.append((time.perf_counter() - started) * 1000)
        except (OSError, RuntimeError, ConnectionError, TimeoutError, ssl.SSLError) as exc:
            failed += 1
            first_error = first_error or f"{type(exc).__name__}: {exc}"
            if client.transport:
                client.transport.abort()

    await asyncio.gather(*(one(i) for i in range(args.count)))
    # the servers close after LOGOUT; bounded, then whatever is left is closed here
    waiting = [c.closed for c in opened if c.transport is not None and not c.closed.done()]
    if waiting:
        await asyncio.wait(waiting, timeout=20)
    for c in opened:
        if c.transport is not None and not c.transport.is_closing():
            c.transport.close()
    return {"n": len(lat), "failed": failed, "lat_ms": [round(x, 2) for x in lat],
            "first_error": first_error, "go_at": go_at,
            "last_start_at": max(starts, default=go_at), "last_ok_at": max(oks, default=None)}


async def main_async(args) -> None:
    commands = await stdin_lines()
    emit("ready")
    if (await commands.readline()).strip() != b"go":
        return
    if args.mode == "sessions":
        emit(await run_sessions(args))
    elif args.mode == "storm":
        emit(await run_storm(args))
    else:
        await run_idle(args, commands)


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=("sessions", "idle", "storm"))
    p.add_argument("--proto", choices=("imap", "pop3"), default="imap")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--tls", action="store_true")
    p.add_argument("--users", default="all", choices=("all", "odd", "even"))
    p.add_argument("--seconds", type=float, default=4.0)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--max", type=int, default=50_000)
    p.add_argument("--count", type=int, default=1000)
    p.add_argument("--offset", type=int, default=0)
    p.add_argument("--open-concurrency", type=int, default=64)
    p.add_argument("--source", default="", help="source address of every client socket")
    p.add_argument("--spread", type=float, default=1.0, help="storm: start clients over S s")
    p.add_argument("--timeout", type=float, default=60.0, help="storm: bound per client")
    args = p.parse_args()
    import uvloop
    uvloop.run(main_async(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
