"""access.log and sessions.log lines (carbotui/core/logformat.py), their writer's reopen
(carbotui/core/audit.AuditLog) and the worker's one call per request and per ended session
(carbotui/proxy/logs.py): hostile input in every client field cannot break or forge a
line, no token, cookie or password reaches one, and a line stays one atomic write."""
from __future__ import annotations

import base64
import os
import re
from types import SimpleNamespace

import pytest

from carbotui.core import logformat as lf
from carbotui.core.audit import AuditLog
from carbotui.protocols import http11
from carbotui.proxy.logs import NodeLogs, status_class
from carbotui.proxy.mail import Pop3Quit
from carbotui.proxy.stats import Stats

# Carbonio's nginx.access.log fields, in order (what fail2ban filters and admins' greps use)
ACCESS = re.compile(
    r'^(?P<remote>\S+):(?P<port>\d+) - (?P<user>\S+) \[(?P<time>\d\d/[A-Z][a-z]{2}/\d{4}:'
    r'\d\d:\d\d:\d\d [+-]\d{4})\] "(?P<request>[^"]*)" (?P<status>\d{3}) (?P<bytes>\d+) '
    r'"(?P<referer>[^"]*)" "(?P<agent>[^"]*)" "(?P<upstream>[^"]*)" "(?P<server>[^"]*)"\n\Z')
HOSTILE = [b'a"b', b"a\\b", b"x\r\nINJECTED 127.0.0.1:1 - - [", b"\x00\x01\x7f", b"\xff\xfe\xc3",
           "über".encode(), b"\xe2\x80\xa8sep", b"%0d%0a", b" spaced  out "]


def access(**over) -> str:
    fields = dict(timestamp=1764592803.5, client_ip="192.0.2.7", client_port=50412,
                  remote_user=b"", method=b"GET", scheme="https", host=b"mail.demo.test",
                  target=b"/mail", version=b"1.1", status=200, bytes_sent=1432, referer=b"",
                  user_agent=b"curl/8", upstream="127.0.0.2:8080", server_ip="127.0.0.1",
                  server_port=10443)
    fields.update(over)
    return lf.access_line(**fields)


def test_an_access_line_has_carbonios_field_order():
    line = access(remote_user=b"bob", referer=b"https://mail.demo.test/", target=b"/mail?a=1")
    m = ACCESS.match(line)
    assert m, line
    assert m["remote"] == "192.0.2.7" and m["port"] == "50412" and m["user"] == "bob"
    assert m["request"] == "GET https://mail.demo.test/mail?a=1 HTTP/1.1"
    assert (m["status"], m["bytes"], m["referer"], m["agent"]) == \
        ("200", "1432", "https://mail.demo.test/", "curl/8")
    assert (m["upstream"], m["server"]) == ("127.0.0.2:8080", "127.0.0.1:10443")
    # nginx writes "-" for what is empty
    m = ACCESS.match(access(upstream="", user_agent=b""))
    assert (m["user"], m["referer"], m["agent"], m["upstream"]) == ("-", "-", "-", "-")
    # no request parsed at all (a 400 before a whole head)
    assert ACCESS.match(access(method=None, status=400))["request"] == "-"
    # IPv6 client and server addresses in brackets
    m = ACCESS.match(access(client_ip="2001:db8::1", server_ip="::1"))
    assert m["remote"] == "[2001:db8::1]" and m["server"] == "[::1]:10443"


@pytest.mark.parametrize("evil", HOSTILE, ids=range(len(HOSTILE)))
@pytest.mark.parametrize("field", ["host", "target", "referer", "user_agent", "remote_user",
                                   "method"])
def test_hostile_input_in_any_client_field_stays_inside_its_field(field, evil):
    value = (b"/" + evil) if field == "target" else evil
    line = access(**{field: value})
    assert line.count("\n") == 1 and line.endswith("\n")
    assert ACCESS.match(line), line                      # every field where it belongs
    body = line[:-1]
    assert all(0x20 <= ord(c) <= 0x7e for c in body), body   # printable ASCII only
    assert "INJECTED" not in body or "\\x0D\\x0A" in body


def test_escaping_is_nginxs_and_bounded():
    assert lf.escape(b'a"b\\c\r\n\xff\x00', 100) == "a\\x22b\\x5Cc\\x0D\\x0A\\xFF\\x00"
    assert lf.escape(b"", 10) == "-"
    assert lf.escape(b"x" * 100, 20) == "x" * 17 + "..."
    for n in range(5, 40):                       # a cut never halves an \xHH escape
        text = lf.escape(b"\xff" * 100, n)
        assert len(text) <= n and text.endswith("...")
        assert re.fullmatch(r"(\\x[0-9A-F]{2})*\.\.\.", text), text


