"""`make install` on this machine gives a running production node; `make uninstall` takes it
away again, leaving only the settings and the logs.

The node is installed from a snapshot of the tree (a copy in a temporary folder, as from a
tarball: the engineers' edits in the checkout cannot change it between the two installs),
into the system's places: /opt/carbotui, /etc/carbotui, /var/{lib,log}/carbotui,
/run/carbotui, Debian's supervisor (/etc/supervisor/conf.d), systemd units, logrotate. Then
the admin's part is played: /etc/carbotui/carbotui.toml gets the demo's LDAP (the read-only
lookup bind cn=proxy), memcached, mailbox servers and certificate, on the seed's ports on
127.0.0.1 (imap 143, imaps 993, pop3 110, pop3s 995, http 80, https 443; a port that is taken
on this machine is moved to 30000 + port, said in the test output), metrics on
127.0.0.1:19101 (the demo's exporter has 19100). It `include`s the installed template, so
the template's own values are what the node runs with. Debian's supervisor package is
installed if missing (never started at boot: scripts/apt-install.sh --disable), and its
supervisord is started on its system config unless it runs already; it is stopped again at
the end if this test started it.

Real clients log in (fetchmail over POP3S, getmail6 over IMAPS, as tests/stack/test_real_clients.py
runs them; imaplib/poplib over STARTTLS/STLS), /metrics is scraped, the workers are checked to
run as carbotui with CAP_NET_BIND_SERVICE only, logrotate rotates and the node reopens its
logs, and `make uninstall` leaves no process of /opt/carbotui and no file but /etc/carbotui
and /var/log/carbotui. The systemd units are checked with `systemd-analyze verify` (no
systemd runs here to start them).

An admin's files are not touched: /etc/carbotui and /var/log/carbotui are saved first
(/var/tmp/carbotui-install-test) and put back as they were at the end. A run that died
half-way is cleaned up by the next one (it finds the saved copy). A node installed by
someone else (/opt/carbotui without that copy) makes the test fail rather than remove it.
"""
from __future__ import annotations

import imaplib
import json
import os
import poplib
import re
import shutil
import socket
import ssl
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from tests.stack import test_real_clients as clients
from tests.stack.conftest import CA, REPO, Memcached, wait_for
# the real-clients test's fixtures: messages seeded at Dovecot and removed again, getmail's home
from tests.stack.test_real_clients import folder, getmail_home, inbox  # noqa: F401

VENV = Path("/opt/carbotui")
ETC = Path("/etc/carbotui")
CONFIG = ETC / "carbotui.toml"
LOG_DIR = Path("/var/log/carbotui")
VAR_DIR = Path("/var/lib/carbotui")
RUN_DIR = Path("/run/carbotui")
SAVED = Path("/var/tmp/carbotui-install-test")
SUPERVISOR_CONF = Path("/etc/supervisor/conf.d/carbotui.conf")
SUPERVISORCTL = ["supervisorctl", "-c", "/etc/supervisor/supervisord.conf"]
UNIT_DIR = Path("/usr/local/lib/systemd/system")
INSTALLED_FILES = [VENV, Path("/usr/local/bin/carbotui"), SUPERVISOR_CONF,
                   UNIT_DIR / "carbotui-proxy@.service", UNIT_DIR / "carbotui-auditwatch.service",
                   UNIT_DIR / "carbotui-metrics.service", UNIT_DIR / "carbotui.target",
                   Path("/usr/local/lib/tmpfiles.d/carbotui.conf"),
                   Path("/etc/logrotate.d/carbotui"), VAR_DIR, RUN_DIR]
SEED_PORTS = {"imap": 143, "imaps": 993, "pop3": 110, "pop3s": 995, "http": 80, "https": 443}
METRICS = ("127.0.0.1", 19101)
NODE_ID = "install-test"
WORKERS = len(os.sched_getaffinity(0))     # what nproc (make install) counts
# the first test sets the node up: apt-get (supervisor, logrotate) the first time on a
# machine, pip, and the clean-up of a run that died half-way
pytestmark = pytest.mark.timeout(300)
# the template's ADMIN lines, filled in with the demo's services
TEST_CONFIG = """\
# the install test's node (tests/install/test_install.py): the installed template with the
# admin's values filled in
include = "/opt/carbotui/share/carbotui.toml.example"

[node]
name = "proxy.demo.test"
id = "{node_id}"

[listen]
{listen}

[tls]
certificate = "tls/proxy.crt"
private_key = "tls/proxy.key"

[metrics]
listen = "{metrics}"

[memcached]
servers = ["127.0.0.1:12211"]

[ldap]
url = "ldap://127.0.0.1:10389"
base = "o=carbotui"
lookup_bind_dn = "cn=proxy,o=carbotui"
lookup_password_file = "ldap-lookup.secret"

[hosts]
"mbox1.demo.test" = "127.0.0.1"
"mbox2.demo.test" = "127.0.0.2"

[mail]
auth_wait = 1

[throttle]
whitelist = ["127.0.0.1/32"]
"""


