"""Byte transcripts for the IMAP pre-auth machines (carbotui/protocols/imap.py)."""
from __future__ import annotations

import base64
import dataclasses

import pytest

from carbotui.protocols.events import (
    Authenticate, BackendFailed, ClientId, Close, LoginOK, LoginRejected, MailLimits, Send,
    StartTLS,
)
from carbotui.protocols.imap import ImapBackendLogin, ImapClientSide

from tests.support.transcripts import bytewise, login_bytewise, run, script, split

CAPS = "IMAP4rev1 ID LITERAL+ SASL-IR IDLE NAMESPACE ENABLE"
ONLY_LIMITS = MailLimits()                      # starttls "only" is the default
ON_LIMITS = MailLimits(starttls="on")
OFF_LIMITS = MailLimits(starttls="off")

FAILED = b" NO [AUTHENTICATIONFAILED] Authentication failed.\r\n"


# ---------------------------------------------------------------- helpers

def client(limits: MailLimits = OFF_LIMITS, tls: bool = False) -> ImapClientSide:
    return ImapClientSide(limits, tls=tls)


def plain(authzid: str, user: str, password: str) -> bytes:
    return base64.b64encode(f"{authzid}\0{user}\0{password}".encode())


def logged_in_pending(c: ImapClientSide, command: bytes) -> Authenticate:
    """Feed a login command and return the one Authenticate it produced."""
    sent, events = run(c, command)
    assert [type(e) for e in events] == [Authenticate], (sent, events)
    return events[0]


# ----------------------------------------------------- greeting, CAPABILITY

@pytest.mark.parametrize("limits, tls, expected", [
    (ONLY_LIMITS, False, CAPS + " STARTTLS LOGINDISABLED"),
    (ON_LIMITS, False, CAPS + " AUTH=PLAIN STARTTLS"),
    (OFF_LIMITS, False, CAPS + " AUTH=PLAIN"),
    (ONLY_LIMITS, True, CAPS + " AUTH=PLAIN"),
    (ON_LIMITS, True, CAPS + " AUTH=PLAIN"),
    (MailLimits(sasl_plain=False), True, CAPS),
    (MailLimits(starttls="on", sasl_plain=False), False, CAPS + " STARTTLS"),
])
def test_greeting_and_capability_per_mode(limits, tls, expected):
    c = ImapClientSide(limits, tls=tls)
    assert c.capability_line == expected
    assert c.greeting() == f"* OK [CAPABILITY {expected}] IMAP4rev1 proxy ready\r\n".encode()
    assert run(c, b"a1 CAPABILITY\r\n") == (
        f"* CAPABILITY {expected}\r\na1 OK CAPABILITY completed.\r\n".encode(), [])


def test_capability_is_case_insensitive_and_takes_no_arguments():
    assert run(client(), b"a capability\r\nb Capability x\r\n") == (
        b"* CAPABILITY " + CAPS.encode() + b" AUTH=PLAIN\r\na OK CAPABILITY completed.\r\n"
        b"b BAD CAPABILITY takes no arguments\r\n", [])


def test_unknown_starttls_mode_is_refused():
    with pytest.raises(ValueError, match="only\\|on\\|off"):
        ImapClientSide(MailLimits(starttls="yes"), tls=False)


def test_noop_and_lf_only_line_ends():
    assert run(client(), b"a NOOP\nb noop\r\n") == (
        b"a OK NOOP completed.\r\nb OK NOOP completed.\r\n", [])


def test_logout_says_bye_and_closes_and_ignores_the_rest():
    c = client()
    assert run(c, b"a LOGOUT\r\nb NOOP\r\n") == (
        b"* BYE Logging out\r\na OK Logout completed.\r\n", [Close("client logged out")])
    assert c.feed(b"c NOOP\r\n") == []


# -------------------------------------------------------------------- ID

def test_id_replies_with_ours_and_reports_the_clients_fields():
    limits = dataclasses.replace(OFF_LIMITS, imap_id=(("name", "carbotui"), ("version", "1")))
    sent, events = run(client(limits),
                       b'a ID ("Name" "Thunderbird" "VERSION" "115.0" "os" NIL "name" "x")\r\n')
    assert sent == b'* ID ("name" "carbotui" "version" "1")\r\na OK ID completed.\r\n'
    # Lower-cased keys, NIL becomes None, the first occurrence of a key wins.
    assert events == [ClientId({"name": "Thunderbird", "version": "115.0", "os": None})]


def test_id_nil_and_empty_server_id():
    assert run(client(dataclasses.replace(OFF_LIMITS, imap_id=())), b"a ID NIL\r\n") == (
        b"* ID NIL\r\na OK ID completed.\r\n", [ClientId({})])


def test_id_values_may_be_literals_and_escaped_quotes():
    sent, events = run(client(), b'a ID ("name" {3}\r\n', b'K\\M "x" "a\\"b\\\\c")\r\n')
    assert sent == b'+ OK\r\n* ID ("name" "carbotui")\r\na OK ID completed.\r\n'
    assert events == [ClientId({"name": "K\\M", "x": 'a"b\\c'})]


