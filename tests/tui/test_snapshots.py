"""SVG snapshots of every screen at 80x24 and 120x40 (pytest-textual-snapshot).

Data comes from FakeSource and the time zone is UTC (conftest), so the pictures
only change when the dashboard does. After an intended change:
    .venv/bin/pytest tests/tui/test_snapshots.py --snapshot-update
"""
from __future__ import annotations

import pytest

from carbotui.tui.app import CarbotuiApp
from demo.fake_source import FakeSource

SCREENS = {"overview": "1", "connections": "2", "backends": "3", "cache": "4", "audit": "5",
           "config": "6", "workers": "7", "alerts": "8", "help": "question_mark"}
SIZES = [(80, 24), (120, 40)]


def make_app() -> CarbotuiApp:
    return CarbotuiApp(FakeSource(), refresh=3600, watch_terminal=False)


async def first_data(pilot) -> None:
    while pilot.app.polls < 1:
        await pilot.pause(0.02)
    await pilot.pause()


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("screen", list(SCREENS))
def test_screen(snap_compare, screen, size):
    async def run_before(pilot):
        await first_data(pilot)
        await pilot.press(SCREENS[screen])
        await pilot.pause(0.2)

    assert snap_compare(make_app(), run_before=run_before, terminal_size=size)


def test_stack_down(snap_compare):
    source = FakeSource()
    source.stack_down()
    app = CarbotuiApp(source, refresh=3600, watch_terminal=False)
    assert snap_compare(app, run_before=first_data, terminal_size=(80, 24))


def test_kick_confirmation(snap_compare):
    async def run_before(pilot):
        await first_data(pilot)
        await pilot.press("2", "down", "x")
        await pilot.pause(0.2)

    assert snap_compare(make_app(), run_before=run_before, terminal_size=(80, 24))


def test_add_vhost_form(snap_compare):
    async def run_before(pilot):
        await first_data(pilot)
        await pilot.press("6", "a", *"imap.corp.test")
        await pilot.pause(0.2)

    assert snap_compare(make_app(), run_before=run_before, terminal_size=(80, 24))


def test_block_alert_ip_form(snap_compare):
    async def run_before(pilot):
        await first_data(pilot)
        await pilot.press("8", "b")
        await pilot.pause(0.2)

    assert snap_compare(make_app(), run_before=run_before, terminal_size=(80, 24))
