"""The POP3 machines' native command and status parsing (pop3.py: the verb as the first
four bytes looked up in every case spelling, the status by prefix tests) reads every line
as the plain rule reads it: ``line.partition(b" ")``, the verb upper-cased, the status the
first word of ``line.split(b" ", 1)``. Hostile and odd lines included: NUL, tabs, CR,
non-ASCII, longer words, leading spaces, prefixes of verbs."""
from __future__ import annotations

import itertools
import random

import pytest

from carbotui.protocols import pop3
from carbotui.protocols.events import MailLimits
from carbotui.protocols.pop3 import Pop3ClientSide

from tests.support.transcripts import bytewise, run

VERBS = ("CAPA", "NOOP", "QUIT", "STLS", "USER", "PASS", "AUTH")
TAILS = [b"", b" ", b"  ", b" x", b"  x", b" x y", b" bob@demo.test", b"\t", b"\tx", b"X",
         b"S x", b"\xff", b" \xff\xfe", b" \x85", b" PLAIN", b" PLAIN AGFsaWNlAHNlY3JldA==",
         b" plain =", b" \r", b"\r", b" " + b"y" * 200, b"\x00", b" a\x00b"]


def reference_parse(line: bytes) -> tuple[str, bytes | None] | str:
    """The rule, written out: what the handler of a line is and what it is given."""
    if line.find(b"\0") >= 0:
        return "nul"
    verb, has_arg, arg = line.partition(b" ")
    name = verb.upper().decode("ascii", "replace")
    if name not in VERBS:
        return "unknown"
    return name, (arg if has_arg else None)


def machines():
    for limits, tls in ((MailLimits(starttls="off"), False), (MailLimits(starttls="on"), False),
                        (MailLimits(), False), (MailLimits(), True)):
        yield lambda limits=limits, tls=tls: Pop3ClientSide(limits, tls=tls)


def lines():
    rng = random.Random(1939)
    for verb in VERBS:
        spellings = ["".join(c) for c in itertools.product(*[(x, x.lower()) for x in verb])]
        for tail in TAILS:
            yield rng.choice(spellings).encode() + tail
            yield verb.encode() + tail
    for odd in (b"", b" ", b"USE", b"US R x", b" USER bob", b"USERUSER", b"U", b"CAP",
                b"\xc3\xa9USER", b"USER\xc3\xa9", b"user\x85x", b"QUIT\x00", b"\x00QUIT",
                b"NOOPS", b"N\x00OP", b"STAT", b"RETR 1", b"LIST", b"APOP bob x"):
        yield odd
    for _ in range(3000):
        # with the bytes that differ from a letter by 0x20 or 0x80 only ('@', '[', '`', '{'
        # beside 'A', 'Z', 'a', 'z'; 0xC1, 0xD5...): no case folding may take them for one
        yield bytes(rng.choice(b"USERPASQITNOCAuserpasqitnoca \t\x00\xff@[`{\x01\x15\xc1\xd5"
                               b"\xf5\xe1\x35\x13") for _ in
                    range(rng.randrange(0, 9)))


def test_every_line_reaches_the_handler_the_rule_names():
    for make in machines():
        for line in lines():
            parsed = reference_parse(line)
            got = bytewise(make, line + b"\r\n")     # whole and byte by byte
            if parsed == "nul":
                assert got == (b"-ERR NUL byte in command.\r\n", []), line
            elif parsed == "unknown":
                assert got == (b"-ERR Unknown command.\r\n", []), line
            else:
                verb, arg = parsed
                canonical = verb.encode() + (b"" if arg is None else b" " + arg)
                assert got == run(make(), canonical + b"\r\n"), line


def test_no_other_byte_in_a_verb_is_taken_for_its_letter():
    make = lambda: Pop3ClientSide(MailLimits(starttls="off"), tls=False)  # noqa: E731
    for verb in VERBS:
        for position in range(4):
            for byte in range(256):
                if byte == 0x0A:            # LF ends the line: two commands, another test
                    continue
                line = bytearray(verb.encode())
                line[position] = byte
                for tail in (b"", b" x"):
                    odd = bytes(line) + tail
                    parsed = reference_parse(odd)
                    got = run(make(), odd + b"\r\n")
                    if parsed == "nul":
                        assert got == (b"-ERR NUL byte in command.\r\n", []), odd
                    elif parsed == "unknown":
                        assert got == (b"-ERR Unknown command.\r\n", []), odd
                    else:
                        name, arg = parsed
                        canonical = name.encode() + (b"" if arg is None else b" " + arg)
                        assert got == run(make(), canonical + b"\r\n"), odd


def test_user_then_pass_in_any_case_logs_in_with_the_rest_of_the_line():
    for user_verb, pass_verb in ((b"user", b"pass"), (b"UsEr", b"PaSs"), (b"USER", b"PASS")):
        c = Pop3ClientSide(MailLimits(starttls="off"), tls=False)
        sent, events = run(c, user_verb + b" bob\r\n" + pass_verb + b"  two words \r\n")
        assert sent == b"+OK\r\n"
        assert [(e.username, e.password, e.mechanism) for e in events] == \
            [("bob", " two words ", "USER")]


def reference_status(line: bytes) -> bytes:
    word = line.split(b" ", 1)[0]
    return word if word in (b"+OK", b"-ERR", b"+") else b""


@pytest.mark.parametrize("line", [
    b"", b"+", b"+ ", b"+OK", b"+OK ", b"+OK Logged in.", b"+OKAY", b"+OK\tx", b"-ERR",
    b"-ERR ", b"-ERR [AUTH] no", b"-ERRx", b"-ER", b"+x", b"++", b"+ +OK", b" +OK", b"*",
    b"-", b"OK", b"+ok", b"-err x", b"+OK\r", b"-ERR\x00", b"+\xff", b"\xff+OK",
])
def test_the_status_of_a_backend_line_is_the_rules(line):
    assert pop3._status(line) == reference_status(line)


def test_the_status_of_random_lines_is_the_rules():
    rng = random.Random(2449)
    for _ in range(5000):
        line = bytes(rng.choice(b"+-OKER \t\x00k") for _ in range(rng.randrange(0, 8)))
        assert pop3._status(line) == reference_status(line), line