@pytest.mark.parametrize("args", [
    b"", b" foo", b' ("name")', b' ("name" "x"', b" (name x)", b' ("k" ("v"))',
    b" (" + b'"k" "v" ' * 31 + b")", b' ("' + b"k" * 31 + b'" "v")',
])
def test_id_bad_arguments(args):
    sent, events = run(client(), b"a ID" + args + b"\r\n")
    assert sent.startswith(b"a BAD ") and events == []


# -------------------------------------------------------------- STARTTLS

def test_starttls_discards_pipelined_plaintext():
    c = client(ONLY_LIMITS)
    # "b LOGIN" arrives in plaintext after STARTTLS: it must never run.
    assert run(c, b"a STARTTLS\r\nb LOGIN bob secret\r\n") == (
        b"a OK Begin TLS negotiation now.\r\n", [StartTLS()])
    assert c.feed(b"c LOGIN bob secret\r\n") == []     # still plaintext: ignored
    assert c.tls_started() == []
    assert c.tls and c.capability_line == CAPS + " AUTH=PLAIN"
    assert run(c, b"d CAPABILITY\r\n")[0] == (
        b"* CAPABILITY " + CAPS.encode() + b" AUTH=PLAIN\r\nd OK CAPABILITY completed.\r\n")
    assert logged_in_pending(c, b"e LOGIN bob secret\r\n") == Authenticate("bob", "secret")


def test_starttls_refused_when_tls_or_off_or_with_arguments():
    assert run(client(ONLY_LIMITS, tls=True), b"a STARTTLS\r\n") == (
        b"a BAD TLS is already active.\r\n", [])
    assert run(client(OFF_LIMITS), b"a STARTTLS\r\n") == (
        b"a BAD STARTTLS is not available.\r\n", [])
    assert run(client(ONLY_LIMITS), b"a STARTTLS now\r\n") == (
        b"a BAD STARTTLS takes no arguments\r\n", [])


def test_tls_started_out_of_turn_is_a_bug():
    with pytest.raises(RuntimeError):
        client().tls_started()


# ------------------------------------------------ privacy (starttls only)

PRIVACY = (b" NO [PRIVACYREQUIRED] Plaintext authentication disallowed on non-secure "
           b"connections; use STARTTLS first\r\n")


def test_only_mode_refuses_login_and_authenticate_before_tls():
    c = client(ONLY_LIMITS)
    assert run(c, b"a LOGIN bob secret\r\nb AUTHENTICATE PLAIN\r\n") == (
        b"a" + PRIVACY + b"b" + PRIVACY, [])
    # A synchronising literal is refused before the client sends the password.
    assert run(c, b"c LOGIN {3}\r\n") == (b"c" + PRIVACY, [])
    # Non-synchronising literals are read and dropped, never run as commands.
    assert run(c, b"d LOGIN {8+}\r\ne LOGOUT {10+}\r\nf LOGOUT\r\n\r\ng NOOP\r\n") == (
        b"d" + PRIVACY + b"g OK NOOP completed.\r\n", [])


def test_on_mode_allows_plaintext_login():
    assert logged_in_pending(client(ON_LIMITS), b"a LOGIN bob secret\r\n") == Authenticate(
        "bob", "secret")


# ------------------------------------------------------------------ LOGIN

@pytest.mark.parametrize("command, username, password", [
    (b"a LOGIN bob secret\r\n", "bob", "secret"),
    (b"a login bob@example.com s3cr3t!\r\n", "bob@example.com", "s3cr3t!"),
    (b'a LOGIN "bob smith" "pa ss"\r\n', "bob smith", "pa ss"),
    (b'a LOGIN "b\\"o\\\\b" "\\\\"\r\n', 'b"o\\b', "\\"),
    (b'a LOGIN "j\xc3\xb6rg" ""\r\n', "j\u00f6rg", ""),
    (b"a LOGIN {3+}\r\nbob {6+}\r\nsecret\r\n", "bob", "secret"),
    (b'a LOGIN "bob" {5+}\r\na b"c\r\n', "bob", 'a b"c'),
    (b"a LOGIN {3+}\r\nbob secret\r\n", "bob", "secret"),
    (b"a LOGIN {0+}\r\n {0+}\r\n\r\n", None, None),        # empty username: refused
    (b"a LOGIN NIL NIL\r\n", "NIL", "NIL"),
    (b"a   LOGIN  bob   secret\r\n", None, None),           # tag needs exactly one space
])
def test_login_argument_forms(command, username, password):
    sent, events = bytewise(client, command)
    if username is None:
        assert sent.startswith(b"* BAD ") or sent.startswith(b"a BAD ")
        assert events == []
    else:
        assert sent == b""
        assert events == [Authenticate(username, password, mechanism="LOGIN")]


def test_login_synchronising_literals_get_continuations():
    c = client()
    assert run(c, b"a LOGIN {3}\r\n") == (b"+ OK\r\n", [])
    assert run(c, b"bob {6}\r\n") == (b"+ OK\r\n", [])
    assert run(c, b"secret\r\n") == (b"", [Authenticate("bob", "secret")])


def test_login_mixed_quoted_user_and_sync_literal_password():
    assert bytewise(client, b'a LOGIN "bob" {7}\r\nsec ret\r\n') == (
        b"+ OK\r\n", [Authenticate("bob", "sec ret")])


