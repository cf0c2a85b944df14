"""Dashboard tests: deterministic time zone, no cursor blink, a helper to drive the App.

Pilot tests run the App with a FakeSource (demo.fake_source) inside asyncio.run,
so they need no pytest-asyncio.
"""
from __future__ import annotations

import pytest

from tests.support.tui import drive, no_blink, settle  # noqa: F401  (the tests import them)


@pytest.fixture(autouse=True)
def _no_blink(monkeypatch):
    no_blink(monkeypatch)
