"""Pilot tests: every screen and every binding, against FakeSource."""
from __future__ import annotations

import dataclasses

from textual.binding import Binding
from textual.widgets import Input, Log

from carbotui.core.audit import AuditEvent, failure
from carbotui.backends.worker_sockets import SessionQuery
from carbotui.tui.app import SCREEN_CLASSES, CarbotuiApp
from carbotui.tui.screens.help import HelpScreen
from carbotui.tui.widgets.modals import ConfirmModal, PromptModal, VhostModal
from demo.fake_source import NOW, FakeSource

from tests.support.tui import calls, drive, pilot_test, press, settle, table_of, text_of


async def act(pilot, name: str, *keys: str, count: int = 1) -> None:
    """Press `keys`, then wait until the source has run action `name` `count` times."""
    await pilot.press(*keys)
    await settle(pilot, until=lambda app: len(calls(app.source, name)) >= count)
    await pilot.pause(0.1)


# --- structure -------------------------------------------------------------------------------

def test_every_binding_has_an_id_and_a_description():
    bindings = [b for b in CarbotuiApp.BINDINGS if isinstance(b, Binding)]
    for cls in SCREEN_CLASSES.values():
        bindings += [b for b in cls.BINDINGS if isinstance(b, Binding)]
    ids = [b.id for b in bindings]
    assert all(ids) and all(b.description for b in bindings)
    assert len(ids) == len(set(ids)), "binding ids must be unique (they are keymap keys)"


@pilot_test()
async def test_number_keys_and_brackets_switch_screens(app, pilot):
    assert len(SCREEN_CLASSES) == 8
    for key, mode in zip("12345678", SCREEN_CLASSES):
        await press(pilot, key)
        assert app.current_mode == mode
        assert app.screen.MODE == mode
    await press(pilot, "]")
    assert app.current_mode == "overview"
    await press(pilot, "[")
    assert app.current_mode == "alerts"


# --- overview ----------------------------------------------------------------------------

@pilot_test()
async def test_overview_totals_sparklines_workers(app, pilot):
    screen = app.screen
    totals = text_of(screen, "#totals")
    assert "Sessions 14" in totals and "Workers 2/2" in totals and "2.4/s" in totals
    assert table_of(app, "#workers").row_count == 2
    assert len(screen.query_one("#spark-sessions").data) == 120
    assert not screen.query_one("#problems").display
    assert "● live" in text_of(screen, "#status")


@pilot_test()
async def test_no_redraw_without_new_data(app, pilot):
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


@pilot_test(refresh=0.1)
async def test_stack_down_is_shown_and_recovers_by_itself(app, pilot):
    app.source.stack_down()
    await settle(pilot, until=lambda a: a.stack_state() == "down")
    assert "STACK DOWN" in text_of(app.screen, "#status")
    problems = text_of(app.screen, "#problems")
    assert "supervisord is not running" in problems and "memcached" in problems
    app.source.stack_up()
    await settle(pilot, until=lambda a: a.stack_state() == "ok")
    assert "● live" in text_of(app.screen, "#status")
    assert not app.screen.query_one("#problems").display


@pilot_test(refresh=0.1)
async def test_a_failing_collect_is_shown_then_retried(app, pilot):
    app.source.fail_next = "boom"
    app.poll_now()
    await settle(pilot, until=lambda a: a.data_error)
    assert "NO DATA" in text_of(app.screen, "#status") and "boom" in app.data_error
    await settle(pilot, until=lambda a: not a.data_error)
    assert "● live" in text_of(app.screen, "#status")


@pilot_test()
async def test_pause_refresh_now_and_refresh_interval_keys(app, pilot):
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


# --- connections --------------------------------------------------------------------------

@pilot_test()
async def test_connections_keyed_updates_keep_the_cursor_on_its_row(app, pilot):
    await press(pilot, "2")
    table = table_of(app, "#sessions")
    assert table.row_count == 14
    await pilot.press("down", "down", "down")
    chosen = table.selected_key
    # A session above the cursor ends and bytes of another change: the cursor
    # must stay on the same session, not jump.
    first = table.ordered_rows[0].key.value
    app.source.sessions = [s if str(s.id) != chosen else dataclasses.replace(s, bytes_in=9)
                           for s in app.source.sessions if str(s.id) != first]
    app.poll_now()
    await settle(pilot, until=lambda a: a.polls >= 2)
    assert table.row_count == 13
    assert table.selected_key == chosen
    assert table.cells(chosen)[4].plain == "9 B"


