"""M7 and L7 on the running stack: who runs as whom, and who may read what.

The proxy workers, auditwatch, web1/web2 and mailsink face clients: they run as the `carbotui`
user (supervisord.conf, carbotui/proxy/privileges.py). supervisord, slapd and the Dovecot masters stay
root. A worker that supervisord restarts drops root again and binds beside its siblings; a
worker configured on a port below 1024 keeps CAP_NET_BIND_SERVICE and nothing else.
"""
from __future__ import annotations

import json
import os
import poplib
import pwd
import signal
import socket
import ssl
import stat
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import psutil
import pytest

from demo import stack
from carbotui.proxy import privileges
from carbotui.backends.worker_sockets import read_stats_json as read_stats

from .conftest import (CA, PASSWORD, PORTS, REPO, WEB_PORTS, imap_login, port_open,
                       process_pid, supervisorctl, terminate, wait_for)

VAR = REPO / "var"
USER = pwd.getpwnam(stack.SERVICE_USER)
CLIENT_FACING = ["auditwatch", "web1", "web2", "mailsink"]


def workers() -> list[str]:
    return sorted(line.split()[0] for line in supervisorctl("status").splitlines()
                  if line.startswith("proxy:"))


def proc_status(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/status") as f:
        return dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)


def assert_unprivileged(name: str, pid: int, caps: int = 0) -> None:
    p = psutil.Process(pid)
    assert tuple(p.uids()) == (USER.pw_uid,) * 3, f"{name} (pid {pid}) runs with uids {p.uids()}"
    assert tuple(p.gids()) == (USER.pw_gid,) * 3, f"{name} (pid {pid}) runs with gids {p.gids()}"
    st = proc_status(pid)
    assert 0 not in {int(g) for g in st["Groups"].split()}, f"{name} keeps group root"
    assert (int(st["CapEff"], 16), int(st["CapPrm"], 16), int(st["CapAmb"], 16)) == (caps, caps, 0), \
        f"{name} capabilities {st['CapEff']}"


# --- who runs as whom ----------------------------------------------------------------------

def test_every_client_facing_process_runs_as_the_service_user():
    names = workers() + CLIENT_FACING
    assert len(names) > len(CLIENT_FACING), "no proxy worker known to supervisord"
    for name in names:
        pid = process_pid(name)
        assert pid, f"{name} is not running"
        assert_unprivileged(name, pid)          # the demo's ports are all above 1024
    # what drops privileges itself, or must stay the manager, is still root
    assert psutil.Process(stack.supervisord_pid()).uids().real == 0


def test_workers_refuse_new_privileges():
    for name in workers():
        assert proc_status(process_pid(name))["NoNewPrivs"] == "1", name


def test_a_killed_worker_comes_back_unprivileged_and_serves_logins():
    name = workers()[0]
    short = name.split(":")[1]
    old = process_pid(name)
    os.kill(old, signal.SIGKILL)
    new = wait_for(lambda: (p := process_pid(name)) not in (0, old) and p, 20,
                   what=f"supervisord restarting {name}")
    stats_path = VAR / "run" / f"{short}.sock"
    # (started as root, it drops before anything else: by the time it serves stats it has)
    wait_for(lambda: _pid_of(stats_path) == new, 20, what=f"{short}.sock of the new process")
    assert_unprivileged(name, new)
    # It bound every listener again beside its siblings (SO_REUSEPORT, same uid) ...
    def listening() -> set[int]:
        return {c.laddr.port for c in psutil.Process(new).net_connections("tcp")
                if c.status == psutil.CONN_LISTEN}

    wait_for(lambda: listening() >= {*PORTS.values(), *WEB_PORTS.values()}, 20,
             what=f"{name} listening on every port")

    # ... and serves: new connections land on it too (the kernel spreads them); one of its
    # own IMAPS logins must succeed.
    def logged_in_here():
        conn = imap_login("user01@demo.test")
        conn.logout()
        return read_stats(str(stats_path))["logins"]["ok"].get("imap", 0) >= 1

    wait_for(logged_in_here, 60, interval=0, what=f"an IMAPS login served by the restarted {short}")


