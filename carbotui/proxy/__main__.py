"""Worker process entry: ``python -m carbotui.proxy --config carbotui.toml --worker N``.

supervisord starts one per core. SIGTERM drains and exits, SIGHUP reloads the
settings without dropping a session, SIGINT is treated like SIGTERM, SIGUSR1 reopens
audit.log, access.log and sessions.log (logrotate's postrotate).

``--user carbotui``: started as root, the worker runs as that user (carbotui/proxy/privileges.py),
keeping CAP_NET_BIND_SERVICE only when a listener's port needs it.
"""
from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import signal
import sys

from carbotui.core import settings as config
from carbotui.proxy import privileges, uvtrack

log = logging.getLogger("carbotui.proxy")


def _parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m carbotui.proxy", description="carbotui proxy worker")
    p.add_argument("--config", required=True, help="node settings (TOML)")
    p.add_argument("--worker", type=int, default=0, help="worker index (supervisord process_num)")
    p.add_argument("--user", help="run as this unprivileged user (the worker is started as root)")
    return p.parse_args(argv)


async def _serve(settings: config.Settings, index: int) -> None:
    from carbotui.proxy.worker import Worker

    worker = Worker(settings, index)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, lambda: loop.create_task(worker.drain()))
    loop.add_signal_handler(signal.SIGHUP, worker.reload)
    loop.add_signal_handler(signal.SIGUSR1, worker.reopen_logs)     # after logrotate
    await worker.start()
    # What exists now (modules, settings, listeners) lives as long as the worker: keep
    # it out of the collector's reach, so a full collection only walks session objects.
    gc.freeze()
    await worker.stopped.wait()


def _drop_privileges(user: str | None, settings: config.Settings) -> None:
    """Before anything else: no thread, socket or file exists yet."""
    if not user:
        if os.geteuid() == 0:
            log.warning("running as root: pass --user to run as an unprivileged user")
        return
    endpoints = [e for eps in settings.listen.values() for e in eps]
    low = privileges.privileged(e.port for e in endpoints)
    pw = privileges.drop(user, keep_bind=bool(low))
    log.info("running as %s (uid %d, gid %d)%s", pw.pw_name, pw.pw_uid, pw.pw_gid,
             f", with CAP_NET_BIND_SERVICE for port(s) {', '.join(map(str, low))}" if low else
             ", no capabilities")


def main(argv: list[str] | None = None) -> int:
    args = _parse(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format=f"%(asctime)s %(levelname)s proxy_{args.worker:02d} %(message)s")
    try:
        settings = config.load(args.config)
    except config.ConfigError as exc:
        print(f"carbotui worker: bad settings: {exc}", file=sys.stderr)
        return 2
    try:
        _drop_privileges(args.user, settings)
    except privileges.PrivilegeError as exc:
        print(f"carbotui worker: cannot run as {args.user}: {exc}", file=sys.stderr)
        return 1
    try:
        run = uvtrack.import_uvloop().run
    except ImportError:      # pragma: no cover - uvloop is a dependency
        run = asyncio.run
    try:
        run(_serve(settings, args.worker))
    except OSError as exc:
        print(f"carbotui worker: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
