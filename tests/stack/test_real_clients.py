"""Real mail clients from Debian's packages, run through the proxy as their users run them.

isync (mbsync) syncs folders both ways over IMAPS and IMAP+STARTTLS, fetchmail downloads over
POP3S, POP3+STLS, IMAP+STARTTLS and IMAPS, getmail6 retrieves over IMAPS and POP3S, and neomutt
copies a mailbox to a local Maildir over IMAPS, IMAP+STARTTLS and POP3S (its interface needs a
terminal: it gets a pseudo-terminal, nobody types). scripts/install-deps.sh installs them all;
a missing one fails here, it is not skipped.

Every message is seeded and checked straight at the mailbox server (Dovecot, no proxy), so the
only logins through the proxy are the client's own, and the audit log must show exactly those.
What a client keeps on disk must equal what the server stores, byte for byte, after the changes
the client itself makes as documented (LF line endings, the headers it adds).

Accounts: user11 and user13 (mbox1), user12 and user14 (mbox2). Each test works in folders of
its own, or removes from INBOX exactly the messages it added (other tests expect each INBOX to
start with its welcome message).
"""
from __future__ import annotations

import base64
import contextlib
import fcntl
import imaplib
import os
import pty
import pwd
import random
import re
import select
import shutil
import struct
import subprocess
import sys
import tempfile
import termios
import time
import uuid
from pathlib import Path

import pytest

from tests.stack.conftest import CA, PASSWORD, PORTS, AuditTail

pytestmark = pytest.mark.usefixtures("proxy_up")

# The proxy's certificate names localhost (and 127.0.0.1); mbsync and getmail check the name.
PROXY = "localhost"
DOVECOT = {"mbox1": "127.0.0.1", "mbox2": "127.0.0.2"}   # each demo Dovecot's IMAP on 7143
SERVER_NAME = {"imap": "ImapServer", "imaps": "ImapSSLServer",
               "pop3": "Pop3Server", "pop3s": "Pop3SSLServer"}
CLIENT_TIMEOUT = 30


def mailbox_server(user: str) -> str:
    return "mbox1" if int(user[4:6]) % 2 else "mbox2"


# --- the messages -------------------------------------------------------------------------

