"""Pilot tests of the Alerts screen, the alert notifications and the IP block actions,
against FakeSource (five alerts in alerts.log at start, two IP blocks)."""
from __future__ import annotations

from textual.widgets import Input

from carbotui.tui.screens.alerts import AlertsScreen
from carbotui.tui.screens.help import HelpScreen
from carbotui.tui.widgets.modals import BlockModal, ConfirmModal
from demo.fake_source import NOW, FakeSource, make_alert

from tests.support.tui import calls, drive, press, settle, table_of, text_of


def toasts(app) -> list:
    return list(app._notifications)


async def on_alerts(app, pilot) -> AlertsScreen:
    await pilot.press("8")
    await settle(pilot, until=lambda a: isinstance(a.screen, AlertsScreen)
                 and a.screen.alert_table.row_count == len(a.alerts) > 0)
    return app.screen


def test_alerts_newest_first_with_who_what_when_and_no_toast_for_the_past():
    async def test(app, pilot):
        screen = await on_alerts(app, pilot)
        table = screen.alert_table
        assert table.row_count == 5
        rows = [table.get_row_at(i) for i in range(table.row_count)]
        times = [r[0].sort_value for r in rows]
        assert times == sorted(times, reverse=True), "newest first"
        newest = rows[0]
        assert newest[0].plain == "21:28:25" and newest[1].plain == "acct"
        assert newest[2].plain == "12/10"
        assert newest[3].plain == "203.0.113.19 +2" and newest[4].plain == "boss@corp.test"
        # the ip alert's IP is blocked (auditwatch did it): said in its row
        ip_row = next(r for r in rows if r[1].plain == "ip")
        assert ip_row[5].plain == "blocked"
        detail = text_of(screen, "#detail")
        assert "acct" in detail and "12 failed logins against boss@corp.test" in detail
        assert "203.0.113.19, 192.0.2.77, 198.51.100.4" in detail and "in 60 s" in detail
        assert "21:27:43–21:28:25" in detail
        await pilot.press("down")
        assert "20 failed logins from 203.0.113.5" in text_of(screen, "#detail")
        # the blocks, soonest expiry first
        blocks = screen.block_table
        assert [blocks.get_row_at(i)[0].plain for i in range(2)] == ["203.0.113.5",
                                                                      "198.51.100.23"]
        assert "2 IP blocks" in text_of(screen, "#blocks-title")
        assert app.alerts_announced == 0 and not toasts(app), \
            "alerts already in the file at start are history, not news"
    drive(test)


def test_overview_counts_alerts_of_the_last_hour_and_active_blocks():
    source = FakeSource()

    async def test(app, pilot):
        await settle(pilot, until=lambda a: len(a.alerts) == 5)
        await pilot.pause()
        line = text_of(app.screen, "#security")
        assert "Alerts 4 in the last hour" in line          # one is two hours old
        assert "IP blocks 2 active" in line
        source.add_alert(make_alert("ip", "192.0.2.9", 20, NOW - 5, ips=("192.0.2.9",),
                                    accounts=("user02@demo.test",)))
        await settle(pilot, until=lambda a: "Alerts 5 in" in text_of(a.screen, "#security"))
    drive(test, source=source)


def test_a_new_alert_is_notified_on_any_screen_and_listed_on_top():
    source = FakeSource()

    async def test(app, pilot):
        await settle(pilot, until=lambda a: len(a.alerts) == 5)
        await pilot.press("2")                    # any screen: Connections
        alert = make_alert("ipacct", "192.0.2.200 user11@demo.test", 10, NOW - 2,
                           ips=("192.0.2.200",), accounts=("user11@demo.test",))
        source.add_alert(alert)
        await settle(pilot, until=lambda a: a.alerts_announced == 1)
        notes = toasts(app)
        assert len(notes) == 1 and notes[0].severity == "warning"
        assert "10 failed logins from 192.0.2.200 against user11@demo.test" in notes[0].message
        assert "ipacct" in notes[0].title
        screen = await on_alerts(app, pilot)
        assert screen.alert_table.get_row_at(0)[3].plain == "192.0.2.200"
        # a burst is announced in a few toasts, not one per alert
        for i in range(6):
            source.add_alert(make_alert("ip", f"192.0.2.{i + 10}", 20, NOW - 1 + i * 0.01,
                                        ips=(f"192.0.2.{i + 10}",)))
        await settle(pilot, until=lambda a: a.alerts_announced == 7)
        assert len(toasts(app)) == 1 + 4
        assert any("3 more new alerts" in n.message for n in toasts(app))
        await settle(pilot, until=lambda a: a.screen.alert_table.row_count == 12)
        # the cursor was on the newest alert: it follows the stream
        assert screen.selected_alert().key == "192.0.2.15"
        assert "192.0.2.15" in text_of(screen, "#detail")
    drive(test, source=source)


