"""Driving the dashboard in tests: a fresh App on a source, settled on its first
snapshot (tests/tui on the fake source, tests/stack on the live one)."""
from __future__ import annotations

import asyncio
import os
import time

from textual.widgets import Input

os.environ["TZ"] = "UTC"          # every clock on screen is formatted in local time
time.tzset()
os.environ.setdefault("TEXTUAL_ANIMATIONS", "none")


def no_blink(monkeypatch) -> None:
    """No cursor blink: screenshots and screen reads do not depend on the clock."""
    monkeypatch.setattr(Input, "_toggle_cursor", lambda self: None, raising=False)


async def settle(pilot, until=lambda app: app.polls >= 1, timeout: float = 5.0) -> None:
    """Let the App process messages until `until(app)` holds (first snapshot by default)."""
    deadline = time.monotonic() + timeout
    while not until(pilot.app):
        if time.monotonic() > deadline:
            raise AssertionError("the dashboard did not reach the expected state in time")
        await pilot.pause(0.02)
    await pilot.pause()


def drive(test, *, source=None, size=(80, 24), refresh: float = 60.0):
    """Run `await test(app, pilot)` against a fresh App; returns the App afterwards."""
    from carbotui.tui.app import CarbotuiApp
    from demo.fake_source import FakeSource

    async def main():
        app = CarbotuiApp(source or FakeSource(), refresh=refresh, watch_terminal=False)
        async with app.run_test(size=size, notifications=True) as pilot:
            await settle(pilot)
            await test(app, pilot)
        return app

    return asyncio.run(main())
