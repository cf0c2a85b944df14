"""Failed-login alerts: zmauditswatch's four sliding-window rules, and the sinks.

Rules (reference §9.3; defaults from Carbonio's last zmauditswatchctl):

    ipacct  one IP against one account       10 failures
    acct    one account, from any IP         10   (distributed hijack)
    ip      one IP, against any account      20   (single attacking host)
    total   every failure together          100
    window  zimbra_swatch_threshold_seconds  60 s

A rule fires when its window holds ``threshold`` failures. The same rule and
key (e.g. ``ip`` + ``203.0.113.5``) then stays quiet for ``cooldown`` seconds,
so a long attack sends one alert per cooldown instead of one per failure.
``Rules`` keeps its own time from the events' timestamps, so tests pass
explicit times and a re-read file yields the same alerts. The wall clock only
vets what a line claims: an event dated more than ``FUTURE_SLACK`` seconds
ahead of it, or whose client is not an IP address, cannot be a real login; it
is ignored (and said so in the log, at most once a minute), so no line can
move the windows' clock or name a block target. Accounts are keyed in their
canonical form (``audit.canonical_login``): case and spaces make no new key.

Sinks, each optional: the alert log (JSON lines; the dashboard reads it),
e-mail over SMTP through an on-disk spool (an alert is written to the spool
before anything is sent, and removed only once the server accepted it: a
restart or an SMTP outage loses nothing; a crash right after acceptance can
send one e-mail twice, with the same Message-ID), and a command hook that gets
the alert JSON on stdin.
"""
from __future__ import annotations

import asyncio
import email.utils
import functools
import hashlib
import ipaddress
import json
import logging
import math
import os
import smtplib
import ssl
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass
from datetime import datetime, timezone
from email.message import EmailMessage
from pathlib import Path
from typing import Callable

from carbotui.core.audit import AuditEvent, canonical_login
# The [alerts] tables are declared with the other settings; imported back for the sinks.
from carbotui.core.settings import BLOCKING_RULES, RULES, AlertSettings, RuleSettings, SmtpSettings

log = logging.getLogger("carbotui.services.alerts")

MAX_PER_WINDOW = 10000                   # memory bound per key; the count says "at least"
LISTED = 20                              # accounts/IPs named in one alert
FUTURE_SLACK = 5.0                       # seconds an event may be ahead of the wall clock
IGNORED_REPORT_EVERY = 60.0              # at most one log line a minute about ignored events


# -- the alert ----------------------------------------------------------------

@dataclass(frozen=True)
class Alert:
    rule: str
    key: str                             # the IP, the account, "ip account", or "*"
    count: int                           # failures in the window when it fired
    threshold: int
    window: int
    first_seen: float                    # oldest failure in the window (audit time)
    last_seen: float                     # the failure that made it fire
    accounts: tuple[str, ...]            # most frequent first, at most LISTED
    ips: tuple[str, ...]
    protocols: tuple[str, ...]
    more_accounts: int = 0               # how many were not listed
    more_ips: int = 0
    node: str = ""
    block_ip: str = ""                   # the IP the rule blocks, if it blocks
    block_seconds: int = 0
    blocked: bool = False                # the block was stored

    @property
    def id(self) -> str:
        return f"{self.rule}:{self.key}:{self.last_seen:.3f}"

    def summary(self) -> str:
        what = {"ipacct": f"from {self.ips[0] if self.ips else '?'} against "
                          f"{self.accounts[0] if self.accounts else '?'}",
                "acct": f"against {self.key} from {len(self.ips) + self.more_ips} IP(s)",
                "ip": f"from {self.key} against "
                      f"{len(self.accounts) + self.more_accounts} account(s)",
                "total": "in total"}[self.rule]
        text = f"{self.count} failed logins {what} in {self.window} s"
        if self.blocked:
            text += f"; {self.block_ip} blocked for {self.block_seconds} s"
        return text

    def to_json(self) -> dict:
        def iso(ts):
            return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="milliseconds")
        return {"time": iso(self.last_seen), "id": self.id, "rule": self.rule, "key": self.key,
                "count": self.count, "threshold": self.threshold, "window": self.window,
                "first_seen": iso(self.first_seen), "last_seen": iso(self.last_seen),
                "accounts": list(self.accounts), "more_accounts": self.more_accounts,
                "ips": list(self.ips), "more_ips": self.more_ips,
                "protocols": list(self.protocols), "node": self.node,
                "block_ip": self.block_ip, "block_seconds": self.block_seconds,
                "blocked": self.blocked, "summary": self.summary()}


