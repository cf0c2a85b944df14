"""Worker process entry: ``python -m workers --config carbotui.toml --worker N``.

supervisord starts one per core. SIGTERM drains and exits, SIGHUP reloads the
settings without dropping a session, SIGINT is treated like SIGTERM.
"""
from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import signal
import sys

from carbotui import config


def _parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m workers", description="carbotui proxy worker")
    p.add_argument("--config", required=True, help="node settings (TOML)")
    p.add_argument("--worker", type=int, default=0, help="worker index (supervisord process_num)")
    return p.parse_args(argv)


async def _serve(settings: config.Settings, index: int) -> None:
    from workers.worker import Worker

    worker = Worker(settings, index)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, lambda: loop.create_task(worker.drain()))
    loop.add_signal_handler(signal.SIGHUP, worker.reload)
    await worker.start()
    # What exists now (modules, settings, listeners) lives as long as the worker: keep
    # it out of the collector's reach, so a full collection only walks session objects.
    gc.freeze()
    await worker.stopped.wait()


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
        import uvloop
    except ImportError:      # pragma: no cover - uvloop is a dependency
        uvloop = None
    try:
        if uvloop is not None:
            uvloop.run(_serve(settings, args.worker))
        else:
            asyncio.run(_serve(settings, args.worker))
    except OSError as exc:
        print(f"carbotui worker: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