def make_messages(tag: str) -> list[bytes]:
    """Three messages as a server stores them (CRLF): 8-bit text with the lines POP3 must
    dot-stuff and mbox-style clients must not touch, a 300 KB attachment, and a bare one."""
    rnd = random.Random(tag)
    text = ("Grüße aus carbotui – ünïcødé, 8-bit.\r\n"
            ".a line that starts with a dot\r\n"
            "..and one with two\r\n"
            ".\r\n"
            "From the start of a line\r\n"
            "trailing spaces   \r\n"
            + "x" * 990 + "\r\n"
            "\r\n"
            "last line\r\n").encode()
    blob = base64.encodebytes(rnd.randbytes(220_000)).replace(b"\n", b"\r\n")
    bodies = [
        (b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n", text),
        (b"Content-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n", blob),
        (b"", b"short\r\n"),
    ]
    out = []
    for i, (headers, body) in enumerate(bodies, 1):
        out.append(b"From: Sender <sender@demo.test>\r\nTo: someone@demo.test\r\n"
                   b"Subject: real clients %s #%d\r\n" % (tag.encode(), i)
                   + b"Date: Tue, 01 Dec 2026 10:00:0%d +0000\r\n" % i
                   + b"Message-ID: <%s.%d@real-clients.test>\r\n" % (tag.encode(), i)
                   + b"MIME-Version: 1.0\r\n" + headers + b"\r\n" + body)
    return out


def as_lf(message: bytes) -> bytes:
    return message.replace(b"\r\n", b"\n")


def without_headers(message: bytes, *names: str) -> bytes:
    """`message` less the header fields `names` (continuation lines included): what a
    client added, taken off again. The body is never touched."""
    head, sep, body = message.partition(b"\n\n")
    drop = {n.lower().encode() for n in names}
    kept, dropping = [], False
    for line in head.split(b"\n"):
        if line[:1] in (b" ", b"\t"):
            if not dropping:
                kept.append(line)
            continue
        dropping = line.split(b":", 1)[0].strip().lower() in drop
        if not dropping:
            kept.append(line)
    return b"\n".join(kept) + sep + body


def message_id(message: bytes) -> bytes:
    return re.search(rb"\nMessage-ID: (<[^>]+>)", message).group(1)


def maildir_messages(path: Path) -> list[Path]:
    return sorted(p for sub in ("new", "cur") if (path / sub).is_dir()
                  for p in (path / sub).iterdir() if p.is_file())


# --- the mailbox server, without the proxy ------------------------------------------------

@contextlib.contextmanager
def dovecot(user: str):
    conn = imaplib.IMAP4(DOVECOT[mailbox_server(user)], 7143, timeout=15)
    conn.login(user, PASSWORD)
    try:
        yield conn
    finally:
        conn.logout()


def server_messages(user: str, folder: str) -> list[tuple[int, set[str], bytes]]:
    """(uid, flags, bytes) of every message in `folder`, straight from Dovecot, by UID."""
    with dovecot(user) as c:
        typ, _ = c.select(f'"{folder}"', readonly=True)
        assert typ == "OK", folder
        typ, data = c.uid("FETCH", "1:*", "(UID FLAGS BODY.PEEK[])")
        assert typ == "OK"
    out = []
    for item in data:
        if not isinstance(item, tuple):
            continue
        meta = item[0].decode()
        uid = int(re.search(r"UID (\d+)", meta).group(1))
        # \Recent belongs to whichever session saw the message first: not a stored flag
        flags = set(re.search(r"FLAGS \(([^)]*)\)", meta).group(1).split()) - {r"\Recent"}
        out.append((uid, flags, item[1]))
    return sorted(out)


@pytest.fixture
def folder():
    """make(user, messages, flags) -> a new folder on the user's mailbox server holding
    `messages`; removed at the end."""
    made = []

    def make(user: str, messages=(), flags: dict[int, str] | None = None) -> str:
        name = f"rc-{uuid.uuid4().hex[:12]}"
        with dovecot(user) as c:
            assert c.create(name)[0] == "OK"
            made.append((user, name))
            for i, m in enumerate(messages):
                flag = (flags or {}).get(i)
                assert c.append(name, f"({flag})" if flag else None, None, m)[0] == "OK"
        return name
    yield make
    for user, name in made:
        with dovecot(user) as c:
            c.delete(name)


@pytest.fixture
def inbox():
    """seed(user, messages): append to the user's INBOX; exactly those are expunged at the end
    (by Message-ID and UID, so nothing another test put there is touched)."""
    seeded: list[tuple[str, bytes]] = []

    def seed(user: str, messages) -> None:
        with dovecot(user) as c:
            for m in messages:
                assert c.append("INBOX", None, None, m)[0] == "OK"
                seeded.append((user, message_id(m)))
    yield seed
    for user in {u for u, _ in seeded}:
        with dovecot(user) as c:
            c.select("INBOX")
            uids = []
            for u, msgid in seeded:
                if u == user:
                    typ, data = c.uid("SEARCH", "HEADER", "Message-ID", msgid.decode())
                    uids += data[0].decode().split()
            if uids:
                c.uid("STORE", ",".join(uids), "+FLAGS.SILENT", r"(\Deleted)")
                c.uid("EXPUNGE", ",".join(uids))


def logins(audit: AuditTail, user: str, kind: str, count: int) -> list[str]:
    """The audit log shows exactly `count` successful logins of `user` on the `kind` port
    since the test began, and no failed one."""
    proto = kind.rstrip("s")
    lines = audit.wait(f"account={user}; protocol={proto};", count=count)
    lines = [l for l in audit.lines() if f"account={user}; protocol={proto};" in l]
    assert len(lines) == count, lines
    for line in lines:
        assert " INFO  [" in line and f"[{SERVER_NAME[kind]}-" in line, line
        assert "error=" not in line and ";oip=127.0.0.1;" in line, line
    return lines


def run(cmd: list[str], env: dict | None = None, ok=(0,), **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=CLIENT_TIMEOUT,
                          stdin=subprocess.DEVNULL, env=env, **kw)
    assert proc.returncode in ok, (f"{cmd[0]} exited {proc.returncode}\n"
                                   f"--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}")
    return proc


def client_env(home: Path) -> dict:
    """A user's environment, in a home of the test's own (clients read ~/.something)."""
    return {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(home), "LANG": "C.UTF-8",
            "USER": pwd.getpwuid(os.geteuid()).pw_name}


def private(path: Path, text: str) -> Path:
    """A config file with a password in it: 0600 (fetchmail insists on it)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    return path


# --- isync (mbsync) -----------------------------------------------------------------------

def mbsyncrc(tmp: Path, user: str, kind: str, folder: str, sync: str) -> Path:
    passfile = private(tmp / "password", PASSWORD + "\n")
    (tmp / "mail").mkdir(exist_ok=True)        # mbsync wants its Maildir root to exist
    return private(tmp / "mbsyncrc", f"""\
IMAPAccount proxy
Host {PROXY}
Port {PORTS[kind]}
User {user}
PassCmd "cat {passfile}"
SSLType {"IMAPS" if kind == "imaps" else "STARTTLS"}
CertificateFile {CA}
SystemCertificates no
# the IMAPS run logs in with AUTHENTICATE PLAIN (SASL-IR), the STARTTLS one with LOGIN
AuthMechs {"PLAIN" if kind == "imaps" else "LOGIN"}

IMAPStore far
Account proxy

MaildirStore near
Path {tmp}/mail/
Inbox {tmp}/mail/INBOX
SubFolders Verbatim

Channel proxy
Far :far:
Near :near:
Patterns {folder}
Create Near
Expunge None
Sync {sync}
SyncState *
""")


def mbsync(rc: Path, tmp: Path) -> subprocess.CompletedProcess:
    return run(["mbsync", "-c", str(rc), "-V", "proxy"], env=client_env(tmp))


MBSYNC_USER = {"imaps": "user12@demo.test", "imap": "user11@demo.test"}


@pytest.mark.parametrize("kind", ["imaps", "imap"])
def test_mbsync_pulls_a_folder_into_a_maildir(kind, tmp_path, folder, audit):
    user = MBSYNC_USER[kind]
    stored = make_messages(f"mbsync-pull-{kind}")
    name = folder(user, stored, flags={0: r"\Seen", 1: r"\Flagged"})
    out = mbsync(mbsyncrc(tmp_path, user, kind, name, "Pull"), tmp_path)
    assert f"(127.0.0.1:{PORTS[kind]})" in out.stdout and "Connection is now encrypted" in out.stdout
    assert re.search(r"far side: 3 messages", out.stdout), out.stdout

    local = maildir_messages(tmp_path / "mail" / name)
    assert len(local) == 3
    by_id = {message_id(p.read_bytes()): p for p in local}
    for i, message in enumerate(stored):
        path = by_id[message_id(message)]
        # mbsync stores LF line endings and adds its X-TUID header; nothing else changes
        assert without_headers(path.read_bytes(), "X-TUID") == as_lf(message)
        flags = path.name.rpartition(":2,")[2]
        assert flags == {0: "S", 1: "F", 2: ""}[i], path.name
    # A pull changes nothing on the server.
    assert [(f, m) for _, f, m in server_messages(user, name)] == \
        [({r"\Seen"}, stored[0]), ({r"\Flagged"}, stored[1]), (set(), stored[2])]
    logins(audit, user, kind, 1)


@pytest.mark.parametrize("kind", ["imaps", "imap"])
def test_mbsync_pushes_new_mail_and_flags_to_the_server(kind, tmp_path, folder, audit):
    user = MBSYNC_USER[kind]
    first, second, third = make_messages(f"mbsync-push-{kind}")
    name = folder(user, [first])
    rc = mbsyncrc(tmp_path, user, kind, name, "All")
    mbsync(rc, tmp_path)
    box = tmp_path / "mail" / name
    (pulled,) = maildir_messages(box)

    # The user reads the pulled message, writes two new ones (one flagged) into the Maildir.
    pulled.rename(box / "cur" / (pulled.name.partition(":2,")[0] + ":2,S"))
    (box / "cur" / "1796000000.1_1.localhost:2,F").write_bytes(as_lf(second))
    (box / "new" / "1796000000.2_1.localhost").write_bytes(as_lf(third))
    out = mbsync(rc, tmp_path)
    assert "Connection is now encrypted" in out.stdout

    on_server = {message_id(m): (flags, m) for _, flags, m in server_messages(user, name)}
    assert len(on_server) == 3, on_server
    assert on_server[message_id(first)] == ({r"\Seen"}, first)
    # Uploads go out with CRLF line endings again (and X-TUID, should mbsync need one to
    # find the UIDs), with their flags.
    for message, flags in ((second, {r"\Flagged"}), (third, set())):
        got_flags, got = on_server[message_id(message)]
        assert got_flags == flags
        assert without_headers(got.replace(b"\r\n", b"\n"), "X-TUID") == as_lf(message)
        assert b"\n" not in got.replace(b"\r\n", b"")

    # Both sides agree now: a third run has nothing to do.
    out = mbsync(rc, tmp_path)
    assert re.search(r"far side: 3 messages", out.stdout), out.stdout
    assert len(server_messages(user, name)) == 3 and len(maildir_messages(box)) == 3
    logins(audit, user, kind, 3)


# --- fetchmail ----------------------------------------------------------------------------

MDA = """\
import os, sys
out = sys.argv[1]
n = 0
while True:
    try:
        fd = os.open(os.path.join(out, "%03d" % n), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        break
    except FileExistsError:
        n += 1
with os.fdopen(fd, "wb") as f:
    f.write(sys.stdin.buffer.read())
"""


def fetchmailrc(tmp: Path, user: str, kind: str, server_options: str = "",
                user_options: str = "") -> Path:
    (tmp / "delivered").mkdir(exist_ok=True)
    mda = tmp / "mda.py"
    mda.write_text(MDA)
    protocol = "POP3" if kind.startswith("pop3") else "IMAP"
    # ssl: TLS from the first byte (the *s ports); without it sslproto TLS1.2+ makes
    # STARTTLS/STLS mandatory; sslcertck verifies the chain and the name against our CA.
    tls = "ssl " if kind.endswith("s") else ""
    return private(tmp / "fetchmailrc", f"""\
set no syslog
poll {PROXY} with protocol {protocol} port {PORTS[kind]} timeout 20 {server_options}
    user "{user}" there with password "{PASSWORD}" {user_options}
    {tls}sslproto "TLS1.2+" sslcertck sslcertfile "{CA}"
    mda "{sys.executable} {mda} {tmp / 'delivered'}"
""")


def fetchmail(tmp: Path, rc: Path, ok=(0,)) -> subprocess.CompletedProcess:
    """One poll, in the foreground (exit 0: mail delivered, 1: no mail)."""
    return run(["fetchmail", "-f", str(rc), "--idfile", str(tmp / "fetchids"),
                "--pidfile", str(tmp / "fetchmail.pid"), "-v", "--nodetach"],
               env=client_env(tmp), ok=ok)


def delivered(tmp: Path, since: int = 0) -> list[bytes]:
    """What the mda got, in delivery order, less the Received line fetchmail adds."""
    files = sorted((tmp / "delivered").iterdir())[since:]
    out = []
    for f in files:
        data = f.read_bytes()
        assert data.startswith(b"Received: from ") and b"(fetchmail-" in data.split(b"\n\n")[0]
        out.append(without_headers(data, "Received"))
    return out


@pytest.mark.parametrize("kind", ["imap", "imaps"])
def test_fetchmail_imap_fetches_and_flushes_a_folder(kind, tmp_path, folder, audit):
    user = {"imap": "user11@demo.test", "imaps": "user12@demo.test"}[kind]
    stored = make_messages(f"fetchmail-{kind}")
    name = folder(user, stored)
    # No `keep`: fetchmail deletes what it delivered (the default a user gets).
    out = fetchmail(tmp_path, fetchmailrc(tmp_path, user, kind, user_options=f'folder "{name}"'))
    assert "3 messages for" in out.stdout + out.stderr
    if kind == "imap":
        assert "STARTTLS" in out.stdout + out.stderr
    assert delivered(tmp_path) == [as_lf(m) for m in stored]
    assert server_messages(user, name) == []          # flushed: deleted and expunged
    logins(audit, user, kind, 1)


@pytest.mark.parametrize("kind", ["pop3s", "pop3"])
def test_fetchmail_pop3_keeps_mail_and_fetches_only_new_by_uidl(kind, tmp_path, inbox, audit):
    user = {"pop3s": "user13@demo.test", "pop3": "user14@demo.test"}[kind]
    first, second, third = make_messages(f"fetchmail-{kind}")
    inbox(user, [first, second])
    rc = fetchmailrc(tmp_path, user, kind, "uidl", "keep")

    out = fetchmail(tmp_path, rc)
    if kind == "pop3":
        assert "STLS" in out.stdout + out.stderr
    on_server = [m for _, _, m in server_messages(user, "INBOX")]
    # All of INBOX came (its welcome message too), byte for byte, in server order.
    assert delivered(tmp_path) == [as_lf(m) for m in on_server]
    assert as_lf(first) in delivered(tmp_path) and as_lf(second) in delivered(tmp_path)
    got = len(on_server)

    # `keep`: still all on the server; UIDL says nothing is new.
    out = fetchmail(tmp_path, rc, ok=(1,))
    assert f"{got} messages ({got} seen) for {user}" in out.stdout, out.stdout
    assert [m for _, _, m in server_messages(user, "INBOX")] == on_server
    assert len(list((tmp_path / "delivered").iterdir())) == got

    # A new message arrives: only that one is fetched.
    inbox(user, [third])
    fetchmail(tmp_path, rc)
    assert delivered(tmp_path, since=got) == [as_lf(third)]
    logins(audit, user, kind, 3)


# --- getmail6 -----------------------------------------------------------------------------

@pytest.fixture
def getmail_home(tmp_path):
    """A home for getmail, which refuses to deliver mail as root: as root, it runs as
    `nobody` in a directory of its own (tmp_path's parents are root's alone)."""
    if os.geteuid() != 0:
        yield tmp_path, {}
        return
    nobody = pwd.getpwnam("nobody")
    home = Path(tempfile.mkdtemp(prefix="carbotui-getmail-"))
    os.chown(home, nobody.pw_uid, nobody.pw_gid)
    try:
        yield home, {"user": nobody.pw_uid, "group": nobody.pw_gid, "extra_groups": []}
    finally:
        shutil.rmtree(home, ignore_errors=True)


def getmail(home: Path, drop: dict, kind: str, user: str, retriever_extra: str,
            options: str) -> subprocess.CompletedProcess:
    maildir = home / "Maildir"
    for sub in ("new", "cur", "tmp"):
        (maildir / sub).mkdir(parents=True, exist_ok=True)
    (home / "state").mkdir(exist_ok=True)
    shutil.copy(CA, home / "ca.crt")
    retriever = "SimpleIMAPSSLRetriever" if kind == "imaps" else "SimplePOP3SSLRetriever"
    rc = private(home / "getmailrc", f"""\
[retriever]
type = {retriever}
server = {PROXY}
port = {PORTS[kind]}
username = {user}
password = {PASSWORD}
ca_certs = {home / 'ca.crt'}
record_mailbox = false
{retriever_extra}

[destination]
type = Maildir
path = {maildir}/

[options]
verbose = 2
delivered_to = false
received = false
{options}
""")
    if drop:
        for path in [home, *home.rglob("*")]:
            os.chown(path, drop["user"], drop["group"])
    return run(["getmail", "--rcfile", str(rc), "--getmaildir", str(home / "state")],
               env=client_env(home), cwd=home, **drop)


def getmail_delivered(home: Path) -> list[bytes]:
    # getmail adds Return-Path (the envelope sender, "unknown" over IMAP and POP3)
    return sorted(without_headers(p.read_bytes(), "Return-Path")
                  for p in maildir_messages(home / "Maildir"))


def test_getmail_imaps_retrieves_a_folder_and_deletes_it(getmail_home, folder, audit):
    home, drop = getmail_home
    user = "user12@demo.test"
    stored = make_messages("getmail-imaps")
    name = folder(user, stored)
    out = getmail(home, drop, "imaps", user, f'mailboxes = ("{name}",)',
                  "read_all = true\ndelete = true")
    assert "3 messages" in out.stdout and "retrieved" in out.stdout, out.stdout
    assert getmail_delivered(home) == sorted(as_lf(m) for m in stored)
    assert server_messages(user, name) == []
    logins(audit, user, "imaps", 1)


def test_getmail_pop3s_retrieves_new_mail_once(getmail_home, inbox, audit):
    home, drop = getmail_home
    user = "user14@demo.test"
    stored = make_messages("getmail-pop3s")
    inbox(user, stored)
    opts = "read_all = false\ndelete = false"
    getmail(home, drop, "pop3s", user, "", opts)
    on_server = [m for _, _, m in server_messages(user, "INBOX")]
    assert getmail_delivered(home) == sorted(as_lf(m) for m in on_server)
    assert all(as_lf(m) in getmail_delivered(home) for m in stored)
    # read_all = false: the second run remembers the UIDLs and gets nothing.
    out = getmail(home, drop, "pop3s", user, "", opts)
    assert "0 messages" in out.stdout and "retrieved" in out.stdout, out.stdout
    assert len(maildir_messages(home / "Maildir")) == len(on_server)
    assert [m for _, _, m in server_messages(user, "INBOX")] == on_server   # delete = false
    logins(audit, user, "pop3s", 2)


# --- neomutt ------------------------------------------------------------------------------

def in_pty(cmd: list[str], env: dict, timeout: float = CLIENT_TIMEOUT) -> tuple[int, bytes]:
    """Run a full-screen client on a pseudo-terminal of its own; return (exit code, screen)."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    proc = subprocess.Popen(cmd, stdin=slave, stdout=slave, stderr=slave, env=env,
                            start_new_session=True)
    os.close(slave)
    screen = bytearray()
    deadline = time.monotonic() + timeout
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"{cmd[0]} still running after {timeout}s; "
                                     f"screen: {bytes(screen[-3000:])!r}")
            readable, _, _ = select.select([master], [], [], left)
            if not readable:
                continue
            try:
                chunk = os.read(master, 65536)
            except OSError:          # EIO: the client exited, its terminal is gone
                break
            if not chunk:
                break
            screen += chunk
        return proc.wait(10), bytes(screen)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)


