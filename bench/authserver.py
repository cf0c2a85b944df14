"""nginx `auth_http` server for the bench: answers routes from a fixed table ("cached route").

    .venv/bin/python bench/authserver.py --listen 127.0.0.1:11900

nginx asks `GET <uri> HTTP/1.0` with `Auth-User`, `Auth-Protocol`, ... headers, one
connection per login (reference peer-proxies.md §1.3); we answer

    Auth-Status: OK / Auth-Server: <ip> / Auth-Port: <port>

from the demo accounts: user01..user20@demo.test (and nickNN aliases), odd on mbox1
(127.0.0.1), even on mbox2 (127.0.0.2). The password is not checked here: the mailbox
server checks it, as it does behind carbotui. URI `/idle` routes to the bench's idle
IMAP backend instead (127.0.0.31 / 127.0.0.32, port 7143), the same way the carbotui
idle node's `[hosts]` do. Unknown users get `Auth-Status: Invalid login` with
`Auth-Wait: 1` (nginx tarpits, then lets the client retry).

A plain asyncio.Protocol on uvloop: no per-request task, one read, one write, close.
Its CPU is reported separately by bench/run.py.
"""
from __future__ import annotations

import argparse
import asyncio
import re
import signal
import sys
from urllib.parse import unquote

PORTS = {"imap": 7143, "pop3": 7110}
MAILBOX = {1: "127.0.0.1", 0: "127.0.0.2"}          # user number % 2 -> mbox address
IDLE = {1: "127.0.0.31", 0: "127.0.0.32"}           # bench/idle_backend.py
_USER = re.compile(r"^(?:user|nick)(\d{2})(?:@demo\.test)?$")


def route(user: str, protocol: str, idle: bool) -> tuple[str, int] | None:
    """(address, port) for a login, None if the account is unknown."""
    m = _USER.match(user.lower())
    if not m or not 1 <= int(m.group(1)) <= 20 or protocol not in PORTS:
        return None
    n = int(m.group(1))
    if idle:
        return IDLE[n % 2], 7143 if protocol == "imap" else 7110
    return MAILBOX[n % 2], PORTS[protocol]


def answer(head: bytes) -> bytes:
    """The whole HTTP response for one request head."""
    lines = head.split(b"\r\n")
    target = lines[0].split(b" ")[1] if len(lines[0].split(b" ")) > 1 else b"/"
    fields = {}
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if sep:
            fields[name.strip().lower()] = value.strip()
    user = unquote(fields.get(b"auth-user", b"").decode("latin-1"))
    protocol = fields.get(b"auth-protocol", b"").decode("latin-1")
    found = route(user, protocol, idle=target.startswith(b"/idle"))
    if found is None:
        return (b"HTTP/1.0 200 OK\r\nAuth-Status: Invalid login or password\r\n"
                b"Auth-Wait: 1\r\n\r\n")
    return (b"HTTP/1.0 200 OK\r\nAuth-Status: OK\r\nAuth-Server: %s\r\nAuth-Port: %d\r\n\r\n"
            % (found[0].encode(), found[1]))


class AuthProtocol(asyncio.Protocol):
    __slots__ = ("transport", "buf")

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.buf = b""

    def data_received(self, data: bytes) -> None:
        self.buf += data
        end = self.buf.find(b"\r\n\r\n")
        if end >= 0:
            self.transport.write(answer(self.buf[:end]))
            self.transport.close()
        elif len(self.buf) > 16384:
            self.transport.close()


async def serve(host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(AuthProtocol, host, port, reuse_address=True, backlog=4096)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"authserver: listening on {host}:{port}", flush=True)
    await stop.wait()
    server.close()


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--listen", default="127.0.0.1:11900")
    args = p.parse_args()
    host, _, port = args.listen.rpartition(":")
    import uvloop
    uvloop.run(serve(host, int(port)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