@pytest.mark.parametrize("command, reply", [
    (b"a LOGIN bob\r\n", b"a BAD LOGIN expects a username and a password\r\n"),
    (b"a LOGIN bob pw x\r\n", b"a BAD LOGIN expects a username and a password\r\n"),
    (b"a LOGIN (bob) pw\r\n", b"a BAD LOGIN expects a username and a password\r\n"),
    (b'a LOGIN "bob""pw"\r\n', b"a BAD Missing space between arguments\r\n"),
    (b'a LOGIN "bob pw\r\n', b"a BAD Invalid quoted string\r\n"),
    (b'a LOGIN "b\\ob" pw\r\n', b"a BAD Invalid quoted string\r\n"),
    (b"a LOGIN bob{3}\r\n", b"a BAD Missing space before literal\r\n"),
    (b"a LOGIN {3x}\r\n", b"a BAD Invalid literal\r\n"),
    (b"a LOGIN {3 pw\r\n", b"a BAD Invalid literal\r\n"),
    (b"a LOGIN b\x00b pw\r\n", b"a BAD NUL byte in command\r\n"),
    (b"a LOGIN \xff\xfe pw\r\n", b"a BAD Username is not valid UTF-8\r\n"),
    (b'a LOGIN "b\tb" pw\r\n', b"a BAD Username contains control characters\r\n"),
    (b'a LOGIN "b\x7fb" pw\r\n', b"a BAD Username contains control characters\r\n"),
    (b'a LOGIN "bob" "\xff"\r\n', b"a BAD Password is not valid UTF-8\r\n"),
])
def test_login_bad_syntax_and_bad_names(command, reply):
    c = client()
    assert run(c, command) == (reply, [])
    assert run(c, b"z NOOP\r\n") == (b"z OK NOOP completed.\r\n", [])   # connection lives on


def test_control_characters_inside_literals():
    assert run(client(), b"a LOGIN {5+}\r\nb\r\nob pw\r\n") == (
        b"a BAD Username contains control characters\r\n", [])
    assert run(client(), b"a LOGIN bob {4+}\r\np\r\nw\r\n") == (
        b"a BAD Password contains NUL, CR or LF\r\n", [])
    assert run(client(), b"a LOGIN {3+}\r\nb\x00b pw\r\nz NOOP\r\n") == (
        b"a BAD NUL byte in literal\r\nz OK NOOP completed.\r\n", [])


def test_literal_too_big_synchronising_keeps_the_connection():
    c = client(dataclasses.replace(OFF_LIMITS, max_literal=10))
    assert run(c, b"a LOGIN {11}\r\n") == (b"a BAD [TOOBIG] Literal too big\r\n", [])
    # The limit holds for the sum of a command's literals.
    assert run(c, b"b LOGIN {6}\r\n") == (b"+ OK\r\n", [])
    assert run(c, b"bobbob {5}\r\n") == (b"b BAD [TOOBIG] Literal too big\r\n", [])
    assert run(c, b"c LOGIN {99999999999999999999}\r\n") == (
        b"c BAD [TOOBIG] Literal too big\r\n", [])
    assert logged_in_pending(c, b"d LOGIN bob pw\r\n") == Authenticate("bob", "pw")


def test_literal_too_big_non_synchronising_is_dropped_and_refused():
    """LITERAL+ (RFC 7888 section 4): the bytes come anyway; they are dropped as they
    stream in (never read as commands) and the command gets BAD; the session goes on."""
    c = client(dataclasses.replace(OFF_LIMITS, max_literal=10))
    assert run(c, b"a LOGIN {11+}\r\nb NOOP\r\nxx pw\r\n") == (
        b"a BAD [TOOBIG] Literal too big\r\n", [])
    assert run(c, b"b NOOP\r\n") == (b"b OK NOOP completed.\r\n", [])
    # Too many digits to count: the session cannot stay in step and ends.
    assert run(c, b"c LOGIN {99999999999999999999+}\r\n") == (
        b"* BYE [TOOBIG] Literal too big\r\n", [Close("literal too big")])


TOO_LONG = b"a BAD [TOOBIG] Command line too long\r\n"
NOOP_OK = b"b OK NOOP completed.\r\n"


def short_lines(max_line: int) -> ImapClientSide:
    """A client whose command lines may be at most ``max_line`` bytes."""
    return client(dataclasses.replace(OFF_LIMITS, max_line=max_line))


def test_line_too_long_is_refused_and_the_session_goes_on():
    ok = b"a LOGIN bob " + b"p" * 8          # exactly 20 bytes
    assert run(short_lines(20), ok + b"\r\n")[1] == [Authenticate("bob", "p" * 8)]
    c = short_lines(20)
    assert run(c, ok) == (b"", [])
    assert run(c, b"\r") == (b"", [])                   # may still be the line end
    assert run(c, b"x") == (b"", [])                    # over: dropped as it comes
    assert run(c, b"x" * 5000) == (b"", [])
    assert run(c, b"\r\nb NOOP\r\n") == (TOO_LONG + NOOP_OK, [])
    # Without any line end the buffer stays bounded.
    c = short_lines(20)
    run(c, b"x" * 50000)
    assert len(c._buf) <= 64
    assert run(c, b"\n") == (b"* BAD [TOOBIG] Command line too long\r\n", [])


