"""Alerts: what auditwatch wrote to alerts.log, newest first, and the IP blocks.

The upper table streams alerts as they are written (the App keeps the last
thousand); the line under it says who, what and when for the selected one.
The lower table is the block list from memcached, shared by every node: block
the selected alert's IP (b), block any IP (a), lift the selected block (u).
"""
from __future__ import annotations

import time

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.widgets import DataTable, Static

from carbotui.services.alerts import Alert
from carbotui.admin.node import FleetSnapshot
from carbotui.services.throttle import Block
from carbotui.tui import format as fmt
from carbotui.tui.screens.base import LiveScreen
from carbotui.tui.widgets.keyed_table import KeyedTable
from carbotui.tui.widgets.modals import BlockModal, BlockRequest

# 80 columns: every column fits (widths + 2 padding each); the window is in the detail line.
ALERT_COLUMNS = [("time", "Time", 8), ("rule", "Rule", 6), ("fails", "Fails", 7),
                 ("ip", "IP", 17), ("accounts", "Accounts", 20), ("block", "Block", 7)]
BLOCK_COLUMNS = [("ip", "Blocked IP", 15), ("until", "Until", 8), ("length", "For", 6),
                 ("by", "By", 14), ("reason", "Reason", 23)]
RULE_TEXT = {"ipacct": "one IP against one account", "acct": "one account from any IP",
             "ip": "one IP against any account", "total": "all failures together"}


def alert_ip(a: Alert) -> str:
    """The IP "block this IP" offers: the one the rule names, else the most frequent."""
    return a.block_ip or (a.key if a.rule == "ip" else "") or (a.ips[0] if a.ips else "")


def when(ts: float, now: float) -> str:
    """A clock for today's alerts, the day for older ones (8 columns)."""
    if now - ts < 86400:
        return fmt.clock(ts)
    return time.strftime("%d %b", time.localtime(ts))


def listed(items: tuple[str, ...], more: int) -> str:
    extra = len(items) - 1 + more
    return (items[0] if items else "-") + (f" +{extra}" if extra > 0 else "")


