"""Workers: every supervised process; start, stop, restart, rolling restart, tail a log."""
from __future__ import annotations

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.widgets import Log, Static
from textual.worker import get_current_worker

from carbotui.admin.node import FleetSnapshot, Process
from carbotui.tui import format as fmt
from carbotui.tui.messages import LogText
from carbotui.tui.screens.base import LiveScreen
from carbotui.tui.widgets.keyed_table import KeyedTable

COLUMNS = [("name", "Process", 14), ("state", "State", 8), ("pid", "PID", 6),
           ("cpu", "CPU%", 5), ("rss", "RSS", 7), ("files", "Files", 5), ("conns", "Conns", 5),
           ("sess", "Sess", 4), ("since", "Since", 8), ("description", "Supervisor", 24)]


class WorkersScreen(LiveScreen, title="Workers", main="#processes"):
    BINDINGS = [Binding("s", "start", "Start", id="workers.start"),
                Binding("x", "stop", "Stop", id="workers.stop"),
                Binding("r", "restart", "Restart", id="workers.restart"),
                Binding("R", "rolling_restart", "Rolling", id="workers.rolling", key_display="R"),
                Binding("l", "toggle_log", "Log", id="workers.log")]

    def __init__(self):
        super().__init__()
        self.processes: dict[str, Process] = {}
        self.log_process: str | None = None
        self.log_offset = -1

    def compose_body(self) -> ComposeResult:
        yield KeyedTable(COLUMNS, id="processes")
        yield Static(id="log-title", classes="log-header")
        yield Log(id="log", max_lines=2000, auto_scroll=True)

    def on_mount(self) -> None:
        self.query_one("#log", Log).display = False
        self.query_one("#log-title", Static).display = False

    def show(self, snapshot: FleetSnapshot) -> None:
        self.processes = {p.name: p for p in snapshot.processes}
        rows = {}
        for p in snapshot.processes:
            s = p.stats
            running = p.state == "RUNNING"
            rows[p.name] = (Text(p.name, style="bold" if p.is_worker else ""),
                            fmt.state(p.state), fmt.pid(p.pid), fmt.num(p.cpu),
                            fmt.bytes_cell(p.rss), fmt.num(p.open_files), fmt.num(p.connections),
                            fmt.num(s.sessions if s else None),
                            fmt.Sortable(fmt.clock(p.started) if running else "-", p.started,
                                         justify="left"),
                            Text(p.description, style="dim"))
        self.table.sync(rows)

    def _selected(self) -> Process | None:
        return self.selected(self.processes)

    # -- process control --------------------------------------------------------------
    def action_start(self) -> None:
        """Start the selected process"""
        p = self._selected()
        if p is None:
            return
        if p.state == "RUNNING":
            self.notify(f"{p.name} is already running", severity="warning")
            return
        self.app.run_action_in_thread(self.app.source.start, p.name)

    def action_stop(self) -> None:
        """Stop the selected process (asks first)"""
        p = self._selected()
        if p is None:
            return
        detail = (f"It stops accepting, lets its {p.stats.sessions if p.stats else 0} sessions "
                  f"finish (up to the stop timeout) and exits; the other workers keep serving."
                  if p.is_worker else "Everything that depends on it stops working.")
        self.confirm(f"Stop {p.name}?", detail, "Stop", self.app.source.stop, p.name)

    def action_restart(self) -> None:
        """Restart the selected process"""
        p = self._selected()
        if p is None:
            return
        self.notify(f"restarting {p.name}…", timeout=3)
        self.app.run_action_in_thread(self.app.source.restart, p.name)

    def action_rolling_restart(self) -> None:
        """Restart every proxy worker, one at a time"""
        workers = [p for p in self.processes.values() if p.is_worker]
        self.confirm(f"Restart all {len(workers)} proxy workers, one at a time?",
                     "Each worker drains and restarts; the next waits until it serves again.",
                     "Rolling restart", self.app.source.rolling_restart, self.app.progress)

    # -- log tail ---------------------------------------------------------------------
    def action_toggle_log(self) -> None:
        """Show or hide the log of the selected process, following it"""
        log = self.query_one("#log", Log)
        title = self.query_one("#log-title", Static)
        p = self._selected()
        if log.display and (p is None or p.name == self.log_process):
            log.display = title.display = False
            self.log_process = None
            self.workers.cancel_group(self, "logtail")
            return
        if p is None:
            return
        self.log_process, self.log_offset = p.name, -1
        log.clear()
        log.display = title.display = True
        title.update(Text(f" log of {p.name} (following; l: hide)", style="bold"))
        self.follow_log(p.name)

    @work(thread=True, exclusive=True, group="logtail", exit_on_error=False)
    def follow_log(self, name: str) -> None:
        worker = get_current_worker()
        offset = -1
        while not worker.is_cancelled and self.log_process == name:
            try:
                text, new_offset = self.app.source.tail_log(name, offset)
            except Exception as exc:   # noqa: BLE001 - shown in the pane, then retried
                text, new_offset = f"[log unavailable: {exc}]\n", offset
            if text:
                self.post_message(LogText(name, text, reset=offset < 0))
            offset = new_offset
            self.app._stop.wait(max(0.5, min(self.app.refresh_interval, 2.0)))

    @on(LogText)
    def _log_text(self, message: LogText) -> None:
        if message.name != self.log_process:
            return
        self.query_one("#log", Log).write(message.text)