# -- the rules ----------------------------------------------------------------

@functools.lru_cache(maxsize=4096)
def client_address(text: str) -> str | None:
    """The canonical text of the client IP an audit line names (IPv4-mapped IPv6 as
    IPv4: one key), or None when it is not exactly an IP address."""
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped:
        addr = addr.ipv4_mapped
    return addr.compressed


def _keys(ip: str, account: str) -> dict[str, str]:
    return {"ipacct": f"{ip} {account}", "acct": account, "ip": ip, "total": "*"}


class Rules:
    """Sliding windows per rule and key; ``feed`` returns the alerts an event fires.
    ``clock`` is the wall clock, used only to refuse events dated in the future."""

    def __init__(self, settings: AlertSettings, node: str = "",
                 clock: Callable[[], float] = time.time):
        self.settings, self.node = settings, node
        self.windows: dict[str, dict[str, deque]] = {r: {} for r in RULES}
        self.fired: dict[tuple[str, str], float] = {}
        self.clock = 0.0                 # newest audit time seen: lines may be a bit out of order
        self._swept = 0.0
        self.failures = 0
        self.wall = clock
        self.ignored: Counter = Counter()   # "future", "client": events refused, ever
        self.ignored_total = 0
        self._unreported = 0
        self._reported_at = -math.inf

    def reconfigure(self, settings: AlertSettings) -> None:
        """New thresholds (SIGHUP) keep the windows already collected."""
        self.settings = settings

    def feed(self, ev: AuditEvent) -> list[Alert]:
        if ev.ok:
            return []
        ip = client_address(ev.client_ip)
        if ip is None:
            self._ignore("client", ev, "its client is not an IP address")
            return []
        ahead = ev.timestamp - self.wall()
        if ahead > FUTURE_SLACK:
            self._ignore("future", ev, f"it is dated {ahead:.0f} s in the future")
            return []
        self.failures += 1
        s = self.settings
        self.clock = max(self.clock, ev.timestamp)
        horizon = self.clock - s.window
        if ev.timestamp <= horizon:
            return []                     # older than the window: cannot matter any more
        account = canonical_login(ev.account)
        entry = (ev.timestamp, ip, account, ev.protocol)
        out = []
        for rule, key in _keys(ip, account).items():
            rs = s.rules[rule]
            if rs.threshold <= 0:
                continue
            dq = self.windows[rule].setdefault(key, deque(maxlen=MAX_PER_WINDOW))
            dq.append(entry)
            while dq and dq[0][0] <= horizon:
                dq.popleft()
            if len(dq) < rs.threshold:
                continue
            last = self.fired.get((rule, key))
            if last is not None and self.clock - last < s.cooldown:
                continue                  # de-duplicated: this one already alerted
            self.fired[(rule, key)] = self.clock
            out.append(self._alert(rule, key, dq, rs))
        if self.clock - self._swept >= s.window:
            self._sweep(horizon)
        return out

    def _ignore(self, kind: str, ev: AuditEvent, why: str) -> None:
        """Count an event that cannot be a real login; log it at most once a minute
        (the lines are the attacker's: a flood of them must not flood our log)."""
        self.ignored[kind] += 1
        self.ignored_total += 1
        self._unreported += 1
        now = self.wall()
        if now - self._reported_at < IGNORED_REPORT_EVERY:
            return
        log.warning("ignored an audit line because %s (client %r, account %r); %d line(s) "
                    "ignored since the last report, next report in %g s at the earliest",
                    why, ev.client_ip[:64], ev.account[:80], self._unreported,
                    IGNORED_REPORT_EVERY)
        self._reported_at, self._unreported = now, 0

    def _alert(self, rule: str, key: str, dq: deque, rs: RuleSettings) -> Alert:
        ips = Counter(e[1] for e in dq)
        accounts = Counter(e[2] for e in dq)
        protocols = sorted({e[3] for e in dq})
        block_ip = dq[-1][1] if rs.block_seconds and rule in BLOCKING_RULES else ""
        return Alert(
            rule=rule, key=key, count=len(dq), threshold=rs.threshold,
            window=self.settings.window, first_seen=dq[0][0], last_seen=dq[-1][0],
            accounts=tuple(a for a, _ in accounts.most_common(LISTED)),
            ips=tuple(i for i, _ in ips.most_common(LISTED)), protocols=tuple(protocols),
            more_accounts=max(0, len(accounts) - LISTED), more_ips=max(0, len(ips) - LISTED),
            node=self.node, block_ip=block_ip, block_seconds=rs.block_seconds if block_ip else 0)

    def _sweep(self, horizon: float) -> None:
        """Forget keys with nothing left in the window: memory follows the attack size."""
        self._swept = self.clock
        for keys in self.windows.values():
            for key in [k for k, dq in keys.items() if not dq or dq[-1][0] <= horizon]:
                del keys[key]
        cooled = self.clock - self.settings.cooldown
        for k in [k for k, t in self.fired.items() if t <= cooled]:
            del self.fired[k]


