"""Short, fixed-width renderings of numbers and times for 80-column tables."""
from __future__ import annotations

import time

from rich.text import Text


class Sortable(Text):
    """Text that sorts by a value of its own (bytes, ms, a timestamp)."""

    def __init__(self, text: str, value, style: str = "", justify="right"):
        super().__init__(text, style=style, justify=justify)
        self.sort_value = value

    def __eq__(self, other) -> bool:       # lets the table skip unchanged cells
        return (isinstance(other, Sortable) and self.plain == other.plain
                and self.sort_value == other.sort_value and str(self.style) == str(other.style))

    __hash__ = None


def sort_key(value):
    return getattr(value, "sort_value", str(value) if not isinstance(value, (int, float))
                   else value)


def size(n: int | None) -> str:
    """1023 B, 1.2 K, 34.5 M, 1.2 G: at most 6 characters."""
    if n is None:
        return "-"
    units = ("B", "K", "M", "G", "T")
    value, unit = float(n), 0
    while value >= 1000 and unit < len(units) - 1:
        value /= 1024
        unit += 1
    if unit == 0:
        return f"{int(value)} B"
    return f"{value:.1f} {units[unit]}" if value < 100 else f"{value:.0f} {units[unit]}"


def num(value: int | float | None, sortable: bool = True, style: str = "") -> Text:
    if value is None:
        return Sortable("-", -1, style="dim")
    text = f"{value:,}" if isinstance(value, int) else f"{value:,.1f}"
    return Sortable(text, value, style=style)


def pid(value: int | None) -> Text:
    return Sortable(str(value) if value else "-", value or 0, style="" if value else "dim")


def bytes_cell(n: int | None) -> Text:
    return Sortable(size(n), n if n is not None else -1)


def percent(ratio: float | None) -> str:
    return "-" if ratio is None else f"{ratio * 100:.1f}%"


def clock(ts: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(ts)) if ts else "-"


def duration(seconds: float) -> str:
    """3s, 4m05s, 2h03m, 3d04h."""
    s = int(max(0, seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


STATE_STYLES = {
    "RUNNING": "green", "STARTING": "yellow", "STOPPING": "yellow", "BACKOFF": "red",
    "STOPPED": "dim", "EXITED": "red", "FATAL": "bold red", "UNKNOWN": "red",
    "UNSUPERVISED": "yellow",
}
HEALTH_STYLES = {"ok": "green", "errors": "yellow", "down": "bold red", "maintenance": "cyan"}
CERT_STYLES = {"ok": "green", "expiring": "bold yellow", "expired": "bold red"}


def state(name: str) -> Text:
    return Text(name, style=STATE_STYLES.get(name, ""))