def test_block_the_selected_alerts_ip_from_a_prefilled_form():
    source = FakeSource()

    async def test(app, pilot):
        screen = await on_alerts(app, pilot)
        await pilot.press("b")                    # newest alert: boss@corp.test, top IP .19
        await pilot.pause()
        modal = app.screen
        assert isinstance(modal, BlockModal)
        assert modal.query_one("#ip", Input).value == "203.0.113.19"
        assert modal.query_one("#duration", Input).value == "1h"
        assert "alert acct" in modal.query_one("#reason", Input).value
        await pilot.press("enter", "enter")       # duration, then reason: submit
        await settle(pilot, until=lambda a: calls(source, "block"))
        assert calls(source, "block")[0][1:3] == ("203.0.113.19", "1h")
        await settle(pilot, until=lambda a: "203.0.113.19" in a.screen.blocks)
        assert screen.block_table.row_count == 3
        assert screen.alert_table.get_row_at(0)[5].plain == "blocked"
        assert any("203.0.113.19 blocked" in n.message for n in toasts(app))
    drive(test, source=source)


def test_add_block_validates_ip_duration_and_whitelist_then_blocks():
    source = FakeSource()

    async def test(app, pilot):
        screen = await on_alerts(app, pilot)
        await press(pilot, "a")
        modal = app.screen
        assert isinstance(modal, BlockModal) and modal.query_one("#ip", Input).has_focus

        async def submit(ip: str, duration: str) -> str:
            modal.query_one("#ip", Input).value = ip
            modal.query_one("#duration", Input).value = duration
            await press(pilot, "ctrl+s")
            if app.screen is not modal:
                return ""                         # accepted: the dialog closed
            return text_of(modal, "#error")

        assert "'300.1.1.1' is not an IPv4 or IPv6 address" in await submit("300.1.1.1", "1h")
        assert "1 second to 30 days" in await submit("192.0.2.1", "31d")
        assert "1 second to 30 days" in await submit("192.0.2.1", "0")
        assert "not a duration" in await submit("192.0.2.1", "soon")
        assert "whitelist" in await submit("127.0.0.1", "1h")
        assert app.screen is modal and not calls(source, "block")
        assert await submit("2001:DB8::7", "90s") == ""
        await settle(pilot, until=lambda a: "2001:db8::7" in a.screen.blocks)
        assert calls(source, "block")[0][1:3] == ("2001:DB8::7", "90s")
        block = screen.blocks["2001:db8::7"]
        assert block.until - block.since == 90
        # escape cancels without blocking
        await press(pilot, "a")
        await press(pilot, "escape")
        assert isinstance(app.screen, AlertsScreen) and len(calls(source, "block")) == 1
    drive(test, source=source)


def test_lift_a_block_asks_first():
    source = FakeSource()

    async def test(app, pilot):
        screen = await on_alerts(app, pilot)
        await pilot.press("tab")                  # to the block list
        assert screen.focused is screen.block_table
        await pilot.press("down", "up")           # 203.0.113.5 expires first
        await press(pilot, "u")
        assert isinstance(app.screen, ConfirmModal)
        assert "203.0.113.5" in app.screen.question
        await press(pilot, "n")
        assert not calls(source, "unblock")
        await press(pilot, "u")
        await pilot.press("y")
        await settle(pilot, until=lambda a: "203.0.113.5" not in a.screen.blocks)
        assert calls(source, "unblock") == [("unblock", "203.0.113.5")]
        assert screen.block_table.row_count == 1
        ip_row = next(screen.alert_table.get_row_at(i) for i in range(5)
                      if screen.alert_table.get_row_at(i)[1].plain == "ip")
        assert ip_row[5].plain == "auto"          # auditwatch had blocked it; no longer
        await pilot.press("tab")
        assert screen.focused is screen.alert_table
    drive(test, source=source)


def test_unknown_blocks_are_said_not_shown_as_none():
    import dataclasses
    source = FakeSource()
    collect = source.collect
    source.collect = lambda: dataclasses.replace(
        collect(), blocks=(), blocks_error="memcached (127.0.0.1:12211) does not answer")

    async def test(app, pilot):
        assert "IP blocks unknown" in text_of(app.screen, "#security")
        screen = await on_alerts(app, pilot)
        assert "does not answer" in text_of(screen, "#blocks-title")
    drive(test, source=source)


def test_help_and_palette_list_the_alerts_actions():
    async def test(app, pilot):
        await on_alerts(app, pilot)
        await press(pilot, "question_mark")
        assert isinstance(app.screen, HelpScreen)
        ids = [b.id for _, b in app.screen.bindings_list]
        for binding_id in ("screen.alerts", "alerts.block_ip", "alerts.add_block",
                           "alerts.unblock", "alerts.switch_table"):
            assert binding_id in ids
        await press(pilot, "escape")
        titles = [c.title for c in app.get_system_commands(app.screen)]
        assert {"Alerts: Block IP", "Alerts: Add block", "Alerts: Lift block"} <= set(titles)
        assert "Alerts" in titles                 # the screen itself, key 8
    drive(test)
