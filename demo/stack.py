"""The demo stack: what `make up` runs around supervisord.

    python -m demo.stack setup [--force]   generate var/: certs, LDAP, two Dovecot mailboxes
    python -m demo.stack wait [--timeout]  wait until every demo service answers
    python -m demo.stack summary           how to connect
    python -m demo.stack down              stop supervisord and make sure nothing is left

Everything generated lives under var/ (git-ignored). `setup` is idempotent: when var/ is
complete and was made by this version it changes nothing; otherwise it regenerates all of it
(logs excepted), which it refuses to do while the stack is running.
"""

from __future__ import annotations

import argparse
import base64
import errno
import grp
import hashlib
import json
import os
import pwd
import secrets
import shutil
import socket
import ssl
import stat
import subprocess
import sys
import textwrap
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from carbotui.core import certs
from carbotui.core.lines import recv_line

ROOT = Path(__file__).resolve().parent.parent  # the checkout; supervisord.conf lives here
VAR = ROOT / "var"
CERTS, LDAP, RUN, LOG = VAR / "certs", VAR / "ldap", VAR / "run", VAR / "log"
STAMP = VAR / ".setup.json"
SETUP_VERSION = 2  # bump whenever what `setup` writes changes, so old var/ trees are redone

PASSWORD = "demo-pass"
MAIL_USER = "carbotui-mail"  # owns the maildirs; created by scripts/install-deps.sh
LDAP_URL, LDAP_SUFFIX, LDAP_ADMIN = "ldap://127.0.0.1:10389/", "o=carbotui", "cn=admin,o=carbotui"
LDAP_LOOKUP = "cn=proxy,o=carbotui"  # the workers' read-only bind (password in var/ldap/proxy.secret)
MEMCACHED = ("127.0.0.1", 12211)
MBOX_PORTS = {"imap": 7143, "imaps": 7993, "pop3": 7110, "pop3s": 7995}
WEB_PORTS = {"zimbraMailPort": 8080, "zimbraMailSSLPort": 8443, "zimbraAdminPort": 7071}


@dataclass(frozen=True)
class Mailbox:
    short: str  # mbox1
    ip: str

    @property
    def host(self) -> str:
        return f"{self.short}.demo.test"

    @property
    def dir(self) -> Path:
        return VAR / self.short


MAILBOXES = (Mailbox("mbox1", "127.0.0.1"), Mailbox("mbox2", "127.0.0.2"))


@dataclass(frozen=True)
class Account:
    address: str
    mailbox: Mailbox
    alias: str | None = None

    @property
    def zimbra_id(self) -> str:
        return str(uuid.uuid5(uuid.NAMESPACE_DNS, self.address))  # stable across regenerations


def accounts() -> list[Account]:
    """user01..user20@demo.test (odd on mbox1, even on mbox2), boss and clerk @corp.test."""
    m1, m2 = MAILBOXES
    users = [Account(f"user{n:02d}@demo.test", m1 if n % 2 else m2, f"nick{n:02d}@demo.test")
             for n in range(1, 21)]
    return users + [Account("boss@corp.test", m1, "chief@corp.test"), Account("clerk@corp.test", m2)]


# --- small helpers ------------------------------------------------------------------------

def say(msg: str) -> None:
    print(f"demo: {msg}", flush=True)


class DemoError(Exception):
    """Something the person running `make up` must fix; the message says what."""


def write_private(path: Path, data: str | bytes, mode: int = 0o600) -> None:
    """Create `path` with `mode` from the start (never readable by others, even briefly).
    Never through a symlink or a hard link, never into a file someone else owns (var/run is
    writable by the service user: root must not write where that user pointed it)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK, mode)
    with os.fdopen(fd, "wb") as f:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid() or st.st_nlink != 1:
            raise DemoError(f"{path} is not a regular file of uid {os.geteuid()} with one link: "
                            "remove it")
        os.ftruncate(fd, 0)
        os.fchmod(fd, mode)
        f.write(data.encode() if isinstance(data, str) else data)


def run(*cmd: str) -> str:
    """Run a command; on failure raise DemoError with its output (that is the useful part)."""
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        raise DemoError(f"{' '.join(cmd)} failed ({p.returncode}):\n{p.stdout}{p.stderr}".rstrip())
    return p.stdout


def ssha512(password: str) -> str:
    """Dovecot's {SSHA512}: base64(sha512(password + salt) + salt)."""
    salt = os.urandom(16)
    return "{SSHA512}" + base64.b64encode(hashlib.sha512(password.encode() + salt).digest() + salt).decode()


def ssha(password: str) -> str:
    """slapd's built-in {SSHA}: base64(sha1(password + salt) + salt), so simple binds work."""
    salt = os.urandom(8)
    return "{SSHA}" + base64.b64encode(hashlib.sha1(password.encode() + salt).digest() + salt).decode()


def supervisord_pid() -> int | None:
    """The pid of this checkout's supervisord, if it is running."""
    try:
        pid = int((RUN / "supervisord.pid").read_text())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):
        return None
    return pid if b"supervisord" in cmdline else None  # a recycled pid is not ours


# --- setup --------------------------------------------------------------------------------

CERT_SPECS = {  # file stem -> (DNS names, IP addresses)
    "default": (["proxy.demo.test", "localhost"], ["127.0.0.1", "::1"]),
    "mail.demo.test": (["mail.demo.test"], []),
    **{m.short: ([m.host], [m.ip]) for m in MAILBOXES},
}


def expected_files() -> list[Path]:
    files = [CERTS / f"{stem}.{ext}" for stem in ["ca", *CERT_SPECS] for ext in ("crt", "key")]
    files += [LDAP / "slapd.conf", LDAP / "admin.secret", LDAP / "proxy.secret", LDAP / "data" / "data.mdb"]
    for m in MAILBOXES:
        files += [m.dir / "dovecot.conf", m.dir / "passwd", m.dir / "accounts.json", m.dir / "mail"]
    return files


