"""A lightweight IMAP server for the idle-session bench (Dovecot forks a process per session).

    .venv/bin/python bench/idle_backend.py --listen 127.0.0.31:7143 [--listen ...]

Understands what the proxies send and what the idle client does: greeting with
capabilities, CAPABILITY, ID, LOGIN (any password; quoted, atoms and literals, both
synchronising `{n}` as nginx sends them and `{n+}`), SELECT/EXAMINE, NOOP, IDLE/DONE,
LOGOUT. Anything else gets `BAD`. One asyncio.Protocol per connection, no task, small
buffers: it should cost far less than the proxies it serves. 10,000 sessions need
10,000 descriptors here; the limit is 20,000 per process, so bench/run.py starts several
processes, each listening with SO_REUSEPORT on the same addresses (50,000 sessions: four).
"""
from __future__ import annotations

import argparse
import asyncio
import re
import resource
import signal
import sys

CAPS = b"IMAP4rev1 LITERAL+ SASL-IR ID IDLE ENABLE"
GREETING = b"* OK [CAPABILITY " + CAPS + b"] bench idle backend ready\r\n"
_LITERAL = re.compile(rb"\{(\d{1,6})(\+?)\}$")


class ImapProtocol(asyncio.Protocol):
    __slots__ = ("transport", "buf", "line", "need", "idling", "tag")

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.buf = b""
        self.line = b""          # a command being assembled across literals
        self.need = 0            # literal bytes still expected
        self.idling = False
        self.tag = b""
        transport.write(GREETING)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:
            if self.need:
                if len(self.buf) < self.need:
                    return
                self.line += self.buf[:self.need]
                self.buf = self.buf[self.need:]
                self.need = 0
            end = self.buf.find(b"\r\n")
            if end < 0:
                if len(self.buf) > 65536:
                    self.transport.close()
                return
            part, self.buf = self.buf[:end], self.buf[end + 2:]
            m = _LITERAL.search(part)
            if m:
                self.line += part
                self.need = int(m.group(1))
                if not m.group(2):
                    self.transport.write(b"+ go ahead\r\n")
                continue
            line, self.line = self.line + part, b""
            self.command(line)

    def command(self, line: bytes) -> None:
        w = self.transport.write
        if self.idling:
            if line.strip().upper() == b"DONE":
                self.idling = False
                w(self.tag + b" OK Idle completed\r\n")
            return
        tag, _, rest = line.partition(b" ")
        verb = rest.split(b" ", 1)[0].upper()
        if verb == b"CAPABILITY":
            w(b"* CAPABILITY " + CAPS + b"\r\n" + tag + b" OK done\r\n")
        elif verb == b"ID":
            w(b'* ID ("name" "bench-idle")\r\n' + tag + b" OK ID done\r\n")
        elif verb in (b"LOGIN", b"AUTHENTICATE"):
            w(tag + b" OK [CAPABILITY " + CAPS + b"] Logged in\r\n")
        elif verb in (b"SELECT", b"EXAMINE"):
            w(b"* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft)\r\n* 0 EXISTS\r\n"
              b"* 0 RECENT\r\n* OK [UIDVALIDITY 1] UIDs valid\r\n* OK [UIDNEXT 1] next\r\n"
              + tag + b" OK [READ-WRITE] Select completed\r\n")
        elif verb == b"NOOP":
            w(tag + b" OK done\r\n")
        elif verb == b"IDLE":
            self.idling, self.tag = True, tag
            w(b"+ idling\r\n")
        elif verb == b"LOGOUT":
            w(b"* BYE logging out\r\n" + tag + b" OK Logout completed\r\n")
            self.transport.close()
        else:
            w(tag + b" BAD unknown command\r\n")


async def serve(listens: list[str]) -> None:
    loop = asyncio.get_running_loop()
    servers = []
    for item in listens:
        host, _, port = item.rpartition(":")
        servers.append(await loop.create_server(ImapProtocol, host, int(port),
                                                reuse_address=True, reuse_port=True,
                                                backlog=4096))
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"idle_backend: listening on {', '.join(listens)}", flush=True)
    await stop.wait()
    for s in servers:
        s.close()


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--listen", action="append", required=True)
    args = p.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    import uvloop
    uvloop.run(serve(args.listen))
    return 0


if __name__ == "__main__":
    sys.exit(main())
