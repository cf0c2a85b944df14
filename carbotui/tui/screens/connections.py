"""Connections: every live session on every worker; sort, filter, kick."""
from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.widgets import Input, Static

from carbotui.admin.node import FleetSnapshot, Session
from carbotui.tui import filters
from carbotui.tui import format as fmt
from carbotui.tui.screens.base import FilteredScreen
from carbotui.tui.widgets.keyed_table import KeyedTable

COLUMNS = [("account", "Account", 18), ("client", "Client", 15), ("protocol", "Proto", 5),
           ("server", "Server", 6), ("bytes_in", "In", 7), ("bytes_out", "Out", 7),
           ("started", "Started", 8), ("worker", "Worker", 8), ("state", "State", 6),
           ("id", "Session", 12)]
SORTABLE = ["started", "account", "client", "bytes_in", "bytes_out", "server", "worker",
            "protocol"]


def session_fields(s: Session) -> dict[str, str]:
    return {"account": s.account, "client": s.client, "protocol": s.protocol,
            "server": s.server, "worker": s.worker, "state": s.state}


class ConnectionsScreen(FilteredScreen, title="Connections", main="#sessions"):
    FILTER_BY = "account: ip: proto: worker: server:"
    BINDINGS = [Binding("s", "sort", "Sort", id="connections.sort"),
                Binding("r", "reverse", "Reverse", id="connections.reverse"),
                Binding("x", "kick", "Kick", id="connections.kick")]

    def __init__(self):
        super().__init__()
        self.sessions: dict[str, Session] = {}
        self.total = 0

    def compose_list(self) -> ComposeResult:
        yield KeyedTable(COLUMNS, id="sessions", sort_column="started", reverse=True)
        yield Static(id="summary", classes="summary")

    def show(self, snapshot: FleetSnapshot) -> None:
        self.total = len(snapshot.sessions)
        rows, sessions = {}, {}
        for s in snapshot.sessions:
            if self.terms and not filters.matches(session_fields(s), self.terms):
                continue
            key = str(s.id)
            sessions[key] = s
            rows[key] = (s.account or Text("(login)", style="dim"),
                         f"{s.client}", s.protocol, s.server.split(".", 1)[0],
                         fmt.bytes_cell(s.bytes_in), fmt.bytes_cell(s.bytes_out),
                         fmt.Sortable(fmt.clock(s.started), s.started, justify="left"),
                         s.worker, s.state, fmt.Sortable(str(s.id), s.id))
        self.sessions = sessions
        self.table.sync(rows)
        self._summary()

    def _summary(self) -> None:
        t = self.table
        text = Text(no_wrap=True, overflow="ellipsis")
        text.append(f" {len(self.sessions)}", style="bold")
        if self.terms:
            text.append(f" of {self.total} sessions · filter ")
            text.append(self.query_one("#filter", Input).value, style="bold cyan")
        else:
            text.append(" sessions")
        arrow = "↓" if t.reverse else "↑"
        text.append(f" · sorted by {t.sort_column} {arrow}", style="dim")
        self.query_one("#summary", Static).update(text)

    # -- actions --------------------------------------------------------------------
    def refilter(self) -> None:
        if self.app.snapshot is not None:
            self.show(self.app.snapshot)

    def action_sort(self) -> None:
        """Sort by the next column"""
        t = self.table
        column = SORTABLE[(SORTABLE.index(t.sort_column) + 1) % len(SORTABLE)]
        t.set_sort(column, reverse=column in ("started", "bytes_in", "bytes_out"))
        self._summary()

    def action_reverse(self) -> None:
        """Reverse the sort order"""
        t = self.table
        t.set_sort(t.sort_column, not t.reverse)
        self._summary()

    def action_kick(self) -> None:
        """Close the selected session (asks first)"""
        session = self.selected(self.sessions, missing="no session selected")
        if session is None:
            return
        who = session.account or "an unauthenticated client"
        self.confirm(
            f"Kick session {session.id}?",
            f"{who} from {session.client} ({session.protocol}) on {session.worker}, "
            f"mailbox {session.server or '-'}. The client is disconnected; it may log in again.",
            "Kick", self.app.source.kick, session.worker, session.id)