def test_a_line_of_the_largest_fields_stays_below_pipe_buf():
    huge = b'\xff"\\' * 20000
    line = access(host=huge, target=b"/" + huge, referer=huge, user_agent=huge,
                  remote_user=huge, method=huge, version=huge,
                  client_ip="ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255",
                  server_ip="ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255",
                  upstream="[ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255]:65535")
    assert len(line.encode()) < lf.PIPE_BUF
    assert ACCESS.match(line)


@pytest.mark.parametrize("target,logged", [
    (b"/mail?zauthtoken=0_abc123&x=1", b"/mail?zauthtoken=-&x=1"),
    (b"/service/preauth?account=a&authToken=T0K&expires=0",
     b"/service/preauth?account=a&authToken=-&expires=0"),
    (b"/x?ZAUTHTOKEN=1&%7Aauthtoken=2&auth_token=3&token=4",
     b"/x?ZAUTHTOKEN=-&%7Aauthtoken=-&auth_token=-&token=-"),
    (b"/login?username=u&password=p&pw=1", b"/login?username=u&password=-&pw=-"),
    (b"/mail;jsessionid=ABC/inbox?x=1", b"/mail;jsessionid=-/inbox?x=1"),
    (b"https://user:secret@mail.demo.test/a?b=1#frag", b"/a?b=1"),
    (b"/plain/path?x=1&y=2", b"/plain/path?x=1&y=2"),
    (b"/a?zauthtoken", b"/a?zauthtoken"),           # a name without a value carries nothing
    (b"/login?pw=1&key=2&keyword=3", b"/login?pw=-&key=-&keyword=3"),
    (b"/x;sid=1?code=2", b"/x;sid=-?code=-"),
    (b"/x?%70w=1", b"/x?%70w=-"),                  # percent-encoding hides no name
])
def test_secret_values_leave_the_target(target, logged):
    assert lf.clean_target(target)[1] == logged


def test_an_absolute_target_names_its_host_without_userinfo():
    line = access(target=b"https://user:secret@Other.Test:8443/a?zauthtoken=x")
    assert ACCESS.match(line)["request"] == "GET https://other.test/a?zauthtoken=- HTTP/1.1"
    assert "secret" not in line and "user" not in line


def test_the_host_is_nginxs_host_lower_case_without_port():
    for host, logged in ((b"Mail.Demo.Test:10443", "mail.demo.test"), (b"[::1]:443", "[::1]"),
                         (b"127.0.0.1", "127.0.0.1")):
        assert ACCESS.match(access(host=host))["request"] == f"GET https://{logged}/mail HTTP/1.1"


def test_the_referer_is_cleaned_too():
    m = ACCESS.match(access(referer=b"https://u:pw@mail.demo.test/?zauthtoken=LEAK&folder=1"))
    assert m["referer"] == "https://mail.demo.test/?zauthtoken=-&folder=1"


def test_remote_user_is_the_basic_user_name_never_the_password():
    basic = b"Basic " + base64.b64encode(b"bob@demo.test:hunter2")
    assert lf.basic_user(basic) == b"bob@demo.test"
    for other in (b"Bearer abc", b"Basic !!!", b"Basic " + base64.b64encode(b"nocolon"),
                  None, b""):
        assert lf.basic_user(other) == b""


def test_a_session_line_is_key_value_and_escaped():
    line = lf.session_line(timestamp=1764592803.512, protocol="imaps", client_ip="192.0.2.7",
                           client_port=50418, account="user01@demo.test", server="mbox1",
                           duration=0.0844, bytes_in=52, bytes_out=1169, reason="logout",
                           worker="proxy_01", session=10000000007)
    stamp, _, rest = line.rstrip("\n").partition(" ")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.512[+-]\d\d:\d\d", stamp)
    assert dict(p.split("=", 1) for p in rest.split(" ")) == {
        "protocol": "imaps", "client": "192.0.2.7:50418", "account": "user01@demo.test",
        "server": "mbox1", "duration": "0.084", "bytes_in": "52", "bytes_out": "1169",
        "reason": "logout", "worker": "proxy_01", "session": "10000000007"}
    for evil in HOSTILE:
        text = evil.decode("utf-8", "surrogateescape")
        line = lf.session_line(timestamp=0, protocol="imap", client_ip="::1", client_port=1,
                               account=text + " reason=forged", server="mbox1", duration=1,
                               bytes_in=0, bytes_out=0, reason="logout", worker="proxy_00",
                               session=1)
        assert line.count("\n") == 1 and all(0x20 <= ord(c) <= 0x7e for c in line[:-1])
        pairs = dict(p.split("=", 1) for p in line.rstrip("\n").split(" ")[1:])
        assert pairs["reason"] == "logout" and pairs["server"] == "mbox1", line
        assert pairs["account"].startswith('"') and pairs["account"].endswith('"')
    assert lf.value("x" * 1000).endswith('..."') and len(lf.value("x" * 1000)) <= 340


