"""Messages from the data threads to the UI thread (post_message is thread-safe)."""
from __future__ import annotations

from textual.message import Message

from carbotui.services.alerts import Alert
from carbotui.core.audit import AuditEvent
from carbotui.admin.node import FleetSnapshot


class SnapshotReady(Message):
    def __init__(self, snapshot: FleetSnapshot) -> None:
        super().__init__()
        self.snapshot = snapshot


class SnapshotFailed(Message):
    """collect() itself raised: a bug or an unexpected failure, shown, then retried."""

    def __init__(self, error: str) -> None:
        super().__init__()
        self.error = error


class AuditEvents(Message):
    """New audit.log events, oldest first (one message per batch, never coalesced)."""

    def __init__(self, events: list[AuditEvent]) -> None:
        super().__init__()
        self.events = events


class AlertsArrived(Message):
    """New lines of alerts.log, oldest first. `backlog`: what the file held when the
    dashboard started (shown, but not announced as news)."""

    def __init__(self, alerts: list[Alert], backlog: bool) -> None:
        super().__init__()
        self.alerts, self.backlog = alerts, backlog


class LogText(Message):
    """New text of the supervised process log shown on the Workers screen."""

    def __init__(self, name: str, text: str, reset: bool) -> None:
        super().__init__()
        self.name, self.text, self.reset = name, text, reset
