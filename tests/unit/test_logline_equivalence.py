"""sessions.log and audit.log lines, built for speed (logformat.session_line,
audit.format_line), are the very lines the rules written out plainly give, for hostile
values too: control characters, line and paragraph separators, ``;``, quotes, spaces,
non-ASCII, lone surrogates, long values, odd numbers (ties of the rounding, NaN, inf,
before 1970)."""
from __future__ import annotations

import math
import random
import re
import time

import pytest

from carbotui.core import audit
from carbotui.core import logformat as lf

HOSTILE = ["", "imap", "user01@demo.test", "[::1]", "a b", 'q"uote', "back\\slash", "a;b", ";",
           "x\r\ny", "\n", "\x00", "\x1b[31m", "\x7f", "\x85", "\x9b", "\u2028", "\u2029",
           "\x0b\x0c\x1c\x1d\x1e", "é", "Ünïcödé@bücher.example", "\u202e", "\u200b", "日本",
           "\udcff", "\ud800x", "x" * 329, "x" * 330, "x" * 331, "é" * 400, ";" * 500,
           "\x00" * 1000, "Thunderbird/115.3 (X11; Linux)", "-", "ok\t", "\xa0", "\xad"]

DURATIONS = [0.0, -0.0, -1.0, 0.0844, 0.0005, 0.0015, 0.0025, 0.00049999, 0.00050001, 1.0005,
             2.675, 0.1 + 0.2, 999.9995, 999999999.9995, 1e9 - 0.001, 1e9, 1e12, 1e300,
             5e-324, math.inf, -math.inf, math.nan, 0.9999999, 123.4565, 7.0, 1]


def iso_reference(timestamp: float) -> str:
    second = int(timestamp)
    t = time.localtime(second)
    zone = time.strftime("%z", t)
    millis = min(999, int((timestamp - second) * 1000))
    return f"{time.strftime('%Y-%m-%dT%H:%M:%S', t)}.{millis:03d}{zone[:3]}:{zone[3:]}"


def session_reference(*, timestamp, protocol, client_ip, client_port, account, server,
                      duration, bytes_in, bytes_out, reason, worker, session):
    """The rule: each value through value() with its budget, f-string formats."""
    client = f"[{client_ip}]" if ":" in client_ip else client_ip
    return (f"{iso_reference(timestamp)} protocol={lf.value(protocol, 16)} "
            f"client={lf.value(client or '-', 60)}:{client_port} "
            f"account={lf.value(account)} server={lf.value(server, 260)} "
            f"duration={max(0.0, duration):.3f} bytes_in={bytes_in} bytes_out={bytes_out} "
            f"reason={lf.value(reason, 32)} worker={lf.value(worker, 32)} session={session}\n")


def outcome(function, **args):
    """What a call gives: its line, or the type of what it raised (a lone surrogate that
    surrogateescape cannot carry raises in both)."""
    try:
        return function(**args)
    except UnicodeEncodeError as exc:
        return type(exc)


def session_args(**changes):
    args = dict(timestamp=1764592803.512, protocol="pop3", client_ip="192.0.2.7",
                client_port=50418, account="user01@demo.test", server="mbox1", duration=0.0844,
                bytes_in=52, bytes_out=1169, reason="logout", worker="proxy_01",
                session=10000000007)
    args.update(changes)
    return args


@pytest.mark.parametrize("field", ["protocol", "client_ip", "account", "server", "reason",
                                   "worker"])
def test_a_session_line_is_the_rules_line_whatever_a_value_holds(field):
    for text in HOSTILE:
        args = session_args(**{field: text})
        for _ in range(2):                     # the second time: known-bare values
            line = outcome(lf.session_line, **args)
            assert line == outcome(session_reference, **args), (field, text)
            if not isinstance(line, str):
                continue
            assert line.count("\n") == 1 and line.endswith("\n")
            assert all(0x20 <= ord(c) <= 0x7e for c in line[:-1])


def test_durations_format_as_3f_does():
    for duration in DURATIONS:
        args = session_args(duration=duration)
        assert lf.session_line(**args) == session_reference(**args), duration
    rng = random.Random(16)
    for _ in range(20000):
        number = rng.choice((rng.uniform(0, 2), rng.uniform(0, 90000), rng.expovariate(0.01),
                             rng.randrange(0, 10 ** 7) / 2000, rng.randrange(0, 10 ** 6) / 1000))
        assert lf._fixed3(number) == f"{number:.3f}", repr(number)
    for thousandths in range(0, 200000, 7):        # every tie up to 200 s, and its neighbours
        for number in (thousandths / 1000 + 0.0005, (thousandths + 0.5) / 1000,
                       math.nextafter(thousandths / 1000 + 0.0005, 0),
                       math.nextafter(thousandths / 1000 + 0.0005, 1e9)):
            assert lf._fixed3(number) == f"{number:.3f}", repr(number)