def intact() -> str | None:
    """None when var/ is complete and current, else the reason it must be regenerated."""
    try:
        stamp = json.loads(STAMP.read_text())
    except (OSError, ValueError):
        return "var/ has not been generated yet"
    if stamp.get("version") != SETUP_VERSION:
        return f"var/ was generated by setup version {stamp.get('version')}, this is {SETUP_VERSION}"
    if stamp.get("root") != str(ROOT):
        return f"var/ was generated for the checkout at {stamp.get('root')}"
    missing = [str(p.relative_to(ROOT)) for p in expected_files() if not p.exists()]
    if missing:
        return f"missing: {', '.join(missing)}"
    for stem in ["ca", *CERT_SPECS]:
        try:
            ca = certs.load_cert((CERTS / "ca.crt").read_bytes())
            cert, key = certs.read_pair(CERTS / f"{stem}.crt", CERTS / f"{stem}.key")
        except ValueError:
            return f"var/certs/{stem}.crt or .key is not valid PEM"
        if not certs.check_pair(cert, key) or not certs.is_signed_by(cert, ca):
            return f"var/certs/{stem}.crt does not match its key or the demo CA"
        if certs.expires_in(cert).days < 7:
            return f"var/certs/{stem}.crt expires in {certs.expires_in(cert).days} days"
    return None


def make_certs() -> None:
    CERTS.mkdir(parents=True)
    ca_cert, ca_key = certs.make_ca("carbotui demo CA")
    certs.write_pair(ca_cert, ca_key, CERTS / "ca.crt", CERTS / "ca.key")
    for stem, (names, ips) in CERT_SPECS.items():
        cert, key = certs.issue(ca_cert, ca_key, names, ips)
        certs.write_pair(cert, key, CERTS / f"{stem}.crt", CERTS / f"{stem}.key")


def ldif_entry(dn: str, attrs: list[tuple[str, str]]) -> str:
    lines = [f"dn: {dn}"]
    for name, value in attrs:
        if "\n" in value:  # PEM: LDIF needs base64 for multi-line values
            lines.append(f"{name}:: {base64.b64encode(value.encode()).decode()}")
        else:
            lines.append(f"{name}: {value}")
    return "\n".join(lines) + "\n"


def seed_ldif() -> str:
    s = LDAP_SUFFIX
    e = [ldif_entry(s, [("objectClass", "organization"), ("o", "carbotui")]),
         ldif_entry(f"cn=config,{s}", [("objectClass", "zimbraGlobalConfig"), ("cn", "config"),
                                        ("zimbraDefaultDomainName", "demo.test")])]
    for ou in ("servers", "domains", "people"):
        e.append(ldif_entry(f"ou={ou},{s}", [("objectClass", "organizationalUnit"), ("ou", ou)]))
    for m in MAILBOXES:
        ports = [("zimbraImapBindPort", MBOX_PORTS["imap"]), ("zimbraImapSSLBindPort", MBOX_PORTS["imaps"]),
                 ("zimbraPop3BindPort", MBOX_PORTS["pop3"]), ("zimbraPop3SSLBindPort", MBOX_PORTS["pop3s"]),
                 *WEB_PORTS.items()]
        e.append(ldif_entry(f"cn={m.host},ou=servers,{s}", [
            ("objectClass", "zimbraServer"), ("cn", m.host),
            ("zimbraId", str(uuid.uuid5(uuid.NAMESPACE_DNS, m.host))),
            ("zimbraServiceHostname", m.host), ("zimbraServiceEnabled", "mailbox"),
            *[(k, str(v)) for k, v in ports], ("zimbraReverseProxyLookupTarget", "TRUE")]))
    e.append(ldif_entry(f"cn=proxy.demo.test,ou=servers,{s}", [
        ("objectClass", "zimbraServer"), ("cn", "proxy.demo.test"),
        ("zimbraId", str(uuid.uuid5(uuid.NAMESPACE_DNS, "proxy.demo.test"))),
        ("zimbraServiceHostname", "proxy.demo.test"), ("zimbraServiceEnabled", "proxy"),
        ("zimbraReverseProxyMailMode", "redirect")]))
    e.append(ldif_entry(f"zimbraDomainName=demo.test,ou=domains,{s}", [
        ("objectClass", "zimbraDomain"), ("zimbraDomainName", "demo.test"),
        ("zimbraId", str(uuid.uuid5(uuid.NAMESPACE_DNS, "demo.test"))),
        ("zimbraVirtualHostname", "mail.demo.test"), ("zimbraVirtualIPAddress", "127.0.0.1"),
        ("zimbraSSLCertificate", (CERTS / "mail.demo.test.crt").read_text()),
        ("zimbraSSLPrivateKey", (CERTS / "mail.demo.test.key").read_text())]))
    e.append(ldif_entry(f"zimbraDomainName=corp.test,ou=domains,{s}", [
        ("objectClass", "zimbraDomain"), ("zimbraDomainName", "corp.test"),
        ("zimbraId", str(uuid.uuid5(uuid.NAMESPACE_DNS, "corp.test"))),
        ("zimbraVirtualIPAddress", "127.0.0.3")]))
    for a in accounts():
        local = a.address.split("@")[0]
        e.append(ldif_entry(f"uid={a.address},ou=people,{s}", [
            ("objectClass", "zimbraAccount"), ("uid", a.address), ("cn", local),
            ("displayName", local.capitalize()), ("zimbraId", a.zimbra_id),
            ("zimbraMailDeliveryAddress", a.address), *([("zimbraMailAlias", a.alias)] if a.alias else []),
            ("zimbraMailHost", a.mailbox.host), ("zimbraAccountStatus", "active"),
            ("userPassword", ssha(PASSWORD))]))
    e.append(ldif_entry(LDAP_LOOKUP, [  # what the workers bind as: reads only (see SLAPD_CONF)
        ("objectClass", "organizationalRole"), ("objectClass", "simpleSecurityObject"),
        ("cn", LDAP_LOOKUP.split(",")[0][3:]), ("description", "carbotui proxy lookups (read-only)"),
        ("userPassword", ssha((LDAP / "proxy.secret").read_text()))]))
    return "\n".join(e)


