"""auditwatch: tail audit.log, apply the alert rules, send alerts, block IPs.

    python -m carbotui.admin.auditwatch --config carbotui.toml

Runs under supervisord (program:auditwatch). SIGTERM/SIGINT: finish the lines
in hand, save the position, exit 0. SIGHUP: reload [alerts] and [throttle]
(a bad file is logged and the old settings stay). SIGUSR1 (logrotate's postrotate):
reopen alerts.log and look at audit.log's path at once.

Following the file. Files are known by (device, inode), never by name:

* rename rotation (logrotate ``create``, log4j rollover): when the path names
  a new inode the old file stays open and is still read for ``rotate_grace``
  seconds after its last growth, because the workers' AuditLog notices the
  new file only on its next check (up to 1 s) and keeps appending to the old
  one until then. The new file is read from its first byte.
* truncation (``copytruncate``): the size falling below our offset means the
  file was emptied; reading starts again at 0. (If it grows past the old
  offset between two polls the truncation cannot be seen: prefer ``create``.)
* A partial last line is not consumed: only bytes up to the last newline
  count as read, so a line being written is read whole on the next poll.
  Lines are split on ``b"\\n"`` only, before decoding (never ``splitlines``,
  which also breaks on characters a client can send: U+2028, NEL...).

Exactly once across a restart. The position (device, inode, offset of every
open file) is saved in ``var/run/auditwatch.state`` (written to a temp file,
fsynced, renamed) after each batch of lines has gone through the rules and
its alerts were written to the alert log and the e-mail spool. On start each
saved file is found again by inode, under its own name or a rotated one
(``audit.log.1``, ``audit.log-20260101``...), and read on from its offset; a
file at the path that the state does not know appeared while we were down
and is read from 0. So a clean stop (SIGTERM, SIGHUP, supervisorctl restart)
neither re-reads nor skips a line. After a crash (SIGKILL, power loss) the
lines of the one batch in flight (at most 64 KiB per file) may be read again;
a rotated file that was compressed or deleted while we were down cannot be
read and this is logged with the size that was lost. The very first start
(no state file) begins at the end of the existing file, like ``tail -f`` and
zmauditswatch: history is not alerted on. The sliding windows live in memory:
a burst that straddles a restart is counted from the restart on.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

from carbotui.core import settings as config
from carbotui.services.alerts import Alert, AlertLog, AlertSettings, CommandHook, Rules, SmtpSpool
from carbotui.core.audit import parse_line
from carbotui.backends.memcache import Memcache
from carbotui.services.throttle import Throttle, ThrottleUnavailable, whitelisted

log = logging.getLogger("carbotui.admin.auditwatch")

CHUNK = 64 * 1024
STATE_NAME = "auditwatch.state"


# -- the tailer ---------------------------------------------------------------

@dataclass
class _File:
    fd: int
    dev: int
    ino: int
    offset: int                          # end of the last complete line consumed
    name: str
    rotated_at: float = 0.0              # monotonic time it stopped being the path; 0: current
    grew_at: float = 0.0


def _lines(data: bytes) -> list[str]:
    """Complete lines, split on b"\\n" *before* decoding: str.splitlines() would also
    break on NEL, U+2028, U+2029 and others, which a client can put into a value."""
    if data.endswith(b"\n"):
        data = data[:-1]
    return [line.removesuffix(b"\r").decode("utf-8", "replace") for line in data.split(b"\n")]


class Tail:
    """Complete lines of a log file and its rotated predecessors, each exactly once."""

    def __init__(self, path: Path, state_path: Path, grace: float = 5.0):
        self.path, self.state_path, self.grace = Path(path), Path(state_path), grace
        self.files: list[_File] = []     # rotated ones first, the current one last
        self.counters = {"lines": 0, "events": 0, "failures": 0, "alerts": 0, "ignored": 0}
        self._had_state = False
        self.changed = False             # files opened or dropped since the last commit

    # state ------------------------------------------------------------------
    def start(self) -> None:
        saved = self._load_state()
        now = time.monotonic()
        for entry in saved:
            found = self._find(entry["dev"], entry["ino"])
            if found is None:
                log.error("%s (inode %d) was rotated away and removed or compressed while "
                          "auditwatch was stopped; its lines after byte %d were not read",
                          self.path.name, entry["ino"], entry["offset"])
                continue
            f = self._open(found, entry["offset"])
            if f is None:
                continue
            if f.offset > os.fstat(f.fd).st_size:
                log.warning("%s shrank while auditwatch was stopped (truncated); reading it "
                            "from the start", found)
                f.offset = 0
            if found != self.path:
                f.rotated_at = f.grew_at = now
                log.info("reading the rest of rotated %s from byte %d", found, f.offset)
            self.files.append(f)
        self._check_path(first_start=not self._had_state)

    def _load_state(self) -> list[dict]:
        try:
            data = json.loads(self.state_path.read_text())
        except FileNotFoundError:
            return []
        except (OSError, ValueError) as exc:
            log.error("cannot read %s (%s); starting at the end of %s", self.state_path, exc,
                      self.path)
            return []
        self._had_state = True
        self.counters.update({k: int(v) for k, v in data.get("counters", {}).items()
                              if k in self.counters})
        return [f for f in data.get("files", []) if {"dev", "ino", "offset"} <= set(f)]

    def commit(self) -> None:
        """Save the position; called after the lines returned so far were handled."""
        state = {"path": str(self.path), "saved": time.time(), "counters": self.counters,
                 "files": [{"dev": f.dev, "ino": f.ino, "offset": f.offset, "name": f.name}
                           for f in self.files]}
        self.state_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.state_path.with_name(self.state_path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        try:
            os.write(fd, json.dumps(state).encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.state_path)
        self._had_state = True
        self.changed = False

    def close(self) -> None:
        for f in self.files:
            os.close(f.fd)
        self.files = []

    # files ------------------------------------------------------------------
    def _find(self, dev: int, ino: int) -> Path | None:
        """The file with this inode: the path itself, or a rotated sibling of it."""
        candidates = [self.path]
        try:
            candidates += sorted(p for p in self.path.parent.iterdir()
                                 if p.name.startswith(self.path.name) and p != self.path)
        except OSError:
            pass
        for p in candidates:
            try:
                st = os.stat(p)
            except OSError:
                continue
            if (st.st_dev, st.st_ino) == (dev, ino):
                return p
        return None

    def _open(self, path: Path, offset: int) -> _File | None:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        st = os.fstat(fd)
        return _File(fd, st.st_dev, st.st_ino, offset, path.name, grew_at=time.monotonic())

    def _check_path(self, first_start: bool = False) -> None:
        """Notice rotation: the path is gone or names another inode."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            st = None
        current = self.files[-1] if self.files and not self.files[-1].rotated_at else None
        if st is not None and current and (st.st_dev, st.st_ino) == (current.dev, current.ino):
            return
        now = time.monotonic()
        if current is not None:
            current.rotated_at = now
            log.info("%s was rotated; following the new file, still reading the old one for "
                     "%g s", self.path.name, self.grace)
        if st is None:
            return
        if any((f.dev, f.ino) == (st.st_dev, st.st_ino) for f in self.files):
            return                        # the saved file is back under its name (mv back)
        f = self._open(self.path, 0)
        if f is None:
            return
        if first_start:
            f.offset = os.fstat(f.fd).st_size
            log.info("first start: following %s from its end (byte %d)", self.path, f.offset)
        self.files.append(f)
        self.changed = True

    def _read(self, f: _File) -> tuple[list[str], bool]:
        if not f.rotated_at and os.fstat(f.fd).st_size < f.offset:
            log.warning("%s was truncated (copytruncate?); reading it from the start", f.name)
            f.offset = 0
        data = os.pread(f.fd, CHUNK, f.offset)
        if not data:
            return [], False
        end = data.rfind(b"\n") + 1
        if end == 0:
            if len(data) < CHUNK:
                return [], False          # a line still being written: wait for its newline
            end = len(data)               # one absurdly long "line": skip it as junk
        f.offset += end
        f.grew_at = time.monotonic()
        return _lines(data[:end]), len(data) == CHUNK

    def poll(self) -> tuple[list[str], bool]:
        """New complete lines (older files first) and whether more is waiting."""
        lines, more = [], False
        self._check_path()
        for f in list(self.files):
            got, full = self._read(f)
            lines += got
            more |= full
        now = time.monotonic()
        for f in [f for f in self.files if f.rotated_at]:
            if not more and now - max(f.rotated_at, f.grew_at) > self.grace:
                os.close(f.fd)
                self.files.remove(f)
                self.changed = True
                log.info("done with rotated %s", f.name)
        self.counters["lines"] += len(lines)
        return lines, more


