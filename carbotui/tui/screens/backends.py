"""Backends: load and health of each mailbox server; maintenance on/off."""
from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.widgets import Static

from carbotui.admin.node import Backend, FleetSnapshot
from carbotui.tui import format as fmt
from carbotui.tui.screens.base import LiveScreen
from carbotui.tui.widgets.keyed_table import KeyedTable

COLUMNS = [("server", "Mailbox server", 18), ("health", "Health", 11), ("active", "Active", 6),
           ("rate", "New/s", 6), ("errors", "Errors", 6), ("err_rate", "Err/s", 5),
           ("connect", "Conn ms", 7), ("probe", "Probe", 6), ("sessions", "Total", 7)]


def load_bars(backends: tuple[Backend, ...], width: int) -> Text:
    """Open sessions per mailbox server as bars: the balance at a glance."""
    text = Text()
    if not backends:
        return text
    text.append(" Open sessions per mailbox server\n", style="bold")
    top = max((b.active for b in backends), default=0) or 1
    room = max(10, width - 30)
    for b in backends:
        n = round(room * b.active / top)
        style = fmt.HEALTH_STYLES.get(b.health, "")
        text.append(f" {b.name.split('.', 1)[0]:<10} ").append("█" * n, style=style)
        text.append(f" {b.active}\n")
    return text


class BackendsScreen(LiveScreen, title="Backends", main="#backends"):
    BINDINGS = [Binding("m", "maintenance", "Maintenance", id="backends.maintenance")]

    def __init__(self):
        super().__init__()
        self.backends: dict[str, Backend] = {}

    def compose_body(self) -> ComposeResult:
        yield KeyedTable(COLUMNS, id="backends", sort_column="server")
        yield Static(id="load", classes="load")
        yield Static(id="legend", classes="summary")

    def show(self, snapshot: FleetSnapshot) -> None:
        rows = {}
        self.backends = {b.name: b for b in snapshot.backends}
        for b in snapshot.backends:
            health = b.health
            rows[b.name] = (
                b.name, Text(health, style=fmt.HEALTH_STYLES.get(health, "")),
                fmt.num(b.active), fmt.num(b.sessions_per_s),
                fmt.num(b.errors, style="red" if b.errors else ""),
                fmt.num(b.errors_per_s, style="bold red" if b.errors_per_s else ""),
                fmt.num(b.connect_ms),
                fmt.num(b.probe_ms) if b.probe_ms is not None else
                fmt.Sortable("down" if b.probed else "-", -1,
                             style="bold red" if b.probed else "dim"),
                fmt.num(b.sessions))
        self.table.sync(rows)
        self.query_one("#load", Static).update(load_bars(snapshot.backends, self.size.width))
        legend = Text(no_wrap=False)
        legend.append(" Active", style="bold").append(": open sessions now · ")
        legend.append("Conn ms", style="bold").append(": workers' connect+greeting average · ")
        legend.append("Probe", style="bold").append(": TCP connect from this node, ms · ")
        legend.append("m", style="bold cyan").append(" maintenance: no new sessions")
        self.query_one("#legend", Static).update(legend)

    def action_maintenance(self) -> None:
        """Toggle maintenance: no new sessions to the selected server"""
        backend = self.selected(self.backends, missing="no mailbox server selected")
        if backend is None:
            return
        on = not backend.maintenance
        detail = (f"New logins of accounts on {backend.name} get a temporary failure; "
                  f"{backend.active} open sessions continue." if on else
                  f"{backend.name} takes new sessions again.")
        self.confirm(f"{'Start' if on else 'End'} maintenance of {backend.name}?", detail,
                     "Start" if on else "End", self.app.source.set_maintenance, backend.name, on)