def test_line_too_long_keeps_the_framing_of_its_literal():
    # A non-synchronising literal at the end of the long line is dropped, not executed.
    long_login = b"a LOGIN " + b"u" * 30
    assert run(short_lines(20), long_login + b" {12+}\r\nc LOGOUT\r\nx\r\nb NOOP\r\n") == (
        TOO_LONG + NOOP_OK, [])
    # A synchronising one gets the BAD at once, and no "+".
    c = short_lines(20)
    assert run(c, long_login + b" {12}\r\n") == (TOO_LONG, [])
    assert run(c, b"b NOOP\r\n") == (NOOP_OK, [])


def test_command_spread_over_literals_is_bounded_by_max_line():
    assert run(short_lines(30), b"a ID (" + b'"k" {1+}\r\nv ' * 6 + b")\r\nb NOOP\r\n") == (
        TOO_LONG + NOOP_OK, [])


def _largest_id(escaped: bool) -> bytes:
    """RFC 2971 section 3.3's limits: 30 pairs, fields of 30 octets, values of 1024."""
    pairs = []
    for i in range(30):
        field = (b"f%02d" % i).ljust(30, b"x")
        if escaped:
            value = b'\\"' * 512                       # 1024 octets, each one escaped
        else:
            value = b"v" * 1024
        pairs.append(b'"' + field + b'" "' + value + b'"')
    return b"a ID (" + b" ".join(pairs) + b")\r\n"


@pytest.mark.parametrize("escaped", [False, True])
def test_the_largest_id_rfc_2971_allows_passes_at_the_default_limits(escaped):
    line = _largest_id(escaped)
    assert len(line) > 30000
    c = client(MailLimits(starttls="off"))
    events = c.feed(line)
    assert events[0].data.endswith(b"\r\na OK ID completed.\r\n")
    assert len(events) == 2 and len(events[1].fields) == 30
    assert run(c, b"b NOOP\r\n") == (b"b OK NOOP completed.\r\n", [])


def test_the_largest_id_as_literals_passes_at_the_default_limits():
    pairs = b" ".join(b'"f%02d" {1024+}\r\n' % i + b"v" * 1024 for i in range(30))
    c = client(MailLimits(starttls="off"))
    events = c.feed(b"a ID (" + pairs + b")\r\n")
    assert events[0].data.endswith(b"\r\na OK ID completed.\r\n")
    assert len(events) == 2 and len(events[1].fields) == 30


# ----------------------------------------------------------- bad commands

# Each line: the command line sent (without its CRLF) | the reply line (without its CRLF);
# \x16\x03\x01 is a TLS ClientHello on the plain port.
GARBAGE = script(r"""
| * BAD Empty command line
* OK hello | * BAD Invalid tag
+ go | * BAD Invalid tag
a+b NOOP | * BAD Invalid tag
\x16\x03\x01 | * BAD Invalid tag
a | a BAD Missing command
a (NOOP) | a BAD Invalid command name
a SELECT INBOX | a BAD Unknown command or not allowed before login
a NOOP x | a BAD NOOP takes no arguments
a NOOP \x00 | a BAD NUL byte in command
""")


@pytest.mark.parametrize("line, reply", GARBAGE)
def test_garbage_gets_bad(line, reply):
    c = client()
    assert run(c, line + b"\r\n") == (reply + b"\r\n", [])
    assert run(c, b"z NOOP\r\n") == (b"z OK NOOP completed.\r\n", [])


def test_refused_command_with_sync_literal_is_answered_at_once():
    # The client waits for "+" that never comes: it gets the BAD instead, and
    # the next line is a new command.
    assert run(client(), b"a SELECT {5}\r\nb NOOP\r\n") == (
        b"a BAD Unknown command or not allowed before login\r\nb OK NOOP completed.\r\n", [])
    assert run(client(), b"a NOOP {5}\r\n") == (b"a BAD Unexpected literal\r\n", [])


def test_refused_command_with_non_sync_literal_skips_the_literal():
    assert run(client(), b"a SELECT {10+}\r\nb LOGOUT\r\n\r\nc NOOP\r\n") == (
        b"a BAD Unknown command or not allowed before login\r\nc OK NOOP completed.\r\n", [])


# ------------------------------------------------------ AUTHENTICATE PLAIN

def test_authenticate_plain_with_initial_response():
    assert bytewise(client, b"a AUTHENTICATE PLAIN " + plain("", "bob", "secret") + b"\r\n") == (
        b"", [Authenticate("bob", "secret", mechanism="PLAIN")])


def test_authenticate_plain_with_continuation():
    c = client()
    assert run(c, b"a authenticate plain\r\n") == (b"+ \r\n", [])
    assert run(c, plain("", "bob", "pa ss") + b"\r\n") == (
        b"", [Authenticate("bob", "pa ss", mechanism="PLAIN")])


def test_authenticate_plain_authzid():
    # another authzid is refused (tests/unit/test_sasl_authzid.py), nothing routed
    c = client()
    assert run(c, b"a AUTHENTICATE PLAIN " + plain("admin", "bob", "pw") + b"\r\n") == (
        b"a NO [AUTHORIZATIONFAILED] Authorization as another user is not allowed\r\n", [])
    # authzid equal to the username is no delegation: normalised away.
    c = client()
    assert run(c, b"a AUTHENTICATE PLAIN " + plain("bob", "bob", "pw") + b"\r\n")[1] == [
        Authenticate("bob", "pw", "", mechanism="PLAIN")]


