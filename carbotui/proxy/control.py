"""Admin requests to one worker on a Unix socket (var/run/proxy_NN.ctl).

One JSON line in, one JSON line out; the requests, the replies and the dashboard's
client (WorkerControl) are in carbotui/backends/worker_sockets.py:

    {"cmd": "kick", "session": 12}                        -> {"ok": true}
    {"cmd": "maintenance", "server": "mbox1.demo.test", "on": true}
                                                          -> {"ok": true, "maintenance": [...]}

Maintenance survives restarts through var/run/maintenance.json, which the
dashboard writes before it asks; a worker reads it at start and on SIGHUP.
A server in maintenance takes no new logins (a temporary failure: IMAP
NO [UNAVAILABLE], POP3 -ERR [SYS/TEMP], web 503) and no balanced web traffic;
sessions already open go on.
"""
from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from carbotui.backends import worker_sockets as wire
from carbotui.proxy import privileges

if TYPE_CHECKING:
    from carbotui.proxy.context import SessionServices

log = logging.getLogger("carbotui.proxy.control")

SOCKET_MODE = 0o600


def load_maintenance(run_dir: Path) -> set[str]:
    try:
        return wire.read_maintenance(run_dir)
    except (OSError, ValueError) as exc:
        log.error("var/run/maintenance.json unreadable (%s); no server in maintenance", exc)
        return set()


def handle(services: SessionServices, request: dict) -> dict:
    cmd = request.get("cmd")
    if cmd == wire.KICK:
        session = services.sessions.get(request.get("session"))
        if session is None:
            return wire.refused(f"no session {request.get('session')}")
        log.info("session %s (%s, %s) kicked by an admin", session.id, session.client_ip,
                 session.account or "not logged in")
        session.shutdown("kicked by an administrator")
        return {"ok": True}
    if cmd == wire.MAINTENANCE:
        server = str(request.get("server", "")).lower()
        if not server:
            return wire.refused("maintenance needs a server")
        if request.get("on"):
            services.maintenance.add(server)
        else:
            services.maintenance.discard(server)
        log.info("mailbox server %s %s maintenance", server,
                 "in" if request.get("on") else "out of")
        return {"ok": True, "maintenance": sorted(services.maintenance)}
    return wire.refused(f"unknown command {cmd!r}")


async def serve(services: SessionServices, path: Path) -> asyncio.AbstractServer:
    async def client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await asyncio.wait_for(reader.readline(), 5)
            try:
                request = json.loads(line[:wire.CONTROL_MAX_REQUEST])
                answer = handle(services, request) if isinstance(request, dict) else \
                    wire.refused("a request is one JSON object")
            except ValueError:
                answer = wire.refused("a request is one JSON object")
            writer.write(wire.encode_line(answer))
            await writer.drain()
        except (asyncio.TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()

    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    # admin requests: the worker's user (and root) only, from the moment the socket exists
    sock = privileges.unix_listener(str(path), SOCKET_MODE)
    return await asyncio.start_unix_server(client, sock=sock)
