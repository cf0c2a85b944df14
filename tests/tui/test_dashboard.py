"""Pilot tests: every screen and every binding, against FakeSource."""
from __future__ import annotations

import dataclasses

from textual.binding import Binding
from textual.widgets import Input, Log, Static

from carbotui.core.audit import AuditEvent, failure
from carbotui.tui.app import SCREEN_CLASSES, CarbotuiApp
from carbotui.tui.screens.help import HelpScreen
from carbotui.tui.widgets.keyed_table import KeyedTable
from carbotui.tui.widgets.modals import ConfirmModal, PromptModal, VhostModal
from demo.fake_source import NOW, FakeSource

from tests.support.tui import drive, settle


def text_of(screen, selector: str) -> str:
    return str(screen.query_one(selector, Static).render())


def calls(source, name):
    return [c for c in source.calls if c[0] == name]


async def after_action(pilot, source, name, count=1):
    await settle(pilot, until=lambda app: len(calls(source, name)) >= count)
    await pilot.pause(0.1)


# --- structure -------------------------------------------------------------------------------

def test_every_binding_has_an_id_and_a_description():
    bindings = [b for b in CarbotuiApp.BINDINGS if isinstance(b, Binding)]
    for cls in SCREEN_CLASSES.values():
        bindings += [b for b in cls.BINDINGS if isinstance(b, Binding)]
    ids = [b.id for b in bindings]
    assert all(ids) and all(b.description for b in bindings)
    assert len(ids) == len(set(ids)), "binding ids must be unique (they are keymap keys)"


def test_number_keys_and_brackets_switch_screens():
    async def test(app, pilot):
        assert len(SCREEN_CLASSES) == 8
        for key, mode in zip("12345678", SCREEN_CLASSES):
            await pilot.press(key)
            await pilot.pause()
            assert app.current_mode == mode
            assert app.screen.MODE == mode
        await pilot.press("]")
        await pilot.pause()
        assert app.current_mode == "overview"
        await pilot.press("[")
        await pilot.pause()
        assert app.current_mode == "alerts"
    drive(test)


# --- overview ----------------------------------------------------------------------------

def test_overview_totals_sparklines_workers():
    async def test(app, pilot):
        screen = app.screen
        totals = text_of(screen, "#totals")
        assert "Sessions 14" in totals and "Workers 2/2" in totals and "2.4/s" in totals
        assert screen.query_one("#workers", KeyedTable).row_count == 2
        assert len(screen.query_one("#spark-sessions").data) == 120
        assert not screen.query_one("#problems").display
        assert "● live" in text_of(screen, "#status")
    drive(test)


def test_no_redraw_without_new_data():
    async def test(app, pilot):
        assert app.redraws == 1
        app.poll_now()
        await settle(pilot, until=lambda a: a.polls >= 2)
        assert app.redraws == 1, "an identical snapshot must not redraw"
        app.source.now += 1                     # only the time moved
        app.poll_now()
        await settle(pilot, until=lambda a: a.polls >= 3)
        assert app.redraws == 1
        app.source.sessions.pop()
        app.poll_now()
        await settle(pilot, until=lambda a: a.polls >= 4)
        assert app.redraws == 2
    drive(test)


def test_stack_down_is_shown_and_recovers_by_itself():
    source = FakeSource()

    async def test(app, pilot):
        source.stack_down()
        await settle(pilot, until=lambda a: a.stack_state() == "down")
        assert "STACK DOWN" in text_of(app.screen, "#status")
        problems = text_of(app.screen, "#problems")
        assert "supervisord is not running" in problems and "memcached" in problems
        source.stack_up()
        await settle(pilot, until=lambda a: a.stack_state() == "ok")
        assert "● live" in text_of(app.screen, "#status")
        assert not app.screen.query_one("#problems").display
    drive(test, source=source, refresh=0.1)


def test_a_failing_collect_is_shown_then_retried():
    source = FakeSource()

    async def test(app, pilot):
        source.fail_next = "boom"
        app.poll_now()
        await settle(pilot, until=lambda a: a.data_error)
        assert "NO DATA" in text_of(app.screen, "#status") and "boom" in app.data_error
        await settle(pilot, until=lambda a: not a.data_error)
        assert "● live" in text_of(app.screen, "#status")
    drive(test, source=source, refresh=0.1)


def test_pause_refresh_now_and_refresh_interval_keys():
    async def test(app, pilot):
        await pilot.press("p")
        assert app.paused and "PAUSED" in text_of(app.screen, "#status")
        before = app.source.collects
        await pilot.press("ctrl+r")
        await settle(pilot, until=lambda a: a.source.collects > before)
        await pilot.press("p")
        assert not app.paused
        await pilot.press("minus")
        assert app.refresh_interval == 60               # already the slowest
        await pilot.press("plus", "plus")
        assert app.refresh_interval == 10
        await pilot.press("minus")
        assert app.refresh_interval == 30
    drive(test)