def slapd_conf(*, schema: Path, run: Path, suffix: str, admin: str, rootpw: str,
               directory: Path, maxsize: int, tls: tuple[Path, Path] | None = None,
               rootpw_note: str = "") -> str:
    """The head of a slapd.conf: schemas, pid files, back_mdb and the one database.

    `tls` (certificate, key) makes slapd serve TLS; `rootpw_note` is a comment line above
    rootpw. The rest (indexes, ACLs) is the caller's; tests/stack/test_ldap_tls.py uses it too.
    """
    return "\n".join([
        "include /etc/ldap/schema/core.schema",
        "include /etc/ldap/schema/cosine.schema",
        "# displayName (an optional zimbraAccount attribute) is defined here:",
        "include /etc/ldap/schema/inetorgperson.schema",
        f"include {schema}",
        "",
        f"pidfile {run}/slapd.pid",
        f"argsfile {run}/slapd.args",
        "modulepath /usr/lib/ldap",
        "moduleload back_mdb",
        *([f"TLSCertificateFile {tls[0]}", f"TLSCertificateKeyFile {tls[1]}"] if tls else []),
        "",
        "database mdb",
        f'suffix "{suffix}"',
        f'rootdn "{admin}"',
        *([f"# {rootpw_note}"] if rootpw_note else []),
        f"rootpw {rootpw}",
        f"directory {directory}",
        f"maxsize {maxsize}",
        "", ""])


SLAPD_CONF = """\
# Generated by `python -m demo.stack setup`; regenerated by `setup --force`.
# The demo directory: slapd on {url}, run in the foreground by supervisord (program:slapd).
{head}# what the proxy searches by (route lookups, vhost/VIP to domain, server list)
index objectClass eq
index uid,zimbraMailDeliveryAddress,zimbraMailAlias,zimbraId eq
index zimbraDomainName,zimbraVirtualHostname,zimbraVirtualIPAddress eq
index zimbraServiceHostname,zimbraServiceEnabled eq

# The rootdn (carbotui prov, the dashboard's changes) bypasses these. The proxy workers bind
# as {lookup}: they read everything but password hashes (domain private keys too, for
# their vhost certificates) and write nothing. Users may bind and read the directory, never
# password hashes or domain private keys; anonymous may only bind.
limits dn.exact="{lookup}" size=unlimited time=unlimited
access to attrs=userPassword
    by anonymous auth
    by * none
access to attrs=zimbraSSLPrivateKey
    by dn.exact="{lookup}" read
    by * none
access to *
    by users read
    by * none
"""


def make_ldap() -> None:
    (LDAP / "data").mkdir(parents=True)
    admin_pw = secrets.token_urlsafe(24)
    write_private(LDAP / "admin.secret", admin_pw)  # no newline: `ldapsearch -y` uses it verbatim
    rootpw = run("slappasswd", "-T", str(LDAP / "admin.secret")).strip()  # -T: not visible in ps
    write_private(LDAP / "proxy.secret", secrets.token_urlsafe(24))  # the workers' lookup bind
    head = slapd_conf(schema=ROOT / "etc/ldap/carbotui.schema", run=RUN, suffix=LDAP_SUFFIX,
                      admin=LDAP_ADMIN, rootpw=rootpw, directory=LDAP / "data", maxsize=67108864,
                      rootpw_note="the plain password is in var/ldap/admin.secret"
                                  " (carbotui prov and the dashboard use it)")
    write_private(LDAP / "slapd.conf", SLAPD_CONF.format(  # 0600 from the start: the rootpw hash
        url=LDAP_URL, head=head, lookup=LDAP_LOOKUP))
    write_private(LDAP / "seed.ldif", seed_ldif())  # holds the mail.demo.test private key
    run("slaptest", "-u", "-f", str(LDAP / "slapd.conf"))
    run("slapadd", "-q", "-f", str(LDAP / "slapd.conf"), "-l", str(LDAP / "seed.ldif"))
    (LDAP / "seed.ldif").unlink()  # seeded: no second copy of the key on disk


DOVECOT_CONF = """\
# Generated by `python -m demo.stack setup`; regenerated by `setup --force`.
# {host}: a demo mailbox server on {ip}, run by supervisord as `dovecot -F -c <this file>`.
# Standalone (no /etc/dovecot include) and independent of the other instance and of a system
# Dovecot: base_dir holds every socket (auth, anvil, stats, login), state_dir the rest.
instance_name = {short}
base_dir = {dir}/run
state_dir = {dir}/state
protocols = imap pop3
listen = {ip}
# stderr goes to supervisord, which writes var/log/{short}.log and rotates it
log_path = /dev/stderr
log_timestamp = "%Y-%m-%d %H:%M:%S "

ssl = yes
ssl_cert = <{certs}/{short}.crt
ssl_key = <{certs}/{short}.key
ssl_min_protocol = TLSv1.2

# The proxy logs in with the client's own credentials, in plain text on loopback, and
# forwards the client IP (IMAP ID x-originating-ip, POP3 XCLIENT): trust it for that.
disable_plaintext_auth = no
auth_mechanisms = plain login
auth_username_format = %Lu
login_trusted_networks = 127.0.0.0/8
# No delays after failed logins: the proxy has its own tarpit (mail.auth_wait in
# carbotui.toml), and anvil's per-IP penalty would slow every user behind the proxy's IP.
auth_failure_delay = 0
service anvil {{
  unix_listener anvil-auth-penalty {{
    mode = 0
  }}
}}

# Only this server's accounts (and their aliases, mapped to the account with user=).
passdb {{
  driver = passwd-file
  args = scheme=SSHA512 {dir}/passwd
}}
userdb {{
  driver = static
  args = uid={uid} gid={gid} home={dir}/mail/%d/%n
}}
mail_location = maildir:~
first_valid_uid = {uid}
last_valid_uid = {uid}

# Sized for a few hundred concurrent sessions through the proxy, which all come from one IP.
default_process_limit = 1000
default_client_limit = 4000
default_vsz_limit = 512M
{protocols}"""

# Each of imap and pop3: its listeners in "high-performance" login mode (a few long-lived
# login processes serve many connections) and room for the proxy's many sessions.
DOVECOT_PROTOCOL = """\
protocol {proto} {{
  mail_max_userip_connections = 1000
}}
service {proto}-login {{
  inet_listener {proto} {{
    port = {plain}
  }}
  inet_listener {proto}s {{
    port = {tls}
    ssl = yes
  }}
  service_count = 0
  process_min_avail = 2
}}
service {proto} {{
  process_limit = 1000
}}
"""

WELCOME = """\
From: carbotui demo <postmaster@demo.test>
To: {address}
Subject: Welcome to {short}
Date: {date}
Message-ID: <welcome.{short}.{zid}@demo.test>
MIME-Version: 1.0
Content-Type: text/plain; charset=utf-8

Hello {address},

your mail lives on {host} ({ip}). If you are reading this through the carbotui
proxy, it found this server from zimbraMailHost in LDAP.
"""


