"""Regenerate screenshots/*.svg: every dashboard screen at 80x24 and 120x40.

    .venv/bin/python scripts/screenshots.py          deterministic data (FakeSource)
    .venv/bin/python scripts/screenshots.py --live   the running stack (make up), with
                                                     whatever traffic it has right now

Deterministic runs give byte-identical files for the same code, so a diff of
screenshots/ in a commit shows exactly what changed on screen.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ["TZ"] = "UTC"                      # clocks on screen, same everywhere
time.tzset()
os.environ.setdefault("TEXTUAL_ANIMATIONS", "none")

from carbotui.tui.app import CarbotuiApp  # noqa: E402

SHOTS = [  # file stem, keys to press after the first data arrived
    ("overview", ["1"]), ("connections", ["2"]), ("backends", ["3"]), ("cache", ["4"]),
    ("audit", ["5"]), ("config", ["6"]), ("workers", ["7"]), ("alerts", ["8"]),
    ("help", ["question_mark"]),
    ("connections-kick", ["2", "down", "x"]), ("config-add-vhost", ["6", "a", *"imap.corp.test"]),
    ("workers-log", ["7", "l"]), ("alerts-block", ["8", "b"]),
]
SIZES = [(80, 24), (120, 40)]


def make_source(live: bool):
    if live:
        from carbotui.core import settings as config
        from carbotui.tui.source import LiveSource
        return LiveSource(config.load(ROOT / "carbotui.toml"))
    from demo.fake_source import FakeSource
    return FakeSource()


async def shoot(name: str, keys: list[str], size: tuple[int, int], live: bool,
                out: Path) -> Path:
    app = CarbotuiApp(make_source(live), refresh=1.0 if live else 3600, watch_terminal=False)
    async with app.run_test(size=size) as pilot:
        while app.polls < (2 if live else 1):     # live: two polls, so rates are real
            await pilot.pause(0.05)
        await pilot.press(*keys)
        await pilot.pause(1.0 if live else 0.3)
        svg = app.export_screenshot(title=f"carbotui · {name} · {size[0]}x{size[1]}")
    path = out / f"{name}-{size[0]}x{size[1]}.svg"
    path.write_text(svg)
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--live", action="store_true", help="use the running stack")
    parser.add_argument("--out", type=Path, default=ROOT / "screenshots")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for name, keys in SHOTS:
        for size in SIZES:
            path = asyncio.run(shoot(name, keys, size, args.live, args.out))
            print(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
