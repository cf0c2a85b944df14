import os
import re
from multiprocessing import Process

from carbotui.core.audit import AuditEvent, AuditLog, failure, parse_line

T = 1764277741.123  # a fixed moment, so the formatted line is checkable


def test_success_line_has_zimbra_layout():
    e = AuditEvent(account="user01@demo.test", protocol="imap", client_ip="203.0.113.5",
                   proxy_ip="127.0.0.1", user_agent="Thunderbird/115", thread="ImapServer-0",
                   timestamp=T)
    line = e.format()
    assert re.fullmatch(
        r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,123 INFO  \[ImapServer-0\] "
        r"\[ip=127\.0\.0\.1;oip=203\.0\.113\.5;ua=Thunderbird/115;\] security - "
        r"cmd=Auth; account=user01@demo\.test; protocol=imap;\n", line), line


def test_failure_line_is_warn_with_error():
    e = AuditEvent(account="bob", protocol="pop3", client_ip="::1", proxy_ip="::1",
                   error=failure("bob", "invalid password"), timestamp=T)
    line = e.format()
    assert " WARN  [" in line
    assert line.endswith("protocol=pop3; error=authentication failed for [bob], invalid password;\n")


def test_hostile_values_cannot_forge_a_line_and_round_trip():
    nasty = "x;\r\n2020-01-01 00:00:00,000 INFO  [t] [ip=1;] security - cmd=Auth; account=root;\x00"
    e = AuditEvent(account=nasty, protocol="imap", client_ip="10.0.0.1", proxy_ip="10.0.0.2",
                   user_agent="ua;with;semis", error=failure(nasty, "invalid password"),
                   timestamp=T, client_port=4242)
    line = e.format()
    assert line.count("\n") == 1 and "\r" not in line and "\x00" not in line
    back = parse_line(line)
    assert back is not None
    assert back.client_ip == "10.0.0.1" and back.proxy_ip == "10.0.0.2"
    assert back.user_agent == "ua;with;semis"
    assert back.account.startswith("x;  2020") and back.client_port == 4242
    assert not back.ok and back.error.endswith(", invalid password")


def test_parse_rejects_other_lines():
    assert parse_line("hello") is None
    assert parse_line("") is None


def _writer(path, tag, n):
    log = AuditLog(path)
    for i in range(n):
        log.write(AuditEvent(account=f"{tag}{i}@demo.test" + "x" * 200, protocol="imap",
                             client_ip="127.0.0.1", proxy_ip="127.0.0.1"))
    log.close()


def test_concurrent_writers_never_interleave(tmp_path):
    path = tmp_path / "log" / "audit.log"
    procs = [Process(target=_writer, args=(path, t, 500)) for t in "abcd"]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    lines = path.read_text().splitlines()
    assert len(lines) == 2000
    events = [parse_line(line) for line in lines]
    assert all(events)
    assert {e.account[0] for e in events} == set("abcd")


def test_rotation_is_followed(tmp_path):
    path = tmp_path / "audit.log"
    log = AuditLog(path)
    log.CHECK_EVERY = 0
    log.write(AuditEvent(account="a@x", protocol="imap", client_ip="1.1.1.1"))
    os.rename(path, tmp_path / "audit.log.1")
    log.write(AuditEvent(account="b@x", protocol="imap", client_ip="1.1.1.1"))
    assert "account=a@x" in (tmp_path / "audit.log.1").read_text()
    assert "account=b@x" in path.read_text()


def _line_field_by_field(timestamp, thread, proxy_ip, client_ip, client_port, user_agent,
                         cmd, account, protocol, error):
    """format_line before its one-scan fast path: every value through encode_value."""
    from carbotui.core.audit import _local_time, encode_value
    seconds, millis = divmod(round(timestamp * 1000), 1000)
    context = f"ip={encode_value(proxy_ip)};oip={encode_value(client_ip)};"
    if client_port:
        context += f"oport={client_port};"
    if user_agent:
        context += f"ua={encode_value(user_agent)};"
    body = f"cmd={cmd}; account={encode_value(account)}; protocol={encode_value(protocol)};"
    if error:
        body += f" error={encode_value(error)};"
    level = "WARN " if error else "INFO "
    return (f"{_local_time(seconds)},{millis:03d} {level} [{thread}] "
            f"[{context}] security - {body}\n")


def test_the_fast_path_writes_the_line_field_by_field_encoding_writes():
    from itertools import product

    from carbotui.core.audit import format_line
    values = ["", "user01@demo.test", "a;b", "x\r\ny", "\x85", "\u2028", "Thunderbird/115",
              "é", "\x00", ";"]
    for ua, account, error in product(values, values, ["", "bad;pass\n", "invalid password"]):
        args = (T, "ImapServer-0", "127.0.0.1", "203.0.113.5", 4242, ua, "Auth", account,
                "imap", error)
        assert format_line(*args) == _line_field_by_field(*args)
    for proxy_ip, client_ip, protocol in product(values[:4], values[:4], ["imap", "po;p3"]):
        args = (T, "t", proxy_ip, client_ip, 0, "", "Auth", "bob", protocol, "")
        assert format_line(*args) == _line_field_by_field(*args)
