"""The floor for an asyncio mail proxy, for bench/instructions.py --bare: accept, greet, read
one LOGIN line, connect to the demo mailbox server of that user (odd: 127.0.0.1, even:
127.0.0.2), LOGIN there, answer, then relay. No parsing beyond lines, no checks, no audit,
no timers, no errors handled: a measuring stick, not a proxy. `make bench` runs two of them
(as carbotui's two workers) on port 12144 for its `imap_floor` row; instructions.py --bare
one, under callgrind, on 12143.

    .venv/bin/python bench/bare_proxy.py [--port 12143]
"""
import asyncio
import sys

import uvloop

GREETING = b"* OK [CAPABILITY IMAP4rev1 ID LITERAL+ SASL-IR IDLE] ready\r\n"

class Backend(asyncio.Protocol):
    def __init__(self, client, tag, user, pw):
        self.client, self.tag, self.user, self.pw = client, tag, user, pw
        self.buf = b""; self.state = 0
    def connection_made(self, t): self.t = t
    def data_received(self, data):
        if self.state == 2:
            self.client.t.write(data); return
        self.buf += data
        while b"\n" in self.buf:
            line, _, self.buf = self.buf.partition(b"\n")
            if self.state == 0:
                self.t.write(b"A1 LOGIN " + self.user + b" " + self.pw + b"\r\n"); self.state = 1
            elif line.startswith(b"A1 "):
                self.state = 2
                self.client.backend = self
                self.client.t.write(self.tag + line[2:] + b"\n")
                self.client.t.resume_reading()
    def connection_lost(self, exc):
        self.client.t.close()

class Client(asyncio.Protocol):
    backend = None
    def connection_made(self, t):
        self.t = t; t.write(GREETING); self.buf = b""
    def data_received(self, data):
        if self.backend is not None:
            self.backend.t.write(data); return
        self.buf += data
        if b"\n" in self.buf:
            line = self.buf.split(b"\n")[0].rstrip(b"\r")
            tag, _, user, pw = line.split(b" ")
            self.t.pause_reading()
            n = int(user[4:6])
            host = "127.0.0.1" if n % 2 else "127.0.0.2"
            loop = asyncio.get_running_loop()
            loop.create_task(loop.create_connection(lambda: Backend(self, tag, user, pw), host, 7143))
    def connection_lost(self, exc):
        if self.backend: self.backend.t.close()

async def main(port: int):
    loop = asyncio.get_running_loop()
    await loop.create_server(Client, "127.0.0.1", port, reuse_port=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    uvloop.run(main(int(sys.argv[sys.argv.index("--port") + 1]) if "--port" in sys.argv
                    else 12143))