def _pid_of(stats_path: Path) -> int:
    try:
        return read_stats(str(stats_path))["pid"]
    except (OSError, ValueError):
        return 0


def test_worker_refuses_to_run_when_it_cannot_become_the_user():
    p = subprocess.run([sys.executable, "-m", "carbotui.proxy", "--config", str(REPO / "carbotui.toml"),
                        "--worker", "96", "--user", "no-such-user-carbotui"],
                       cwd=REPO, capture_output=True, text=True, timeout=30)
    assert p.returncode == 1 and "no such user" in p.stderr
    assert not (VAR / "run" / "proxy_96.sock").exists()


# --- a port below 1024: bind with the one capability kept --------------------------------

PRIVILEGED = ("127.0.0.61", 995)


def _free(addr) -> bool:
    with socket.socket() as s:
        try:
            s.bind(addr)
            return True
        except OSError:
            return False


@pytest.fixture
def private_var():
    """A var/ of its own for an extra worker (not the stack's: its stats and audit lines
    would mix with the real workers'), reachable by the service user."""
    top = Path(tempfile.mkdtemp(prefix="carbotui-priv-", dir="/tmp"))
    os.chmod(top, 0o755)
    for sub in ("run", "log"):
        (top / sub).mkdir()
        os.chown(top / sub, USER.pw_uid, USER.pw_gid)
    yield top
    subprocess.run(["rm", "-rf", str(top)], check=False)


def test_a_worker_on_a_privileged_port_binds_it_as_the_service_user(private_var):
    if not _free(PRIVILEGED):
        pytest.skip(f"{PRIVILEGED[0]}:{PRIVILEGED[1]} is taken")
    host = PRIVILEGED[0]
    text = (REPO / "carbotui.toml").read_text()
    # every kind named: one left out would mean the seed's ports on every address
    listen = textwrap.dedent(f"""\
        [listen]
        imap = []
        imaps = ["{host}:20993"]
        pop3 = []
        pop3s = ["{host}:{PRIVILEGED[1]}"]
        http = []
        https = []
        admin = []
        """)
    start, end = text.index("[listen]"), text.index("[tls]")
    text = text[:start] + listen + "\n" + text[end:]
    text = text.replace('var_dir = "var"', f'var_dir = "{private_var}"')
    for key in ("certificate", "private_key", "password_file", "upstream_ca"):
        text = text.replace(f'{key} = "var/', f'{key} = "{REPO}/var/')
    cfg = private_var / "carbotui.toml"
    cfg.write_text(text)
    log = open(private_var / "worker.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "carbotui.proxy", "--config", str(cfg), "--worker", "97",
                             "--user", stack.SERVICE_USER], cwd=REPO, stdout=log,
                            stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: port_open(PRIVILEGED[1], host) or proc.poll() is not None, 20,
                 what=f"the worker listening on {host}:{PRIVILEGED[1]}")
        assert proc.poll() is None, (private_var / "worker.log").read_text()
        assert_unprivileged("worker on port 995", proc.pid, 1 << privileges.CAP_NET_BIND_SERVICE)
        assert {c.laddr for c in psutil.Process(proc.pid).net_connections("tcp")
                if c.status == psutil.CONN_LISTEN} == {(host, 20993), PRIVILEGED}
        ctx = ssl.create_default_context(cafile=str(CA))
        ctx.check_hostname = False          # the demo certificate names 127.0.0.1, not .61
        conn = poplib.POP3_SSL(host, PRIVILEGED[1], context=ctx, timeout=15)
        conn.user("user02@demo.test")
        conn.pass_(PASSWORD)
        assert conn.stat()[0] >= 1          # mbox2's welcome message, through the proxy
        conn.quit()
        sock = private_var / "run" / "proxy_97.sock"
        st = sock.stat()
        assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (USER.pw_uid, USER.pw_gid, 0o660)
        audit = private_var / "log" / "audit.log"
        assert audit.stat().st_uid == USER.pw_uid and "user02@demo.test" in audit.read_text()
        assert "CAP_NET_BIND_SERVICE for port(s) 995" in (private_var / "worker.log").read_text()
    finally:
        terminate(proc, 45)
        log.close()
    assert proc.returncode == 0, (private_var / "worker.log").read_text()
    assert not (private_var / "run" / "proxy_97.sock").exists()   # cleaned up as that user


