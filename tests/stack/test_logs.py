"""access.log and sessions.log of the running workers (var/log/), and SIGUSR1 making every
worker reopen them after a logrotate-style move, and auditwatch survive it."""
from __future__ import annotations

import base64
import imaplib
import os
import poplib
import re
import shutil
import socket
import uuid

from .conftest import (HOST, PASSWORD, PORTS, SETTINGS, WEB_PORTS, process_pid, supervisorctl,
                       tls_context, wait_for)

ACCESS = re.compile(
    r'^(?P<remote>\S+):(?P<port>\d+) - (?P<user>\S+) \[[^\]]+\] "(?P<request>[^"]*)" '
    r'(?P<status>\d{3}) (?P<bytes>\d+) "(?P<referer>[^"]*)" "(?P<agent>[^"]*)" '
    r'"(?P<upstream>[^"]*)" "(?P<server>[^"]*)"$')
ACCESS_LOG, SESSIONS_LOG = SETTINGS.access_log, SETTINGS.sessions_log


def size(path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def lines_with(path, needle: str, since: int = 0) -> list[str]:
    """The lines of path holding needle, from byte offset since (a client port is reused
    across runs: a session's line is looked for only after the session began)."""
    try:
        with open(path, "rb") as f:
            f.seek(since)
            data = f.read()
    except FileNotFoundError:
        return []
    return [line.decode() for line in data.split(b"\n") if needle.encode() in line]


def one_line(path, needle: str, timeout: float = 10.0, since: int = 0) -> str:
    [line] = wait_for(lambda: lines_with(path, needle, since), timeout,
                      what=f"{needle} in {path.name}")
    return line


def https_request(target: str, headers: dict[str, str]) -> bytes:
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    with socket.create_connection((HOST, WEB_PORTS["https"]), timeout=10) as raw:
        with tls_context().wrap_socket(raw, server_hostname="mail.demo.test") as tls:
            tls.sendall(f"GET {target} HTTP/1.1\r\nHost: mail.demo.test\r\n{head}"
                        "Connection: close\r\n\r\n".encode())
            data = b""
            while chunk := tls.recv(65536):
                data += chunk
    return data


def test_an_access_line_has_no_token_cookie_or_password():
    marker = uuid.uuid4().hex
    token, cookie = f"0_TOKEN{marker[:8]}", f"0_COOKIE{marker[:8]}"
    basic = base64.b64encode(f"user05@demo.test:PW{marker[:8]}".encode()).decode()
    answer = https_request(f"/mail?probe={marker}&zauthtoken={token}&authToken={token}", {
        "Cookie": f"ZM_AUTH_TOKEN={cookie}; JSESSIONID={cookie}",
        "Authorization": f"Basic {basic}", "User-Agent": 'probe "agent"\\x',
        "Referer": f"https://mail.demo.test/?zauthtoken={token}"})
    status = int(answer[9:12])
    line = one_line(ACCESS_LOG, marker)
    for leak in (token, cookie, f"PW{marker[:8]}", basic):
        assert leak not in line, leak
    m = ACCESS.match(line)
    assert m, line
    assert m["remote"] == "127.0.0.1" and m["user"] == "user05@demo.test"
    assert m["request"] == (f"GET https://mail.demo.test/mail?probe={marker}&zauthtoken=-"
                            f"&authToken=- HTTP/1.1")
    assert int(m["status"]) == status and int(m["bytes"]) == len(answer)
    assert m["referer"] == "https://mail.demo.test/?zauthtoken=-"
    assert m["agent"] == "probe \\x22agent\\x22\\x5Cx"
    assert re.fullmatch(r"127\.0\.0\.[12]:8080", m["upstream"]), m["upstream"]
    assert m["server"] == f"127.0.0.1:{WEB_PORTS['https']}"


def test_a_request_the_proxy_refuses_is_logged_without_an_upstream():
    marker = uuid.uuid4().hex
    with socket.create_connection((HOST, WEB_PORTS["https"]), timeout=10) as raw:
        with tls_context().wrap_socket(raw, server_hostname="mail.demo.test") as tls:
            tls.sendall(f"GET /{marker} HTTP/1.1\r\nHost: evil\"host\r\n\r\n".encode())
            answer = tls.recv(65536)
    assert answer.startswith(b"HTTP/1.1 400")
    m = ACCESS.match(one_line(ACCESS_LOG, marker))
    assert m["status"] == "400" and m["upstream"] == "-"
    assert m["request"] == f"GET https://evil\\x22host/{marker} HTTP/1.1"


def session_line(account: str, port: int, since: int) -> dict:
    line = one_line(SESSIONS_LOG, f" client=127.0.0.1:{port} ", since=since)
    stamp, *pairs = line.split(" ")
    fields = dict(p.split("=", 1) for p in pairs)
    assert fields["account"] == account, line
    return fields


def test_a_sessions_line_after_logout():
    since = size(SESSIONS_LOG)
    conn = imaplib.IMAP4_SSL(HOST, PORTS["imaps"], ssl_context=tls_context(), timeout=15)
    port = conn.sock.getsockname()[1]
    conn.login("user06@demo.test", PASSWORD)
    conn.select("INBOX")
    conn.logout()
    f = session_line("user06@demo.test", port, since)
    assert (f["protocol"], f["server"], f["reason"]) == ("imaps", "mbox2", "logout")
    assert int(f["bytes_in"]) > 30 and int(f["bytes_out"]) > 100     # SELECT and its answer
    assert 0 <= float(f["duration"]) < 15 and f["worker"].startswith("proxy_")


def test_a_pop3_quit_and_a_client_that_just_goes():
    since = size(SESSIONS_LOG)
    conn = poplib.POP3_SSL(HOST, PORTS["pop3s"], context=tls_context(), timeout=15)
    port = conn.sock.getsockname()[1]
    conn.user("user05@demo.test")
    conn.pass_(PASSWORD)
    conn.stat()
    conn.quit()
    f = session_line("user05@demo.test", port, since)
    assert (f["protocol"], f["server"], f["reason"]) == ("pop3s", "mbox1", "logout")
    since = size(SESSIONS_LOG)                       # loopback may give the same port again
    conn = imaplib.IMAP4_SSL(HOST, PORTS["imaps"], ssl_context=tls_context(), timeout=15)
    port = conn.sock.getsockname()[1]
    conn.login("user05@demo.test", PASSWORD)
    conn.shutdown()                                  # no LOGOUT: the client just closes
    f = session_line("user05@demo.test", port, since)
    assert (f["server"], f["reason"]) == ("mbox1", "client_closed")


def _rotate(path) -> os.PathLike:
    """What logrotate does with `create 0640 carbotui carbotui`: move, then a new file."""
    moved = path.with_name(path.name + ".1")
    st = os.stat(path)
    os.replace(path, moved)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
    os.fchown(fd, st.st_uid, st.st_gid)
    os.close(fd)
    return moved


REOPENED = "log files reopened (SIGUSR1)"


def supervised_workers() -> list[str]:
    return [line.split()[0].partition(":")[2]
            for line in supervisorctl("status", "proxy:*").splitlines() if "RUNNING" in line]


def reopens(worker: str) -> int:
    """How often the worker said it reopened its logs (its supervisord log)."""
    return (SETTINGS.log_dir / f"{worker}.log").read_text(errors="replace").count(REOPENED)


def test_sigusr1_reopens_access_and_sessions_log():
    workers = supervised_workers()
    moved = {path: _rotate(path) for path in (ACCESS_LOG, SESSIONS_LOG)}
    try:
        # before the signal the workers still append to the moved files
        first = uuid.uuid4().hex
        https_request(f"/health?probe={first}", {})
        assert one_line(moved[ACCESS_LOG], first) and not lines_with(ACCESS_LOG, first)
        before = {w: reopens(w) for w in workers}
        supervisorctl("signal", "USR1", "proxy:*")
        wait_for(lambda: all(reopens(w) > n for w, n in before.items()), 10,
                 what=f"every worker ({', '.join(workers)}) saying it reopened its logs")
        for _ in range(6):                       # whichever worker answers: the new file
            probe = uuid.uuid4().hex
            https_request(f"/health?probe={probe}", {})
            assert one_line(ACCESS_LOG, probe)
            assert not lines_with(moved[ACCESS_LOG], probe)
        # the moved file holds the run's earlier sessions, and a client port is reused
        # across them: only what it gains from now on counts
        since, since_moved = size(SESSIONS_LOG), size(moved[SESSIONS_LOG])
        conn = imaplib.IMAP4_SSL(HOST, PORTS["imaps"], ssl_context=tls_context(), timeout=15)
        port = conn.sock.getsockname()[1]
        conn.login("user06@demo.test", PASSWORD)
        conn.logout()
        assert one_line(SESSIONS_LOG, f" client=127.0.0.1:{port} ", since=since)
        assert not lines_with(moved[SESSIONS_LOG], f" client=127.0.0.1:{port} ",
                              since=since_moved)
    finally:
        for path, old in moved.items():          # the moved lines back in front of the new
            with open(old, "ab") as f, open(path, "rb") as new:
                shutil.copyfileobj(new, f)
            st = os.stat(path)
            os.chown(old, st.st_uid, st.st_gid)
            os.replace(old, path)
        supervisorctl("signal", "USR1", "proxy:*")


def test_auditwatch_takes_sigusr1():
    pid = process_pid("auditwatch")
    assert pid
    supervisorctl("signal", "USR1", "auditwatch")
    log = SETTINGS.log_dir / "auditwatch.log"
    wait_for(lambda: "log files reopened (SIGUSR1)" in log.read_text(errors="replace")[-4096:],
             10, what="auditwatch's reopen line")
    assert process_pid("auditwatch") == pid          # handled, not the default (exit)