# -- the program --------------------------------------------------------------

class Watcher:
    """Rules + sinks + the block action, around one Tail."""

    def __init__(self, settings: config.Settings):
        s = self.settings = settings
        self.rules = Rules(s.alerts, node=s.node_name)
        self.tail = Tail(s.audit_log, s.run_dir / STATE_NAME, s.alerts.rotate_grace)
        self.cache = Memcache(s.memcached_servers, timeout=s.memcached_timeout,
                              reconnect=s.memcached_reconnect)
        self.throttle = Throttle(self.cache, settings.throttle)
        self.smtp: SmtpSpool | None = None
        self.hooks: set[asyncio.Task] = set()
        self._apply_sinks(settings.alerts)

    def _apply_sinks(self, a: AlertSettings) -> None:
        self.alert_log = AlertLog(a.log) if a.log else None
        self.command = CommandHook(a.command, a.command_timeout) if a.command else None
        if self.smtp and self.smtp.settings != a.smtp:
            self.smtp.stop()
            self.smtp = None
        if a.smtp and self.smtp is None:
            self.smtp = SmtpSpool(a.smtp)
            self.smtp.start()

    def reload(self, path) -> None:
        try:
            settings = config.load(path)
        except config.ConfigError as exc:
            log.error("reload failed, keeping the previous settings: %s", exc)
            return
        if settings.audit_log != self.settings.audit_log:
            log.warning("var_dir changed: restart auditwatch to follow the new audit.log")
        self.settings = settings
        self.rules.reconfigure(settings.alerts)
        self.throttle.settings = settings.throttle
        self.tail.grace = settings.alerts.rotate_grace
        self._apply_sinks(settings.alerts)
        log.warning("settings reloaded from %s", settings.path)

    async def handle(self, lines: list[str]) -> None:
        ignored = self.rules.ignored_total
        for line in lines:
            event = parse_line(line)
            if event is None:
                continue
            self.tail.counters["events"] += 1
            if not event.ok:
                self.tail.counters["failures"] += 1
            for alert in self.rules.feed(event):
                await self.act(alert)
        # lines the rules refused (dated in the future, client not an IP)
        self.tail.counters["ignored"] += self.rules.ignored_total - ignored

    async def act(self, alert: Alert) -> None:
        if alert.block_ip:
            alert = await self._block(alert)
        self.tail.counters["alerts"] += 1
        log.warning("ALERT %s: %s", alert.rule, alert.summary())
        # Durable sinks first, and before the position is saved: see the module doc.
        for sink in (self.alert_log, self.smtp):
            if sink is None:
                continue
            try:
                sink.emit(alert)
            except OSError as exc:
                log.error("cannot write alert to %s: %s", getattr(sink, "path", None) or
                          sink.settings.spool, exc)
        if self.command:
            task = asyncio.create_task(self.command.emit(alert))
            self.hooks.add(task)
            task.add_done_callback(self.hooks.discard)

    async def _block(self, alert: Alert) -> Alert:
        if whitelisted(alert.block_ip, self.throttle.settings.whitelist):
            log.info("not blocking %s: it is in throttle.whitelist", alert.block_ip)
            return replace(alert, block_ip="", block_seconds=0)
        try:
            await self.throttle.block(alert.block_ip, alert.block_seconds,
                                      f"auditwatch {alert.rule}: {alert.summary()}",
                                      by="auditwatch")
        except (ThrottleUnavailable, ValueError) as exc:
            # ValueError: not an IP (Rules refuses those; never let one stop the watcher)
            log.error("cannot block %r: %s", alert.block_ip, exc)
            return replace(alert, block_ip="", block_seconds=0) \
                if isinstance(exc, ValueError) else alert
        return replace(alert, blocked=True)

    def reopen_logs(self) -> None:
        """SIGUSR1: the next alert goes to the file now at the alert log's path (AlertLog
        opens it by name for each alert, so nothing stays open on the moved one); the
        poll that follows notices a rotated audit.log at once."""
        self._apply_sinks(self.settings.alerts)
        log.info("log files reopened (SIGUSR1)")

    async def close(self) -> None:
        if self.hooks:
            await asyncio.wait(self.hooks, timeout=self.settings.alerts.command_timeout)
        if self.smtp:
            self.smtp.stop()
        self.tail.close()
        await self.cache.close()


