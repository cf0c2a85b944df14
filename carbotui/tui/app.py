"""The carbotui dashboard: one App, one screen per view, data from a Source.

Data flow (dolphie's shape): a thread worker calls `source.collect()`, posts
SnapshotReady, and the handler schedules the next poll with set_timer, so two
polls never overlap and a slow node just slows the refresh. A snapshot equal to
the previous one (apart from its time) draws nothing. audit.log and alerts.log
are followed by a second thread that posts batches of new lines as they are
written; a new alert is announced on every screen (App.notify).

Keys (posting's way): every action is a Binding with an id, shown in the
footer when useful, listed by the help screen (?), and offered by the command
palette (ctrl+p), where the current screen's actions come first.
"""
from __future__ import annotations

import os
import signal
import sys
import threading
import traceback
from collections import deque
from typing import Callable, Iterable

from textual import on, work
from textual.app import App, SystemCommand
from textual.binding import Binding
from textual.screen import Screen
from textual.worker import get_current_worker

from carbotui.admin.node import FleetSnapshot
from carbotui.backends.worker_sockets import SessionQuery
from carbotui.tui.messages import AlertsArrived, AuditEvents, SnapshotFailed, SnapshotReady
from carbotui.tui.screens.alerts import AlertsScreen
from carbotui.tui.screens.audit import AuditScreen
from carbotui.tui.screens.backends import BackendsScreen
from carbotui.tui.screens.base import LiveScreen
from carbotui.tui.screens.cache import CacheScreen
from carbotui.tui.screens.config import ConfigScreen
from carbotui.tui.screens.connections import ConnectionsScreen
from carbotui.tui.screens.help import HelpScreen
from carbotui.tui.screens.overview import OverviewScreen
from carbotui.tui.screens.workers import WorkersScreen
from carbotui.tui.source import ActionFailed, Source
from carbotui.tui.widgets.statusbar import SCREENS, NavBar, StatusBar

SCREEN_CLASSES: dict[str, type[LiveScreen]] = {
    "overview": OverviewScreen, "connections": ConnectionsScreen, "backends": BackendsScreen,
    "cache": CacheScreen, "audit": AuditScreen, "config": ConfigScreen, "workers": WorkersScreen,
    "alerts": AlertsScreen,
}
AUDIT_BUFFER = 5000              # events kept for filtering on the Audit screen
ALERT_BUFFER = 1000              # alerts kept for the Alerts screen and the hourly count
ALERT_TOASTS = 3                 # at most this many notifications for one batch
REFRESH_STEPS = (0.5, 1, 2, 5, 10, 30)


def _screen_bindings() -> list[Binding]:
    out = []
    for i, (mode, title) in enumerate(SCREENS, 1):
        out.append(Binding(str(i), f"app.show_screen('{mode}')", title, show=False,
                           id=f"screen.{mode}", tooltip=f"Show the {title} screen"))
    return out