@pilot_test()
async def test_connections_sort_reverse_and_filter(app, pilot):
    await press(pilot, "2")
    table = table_of(app, "#sessions")
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
    await press(pilot, *"ip:192.0.2.77", "enter")
    assert table.row_count == 3                     # sessions 3, 8, 13
    assert "3 of 14 sessions" in text_of(app.screen, "#summary")
    # the box selects its text on focus: typing replaces the whole query
    await press(pilot, "slash", *"ip:192.0.2.77 proto:pop3s", "enter")
    assert table.row_count == 1
    await press(pilot, "escape")
    assert table.row_count == 14


@pilot_test()
async def test_kick_asks_first_then_closes_the_session(app, pilot):
    await press(pilot, "2")
    table = table_of(app, "#sessions")
    chosen = table.selected_key
    await press(pilot, "x")
    assert isinstance(app.screen, ConfirmModal)
    await press(pilot, "n")
    assert not calls(app.source, "kick")
    await press(pilot, "x")
    await act(pilot, "kick", "y")
    assert calls(app.source, "kick")[0][2] == int(chosen)
    await settle(pilot, until=lambda a: chosen not in table_of(a, "#sessions").rows)


# --- backends / cache --------------------------------------------------------------------------

@pilot_test()
async def test_backends_table_and_maintenance_toggle(app, pilot):
    await press(pilot, "3")
    table = table_of(app, "#backends")
    assert table.row_count == 2
    assert table.cells("mbox2.demo.test")[1].plain == "errors"
    assert "█" in text_of(app.screen, "#load")
    await press(pilot, "m")
    assert isinstance(app.screen, ConfirmModal)
    await act(pilot, "maintenance", "y")
    assert calls(app.source, "maintenance") == [("maintenance", "mbox1.demo.test", True)]
    await settle(pilot, until=lambda a: table.cells("mbox1.demo.test")[1].plain
                 == "maintenance")
    await act(pilot, "maintenance", "m", "y", count=2)
    assert calls(app.source, "maintenance")[1] == ("maintenance", "mbox1.demo.test", False)


@pilot_test()
async def test_cache_ratios_and_flush_with_validation(app, pilot):
    await press(pilot, "4")
    workers = table_of(app, "#workers")
    assert workers.cells("proxy:proxy_00")[3].plain == "88.2%"
    assert table_of(app, "#memcached").cells(
        "127.0.0.1:12211")[2].plain == "85.8%"
    await press(pilot, "f")
    assert isinstance(app.screen, PromptModal)
    await press(pilot, *"user03", "enter")
    assert isinstance(app.screen, PromptModal), "an incomplete account is refused"
    assert "full account name" in text_of(app.screen, "#error")
    await act(pilot, "flush_routes", *"@demo.test", "enter")
    assert calls(app.source, "flush_routes") == [("flush_routes", "user03@demo.test")]


# --- audit ---------------------------------------------------------------------------------

@pilot_test()
async def test_audit_streams_failures_and_filters(app, pilot):
    await pilot.press("5")
    await settle(pilot, until=lambda a: a.screen.query_one("#log", Log).line_count >= 8)
    log = app.screen.query_one("#log", Log)
    assert log.line_count == 8                      # failures only
    assert "8 failures" in text_of(app.screen, "#summary")
    app.source.add_audit(AuditEvent(account="boss@corp.test", protocol="imap",
                                    client_ip="192.0.2.200", timestamp=NOW,
                                    error=failure("boss@corp.test", "invalid password")))
    await settle(pilot, until=lambda a: log.line_count == 9)
    assert "boss@corp.test" in log.lines[-1] and "192.0.2.200" in log.lines[-1]

    await press(pilot, "slash", *"ip:192.0.2.200", "enter")
    assert log.line_count == 1
    await press(pilot, "escape")
    assert log.line_count == 9
    await pilot.press("s")                          # successes too
    await pilot.pause()
    assert log.line_count == 13
    await press(pilot, "slash", *"proto:pop3 user", "enter")
    assert all(" pop3 " in line for line in log.lines)
    await press(pilot, "escape", "c")
    assert log.line_count == 0
    assert "0 failures" in text_of(app.screen, "#summary")


# --- config -------------------------------------------------------------------------------------