def make_mailbox(m: Mailbox) -> None:
    try:
        mail_user = pwd.getpwnam(MAIL_USER)
    except KeyError:
        raise DemoError(f"system user {MAIL_USER} is missing: run scripts/install-deps.sh") from None
    dovecot_gid = grp.getgrnam("dovecot").gr_gid  # the auth process runs as user dovecot
    mine = [a for a in accounts() if a.mailbox == m]
    m.dir.mkdir(parents=True)
    m.dir.chmod(0o755)

    hashes = {a.address: ssha512(PASSWORD) for a in mine}
    lines = [f"{a.address}:{hashes[a.address]}" for a in mine]
    lines += [f"{a.alias}:{hashes[a.address]}::::::user={a.address}" for a in mine if a.alias]
    write_private(m.dir / "passwd", "\n".join(lines) + "\n", 0o640)
    os.chown(m.dir / "passwd", 0, dovecot_gid)
    write_private(m.dir / "accounts.json", json.dumps({
        "server": m.host, "short": m.short,
        "accounts": {a.address: {"zimbraId": a.zimbra_id, "password": hashes[a.address]} for a in mine},
    }, indent=2) + "\n")

    (m.dir / "dovecot.conf").write_text(DOVECOT_CONF.format(
        host=m.host, short=m.short, ip=m.ip, dir=m.dir, certs=CERTS,
        uid=mail_user.pw_uid, gid=mail_user.pw_gid, protocols="".join(
            DOVECOT_PROTOCOL.format(proto=proto, plain=MBOX_PORTS[proto],
                                    tls=MBOX_PORTS[proto + "s"]) for proto in ("imap", "pop3"))))
    run("doveconf", "-c", str(m.dir / "dovecot.conf"), "-n")  # fails loudly on a bad setting

    date = time.strftime("%a, %d %b %Y %H:%M:%S +0000", time.gmtime())
    for a in mine:
        local, domain = a.address.split("@")
        maildir = m.dir / "mail" / domain / local
        for sub in ("cur", "new", "tmp"):
            (maildir / sub).mkdir(parents=True)
        (maildir / "new" / f"{int(time.time())}.welcome.{m.short}").write_text(WELCOME.format(
            address=a.address, short=m.short, host=m.host, ip=m.ip, zid=a.zimbra_id, date=date))
    for path in [m.dir / "mail", *(m.dir / "mail").rglob("*")]:
        os.chown(path, mail_user.pw_uid, mail_user.pw_gid)
    (m.dir / "mail").chmod(0o700)


def check_paths() -> None:
    """supervisord's socket path fits a unix socket address. (Other users' way into a
    private checkout: reach_checkout.)"""
    sock = RUN / "supervisor.sock"
    if len(str(sock)) > 100:  # sun_path is 108 bytes
        raise DemoError(f"{sock} is too long for a unix socket; use a shorter checkout path")


# --- the service user ----------------------------------------------------------------------
# supervisord (root) starts the proxy workers, auditwatch, web1/web2 and mailsink; they run as
# SERVICE_USER (`--user` for the workers, `user=` for the others, see supervisord.conf). What
# they write lives in directories of their own; what root writes stays root's:
#   var/run     root:carbotui 1770  the workers' stats/control sockets and auditwatch.state
#                                   sit beside supervisord's socket, pid and include; the
#                                   sticky bit stops the service user removing or replacing
#                                   root's files
#   var/run/vhosts, var/spool/alerts, var/mailsink, var/cluster/*/{run,log}
#               carbotui 0700/0750
#   var/log     root:carbotui 0750  supervisord writes (and rotates) every child's log here,
#                                   so the service user may not create files in it (a symlink
#                                   in place of a rotated log would make root write through
#                                   it); audit.log, alerts.log, access.log and
#                                   sessions.log are made here for it
#   private keys and secrets it reads (TLS keys, proxy.secret, accounts.json): 0640 root:carbotui;
#   the CA key 0600 root.

SERVICE_USER = "carbotui"
# var/log files the service user appends to
SERVICE_LOGS = ("audit.log", "alerts.log", "access.log", "sessions.log")
# var/run entries the service user's programs create (owned by it, so they can replace them)
SERVICE_RUN_FILES = ("proxy_*.sock", "proxy_*.ctl", "auditwatch.state", "auditwatch.state.tmp")
CLUSTER = VAR / "cluster"  # `make cluster` nodes' var_dir (etc/cluster/node*.toml)
CLUSTER_NODES = ("node1", "node2")


def service_user() -> pwd.struct_passwd:
    """The unprivileged user of the demo's own programs, created when missing."""
    try:
        return pwd.getpwnam(SERVICE_USER)
    except KeyError:
        pass
    say(f"creating system user {SERVICE_USER}")
    p = subprocess.run(["useradd", "--system", "--user-group", "--no-create-home",
                        "--home-dir", "/nonexistent", "--shell", "/usr/sbin/nologin",
                        "--comment", "carbotui proxy workers", SERVICE_USER],
                       capture_output=True, text=True)
    try:
        return pwd.getpwnam(SERVICE_USER)  # also when a concurrent setup made it first
    except KeyError:
        raise DemoError(f"useradd {SERVICE_USER} failed: {p.stderr.strip()}") from None


# --- reaching the checkout from other users ---------------------------------------------
# Programs of other users reach into the checkout: Dovecot's (user dovecot: the auth process
# reads var/mboxN/passwd; MAIL_USER: the maildirs var/mboxN/mail and base_dir's sockets) and
# SERVICE_USER's (it runs .venv/bin/python with the checkout's code from the checkout, and
# writes var/run and var/log). A checkout under a private folder (0700: /root, most
# /home/<user>) is out of their reach. Rather than making that folder searchable by every
# user (chmod o+x), setup gives just these users search permission ("x": they can pass
# through to a path they know, not list or read the folder) with a POSIX ACL entry on each
# folder on the way that others may not search: `setfacl -m u:carbotui:x,u:dovecot:x,...`.
# Idempotent; `getfacl DIR` shows the entries, `setfacl -x u:carbotui,u:dovecot,... DIR`
# removes them. The same for the folders on the way to .venv's interpreter (pyenv under
# /root), for SERVICE_USER only. Moving the mailboxes out of the checkout (to /var/lib) would
# spare the Dovecot users the entry but not SERVICE_USER, which must run the checkout's code;
# one mechanism for all keeps every path in supervisord.conf, carbotui.toml and the generated
# configs where it is. A filesystem without ACLs gets a message saying what to do instead.
# Dovecot's login processes (dovenull) need no entry: the master chroots them (as root) into
# base_dir/login before they drop to dovenull. The CA key, admin.secret, the root-only logs
# keep their own modes: search permission on a folder opens nothing that a file's mode closes.