# --- who may read what ------------------------------------------------------------------

def _readable_by(user: str, paths: list[Path]) -> dict[str, bool]:
    """Which of `paths` `user` can open for reading (tried in a child running as `user`)."""
    code = "import json, sys\nout = {}\nfor p in sys.argv[1:]:\n    try:\n" \
           "        open(p, 'rb').close(); out[p] = True\n    except OSError:\n" \
           "        out[p] = False\nprint(json.dumps(out))"
    pw = pwd.getpwnam(user)
    # the system's python: `user` (nobody) may not reach .venv's in a private checkout, nor
    # an interpreter under /root (demo setup opens those only to the service user, by ACL)
    python = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable
    p = subprocess.run([python, "-c", code, *map(str, paths)], cwd="/", user=pw.pw_uid,
                       group=pw.pw_gid, extra_groups=[], capture_output=True, text=True, timeout=30)
    assert p.returncode == 0, p.stderr
    return {Path(k).name: v for k, v in json.loads(p.stdout).items()}


def test_private_keys_are_root_and_service_user_only():
    keys = sorted((VAR / "certs").glob("*.key"))
    assert {k.name for k in keys} >= {"ca.key", "default.key", "mail.demo.test.key"}
    for key in keys:
        st = key.stat()
        expected = (0, 0, 0o600) if key.name == "ca.key" else (0, USER.pw_gid, 0o640)
        assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == expected, key
    admin = VAR / "ldap" / "admin.secret"           # writes: root's tools only
    st = admin.stat()
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (0, 0, 0o600)
    secret = VAR / "ldap" / "proxy.secret"          # the workers' read-only lookup bind
    st = secret.stat()
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (0, USER.pw_gid, 0o640)
    vhost_keys = sorted((VAR / "run" / "vhosts").glob("*.key"))
    assert vhost_keys, "no worker wrote mail.demo.test's key"
    for key in vhost_keys:
        st = key.stat()
        assert stat.S_IMODE(st.st_mode) == 0o600 and st.st_uid in (0, USER.pw_uid), key
    # the live workers' own copies are theirs
    for name in workers():
        index = int(name.rsplit("_", 1)[1])
        assert (VAR / "run" / "vhosts" / f"demo.test.{index}.key").stat().st_uid == USER.pw_uid
    assert not (VAR / "ldap" / "seed.ldif").exists()     # no second copy of a key
    # what that means, tried: nobody else opens any of them; the service user opens what it
    # serves with, never the CA's key
    everything = [*keys, admin, secret, *vhost_keys]
    assert not any(_readable_by("nobody", everything).values())
    service = _readable_by(stack.SERVICE_USER, [*keys, admin, secret])
    assert service.pop("ca.key") is False and service.pop("admin.secret") is False, service
    assert all(service.values()), service


def test_runtime_folders_and_sockets():
    def owner_mode(path):
        st = os.lstat(path)
        return st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)

    gid, uid = USER.pw_gid, USER.pw_uid
    assert owner_mode(VAR / "run") == (0, gid, 0o1770)
    assert owner_mode(VAR / "log") == (0, gid, 0o750)
    assert owner_mode(VAR / "spool") == (0, gid, 0o750)
    assert owner_mode(VAR / "ldap") == (0, gid, 0o750)
    assert owner_mode(VAR / "ldap" / "slapd.conf")[2] == 0o600
    for d, mode in (("run/vhosts", 0o700), ("spool/alerts", 0o700), ("mailsink", 0o700)):
        assert owner_mode(VAR / d) == (uid, gid, mode), d
    for log in ("audit.log", "alerts.log"):
        assert owner_mode(VAR / "log" / log) == (uid, gid, 0o640), log
    # root's own files there: the service user can neither replace nor remove them
    for name in ("supervisor.sock", "supervisord.pid", "supervisor-workers.conf"):
        assert os.lstat(VAR / "run" / name).st_uid == 0, name
    for name in workers():
        short = name.split(":")[1]
        assert owner_mode(VAR / "run" / f"{short}.sock") == (uid, gid, 0o660), short
        assert owner_mode(VAR / "run" / f"{short}.ctl") == (uid, gid, 0o600), short
    assert _readable_by("nobody", [VAR / "log" / "audit.log"]) == {"audit.log": False}