CARBOTUI = "/usr/local/bin/carbotui"
# an admin's shell: no CARBOTUI_CONFIG, so the installed command reads /etc/carbotui
ENV = {k: v for k, v in os.environ.items() if k != "CARBOTUI_CONFIG"}
# The wheel built as Python: mypyc's compile of the per-session modules would add ~2 minutes
# to each of the two builds here (first install, upgrade); the compiled code itself is what
# the rest of the suite runs (`make compiled`), and the compiled wheel's contents were checked
# by building it from the same copy of the tree (scripts/install.sh: setup.py, mypyc.ini).
ENV["CARBOTUI_PURE"] = "1"


def run(cmd, timeout=300, ok=(0,), **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL, env=ENV, **kw)
    assert proc.returncode in ok, (f"{' '.join(map(str, cmd))} exited {proc.returncode}\n"
                                   f"--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}")
    return proc


def port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def installed_processes() -> dict[int, str]:
    """pid -> command line of every process running the installed code."""
    out = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if cmd[0].startswith(str(VENV).encode() + b"/"):
            out[int(proc.name)] = b" ".join(cmd).decode(errors="replace")
    return out


def status(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return dict(line.split(":\t", 1) for line in lines if ":\t" in line)


def supervisord_pid() -> int:
    proc = subprocess.run([*SUPERVISORCTL, "pid"], capture_output=True, text=True, timeout=30)
    out = proc.stdout.strip()
    return int(out) if proc.returncode == 0 and out.isdigit() else 0


def mode_owner(path: Path) -> str:
    st = path.stat()
    import grp
    import pwd
    return (f"{st.st_mode & 0o7777:04o} {pwd.getpwuid(st.st_uid).pw_name}:"
            f"{grp.getgrgid(st.st_gid).gr_name}")


# --- saving and restoring what an admin may have ------------------------------------------

SUPERVISOR_LOGS = Path("/var/log/supervisor")
ADMIN_DIRS = {"etc": ETC, "log": LOG_DIR}     # saved under SAVED by these names


def save_admin_files() -> None:
    SAVED.mkdir(mode=0o700)
    for name, path in ADMIN_DIRS.items():
        if path.exists():
            shutil.copytree(path, SAVED / name, symlinks=True)
        else:
            (SAVED / f"{name}.absent").touch()
    # the programs' output that supervisord keeps: the test's own is removed again
    (SAVED / "supervisor-logs.json").write_text(
        json.dumps(sorted(p.name for p in SUPERVISOR_LOGS.glob("carbotui-*"))))


def restore_admin_files() -> None:
    listed = SAVED / "supervisor-logs.json"
    if listed.exists():
        keep = set(json.loads(listed.read_text()))
        for log in SUPERVISOR_LOGS.glob("carbotui-*"):
            if log.name not in keep:
                log.unlink()
    for name, path in ADMIN_DIRS.items():
        if (SAVED / name).exists() or (SAVED / f"{name}.absent").exists():
            shutil.rmtree(path, ignore_errors=True)
        if (SAVED / name).exists():
            shutil.copytree(SAVED / name, path, symlinks=True)
    shutil.rmtree(SAVED)


def stop_supervisord(pid: int) -> None:
    subprocess.run([*SUPERVISORCTL, "shutdown"], capture_output=True, timeout=120)
    wait_for(lambda: not Path(f"/proc/{pid}").exists(), 60, what="supervisord to exit")


def clean_up(tree: Path | None) -> None:
    """Uninstall with the saved tree's script (or the checkout's) and put the admin's files
    back: what a run leaves, whether it passed or died half-way."""
    script = (tree if tree and tree.exists() else REPO) / "scripts/uninstall.sh"
    subprocess.run([str(script)], capture_output=True, timeout=180)
    marker = SAVED / "supervisord.started"
    if marker.exists():
        pid = int(marker.read_text() or 0)
        if pid and Path(f"/proc/{pid}").exists():
            stop_supervisord(pid)
    restore_admin_files()
    memcached = Memcached()
    for i in [*range(WORKERS), SYSTEMD_WORKER]:   # the node's fleet entries (10 s TTL)
        memcached.delete(f"fleet:member:{NODE_ID}/proxy_{i:02d}".encode())


# --- the node -----------------------------------------------------------------------------

class Node:
    """What the fixture did and measured."""
    tree: Path
    ports: dict[str, int]
    first: subprocess.CompletedProcess
    first_seconds: float
    template_check: subprocess.CompletedProcess
    second: subprocess.CompletedProcess
    second_seconds: float
    config_before_second: bytes
    venv_mtime: float
    started_supervisord: bool


def make(node: Node, target: str) -> tuple[subprocess.CompletedProcess, float]:
    start = time.monotonic()
    proc = run(["make", "-C", str(node.tree), target], timeout=600)
    return proc, time.monotonic() - start


def snapshot(dest: Path) -> Path:
    tree = dest / "carbotui-src"
    tree.mkdir()
    for name in ("Makefile", "pyproject.toml", "setup.py", "mypyc.ini", "README.md"):
        shutil.copy2(REPO / name, tree / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("carbotui", "scripts", "etc"):
        shutil.copytree(REPO / name, tree / name, ignore=ignore)
    return tree


def admin_config(ports: dict[str, int]) -> str:
    listen = "\n".join(f'{kind} = ["127.0.0.1:{port}"]' for kind, port in ports.items())
    return TEST_CONFIG.format(node_id=NODE_ID, listen=listen,
                              metrics=f"{METRICS[0]}:{METRICS[1]}")


def play_the_admin(ports: dict[str, int]) -> None:
    """Fill in /etc/carbotui as the README says: certificate and key, the lookup secret,
    the settings; the private files 0640 root:carbotui."""
    import grp
    gid = grp.getgrnam("carbotui").gr_gid
    (ETC / "tls").mkdir(mode=0o750, exist_ok=True)
    os.chown(ETC / "tls", 0, gid)
    files = [(REPO / "var/certs/default.crt", ETC / "tls/proxy.crt", 0o644),
             (REPO / "var/certs/default.key", ETC / "tls/proxy.key", 0o640),
             (REPO / "var/ldap/proxy.secret", ETC / "ldap-lookup.secret", 0o640)]
    for src, dst, mode in files:
        shutil.copyfile(src, dst)
        os.chown(dst, 0, gid)
        os.chmod(dst, mode)
    CONFIG.write_text(admin_config(ports))


@pytest.fixture(scope="module")
def node(tmp_path_factory, stack_services) -> Node:
    if os.geteuid() != 0:
        pytest.fail("make install needs root: run the suite as root (make test)", pytrace=False)
    if SAVED.exists():                       # a run that died half-way: undo it first
        clean_up(None)
    if VENV.exists():
        pytest.fail(f"{VENV} exists and was not installed by this test: a real node is "
                    "installed here; not touching it", pytrace=False)
    busy = [port for port in list(SEED_PORTS.values()) + [METRICS[1]] if not port_free(port)]
    if METRICS[1] in busy:
        pytest.fail(f"127.0.0.1:{METRICS[1]} is taken; the installed node's metrics need it",
                    pytrace=False)
    node = Node()
    node.ports = {kind: (port if port not in busy else 30000 + port)
                  for kind, port in SEED_PORTS.items()}
    if busy:
        print(f"seed ports taken on 127.0.0.1: {busy}; using {node.ports}")
    # Debian's supervisor (and logrotate), never started as a boot service here
    run([str(REPO / "scripts/apt-install.sh"), "--disable", "supervisor", "supervisor",
         "logrotate"], timeout=600)
    node.tree = snapshot(tmp_path_factory.mktemp("install"))
    save_admin_files()
    try:
        node.first, node.first_seconds = make(node, "install")
        node.template_check = run([CARBOTUI, "check"], ok=(1,), cwd="/")
        play_the_admin(node.ports)
        node.config_before_second = CONFIG.read_bytes()
        node.venv_mtime = (VENV / ".carbotui-source").stat().st_mtime
        node.second, node.second_seconds = make(node, "install")
        print(f"make install: first {node.first_seconds:.1f} s, "
              f"second {node.second_seconds:.1f} s")
        pid = supervisord_pid()
        node.started_supervisord = not pid
        if pid:
            run([*SUPERVISORCTL, "update", "carbotui", "carbotui-metrics"])
        else:
            run(["/usr/bin/supervisord", "-c", "/etc/supervisor/supervisord.conf"])
            pid = wait_for(supervisord_pid, 30, what="the system supervisord")
            (SAVED / "supervisord.started").write_text(str(pid))
        wait_until_serving(node)
    except BaseException:
        clean_up(node.tree)
        raise
    yield node
    if SAVED.exists():                        # the uninstall test did not get there
        clean_up(node.tree)


def wait_until_serving(node: Node) -> None:
    def serving():
        socks = list(RUN_DIR.glob("proxy_*.sock"))
        ports = all(not port_free(p) for p in node.ports.values())
        return len(socks) == WORKERS and ports
    try:
        wait_for(serving, 60, 0.2, what="the installed node's workers and ports")
    except AssertionError:
        out = subprocess.run([*SUPERVISORCTL, "status"], capture_output=True, text=True)
        logs = "".join(f"--- {p}\n{p.read_text()[-2000:]}"
                       for p in Path("/var/log/supervisor").glob("carbotui-*.log"))
        raise AssertionError(f"node not serving\n{out.stdout}\n{logs}")


def tls() -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(CA))


def audit_lines() -> list[str]:
    path = LOG_DIR / "audit.log"
    return path.read_text(errors="replace").splitlines() if path.exists() else []


# --- the tests, in order -------------------------------------------------------------------

def test_make_install_puts_the_node_in_the_systems_places(node):
    out = node.first.stdout
    assert "install: new settings in /etc/carbotui/carbotui.toml" in out, out
    for path in INSTALLED_FILES:
        assert path.exists(), path
    assert mode_owner(ETC) == "0750 root:carbotui"
    assert mode_owner(CONFIG) == "0640 root:carbotui"
    for path in (VAR_DIR, LOG_DIR, RUN_DIR):
        assert mode_owner(path) == "0750 carbotui:carbotui", path
    # Debian's python3, not one under /root the carbotui user could not run
    assert os.path.realpath(VENV / "bin/python").startswith("/usr/bin/python3")
    assert "The `carbotui` command." in run([CARBOTUI, "--help"], cwd="/").stdout
    # the wheel, not the checkout: the code imported is the one under /opt
    where = run([str(VENV / "bin/python"), "-c", "import carbotui; print(carbotui.__file__)"],
                cwd="/")
    assert where.stdout.startswith(str(VENV) + "/lib/"), where.stdout
    # one worker per core in the supervisor file, the units for systemd
    conf = SUPERVISOR_CONF.read_text()
    assert f"numprocs={WORKERS}\n" in conf and "--user carbotui" in conf
    assert "user=carbotui" in conf.split("[program:carbotui-auditwatch]")[1]
    target = (UNIT_DIR / "carbotui.target").read_text()
    assert all(f"carbotui-proxy@{i}.service" in target for i in range(WORKERS))


def test_the_template_names_what_the_admin_must_fill_in(node):
    problems = node.template_check.stderr.splitlines()
    assert [p.split(": ", 1)[1] for p in problems] == [
        f"{key}: required setting is missing"
        for key in ("node.name", "tls.certificate", "tls.private_key", "ldap.url", "ldap.base")]
    # with the admin's values, the same template passes
    assert "OK (node proxy.demo.test" in run([CARBOTUI, "check"], cwd="/").stdout
    # and nothing was started on the incomplete file
    assert "nothing started" in node.first.stdout


def test_a_second_make_install_changes_nothing_and_keeps_the_admins_config(node):
    assert "install: nothing to do: already installed from this tree" in node.second.stdout, \
        node.second.stdout
    assert "kept /etc/carbotui/carbotui.toml" in node.second.stdout
    assert "wrote" not in node.second.stdout and "building" not in node.second.stdout
    assert CONFIG.read_bytes() == node.config_before_second
    assert (VENV / ".carbotui-source").stat().st_mtime == node.venv_mtime
    assert node.second_seconds < 30


def test_a_bad_worker_count_is_refused_before_anything_is_touched(node):
    conf = SUPERVISOR_CONF.read_bytes()
    proc = subprocess.run(["make", "-C", str(node.tree), "install"], capture_output=True,
                          text=True, timeout=60, env={**ENV, "CARBOTUI_WORKERS": "0"})
    assert proc.returncode != 0
    assert "install: CARBOTUI_WORKERS must be a positive number, got '0'" in proc.stdout
    assert SUPERVISOR_CONF.read_bytes() == conf and CONFIG.read_bytes() == node.config_before_second


def test_the_systemd_units_verify(node):
    # no systemd runs here: the unit files' syntax, directives and ExecStart binaries
    proc = subprocess.run(["systemd-analyze", "verify", "--man=no",
                           *[str(UNIT_DIR / n) for n in ("carbotui-proxy@0.service",
                                                         "carbotui-auditwatch.service",
                                                         "carbotui-metrics.service",
                                                         "carbotui.target")]],
                          capture_output=True, text=True, timeout=60)
    # messages about the machine (no systemd as PID 1, /etc units it cannot load) are not
    # about our files; any line naming one of ours is
    ours = [line for line in proc.stderr.splitlines() if "carbotui" in line]
    assert ours == [] and proc.returncode == 0, proc.stderr


def test_the_workers_run_as_carbotui_not_root(node):
    procs = installed_processes()
    workers = [pid for pid, cmd in procs.items() if " -m carbotui.proxy " in cmd]
    others = [pid for pid, cmd in procs.items() if " -m carbotui.admin." in cmd]
    assert len(workers) == WORKERS, procs
    assert len(others) == 2, procs                   # auditwatch and the metrics exporter
    import pwd
    carbotui = pwd.getpwnam("carbotui").pw_uid
    for pid in workers + others:
        st = status(pid)
        uids = [int(x) for x in st["Uid"].split()]
        gids = [int(x) for x in st["Gid"].split()]
        groups = [int(x) for x in st["Groups"].split()]
        assert uids == [carbotui] * 4, (procs[pid], st["Uid"])
        assert 0 not in gids + groups, (procs[pid], st["Gid"], st["Groups"])
        caps = int(st["CapEff"], 16)
        # workers: CAP_NET_BIND_SERVICE (ports below 1024) and nothing else; the others none
        assert caps == (1 << 10 if pid in workers else 0), (procs[pid], st["CapEff"])


def unit_service_section(name: str) -> dict[str, str]:
    """The [Service] keys of an installed unit file (one value per key: these have one)."""
    out, section = {}, ""
    for line in (UNIT_DIR / name).read_text().splitlines():
        line = line.strip()
        if line.startswith("["):
            section = line
        elif section == "[Service]" and "=" in line and not line.startswith("#"):
            key, _, value = line.partition("=")
            out[key] = value
    return out


SYSTEMD_WORKER = 9           # an index no supervisor worker has


def test_a_worker_started_as_the_systemd_unit_says_binds_beside_the_others(node):
    """No systemd runs here, so the unit's way is played with setpriv: its User, Group,
    AmbientCapabilities, CapabilityBoundingSet, NoNewPrivileges and ExecStart, as read from
    the installed carbotui-proxy@.service. Started unprivileged with the one capability,
    the worker must bind the seed's ports (SO_REUSEPORT beside the supervisor workers, which
    run as the same user) and serve its stats socket."""
    unit = unit_service_section("carbotui-proxy@.service")
    assert (unit["User"], unit["Group"]) == ("carbotui", "carbotui")
    assert unit["AmbientCapabilities"] == unit["CapabilityBoundingSet"] == "CAP_NET_BIND_SERVICE"
    assert unit["NoNewPrivileges"] == "yes"
    argv = unit["ExecStart"].replace("%i", str(SYSTEMD_WORKER)).split()
    proc = subprocess.Popen(
        ["setpriv", "--reuid=carbotui", "--regid=carbotui", "--init-groups",
         "--inh-caps=-all,+net_bind_service", "--ambient-caps=+net_bind_service",
         "--bounding-set=-all,+net_bind_service", "--no-new-privs", *argv],
        cwd=unit["WorkingDirectory"], env={"PATH": "/usr/bin:/bin", "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        sock = RUN_DIR / f"proxy_{SYSTEMD_WORKER:02d}.sock"
        wait_for(lambda: sock.exists() or proc.poll() is not None, 30, 0.1,
                 what="the systemd-style worker's stats socket")
        assert proc.poll() is None, proc.stdout.read().decode(errors="replace")
        st = status(proc.pid)
        import pwd
        assert [int(x) for x in st["Uid"].split()] == [pwd.getpwnam("carbotui").pw_uid] * 4
        assert int(st["CapEff"], 16) == 1 << 10 and int(st["CapBnd"], 16) == 1 << 10
        assert st["NoNewPrivs"].strip() == "1"
        listening = run(["ss", "-Hltnp", "sport", "=", f":{node.ports['imaps']}"]).stdout
        assert f"pid={proc.pid}," in listening, listening
    finally:
        proc.terminate()
        out = proc.communicate(timeout=60)[0].decode(errors="replace")
    assert proc.returncode == 0, out


def test_real_clients_log_in_over_imaps_and_pop3s(node, monkeypatch, tmp_path, inbox, folder,
                                                  getmail_home):
    monkeypatch.setattr(clients, "PORTS", node.ports)
    before = len(audit_lines())
    # fetchmail over POP3S (993's neighbour 995), keeping the mail
    pop_user = "user17@demo.test"
    stored = clients.make_messages("install-pop3s")
    inbox(pop_user, stored[:1])
    rc = clients.fetchmailrc(tmp_path, pop_user, "pop3s", "uidl", "keep")
    clients.fetchmail(tmp_path, rc)
    on_server = [m for _, _, m in clients.server_messages(pop_user, "INBOX")]
    assert clients.delivered(tmp_path) == [clients.as_lf(m) for m in on_server]
    # getmail6 over IMAPS, a folder of its own
    imap_user = "user18@demo.test"
    home, drop = getmail_home
    name = folder(imap_user, stored)
    out = clients.getmail(home, drop, "imaps", imap_user, f'mailboxes = ("{name}",)',
                          "read_all = true\ndelete = false")
    assert "3 messages" in out.stdout and "retrieved" in out.stdout, out.stdout
    assert clients.getmail_delivered(home) == sorted(clients.as_lf(m) for m in stored)
    # the node's own audit.log has the logins, with the installed node's listeners
    lines = wait_for(lambda: [l for l in audit_lines()[before:] if "protocol=" in l] or None,
                     10, what="audit lines")
    wait_for(lambda: any(f"account={pop_user}; protocol=pop3;" in l for l in audit_lines()[before:])
             and any(f"account={imap_user}; protocol=imap;" in l for l in audit_lines()[before:]),
             10, what=f"{pop_user} and {imap_user} in /var/log/carbotui/audit.log")
    assert all("error=" not in l for l in audit_lines()[before:]), lines


def test_starttls_and_stls_on_the_plain_ports(node):
    imap = imaplib.IMAP4("127.0.0.1", node.ports["imap"], timeout=15)
    try:
        imap.starttls(tls())
        assert imap.login("user17@demo.test", clients.PASSWORD)[0] == "OK"
        assert imap.select("INBOX", readonly=True)[0] == "OK"
    finally:
        imap.logout()
    pop = poplib.POP3("127.0.0.1", node.ports["pop3"], timeout=15)
    try:
        pop.stls(tls())
        pop.user("user18@demo.test")
        assert pop.pass_(clients.PASSWORD).startswith(b"+OK")
        assert pop.stat()[0] >= 1
    finally:
        pop.quit()


def test_https_answers_on_443(node):
    with socket.create_connection(("127.0.0.1", node.ports["https"]), timeout=10) as raw:
        with tls().wrap_socket(raw, server_hostname="localhost") as s:
            s.sendall(b"GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            reply = b""
            while chunk := s.recv(65536):
                reply += chunk
    assert re.match(rb"HTTP/1\.1 [2-5]\d\d ", reply), reply[:200]


def test_metrics_are_scraped(node):
    url = f"http://{METRICS[0]}:{METRICS[1]}/metrics"
    with urllib.request.urlopen(url, timeout=10) as reply:
        assert reply.status == 200
        assert reply.headers["Content-Type"].startswith("text/plain")
        text = reply.read().decode()
    ok = [l for l in text.splitlines()
          if l.startswith("carbotui_logins_total{") and 'result="ok"' in l]
    assert ok and sum(float(l.rsplit(" ", 1)[1]) for l in ok) >= 2, text[:3000]


def test_logrotate_rotates_and_the_node_reopens_its_logs(node, tmp_path):
    workers_before = {pid for pid, cmd in installed_processes().items() if "carbotui.proxy" in cmd}
    run(["logrotate", "-f", "-s", str(tmp_path / "state"), "/etc/logrotate.d/carbotui"])
    assert (LOG_DIR / "audit.log.1").exists()
    assert mode_owner(LOG_DIR / "audit.log.1").endswith("carbotui:carbotui")

    def login() -> None:
        with imaplib.IMAP4_SSL("127.0.0.1", node.ports["imaps"], ssl_context=tls(),
                               timeout=15) as c:
            assert c.login("user19@demo.test", clients.PASSWORD)[0] == "OK"

    def in_new_log() -> int:
        return sum("account=user19@demo.test; protocol=imap;" in l for l in audit_lines())

    def login_lands():
        login()
        return in_new_log()
    wait_for(login_lands, 20, 0.2, what="a login written to the new audit.log")
    # from now on no worker writes to the rotated file: each new session lands (on any
    # worker) in the new one
    rotated = (LOG_DIR / "audit.log.1").stat().st_size
    seen = in_new_log()
    for _ in range(4 * WORKERS):
        login()
    wait_for(lambda: in_new_log() == seen + 4 * WORKERS, 10, what="every login in audit.log")
    assert (LOG_DIR / "audit.log.1").stat().st_size == rotated
    assert mode_owner(LOG_DIR / "audit.log") == "0640 carbotui:carbotui"
    # SIGUSR1 reopened the files; it did not stop (or restart) a worker
    workers_after = {pid for pid, cmd in installed_processes().items() if "carbotui.proxy" in cmd}
    assert workers_after == workers_before


def test_make_install_of_new_code_restarts_the_workers_one_by_one(node):
    """An upgrade: the tree changes, `make install` rebuilds the code and restarts each
    worker on it (the service file is the same); the settings stay; the node serves."""
    init = node.tree / "carbotui/__init__.py"
    init.write_text(init.read_text() + "\n# upgraded by the install test\n")
    before = {pid for pid, cmd in installed_processes().items() if "carbotui.proxy" in cmd}
    out, seconds = make(node, "install")
    print(f"make install of new code: {seconds:.1f} s")
    assert "install: code installed" in out.stdout, out.stdout
    assert "restarted the node on the new code" in out.stdout, out.stdout
    assert "wrote" not in out.stdout                     # no file but the code changed
    assert CONFIG.read_bytes() == node.config_before_second
    after = {pid for pid, cmd in installed_processes().items() if "carbotui.proxy" in cmd}
    assert len(after) == WORKERS and not before & after
    code = (VENV / "lib").glob("python3*/site-packages/carbotui/__init__.py")
    assert "upgraded by the install test" in next(code).read_text()
    wait_until_serving(node)
    with imaplib.IMAP4_SSL("127.0.0.1", node.ports["imaps"], ssl_context=tls(),
                           timeout=15) as c:
        assert c.login("user17@demo.test", clients.PASSWORD)[0] == "OK"


def test_make_uninstall_leaves_only_the_settings_and_the_logs(node):
    out, seconds = make(node, "uninstall")
    print(f"make uninstall: {seconds:.1f} s")
    assert "uninstall: done; kept /etc/carbotui /var/log/carbotui" in out.stdout, out.stdout
    assert installed_processes() == {}
    for path in INSTALLED_FILES:
        assert not path.exists(), path
    assert CONFIG.read_bytes() == node.config_before_second
    assert (LOG_DIR / "audit.log").exists()
    assert all(port_free(p) for p in node.ports.values())
    # supervisord has forgotten the programs, and a second uninstall finds nothing
    programs = subprocess.run([*SUPERVISORCTL, "status"], capture_output=True, text=True)
    assert "carbotui" not in programs.stdout
    again, _ = make(node, "uninstall")
    assert "uninstall: nothing to remove (not installed)" in again.stdout
    clean_up(node.tree)
    assert not SAVED.exists()
