"""Driving the dashboard in tests: a fresh App on a source, settled on its first
snapshot (tests/tui on the fake source, tests/stack on the live one)."""
from __future__ import annotations

import asyncio
import os
import time

from textual.widgets import Input, Static

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


async def press(pilot, *keys: str) -> None:
    """Press `keys`, then let the App process what they did."""
    await pilot.press(*keys)
    await pilot.pause()


def table_of(app, selector: str):
    """The KeyedTable `selector` of the current screen."""
    from carbotui.tui.widgets.keyed_table import KeyedTable
    return app.screen.query_one(selector, KeyedTable)


def text_of(screen, selector: str) -> str:
    """What the Static `selector` of `screen` draws."""
    return str(screen.query_one(selector, Static).render())


def calls(source, name: str) -> list[tuple]:
    """The calls of action `name` the (fake) source recorded."""
    return [c for c in source.calls if c[0] == name]


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


def pilot_test(**drive_args):
    """`@pilot_test(size=(120, 40))` over `async def test_x(app, pilot)`: a pytest test
    that drives it against a fresh App on a FakeSource (`app.source`), as `drive` does."""
    def decorate(test):
        def run() -> None:
            drive(test, **drive_args)
        run.__name__, run.__qualname__, run.__doc__ = test.__name__, test.__qualname__, test.__doc__
        run.__module__ = test.__module__
        return run
    return decorate