def test_authenticate_cancel_and_bad_data():
    c = client()
    assert run(c, b"a AUTHENTICATE PLAIN\r\n*\r\n") == (
        b"+ \r\na BAD Authentication cancelled.\r\n", [])
    assert run(c, b"b AUTHENTICATE PLAIN AGJvYgBwdw=x\r\n") == (
        b"b BAD Invalid base64 data\r\n", [])
    assert run(c, b"c AUTHENTICATE PLAIN\r\nnot base64!\r\n") == (
        b"+ \r\nc BAD Invalid base64 data\r\n", [])
    assert run(c, b"d AUTHENTICATE PLAIN =\r\n") == (b"d BAD Invalid SASL PLAIN message\r\n", [])
    assert run(c, b"e AUTHENTICATE PLAIN " + base64.b64encode(b"bob\0pw") + b"\r\n") == (
        b"e BAD Invalid SASL PLAIN message\r\n", [])
    assert run(c, b"f AUTHENTICATE PLAIN " + plain("", "", "pw") + b"\r\n") == (
        b"f BAD Empty username\r\n", [])
    assert run(c, b"g AUTHENTICATE PLAIN " + plain("", "b\nb", "pw") + b"\r\n") == (
        b"g BAD Username contains control characters\r\n", [])
    assert run(c, b"h AUTHENTICATE PLAIN " + plain("x\x01", "bob", "pw") + b"\r\n") == (
        b"h BAD Authorization identity contains control characters\r\n", [])
    assert run(c, b"i AUTHENTICATE\r\n") == (
        b"i BAD AUTHENTICATE expects a mechanism and an optional initial response\r\n", [])
    assert run(c, b"j AUTHENTICATE GSSAPI\r\nk NOOP\r\n") == (
        b"j NO Unsupported authentication mechanism.\r\nk OK NOOP completed.\r\n", [])


def test_authenticate_refused_without_sasl_plain():
    c = client(dataclasses.replace(OFF_LIMITS, sasl_plain=False))
    assert run(c, b"a AUTHENTICATE PLAIN =\r\n") == (
        b"a NO Unsupported authentication mechanism.\r\n", [])


def test_authenticate_response_line_is_bounded():
    # A SASL response line over the limit still ends the session (no client sends one).
    c = client(dataclasses.replace(OFF_LIMITS, max_line=40))
    assert run(c, b"a AUTHENTICATE PLAIN\r\n" + b"A" * 60) == (
        b"+ \r\n* BYE Command line too long\r\n", [Close("line too long")])


# ------------------------------------------------------- auth results

def test_auth_succeeded_answers_with_client_tag_and_returns_pipelined_bytes():
    c = client()
    sent, events = run(c, b"t1 LOGIN bob secret\r\nt2 SELECT INBOX\r\nt3 FETCH 1")
    assert events == [Authenticate("bob", "secret")]
    events, leftover = c.auth_succeeded(b"OK [CAPABILITY IMAP4rev1 IDLE] Logged in")
    assert events == [Send(b"t1 OK [CAPABILITY IMAP4rev1 IDLE] Logged in\r\n")]
    assert leftover == b"t2 SELECT INBOX\r\nt3 FETCH 1"
    for call in (lambda: c.feed(b"x"), lambda: c.auth_failed(temporary=False),
                 lambda: c.auth_succeeded(b"OK"), lambda: c.throttled("no")):
        with pytest.raises(RuntimeError):
            call()


def test_bytes_arriving_during_auth_are_kept_for_later():
    c = client()
    logged_in_pending(c, b"a LOGIN bob pw\r\n")
    assert c.feed(b"b NOOP\r\n") == []
    assert c.feed(b"c SEL") == []
    assert c.auth_succeeded(b"OK Logged in")[1] == b"b NOOP\r\nc SEL"


def test_auth_failed_resumes_pipelined_commands():
    c = client()
    sent, events = run(c, b"a LOGIN bob wrong\r\nb NOOP\r\nc LOGIN bob right\r\nd NOOP\r\n")
    assert events == [Authenticate("bob", "wrong")]
    sent, events = split(c.auth_failed(temporary=False))
    assert sent == b"a" + FAILED + b"b OK NOOP completed.\r\n"
    assert events == [Authenticate("bob", "right")]
    events, leftover = c.auth_succeeded(b"OK Logged in")
    assert events == [Send(b"c OK Logged in\r\n")] and leftover == b"d NOOP\r\n"


def test_auth_failed_temporary_and_custom_text():
    c = client()
    logged_in_pending(c, b"a LOGIN bob pw\r\n")
    assert c.auth_failed(temporary=True) == [
        Send(b"a NO [UNAVAILABLE] Temporary failure, try again later.\r\n")]
    logged_in_pending(c, b"b LOGIN bob pw\r\n")
    # The text is one line whatever it holds: no reply injection.
    assert c.auth_failed(temporary=False, text="Bad\r\n* OK x") == [
        Send(b"b NO [AUTHENTICATIONFAILED] Bad  * OK x\r\n")]


