"""Live stats of one worker as JSON on a Unix socket (var/run/proxy_NN.sock).

Connect, read until EOF: one JSON document. Cheap enough to poll every
second with thousands of sessions: a snapshot is built only on request.
"""
from __future__ import annotations

import asyncio
import json
import os
import time

from workers import privileges

SOCKET_MODE = 0o660


def snapshot(worker) -> dict:
    r = worker.router
    now = time.time()
    sessions = []
    for s in list(worker.sessions.values()):
        sessions.append({
            "id": s.id, "protocol": s.kind, "client": s.client_ip, "client_port": s.client_port,
            "account": s.account, "server": s.server, "state": s.state,
            "started": round(s.started, 3),
            "bytes_in": s.bytes_in, "bytes_out": s.bytes_out,
        })
    st = worker.stats
    return {
        "worker": worker.name, "pid": os.getpid(), "time": now, "started": st.started,
        "draining": worker.draining,
        "connections": dict(st.connections),
        "logins": {"ok": dict(st.logins_ok), "failed": dict(st.logins_failed),
                   "temporary": dict(st.logins_temp)},
        "throttled": dict(st.throttled), "rejected_busy": st.rejected_busy,
        # Sockets this worker holds for clients and mailbox servers: cheaper for the
        # dashboard than scanning /proc/<pid>/fd with 10,000 sessions.
        "sockets": len(worker.sessions) + sum(1 for x in worker.sessions.values()
                                              if getattr(x, "splice", None) is not None)
        + sum(len(u.idle) for u in worker.all_upstreams()), "proxy_refused": st.proxy_refused,
        "cache": {"hits": r.hits, "misses": r.misses, "ldap_lookups": r.ldap_lookups,
                  "poisoned": r.poisoned, "memcached_available": worker.cache.available,
                  "memcached_errors": worker.cache.errors},
        "ldap_searches": worker.directory.searches,
        "backends": {name: {**vars(b), "maintenance": any(
            h.split(".", 1)[0] == name for h in worker.maintenance)}
            for name, b in st.backends.items()},
        "maintenance": sorted(worker.maintenance),
        "web": {
            "requests": dict(st.web_requests),
            "upstreams": [{"server": u.name, "port": u.port, "kind": u.port_kind,
                           "healthy": u.healthy, "active": u.active, "requests": u.requests,
                           "maintenance": worker.in_maintenance(u.server.hostname),
                           "errors": u.errors, "idle": len(u.idle)}
                          for u in worker.all_upstreams()],
        },
        "config": {"version": worker.live.version, "applied_at": worker.live.applied_at,
                   "mail_mode": worker.live.mail_mode, "ldap_error": worker.live.error,
                   "virtual_hosts": sorted(worker.live.vhosts)},
        "sessions": sessions,
    }


async def serve(worker, path: str) -> asyncio.AbstractServer:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            writer.write(json.dumps(snapshot(worker)).encode())
            await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    os.makedirs(os.path.dirname(path), exist_ok=True)
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    # 0660, whatever the umask: the worker's user and group (an admin in that group, e.g.
    # `carbotui stats` without root); nobody else sees sessions, accounts and addresses.
    sock = privileges.unix_listener(path, SOCKET_MODE)
    return await asyncio.start_unix_server(handle, sock=sock)


def read(path: str, timeout: float = 2.0) -> dict:
    """Blocking client for scripts and tests."""
    import socket

    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(path)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return json.loads(b"".join(chunks))
