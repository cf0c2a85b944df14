"""H2 (security review): audit-line forgery through characters a reader takes for a line
break, and auditwatch trusting what a line says about its own date and client.

The attack: one failed login whose name is ``x<U+2028><a forged audit line dated
9999-12-31>``. Before the fix the proxy wrote it into one physical line, auditwatch's
``splitlines()`` read two events, its clock jumped to 9999 and every real failure after
that was "older than the window": no alert until a restart. Each test here runs the
chain a reader runs: format_line -> bytes -> split -> parse_line -> Rules.
"""
from __future__ import annotations

import logging
import time

import pytest

from carbotui.services.alerts import AlertLog, AlertSettings, Rules
from carbotui.core.audit import AuditEvent, encode_value, failure, format_line, parse_line
from carbotui.admin.auditwatch import Tail
from carbotui.protocols.sasl import AuthDataError, decode_username

FORGED = "9999-12-31 23:59:59,000 WARN  [x] [oip=198.51.100.7] security - error=forged"
# Every character some reader treats as the end of a line: str.splitlines() breaks on
# these; bytes.splitlines() and most log tools on the ASCII ones.
BREAKS = "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"
C1 = "".join(map(chr, range(0x80, 0xA0)))


def line_breakers() -> list[str]:
    """Every code point (BMP: all of them live there) that splits a str line."""
    return [chr(c) for c in range(0x10000)
            if not 0xD800 <= c < 0xE000 and len(f"a{chr(c)}a".splitlines()) > 1]


def read_back(line: str) -> list[AuditEvent | None]:
    """What a reader sees: the line as written (UTF-8), split on b"\\n" and on every
    str line break, parsed."""
    data = line.encode("utf-8")
    assert data.count(b"\n") == 1 and data.endswith(b"\n")
    pieces = data.decode("utf-8").splitlines()
    return [parse_line(p) for p in pieces]


def failed_login(name: str, ip: str = "203.0.113.9", ts: float | None = None,
                 ua: str = "") -> str:
    return format_line(time.time() if ts is None else ts, "ImapSSLServer-0", "127.0.0.1",
                       ip, 40000, ua, "Auth", name, "imap", failure(name, "invalid password"))


def test_the_breakers_we_know_are_all_there_are():
    assert set(line_breakers()) == set(BREAKS)


@pytest.mark.parametrize("char", sorted(set(BREAKS + C1 + "\x00\x1f\x7f")))
def test_no_line_break_or_control_survives_encode_value(char):
    encoded = encode_value(f"x{char}{FORGED}")
    assert char not in encoded
    assert len(encoded.splitlines()) == 1 and not any(c in encoded for c in BREAKS + C1)


def test_plain_values_are_returned_unchanged():
    for value in ("user01@demo.test", "jürgen@exämple.test", "Thunderbird/115.3",
                  "名前@例え.test"):
        assert encode_value(value) is value          # the hot path copies nothing


@pytest.mark.parametrize("sep", ["\u2028", "\u2029", "\x85", "\x1e", "\x0b", "\x0c"])
def test_a_name_with_a_separator_stays_one_event_with_its_real_client(sep):
    events = read_back(failed_login(f"x{sep}{FORGED}"))
    assert len(events) == 1
    [event] = events
    assert event is not None and event.client_ip == "203.0.113.9"
    assert event.timestamp < 253402300799 - 86400        # not the forged date
    assert "forged" in event.account and not event.ok


def test_a_user_agent_with_byte_0x85_stays_one_event():
    # carbotui/proxy/web.py decodes User-Agent as latin-1, so byte 0x85 arrives as U+0085 (NEL)
    ua = b"a\x85".decode("latin-1") + FORGED
    [event] = read_back(failed_login("user02@demo.test", ua=ua))
    assert event.client_ip == "203.0.113.9" and event.account == "user02@demo.test"
    assert "\x85" not in event.user_agent


def test_forged_line_then_30_real_failures_still_alert():
    """The review's reproduction, end to end minus the sockets."""
    rules = Rules(AlertSettings.from_table({}), node="proxy.demo.test")
    now = time.time()
    events = read_back(failed_login(f"x\u2028{FORGED}", ip="203.0.113.9", ts=now))
    for i in range(30):
        events += read_back(failed_login(f"user{i % 5 + 1:02d}@demo.test", ip="198.51.100.66",
                                         ts=now + i * 0.1))
    alerts = [a for e in events if e is not None for a in rules.feed(e)]
    assert ("ip", "198.51.100.66") in [(a.rule, a.key) for a in alerts]
    assert rules.clock < now + 60