def test_odd_numbers_and_times_as_the_rule_writes_them():
    for timestamp in (0.0, 0.0005, 0.9995, 1764592803.0, 1764592803.9999, 1764592803.0005,
                      2 ** 31 + 0.25, -0.5, -1.25, 86399.999):
        for port, count in ((0, 0), (1, 10 ** 20), (65535, -3)):
            args = session_args(timestamp=timestamp, client_port=port, bytes_in=count,
                                bytes_out=count, session=count)
            assert lf.session_line(**args) == session_reference(**args), args
            assert lf.iso_time(timestamp) == iso_reference(timestamp)


# --- audit.log ---------------------------------------------------------------------------

_NEEDS = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029;]")
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def encode_reference(value: str) -> str:
    if not _NEEDS.search(value):
        return value
    if _UNSAFE.search(value):
        value = value.translate(audit._REPLACE)
    return value.replace(";", ";;")


def audit_reference(timestamp, thread, proxy_ip, client_ip, client_port, user_agent, cmd,
                    account, protocol, error):
    """audit.format_line as first written: every value encoded by itself, round(),
    divmod, strftime and :03d."""
    seconds, millis = divmod(round(timestamp * 1000), 1000)
    context = f"ip={encode_reference(proxy_ip)};oip={encode_reference(client_ip)};"
    if client_port:
        context += f"oport={client_port};"
    if user_agent:
        context += f"ua={encode_reference(user_agent)};"
    body = (f"cmd={cmd}; account={encode_reference(account)}; "
            f"protocol={encode_reference(protocol)};")
    if error:
        body += f" error={encode_reference(error)};"
    level = "WARN " if error else "INFO "
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(seconds))
    return f"{stamp},{millis:03d} {level} [{thread}] [{context}] security - {body}\n"


def test_encode_value_is_the_rule_for_every_hostile_value():
    for text in HOSTILE:
        assert audit.encode_value(text) == encode_reference(text), repr(text)
    for code in range(0x3000):
        text = f"a{chr(code)}b"
        assert audit.encode_value(text) == encode_reference(text), hex(code)


@pytest.mark.parametrize("field", ["proxy_ip", "client_ip", "user_agent", "account",
                                   "protocol", "error"])
def test_an_audit_line_is_the_rules_line_whatever_a_value_holds(field):
    base = dict(timestamp=1764592803.512, thread="Pop3Server-1", proxy_ip="127.0.0.1",
                client_ip="203.0.113.5", client_port=4242, user_agent="", cmd="Auth",
                account="user01@demo.test", protocol="pop3", error="")
    for text in HOSTILE:
        args = dict(base, **{field: text})
        for _ in range(2):                     # the second time: the known-plain values
            line = audit.format_line(**args)
            assert line == audit_reference(**args), (field, text)
            assert line.count("\n") == 1 and not any(c in line[:-1] for c in audit.LINE_BREAKS)
            assert audit.parse_line(line) is not None or "\udcff" in text or "\ud800" in text
    assert all(audit._plain(known) for known in audit._KNOWN_PLAIN)


def test_the_known_plain_values_are_bounded_and_only_plain():
    for i in range(audit.KNOWN_PLAIN_MAX + 10):
        audit.format_line(0.0, "t", "127.0.0.1", "192.0.2.1", 0, "", "Auth",
                          f"user{i}@demo.test", "imap", "")
    assert 0 < len(audit._KNOWN_PLAIN) <= audit.KNOWN_PLAIN_MAX
    for text in HOSTILE:
        audit.format_line(0.0, "t", "127.0.0.1", "192.0.2.1", 0, text, "Auth", text, "imap",
                          "")
    assert all(audit._plain(known) for known in audit._KNOWN_PLAIN)
    assert "a;b" not in audit._KNOWN_PLAIN and "x\r\ny" not in audit._KNOWN_PLAIN


def test_audit_times_round_as_round_does():
    for timestamp in (0.0, 0.0005, 0.0015, 0.0025, 0.9995, 1764592803.5125, 1764592803.9996,
                      1764592803.0005, 1764592803.4995, 2 ** 31 + 0.0005, 86399.9995, -0.0015,
                      -1.5, -0.0004):
        for port in (0, 1):
            args = (timestamp, "t", "127.0.0.1", "192.0.2.1", port, "", "Auth", "bob", "imap",
                    "")
            assert audit.format_line(*args) == audit_reference(*args), timestamp
    rng = random.Random(5)
    for _ in range(3000):
        timestamp = rng.choice((rng.uniform(0, 2e9), rng.randrange(0, 4 * 10 ** 12) / 2000,
                                rng.randrange(0, 10 ** 9) / 1000 + 0.0005))
        args = (timestamp, "t", "127.0.0.1", "192.0.2.1", 0, "", "Auth", "bob", "imap", "")
        assert audit.format_line(*args) == audit_reference(*args), repr(timestamp)
    for bad in (math.nan, math.inf, -math.inf):
        with pytest.raises((ValueError, OverflowError)):
            audit.format_line(bad, "t", "", "", 0, "", "Auth", "bob", "imap", "")
