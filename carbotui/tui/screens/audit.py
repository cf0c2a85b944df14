"""Audit: login failures from audit.log as they are written; filter by account, IP, protocol.

Lines go to a `Log` (plain text, the cheapest streaming widget). The App keeps
the last few thousand events, so changing the filter redraws from that buffer.
"""
from __future__ import annotations

import time
from collections import Counter

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.widgets import Input, Log, Static

from carbotui.core.audit import AuditEvent
from carbotui.tui import filters
from carbotui.tui.screens.base import FilteredScreen

HEADER = f"{'time':8} {'proto':5} {'client':15} {'account':22} result"


def event_fields(e: AuditEvent) -> dict[str, str]:
    return {"account": e.account, "client": e.client_ip, "protocol": e.protocol,
            "error": e.error}


def event_line(e: AuditEvent) -> str:
    stamp = time.strftime("%H:%M:%S", time.localtime(e.timestamp))
    result = "✓ ok" if e.ok else "✗ " + e.error.split("], ", 1)[-1]
    # Columns line up for common names; a longer account is never cut (it is what
    # an admin searches for), it just pushes the result to the right.
    return f"{stamp} {e.protocol:5} {e.client_ip:15} {e.account:22} {result}"


class AuditScreen(FilteredScreen, title="Audit", main="#log"):
    FILTER_EXAMPLE = "pop3"
    BINDINGS = [Binding("s", "toggle_successes", "Successes", id="audit.successes"),
                Binding("c", "clear", "Clear", id="audit.clear")]

    def __init__(self):
        super().__init__()
        self.show_successes = False
        self.drawn_seq = 0          # App.audit_seq already considered
        self.cleared_seq = 0        # events up to here were cleared by the admin
        self.shown = 0

    def compose_list(self) -> ComposeResult:
        yield Static(HEADER, id="header", classes="log-header")
        yield Log(id="log", max_lines=5000, auto_scroll=True)
        yield Static(id="summary", classes="summary")

    def on_screen_resume(self) -> None:
        super().on_screen_resume()
        self.append_new()

    def _wanted(self, e: AuditEvent) -> bool:
        if e.ok and not self.show_successes:
            return False
        return not self.terms or filters.matches(event_fields(e), self.terms)

    def _events_since(self, seq: int) -> list[AuditEvent]:
        buffer = self.app.audit
        new = self.app.audit_seq - seq
        return list(buffer)[-new:] if 0 < new <= len(buffer) else (
            list(buffer) if new > 0 else [])

    def append_new(self) -> None:
        """Write events that arrived since the last call (called by the App)."""
        events = self._events_since(self.drawn_seq)
        self.drawn_seq = self.app.audit_seq
        lines = [event_line(e) for e in events if self._wanted(e)]
        if lines:
            self.query_one("#log", Log).write_lines(lines)
            self.shown += len(lines)
        self._summary()

    def redraw(self) -> None:
        log = self.query_one("#log", Log)
        log.clear()
        events = self._events_since(self.cleared_seq)
        lines = [event_line(e) for e in events if self._wanted(e)]
        log.write_lines(lines)
        self.shown = len(lines)
        self.drawn_seq = self.app.audit_seq
        self._summary()

    def _summary(self) -> None:
        failed = [e for e in self._events_since(self.cleared_seq) if not e.ok]
        text = Text(no_wrap=True, overflow="ellipsis")
        text.append(f" {len(failed)}", style="bold red").append(" failures")
        if failed:
            ip, n_ip = Counter(e.client_ip for e in failed).most_common(1)[0]
            acct, n_acct = Counter(e.account for e in failed).most_common(1)[0]
            text.append(" · top IP ").append(ip, style="bold").append(f" ({n_ip})")
            text.append(" · top account ").append(acct, style="bold").append(f" ({n_acct})")
        if self.terms:
            text.append(" · filter ").append(self.query_one("#filter", Input).value,
                                            style="bold cyan")
        if self.show_successes:
            text.append(" · with successes", style="dim")
        self.query_one("#summary", Static).update(text)

    # -- actions --------------------------------------------------------------------
    def refilter(self) -> None:
        self.redraw()

    def action_toggle_successes(self) -> None:
        """Also show successful logins"""
        self.show_successes = not self.show_successes
        self.redraw()

    def action_clear(self) -> None:
        """Clear the lines shown"""
        self.cleared_seq = self.app.audit_seq
        self.redraw()