class AlertsScreen(LiveScreen, title="Alerts", main="#alerts"):
    BINDINGS = [Binding("b", "block_alert_ip", "Block IP", id="alerts.block_ip"),
                Binding("a", "add_block", "Add block", id="alerts.add_block"),
                Binding("u", "unblock", "Lift block", id="alerts.unblock"),
                Binding("tab", "switch_table", "Alerts/blocks", id="alerts.switch_table",
                        key_display="tab", show=False)]

    def __init__(self):
        super().__init__()
        self.alerts_by_key: dict[str, Alert] = {}
        self.blocks: dict[str, Block] = {}
        self.drawn_seq = -1             # App.alerts_seq drawn; -1: nothing yet
        self.blocks_error = ""

    def compose_body(self) -> ComposeResult:
        yield KeyedTable(ALERT_COLUMNS, id="alerts", sort_column="time", reverse=True)
        yield Static(id="detail", classes="detail")
        yield Static(id="blocks-title", classes="log-header")
        # The reason takes what the other columns leave (widths + 2 padding, scrollbar).
        fixed = sum(w + 2 for _, _, w in BLOCK_COLUMNS[:-1]) + 4
        reason = max(BLOCK_COLUMNS[-1][2], self.app.size.width - fixed)
        yield KeyedTable([*BLOCK_COLUMNS[:-1], ("reason", "Reason", reason)], id="blocks",
                         sort_column="until")

    def focus_main(self) -> None:
        if not isinstance(self.focused, KeyedTable):
            super().focus_main()

    @property
    def alert_table(self) -> KeyedTable:
        return self.table

    @property
    def block_table(self) -> KeyedTable:
        return self.query_one("#blocks", KeyedTable)

    def _now(self) -> float:
        s = self.app.snapshot
        return s.taken_at if s is not None else time.time()

    # -- drawing ------------------------------------------------------------------------
    def show(self, snapshot: FleetSnapshot) -> None:
        self.blocks = {b.ip: b for b in snapshot.blocks}
        self.blocks_error = snapshot.blocks_error
        rows = {}
        for b in snapshot.blocks:
            rows[b.ip] = (Text(b.ip, style="bold red"),
                          fmt.Sortable(when(b.until, b.since), b.until, justify="left"),
                          fmt.Sortable(fmt.duration(b.until - b.since), b.until - b.since),
                          Text(b.by or "-", style="dim"), b.reason)
        self.block_table.sync(rows)
        self._blocks_title()
        self.draw_alerts(force=True)

    def draw_alerts(self, force: bool = False) -> None:
        """Rows for the alerts the App holds; called when new ones arrive."""
        app = self.app
        if not force and self.drawn_seq == app.alerts_seq:
            return
        self.drawn_seq = app.alerts_seq
        now = self._now()
        rows, by_key = {}, {}
        for a in app.alerts:
            ip = alert_ip(a)
            blocked = ip in self.blocks
            by_key[a.id] = a
            rows[a.id] = (
                fmt.Sortable(when(a.last_seen, now), a.last_seen, justify="left"),
                Text(a.rule, style="bold"),
                fmt.Sortable(f"{a.count}/{a.threshold}", a.count,
                             style="red" if a.count >= 2 * a.threshold else ""),
                listed(a.ips, a.more_ips),
                listed(a.accounts, a.more_accounts),
                Text("blocked", style="bold red") if blocked else
                Text("auto" if a.blocked else "", style="dim"))
        self.alerts_by_key = by_key
        table = self.alert_table
        on_newest = table.cursor_row == 0
        if table.sync(rows) and on_newest and table.row_count:
            # The cursor on the newest alert follows the stream; elsewhere it stays put.
            table.move_cursor(row=0, animate=False, scroll=False)
        self._detail()

    def _blocks_title(self) -> None:
        t = Text(no_wrap=True, overflow="ellipsis")
        t.append(f" {len(self.blocks)} IP block{'s' if len(self.blocks) != 1 else ''}",
                 style="bold")
        if self.blocks_error:
            t.append(f" · ⚠ {self.blocks_error}", style="bold yellow")
        else:
            t.append(" on every node · b block alert IP · a add · u lift", style="")
        self.query_one("#blocks-title", Static).update(t)

    def selected_alert(self) -> Alert | None:
        return self.selected(self.alerts_by_key)

    def _detail(self) -> None:
        a = self.selected_alert()
        text = Text(no_wrap=True, overflow="ellipsis", end="")
        if a is None:
            n = len(self.app.alerts)
            text.append(" no alerts in alerts.log yet" if not n else "", style="dim")
            self.query_one("#detail", Static).update(text)
            return
        what = a.summary().split("; ", 1)[0]
        text.append(f" {a.rule}", style="bold").append(f" ({RULE_TEXT.get(a.rule, '')}): ")
        text.append(what)
        text.append("\n")
        text.append(" IPs ", style="dim").append(", ".join(a.ips) or "-")
        if a.more_ips:
            text.append(f" +{a.more_ips}")
        text.append(" · accounts ", style="dim").append(", ".join(a.accounts) or "-")
        if a.more_accounts:
            text.append(f" +{a.more_accounts}")
        text.append(" · ", style="dim").append(",".join(a.protocols))
        text.append(f" · {fmt.clock(a.first_seen)}–{fmt.clock(a.last_seen)}", style="dim")
        if a.blocked:
            text.append(f" · auto-blocked {fmt.duration(a.block_seconds)}", style="red")
        self.query_one("#detail", Static).update(text)

    @on(DataTable.RowHighlighted, "#alerts")
    def _highlighted(self, event: DataTable.RowHighlighted) -> None:
        self._detail()

    # -- actions ------------------------------------------------------------------------
    def action_switch_table(self) -> None:
        """Move between the alert list and the block list"""
        target = self.block_table if self.focused is self.alert_table else self.alert_table
        target.focus()

    def _ask_block(self, ip: str = "", reason: str = "", title: str = "") -> None:
        def answered(request: BlockRequest | None) -> None:
            if request is not None:
                self.app.run_action_in_thread(self.app.source.block, request.ip,
                                              request.duration, request.reason)

        kwargs = {"title": title} if title else {}
        self.app.push_screen(BlockModal(self.app.source.check_block, ip=ip, reason=reason,
                                        **kwargs), answered)

    def action_block_alert_ip(self) -> None:
        """Block the selected alert's IP on every node (asks how long)"""
        a = self.selected_alert()
        ip = alert_ip(a) if a else ""
        if not ip:
            self.notify("no alert with an IP selected; a: block any IP", severity="warning")
            return
        if ip in self.blocks:
            self.notify(f"{ip} is already blocked until {fmt.clock(self.blocks[ip].until)}; "
                        f"blocking again replaces it", timeout=4)
        self._ask_block(ip, f"alert {a.rule}: {a.summary().split('; ', 1)[0]}",
                        title=f"Block {ip} on every node")

    def action_add_block(self) -> None:
        """Block any IP address on every node"""
        self._ask_block()

    def action_unblock(self) -> None:
        """Lift the selected IP block (asks first)"""
        block = self.selected(self.blocks, self.block_table, missing="no IP block selected")
        if block is not None:
            self.confirm(
                f"Lift the block on {block.ip}?",
                f"Blocked by {block.by or '?'} until {fmt.clock(block.until)}: {block.reason}. "
                f"Every node accepts logins from it again (throttling still applies).",
                "Lift", self.app.source.unblock, block.ip)