# --- connections --------------------------------------------------------------------------

def test_connections_keyed_updates_keep_the_cursor_on_its_row():
    source = FakeSource()

    async def test(app, pilot):
        await pilot.press("2")
        await pilot.pause()
        table = app.screen.query_one("#sessions", KeyedTable)
        assert table.row_count == 14
        await pilot.press("down", "down", "down")
        chosen = table.selected_key
        # A session above the cursor ends and bytes of another change: the cursor
        # must stay on the same session, not jump.
        first = table.ordered_rows[0].key.value
        source.sessions = [s if str(s.id) != chosen else dataclasses.replace(s, bytes_in=9)
                           for s in source.sessions if str(s.id) != first]
        app.poll_now()
        await settle(pilot, until=lambda a: a.polls >= 2)
        assert table.row_count == 13
        assert table.selected_key == chosen
        assert table.cells(chosen)[4].plain == "9 B"
    drive(test, source=source)


def test_connections_sort_reverse_and_filter():
    async def test(app, pilot):
        await pilot.press("2")
        await pilot.pause()
        table = app.screen.query_one("#sessions", KeyedTable)
        await pilot.press("down")
        chosen = table.selected_key
        await pilot.press("s")                          # started -> account
        assert table.sort_column == "account" and table.selected_key == chosen
        assert table.ordered_rows[0].key.value == str(app.source.sessions[0].id)
        await pilot.press("r")
        assert table.ordered_rows[0].key.value == str(app.source.sessions[-1].id)
        assert "sorted by account ↓" in text_of(app.screen, "#summary")

        await pilot.press("slash")
        assert app.screen.query_one("#filter", Input).has_focus
        await pilot.press(*"ip:192.0.2.77", "enter")
        await pilot.pause()
        assert table.row_count == 3                     # sessions 3, 8, 13
        assert "3 of 14 sessions" in text_of(app.screen, "#summary")
        # the box selects its text on focus: typing replaces the whole query
        await pilot.press("slash", *"ip:192.0.2.77 proto:pop3s", "enter")
        await pilot.pause()
        assert table.row_count == 1
        await pilot.press("escape")
        await pilot.pause()
        assert table.row_count == 14
    drive(test)


def test_kick_asks_first_then_closes_the_session():
    source = FakeSource()

    async def test(app, pilot):
        await pilot.press("2")
        await pilot.pause()
        table = app.screen.query_one("#sessions", KeyedTable)
        chosen = table.selected_key
        await pilot.press("x")
        await pilot.pause()
        assert isinstance(app.screen, ConfirmModal)
        await pilot.press("n")
        await pilot.pause()
        assert not calls(source, "kick")
        await pilot.press("x")
        await pilot.pause()
        await pilot.press("y")
        await after_action(pilot, source, "kick")
        assert calls(source, "kick")[0][2] == int(chosen)
        await settle(pilot, until=lambda a: chosen not in a.screen.query_one(
            "#sessions", KeyedTable).rows)
    drive(test, source=source)


# --- backends / cache --------------------------------------------------------------------------

def test_backends_table_and_maintenance_toggle():
    source = FakeSource()

    async def test(app, pilot):
        await pilot.press("3")
        await pilot.pause()
        table = app.screen.query_one("#backends", KeyedTable)
        assert table.row_count == 2
        assert table.cells("mbox2.demo.test")[1].plain == "errors"
        assert "█" in text_of(app.screen, "#load")
        await pilot.press("m")
        await pilot.pause()
        assert isinstance(app.screen, ConfirmModal)
        await pilot.press("y")
        await after_action(pilot, source, "maintenance")
        assert calls(source, "maintenance") == [("maintenance", "mbox1.demo.test", True)]
        await settle(pilot, until=lambda a: table.cells("mbox1.demo.test")[1].plain
                     == "maintenance")
        await pilot.press("m", "y")
        await after_action(pilot, source, "maintenance", 2)
        assert calls(source, "maintenance")[1] == ("maintenance", "mbox1.demo.test", False)
    drive(test, source=source)


def test_cache_ratios_and_flush_with_validation():
    source = FakeSource()

    async def test(app, pilot):
        await pilot.press("4")
        await pilot.pause()
        workers = app.screen.query_one("#workers", KeyedTable)
        assert workers.cells("proxy:proxy_00")[3].plain == "88.2%"
        assert app.screen.query_one("#memcached", KeyedTable).cells(
            "127.0.0.1:12211")[2].plain == "85.8%"
        await pilot.press("f")
        await pilot.pause()
        assert isinstance(app.screen, PromptModal)
        await pilot.press(*"user03", "enter")
        await pilot.pause()
        assert isinstance(app.screen, PromptModal), "an incomplete account is refused"
        assert "full account name" in str(app.screen.query_one("#error", Static).render())
        await pilot.press(*"@demo.test", "enter")
        await after_action(pilot, source, "flush_routes")
        assert calls(source, "flush_routes") == [("flush_routes", "user03@demo.test")]
    drive(test, source=source)