REACH_USERS = (SERVICE_USER, "dovecot", MAIL_USER)  # who must reach var/ (see above)


def private_folders(path: Path, mode_of: Callable[[Path], int] = lambda d: d.stat().st_mode
                    ) -> list[Path]:
    """The folders from / down to `path` (included) that other users may not search."""
    return [d for d in reversed([path, *path.parents]) if not mode_of(d) & stat.S_IXOTH]


def acl_grants(getfacl_out: str, users: tuple[str, ...]) -> dict[str, str]:
    """For each of `users` that the ACL (`getfacl --omit-header` text) does not let search
    the folder: the `setfacl -m` entry that does, keeping what it already had ("u:name:rx").
    A named user's entry counts only as far as the mask lets it (getfacl's #effective)."""
    entries, mask = {}, None
    for line in getfacl_out.splitlines():
        fields = line.split("#")[0].strip().split(":")
        if len(fields) != 3:
            continue
        tag, qualifier, perms = fields
        if tag == "mask":
            mask = perms
        elif tag == "user" and qualifier:
            entries[qualifier] = perms
    grants = {}
    for user in users:
        perms = entries.get(user, "")
        if "x" not in perms or (mask is not None and "x" not in mask):
            grants[user] = "u:" + user + ":" + "".join(c for c in "rw" if c in perms) + "x"
    return grants


def grant_search(path: Path, users: tuple[str, ...], purpose: str) -> None:
    """Let `users` (and no one else) pass through every folder on the way to `path`; they
    need it `purpose` ("to run ...")."""
    folders = private_folders(path)
    if not folders:
        return
    for user in users:
        try:
            pwd.getpwnam(user)
        except KeyError:
            raise DemoError(f"system user {user} is missing: run scripts/install-deps.sh") from None
    if not shutil.which("setfacl"):
        raise DemoError(f"{folders[0]} is private and setfacl (Debian package acl) is missing: "
                        "run scripts/install-deps.sh")
    for d in folders:
        grants = acl_grants(run("getfacl", "--omit-header", "--absolute-names", str(d)), users)
        if not grants:
            continue
        p = subprocess.run(["setfacl", "-m", ",".join(grants.values()), str(d)],
                           capture_output=True, text=True)
        if p.returncode != 0:
            raise DemoError(
                f"{d} is not searchable by other users and setfacl could not give "
                f"{', '.join(grants)} search permission ({p.stderr.strip()}; no POSIX ACLs on "
                f"this filesystem?). They need it {purpose}: move {path} under a folder others "
                f"may search (e.g. /srv or /opt), or let every user search {d} (`chmod o+x {d}`).")
        say(f"{d}: search permission (ACL) for {', '.join(grants)}, {purpose}")


def reach_checkout() -> None:
    grant_search(ROOT, REACH_USERS, f"to reach {VAR} and run the checkout's code")


def reach_interpreter() -> None:
    """.venv's python is a link to an interpreter that may live under a private folder
    (pyenv under /root): SERVICE_USER runs it."""
    python = Path(os.path.realpath(sys.executable))
    for target in dict.fromkeys([python.parent, Path(sys.base_prefix)]):
        grant_search(target, (SERVICE_USER,), f"to run {python}")


def check_service_user(pw: pwd.struct_passwd) -> None:
    """The service user can run what supervisord starts as it (fails early and says why,
    rather than every program going FATAL). As supervisord does (`directory=%(here)s`), from
    the checkout: demo/ is not installed, `python -m demo.mailbox_web` finds it in the cwd."""
    modules = "carbotui.proxy.worker, carbotui.proxy.privileges, carbotui.admin.auditwatch, demo.mailbox_web, demo.mailsink"
    p = subprocess.run([str(ROOT / ".venv" / "bin" / "python"), "-c", f"import {modules}"],
                       cwd=ROOT, user=pw.pw_uid, group=pw.pw_gid, extra_groups=[],
                       capture_output=True, text=True)
    if p.returncode != 0:
        last = (p.stderr.strip().splitlines() or ["(no output)"])[-1]
        hint = (f" The checkout and .venv must be readable by others (`chmod -R o+rX {ROOT}`)."
                if "Permission denied" in p.stderr else "")  # not for a plain import error
        raise DemoError(f"user {SERVICE_USER} cannot run .venv/bin/python with the checkout's "
                        f"modules: {last}.{hint}")