class CarbotuiApp(App):
    CSS_PATH = "app.tcss"
    TITLE = "carbotui"
    MODES = {mode: cls for mode, cls in SCREEN_CLASSES.items()}
    BINDINGS = [
        *_screen_bindings(),
        Binding("]", "next_screen(1)", "Next screen", show=False, id="screen.next"),
        Binding("[", "next_screen(-1)", "Previous screen", show=False, id="screen.previous"),
        Binding("question_mark,f1", "help", "Help", id="app.help", key_display="?"),
        Binding("q", "quit", "Quit", id="app.quit"),
        Binding("p", "toggle_pause", "Pause", show=False, id="app.pause",
                tooltip="Stop or resume refreshing"),
        Binding("ctrl+r", "refresh_now", "Refresh now", show=False, id="app.refresh"),
        Binding("plus", "change_refresh(-1)", "Refresh faster", show=False,
                id="app.refresh_faster", key_display="+"),
        Binding("minus", "change_refresh(1)", "Refresh slower", show=False,
                id="app.refresh_slower", key_display="-"),
        Binding("f8", "save_screenshot", "Screenshot", show=False, id="app.screenshot",
                tooltip="Save an SVG of the screen in the current directory"),
    ]

    def __init__(self, source: Source, *, refresh: float = 1.0, audit_poll: float = 0.3,
                 watch_terminal: bool = True, keymap: dict[str, str] | None = None):
        super().__init__()
        self.source = source
        self.refresh_interval = max(0.1, float(refresh))
        self.audit_poll = audit_poll
        self.watch_terminal = watch_terminal
        self.keymap = keymap or {}
        self.snapshot: FleetSnapshot | None = None
        self.changed_at = 0.0
        self.data_error = ""
        self.paused = False
        self.audit: deque = deque(maxlen=AUDIT_BUFFER)
        self.audit_seq = 0               # events ever received; screens track what they drew
        self.alerts: deque = deque(maxlen=ALERT_BUFFER)
        self.alerts_seq = 0              # alerts ever received
        self.alerts_announced = 0        # new alerts notified (for tests)
        self.polls = 0                   # snapshots received (for tests)
        self.redraws = 0                 # snapshots that changed something (for tests)
        self._poll_timer = None
        self._stop = threading.Event()
        self.session_query = SessionQuery()   # the sessions page the refreshes fetch

    def notify(self, message: str, *, title: str = "", severity="information",
               timeout: float | None = None, markup: bool = False) -> None:
        """Every toast is plain text, whoever asks (a screen's notify passes markup=True
        by default): toasts quote accounts, IPs and block reasons that clients chose."""
        super().notify(message, title=title, severity=severity, timeout=timeout,
                       markup=False)

    # -- start and stop ----------------------------------------------------------------
    def on_mount(self) -> None:
        if self.keymap:
            self.set_keymap(self.keymap)
        self.switch_mode("overview")
        self.poll()
        self.follow_audit()
        if self.watch_terminal and not self.is_headless:
            # An SSH drop hangs up the terminal: leave at once instead of spinning on
            # a dead tty (SIGHUP), and check now and then in case no signal came.
            # signal.signal, not the loop's add_signal_handler: the handler must run even
            # when the loop is stuck (see _hangup).
            try:
                signal.signal(signal.SIGHUP, self._hangup)
            except (ValueError, OSError):              # not the main thread
                pass
            self.set_interval(2.0, self._check_terminal)

    def _hangup(self, *_) -> None:
        """The terminal is gone: nothing can be drawn on it or restored, so the process
        leaves now, without Textual's shutdown. That shutdown writes to the terminal
        through a writer thread which dies on the first EIO, after which the writes
        block for good; and the kernel's hang-up sends SIGCONT with the SIGHUP, on which
        Textual (8.2) starts application mode again under the shutdown. Both left the
        dashboard hanging on a closed SSH session (1 hang-up in 10 on a loaded machine).
        Nothing here needs an orderly end: the one file the dashboard writes (the
        maintenance list) is replaced whole by a rename, and the sockets to the workers,
        memcached and LDAP close with the process."""
        os._exit(129)

    def _check_terminal(self) -> None:
        try:
            alive = os.isatty(sys.__stdin__.fileno()) and os.isatty(sys.__stdout__.fileno())
        except (OSError, ValueError, AttributeError):
            alive = False
        if not alive:
            self._hangup()

    def on_unmount(self) -> None:
        self._stop.set()
        try:
            self.source.close()
        except Exception:   # noqa: BLE001 - closing on the way out; nothing left to tell
            pass

    # -- polling -------------------------------------------------------------------------
    @work(thread=True, exclusive=True, group="poll", exit_on_error=False,
          description="collect node data")
    def poll(self) -> None:
        try:
            snapshot = self.source.collect()
        except Exception as exc:       # noqa: BLE001 - shown in the status bar, then retried
            self.post_message(SnapshotFailed(f"{type(exc).__name__}: {exc}"))
            self.log.error(traceback.format_exc())
            return
        self.post_message(SnapshotReady(snapshot))

    def _schedule_poll(self) -> None:
        if self._poll_timer is not None:
            self._poll_timer.stop()
            self._poll_timer = None
        if not self.paused:
            self._poll_timer = self.set_timer(self.refresh_interval, self.poll)

    def set_session_query(self, query: SessionQuery) -> None:
        """The sessions page to fetch (the Connections screen's sort and filter): given to
        the source, and fetched at once when it changed (not when paused)."""
        if query == self.session_query:
            return
        self.session_query = query
        setter = getattr(self.source, "set_session_query", None)
        if setter is not None:
            setter(query)
            if not self.paused:
                self.poll_now()

    def poll_now(self) -> None:
        if self._poll_timer is not None:
            self._poll_timer.stop()
            self._poll_timer = None
        self.poll()

    @on(SnapshotReady)
    def _snapshot_ready(self, message: SnapshotReady) -> None:
        self.polls += 1
        self._schedule_poll()
        recovered = bool(self.data_error)
        self.data_error = ""
        snapshot = message.snapshot
        if snapshot.same_data(self.snapshot) and not recovered:
            return                                        # nothing new: draw nothing
        self.redraws += 1
        self.snapshot = snapshot
        self.changed_at = snapshot.taken_at
        screen = self.screen
        if isinstance(screen, LiveScreen):
            self.show_chrome(screen)
            screen.show(snapshot)

    @on(SnapshotFailed)
    def _snapshot_failed(self, message: SnapshotFailed) -> None:
        self._schedule_poll()
        if message.error != self.data_error:
            self.data_error = message.error
            if isinstance(self.screen, LiveScreen):
                self.show_chrome(self.screen)

    def stack_state(self) -> str:
        s = self.snapshot
        if s is None:
            return "starting"
        if not s.supervisor_up and not s.totals.workers_up:
            return "down"
        return "degraded" if s.problems else "ok"

    def show_chrome(self, screen: LiveScreen) -> None:
        """The status and nav bars of `screen`, from what the App knows now."""
        s = self.snapshot
        screen.query_one(StatusBar).show(
            node=self.source.node, state=self.stack_state(), refresh=self.refresh_interval,
            changed_at=self.changed_at, problems=s.problems if s else (), paused=self.paused,
            error=self.data_error)
        screen.query_one(NavBar).show(screen.MODE, screen.size.width or self.size.width)

    # -- audit.log and alerts.log -----------------------------------------------------------
    @work(thread=True, group="audit", exit_on_error=False,
          description="follow audit.log and alerts.log")
    def follow_audit(self) -> None:
        worker = get_current_worker()
        backlog = True                   # the first read of alerts.log is its past
        while not worker.is_cancelled and not self._stop.is_set():
            try:
                events = self.source.audit_events()
            except Exception as exc:   # noqa: BLE001 - keep following; say it once
                self.log.error(f"audit.log: {exc}")
                events = []
            if events:
                self.post_message(AuditEvents(events))
            try:
                alerts = self.source.alerts()
            except Exception as exc:   # noqa: BLE001 - keep following
                self.log.error(f"alerts.log: {exc}")
            else:
                if alerts:
                    self.post_message(AlertsArrived(alerts, backlog))
                backlog = False
            self._stop.wait(self.audit_poll)

    @on(AuditEvents)
    def _audit_events(self, message: AuditEvents) -> None:
        self.audit.extend(message.events)
        self.audit_seq += len(message.events)
        if isinstance(self.screen, AuditScreen):
            self.screen.append_new()

    @on(AlertsArrived)
    def _alerts_arrived(self, message: AlertsArrived) -> None:
        self.alerts.extend(message.alerts)
        self.alerts_seq += len(message.alerts)
        if not message.backlog:
            self.alerts_announced += len(message.alerts)
            shown = message.alerts[-ALERT_TOASTS:]
            if len(message.alerts) > len(shown):
                self.notify(f"{len(message.alerts) - len(shown)} more new alerts: 8 lists them",
                            title="Alerts", severity="warning", timeout=10)
            for alert in shown:
                self.notify(alert.summary(), title=f"Alert: {alert.rule} {alert.key}",
                            severity="warning", timeout=10, markup=False)
        screen = self.screen
        if isinstance(screen, AlertsScreen):
            screen.draw_alerts()
        elif isinstance(screen, OverviewScreen) and self.snapshot is not None:
            screen.show_security(self.snapshot)

    def recent_alerts(self, now: float, seconds: float = 3600) -> int:
        return sum(1 for a in self.alerts if a.last_seen > now - seconds)

    # -- actions run in a thread ------------------------------------------------------------
    def run_action_in_thread(self, func: Callable[..., str], *args, **kwargs) -> None:
        self._action_worker(func, args, kwargs)

    @work(thread=True, group="actions", exit_on_error=False, description="admin action")
    def _action_worker(self, func, args, kwargs) -> None:
        try:
            message = func(*args, **kwargs)
        except ActionFailed as exc:
            self.notify(str(exc), title="Refused", severity="error", timeout=8)
        except Exception as exc:       # noqa: BLE001 - an unexpected failure, still shown
            self.notify(f"{type(exc).__name__}: {exc}", title="Failed", severity="error",
                        timeout=8)
        else:
            self.notify(message, title="Done")
        self.call_from_thread(self.poll_now)

    def progress(self, text: str) -> None:
        """Thread-safe progress line for long actions (rolling restart)."""
        self.notify(text, timeout=3)

    # -- app actions ---------------------------------------------------------------------
    def action_show_screen(self, mode: str) -> None:
        if not self.screen.is_modal:         # a dialog is answered first
            self.switch_mode(mode)

    def action_next_screen(self, step: int) -> None:
        if self.screen.is_modal:
            return
        modes = [m for m, _ in SCREENS]
        current = self.current_mode if self.current_mode in modes else modes[0]
        self.switch_mode(modes[(modes.index(current) + step) % len(modes)])

    def action_help(self) -> None:
        if not isinstance(self.screen, HelpScreen):
            title = SCREEN_CLASSES[self.current_mode].TITLE_TEXT \
                if self.current_mode in SCREEN_CLASSES else ""
            self.push_screen(HelpScreen(self.all_bindings(), title))

    def action_toggle_pause(self) -> None:
        self.paused = not self.paused
        if self.paused:
            if self._poll_timer is not None:
                self._poll_timer.stop()
        else:
            self.poll_now()
        if isinstance(self.screen, LiveScreen):
            self.show_chrome(self.screen)

    def action_refresh_now(self) -> None:
        self.poll_now()

    def action_change_refresh(self, step: int) -> None:
        steps = sorted(set(REFRESH_STEPS) | {self.refresh_interval})
        index = steps.index(self.refresh_interval) + step
        self.refresh_interval = steps[max(0, min(len(steps) - 1, index))]
        self.notify(f"refresh every {self.refresh_interval:g}s", timeout=2)
        self._schedule_poll()
        if isinstance(self.screen, LiveScreen):
            self.show_chrome(self.screen)

    def action_save_screenshot(self) -> None:
        path = self.save_screenshot()
        self.notify(f"saved {path}", timeout=4)

    # -- help and palette --------------------------------------------------------------------
    def all_bindings(self) -> list[tuple[str, Binding]]:
        """(group title, binding) for the app and every screen, in display order."""
        out = [("Global", b) for b in self.BINDINGS if isinstance(b, Binding)]
        for mode, cls in SCREEN_CLASSES.items():
            out += [(cls.TITLE_TEXT, b) for b in cls.BINDINGS if isinstance(b, Binding)]
        keymap = getattr(self, "_keymap", {}) or {}
        return [(g, b if b.id not in keymap else
                 Binding(keymap[b.id], b.action, b.description, show=b.show, id=b.id,
                         tooltip=b.tooltip)) for g, b in out]

    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        current = screen if isinstance(screen, LiveScreen) else None
        if current is not None:
            for b in type(current).BINDINGS:
                if isinstance(b, Binding) and b.description:
                    yield SystemCommand(f"{current.TITLE_TEXT}: {b.description}",
                                        f"key {self.get_key_display(b)} · {b.tooltip or b.id}",
                                        self._runner(b.action, current))
        for b in self.BINDINGS:
            if isinstance(b, Binding):
                yield SystemCommand(b.description, f"key {self.get_key_display(b)} · {b.id}",
                                    self._runner(b.action, self))
        yield from super().get_system_commands(screen)

    def _runner(self, action: str, namespace) -> Callable[[], None]:
        async def run() -> None:
            await self.run_action(action, namespace)
        return run


def run(settings, *, refresh: float = 1.0, mouse: bool = True) -> int:
    """Open the dashboard for the node described by `settings` (carbotui.toml)."""
    from carbotui.tui.source import LiveSource

    app = CarbotuiApp(LiveSource(settings), refresh=refresh)
    app.run(mouse=mouse)
    return app.return_code or 0