def test_too_many_failures_close():
    c = client()
    for tag in (b"a", b"b"):
        logged_in_pending(c, tag + b" LOGIN bob pw\r\n")
        assert c.auth_failed(temporary=False) == [Send(tag + FAILED)]
        # Temporary failures are not the user's fault and do not count.
        logged_in_pending(c, tag + b"t LOGIN bob pw\r\n")
        c.auth_failed(temporary=True)
    logged_in_pending(c, b"c LOGIN bob pw\r\nd NOOP\r\n")
    assert split(c.auth_failed(temporary=False)) == (
        b"c" + FAILED + b"* BYE Too many invalid authentication attempts\r\n",
        [Close("too many authentication failures")])
    assert c.feed(b"e NOOP\r\n") == []


def test_pipelining_too_much_during_auth_closes():
    limits = dataclasses.replace(OFF_LIMITS, max_line=20, max_literal=10)
    c = client(limits)
    logged_in_pending(c, b"a LOGIN bob pw\r\n" + b"x" * 30)
    assert c.feed(b"x") == [Send(b"* BYE Too much data sent during authentication\r\n"),
                            Close("pipelined too much")]
    # Too much already with the login command: no Authenticate at all.
    c = client(limits)
    assert run(c, b"a LOGIN bob pw\r\n" + b"x" * 31) == (
        b"* BYE Too much data sent during authentication\r\n", [Close("pipelined too much")])


def test_throttled():
    c = client()
    logged_in_pending(c, b"a LOGIN bob pw\r\n")
    assert c.throttled("Login rejected for this user") == [
        Send(b"* BYE Login rejected for this user\r\na NO LOGIN failed\r\n"),
        Close("throttled")]
    c = client()
    logged_in_pending(c, b"a AUTHENTICATE PLAIN " + plain("", "bob", "pw") + b"\r\n")
    assert c.throttled("go away") == [
        Send(b"* BYE go away\r\na NO AUTHENTICATE failed\r\n"), Close("throttled")]
    # Before any login (IP throttle): just the BYE.
    assert client().throttled("Login rejected from this IP") == [
        Send(b"* BYE Login rejected from this IP\r\n"), Close("throttled")]


def test_auth_answers_out_of_turn_are_bugs():
    c = client()
    for call in (lambda: c.auth_failed(temporary=False), lambda: c.auth_succeeded(b"OK")):
        with pytest.raises(RuntimeError):
            call()


def test_password_never_in_repr_or_errors():
    c = client()
    event = logged_in_pending(c, b"a LOGIN bob hunter2secret\r\n")
    assert "hunter2secret" not in repr(event) and "hunter2secret" not in str(event)
    with pytest.raises(RuntimeError) as info:
        c.tls_started()
    assert "hunter2secret" not in str(info.value)


# ------------------------------------------------------- whole transcript

def test_whole_session_byte_by_byte():
    transcript = (
        b"1 CAPABILITY\r\n"
        b'2 ID ("name" {11}\r\nThunderbird "version" "115")\r\n'
        b"3 NOOP\r\n"
        b"4 SELECT {3+}\r\nabc\r\n"
        b"5 LOGIN {3}\r\nbob {9+}\r\nsec\"ret\\x\r\n"
        b"6 SELECT INBOX\r\n"
    )
    sent, events = bytewise(client, transcript)
    assert sent == (
        b"* CAPABILITY " + CAPS.encode() + b" AUTH=PLAIN\r\n1 OK CAPABILITY completed.\r\n"
        b"+ OK\r\n"
        b'* ID ("name" "carbotui")\r\n2 OK ID completed.\r\n'
        b"3 OK NOOP completed.\r\n"
        b"4 BAD Unknown command or not allowed before login\r\n"
        b"+ OK\r\n")
    assert events == [ClientId({"name": "Thunderbird", "version": "115"}),
                      Authenticate("bob", 'sec"ret\\x')]


# ----------------------------------------------------------- backend login

GREETING = b"* OK [CAPABILITY IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE IDLE LITERAL+ " \
           b"AUTH=PLAIN] Dovecot ready.\r\n"
ID_CMD = (b'A1 ID ("X-ORIGINATING-IP" "203.0.113.9" "X-ORIGINATING-PORT" "51000" '
          b'"X-CONNECTED-IP" "10.0.0.5" "X-CONNECTED-PORT" "143" "X-VIA" "carbotui")\r\n')
LOGGED_IN = b"OK [CAPABILITY IMAP4rev1 IDLE] Logged in"


def backend(username="bob", password="secret", **kw) -> ImapBackendLogin:
    args = dict(client_ip="203.0.113.9", client_port=51000, local_ip="10.0.0.5",
                local_port=143)
    args.update(kw)
    return ImapBackendLogin(username, password, **args)


def test_backend_login_with_id_and_quoted_strings():
    b = backend()
    # ID and LOGIN are pipelined: one write, one round trip.
    assert run(b, GREETING) == (ID_CMD + b'A2 LOGIN "bob" "secret"\r\n', [])
    assert run(b, b'* ID ("name" "Dovecot")\r\nA1 OK ID completed.\r\n') == (b"", [])
    assert run(b, b"A2 " + LOGGED_IN + b"\r\n") == (b"", [LoginOK(LOGGED_IN)])
    assert b.leftover() == b""
    with pytest.raises(RuntimeError):
        b.feed(b"more")