def _set(path: Path, uid: int, gid: int, mode: int) -> bool:
    """Owner and mode of one file or folder, through a descriptor opened without following a
    symlink (nothing can be swapped in between the look and the change). True if changed."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise DemoError(f"{path} is a symlink: remove it") from None
        raise
    try:
        st = os.fstat(fd)
        changed = False
        if (st.st_uid, st.st_gid) != (uid, gid):
            os.fchown(fd, uid, gid)
            changed = True
        if stat.S_IMODE(st.st_mode) != mode:
            os.fchmod(fd, mode)
            changed = True
        return changed
    finally:
        os.close(fd)


def _give(top: Path, pw: pwd.struct_passwd, mode: int) -> int:
    """`top` and everything in it to the service user (top at `mode`); for a tree that user
    writes, so by file descriptor (os.fwalk), never following a symlink it may have put there."""
    top.mkdir(mode=mode, parents=True, exist_ok=True)
    changed = int(_set(top, pw.pw_uid, pw.pw_gid, mode))
    for _, dirs, files, dfd in os.fwalk(top, follow_symlinks=False):
        for name in dirs + files:
            st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
            if (st.st_uid, st.st_gid) != (pw.pw_uid, pw.pw_gid):
                os.chown(name, pw.pw_uid, pw.pw_gid, dir_fd=dfd, follow_symlinks=False)
                changed += 1
    return changed


def fix_permissions(pw: pwd.struct_passwd) -> None:
    """Owners and modes under var/ for the service user (see above). Idempotent, and run on
    every setup, so a var/ made by an earlier version (everything root's) is brought over."""
    uid, gid, n = pw.pw_uid, pw.pw_gid, 0
    n += _set(RUN, 0, gid, 0o1770)
    n += _give(RUN / "vhosts", pw, 0o700)
    fd = os.open(RUN, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for pattern in SERVICE_RUN_FILES:
            for path in RUN.glob(pattern):
                st = os.stat(path.name, dir_fd=fd, follow_symlinks=False)
                if (st.st_uid, st.st_gid) != (uid, gid):
                    os.chown(path.name, uid, gid, dir_fd=fd, follow_symlinks=False)
                    n += 1
    finally:
        os.close(fd)
    n += _set(LOG, 0, gid, 0o750)
    for name in SERVICE_LOGS:
        path = LOG / name
        if not path.exists():
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o640))
        n += _set(path, uid, gid, 0o640)
    for path in LOG.iterdir():  # supervisord's logs (login names, LDAP filters): not others'
        st = path.lstat()
        if path.name not in SERVICE_LOGS and stat.S_ISREG(st.st_mode) and st.st_mode & 0o007:
            n += _set(path, st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode) & ~0o007)
    (VAR / "spool").mkdir(exist_ok=True)
    n += _set(VAR / "spool", 0, gid, 0o750)
    # [web] acme_webroot: `certbot --webroot -w var/acme` (root) writes the tokens, the
    # workers only read them; tokens are public, so world-readable
    (VAR / "acme" / ".well-known" / "acme-challenge").mkdir(parents=True, exist_ok=True)
    for d in (VAR / "acme", VAR / "acme" / ".well-known", VAR / "acme" / ".well-known" / "acme-challenge"):
        n += _set(d, 0, 0, 0o755)
    n += _give(VAR / "spool" / "alerts", pw, 0o700)
    n += _give(VAR / "mailsink", pw, 0o700)
    for node in CLUSTER_NODES:
        CLUSTER.joinpath(node).mkdir(parents=True, exist_ok=True)
        n += _give(CLUSTER / node / "run", pw, 0o750) + _give(CLUSTER / node / "log", pw, 0o750)
    if CERTS.is_dir():
        for key in CERTS.glob("*.key"):
            n += _set(key, 0, 0, 0o600) if key.name == "ca.key" else _set(key, 0, gid, 0o640)
    if LDAP.is_dir():
        n += _set(LDAP, 0, gid, 0o750)
        for secret in LDAP.glob("*.secret"):
            # The workers bind with proxy.secret (read-only DN); admin.secret (writes:
            # prov, the dashboard, as root) is nobody else's.
            n += (_set(secret, 0, 0, 0o600) if secret.name == "admin.secret"
                  else _set(secret, 0, gid, 0o640))
        if (LDAP / "seed.ldif").exists():  # left by an earlier setup: a copy of a private key
            (LDAP / "seed.ldif").unlink()
            n += 1
    for m in MAILBOXES:  # web1/web2 read their accounts
        if (m.dir / "accounts.json").exists():
            n += _set(m.dir / "accounts.json", 0, gid, 0o640)
    if n:
        say(f"var/: {n} owner/mode change(s) for the {SERVICE_USER} user")


def write_workers_include() -> None:
    """supervisord.conf includes this: numprocs for [program:proxy], one worker per core."""
    n = int(os.environ.get("CARBOTUI_WORKERS") or os.cpu_count() or 1)
    text = f"; generated by `python -m demo.stack setup`: one proxy worker per core\n" \
           f"[program:proxy]\nnumprocs={n}\n"
    path = RUN / "supervisor-workers.conf"
    if not path.exists() or path.read_text() != text:
        write_private(path, text, 0o644)  # supervisord (root) reads it: only root's file
        say(f"proxy workers: {n} (var/run/supervisor-workers.conf)")


def restart_slapd_on_new_schema() -> None:
    """slapd reads etc/ldap/carbotui.schema (an include of slapd.conf) only when it starts:
    a schema newer than the running slapd's pid file gets it restarted, once."""
    try:
        stale = (ROOT / "etc/ldap/carbotui.schema").stat().st_mtime > (RUN / "slapd.pid").stat().st_mtime
    except OSError:  # slapd not running: it reads the schema when it starts
        return
    if stale and supervisord_pid():
        run("slaptest", "-u", "-f", str(LDAP / "slapd.conf"))
        run(sys.executable, "-m", "supervisor.supervisorctl", "-c", str(ROOT / "supervisord.conf"),
            "restart", "slapd")
        say("slapd restarted: etc/ldap/carbotui.schema changed")


def setup(force: bool) -> None:
    if os.geteuid() != 0:
        raise DemoError("setup needs root (a system user owns the maildirs; Dovecot drops privileges)")
    check_paths()
    pw = service_user()
    reach_checkout()
    reach_interpreter()
    check_service_user(pw)
    for d in (RUN, LOG):
        d.mkdir(parents=True, exist_ok=True)
    if not supervisord_pid() and (left := _leftovers({os.getpid()})):
        raise DemoError("processes of an earlier run are still running without supervisord "
                        f"(pids {', '.join(str(p.pid) for p in left)}): run `make down` first")
    reason = "--force" if force else intact()
    if reason is None:
        write_workers_include()
        fix_permissions(pw)
        restart_slapd_on_new_schema()
        say("var/ is up to date")
        return
    if supervisord_pid():
        raise DemoError(f"var/ must be regenerated ({reason}) but the stack is running: "
                        "run `make down` first")
    say(f"generating var/ ({reason})")
    t0 = time.monotonic()
    for d in (CERTS, LDAP, *(m.dir for m in MAILBOXES)):
        shutil.rmtree(d, ignore_errors=True)
    STAMP.unlink(missing_ok=True)
    make_certs()
    make_ldap()
    for m in MAILBOXES:
        make_mailbox(m)
    write_workers_include()
    fix_permissions(pw)
    STAMP.write_text(json.dumps({"version": SETUP_VERSION, "root": str(ROOT)}) + "\n")
    say(f"var/ generated in {time.monotonic() - t0:.1f}s")


# --- wait ---------------------------------------------------------------------------------