@pilot_test()
async def test_config_mail_mode_switch_needs_confirmation(app, pilot):
    await press(pilot, "6")
    assert "Mail mode redirect" in text_of(app.screen, "#mode")
    await press(pilot, "m")
    assert isinstance(app.screen, ConfirmModal)
    await press(pilot, "escape")
    assert not calls(app.source, "set_mail_mode")
    await act(pilot, "set_mail_mode", "m", "y")
    assert calls(app.source, "set_mail_mode") == [("set_mail_mode", "https")]
    await settle(pilot, until=lambda a: "Mail mode https" in text_of(a.screen, "#mode"))
    applied = table_of(app, "#applied")
    assert applied.cells("proxy:proxy_00")[1].plain == "… pending"   # LDAP changed
    await pilot.press("ctrl+r")                                       # next poll: the
    await settle(pilot, until=lambda a: applied.cells(               # workers applied it
        "proxy:proxy_00")[1].plain == "✓ applied")
    assert app.source.applied[2] == "https"


@pilot_test(size=(120, 40))
async def test_config_domains_certificates_and_applied_per_worker(app, pilot):
    await press(pilot, "6")
    domains = table_of(app, "#domains")
    assert domains.row_count == 2
    assert domains.cells("corp.test")[4].plain == "17"
    assert "EXPIRES IN 17 DAYS" in text_of(app.screen, "#detail")   # corp.test first
    await press(pilot, "down")
    assert "mail.demo.test" in text_of(app.screen, "#detail")
    applied = table_of(app, "#applied")
    assert applied.cells("proxy:proxy_00")[1].plain == "✓ applied"
    assert applied.cells("proxy:proxy_00")[2] == "21:28:25"


@pilot_test()
async def test_config_add_vhost_validates_then_generates(app, pilot):
    await press(pilot, "6")
    await press(pilot, "a")
    assert isinstance(app.screen, VhostModal)
    await press(pilot, *"bad_name.corp.test", "enter")
    assert "letters, digits" in text_of(app.screen, "#error")
    app.screen.query_one("#fqdn", Input).value = ""
    await press(pilot, *"mail.demo.test", "enter")
    assert "already a virtual hostname of demo.test" in text_of(app.screen, "#error")
    app.screen.query_one("#fqdn", Input).value = ""
    await act(pilot, "add_vhost", *"imap.corp.test", "enter")
    assert calls(app.source, "add_vhost") == [("add_vhost", "corp.test", "imap.corp.test",
                                               True, "", "")]
    await settle(pilot, until=lambda a: "imap.corp.test" in str(table_of(a, "#domains").cells(
        "corp.test")[1]))


@pilot_test()
async def test_config_add_vhost_with_imported_files(app, pilot):
    await press(pilot, "6", "a")
    await pilot.press(*"pop.corp.test", "tab", "down", "enter")   # radio: import
    await pilot.pause()
    await act(pilot, "add_vhost", "tab", *"/tmp/c.pem", "enter", *"/tmp/k.pem", "enter")
    assert calls(app.source, "add_vhost") == [("add_vhost", "corp.test", "pop.corp.test",
                                               False, "/tmp/c.pem", "/tmp/k.pem")]


@pilot_test()
async def test_config_remove_vhost_and_set_vip(app, pilot):
    await press(pilot, "6")
    await press(pilot, "d")
    assert isinstance(app.screen, ConfirmModal)
    await act(pilot, "remove_vhost", "y")
    assert calls(app.source, "remove_vhost") == [("remove_vhost", "corp.test",
                                                  "webmail.corp.test")]
    await press(pilot, "i")
    box = app.screen.query_one(Input)
    box.value = ""
    await press(pilot, *"300.1.1.1", "enter")
    assert isinstance(app.screen, PromptModal)
    box.value = ""
    await act(pilot, "set_vip", *"127.0.0.9", "enter")
    assert calls(app.source, "set_vip") == [("set_vip", "corp.test", "127.0.0.9")]


# --- workers ---------------------------------------------------------------------------------