def test_the_service_user_cannot_touch_roots_runtime_files():
    """var/run is group-writable for the workers' sockets, sticky for root's files."""
    code = textwrap.dedent("""
        import json, os, sys
        run = sys.argv[1]
        out = {}
        for name in ("supervisor.sock", "supervisor-workers.conf", "supervisord.pid"):
            for what, act in (("unlink", lambda p: os.unlink(p)),
                              ("rename", lambda p: os.rename(p, p + ".x"))):
                try:
                    act(os.path.join(run, name)); out[name + " " + what] = "done"
                except OSError:
                    out[name + " " + what] = "refused"
        try:
            open(os.path.join(run, "supervisor-workers.conf"), "a").close()
            out["append"] = "done"
        except OSError:
            out["append"] = "refused"
        for log in ("proxy_00.log.planted", "supervisord.log"):
            try:
                os.symlink("/etc/passwd", os.path.join(run, "..", "log", log))
                out[log] = "done"
            except OSError:
                out[log] = "refused"
        print(json.dumps(out))
    """)
    p = subprocess.run([sys.executable, "-c", code, str(VAR / "run")], cwd="/",
                       user=USER.pw_uid, group=USER.pw_gid, extra_groups=[],
                       capture_output=True, text=True, timeout=30)
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert set(out.values()) == {"refused"}, out


def _supervisord_umask_applies() -> bool:
    pid = stack.supervisord_pid()
    umask = int(proc_status(pid)["Umask"], 8)
    if umask & 0o007 == 0o007:
        return True
    started = psutil.Process(pid).create_time()
    if started < (REPO / "supervisord.conf").stat().st_mtime:
        pytest.skip("supervisord was started before supervisord.conf set umask=027; "
                    "it applies from its next start")
    return False


def test_supervisord_logs_are_not_for_others():
    assert _supervisord_umask_applies(), "supervisord's umask lets others read new logs"
    logs = [p for p in (VAR / "log").iterdir() if p.is_file()]
    assert len(logs) > 5
    open_to_others = [p.name for p in logs if p.stat().st_mode & 0o007]
    assert not open_to_others
    for name in CLIENT_FACING + workers():   # and what the children create
        assert int(proc_status(process_pid(name))["Umask"], 8) & 0o007 == 0o007, name


def test_slapd_conf_is_0600_from_its_creation_and_the_seed_copy_is_gone(tmp_path):
    """make_ldap() into a scratch folder, with the most permissive umask: an audit hook sees
    every chmod by path; none may touch slapd.conf (created 0600, not chmod'ed after)."""
    code = textwrap.dedent("""
        import json, os, sys
        from pathlib import Path
        from demo import stack
        stack.LDAP = Path(sys.argv[1])
        chmods = []
        sys.addaudithook(lambda ev, args: ev == "os.chmod" and not isinstance(args[0], int)
                         and chmods.append(str(args[0])))
        os.umask(0)
        stack.make_ldap()
        conf = stack.LDAP / "slapd.conf"
        print(json.dumps({"chmods": chmods, "mode": oct(os.stat(conf).st_mode & 0o777),
                          "seed": (stack.LDAP / "seed.ldif").exists(),
                          "seeded": (stack.LDAP / "data" / "data.mdb").exists()}))
    """)
    p = subprocess.run([sys.executable, "-c", code, str(tmp_path / "ldap")], cwd=REPO,
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert out["mode"] == "0o600"
    assert not [c for c in out["chmods"] if c.endswith("slapd.conf")], out["chmods"]
    assert out["seeded"] and not out["seed"]