def test_backend_whole_login_byte_by_byte():
    data = (GREETING + b'* ID ("name" {7}\r\nDovecot)\r\nA1 OK ID completed.\r\n'
            + b"A2 " + LOGGED_IN + b"\r\n* 3 EXISTS\r\n")
    assert login_bytewise(backend, data) == (
        ID_CMD + b'A2 LOGIN "bob" "secret"\r\n', [LoginOK(LOGGED_IN)], b"* 3 EXISTS\r\n")


def test_backend_id_answered_bad_is_ignored():
    b = backend()
    assert run(b, GREETING) == (ID_CMD + b'A2 LOGIN "bob" "secret"\r\n', [])
    assert run(b, b"* BAD unknown command\r\nA1 BAD Error in IMAP command\r\n") == (b"", [])
    assert run(b, b"A2 " + LOGGED_IN + b"\r\n") == (b"", [LoginOK(LOGGED_IN)])


def test_backend_without_greeting_capabilities_asks_for_them():
    b = backend(send_id=True)
    assert run(b, b"* OK IMAP4rev1 ready\r\n") == (b"A1 CAPABILITY\r\n", [])
    assert run(b, b"* CAPABILITY IMAP4rev1 LITERAL+\r\nA1 OK done\r\n") == (
        b'A2 LOGIN "bob" "secret"\r\n', [])       # no ID capability: no ID


def test_backend_capability_failure():
    b = backend()
    run(b, b"* OK ready\r\n")
    assert run(b, b"A1 BAD what\r\n") == (
        b"", [BackendFailed("backend refused CAPABILITY: A1 BAD what")])


def test_backend_send_id_off_and_client_ua_sanitised():
    assert run(backend(send_id=False), GREETING) == (b'A1 LOGIN "bob" "secret"\r\n', [])
    sent, _ = run(backend(client_ua='Evil "UA"\r\n\\x\u00e9'), GREETING)
    assert b'"X-VIA" "Evil \\"UA\\"??\\\\x?,carbotui")\r\n' in sent
    assert sent.count(b"\r\n") == 2           # the ID line and the pipelined LOGIN


def test_backend_literal_fallback():
    # Non-ASCII password, no LITERAL+: synchronising literal, wait for "+".
    b = backend(password="p\u00e4ss", send_id=False)
    assert run(b, b"* OK [CAPABILITY IMAP4rev1] hi\r\n") == (b'A1 LOGIN "bob" {5}\r\n', [])
    assert run(b, b"+ OK\r\n") == (b"p\xc3\xa4ss\r\n", [])
    assert run(b, b"A1 OK Logged in\r\n") == (b"", [LoginOK(b"OK Logged in")])
    # Both literal, synchronising.
    b = backend(username="j\u00f6", password="p\u00e4", send_id=False)
    assert run(b, b"* OK [CAPABILITY IMAP4rev1] hi\r\n") == (b"A1 LOGIN {3}\r\n", [])
    assert run(b, b"+ OK\r\n") == (b"j\xc3\xb6 {3}\r\n", [])
    assert run(b, b"+ OK\r\n") == (b"p\xc3\xa4\r\n", [])
    # With LITERAL+ all goes at once.
    b = backend(username="j\u00f6", password="p\u00e4", send_id=False)
    assert run(b, GREETING) == (b"A1 LOGIN {3+}\r\nj\xc3\xb6 {3+}\r\np\xc3\xa4\r\n", [])
    # LITERAL- allows small non-synchronising literals only.
    b = backend(password="\u00e4", send_id=False)
    assert run(b, b"* OK [CAPABILITY IMAP4rev1 LITERAL-] hi\r\n") == (
        b'A1 LOGIN "bob" {2+}\r\n\xc3\xa4\r\n', [])
    # Quote and backslash are fine in a quoted string.
    b = backend(password='a"b\\c', send_id=False)
    assert run(b, GREETING) == (b'A1 LOGIN "bob" "a\\"b\\\\c"\r\n', [])


def test_backend_unexpected_continuation():
    b = backend(send_id=False)
    run(b, GREETING)
    assert run(b, b"+ OK\r\n")[1] == [
        BackendFailed("backend sent an unexpected continuation request")]


@pytest.mark.parametrize("reply, temporary", [
    (b"NO [AUTHENTICATIONFAILED] Authentication failed.", False),
    (b"NO Authentication failed.", False),
    (b"NO [UNAVAILABLE] Try later", True),
    (b"NO [SERVERBUG] Internal error", True),
    (b"NO [LIMIT] Too many connections", True),
    (b"NO [INUSE] Mailbox locked", True),
])
def test_backend_login_rejected(reply, temporary):
    b = backend(send_id=False)
    run(b, GREETING)
    assert run(b, b"A1 " + reply + b"\r\n") == (b"", [LoginRejected(reply, temporary=temporary)])