def test_the_tail_splits_on_newline_bytes_only(tmp_path):
    """auditwatch's reader, fed a line an unfixed writer could have written."""
    path = tmp_path / "audit.log"
    path.write_bytes(b"")
    tail = Tail(path, tmp_path / "state", grace=1)
    tail.start()
    raw = failed_login("x").replace("account=x;", f"account=x\u2028{FORGED};")
    with open(path, "ab") as f:
        f.write(raw.encode("utf-8") + failed_login("y").encode())
    lines, _ = tail.poll()
    tail.close()
    assert len(lines) == 2
    assert [parse_line(line).client_ip for line in lines] == ["203.0.113.9"] * 2


# -- Rules: what a line claims is checked -------------------------------------------

NOW = 1_795_000_000.0


def fail(ip: str, account: str, ts: float) -> AuditEvent:
    return AuditEvent(account=account, protocol="imap", client_ip=ip, proxy_ip="127.0.0.1",
                      error=failure(account, "invalid password"), timestamp=ts)


def rules_at(now: list[float], **table) -> Rules:
    return Rules(AlertSettings.from_table(table), node="n", clock=lambda: now[0])


def test_events_from_the_future_are_ignored_and_logged_once(caplog):
    now = [NOW]
    rules = rules_at(now, ip={"threshold": 20})
    with caplog.at_level(logging.WARNING, logger="carbotui.services.alerts"):
        for i in range(500):                       # a flood of forged lines
            assert rules.feed(fail("198.51.100.7", "x", 253402300799.0 - i)) == []
    assert rules.clock <= NOW + 60 and rules.ignored["future"] == 500
    warnings = [r.getMessage() for r in caplog.records if "ignored" in r.getMessage()]
    assert len(warnings) == 1, warnings              # rate-limited: no log flood
    assert "future" in warnings[0] and "198.51.100.7" in warnings[0]
    alerts = []
    for i in range(20):
        alerts += rules.feed(fail("203.0.113.50", f"u{i}@demo.test", NOW + i * 0.1))
    assert [(a.rule, a.key) for a in alerts] == [("ip", "203.0.113.50")]
    # a little ahead (another worker's clock, a line written just now) still counts
    assert rules_at(now, ip={"threshold": 1}).feed(fail("192.0.2.1", "a", NOW + 2))
    # later, the next batch of ignored lines is reported again
    now[0] = NOW + 3600
    with caplog.at_level(logging.WARNING, logger="carbotui.services.alerts"):
        caplog.clear()
        rules.feed(fail("198.51.100.7", "x", NOW + 7200))
    assert any("future" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("oip", ["198.51.100.7 x", "not-an-ip", "", "1.2.3.4;rm -rf",
                                 "10.0.0.1\u2028x", "[::1]x"])
def test_events_with_a_non_ip_client_are_ignored_and_never_block(oip, caplog):
    rules = rules_at([NOW], ip={"threshold": 1, "block_seconds": 60},
                     ipacct={"threshold": 1, "block_seconds": 60}, acct={"threshold": 1},
                     total={"threshold": 1})
    with caplog.at_level(logging.WARNING, logger="carbotui.services.alerts"):
        assert rules.feed(fail(oip, "victim@demo.test", NOW)) == []
    assert rules.ignored["client"] == 1
    assert any("not an IP" in r.getMessage() for r in caplog.records)


def test_ipv4_mapped_and_ipv6_spellings_are_one_key():
    rules = rules_at([NOW], ip={"threshold": 3}, ipacct={"threshold": 0},
                     acct={"threshold": 0})
    alerts = []
    for i, ip in enumerate(["192.0.2.8", "::ffff:192.0.2.8", "192.0.2.8"]):
        alerts += rules.feed(fail(ip, "a@d", NOW + i))
    assert [(a.rule, a.key, a.block_ip) for a in alerts] == [("ip", "192.0.2.8", "")]


def test_alert_log_never_holds_a_line_separator(tmp_path):
    rules = rules_at([NOW], acct={"threshold": 1})
    [alert] = [a for a in rules.feed(fail("192.0.2.1", "a\u2028b\x85c", NOW))
               if a.rule == "acct"]
    AlertLog(tmp_path / "alerts.log").emit(alert)
    text = (tmp_path / "alerts.log").read_text()
    assert len(text.splitlines()) == 1


# -- the mail-side name decoder ------------------------------------------------------

@pytest.mark.parametrize("name", ["x\u2028y", "x\u2029y", "x\x85y", "x\u200by",
                                  "x\u202ey", "\ufeffuser01", "x\x9by", "x\x1cy"])
def test_decode_username_refuses_separators_and_format_characters(name):
    with pytest.raises(AuthDataError):
        decode_username(name.encode())


def test_decode_username_keeps_ordinary_international_names():
    for name in ("user01@demo.test", "jürgen@exämple.test", "名前@例え.test", "a b"):
        assert decode_username(name.encode()) == name
