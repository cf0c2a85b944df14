"""fleet.py pieces that need no stack: audit.log following, rates; the worker control
client (worker_sockets.py) against a scripted socket."""
from __future__ import annotations

import json
import os
import socket
import threading

from carbotui.admin.node import AlertTail, AuditTail, Rates, parse_duration
from carbotui.backends.worker_sockets import WorkerControl, WorkerControlError

LINE = ("2026-11-27 21:09:02,456 WARN  [Pop3Server-1] [ip=10.0.0.1;oip=203.0.113.5;] security"
        " - cmd=Auth; account={who}; protocol=pop3; error=authentication failed for [{who}],"
        " invalid password;\n")


def test_audit_tail_follows_appends_partial_lines_rotation_and_truncation(tmp_path):
    log = tmp_path / "audit.log"
    log.write_text(LINE.format(who="old@demo.test"))
    tail = AuditTail(log)
    assert [e.account for e in tail.read_events()] == ["old@demo.test"]   # recent backlog
    with log.open("a") as f:
        f.write(LINE.format(who="a@demo.test") + LINE.format(who="b@demo.test")[:40])
    assert [e.account for e in tail.read_events()] == ["a@demo.test"]     # b is partial
    with log.open("a") as f:
        f.write(LINE.format(who="b@demo.test")[40:])
    assert [e.account for e in tail.read_events()] == ["b@demo.test"]
    # rotation: the rest of the old file, then the new file from its start
    with log.open("a") as f:
        f.write(LINE.format(who="last@demo.test"))
    os.rename(log, tmp_path / "audit.log.1")
    log.write_text(LINE.format(who="new@demo.test"))
    assert [e.account for e in tail.read_events()] == ["last@demo.test", "new@demo.test"]
    # truncation in place (copytruncate)
    log.write_text("")
    assert tail.read_events() == []
    with log.open("a") as f:
        f.write(LINE.format(who="after@demo.test"))
    assert [e.account for e in tail.read_events()] == ["after@demo.test"]
    tail.close()


def test_audit_tail_waits_for_a_missing_file(tmp_path):
    tail = AuditTail(tmp_path / "audit.log")
    assert tail.read_events() == []
    (tmp_path / "audit.log").write_text(LINE.format(who="first@demo.test"))
    assert [e.account for e in tail.read_events()] == ["first@demo.test"]


def test_rates_survive_a_worker_restart():
    r = Rates()
    assert r.per_second(("ok", "proxy_00", 1), 100, 10.0) == 0.0
    assert r.per_second(("ok", "proxy_00", 1), 110, 12.0) == 5.0
    r.end()
    assert r.per_second(("ok", "proxy_00", 2), 3, 13.0) == 0.0      # new pid: new series
    r.end()
    assert ("ok", "proxy_00", 1) not in r._last                     # the old one dropped


def test_worker_control_request_and_errors(tmp_path):
    path = tmp_path / "proxy_00.ctl"
    (tmp_path / "proxy_00.sock").touch()
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(path))
    server.listen()
    seen = []

    def serve():
        for _ in range(2):
            conn, _ = server.accept()
            request = json.loads(conn.makefile().readline())
            seen.append(request)
            ok = request.get("session") == 7
            conn.sendall(json.dumps({"ok": ok} if ok else
                                    {"ok": False, "error": "no session 8"}).encode() + b"\n")
            conn.close()

    threading.Thread(target=serve, daemon=True).start()
    control = WorkerControl(tmp_path)
    control.kick("proxy_00", 7)
    try:
        control.kick("proxy_00", 8)
    except WorkerControlError as exc:
        assert "proxy_00: no session 8" in str(exc)
    else:
        raise AssertionError("a refused kick must raise")
    assert seen == [{"cmd": "kick", "session": 7}, {"cmd": "kick", "session": 8}]
    try:
        control.kick("proxy_01", 1)
    except WorkerControlError as exc:
        assert "no control socket" in str(exc)
    server.close()


def test_alert_tail_reads_alert_json_lines_and_skips_junk(tmp_path):
    from carbotui.services.alerts import AlertLog
    from demo.fake_source import NOW, make_alert

    path = tmp_path / "alerts.log"
    first = make_alert("ip", "192.0.2.1", 20, NOW - 60, ips=("192.0.2.1",))
    AlertLog(path).emit(first)
    tail = AlertTail(path)
    assert [a.key for a in tail.read_alerts()] == ["192.0.2.1"]        # the backlog
    with path.open("a") as f:
        f.write("not json\n" + json.dumps({"rule": "ip"}) + "\n")
    second = make_alert("acct", "user01@demo.test", 10, NOW, accounts=("user01@demo.test",),
                        ips=("192.0.2.2", "192.0.2.3"))
    AlertLog(path).emit(second)
    got = tail.read_alerts()
    assert [a.key for a in got] == ["user01@demo.test"]
    assert got[0].ips == ("192.0.2.2", "192.0.2.3") and got[0].last_seen == NOW
    os.rename(path, tmp_path / "alerts.log.1")                          # rotation
    AlertLog(path).emit(first)
    assert [a.key for a in tail.read_alerts()] == ["192.0.2.1"]
    tail.close()


def test_parse_duration():
    assert [parse_duration(t) for t in ("1", "90s", "15m", "2h", "30d", " 7D ")] == [
        1, 90, 900, 7200, 2592000, 604800]
    for bad in ("0", "31d", "2592001", "1.5h", "-1", "", "1w"):
        try:
            parse_duration(bad)
        except ValueError:
            continue
        raise AssertionError(f"{bad!r} accepted")