@pytest.mark.parametrize("reason,logged_out,word", [
    ("client closed", False, "client_closed"), ("client closed", True, "logout"),
    ("mailbox server closed", True, "logout"), ("mailbox server closed", False, "server_closed"),
    ("idle timeout", True, "idle_timeout"), ("worker stopping", False, "shutdown"),
    ("kicked by an administrator", False, "kicked"), ("something new", False, "other"),
])
def test_why_a_session_ended(reason, logged_out, word):
    assert lf.end_reason(reason, logged_out) == word


def test_pop3_quit_is_seen_on_the_clients_last_line():
    watch = Pop3Quit()
    for chunk, seen in ((b"STAT\r\n", False), (b"RETR 1\r\nquit\r\n", True),
                        (b"NOOP\r\n", False), (b"QUIT\n", True), (b"X QUIT\r\n", False)):
        watch.from_client(chunk)
        assert watch.quit is seen, chunk
    assert watch.may_add_line() is False                   # POP3 gets no farewell line


# --- the writer --------------------------------------------------------------------------

def test_reopen_follows_a_rotated_file(tmp_path):
    path = tmp_path / "access.log"
    log = AuditLog(path)
    log.write_line("one\n")
    os.rename(path, tmp_path / "access.log.1")
    log.write_line("two\n")                       # before reopen: still the moved file
    path.write_text("")                           # logrotate's `create`
    log.reopen()
    log.write_line("three\n")
    assert (tmp_path / "access.log.1").read_text() == "one\ntwo\n"
    assert path.read_text() == "three\n"


def test_a_log_that_does_not_follow_moves_only_on_reopen(tmp_path):
    path = tmp_path / "sessions.log"
    log = AuditLog(path, follow=False)
    log.write_line("one\n")
    os.rename(path, tmp_path / "sessions.log.1")
    path.write_text("")
    log._checked -= 3600                          # long after: still no look at the path
    log.write_line("two\n")
    assert path.read_text() == ""
    log.reopen()
    log.write_line("three\n")
    assert (tmp_path / "sessions.log.1").read_text() == "one\ntwo\n"
    assert path.read_text() == "three\n"
    follows = AuditLog(tmp_path / "audit.log")    # audit.log: notices by itself
    follows.write_line("a\n")
    os.rename(tmp_path / "audit.log", tmp_path / "audit.log.1")
    (tmp_path / "audit.log").write_text("")
    follows._checked -= 2 * follows.CHECK_EVERY
    follows.write_line("b\n")
    assert (tmp_path / "audit.log").read_text() == "b\n"


def test_a_file_that_cannot_be_opened_never_raises(tmp_path, capsys):
    path = tmp_path / "access.log"
    log = AuditLog(path)
    log.write_line("kept\n")
    os.rename(path, tmp_path / "access.log.1")
    path.mkdir()                                  # whatever is there cannot be appended to
    log.reopen()                                  # keeps the old descriptor
    log.write_line("still here\n")
    assert (tmp_path / "access.log.1").read_text() == "kept\nstill here\n"
    assert "cannot open" in capsys.readouterr().err
    fresh = AuditLog(path)
    fresh.write_line("nowhere\n")                 # no descriptor at all: dropped, counted
    assert (fresh.dropped, fresh.written) == (1, 0)


# --- the worker's calls ------------------------------------------------------------------

def request(raw: bytes) -> http11.Request:
    [req, *_] = http11.RequestParser().feed(raw)
    assert isinstance(req, http11.Request)
    return req