async def run(config_path: str) -> int:
    try:
        settings = config.load(config_path)
    except config.ConfigError as exc:
        log.error("cannot start: %s", exc)
        return 2
    watcher = Watcher(settings)
    stop, hup, wake = asyncio.Event(), asyncio.Event(), asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig, flag in ((signal.SIGTERM, stop), (signal.SIGINT, stop), (signal.SIGHUP, hup)):
        # a signal also ends the poll pause: a reload is applied at once
        loop.add_signal_handler(sig, lambda flag=flag: (flag.set(), wake.set()))
    # logrotate's postrotate: alerts.log is reopened, and audit.log looked at again now
    loop.add_signal_handler(signal.SIGUSR1, lambda: (watcher.reopen_logs(), wake.set()))
    watcher.tail.start()
    watcher.tail.commit()
    log.info("watching %s (rules %s, window %d s, cooldown %d s)",
             settings.audit_log,
             ", ".join(f"{r}={x.threshold}" for r, x in settings.alerts.rules.items()),
             settings.alerts.window, settings.alerts.cooldown)
    try:
        while not stop.is_set():
            if hup.is_set():
                hup.clear()
                watcher.reload(config_path)
            lines, more = watcher.tail.poll()
            if lines:
                await watcher.handle(lines)
            if lines or watcher.tail.changed:
                watcher.tail.commit()
            if more:
                continue                  # a backlog: no pause until it is read
            try:
                await asyncio.wait_for(wake.wait(), watcher.settings.alerts.poll_interval)
            except asyncio.TimeoutError:
                pass
            wake.clear()
    finally:
        watcher.tail.commit()
        await watcher.close()
    log.info("stopped; position saved in %s", watcher.tail.state_path)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m carbotui.admin.auditwatch",
                                     description="tail audit.log and raise failed-login alerts")
    parser.add_argument("--config", default=os.environ.get("CARBOTUI_CONFIG", "carbotui.toml"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return asyncio.run(run(args.config))


if __name__ == "__main__":
    sys.exit(main())
