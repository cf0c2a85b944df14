"""`carbotui blocks`: list, add and lift IP blocks (memcached, shared by every node).

    carbotui blocks [--json]                  the current blocks, soonest expiry first
    carbotui blocks add <ip> <seconds> [reason…]
                                              block an IP on every node; seconds may be
                                              written 90s, 15m, 2h or 7d (1 s to 30 days)
    carbotui blocks remove <ip>               lift a block

Exit status: 0 done, 1 refused or failed (bad address or duration, an IP not
blocked, memcached unreachable), 2 usage. Messages go to stderr, data to stdout,
so scripts can read the list and test the status.
"""
from __future__ import annotations

import json
import logging
import sys
import time

USAGE = ("usage: carbotui blocks [--json]\n"
         "       carbotui blocks add <ip> <seconds> [reason…]\n"
         "       carbotui blocks remove <ip>")


def _user() -> str:
    import getpass
    try:
        return getpass.getuser()
    except (OSError, KeyError):
        return "?"


def _left(seconds: float) -> str:
    from carbotui.tui.format import duration
    return duration(seconds)


def _table(blocks, now: float) -> str:
    rows = [("IP", "UNTIL", "LEFT", "BY", "REASON")]
    for b in blocks:
        rows.append((b.ip, time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(b.until)),
                     _left(b.until - now), b.by or "-", b.reason))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r[:4], widths)) + "  " + r[4]
                     for r in rows)


def main(argv: list[str], config_path: str) -> int:
    from carbotui.core import settings as config

    if argv[:1] in (["-h"], ["--help"], ["help"]):
        print(__doc__.strip())
        return 0
    command = argv[0] if argv and not argv[0].startswith("--") else "list"
    args = argv[1:] if command != "list" else argv
    if command == "list" and args not in ([], ["--json"]):
        print(USAGE, file=sys.stderr)
        return 2
    if (command == "add" and len(args) < 2) or (command == "remove" and len(args) != 1) \
            or command not in ("list", "add", "remove"):
        print(USAGE, file=sys.stderr)
        return 2
    try:
        settings = config.load(config_path)
    except (config.ConfigError, OSError) as exc:
        print(f"ERROR: {exc}", file=sys.stderr)
        return 1
    # The library logs for daemons ("blocked …", "memcached unavailable; logins are
    # routed through LDAP"); here the outcome is said once, below.
    library = logging.getLogger("carbotui")
    quiet = logging.NullHandler()
    library.addHandler(quiet)
    was = library.propagate
    library.propagate = False
    try:
        return _run(command, args, settings)
    finally:
        # Put logging back as it was: run in-process (tests, a shell), the command must
        # not silence the library for what runs after it.
        library.propagate = was
        library.removeHandler(quiet)


def _run(command: str, args: list[str], settings) -> int:
    from carbotui.admin.node import BlockStore, BlocksUnavailable

    store = BlockStore(settings)
    try:
        if command == "list":
            blocks = store.list()
            if args == ["--json"]:
                json.dump([b.to_json() for b in blocks], sys.stdout, indent=1)
                print()
            elif blocks:
                print(_table(blocks, time.time()))
            else:
                print("no IP is blocked", file=sys.stderr)
            return 0
        if command == "add":
            ip, seconds, reason = args[0], args[1], " ".join(args[2:])
            block = store.add(ip, seconds, reason or "blocked from the command line",
                              by=f"cli:{_user()}")
            print(f"{block.ip} blocked for {_left(block.until - block.since)} on every node "
                  f"(until {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(block.until))})",
                  file=sys.stderr)
            return 0
        ip = args[0]
        if store.remove(ip):
            print(f"block on {ip} lifted", file=sys.stderr)
            return 0
        print(f"ERROR: {ip} is not blocked (the block may have expired)", file=sys.stderr)
        return 1
    except ValueError as exc:
        print(f"ERROR: {exc}", file=sys.stderr)
        return 1
    except BlocksUnavailable as exc:
        print(f"ERROR: {exc}", file=sys.stderr)
        return 1
    finally:
        store.close()