def _greeting(prefix: bytes, tls: bool = False) -> Callable[[str, int], None]:
    """A probe that connects and expects a greeting line starting with `prefix`."""
    def probe(host: str, port: int) -> None:
        with socket.create_connection((host, port), timeout=2) as raw:
            sock = raw
            if tls:
                ctx = ssl.create_default_context(cafile=str(CERTS / "ca.crt"))
                ctx.check_hostname = False  # the certificate names a host, we dial an IP
                sock = ctx.wrap_socket(raw)
            line = recv_line(sock)
            if not line.startswith(prefix):
                raise OSError(f"unexpected greeting {line[:60]!r}")
    return probe


def _memcached(host: str, port: int) -> None:
    with socket.create_connection((host, port), timeout=2) as sock:
        sock.sendall(b"version\r\n")
        if not recv_line(sock).startswith(b"VERSION "):
            raise OSError("no VERSION reply")


def _ldap(host: str, port: int) -> None:
    run("ldapsearch", "-x", "-o", "nettimeout=2", "-H", f"ldap://{host}:{port}/",
        "-D", LDAP_ADMIN, "-y", str(LDAP / "admin.secret"), "-b", LDAP_SUFFIX, "-s", "base", "dn")


def _http(tls: bool = False) -> Callable[[str, int], None]:
    """A probe that GETs /health and expects any HTTP answer below 500."""
    def probe(host: str, port: int) -> None:
        with socket.create_connection((host, port), timeout=2) as raw:
            sock = raw
            if tls:
                ctx = ssl.create_default_context(cafile=str(CERTS / "ca.crt"))
                ctx.check_hostname = False
                sock = ctx.wrap_socket(raw)
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            line = recv_line(sock)
            if not (line.startswith(b"HTTP/1.") and line[9:10] in b"1234"):
                raise OSError(f"unexpected answer {line[:60]!r}")
    return probe


HTTP, HTTPS = _http(), _http(tls=True)
IMAP, POP3 = _greeting(b"* OK"), _greeting(b"+OK")
IMAPS, POP3S = _greeting(b"* OK", tls=True), _greeting(b"+OK", tls=True)

# (supervisor program, host, port, probe). Add a service to wait for with one line.
CHECKS: list[tuple[str, str, int, Callable[[str, int], None]]] = [
    ("memcached", *MEMCACHED, _memcached),
    ("slapd", "127.0.0.1", 10389, _ldap),
    *[(m.short, m.ip, MBOX_PORTS[proto], probe) for m in MAILBOXES
      for proto, probe in (("imap", IMAP), ("imaps", IMAPS), ("pop3", POP3), ("pop3s", POP3S))],
    *[(f"web{m.short[-1]}", m.ip, port, HTTP) for m in MAILBOXES for port in (8080, 7071)],
    *[(f"web{m.short[-1]}", m.ip, 8443, HTTPS) for m in MAILBOXES],
    ("mailsink", "127.0.0.1", 10025, _greeting(b"220")),
    ("proxy", "127.0.0.1", 10143, IMAP), ("proxy", "127.0.0.1", 10993, IMAPS),
    ("proxy", "127.0.0.1", 10110, POP3), ("proxy", "127.0.0.1", 10995, POP3S),
    ("proxy", "127.0.0.1", 10080, HTTP), ("proxy", "127.0.0.1", 10443, HTTPS),
    ("proxy", "127.0.0.1", 16071, HTTPS),
    ("metrics", "127.0.0.1", 19100, HTTP),
]


def supervisor_states() -> dict[str, str]:
    """process name -> state name, from this checkout's supervisord ({} when not reachable)."""
    from xmlrpc.client import ServerProxy
    from supervisor.xmlrpc import SupervisorTransport
    transport = SupervisorTransport(None, None, f"unix://{RUN / 'supervisor.sock'}")
    try:
        info = ServerProxy("http://127.0.0.1", transport=transport).supervisor.getAllProcessInfo()
    except OSError:
        return {}
    return {p["name"]: p["statename"] for p in info}


def tail(path: Path, n: int = 5) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()[-n:]
    except OSError:
        return f"    ({path.relative_to(ROOT)} does not exist)"
    return "\n".join(f"    {line}" for line in lines)


def program_state(states: dict[str, str], name: str) -> str:
    """State of a program (all of its processes, for numprocs > 1): RUNNING or what is not."""
    mine = [v for k, v in states.items() if k == name or k.startswith(f"{name}_")]
    if not mine:
        return "not known to supervisord" if states else "supervisord not reachable"
    return next((v for v in mine if v != "RUNNING"), "RUNNING")


# `make cluster`: HAProxy's frontends, which answer only when a node behind them does.
CLUSTER_CHECKS: list[tuple[str, str, int, Callable[[str, int], None]]] = [
    ("haproxy", "127.0.0.1", 20143, IMAP), ("haproxy", "127.0.0.1", 20993, IMAPS),
    ("haproxy", "127.0.0.1", 20110, POP3), ("haproxy", "127.0.0.1", 20995, POP3S),
    ("haproxy", "127.0.0.1", 20443, HTTPS),
    ("node1", "127.0.0.1", 20143, IMAP), ("node2", "127.0.0.1", 20143, IMAP),
]


def wait(timeout: float, checks=None) -> None:
    """Until every check's program is RUNNING in supervisord and its port answers."""
    checks = CHECKS if checks is None else checks
    pending = list(checks)
    errors: dict[tuple[str, int], str] = {}
    deadline = time.monotonic() + timeout
    while True:
        states = supervisor_states()
        for check in list(pending):
            name, host, port, probe = check
            try:
                probe(host, port)
            except (OSError, DemoError) as e:
                errors[(host, port)] = str(e).splitlines()[0] if str(e) else type(e).__name__
                continue
            if program_state(states, name) == "RUNNING":  # after startsecs: not about to die
                pending.remove(check)
        if not pending or time.monotonic() > deadline:
            break
        if any(program_state(states, c[0]) == "FATAL" for c in pending):
            break  # supervisord gave up on it: waiting longer changes nothing
        time.sleep(0.2)
    if pending:
        lines = ["not up:"]
        for name in dict.fromkeys(c[0] for c in pending):  # each program once, in order
            where = ", ".join(f"{h}:{p} {errors.get((h, p), 'answers, but ' + name + ' is not RUNNING')}"
                              for n, h, p, _ in pending if n == name)
            lines += [f"  {name} [{program_state(states, name)}] {where}",
                      f"  last lines of var/log/{name}.log:", tail(LOG / f"{name}.log")]
        raise DemoError("\n".join(lines))
    say(f"up: {', '.join(dict.fromkeys(c[0] for c in checks))}")


