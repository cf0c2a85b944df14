"""`carbotui prov …`: the part of `carbonio prov` the proxy uses.

    carbotui prov getAccount <name>       carbotui prov getDomain <domain>
    carbotui prov getServer <hostname>    carbotui prov flushCache <account>

Output is `attribute: value` lines, as zmprov prints them, so scripts can
grep it; errors go to stderr with a non-zero exit code.
"""
from __future__ import annotations

import asyncio
import sys
from typing import Callable

from carbotui import config
from carbotui.directory import Directory, DirectoryUnavailable
from carbotui.memcache import Memcache
from carbotui.routes import flush_keys


class ProvError(Exception):
    pass


def _print_attrs(pairs: list[tuple[str, object]]) -> None:
    for name, value in pairs:
        for v in value if isinstance(value, (list, tuple)) else [value]:
            if v not in ("", None):
                print(f"{name}: {v}")


def get_account(settings, directory: Directory, name: str) -> int:
    acct = directory.find_account(name)
    if acct is None:
        raise ProvError(f"account {name} not found")
    _print_attrs([("zimbraMailDeliveryAddress", acct.name), ("zimbraId", acct.zimbra_id),
                  ("zimbraMailHost", acct.mail_host), ("zimbraMailAlias", acct.aliases),
                  ("zimbraAccountStatus", acct.status)])
    return 0


def get_domain(settings, directory: Directory, name: str) -> int:
    for d in directory.domains():
        if d.name == name.lower():
            _print_attrs([("zimbraDomainName", d.name), ("zimbraId", d.zimbra_id),
                          ("zimbraVirtualHostname", d.virtual_hostnames),
                          ("zimbraVirtualIPAddress", d.virtual_ips),
                          ("zimbraSSLCertificate", "(set)" if d.certificate_pem else "")])
            return 0
    raise ProvError(f"domain {name} not found")


def get_server(settings, directory: Directory, name: str) -> int:
    server = directory.servers().get(name.lower())
    if server is None:
        raise ProvError(f"server {name} not found")
    from carbotui.directory import PORT_ATTRIBUTES
    _print_attrs([("zimbraServiceHostname", server.hostname),
                  ("zimbraServiceEnabled", server.services),
                  ("zimbraReverseProxyLookupTarget", "TRUE" if server.lookup_target else "FALSE"),
                  ("zimbraReverseProxyMailMode", server.mail_mode),
                  *[(attr, server.ports[p]) for p, attr in PORT_ATTRIBUTES.items()],
                  ("address", server.address)])
    return 0


def flush_routes(settings, directory: Directory, name: str) -> tuple[str, int, int]:
    """Delete every cached route of one account (like zmproxypurge -a).

    Returns (account, entries deleted, keys checked). Shared with the dashboard."""
    acct = directory.find_account(name)
    if acct is None:
        raise ProvError(f"account {name} not found")
    ips = {e.host for eps in settings.listen.values() for e in eps}
    for d in directory.domains():
        ips.update(d.virtual_ips)
    keys = flush_keys(acct, sorted(ips))
    if not settings.memcached_servers:
        raise ProvError("no memcached servers are configured")

    async def purge() -> int:
        cache = Memcache(settings.memcached_servers, timeout=settings.memcached_timeout,
                         reconnect=settings.memcached_reconnect)
        try:
            deleted = 0
            for key in keys:
                deleted += await cache.delete(key)
            if not cache.available:
                raise ProvError("memcached is not reachable; nothing was flushed")
            return deleted
        finally:
            await cache.close()

    return acct.name, asyncio.run(purge()), len(keys)


def flush_cache(settings, directory: Directory, name: str) -> int:
    account, deleted, checked = flush_routes(settings, directory, name)
    print(f"flushed routes of {account}: {deleted} cached entr{'y' if deleted == 1 else 'ies'} "
          f"removed ({checked} keys checked)")
    return 0


COMMANDS: dict[str, tuple[Callable, str]] = {
    "getAccount": (get_account, "<account>"),
    "getDomain": (get_domain, "<domain>"),
    "getServer": (get_server, "<hostname>"),
    "flushCache": (flush_cache, "<account>"),
}


def usage() -> str:
    lines = ["usage: carbotui prov <command> <args>", "commands:"]
    lines += [f"  {name} {args}" for name, (_, args) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str], config_path: str) -> int:
    if not argv or argv[0] not in COMMANDS:
        print(usage(), file=sys.stderr)
        return 2
    func, arg_help = COMMANDS[argv[0]]
    if len(argv) != 2:
        print(f"usage: carbotui prov {argv[0]} {arg_help}", file=sys.stderr)
        return 2
    try:
        settings = config.load(config_path)
        return func(settings, Directory(settings), argv[1])
    except (ProvError, config.ConfigError, DirectoryUnavailable) as exc:
        print(f"ERROR: {exc}", file=sys.stderr)
        return 1
