"""M5 (security review): nothing a client sends is parsed as Textual/Rich markup.

Account names come from the login a client typed (audit lines, alerts, sessions, block
reasons). Before the fix a name `[/x]` made DataTable and the toast raise MarkupError,
and the dashboard exited - for good, since alerts.log is reloaded at start - and a name
`[link=http://evil]x[/link]` drew a clickable link. Each test puts such names where a
real node would have them and looks at what is drawn.
"""
from __future__ import annotations

import dataclasses

import pytest
from rich.text import Text
from textual.widgets import Log, Static
from textual.widgets._toast import Toast

from carbotui.core.audit import AuditEvent, failure
from carbotui.services.throttle import Block
from carbotui.tui.screens.alerts import AlertsScreen
from carbotui.tui.screens.audit import AuditScreen
from carbotui.tui.screens.connections import ConnectionsScreen
from carbotui.tui.widgets.modals import ConfirmModal
from demo.fake_source import NOW, FakeSource, make_alert

from tests.support.tui import drive, settle

HOSTILE = ["[/x]", "[link=http://evil]x[/link]", "[@click=app.quit]x[/]", "[b red]boss[/]"]


def plain(cell) -> str:
    assert isinstance(cell, Text), f"{cell!r} reached the table as markup text"
    assert not any("link" in str(span.style) or "@" in str(span.style) for span in cell.spans)
    return cell.plain


def drawn(widget) -> str:
    """What a Static/Label/Toast draws, as text (rendering is what raised before)."""
    return str(widget.render())


def hostile_source() -> FakeSource:
    source = FakeSource()
    for i, name in enumerate(HOSTILE):
        # in alerts.log at start (history, reloaded every start) ...
        source.add_alert(make_alert("acct", name, 10 + i, NOW - 30 - i,
                                    ips=(f"192.0.2.{i + 60}",), accounts=(name,)))
        source.add_audit(AuditEvent(account=name, protocol="imap", client_ip="192.0.2.60",
                                    proxy_ip="127.0.0.1", error=failure(name, "invalid password"),
                                    timestamp=NOW - 20 + i))
    source.blocks["192.0.2.61"] = Block(
        "192.0.2.61", f"auditwatch ipacct: 10 failed logins from 192.0.2.61 against {HOSTILE[1]}",
        since=NOW - 10, until=NOW + 3600, by="[/x]")
    source.sessions[0] = dataclasses.replace(source.sessions[0], account=HOSTILE[1])
    source.sessions[1] = dataclasses.replace(source.sessions[1], account=HOSTILE[0])
    return source


def test_alerts_and_blocks_with_markup_in_names_show_as_text():
    async def test(app, pilot):
        await pilot.press("8")
        await settle(pilot, until=lambda a: isinstance(a.screen, AlertsScreen)
                     and a.screen.alert_table.row_count == len(a.alerts) == 9)
        screen = app.screen
        table = screen.alert_table
        accounts = {plain(table.get_row_at(i)[4]) for i in range(table.row_count)}
        assert set(HOSTILE) <= accounts
        blocks = screen.block_table
        [row] = [blocks.get_row_at(i) for i in range(blocks.row_count)
                 if plain(blocks.get_row_at(i)[0]) == "192.0.2.61"]
        assert plain(row[3]) == "[/x]" and HOSTILE[1] in plain(row[4])
        # the detail line of each hostile alert, selected in turn
        seen = set()
        for i in range(table.row_count):
            table.move_cursor(row=i)
            await pilot.pause()
            seen.add(drawn(screen.query_one("#detail", Static)))
        assert all(any(f"accounts {name}" in d for d in seen) for name in HOSTILE)
        # lifting the block asks first: the question quotes the reason and who set it
        blocks.focus()
        blocks.move_cursor(row=[plain(blocks.get_row_at(i)[0])
                                for i in range(blocks.row_count)].index("192.0.2.61"))
        await pilot.press("u")
        await settle(pilot, until=lambda a: isinstance(a.screen, ConfirmModal))
        detail = drawn(app.screen.query_one(".detail", Static))
        assert "Blocked by [/x]" in detail and HOSTILE[1] in detail
        await pilot.press("n")
        assert app.is_running
    drive(test, source=hostile_source())


@pytest.mark.parametrize("name", HOSTILE)
def test_a_new_alert_toast_with_markup_shows_it_as_text(name):
    source = FakeSource()

    async def test(app, pilot):
        await settle(pilot, until=lambda a: len(a.alerts) == 5)
        source.add_alert(make_alert("acct", name, 12, NOW - 1, ips=("192.0.2.70",),
                                    accounts=(name,)))
        await settle(pilot, until=lambda a: a.alerts_announced == 1)
        await settle(pilot, until=lambda a: a.screen.query(Toast))
        [toast] = app.screen.query(Toast)
        text = drawn(toast)
        assert f"12 failed logins against {name} from 1 IP(s)" in text
        assert all(not n.markup for n in app._notifications)
        assert app.is_running
    drive(test, source=source)


def test_every_notify_is_plain_text_whoever_calls_it():
    async def test(app, pilot):
        app.screen.notify("[/x] from a screen")
        app.notify("[link=http://evil]x[/link] from the app", markup=True)
        await settle(pilot, until=lambda a: len(a.screen.query(Toast)) == 2)
        texts = sorted(drawn(t) for t in app.screen.query(Toast))
        assert texts == ["[/x] from a screen", "[link=http://evil]x[/link] from the app"]
    drive(test)


def test_sessions_with_markup_in_the_account_and_the_kick_question():
    async def test(app, pilot):
        await pilot.press("2")
        await settle(pilot, until=lambda a: isinstance(a.screen, ConnectionsScreen)
                     and a.screen.table.row_count > 0)
        screen = app.screen
        table = screen.table
        accounts = [plain(table.get_row_at(i)[0]) for i in range(table.row_count)]
        assert HOSTILE[0] in accounts and HOSTILE[1] in accounts
        table.move_cursor(row=accounts.index(HOSTILE[1]))
        await pilot.press("x")
        await settle(pilot, until=lambda a: isinstance(a.screen, ConfirmModal))
        assert drawn(app.screen.query_one(".detail", Static)).startswith(
            f"{HOSTILE[1]} from ")
        await pilot.press("n")
    drive(test, source=hostile_source())


def test_audit_lines_with_markup_in_the_account_are_text():
    async def test(app, pilot):
        await pilot.press("5")
        await settle(pilot, until=lambda a: isinstance(a.screen, AuditScreen)
                     and a.screen.shown > 0)
        log = app.screen.query_one("#log", Log)
        lines = "\n".join(log.lines)
        assert all(name in lines for name in HOSTILE)
        assert "top account" in drawn(app.screen.query_one("#summary", Static))
    drive(test, source=hostile_source())