@pytest.mark.parametrize("data, reason", [
    (b"* BYE Too many connections\r\n",
     "unexpected greeting from backend: * BYE Too many connections"),
    (b"* PREAUTH welcome\r\n", "unexpected greeting from backend: * PREAUTH welcome"),
    (b"HTTP/1.1 400 Bad Request\r\n", "unexpected greeting from backend: HTTP/1.1 400 Bad Request"),
    (GREETING + b"* BYE shutting down\r\n", "backend closed the session: * BYE shutting down"),
    (GREETING + b"A1 BAD Error in IMAP command\r\n",
     "backend answered LOGIN with: BAD Error in IMAP command"),
    (GREETING + b"A7 OK what\r\n", "backend reply with unexpected tag: A7 OK what"),
    (b"* OK [CAPABILITY IMAP4rev1 LOGINDISABLED] hi\r\n",
     "backend refuses LOGIN on this connection (LOGINDISABLED): enable TLS to the backend "
     "or allow plaintext logins there"),
    (b"* OK " + b"x" * 70000, "backend sent a line longer than 64 KiB"),
    (b"* OK hi\r\n* CAPABILITY {99999}\r\n", "backend sent a literal larger than 64 KiB"),
])
def test_backend_failures(data, reason):
    sent, events = run(backend(send_id=False), data)
    assert events == [BackendFailed(reason)]


def test_backend_refuses_credentials_that_could_inject():
    for username, password in (("bob\r\nA9 LOGOUT", "pw"), ("bob", "pw\nx"), ("bob", "p\0w")):
        with pytest.raises(ValueError) as info:
            backend(username=username, password=password)
        assert "pw" not in str(info.value) and "p\0w" not in str(info.value)


def test_backend_repr_hides_credentials():
    assert "secret" not in repr(backend())


def test_backend_literal_fallback_byte_by_byte():
    data = b"* OK [CAPABILITY IMAP4rev1 ID] hi\r\nA1 OK ID done\r\n+ OK\r\nA2 OK Logged in\r\n"
    sent, events, rest = login_bytewise(lambda: backend(password="p\u00e4ss"), data)
    assert sent == ID_CMD + b'A2 LOGIN "bob" {5}\r\np\xc3\xa4ss\r\n'
    assert events == [LoginOK(b"OK Logged in")] and rest == b""


def test_authenticate_continuation_byte_by_byte():
    data = b"a AUTHENTICATE PLAIN\r\n" + plain("", "bob", "pw") + b"\r\nb NOOP\r\n"
    assert bytewise(client, data) == (b"+ \r\n", [Authenticate("bob", "pw", mechanism="PLAIN")])


def test_many_pipelined_commands_in_one_chunk():
    sent, events = run(client(), b"a NOOP\r\n" * 20000)
    assert sent == b"a OK NOOP completed.\r\n" * 20000 and events == []


# -- fast paths: the same result as the general code -------------------------------------
import re as _re  # noqa: E402

from hypothesis import given as _given, settings as _settings, strategies as _st  # noqa: E402

from carbotui.protocols import imap as _imap  # noqa: E402


def _tokens(text: bytes, pos: int, need_sep: bool, fast: bool):
    cmd = _imap._Command()
    cmd.need_sep = need_sep
    saved = _imap._ATOM_ARGS_RE
    if not fast:
        _imap._ATOM_ARGS_RE = _re.compile(rb"(?!)")        # never matches: the loop only
    try:
        _imap.ImapClientSide._tokenize(cmd, text, pos)
        return cmd.args, cmd.need_sep, None
    except _imap._SyntaxError as e:
        return cmd.args, None, str(e)
    finally:
        _imap._ATOM_ARGS_RE = saved


@_settings(max_examples=600, deadline=None)
@_given(_st.lists(_st.sampled_from([b" ", b"  ", b"user01@demo.test", b"demo-pass", b"INBOX",
                                    b'"q"', b"(", b")", b"{3}", b"\t", b"a\\b", b"x}", b"%*]",
                                    b"\x7f", b"\xc3\xa9", b"\x00"]), max_size=8),
        _st.integers(min_value=0, max_value=3), _st.booleans())
def test_atom_fast_path_tokenizes_as_the_loop(parts, pos, need_sep):
    text = b"a1 LOGIN" + b"".join(parts)
    pos = min(len(b"a1 LOGIN") + pos, len(text))
    assert _tokens(text, pos, need_sep, fast=True) == _tokens(text, pos, need_sep, fast=False)


def test_atom_fast_path_keeps_what_follows_a_trailing_space():
    args, need_sep, err = _tokens(b"a SELECT INBOX  ", 8, True, fast=True)
    assert args == [(_imap.ATOM, b"INBOX")] and need_sep is False and err is None


@pytest.mark.parametrize("text", ["127.0.0.1", "::1", 'a"b', "a\\b", "é/1", "x\x00y\n",
                                  "Thunder bird/115,carbotui", "x" * 300, ""])
def test_id_value_is_the_regex_then_quote(text):
    expected = _imap._quote(_imap._NOT_PRINTABLE_RE.sub("?", text[:200]).encode("ascii"))
    assert _imap._id_value(text) == expected
    assert _imap._id_value(text) == expected              # the second time from memory


def test_id_values_remembered_stay_bounded_and_right():
    names = [f"client\x01{i}" for i in range(3 * 1024)] + ["y" * 5000]
    for name in names:
        assert _imap._id_value(name) == _imap._quote(
            _imap._NOT_PRINTABLE_RE.sub("?", name[:200]).encode("ascii"))
        assert 0 < len(_imap._ID_VALUES) <= 1024
    assert "y" * 5000 not in _imap._ID_VALUES           # over 200 characters: not kept
