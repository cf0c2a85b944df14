"""Open connections per client address, for a per-IP cap next to the per-worker one.

One counter per worker (workers are separate processes, like nginx's, so a cap is
per worker as ``max_connections`` is), kept per *group* so web and mail can have
caps of their own. IPv6 clients are counted per /64: one host usually has a whole
/64 to pick addresses from.

    if not worker.connections_per_ip.acquire("web", ip, limit):
        ...refuse (503)...
    ...
    worker.connections_per_ip.release("web", ip)      # exactly once, when it ends
"""
from __future__ import annotations

import ipaddress


def ip_group_key(ip: str) -> str:
    """The address itself for IPv4, its /64 for IPv6."""
    if ":" not in ip:
        return ip
    try:
        return str(ipaddress.ip_network(f"{ip.split('%')[0]}/64", strict=False))
    except ValueError:
        return ip


class ConnectionsPerIp:
    def __init__(self) -> None:
        self._open: dict[tuple[str, str], int] = {}

    def acquire(self, group: str, ip: str, limit: int) -> bool:
        """Count one more connection, unless ``limit`` (> 0) are open already: then
        False and nothing is counted. limit 0: no cap, still counted."""
        key = (group, ip_group_key(ip))
        n = self._open.get(key, 0)
        if 0 < limit <= n:
            return False
        self._open[key] = n + 1
        return True

    def release(self, group: str, ip: str) -> None:
        key = (group, ip_group_key(ip))
        n = self._open.get(key, 0) - 1
        if n > 0:
            self._open[key] = n
        else:
            self._open.pop(key, None)

    def count(self, group: str, ip: str) -> int:
        return self._open.get((group, ip_group_key(ip)), 0)
