"""Admin requests to one worker on a Unix socket (var/run/proxy_NN.ctl).

One JSON line in, one JSON line out (the dashboard's WorkerControl):

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

from workers import privileges

log = logging.getLogger("workers.control")

SOCKET_MODE = 0o600

MAX_REQUEST = 4096


def load_maintenance(run_dir: Path) -> set[str]:
    try:
        servers = json.loads((run_dir / "maintenance.json").read_text()).get("servers", [])
        return {str(s).lower() for s in servers}
    except FileNotFoundError:
        return set()
    except (OSError, ValueError, AttributeError) as exc:
        log.error("var/run/maintenance.json unreadable (%s); no server in maintenance", exc)
        return set()


def handle(worker, request: dict) -> dict:
    cmd = request.get("cmd")
    if cmd == "kick":
        session = worker.sessions.get(request.get("session"))
        if session is None:
            return {"ok": False, "error": f"no session {request.get('session')}"}
        log.info("session %s (%s, %s) kicked by an admin", session.id, session.client_ip,
                 session.account or "not logged in")
        session.shutdown("kicked by an administrator")
        return {"ok": True}
    if cmd == "maintenance":
        server = str(request.get("server", "")).lower()
        if not server:
            return {"ok": False, "error": "maintenance needs a server"}
        if request.get("on"):
            worker.maintenance.add(server)
        else:
            worker.maintenance.discard(server)
        log.info("mailbox server %s %s maintenance", server,
                 "in" if request.get("on") else "out of")
        return {"ok": True, "maintenance": sorted(worker.maintenance)}
    return {"ok": False, "error": f"unknown command {cmd!r}"}


async def serve(worker, path: Path) -> asyncio.AbstractServer:
    async def client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await asyncio.wait_for(reader.readline(), 5)
            try:
                request = json.loads(line[:MAX_REQUEST])
                answer = handle(worker, request) if isinstance(request, dict) else \
                    {"ok": False, "error": "a request is one JSON object"}
            except ValueError:
                answer = {"ok": False, "error": "a request is one JSON object"}
            writer.write(json.dumps(answer).encode() + b"\n")
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