NEOMUTT_URL = {"imaps": "imaps://{u}@{h}:{p}/{f}", "imap": "imap://{u}@{h}:{p}/{f}",
               "pop3s": "pops://{u}@{h}:{p}/"}


def neomutt_copy(tmp: Path, user: str, kind: str, mailbox: str = "") -> tuple[Path, bytes]:
    """neomutt opens the mailbox read-only (-R), tags every message and copies them to a
    local Maildir, then quits: what a user does with `T ~A <Enter> ; C path <Enter> q`."""
    # `folder` exists: else neomutt first asks whether to create ~/Mail (eating the keys)
    rc = private(tmp / "muttrc", f"""\
set folder = "{tmp}"
set imap_pass = "{PASSWORD}"
set pop_pass = "{PASSWORD}"
set ssl_ca_certificates_file = "{CA}"
set certificate_file = "{tmp}/certificates"
set ssl_force_tls = yes
set ssl_starttls = yes
set header_cache = ""
set message_cachedir = ""
set mbox_type = Maildir
set confirmcreate = no
set wait_key = no
set quit = yes
set mail_check_stats = no
set imap_check_subscribed = no
set charset = "utf-8"
""")
    url = NEOMUTT_URL[kind].format(u=user.replace("@", "%40"), h=PROXY, p=PORTS[kind],
                                   f=mailbox)
    target = tmp / "copied"
    code, screen = in_pty(
        ["neomutt", "-n", "-F", str(rc), "-R", "-f", url, "-e",
         f'push "<tag-pattern>~A<enter><tag-prefix><copy-message>{target}<enter><quit>"'],
        dict(client_env(tmp), TERM="xterm"))
    assert code == 0, screen[-3000:]
    return target, screen