# -- sinks --------------------------------------------------------------------

# JSON leaves these raw with ensure_ascii=False; a reader's splitlines() would break
# the line on them. Escaped, the line is still the same JSON.
_JSON_LINE_SAFE = {0x85: "\\u0085", 0x2028: "\\u2028", 0x2029: "\\u2029"}


class AlertLog:
    """One JSON object per line, appended with one write (several readers tail it)."""

    def __init__(self, path: Path):
        self.path = path

    def emit(self, alert: Alert) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps(alert.to_json(), ensure_ascii=False).translate(_JSON_LINE_SAFE)
        line = (text + "\n").encode()
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
        try:
            os.write(fd, line)
        finally:
            os.close(fd)


def compose(alert: Alert, smtp: SmtpSettings) -> EmailMessage:
    msg = EmailMessage()
    node = alert.node or "carbotui"
    msg["Subject"] = f"[carbotui {node}] {alert.summary()}"
    msg["From"] = smtp.sender
    msg["To"] = ", ".join(smtp.recipients)
    msg["Date"] = email.utils.formatdate(alert.last_seen, localtime=True)
    # Stable per alert: a re-send after a crash is recognisably the same message.
    domain = smtp.sender.rpartition("@")[2]
    digest = hashlib.sha1(alert.id.encode()).hexdigest()[:16]
    msg["Message-ID"] = f"<alert.{alert.rule}.{digest}@{domain}>"
    lines = [
        f"{alert.summary()}.", "",
        f"Rule:       {alert.rule} (threshold {alert.threshold} failures in {alert.window} s)",
        f"Key:        {alert.key}",
        f"Node:       {node}",
        f"First seen: {datetime.fromtimestamp(alert.first_seen):%Y-%m-%d %H:%M:%S}",
        f"Last seen:  {datetime.fromtimestamp(alert.last_seen):%Y-%m-%d %H:%M:%S}",
        f"IPs:        {', '.join(alert.ips)}" + (f" and {alert.more_ips} more"
                                                 if alert.more_ips else ""),
        f"Accounts:   {', '.join(alert.accounts)}" + (f" and {alert.more_accounts} more"
                                                      if alert.more_accounts else ""),
        f"Protocols:  {', '.join(alert.protocols)}",
    ]
    if alert.block_ip:
        lines.append(f"Block:      {alert.block_ip} for {alert.block_seconds} s "
                     f"({'stored' if alert.blocked else 'NOT stored: memcached unavailable'})")
    lines += ["", "Lift a block from the dashboard or with the carbotui CLI.", "",
              json.dumps(alert.to_json(), indent=1)]
    msg.set_content("\n".join(lines) + "\n")
    return msg


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)                     # the rename itself survives a power cut
    finally:
        os.close(dfd)


