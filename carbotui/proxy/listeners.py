"""Listening sockets shared by every worker through SO_REUSEPORT.

Each worker binds its own socket to the same address; the kernel spreads new
connections across them. With net.ipv4.tcp_migrate_req=1 (set by `make up`)
a worker that closes its socket hands queued connections to its siblings
instead of resetting them, so a restart refuses nobody.
"""
from __future__ import annotations

import socket
from typing import Any, Final

from carbotui.core.settings import Endpoint
from carbotui.proxy import tlsbio

BACKLOG: Final = 4096
HANDSHAKE_TIMEOUT: Final = 10.0      # seconds for a client's TLS handshake


def bind(endpoint: Endpoint) -> socket.socket:
    family = socket.AF_INET6 if ":" in endpoint.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            # '[::]:143' serves IPv6 only; list '0.0.0.0:143' too for IPv4.
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((endpoint.host, endpoint.port))
        sock.listen(BACKLOG)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise OSError(exc.errno, f"cannot listen on {endpoint}: {exc.strerror}") from None
    return sock


def plain_ip(ip: str) -> str:
    """'::ffff:1.2.3.4' -> '1.2.3.4', so audit, throttles and whitelists see one form."""
    return ip[7:] if ip.startswith("::ffff:") and "." in ip else ip


_NO_ADDRESS: Final = ("", 0)


def session_addresses(transport: Any, addresses: Any = None) -> tuple[str, int, str, int]:
    """(client ip, client port, local ip, local port) of a new session: from the PROXY
    header when there was one (``addresses``), else from the socket. Compiled (mypyc):
    a client ip that is no str, or a port that is no int, raises TypeError."""
    if addresses:
        peer, local = addresses
    else:
        peer = transport.get_extra_info("peername") or _NO_ADDRESS
        local = transport.get_extra_info("sockname") or _NO_ADDRESS
    client_ip: str = peer[0]
    local_ip: str = local[0]
    client_port: int = peer[1]
    local_port: int = local[1]
    return plain_ip(client_ip), client_port, plain_ip(local_ip), local_port


def implicit_tls(factory, context, handshake_timeout: float = HANDSHAKE_TIMEOUT):
    """The protocol factory of an IMAPS or POP3S listener, which itself is plain TCP: the
    session (``factory(**kw)``) behind carbotui/proxy/tlsbio.py's TLS, ~7 KB less per idle
    session than uvloop's (bench/tls_idle.py). STARTTLS and the web listeners keep
    uvloop's."""
    return tlsbio.server_factory(factory, context, handshake_timeout)
