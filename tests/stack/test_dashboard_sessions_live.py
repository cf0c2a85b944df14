"""The Connections screen on the live workers' stats wire (worker_sockets.SessionQuery):
the workers send counts and one page of sessions, the screen's filter goes to them, the
row it shows is a real session, and kicking it closes that session."""
from __future__ import annotations

import imaplib
import ssl

from carbotui.admin.node import Fleet
from carbotui.backends.worker_sockets import SessionQuery, read_snapshot, stats_sockets

from tests.support.tui import drive, press, settle, table_of, text_of
from .conftest import live_source

USER = "user18@demo.test"            # this test's own account (tests/notes: 01-10, 17-19)


def _sessions(stack, n: int) -> list[imaplib.IMAP4_SSL]:
    ca = ssl.create_default_context(cafile=str(stack.var_dir / "certs" / "ca.crt"))
    out = []
    for _ in range(n):
        imap = imaplib.IMAP4_SSL("127.0.0.1", 10993, ssl_context=ca, timeout=10)
        imap.login(USER, "demo-pass")
        out.append(imap)
    return out


def _alive(imap) -> bool:
    try:
        return imap.noop()[0] == "OK"
    except (imaplib.IMAP4.abort, imaplib.IMAP4.error, OSError):
        return False


def test_the_workers_send_a_page_and_exact_counts(stack):
    clients = _sessions(stack, 3)
    try:
        query = SessionQuery(terms=(("account", "user18@"),), limit=1)
        for path in stats_sockets(stack.run_dir):
            snap = read_snapshot(path, query=query)
            assert len(snap.sessions) <= 1
            assert snap.open_sessions >= snap.sessions_matched
        fleet = Fleet(stack, session_query=query)
        try:
            snap = fleet.collect()
        finally:
            fleet.close()
        assert snap.sessions_matched == 3 and len(snap.sessions) == 1
        assert snap.sessions[0].account == USER
        counts = {(kind, state): n for kind, state, n in snap.session_counts}
        assert counts.get(("imaps", "proxy"), 0) >= 3
        assert snap.totals.sessions == sum(counts.values()) >= 3
    finally:
        for imap in clients:
            imap.logout()


def test_filter_and_kick_a_live_session_from_the_connections_screen(stack):
    clients = _sessions(stack, 3)
    seen = {}

    async def test(app, pilot):
        await press(pilot, "2")
        await press(pilot, "slash", *"user18@", "enter")
        table = table_of(app, "#sessions")
        await settle(pilot, until=lambda a: a.snapshot.session_query.terms
                     and table.row_count == 3, timeout=10)
        seen["summary"] = text_of(app.screen, "#summary")
        seen["kicked"] = table.selected_key
        await press(pilot, "x")
        await press(pilot, "y")
        await settle(pilot, until=lambda a: table.row_count == 2
                     and seen["kicked"] not in table.rows, timeout=10)

    try:
        drive(test, source=live_source(stack), refresh=1.0)
        assert "3 of " in seen["summary"] and "filter user18@" in seen["summary"]
        assert sorted(_alive(imap) for imap in clients) == [False, True, True]
    finally:
        for imap in clients:
            try:
                imap.logout()
            except (imaplib.IMAP4.abort, imaplib.IMAP4.error, OSError):
                pass