# --- down ---------------------------------------------------------------------------------

def _leftovers(exclude: set[int]):
    """Processes of this stack that supervisord no longer knows (e.g. it was SIGKILLed):
    their command line mentions var/ or the node config, or they are a demo daemon still
    listening on a demo port (memcached's command line names no path)."""
    import psutil
    marks = (f"{VAR}/", f"{ROOT}/carbotui.toml", f"{ROOT}/etc/cluster/")
    ports = {(host, port) for _, host, port, _ in CHECKS}
    listeners = {c.pid for c in psutil.net_connections("tcp")
                 if c.status == psutil.CONN_LISTEN and c.pid and (c.laddr.ip, c.laddr.port) in ports}
    daemons = ("memcached", "slapd", "dovecot", "haproxy")
    found = []
    for p in psutil.process_iter(["pid", "name", "cmdline"]):
        name, cmd = p.info["name"] or "", " ".join(p.info["cmdline"] or [])
        if p.info["pid"] in exclude or not (name in daemons or name.startswith("python")):
            continue  # never someone's `tail -f .../var/log/x` or editor
        if any(m in cmd for m in marks) or (p.info["pid"] in listeners and name in daemons):
            found.append(p)
    return found


def down(timeout: float) -> None:
    import psutil
    me = {os.getpid(), *(p.pid for p in psutil.Process().parents())}
    pid = supervisord_pid()
    if pid:
        tree = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
        say(f"stopping supervisord (pid {pid}) and {len(tree) - 1} processes")
        ctl = subprocess.run([sys.executable, "-m", "supervisor.supervisorctl", "-c",
                              str(ROOT / "supervisord.conf"), "shutdown"], capture_output=True, text=True)
        if ctl.returncode != 0:  # socket gone or unresponsive: signal it directly
            say(f"supervisorctl shutdown failed ({ctl.stdout.strip()}); sending SIGTERM")
            tree[0].terminate()
        _, alive = psutil.wait_procs(tree, timeout=timeout)
        if alive:
            say(f"still running after {timeout:.0f}s, killing: " + ", ".join(str(p.pid) for p in alive))
            for p in alive:
                p.kill()
            psutil.wait_procs(alive, timeout=5)
    left = _leftovers(me)
    for p in left:
        say(f"stopping leftover pid {p.pid}: {' '.join(p.cmdline())[:120]}")
        p.terminate()
    _, alive = psutil.wait_procs(left, timeout=10)
    for p in alive:
        p.kill()
    if psutil.wait_procs(alive, timeout=5)[1]:
        raise DemoError("could not stop: " + ", ".join(str(p.pid) for p in alive))
    say("down" if pid or left else "down (nothing was running)")


# --- summary ------------------------------------------------------------------------------

def summary() -> None:
    ca, secret = CERTS / "ca.crt", LDAP / "admin.secret"
    mbox_ports = ", ".join(f"{proto.upper()} {port}" for proto, port in MBOX_PORTS.items())
    odd, even = "user01@demo.test", "user02@demo.test"
    print(textwrap.dedent(f"""\
        carbotui demo — everything on loopback, generated under {VAR}

        Proxy (carbotui workers, see carbotui.toml)
          IMAP 127.0.0.1:10143 (STARTTLS)  IMAPS 127.0.0.1:10993
          POP3 127.0.0.1:10110 (STLS)      POP3S 127.0.0.1:10995
          TLS names: proxy.demo.test, localhost, 127.0.0.1; mail.demo.test (SNI) — CA: {ca}

        Accounts (password for all: {PASSWORD})
          user01..user20@demo.test, aliases nick01..nick20@demo.test
            odd numbers live on mbox1.demo.test (127.0.0.1), even on mbox2.demo.test (127.0.0.2)
          boss@corp.test (alias chief@corp.test) on mbox1, clerk@corp.test on mbox2
          Each INBOX holds "Welcome to mboxN": it tells you where the proxy routed you.

        Backends (what the proxy talks to)
          memcached 127.0.0.1:{MEMCACHED[1]}
          LDAP {LDAP_URL} as {LDAP_ADMIN}, password in {secret}
          mbox1 127.0.0.1 / mbox2 127.0.0.2: {mbox_ports}

        Try
          curl --cacert {ca} -u {odd}:{PASSWORD} 'imaps://localhost:10993/INBOX;UID=1'
          curl --cacert {ca} -u {even}:{PASSWORD} pop3s://localhost:10995/1
          openssl s_client -quiet -CAfile {ca} -connect 127.0.0.1:10993 -servername mail.demo.test
          curl -u {odd}:{PASSWORD} 'imap://127.0.0.1:7143/INBOX;UID=1'      # mbox1 directly
          ldapsearch -x -H {LDAP_URL} -D {LDAP_ADMIN} -y {secret} -b {LDAP_SUFFIX} uid={odd}

        Manage
          .venv/bin/supervisorctl -c supervisord.conf status      logs: {LOG}
          make down                                               stop everything
        """))
    states = supervisor_states()
    if states:
        print("Processes: " + ", ".join(f"{k} {v}" for k, v in states.items()))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m demo.stack", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("setup", help="generate var/").add_argument("--force", action="store_true",
                                                                help="regenerate even if intact")
    w = sub.add_parser("wait", help="wait for the services")
    w.add_argument("--timeout", type=float, default=30)
    w.add_argument("--cluster", action="store_true", help="the `make cluster` part")
    sub.add_parser("summary", help="how to connect")
    sub.add_parser("down", help="stop supervisord, leave nothing").add_argument(
        "--timeout", type=float, default=60)
    args = ap.parse_args(argv)
    commands = {"setup": lambda: setup(args.force),
                "wait": lambda: wait(args.timeout, CLUSTER_CHECKS if args.cluster else None),
                "down": lambda: down(args.timeout)}
    try:
        commands.get(args.cmd, summary)()
        return 0
    except DemoError as e:
        print(f"demo {args.cmd}: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
