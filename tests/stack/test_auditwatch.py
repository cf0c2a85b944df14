"""auditwatch as a real subprocess against a temp node: audit lines written with
carbotui.core.audit.AuditLog, e-mail into the real demo sink (demo.mailsink,
aiosmtpd), blocks in the demo's real memcached. No sleeps as synchronisation:
every wait polls for a condition with a deadline.
"""
from __future__ import annotations

import asyncio
import json
import mailbox
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from carbotui.core.audit import AuditEvent, AuditLog, failure
from carbotui.backends.memcache import Memcache
from carbotui.services.throttle import IP_REJECT, Throttle, ThrottleSettings

from .conftest import REPO, SETTINGS, terminate, wait_for
from .test_throttle import fresh_ip

ACCOUNTS = [f"user{i:02d}@demo.test" for i in range(1, 6)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Node:
    """A temp settings file + var/ and the processes started for it."""

    def __init__(self, root: Path, smtp_port: int, alerts: str = "", throttle: str = ""):
        self.root, self.smtp_port = root, smtp_port
        self.config = root / "carbotui.toml"
        self.alerts_extra, self.throttle_extra = alerts, throttle
        self.audit_path = root / "var/log/audit.log"
        self.audit_path.parent.mkdir(parents=True)
        self.write_config()
        self.audit_path.touch()
        self.procs: list[subprocess.Popen] = []
        self.watch: subprocess.Popen | None = None
        self.sink: subprocess.Popen | None = None

    def write_config(self) -> None:
        self.config.write_text(f"""
[node]
name = "proxy.test"
var_dir = "var"
[tls]
certificate = "none.crt"
private_key = "none.key"
[memcached]
servers = ["{SETTINGS.memcached_servers[0]}"]
timeout = 0.5
reconnect = 5
[ldap]
url = "ldap://127.0.0.1:1"
base = "o=test"
[throttle]
{self.throttle_extra}
[alerts]
log = "var/log/alerts.log"
poll_interval = 0.02
rotate_grace = 3
{self.alerts_extra}
[alerts.smtp]
host = "127.0.0.1"
port = {self.smtp_port}
from = "auditwatch@demo.test"
to = ["admin@demo.test"]
spool = "var/spool/alerts"
retry_min = 0.2
retry_max = 0.5
timeout = 2
""")

    # processes ---------------------------------------------------------------
    def start_watch(self) -> None:
        log = open(self.root / "auditwatch.err", "ab")
        started = self.stderr().count("watching ")     # the file spans restarts
        self.watch = subprocess.Popen(
            [sys.executable, "-m", "carbotui.admin.auditwatch", "--config", str(self.config)],
            cwd=REPO, stdout=log, stderr=log)
        self.procs.append(self.watch)
        wait_for(lambda: self.stderr().count("watching ") > started, 15,
                 what="auditwatch to start")

    def stop_watch(self) -> None:
        self.watch.send_signal(signal.SIGTERM)
        assert self.watch.wait(15) == 0, self.stderr()

    def start_sink(self) -> None:
        self.sink = subprocess.Popen(
            [sys.executable, "-m", "demo.mailsink", "--listen",
             f"127.0.0.1:{self.smtp_port}", "--maildir", str(self.root / "mailsink")],
            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.procs.append(self.sink)
        wait_for(lambda: _port_open(self.smtp_port), 15, what="the SMTP sink")

    def stop_all(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                terminate(p)

    # observations ------------------------------------------------------------
    def stderr(self) -> str:
        try:
            return (self.root / "auditwatch.err").read_text()
        except FileNotFoundError:
            return ""

    def alerts(self) -> list[dict]:
        try:
            text = (self.root / "var/log/alerts.log").read_text()
        except FileNotFoundError:
            return []
        return [json.loads(line) for line in text.splitlines()]

    def counters(self) -> dict:
        try:
            return json.loads((self.root / "var/run/auditwatch.state").read_text())["counters"]
        except (FileNotFoundError, ValueError):
            return {}

    def state_files(self) -> int:
        try:
            return len(json.loads((self.root / "var/run/auditwatch.state").read_text())["files"])
        except (FileNotFoundError, ValueError):
            return 0

    def mails(self) -> list:
        d = self.root / "mailsink"
        return list(mailbox.Maildir(d, create=False)) if (d / "new").exists() else []

    def spooled(self) -> list[Path]:
        return sorted((self.root / "var/spool/alerts").glob("*.json"))

    def wait_events(self, n: int) -> dict:
        """Until auditwatch has handled (and saved the position after) n audit lines."""
        wait_for(lambda: self.counters().get("events", 0) >= n, 15,
                 what=f"{n} events handled; stderr:\n{self.stderr()}")
        return self.counters()


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


@pytest.fixture
def make_node(tmp_path):
    nodes = []

    def make(**kw) -> Node:
        node = Node(tmp_path / f"node{len(nodes)}", free_port(), **kw)
        nodes.append(node)
        return node

    yield make
    for node in nodes:
        node.stop_all()


def bad_login(ip: str, account: str, proto: str = "imap") -> AuditEvent:
    return AuditEvent(account=account, protocol=proto, client_ip=ip, proxy_ip="127.0.0.1",
                      error=failure(account, "invalid password"))


def good_login(ip: str = "192.0.2.250", account: str = "marker@demo.test") -> AuditEvent:
    return AuditEvent(account=account, protocol="imap", client_ip=ip, proxy_ip="127.0.0.1")


def test_25_wrong_passwords_from_one_ip_one_alert_one_mail(make_node):
    node = make_node()
    node.start_sink()
    node.start_watch()
    audit = AuditLog(node.audit_path)
    ip = "203.0.113.77"
    for i in range(25):
        audit.write(bad_login(ip, ACCOUNTS[i % 5], "imap" if i % 2 else "pop3"))
        if i == 19:
            written = time.monotonic()     # the line that crosses ip's threshold (20)
            wait_for(node.alerts, 10, interval=0.005, what="the alert")
            alert_latency = time.monotonic() - written
            wait_for(node.mails, 10, interval=0.005, what="the e-mail")
            mail_latency = time.monotonic() - written
    audit.write(good_login())
    node.wait_events(26)

    alerts = node.alerts()
    assert [(a["rule"], a["key"], a["count"]) for a in alerts] == [("ip", ip, 20)]
    assert sorted(alerts[0]["accounts"]) == ACCOUNTS
    assert alerts[0]["protocols"] == ["imap", "pop3"] and alerts[0]["node"] == "proxy.test"
    assert node.counters()["failures"] == 25 and node.counters()["alerts"] == 1

    wait_for(lambda: not node.spooled(), 10, what="the spool to empty")
    mails = node.mails()
    assert len(mails) == 1
    body = mails[0].get_payload(decode=True).decode()
    assert ip in mails[0]["Subject"] and mails[0]["To"] == "admin@demo.test"
    assert all(a in body for a in ACCOUNTS)
    print(f"\nalert latency {alert_latency * 1000:.0f} ms, e-mail latency "
          f"{mail_latency * 1000:.0f} ms (poll_interval 0.02 s)")


def test_rotation_mid_burst_loses_nothing_and_counts_nothing_twice(make_node):
    node = make_node(alerts='[alerts.ip]\nthreshold = 30\n[alerts.ipacct]\nthreshold = 0\n'
                            '[alerts.acct]\nthreshold = 0')
    node.start_watch()
    ip = "198.51.100.44"
    old_writer = AuditLog(node.audit_path)
    old_writer.CHECK_EVERY = 3600            # a busy worker that has not noticed yet
    for i in range(12):
        old_writer.write(bad_login(ip, ACCOUNTS[i % 5]))
    node.wait_events(12)
    os.rename(node.audit_path, node.audit_path.with_name("audit.log.1"))
    new_writer = AuditLog(node.audit_path)
    for i in range(12):
        new_writer.write(bad_login(ip, ACCOUNTS[i % 5]))
    # auditwatch now follows the new file and still reads the old one ...
    wait_for(lambda: node.state_files() == 2, 10, what="both files followed")
    for i in range(6):                        # ... where late lines still arrive
        old_writer.write(bad_login(ip, ACCOUNTS[i % 5]))
    new_writer.write(good_login())
    counters = node.wait_events(31)
    wait_for(lambda: len(node.alerts()) >= 1, 10, what="the alert")
    assert counters["failures"] == 30 and counters["events"] == 31
    assert [(a["rule"], a["count"]) for a in node.alerts()] == [("ip", 30)]
    # the rotated file is let go after rotate_grace
    wait_for(lambda: node.state_files() == 1, 15, what="the old file dropped")


def test_restart_and_rotation_while_stopped_read_each_line_once(make_node):
    node = make_node()
    node.start_watch()
    writer = AuditLog(node.audit_path)
    writer.CHECK_EVERY = 0                   # notices the rotation on its next write
    for i in range(5):
        writer.write(bad_login("192.0.2.10", ACCOUNTS[i]))
    node.wait_events(5)
    node.stop_watch()
    for i in range(4):                        # written while auditwatch is down
        writer.write(bad_login("192.0.2.11", ACCOUNTS[i]))
    os.rename(node.audit_path, node.audit_path.with_name("audit.log.1"))
    for i in range(3):                        # into the new file, still while down
        writer.write(bad_login("192.0.2.12", ACCOUNTS[i]))
    node.start_watch()
    writer.write(good_login())
    counters = node.wait_events(13)
    assert counters == {**counters, "events": 13, "failures": 12}
    assert "reading the rest of rotated" in node.stderr()
    # a clean restart with nothing new re-reads nothing
    node.stop_watch()
    node.start_watch()
    writer.write(good_login())
    assert node.wait_events(14)["events"] == 14


def test_smtp_down_alert_spooled_survives_restart_and_is_delivered(make_node):
    node = make_node(alerts="[alerts.ip]\nthreshold = 3")
    node.start_watch()                       # no sink listening yet
    audit = AuditLog(node.audit_path)
    for i in range(3):
        audit.write(bad_login("203.0.113.99", ACCOUNTS[i]))
    wait_for(node.alerts, 10, what="the alert")
    wait_for(lambda: "cannot send alert e-mail" in node.stderr(), 10, what="the SMTP error")
    assert f"127.0.0.1:{node.smtp_port}" in node.stderr() and len(node.spooled()) == 1
    node.stop_watch()                        # a restart while the server is still down
    node.start_watch()
    node.start_sink()
    wait_for(node.mails, 15, what="the spooled e-mail")
    wait_for(lambda: not node.spooled(), 10, what="the spool to empty")
    assert len(node.mails()) == 1 and "203.0.113.99" in node.mails()[0]["Subject"]
    wait_for(lambda: "works again" in node.stderr(), 10, what="the recovery log line")


def test_rule_blocks_ip_in_memcached_and_sighup_reloads(make_node):
    ip = fresh_ip()
    node = make_node(alerts="[alerts.ip]\nthreshold = 50\nblock_seconds = 120")
    node.start_watch()
    node.alerts_extra = "[alerts.ip]\nthreshold = 3\nblock_seconds = 120"
    node.write_config()
    node.watch.send_signal(signal.SIGHUP)
    wait_for(lambda: "settings reloaded" in node.stderr(), 10, what="the reload")
    audit = AuditLog(node.audit_path)
    for i in range(3):
        audit.write(bad_login(ip, ACCOUNTS[i]))
    wait_for(node.alerts, 10, what="the alert")
    alert = node.alerts()[0]
    assert alert["blocked"] and alert["block_ip"] == ip and alert["block_seconds"] == 120

    async def check():
        t = Throttle(Memcache(SETTINGS.memcached_servers, timeout=0.5, reconnect=5),
                     ThrottleSettings())
        try:
            answer = await t.check_ip("imap", ip)
            listed = [b for b in await t.blocks() if b.ip == ip]
        finally:
            await t.unblock(ip)
            await t.cache.close()
        return answer, listed

    answer, listed = asyncio.run(check())
    assert answer == IP_REJECT
    assert listed and listed[0].by == "auditwatch" and "ip" in listed[0].reason


def test_tail_truncation_partial_lines_and_first_start(tmp_path):
    """The tailer alone (no subprocess): copytruncate, a half-written line, first start."""
    from carbotui.admin.auditwatch import Tail
    path, state = tmp_path / "audit.log", tmp_path / "run" / "auditwatch.state"
    path.write_text("old history\n")
    tail = Tail(path, state, grace=1)
    tail.start()                              # first start: from the end, history skipped
    assert tail.poll() == ([], False)
    with open(path, "a") as f:
        f.write("one\ntw")
        f.flush()
        assert tail.poll()[0] == ["one"]      # "tw" is still being written
        f.write("o\n")
    assert tail.poll()[0] == ["two"]
    tail.commit()
    path.write_text("")                       # copytruncate empties the file in place
    with open(path, "a") as f:
        f.write("three\n")
    assert tail.poll()[0] == ["three"]
    tail.commit()
    tail.close()
    again = Tail(path, state, grace=1)        # a restart re-reads nothing
    again.start()
    assert again.poll()[0] == []
    assert again.counters["lines"] == 3
    again.close()


def test_lines_dated_in_the_future_or_from_no_ip_are_ignored_said_once_and_blind_nothing(
        make_node):
    """H2 in the real process: lines an old or hostile writer could have left in audit.log
    (dated 9999, a client that is not an IP) move no clock and block nothing; auditwatch
    says so in its log once, not once per line; real failures after them still alert."""
    node = make_node(alerts="[alerts.ip]\nthreshold = 20\nblock_seconds = 60")
    node.start_watch()
    audit = AuditLog(node.audit_path)
    forged = []
    for i in range(50):
        forged.append(AuditEvent(account="x", protocol="imap", client_ip="198.51.100.7",
                                 proxy_ip="127.0.0.1", error="forged",
                                 timestamp=253402300799.0 - i))
        forged.append(AuditEvent(account="x", protocol="imap", client_ip=f"not-an-ip-{i}",
                                 proxy_ip="127.0.0.1", error="forged"))
    for e in forged:
        audit.write(e)
    ip = "203.0.113.78"
    for i in range(20):
        audit.write(bad_login(ip, ACCOUNTS[i % 5]))
    audit.write(good_login())
    counters = node.wait_events(len(forged) + 21)
    assert counters["ignored"] == len(forged)
    assert counters["failures"] == len(forged) + 20          # read as failures, then refused
    wait_for(node.alerts, 10, what="the alert after the forged lines")
    assert [(a["rule"], a["key"], a["blocked"]) for a in node.alerts()] == [("ip", ip, True)]
    reports = [l for l in node.stderr().splitlines() if "ignored an audit line" in l]
    assert len(reports) == 1, reports
    assert node.watch.poll() is None                     # still running
    asyncio.run(_unblock(ip))


async def _unblock(ip: str) -> None:
    t = Throttle(Memcache(SETTINGS.memcached_servers, timeout=0.5, reconnect=5),
                 ThrottleSettings())
    try:
        await t.unblock(ip)
    finally:
        await t.cache.close()
