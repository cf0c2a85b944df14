"""The `carbotui` command.

    carbotui [--config FILE] [--refresh SECONDS] [--no-mouse]   the dashboard
    carbotui [--config FILE] prov <command> …                   directory and cache admin
    carbotui [--config FILE] stats                              worker stats sockets, JSON
    carbotui [--config FILE] stats --all                        everything the dashboard
                                                                 shows, JSON
    carbotui [--config FILE] fleet                              every node's workers sharing
                                                                 this memcached, JSON
    carbotui [--config FILE] blocks [add <ip> <seconds> [reason…] | remove <ip>]
                                                                IP blocks on every node
    carbotui check [--config FILE] [--offline] [--keys]         check the settings file as a
                                                                 worker loads it, then bind to
                                                                 LDAP, reach memcached, load the
                                                                 certificates, compare the
                                                                 listeners (exit 0 or 1);
                                                                 --offline: the file only;
                                                                 --keys: every key, its default
                                                                 and the Carbonio attribute

The settings file defaults to $CARBOTUI_CONFIG, else ./carbotui.toml.
"""
from __future__ import annotations

import json
import os
import sys


def _config_path(argv: list[str], path: str = "") -> tuple[str, list[str]]:
    path = path or os.environ.get("CARBOTUI_CONFIG", "carbotui.toml")
    if argv[:1] == ["--config"] and len(argv) > 1:
        path, argv = argv[1], argv[2:]
    return path, argv


def check(config_path: str, argv: list[str]) -> int:
    """The file loaded and validated by the very function the workers use (config.load),
    then the probes of carbotui/cli/check.py (LDAP, memcached, certificates, listeners):
    one line per problem and exit 1, or one OK line and exit 0."""
    from carbotui.cli import check as checks

    config_path, argv = _config_path(argv, config_path)
    return checks.main(config_path, argv)


def stats(config_path: str, argv: list[str]) -> int:
    from carbotui.core import settings as config

    settings = config.load(config_path)
    if argv == ["--all"]:
        # One collect, the same snapshot the dashboard draws (rates need two
        # collects, so they read 0 here; the totals and lists are complete).
        from carbotui.admin.node import Fleet
        fleet = Fleet(settings)
        try:
            snapshot = fleet.collect()
        finally:
            fleet.close()
        json.dump(snapshot.to_json(), sys.stdout, indent=1)
        print()
        return 0 if not snapshot.problems else 1
    if argv:
        print("usage: carbotui stats [--all]", file=sys.stderr)
        return 2
    from carbotui.backends.worker_sockets import read_stats_json as read
    out = []
    for sock in sorted(settings.run_dir.glob("proxy_*.sock")):
        try:
            out.append(read(str(sock)))
        except OSError:
            continue          # a worker that is restarting
    json.dump(out, sys.stdout, indent=1)
    print()
    return 0 if out else 1


def dashboard(config_path: str, argv: list[str]) -> int:
    import argparse

    from carbotui.core import settings as config

    parser = argparse.ArgumentParser(prog="carbotui", description="the carbotui dashboard")
    parser.add_argument("--refresh", type=float, default=1.0, metavar="SECONDS",
                        help="seconds between data refreshes (default 1; + and - change it)")
    parser.add_argument("--no-mouse", action="store_true",
                        help="no mouse tracking: the terminal's own text selection works")
    args = parser.parse_args(argv)
    if args.refresh < 0.1:
        parser.error("--refresh must be at least 0.1 seconds")
    try:
        settings = config.load(config_path)
    except config.ConfigError as exc:
        print(f"ERROR: {exc}", file=sys.stderr)
        return 1
    from carbotui.tui.app import run
    return run(settings, refresh=args.refresh, mouse=not args.no_mouse)


def fleet(config_path: str) -> int:
    """Every worker of every node sharing this memcached, as JSON."""
    import asyncio

    from carbotui.core import settings as config

    from carbotui.services import nodes
    from carbotui.backends.memcache import Memcache

    settings = config.load(config_path)

    async def read():
        cache = Memcache(settings.memcached_servers, timeout=settings.memcached_timeout,
                         reconnect=settings.memcached_reconnect)
        try:
            return await nodes.members(cache), cache.available
        finally:
            await cache.close()
    members, reachable = asyncio.run(read())
    if not reachable:
        print("ERROR: memcached is not reachable; the fleet view needs it", file=sys.stderr)
        return 1
    json.dump(members, sys.stdout, indent=1)
    print()
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    config_path, argv = _config_path(argv)
    if argv[:1] == ["prov"]:
        from carbotui.cli import prov
        return prov.main(argv[1:], config_path)
    if argv[:1] == ["fleet"]:
        return fleet(config_path)
    if argv[:1] == ["blocks"]:
        from carbotui.cli import blocks as blockcli
        return blockcli.main(argv[1:], config_path)
    if argv[:1] == ["stats"]:
        return stats(config_path, argv[1:])
    if argv[:1] == ["check"]:
        return check(config_path, argv[1:])
    if argv[:1] in (["-h"], ["--help"], ["help"]):
        print(__doc__.strip())
        return 0
    if not argv or argv[0].startswith("--"):
        return dashboard(config_path, argv)
    print(__doc__.strip(), file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