# --- audit ---------------------------------------------------------------------------------

def test_audit_streams_failures_and_filters():
    source = FakeSource()

    async def test(app, pilot):
        await pilot.press("5")
        await settle(pilot, until=lambda a: a.screen.query_one("#log", Log).line_count >= 8)
        log = app.screen.query_one("#log", Log)
        assert log.line_count == 8                      # failures only
        assert "8 failures" in text_of(app.screen, "#summary")
        source.add_audit(AuditEvent(account="boss@corp.test", protocol="imap",
                                    client_ip="192.0.2.200", timestamp=NOW,
                                    error=failure("boss@corp.test", "invalid password")))
        await settle(pilot, until=lambda a: log.line_count == 9)
        assert "boss@corp.test" in log.lines[-1] and "192.0.2.200" in log.lines[-1]

        await pilot.press("slash", *"ip:192.0.2.200", "enter")
        await pilot.pause()
        assert log.line_count == 1
        await pilot.press("escape")
        await pilot.pause()
        assert log.line_count == 9
        await pilot.press("s")                          # successes too
        await pilot.pause()
        assert log.line_count == 13
        await pilot.press("slash", *"proto:pop3 user", "enter")
        await pilot.pause()
        assert all(" pop3 " in line for line in log.lines)
        await pilot.press("escape", "c")
        await pilot.pause()
        assert log.line_count == 0
        assert "0 failures" in text_of(app.screen, "#summary")
    drive(test, source=source)


# --- config -------------------------------------------------------------------------------------

def test_config_mail_mode_switch_needs_confirmation():
    source = FakeSource()

    async def test(app, pilot):
        await pilot.press("6")
        await pilot.pause()
        assert "Mail mode redirect" in text_of(app.screen, "#mode")
        await pilot.press("m")
        await pilot.pause()
        assert isinstance(app.screen, ConfirmModal)
        await pilot.press("escape")
        await pilot.pause()
        assert not calls(source, "set_mail_mode")
        await pilot.press("m", "y")
        await after_action(pilot, source, "set_mail_mode")
        assert calls(source, "set_mail_mode") == [("set_mail_mode", "https")]
        await settle(pilot, until=lambda a: "Mail mode https" in text_of(a.screen, "#mode"))
        applied = app.screen.query_one("#applied", KeyedTable)
        assert applied.cells("proxy:proxy_00")[1].plain == "… pending"   # LDAP changed
        await pilot.press("ctrl+r")                                       # next poll: the
        await settle(pilot, until=lambda a: applied.cells(               # workers applied it
            "proxy:proxy_00")[1].plain == "✓ applied")
        assert source.applied[2] == "https"
    drive(test, source=source)


def test_config_domains_certificates_and_applied_per_worker():
    async def test(app, pilot):
        await pilot.press("6")
        await pilot.pause()
        domains = app.screen.query_one("#domains", KeyedTable)
        assert domains.row_count == 2
        assert domains.cells("corp.test")[4].plain == "17"
        assert "EXPIRES IN 17 DAYS" in text_of(app.screen, "#detail")   # corp.test first
        await pilot.press("down")
        await pilot.pause()
        assert "mail.demo.test" in text_of(app.screen, "#detail")
        applied = app.screen.query_one("#applied", KeyedTable)
        assert applied.cells("proxy:proxy_00")[1].plain == "✓ applied"
        assert applied.cells("proxy:proxy_00")[2] == "21:28:25"
    drive(test, size=(120, 40))


def test_config_add_vhost_validates_then_generates():
    source = FakeSource()

    async def test(app, pilot):
        await pilot.press("6")
        await pilot.pause()
        await pilot.press("a")
        await pilot.pause()
        assert isinstance(app.screen, VhostModal)
        await pilot.press(*"bad_name.corp.test", "enter")
        await pilot.pause()
        assert "letters, digits" in str(app.screen.query_one("#error", Static).render())
        app.screen.query_one("#fqdn", Input).value = ""
        await pilot.press(*"mail.demo.test", "enter")
        await pilot.pause()
        assert "already a virtual hostname of demo.test" in str(
            app.screen.query_one("#error", Static).render())
        app.screen.query_one("#fqdn", Input).value = ""
        await pilot.press(*"imap.corp.test", "enter")
        await after_action(pilot, source, "add_vhost")
        assert calls(source, "add_vhost") == [("add_vhost", "corp.test", "imap.corp.test",
                                               True, "", "")]
        await settle(pilot, until=lambda a: "imap.corp.test" in str(
            a.screen.query_one("#domains", KeyedTable).cells("corp.test")[1]))
    drive(test, source=source)


