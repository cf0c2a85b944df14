"""Cache: route-cache hit ratio per worker, memcached totals, flush one user's routes."""
from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.widgets import Static

from carbotui.admin.node import FleetSnapshot
from carbotui.tui import format as fmt
from carbotui.tui.screens.base import LiveScreen
from carbotui.tui.widgets.keyed_table import KeyedTable
from carbotui.tui.widgets.modals import PromptModal

WORKER_COLUMNS = [("worker", "Worker", 9), ("hits", "Hits", 8), ("misses", "Misses", 8),
                  ("ratio", "Hit %", 6), ("ldap", "LDAP", 7), ("memcached", "memcached", 10)]
MEMCACHED_COLUMNS = [("server", "memcached", 15), ("state", "State", 5), ("ratio", "Hit %", 6),
                     ("hits", "Hits", 7), ("misses", "Misses", 6), ("items", "Items", 6),
                     ("evictions", "Evict", 5), ("memory", "Memory", 13)]


def _ratio_cell(ratio: float | None) -> Text:
    style = "" if ratio is None else ("green" if ratio >= 0.8 else
                                      "yellow" if ratio >= 0.5 else "red")
    return fmt.Sortable(fmt.percent(ratio), -1 if ratio is None else ratio, style=style)


def check_account(value: str) -> str:
    if "@" not in value or value.startswith("@") or value.endswith("@") or " " in value:
        return "enter a full account name, like user03@demo.test"
    return ""


class CacheScreen(LiveScreen, title="Cache", main="#workers"):
    BINDINGS = [Binding("f", "flush", "Flush user", id="cache.flush")]

    def compose_body(self) -> ComposeResult:
        yield KeyedTable(MEMCACHED_COLUMNS, id="memcached", sort_column="server")
        yield KeyedTable(WORKER_COLUMNS, id="workers", sort_column="worker")
        yield Static(id="legend", classes="summary")

    def show(self, snapshot: FleetSnapshot) -> None:
        rows = {}
        for m in snapshot.memcached:
            limit = f"{fmt.size(m.bytes)}/{fmt.size(m.limit)}" if m.up else "-"
            rows[m.endpoint] = (m.endpoint, Text("up", style="green") if m.up else
                                Text("DOWN", style="bold red"), _ratio_cell(m.hit_ratio),
                                fmt.num(m.hits if m.up else None),
                                fmt.num(m.misses if m.up else None),
                                fmt.num(m.items if m.up else None),
                                fmt.num(m.evictions if m.up else None,
                                        style="yellow" if m.evictions else ""),
                                limit)
        self.query_one("#memcached", KeyedTable).sync(rows)
        rows = {}
        for p in snapshot.workers:
            s = p.stats
            if s is None:
                rows[p.name] = (p.short, *[fmt.num(None)] * 4, Text("no stats", style="red"))
                continue
            rows[p.name] = (p.short, fmt.num(s.cache_hits), fmt.num(s.cache_misses),
                            _ratio_cell(s.hit_ratio), fmt.num(s.ldap_lookups),
                            Text("reachable", style="green") if s.memcached_available else
                            Text("DOWN", style="bold red"))
        self.table.sync(rows)
        legend = Text()
        legend.append(" Hit %", style="bold").append(": routes found in memcached · ")
        legend.append("LDAP", style="bold").append(": lookups after a miss · ")
        legend.append("f", style="bold cyan").append(" flush one account's routes")
        self.query_one("#legend", Static).update(legend)

    def action_flush(self) -> None:
        """Delete one account's cached routes from memcached"""
        def answered(account: str | None) -> None:
            if account:
                self.app.run_action_in_thread(self.app.source.flush_routes, account)

        self.app.push_screen(PromptModal(
            "Flush the cached routes of", placeholder="user03@demo.test",
            validate=check_account,
            hint="Its next login looks the mailbox server up in LDAP again."), answered)