class SmtpSpool:
    """E-mail through a spool directory, sent by one background thread.

    ``emit`` only writes a file (fast, durable); the thread sends every spooled
    alert over one SMTP connection and deletes each file once the server
    accepted it. On failure it backs off (retry_min doubling to retry_max) and
    logs the reason once per outage, not once per try."""

    def __init__(self, settings: SmtpSettings):
        self.settings = settings
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.failing = ""                 # last error text while the server fails
        self.sent = 0
        self.next_try = 0.0
        settings.spool.mkdir(parents=True, exist_ok=True)

    def pending(self) -> list[Path]:
        return sorted(self.settings.spool.glob("*.json"))

    def emit(self, alert: Alert) -> None:
        name = f"{time.time_ns()}-{alert.rule}.json"
        _write_atomic(self.settings.spool / name, json.dumps(alert.to_json()).encode())
        self._wake.set()

    def start(self) -> None:
        # A daemon thread: a send stuck in a timeout never delays exit, and what
        # it was sending is still in the spool for the next start.
        self._thread = threading.Thread(target=self._run, name="smtp-spool", daemon=True)
        self._thread.start()
        if self.pending():
            log.info("%d alert e-mail(s) waiting in %s from before; sending",
                     len(self.pending()), self.settings.spool)
            self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    def _run(self) -> None:
        backoff = 0.0
        while not self._stop.is_set():
            files = self.pending()
            now = time.monotonic()
            if not files or now < self.next_try:
                self._wake.wait(None if not files else self.next_try - now)
                self._wake.clear()
                continue
            try:
                self._send(files)
            except (OSError, smtplib.SMTPException, ValueError) as exc:
                backoff = min(self.settings.retry_max, max(self.settings.retry_min, backoff * 2))
                self.next_try = time.monotonic() + backoff
                self._failed(exc, backoff)
                continue
            backoff, self.next_try = 0.0, 0.0
            if self.failing:
                log.warning("alert e-mail via %s works again; spooled alerts delivered",
                            self.settings.where)
                self.failing = ""

    def _failed(self, exc: BaseException, backoff: float) -> None:
        reason = f"{type(exc).__name__}: {exc}"
        if reason != self.failing:
            log.error("cannot send alert e-mail to %s via %s (%s); %d alert(s) kept in %s, "
                      "retrying every %g s at most; check [alerts.smtp] and the mail server",
                      ", ".join(self.settings.recipients), self.settings.where, reason,
                      len(self.pending()), self.settings.spool, self.settings.retry_max)
        self.failing = reason

    def _send(self, files: list[Path]) -> None:
        s = self.settings
        with smtplib.SMTP(s.host, s.port, timeout=s.timeout) as smtp:
            smtp.ehlo()
            if s.starttls:
                ctx = ssl.create_default_context(cafile=str(s.tls_ca) if s.tls_ca else None)
                smtp.starttls(context=ctx)
                smtp.ehlo()
            if s.username:
                password = s.password_file.read_text().strip() if s.password_file else ""
                smtp.login(s.username, password)
            for path in files:
                try:
                    alert = alert_from_json(json.loads(path.read_bytes()))
                except (OSError, ValueError, KeyError, TypeError) as exc:
                    bad = path.with_suffix(".bad")
                    os.replace(path, bad)       # kept for a human, never retried blindly
                    log.error("spooled alert %s is unreadable (%s); moved to %s", path, exc, bad)
                    continue
                smtp.send_message(compose(alert, s), s.sender, list(s.recipients))
                path.unlink()
                self.sent += 1


def alert_from_json(d: dict) -> Alert:
    def ts(text):
        return datetime.fromisoformat(text).timestamp()
    return Alert(rule=d["rule"], key=d["key"], count=int(d["count"]),
                 threshold=int(d["threshold"]), window=int(d["window"]),
                 first_seen=ts(d["first_seen"]), last_seen=ts(d["last_seen"]),
                 accounts=tuple(d["accounts"]), ips=tuple(d["ips"]),
                 protocols=tuple(d["protocols"]), more_accounts=int(d.get("more_accounts", 0)),
                 more_ips=int(d.get("more_ips", 0)), node=d.get("node", ""),
                 block_ip=d.get("block_ip", ""), block_seconds=int(d.get("block_seconds", 0)),
                 blocked=bool(d.get("blocked", False)))


class CommandHook:
    """Runs the configured argv with the alert JSON on stdin (no shell). Not retried:
    a hook that needs delivery guarantees should read alerts.log instead."""

    def __init__(self, argv: tuple[str, ...], timeout: float):
        self.argv, self.timeout = argv, timeout

    async def emit(self, alert: Alert) -> None:
        data = json.dumps(alert.to_json()).encode() + b"\n"
        try:
            proc = await asyncio.create_subprocess_exec(
                *self.argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE)
        except OSError as exc:
            log.error("alert command %s cannot start: %s", self.argv[0], exc)
            return
        try:
            _, err = await asyncio.wait_for(proc.communicate(data), self.timeout)
        except asyncio.TimeoutError:
            proc.kill()
            await proc.wait()
            log.error("alert command %s killed after %g s", self.argv[0], self.timeout)
            return
        if proc.returncode:
            log.error("alert command %s exited %d: %s", self.argv[0], proc.returncode,
                      err.decode(errors="replace").strip()[-300:])


__all__ = ["Alert", "AlertLog", "AlertSettings", "CommandHook", "RuleSettings", "Rules",
           "SmtpSettings", "SmtpSpool", "alert_from_json", "compose"]