def neomutt_delivered(target: Path) -> list[bytes]:
    # copying to a Maildir, neomutt adds Content-Length and Lines (its mbox habits)
    return sorted(without_headers(p.read_bytes(), "Content-Length", "Lines")
                  for p in maildir_messages(target))


@pytest.mark.parametrize("kind", ["imaps", "imap"])
def test_neomutt_copies_an_imap_folder_without_changing_it(kind, tmp_path, folder, audit):
    user = {"imaps": "user12@demo.test", "imap": "user11@demo.test"}[kind]
    stored = make_messages(f"neomutt-{kind}")
    name = folder(user, stored)
    target, screen = neomutt_copy(tmp_path, user, kind, name)
    assert b"Msgs:3" in screen, screen[-3000:]
    assert neomutt_delivered(target) == sorted(as_lf(m) for m in stored)
    # read-only: nothing was marked seen or deleted on the server
    assert [(f, m) for _, f, m in server_messages(user, name)] == [(set(), m) for m in stored]
    logins(audit, user, kind, 1)


def test_neomutt_copies_a_pop3s_mailbox(tmp_path, inbox, audit):
    user = "user13@demo.test"
    stored = make_messages("neomutt-pop3s")
    inbox(user, stored)
    before = server_messages(user, "INBOX")
    target, screen = neomutt_copy(tmp_path, user, "pop3s")
    assert f"Msgs:{len(before)} ".encode() in screen, screen[-3000:]
    assert neomutt_delivered(target) == sorted(as_lf(m) for _, _, m in before)
    assert server_messages(user, "INBOX") == before        # nothing deleted
    assert all(as_lf(m) in neomutt_delivered(target) for m in stored)
    logins(audit, user, "pop3s", 1)