def test_config_add_vhost_with_imported_files():
    source = FakeSource()

    async def test(app, pilot):
        await pilot.press("6", "a")
        await pilot.pause()
        await pilot.press(*"pop.corp.test", "tab", "down", "enter")   # radio: import
        await pilot.pause()
        await pilot.press("tab", *"/tmp/c.pem", "enter", *"/tmp/k.pem", "enter")
        await after_action(pilot, source, "add_vhost")
        assert calls(source, "add_vhost") == [("add_vhost", "corp.test", "pop.corp.test",
                                               False, "/tmp/c.pem", "/tmp/k.pem")]
    drive(test, source=source)


def test_config_remove_vhost_and_set_vip():
    source = FakeSource()

    async def test(app, pilot):
        await pilot.press("6")
        await pilot.pause()
        await pilot.press("d")
        await pilot.pause()
        assert isinstance(app.screen, ConfirmModal)
        await pilot.press("y")
        await after_action(pilot, source, "remove_vhost")
        assert calls(source, "remove_vhost") == [("remove_vhost", "corp.test",
                                                  "webmail.corp.test")]
        await pilot.press("i")
        await pilot.pause()
        box = app.screen.query_one(Input)
        box.value = ""
        await pilot.press(*"300.1.1.1", "enter")
        await pilot.pause()
        assert isinstance(app.screen, PromptModal)
        box.value = ""
        await pilot.press(*"127.0.0.9", "enter")
        await after_action(pilot, source, "set_vip")
        assert calls(source, "set_vip") == [("set_vip", "corp.test", "127.0.0.9")]
    drive(test, source=source)


# --- workers ---------------------------------------------------------------------------------

def test_workers_start_stop_restart_rolling_and_log():
    source = FakeSource()

    async def test(app, pilot):
        await pilot.press("7")
        await pilot.pause()
        table = app.screen.query_one("#processes", KeyedTable)
        assert table.row_count == 6 and table.selected_key == "proxy:proxy_00"
        await pilot.press("r")
        await after_action(pilot, source, "restart")
        await settle(pilot, until=lambda a: table.cells("proxy:proxy_00")[2].plain == "4200")

        await pilot.press("x")
        await pilot.pause()
        assert isinstance(app.screen, ConfirmModal)
        await pilot.press("y")
        await after_action(pilot, source, "stop")
        await settle(pilot, until=lambda a: table.cells("proxy:proxy_00")[1].plain == "STOPPED")
        await pilot.press("s")
        await after_action(pilot, source, "start")
        await settle(pilot, until=lambda a: table.cells("proxy:proxy_00")[1].plain == "RUNNING")

        await pilot.press("R")
        await pilot.pause()
        assert isinstance(app.screen, ConfirmModal)
        await pilot.press("y")
        await after_action(pilot, source, "rolling_restart")
        assert source.pids == {"proxy_00": 4300, "proxy_01": 4201}

        await pilot.press("l")
        log = app.screen.query_one("#log", Log)
        await settle(pilot, until=lambda a: log.line_count >= 40)
        assert "session 39 closed" in log.lines[-2] or "session 39 closed" in log.lines[-1]
        await pilot.press("l")
        await pilot.pause()
        assert not log.display
    drive(test, source=source)


# --- help, palette, quit ---------------------------------------------------------------------------

def test_help_lists_every_binding():
    async def test(app, pilot):
        await pilot.press("question_mark")
        await pilot.pause()
        assert isinstance(app.screen, HelpScreen)
        table = app.screen.query_one("#keys")
        assert table.row_count == len(app.all_bindings())
        ids = {str(table.get_row_at(i)[3]) for i in range(table.row_count)}
        assert {"connections.kick", "workers.rolling", "config.mail_mode",
                "screen.audit"} <= ids
        await pilot.press("escape")
        await pilot.pause()
        assert not isinstance(app.screen, HelpScreen)
    drive(test)


def test_command_palette_runs_screen_actions():
    source = FakeSource()

    async def test(app, pilot):
        await pilot.press("2")
        await pilot.pause()
        titles = [c.title for c in app.get_system_commands(app.screen)]
        assert "Connections: Kick" in titles and "Workers" in titles and "Help" in titles
        await pilot.press("ctrl+p")
        await pilot.pause()
        await pilot.press(*"Connections: Kick")
        await pilot.pause(0.3)
        await pilot.press("enter")
        await settle(pilot, until=lambda a: isinstance(a.screen, ConfirmModal))
    drive(test, source=source)


def test_quit_closes_the_source():
    source = FakeSource()

    async def test(app, pilot):
        await pilot.press("q")
        await pilot.pause()

    app = drive(test, source=source)
    assert app.return_code == 0
    assert ("close",) in source.calls
