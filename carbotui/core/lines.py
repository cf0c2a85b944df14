"""Reading one reply line from a blocking socket: the control socket's JSON line, a
greeting, a memcached answer."""
from __future__ import annotations

import socket


def recv_line(sock: socket.socket, end: bytes = b"\n", bufsize: int = 65536) -> bytes:
    """What ``sock`` sends up to and including ``end``, or all it sent before it closed."""
    data = b""
    while not data.endswith(end):
        chunk = sock.recv(bufsize)
        if not chunk:
            break
        data += chunk
    return data
