"""Overview: totals, alerts and IP blocks, sparklines of sessions and logins/s, workers,
problems."""
from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Grid
from textual.widgets import Label, Sparkline, Static

from carbotui.admin.node import FleetSnapshot
from carbotui.tui import format as fmt
from carbotui.tui.screens.base import LiveScreen
from carbotui.tui.widgets.keyed_table import KeyedTable

SERIES = (("sessions", "Sessions"), ("logins_ok", "Logins/s"), ("logins_failed", "Failed/s"))


class OverviewScreen(LiveScreen, title="Overview", main="#workers"):
    BINDING_GROUP_TITLE = "Overview"
    BINDINGS = []

    def compose_body(self) -> ComposeResult:
        yield Static(id="totals")
        yield Static(id="security")
        with Grid(id="graphs"):
            for key, title in SERIES:
                yield Label(title, classes="graph-label")
                yield Sparkline([], id=f"spark-{key}", classes=f"spark {key}")
                yield Label("", id=f"last-{key}", classes="graph-value")
        yield KeyedTable([("worker", "Worker", 9), ("state", "State", 8), ("pid", "PID", 6),
                          ("cpu", "CPU%", 5), ("rss", "RSS", 7), ("sess", "Sess", 5),
                          ("ok", "Logins", 6), ("failed", "Failed", 6), ("since", "Since", 8)],
                         id="workers", sort_column="worker")
        yield Static(id="problems")

    def show_security(self, snapshot: FleetSnapshot) -> None:
        """Alerts of the last hour (alerts.log) and active IP blocks (memcached)."""
        recent = self.app.recent_alerts(snapshot.taken_at)
        line = Text(no_wrap=True, overflow="ellipsis")
        line.append("Alerts ", style="dim").append(f"{recent}", style="bold yellow"
                                                   if recent else "bold")
        line.append(" in the last hour  ")
        line.append("IP blocks ", style="dim")
        if snapshot.blocks_error:
            line.append("unknown", style="bold yellow")
        else:
            n = len(snapshot.blocks)
            line.append(f"{n}", style="bold red" if n else "bold").append(" active")
        if recent or snapshot.blocks:
            line.append("  (8: Alerts)", style="dim")
        self.query_one("#security", Static).update(line)

    def show(self, snapshot: FleetSnapshot) -> None:
        t = snapshot.totals
        mc = [m for m in snapshot.memcached if m.up]
        line = Text(no_wrap=True, overflow="ellipsis")
        line.append("Sessions ", style="dim").append(f"{t.sessions:<6}", style="bold")
        style = "bold green" if t.workers_up == t.workers_total and t.workers_total else "bold red"
        line.append("Workers ", style="dim").append(f"{t.workers_up}/{t.workers_total}  ",
                                                    style=style)
        line.append("Logins ", style="dim").append(f"{t.logins_ok_per_s:g}/s ", style="green")
        line.append(f"✗{t.logins_failed_per_s:g}/s  ",
                    style="bold red" if t.logins_failed_per_s else "dim")
        line.append("Cache ", style="dim").append(f"{fmt.percent(t.cache_hit_ratio)}  ")
        line.append("memcached ", style="dim")
        line.append(f"{len(mc)}/{len(snapshot.memcached)} up",
                    style="green" if len(mc) == len(snapshot.memcached) else "bold red")
        self.query_one("#totals", Static).update(line)
        self.show_security(snapshot)

        for key, _ in SERIES:
            points = snapshot.series(key)
            spark = self.query_one(f"#spark-{key}", Sparkline)
            if tuple(spark.data or ()) != points:
                spark.data = list(points)
            last = points[-1] if points else 0
            self.query_one(f"#last-{key}", Label).update(f"{last:g}")

        rows = {}
        for p in snapshot.workers:
            s = p.stats
            rows[p.name] = (p.short, fmt.state(p.state), fmt.pid(p.pid),
                            fmt.num(p.cpu), fmt.bytes_cell(p.rss),
                            fmt.num(s.sessions if s else None),
                            fmt.num(s.logins_ok if s else None),
                            fmt.num(s.logins_failed if s else None,
                                    style="red" if s and s.logins_failed else ""),
                            # a start time, not an uptime: it only changes on a restart
                            fmt.Sortable(fmt.clock(p.started) if p.state == "RUNNING" else "-",
                                         p.started))
        self.query_one("#workers", KeyedTable).sync(rows)

        problems = self.query_one("#problems", Static)
        if snapshot.problems:
            text = Text()
            for p in snapshot.problems:
                text.append("⚠ ", style="bold yellow").append(p + "\n")
            problems.update(text)
            problems.display = True
        else:
            problems.display = False
