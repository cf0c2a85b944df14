"""The two top lines: node and data health, and the screen tabs."""
from __future__ import annotations

from rich.text import Text
from textual.widgets import Static

from carbotui.tui.format import clock


class StatusBar(Static):
    """carbotui · proxy.demo.test · ● live 1s · 21:30:00 (time of the last change)."""

    def show(self, *, node: str, state: str, refresh: float, changed_at: float,
             problems: tuple[str, ...], paused: bool, error: str = "") -> None:
        t = Text(no_wrap=True, overflow="ellipsis")
        t.append(" carbotui ", style="bold reverse")
        t.append(f" {node} ")
        if error:
            t.append(" ✖ NO DATA ", style="bold white on red")
            t.append(f" {error}", style="red")
        elif state == "down":
            t.append(" ✖ STACK DOWN ", style="bold white on red")
            t.append(" retrying every %gs" % refresh, style="red")
        elif state == "starting":
            t.append("… collecting the first data", style="yellow")
        elif paused:
            t.append(" ❚❚ PAUSED ", style="bold black on yellow")
        else:
            t.append("● live", style="bold green")
            t.append(f" {refresh:g}s", style="dim")
        t.append(f"  {clock(changed_at)}", style="dim")
        if problems and not error and state != "down":
            t.append(f"  ⚠ {len(problems)}: {problems[0]}", style="bold yellow")
        self.update(t)


SCREENS = (("overview", "Overview"), ("connections", "Connections"), ("backends", "Backends"),
           ("cache", "Cache"), ("audit", "Audit"), ("config", "Config"), ("workers", "Workers"),
           ("alerts", "Alerts"))


class NavBar(Static):
    """1 Overview  2 Connections … with the current screen highlighted."""

    def show(self, current: str, width: int) -> None:
        t = Text(no_wrap=True, overflow="ellipsis")
        short = width < 96
        for i, (mode, title) in enumerate(SCREENS, 1):
            label = {"Connections": "Conns", "Overview": "Overview"}.get(title, title) \
                if short else title
            style = "bold reverse" if mode == current else ""
            t.append(f"{i}", style="bold cyan" if mode != current else "bold reverse")
            t.append(f" {label} ", style=style)
            if not short:                   # 80 columns: eight tabs and "? help" just fit
                t.append(" ")
        t.append("? help", style="dim")
        self.update(t)