def node_logs(tmp_path) -> tuple[NodeLogs, SimpleNamespace]:
    settings = SimpleNamespace(access_log=tmp_path / "access.log",
                               sessions_log=tmp_path / "sessions.log")
    services = SimpleNamespace(settings=settings, stats=Stats(), audit=None, name="proxy_02")
    return NodeLogs(services), services


def test_a_web_request_line_has_no_cookie_token_or_password(tmp_path):
    logs, services = node_logs(tmp_path)
    session = SimpleNamespace(kind="https", scheme="https", client_ip="192.0.2.7",
                              client_port=50412, local_ip="127.0.0.1", local_port=10443)
    upstream = SimpleNamespace(name="mbox2", address="127.0.0.2", port=8080)
    secret = base64.b64encode(b"bob:hunter2")
    logs.web_request(session, request(
        b"GET /mail?zauthtoken=0_SECRETTOKEN&view=1 HTTP/1.1\r\nHost: mail.demo.test\r\n"
        b"Cookie: ZM_AUTH_TOKEN=0_COOKIEVALUE; JSESSIONID=SESSIONCOOKIE\r\n"
        b"Authorization: Basic " + secret + b"\r\nUser-Agent: Thunderbird/115\r\n\r\n"),
        200, 1432, upstream)
    logs.web_request(session, None, 400, 260, None)            # garbage: no request
    logs.web_request(session, request(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n"), 0, 0, None)
    text = (tmp_path / "access.log").read_text()
    for leak in ("SECRETTOKEN", "COOKIEVALUE", "SESSIONCOOKIE", "hunter2", secret.decode()):
        assert leak not in text
    first, second, third = [ACCESS.match(line + "\n") for line in text.splitlines()]
    assert first["user"] == "bob" and first["upstream"] == "127.0.0.2:8080"
    assert first["request"] == "GET https://mail.demo.test/mail?zauthtoken=-&view=1 HTTP/1.1"
    assert second["request"] == "-" and second["status"] == "400"
    assert third["status"] == "499"              # nothing answered: the client went away
    assert services.stats.web_responses == {("https", "mbox2", "2xx"): 1,
                                            ("https", "-", "4xx"): 2}


def test_an_ended_mail_session_line_and_count(tmp_path):
    logs, services = node_logs(tmp_path)
    session = SimpleNamespace(kind="pop3s", client_ip="192.0.2.8", client_port=40000,
                              account="user02@demo.test", server="mbox2", started=0.0,
                              bytes_in=14, bytes_out=486, id=20000000003)
    logs.mail_session_ended(session, "mailbox server closed", True)
    line = (tmp_path / "sessions.log").read_text()
    assert " protocol=pop3s client=192.0.2.8:40000 account=user02@demo.test server=mbox2 " \
        in line
    assert " bytes_in=14 bytes_out=486 reason=logout worker=proxy_02 session=20000000003\n" \
        in line
    assert services.stats.sessions_ended == {("pop3s", "logout"): 1}


def test_status_classes():
    assert [status_class(s) for s in (101, 200, 302, 404, 503, 499, 0, 700)] == \
        ["1xx", "2xx", "3xx", "4xx", "5xx", "4xx", "other", "other"]


def test_known_bare_values_are_judged_as_the_first_time_and_bounded():
    texts = ["imap", "user01@demo.test", "-", "a b", "x" * 330, "x" * 331, "[::1]", "é",
             "ok\n", "", "mbox1.demo.test"]
    first = [lf.value(t, 32) for t in texts]
    assert [lf.value(t, 32) for t in texts] == first        # the second time: from the set
    assert first[0] == "imap" and first[3] == r'"a\x20b"' and first[5].startswith('"')
    assert first[9] == "-" and "" not in lf._KNOWN_BARE and "a b" not in lf._KNOWN_BARE
    for i in range(lf.KNOWN_BARE_MAX + 10):
        lf.value(f"user{i}@demo.test")
    assert len(lf._KNOWN_BARE) <= lf.KNOWN_BARE_MAX
    # session_line's inlined lookups: the same line as value() field by field
    for client in ("192.0.2.7", "::1", ""):
        line = lf.session_line(timestamp=0, protocol="imap", client_ip=client, client_port=1,
                               account="a b", server="mbox1", duration=1, bytes_in=0,
                               bytes_out=0, reason="logout", worker="proxy_00", session=1)
        addr = lf.value(f"[{client}]" if ":" in client else (client or "-"), 60)
        assert f" client={addr}:1 account={lf.value('a b')} server=mbox1 " in line
