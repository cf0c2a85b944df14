"""A deterministic node for tests and screenshots: same input, same pixels.

`FakeSource` builds snapshots from fixed data (the demo directory: user01..20,
mbox1/mbox2, demo.test and corp.test) and a fixed clock. Actions change that
state the way the real node would (a kick removes the session, a restart gives
a new pid, the mail mode flips) and are recorded in `calls` for assertions.
`stack_down()` and `stack_up()` simulate an outage and the recovery.
Alerts (five in alerts.log at start, one of them older than an hour) and IP
blocks (two) are fixed too; `add_alert()` makes auditwatch write a new one.
"""
from __future__ import annotations

import dataclasses
import hashlib
import math
from typing import Callable

from carbotui.services.alerts import Alert
from carbotui.core.audit import AuditEvent, failure
from carbotui.admin.node import (Backend, Certificate, DirectoryView, DomainView, FleetSnapshot,
                            Memcached, Process, Session, Totals, WorkerStats, parse_duration,
                            parse_ip)
from carbotui.services.throttle import Block, parse_networks, whitelisted
from carbotui.tui.source import ActionFailed

# 2026-11-27 21:30:00 UTC: every time on screen derives from this.
NOW = 1795815000.0
DOMAIN_CERT = Certificate(subject="CN=mail.demo.test", names=("mail.demo.test",),
                          not_after="2029-03-02", days_left=825)
CORP_CERT = Certificate(subject="CN=webmail.corp.test", names=("webmail.corp.test",),
                        not_after="2026-12-15", days_left=17)
CLIENTS = ["203.0.113.5", "198.51.100.23", "192.0.2.77", "203.0.113.19", "198.51.100.4"]


WHITELIST = parse_networks(["127.0.0.1/32"], "throttle.whitelist")


def make_alert(rule: str, key: str, count: int, at: float, *, ips=(), accounts=(),
               protocols=("imap",), block_seconds: int = 0, more_accounts: int = 0) -> Alert:
    """An alert as auditwatch writes it (thresholds and window of the demo)."""
    threshold = {"ipacct": 10, "acct": 10, "ip": 20, "total": 100}[rule]
    block_ip = ips[0] if block_seconds else ""
    return Alert(rule=rule, key=key, count=count, threshold=threshold, window=60,
                 first_seen=at - 41.5, last_seen=at, accounts=tuple(accounts), ips=tuple(ips),
                 protocols=tuple(protocols), more_accounts=more_accounts,
                 node="proxy.demo.test", block_ip=block_ip, block_seconds=block_seconds,
                 blocked=bool(block_seconds))


def _alerts() -> list[Alert]:
    return [
        make_alert("acct", "user07@demo.test", 10, NOW - 7300,
                   ips=("192.0.2.77", "198.51.100.4"), accounts=("user07@demo.test",)),
        make_alert("total", "*", 100, NOW - 3000, ips=CLIENTS[:3],
                   accounts=("user01@demo.test", "user02@demo.test"), more_accounts=14,
                   protocols=("imap", "pop3")),
        make_alert("ipacct", "198.51.100.23 user03@demo.test", 10, NOW - 1260,
                   ips=("198.51.100.23",), accounts=("user03@demo.test",)),
        make_alert("ip", "203.0.113.5", 20, NOW - 320, ips=("203.0.113.5",),
                   accounts=("user01@demo.test", "user05@demo.test", "user09@demo.test"),
                   protocols=("imap", "pop3"), block_seconds=3600),
        make_alert("acct", "boss@corp.test", 12, NOW - 95,
                   ips=("203.0.113.19", "192.0.2.77", "198.51.100.4"),
                   accounts=("boss@corp.test",), protocols=("imaps",)),
    ]


def _wave(n: int, base: float, amp: float, period: float, phase: float = 0.0) -> tuple:
    return tuple(round(max(0.0, base + amp * math.sin((i + phase) / period)), 1)
                 for i in range(n))


