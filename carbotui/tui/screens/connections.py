"""Connections: the live sessions of every worker; sort, filter, kick.

The workers send one page, not every session: the screen tells the App its sort and
filter (App.set_session_query), the next refresh brings the first SessionQuery.limit
matching sessions in that order and how many match, and the table sorts and filters
what it holds as before (so a change shows at once, on the rows it has, until then)."""
from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.widgets import Input, Static

from carbotui.admin.node import FleetSnapshot, Session
from carbotui.backends.worker_sockets import SessionQuery
from carbotui.backends.worker_sockets import session_fields as _fields
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
    """What the filter box matches (the workers match the same: worker_sockets)."""
    return _fields(s)


class ConnectionsScreen(FilteredScreen, title="Connections", main="#sessions"):
    FILTER_BY = "account: ip: proto: worker: server:"
    BINDINGS = [Binding("s", "sort", "Sort", id="connections.sort"),
                Binding("r", "reverse", "Reverse", id="connections.reverse"),
                Binding("x", "kick", "Kick", id="connections.kick")]

    def __init__(self):
        super().__init__()
        self.sessions: dict[str, Session] = {}
        self.total = 0
        self.matched = 0            # sessions matching the filter, on every worker

    def session_query(self) -> SessionQuery:
        """The page this screen shows: its sort and filter."""
        t = self.table
        return SessionQuery(sort=t.sort_column, reverse=t.reverse, terms=tuple(self.terms))

    def ask(self) -> None:
        """Tell the App which page to fetch (a new one at once when it changed)."""
        self.app.set_session_query(self.session_query())

    def compose_list(self) -> ComposeResult:
        yield KeyedTable(COLUMNS, id="sessions", sort_column="started", reverse=True)
        yield Static(id="summary", classes="summary")

    def show(self, snapshot: FleetSnapshot) -> None:
        self.total = snapshot.totals.sessions
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
        query = snapshot.session_query
        if query is None:                      # a source that sends every session
            self.matched = len(sessions)
        elif query.terms == tuple(self.terms):
            self.matched = max(snapshot.matched, len(sessions))
        else:                                  # the answer to the filter before: until
            self.matched = len(sessions)       # the next refresh, what the page holds
        self.table.sync(rows)
        self._summary()

    def _summary(self) -> None:
        t = self.table
        text = Text(no_wrap=True, overflow="ellipsis")
        text.append(f" {self.matched}", style="bold")
        if self.terms:
            text.append(f" of {self.total} sessions")
        else:
            text.append(" sessions")
        if len(self.sessions) < self.matched:
            text.append(f" · first {len(self.sessions)} shown")
        if self.terms:
            text.append(" · filter ")
            text.append(self.query_one("#filter", Input).value, style="bold cyan")
        arrow = "↓" if t.reverse else "↑"
        text.append(f" · sorted by {t.sort_column} {arrow}", style="dim")
        self.query_one("#summary", Static).update(text)

    # -- actions --------------------------------------------------------------------
    def on_screen_resume(self) -> None:
        # Textual calls LiveScreen's handler after this one (each class's, by the MRO)
        self.ask()

    def refilter(self) -> None:
        self.ask()
        if self.app.snapshot is not None:
            self.show(self.app.snapshot)

    def action_sort(self) -> None:
        """Sort by the next column"""
        t = self.table
        column = SORTABLE[(SORTABLE.index(t.sort_column) + 1) % len(SORTABLE)]
        t.set_sort(column, reverse=column in ("started", "bytes_in", "bytes_out"))
        self._summary()
        self.ask()

    def action_reverse(self) -> None:
        """Reverse the sort order"""
        t = self.table
        t.set_sort(t.sort_column, not t.reverse)
        self._summary()
        self.ask()

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