@pilot_test()
async def test_workers_start_stop_restart_rolling_and_log(app, pilot):
    await press(pilot, "7")
    table = table_of(app, "#processes")
    assert table.row_count == 6 and table.selected_key == "proxy:proxy_00"
    await act(pilot, "restart", "r")
    await settle(pilot, until=lambda a: table.cells("proxy:proxy_00")[2].plain == "4200")

    await press(pilot, "x")
    assert isinstance(app.screen, ConfirmModal)
    await act(pilot, "stop", "y")
    await settle(pilot, until=lambda a: table.cells("proxy:proxy_00")[1].plain == "STOPPED")
    await act(pilot, "start", "s")
    await settle(pilot, until=lambda a: table.cells("proxy:proxy_00")[1].plain == "RUNNING")

    await press(pilot, "R")
    assert isinstance(app.screen, ConfirmModal)
    await act(pilot, "rolling_restart", "y")
    assert app.source.pids == {"proxy_00": 4300, "proxy_01": 4201}

    await pilot.press("l")
    log = app.screen.query_one("#log", Log)
    await settle(pilot, until=lambda a: log.line_count >= 40)
    assert "session 39 closed" in log.lines[-2] or "session 39 closed" in log.lines[-1]
    await press(pilot, "l")
    assert not log.display


# --- help, palette, quit ---------------------------------------------------------------------------

@pilot_test()
async def test_help_lists_every_binding(app, pilot):
    await press(pilot, "question_mark")
    assert isinstance(app.screen, HelpScreen)
    table = app.screen.query_one("#keys")
    assert table.row_count == len(app.all_bindings())
    ids = {str(table.get_row_at(i)[3]) for i in range(table.row_count)}
    assert {"connections.kick", "workers.rolling", "config.mail_mode",
            "screen.audit"} <= ids
    await press(pilot, "escape")
    assert not isinstance(app.screen, HelpScreen)


@pilot_test()
async def test_command_palette_runs_screen_actions(app, pilot):
    await press(pilot, "2")
    titles = [c.title for c in app.get_system_commands(app.screen)]
    assert "Connections: Kick" in titles and "Workers" in titles and "Help" in titles
    await press(pilot, "ctrl+p")
    await pilot.press(*"Connections: Kick")
    await pilot.pause(0.3)
    await pilot.press("enter")
    await settle(pilot, until=lambda a: isinstance(a.screen, ConfirmModal))


def test_quit_closes_the_source():
    source = FakeSource()

    async def test(app, pilot):
        await press(pilot, "q")

    app = drive(test, source=source)
    assert app.return_code == 0
    assert ("close",) in source.calls


# --- a page of sessions, as the live fleet sends it ---------------------------------------------

class PagedSource(FakeSource):
    """Answers the Connections screen's SessionQuery as Fleet.collect does: the workers'
    counts, how many match, and only the first `limit` matching sessions in its order."""

    def __init__(self, sessions: int):
        super().__init__(sessions=sessions)
        self.query = SessionQuery()
        self.queries: list[SessionQuery] = []

    def set_session_query(self, query: SessionQuery) -> None:
        self.queries.append(query)
        self.query = query

    def collect(self):
        snap = super().collect()
        q = self.query
        matching = q.matching(self.sessions)
        return dataclasses.replace(snap, sessions=tuple(q.page(matching)), session_query=q,
                                   sessions_matched=len(matching))


def test_connections_shows_the_first_page_of_many_in_the_order_asked():
    source = PagedSource(260)
    limit = SessionQuery().limit
    newest = sorted(source.sessions, key=lambda s: s.started, reverse=True)

    async def test(app, pilot):
        await press(pilot, "2")
        table = table_of(app, "#sessions")
        assert table.row_count == limit
        assert [r.key.value for r in table.ordered_rows] == [str(s.id) for s in newest[:limit]]
        summary = text_of(app.screen, "#summary")
        assert f"260 sessions · first {limit} shown · sorted by started ↓" in summary

        await pilot.press("s")                       # started -> account, ascending
        await settle(pilot, until=lambda a: a.snapshot.session_query.sort == "account")
        assert source.queries[-1] == SessionQuery(sort="account", reverse=False)
        by_account = sorted(source.sessions, key=lambda s: s.account)[:limit]
        assert [r.key.value for r in table.ordered_rows] == [str(s.id) for s in by_account]

        await press(pilot, "slash", *"ip:192.0.2.77", "enter")
        await settle(pilot, until=lambda a: a.snapshot.session_query.terms)
        assert source.queries[-1].terms == (("client", "192.0.2.77"),)
        matching = [s for s in source.sessions if "192.0.2.77" in s.client]
        assert 0 < len(matching) < limit
        assert table.row_count == len(matching)
        assert f"{len(matching)} of 260 sessions · filter ip:192.0.2.77" in \
            text_of(app.screen, "#summary")
        await press(pilot, "escape")
        await settle(pilot, until=lambda a: not a.snapshot.session_query.terms)
        assert table.row_count == limit

    drive(test, source=source)