class FakeSource:
    def __init__(self, workers: int = 2, sessions: int = 14):
        self.node = "proxy.demo.test"
        self.now = NOW
        self.calls: list[tuple] = []
        self.down = False
        self.fail_next: str = ""
        self.mail_mode = "redirect"
        self.pids = {f"proxy_{i:02d}": 4100 + i for i in range(workers)}
        self.stopped: set[str] = set()
        self.maintenance: set[str] = set()
        self.domains = {
            "demo.test": DomainView("demo.test", ("mail.demo.test",), ("127.0.0.1",),
                                    DOMAIN_CERT),
            "corp.test": DomainView("corp.test", ("webmail.corp.test",), ("127.0.0.3",),
                                    CORP_CERT),
        }
        self.sessions = [self._session(i) for i in range(sessions)]
        self._audit_pending = [self._audit(i) for i in range(12)]
        self._alerts_pending = _alerts()
        self.blocks = {b.ip: b for b in (
            Block("203.0.113.5", "auditwatch ip: 20 failed logins from 203.0.113.5 against 3 "
                  "account(s) in 60 s; 203.0.113.5 blocked for 3600 s", since=NOW - 320,
                  until=NOW + 3280, by="auditwatch"),
            Block("198.51.100.23", "password spraying on user03", since=NOW - 1200,
                  until=NOW + 85200, by="dashboard:root"))}
        self.collects = 0
        # What the workers report having applied: (version, time, mail mode, vhosts).
        # It follows the directory one collect late, as real workers poll LDAP.
        self.applied = ("3f9a1c0b7d21", NOW - 95, "redirect",
                        ("mail.demo.test", "webmail.corp.test"))
        self.log_lines = [f"2026-11-27 21:29:{i:02d},000 INFO proxy_00 session {i} closed"
                          for i in range(40)]

    # -- deterministic content ----------------------------------------------------
    def _session(self, i: int) -> Session:
        n = i + 1
        user = f"user{n:02d}@demo.test"
        return Session(id=10_000_000_000 * (i % len(self.pids)) + 100 + i,
                       worker=f"proxy_{i % len(self.pids):02d}",
                       protocol=("imap", "imaps", "pop3s", "imaps")[i % 4],
                       client=CLIENTS[i % len(CLIENTS)], client_port=50000 + 37 * i,
                       account=user, server="mbox1.demo.test" if n % 2 else "mbox2.demo.test",
                       state="relay" if i % 5 else "auth", started=NOW - 60 * (i * 7 + 3),
                       bytes_in=1500 * (i + 1) ** 2, bytes_out=48_000 * (i + 2) ** 2)

    def _audit(self, i: int) -> AuditEvent:
        bad = i % 3 != 2
        account = f"user{(i * 7) % 20 + 1:02d}@demo.test"
        return AuditEvent(account=account, protocol=("imap", "pop3")[i % 2],
                          client_ip=CLIENTS[(i * 2) % len(CLIENTS)], proxy_ip="127.0.0.1",
                          error=failure(account, "invalid password") if bad else "",
                          thread=f"ImapSSLServer-{i % 2}", timestamp=NOW - 300 + 20 * i)

    def add_audit(self, event: AuditEvent) -> None:
        self._audit_pending.append(event)

    def add_alert(self, alert: Alert) -> None:
        self._alerts_pending.append(alert)

    # -- outage simulation ----------------------------------------------------------
    def stack_down(self) -> None:
        self.down = True

    def stack_up(self) -> None:
        self.down = False

    # -- Source: data -------------------------------------------------------------
    def collect(self) -> FleetSnapshot:
        self.collects += 1
        if self.fail_next:
            msg, self.fail_next = self.fail_next, ""
            raise RuntimeError(msg)
        if self.down:
            return FleetSnapshot(
                node=self.node, taken_at=self.now, supervisor_up=False,
                memcached=(Memcached("127.0.0.1:12211", up=False, error="Connection refused"),),
                problems=("supervisord is not running (no socket at var/run/supervisor.sock; "
                          "start the stack with make up)",
                          "memcached 127.0.0.1:12211 down (ConnectionRefusedError): routes "
                          "come from LDAP meanwhile",
                          "LDAP: LDAP ldap://127.0.0.1:10389: socket connection error"),
                blocks_error="memcached (127.0.0.1:12211) does not answer: IP blocks cannot "
                             "be read or changed now")
        workers = []
        for i, (short, pid) in enumerate(sorted(self.pids.items())):
            mine = [s for s in self.sessions if s.worker == short]
            running = short not in self.stopped
            stats = WorkerStats(sessions=len(mine), connections=830 + 97 * i,
                                logins_ok=612 + 41 * i, logins_failed=37 + 5 * i,
                                logins_temporary=i, cache_hits=540 + 33 * i,
                                cache_misses=72 + 9 * i, ldap_lookups=72 + 9 * i,
                                config_version=self.applied[0],
                                config_applied_at=self.applied[1],
                                config_mail_mode=self.applied[2],
                                config_vhosts=self.applied[3]) if running else None
            workers.append(Process(
                name=f"proxy:{short}", short=short, group="proxy",
                state="RUNNING" if running else "STOPPED", pid=pid if running else 0,
                started=NOW - 3600 * 5 - 61 * i if running else 0,
                description=f"pid {pid}, uptime 5:0{i}:00" if running else "Not started",
                cpu=(3.4 + 1.7 * i) if running else None,
                rss=(48_300_000 + 2_100_000 * i) if running else None,
                open_files=(24 + len(mine) * 2) if running else None,
                connections=(8 + len(mine) * 2) if running else None, stats=stats))
        services = [Process(name=n, short=n, group=n, state="RUNNING", pid=pid,
                            started=NOW - 3600 * 5 - 120, description=f"pid {pid}, uptime 5:02:00",
                            cpu=c, rss=r, open_files=f, connections=k)
                    for n, pid, c, r, f, k in (("mbox1", 3001, 0.8, 21_000_000, 40, 9),
                                               ("mbox2", 3002, 0.6, 20_500_000, 38, 7),
                                               ("memcached", 2990, 0.2, 3_400_000, 18, 4),
                                               ("slapd", 2991, 0.4, 12_800_000, 22, 5))]
        backends = []
        for host, active, rate, errs, ms, probe in (("mbox1.demo.test", 0, 1.4, 0, 2.1, 0.3),
                                                    ("mbox2.demo.test", 0, 0.9, 3, 2.6, 0.4)):
            active = len([s for s in self.sessions if s.server == host])
            backends.append(Backend(name=host, active=active, sessions=300 + active * 11,
                                    sessions_per_s=rate, errors=errs,
                                    errors_per_s=0.2 if errs else 0.0, connect_ms=ms,
                                    probe_ms=probe, probed=True,
                                    maintenance=host in self.maintenance))
        self._workers_apply()
        up = [w for w in workers if w.stats]
        hits = sum(w.stats.cache_hits for w in up)
        misses = sum(w.stats.cache_misses for w in up)
        domains = tuple(self.domains[k] for k in sorted(self.domains))
        return FleetSnapshot(
            node=self.node, taken_at=self.now, processes=tuple(workers + services),
            sessions=tuple(self.sessions), backends=tuple(backends),
            memcached=(Memcached("127.0.0.1:12211", up=True, hits=1288, misses=213, items=187,
                                 evictions=0, bytes=61_440, limit=67_108_864, connections=11,
                                 uptime=18_120),),
            directory=DirectoryView(server=self.node, mail_mode=self.mail_mode, domains=domains,
                                    mailbox_servers=("mbox1.demo.test", "mbox2.demo.test")),
            totals=Totals(sessions=len(self.sessions), workers_up=len(up),
                          workers_total=len(workers), logins_ok_per_s=2.4,
                          logins_failed_per_s=0.6, connections_per_s=3.1,
                          cache_hit_ratio=hits / (hits + misses) if hits + misses else None),
            history=(("sessions", _wave(120, len(self.sessions), 6, 9)),
                     ("logins_ok", _wave(120, 2.4, 1.8, 5, 2)),
                     ("logins_failed", _wave(120, 0.5, 0.9, 3, 1)),
                     ("connections", _wave(120, 3, 2, 6))),
            problems=tuple(f"{w.short} is {w.state}" for w in workers if w.stats is None),
            supervisor_up=True,
            blocks=tuple(sorted((b for b in self.blocks.values() if b.until > self.now),
                                key=lambda b: (b.until, b.ip))))

    def _workers_apply(self) -> None:
        vhosts = tuple(sorted(n for d in self.domains.values() for n in d.virtual_hostnames))
        if (self.applied[2], self.applied[3]) != (self.mail_mode, vhosts):
            # hashlib, not hash(): str hashes change from run to run
            version = hashlib.sha256(repr((self.mail_mode, vhosts)).encode()).hexdigest()[:12]
            self.applied = (version, self.now, self.mail_mode, vhosts)

    def audit_events(self) -> list[AuditEvent]:
        events, self._audit_pending = self._audit_pending, []
        return events

    def alerts(self) -> list[Alert]:
        alerts, self._alerts_pending = self._alerts_pending, []
        return alerts

    def tail_log(self, process: str, offset: int) -> tuple[str, int]:
        self.calls.append(("tail_log", process, offset))
        text = "\n".join(self.log_lines) + "\n"
        if offset < 0:
            return text, len(text)
        return text[offset:], len(text)

    # -- Source: actions ------------------------------------------------------------
    def _record(self, *call) -> None:
        self.calls.append(call)
        if self.down:
            raise ActionFailed("supervisord is not running (no socket at "
                               "var/run/supervisor.sock; start the stack with make up)")

    def kick(self, worker: str, session_id: int) -> str:
        self._record("kick", worker, session_id)
        before = len(self.sessions)
        self.sessions = [s for s in self.sessions if s.id != session_id]
        if len(self.sessions) == before:
            raise ActionFailed(f"{worker}: no session {session_id}")
        return f"session {session_id} on {worker} closed"

    def set_maintenance(self, server: str, on: bool) -> str:
        self._record("maintenance", server, on)
        (self.maintenance.add if on else self.maintenance.discard)(server)
        return f"{server}: maintenance {'on: no new sessions' if on else 'off'}"

    def flush_routes(self, account: str) -> str:
        self._record("flush_routes", account)
        if "@" not in account:
            raise ActionFailed(f"account {account} not found")
        return f"flushed routes of {account}: 2 removed (8 keys checked)"

    def set_mail_mode(self, mode: str) -> str:
        self._record("set_mail_mode", mode)
        if mode not in ("https", "redirect"):
            raise ActionFailed(f"mail mode must be one of https, redirect, not {mode!r}")
        self.mail_mode = mode
        return f"{self.node}: mail mode is now {mode}"

    def add_vhost(self, domain: str, fqdn: str, *, generate: bool,
                  cert_path: str = "", key_path: str = "") -> str:
        self._record("add_vhost", domain, fqdn, generate, cert_path, key_path)
        from carbotui.admin.changes import AdminError, validate_fqdn
        try:
            fqdn = validate_fqdn(fqdn)
        except AdminError as exc:
            raise ActionFailed(str(exc)) from None
        for d in self.domains.values():
            if fqdn in d.virtual_hostnames:
                raise ActionFailed(f"{fqdn} is already a virtual hostname of domain {d.name}")
        d = self.domains[domain]
        names = (*d.virtual_hostnames, fqdn)
        cert = Certificate(subject=f"CN={names[0]}", names=names, not_after="2029-03-02",
                           days_left=825)
        self.domains[domain] = dataclasses.replace(d, virtual_hostnames=names, certificate=cert)
        return f"{domain}: added virtual hostname {fqdn} with a new certificate"

    def remove_vhost(self, domain: str, fqdn: str) -> str:
        self._record("remove_vhost", domain, fqdn)
        d = self.domains[domain]
        if fqdn not in d.virtual_hostnames:
            raise ActionFailed(f"{fqdn} is not a virtual hostname of {domain}")
        self.domains[domain] = dataclasses.replace(
            d, virtual_hostnames=tuple(n for n in d.virtual_hostnames if n != fqdn))
        return f"{domain}: removed virtual hostname {fqdn}"

    def set_vip(self, domain: str, ip: str) -> str:
        self._record("set_vip", domain, ip)
        self.domains[domain] = dataclasses.replace(self.domains[domain], virtual_ips=(ip,))
        return f"{domain}: virtual IP is now {ip}"

    def start(self, process: str) -> str:
        self._record("start", process)
        self.stopped.discard(process.split(":")[-1])
        return f"{process} started"

    def stop(self, process: str) -> str:
        self._record("stop", process)
        self.stopped.add(process.split(":")[-1])
        return f"{process} stopped"

    def restart(self, process: str) -> str:
        self._record("restart", process)
        short = process.split(":")[-1]
        if short in self.pids:
            self.pids[short] += 100
        return f"{process} restarted (pid {self.pids.get(short, 0)})"

    def rolling_restart(self, progress: Callable[[str], None]) -> str:
        self._record("rolling_restart")
        for short in sorted(self.pids):
            progress(f"restarting proxy:{short}")
            self.pids[short] += 100
        return f"rolling restart done: {len(self.pids)} workers restarted one by one"

    def check_block(self, ip: str, duration: str) -> str:
        try:
            ip = parse_ip(ip)
            parse_duration(duration)
        except ValueError as exc:
            return str(exc)
        if whitelisted(ip, WHITELIST):
            return f"{ip} is in throttle.whitelist: a block would have no effect"
        return ""

    def block(self, ip: str, duration: str, reason: str) -> str:
        self._record("block", ip, duration, reason)
        error = self.check_block(ip, duration)
        if error:
            raise ActionFailed(error)
        ip, seconds = parse_ip(ip), parse_duration(duration)
        self.blocks[ip] = Block(ip, reason or "blocked by an admin", since=self.now,
                                until=self.now + seconds, by="dashboard:root")
        return f"{ip} blocked for {seconds}s on every node"

    def unblock(self, ip: str) -> str:
        self._record("unblock", ip)
        if self.blocks.pop(ip, None) is None:
            raise ActionFailed(f"{ip} was not blocked (the block may have expired)")
        return f"block on {ip} lifted"

    def close(self) -> None:
        self.calls.append(("close",))
