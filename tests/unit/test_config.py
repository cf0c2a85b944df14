import ast
import dataclasses
import signal
import subprocess
import sys
import time
import typing
from pathlib import Path

import pytest

from carbotui.core import settings as config
from carbotui.core.audit import AuditEvent, AuditLog, failure

BASE = """
[node]
name = "Proxy.Demo.Test"
[listen]
imap = ["127.0.0.1:10143", "[::1]:10143"]
[tls]
certificate = "c.crt"
private_key = "c.key"
[ldap]
url = "ldap://127.0.0.1:10389"
base = "o=carbotui"
"""


def load(tmp_path, text):
    p = tmp_path / "carbotui.toml"
    p.write_text(text)
    return config.load(p)


def test_demo_settings_load():
    s = config.load("carbotui.toml")
    assert s.node_name == "proxy.demo.test"
    assert [str(e) for e in s.listen["imaps"]] == ["127.0.0.1:10993"]
    assert s.hosts["mbox2.demo.test"] == "127.0.0.2"
    assert s.audit_log.name == "audit.log" and s.audit_log.parent.name == "log"


def test_relative_paths_follow_the_file(tmp_path):
    s = load(tmp_path, BASE)
    assert s.tls_certificate == tmp_path / "c.crt"
    assert s.node_name == "proxy.demo.test"
    assert s.listen["imap"][1].host == "::1"
    assert s.mail.auth_wait == 10.0      # Carbonio's default when unset
    # Unlisted kinds take the seed's production ports on IPv4 and IPv6.
    assert [str(e) for e in s.listen["imaps"]] == ["0.0.0.0:993", "[::]:993"]
    assert [str(e) for e in s.listen["https"]] == ["0.0.0.0:443", "[::]:443"]


@pytest.mark.parametrize("extra, key", [
    ('[mail]\nstarttls = "maybe"', "mail.starttls"),
    ('[mail]\nmax_line = 0', "mail.max_line"),
    ('[mail]\nauth_wait = "slow"', "mail.auth_wait"),
    ('[memcached]\nservers = ["nohost"]', "memcached.servers"),
    ('[hosts]\n"mbox1" = "not-an-ip"', "hosts.mbox1"),
    ('[web]\nsend_timeout = 0', "web.send_timeout"),
    ('[web]\nmax_connections_per_ip = -1', "web.max_connections_per_ip"),
    ('[web]\nbody_min_rate = -5', "web.body_min_rate"),
    ('[web]\nlogin_body_limit = 0', "web.login_body_limit"),
    ('[web]\nextend_forwarded_for = "yes"', "web.extend_forwarded_for"),
])
def test_bad_values_name_the_key(tmp_path, extra, key):
    with pytest.raises(config.ConfigError, match=key.replace(".", r"\.")):
        load(tmp_path, BASE + extra)


def test_web_hardening_defaults(tmp_path):
    web = load(tmp_path, BASE).web
    assert (web.send_timeout, web.body_min_rate, web.max_connections_per_ip,
            web.login_body_limit, web.extend_forwarded_for) == (60.0, 500, 1000, 65536, False)
    assert load(tmp_path, BASE + "[web]\nmax_connections_per_ip = 0").web.max_connections_per_ip == 0


def test_bad_listener_and_missing_key(tmp_path):
    with pytest.raises(config.ConfigError, match="listen.imap"):
        load(tmp_path, BASE.replace("127.0.0.1:10143", "127.0.0.1:99999"))
    with pytest.raises(config.ConfigError, match="ldap.base: required"):
        load(tmp_path, BASE.replace('base = "o=carbotui"', ""))
    with pytest.raises(config.ConfigError, match="not valid TOML"):
        load(tmp_path, "[node")


def test_include_merges_tables_and_keeps_paths_relative_to_their_file(tmp_path):
    (tmp_path / "base.toml").write_text(BASE + '[mail]\nauth_wait = 2\nmax_line = 100\n')
    node = tmp_path / "cluster" / "node1.toml"
    node.parent.mkdir()
    node.write_text('include = "../base.toml"\n[node]\nname = "n1"\nvar_dir = "v"\n'
                    '[mail]\nauth_wait = 5\n')
    s = config.load(node)
    assert s.node_name == "n1" and s.var_dir == node.parent / "v"
    assert s.tls_certificate == tmp_path / "c.crt"          # from the base, its folder
    assert s.mail.auth_wait == 5.0 and s.mail.limits.max_line == 100


def test_include_loop_is_an_error(tmp_path):
    (tmp_path / "a.toml").write_text('include = "b.toml"\n')
    (tmp_path / "b.toml").write_text('include = "a.toml"\n')
    with pytest.raises(config.ConfigError, match="include loop"):
        config.load(tmp_path / "a.toml")


def test_proxy_protocol_listeners_and_trusted_networks(tmp_path):
    s = load(tmp_path, BASE.replace('"[::1]:10143"', '"[::1]:10143 proxy_protocol"')
             + '[proxy_protocol]\ntrusted = ["127.0.0.1/32", "fd00::/8"]\ntimeout = 4\n')
    assert [e.proxy_protocol for e in s.listen["imap"]] == [False, True]
    assert str(s.listen["imap"][1]) == "[::1]:10143 proxy_protocol"
    assert len(s.proxy_trusted) == 2 and s.proxy_timeout == 4.0
    with pytest.raises(config.ConfigError, match="unknown listener option"):
        load(tmp_path, BASE.replace('"[::1]:10143"', '"[::1]:10143 ssl"'))
    with pytest.raises(config.ConfigError, match="proxy_protocol.trusted"):
        load(tmp_path, BASE + '[proxy_protocol]\ntrusted = ["nope"]\n')


# -- one model, one loader -------------------------------------------------------------------

ROOT = Path(__file__).resolve().parents[2]
CARBOTUI = ROOT / ".venv" / "bin" / "carbotui"


def model_tables() -> dict[str, list[str]]:
    """Every table of the model and its keys, from config.keys(): a table added to the
    model is covered by the tests below without touching them. [hosts] is one key whose
    value is the whole table (its keys are host names), so it has no keys of its own."""
    tables: dict[str, list[str]] = {"": []}
    for dotted, kind, _default, _mirrors in config.keys():
        parts = dotted.split(".")
        for depth in range(len(parts)):
            table, key = ".".join(parts[:depth]), parts[depth]
            tables.setdefault(table, [])
            if key not in tables[table]:
                tables[table].append(key)
    return tables


def typo(key: str) -> str:
    return key + key[-1]


def test_the_model_has_every_table():
    assert set(model_tables()) == {
        "", "node", "listen", "tls", "memcached", "ldap", "proxy_protocol", "metrics", "mail", "web",
        "throttle", "alerts", "alerts.ipacct", "alerts.acct", "alerts.ip", "alerts.total",
        "alerts.smtp"}


@pytest.mark.parametrize("table", sorted(model_tables()), ids=lambda t: t or "(top)")
def test_a_misspelt_key_is_refused_in_every_table_with_the_closest_known_one(tmp_path, table):
    (tmp_path / "base.toml").write_text(BASE)
    known = model_tables()[table]
    lines = [f"{typo(key)} = 1" for key in known]
    text = 'include = "base.toml"\n' + (f"[{table}]\n" if table else "") + "\n".join(lines)
    (tmp_path / "node.toml").write_text(text + "\n")
    with pytest.raises(config.ConfigError) as caught:
        config.load(tmp_path / "node.toml")
    for key in known:
        dotted = f"{table}.{typo(key)}" if table else typo(key)
        assert f"{dotted}: unknown key (did you mean {key}?)" in caught.value.problems


def test_the_issues_typos_are_refused_and_all_problems_named_at_once(tmp_path):
    extra = '[mail]\npreauth_timeuot = 3\n[web]\nbalanse = "ip-hash"\n[mial]\nx = 1\n'
    with pytest.raises(config.ConfigError) as caught:
        load(tmp_path, BASE + extra)
    assert caught.value.problems == [
        "mial: unknown table (did you mean mail?)",
        "mail.preauth_timeuot: unknown key (did you mean preauth_timeout?)",
        "web.balanse: unknown key (did you mean balance?)"]


def _table_classes(cls=config.Settings):
    for f in dataclasses.fields(cls):
        o = f.metadata.get("opt")
        if o and (o.sub or o.inline):
            sub = typing.get_type_hints(cls)[f.name]
            sub = next((a for a in typing.get_args(sub) if a is not type(None)), sub)
            yield sub
            yield from _table_classes(sub)


@pytest.mark.parametrize("cls", sorted(set(_table_classes()), key=lambda c: c.__name__),
                         ids=lambda c: c.__name__)
def test_an_empty_table_reads_as_the_dataclass_defaults(cls, tmp_path):
    if cls is config.RuleSettings:            # each rule's default is its field's in alerts
        assert config.AlertSettings.from_table({}).rules == config.AlertSettings().rules
        return
    expected = cls()
    if cls is config.SmtpSettings:            # a table with no host is e-mail off
        assert cls.from_table({}) is None
        expected = cls(spool=(tmp_path / "var/spool/alerts").resolve())
        assert cls.from_table({"host": "h", "to": ["a@b.c"], "from": "x@b.c"}, base=tmp_path) \
            == dataclasses.replace(expected, host="h", recipients=("a@b.c",), sender="x@b.c")
        return
    assert cls.from_table({}, base=tmp_path) == expected


def test_a_minimal_file_loads_every_other_key_as_its_declared_default(tmp_path):
    s = load(tmp_path, BASE)
    set_by_base = {"path", "node_name", "listen", "tls_certificate", "tls_private_key",
                   "ldap_urls", "ldap_base"}
    for f in dataclasses.fields(config.Settings):
        if f.name in set_by_base:
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        if f.metadata["opt"].path and default is not None:
            default = tmp_path / default            # relative to the file loaded
        assert getattr(s, f.name) == default, f.name
    assert s.listen.imaps == config.ListenSettings().imaps


def test_no_module_but_the_settings_one_reads_toml():
    """One loader: a second reader of the file (auditwatch had one, without include) would
    show up here."""
    readers = []
    for path in (ROOT / "carbotui").rglob("*.py"):
        tree = ast.parse(path.read_text())
        names = {a.name for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))
                 for a in n.names} | {n.module for n in ast.walk(tree)
                                      if isinstance(n, ast.ImportFrom)}
        if names & {"tomllib", "tomli", "toml"}:
            readers.append(path.relative_to(ROOT).as_posix())
    assert readers == ["carbotui/core/settings.py"]


def test_cluster_node_gets_the_included_alerts_and_throttle_with_paths_from_their_file():
    demo = config.load(ROOT / "carbotui.toml")
    node1 = config.load(ROOT / "etc/cluster/node1.toml")
    assert node1.alerts == demo.alerts and node1.throttle == demo.throttle
    # set in carbotui.toml: relative to it (was etc/cluster/var/log/alerts.log)
    assert node1.alerts.log == ROOT / "var/log/alerts.log"
    assert node1.alerts.smtp.spool == ROOT / "var/spool/alerts"
    assert node1.throttle.user_limit == 20
    # set in node1.toml: relative to it
    assert node1.var_dir == ROOT / "var/cluster/node1"
    assert node1.audit_log == ROOT / "var/cluster/node1/log/audit.log"
    assert node1.tls_certificate == demo.tls_certificate == ROOT / "var/certs/default.crt"


def test_alerts_paths_follow_the_file_that_sets_them_and_empty_means_none(tmp_path):
    base = BASE.replace("[ldap]\n", '[ldap]\nca_file = ""\n') + (
        '[alerts]\nlog = "var/log/alerts.log"\n[alerts.smtp]\nhost = "h"\nfrom = "a@b.c"\n'
        'to = ["a@b.c"]\nspool = "spool"\ntls_ca = "ca.pem"\nusername = "u"\n'
        'password_file = "secret"\n')
    (tmp_path / "base.toml").write_text(base)
    node = tmp_path / "cluster" / "node.toml"
    node.parent.mkdir()
    node.write_text('include = "../base.toml"\n[alerts.smtp]\nport = 2525\n'
                    'password_file = "node.secret"\n')
    s = config.load(node)
    assert s.alerts.log == tmp_path / "var/log/alerts.log"
    smtp = s.alerts.smtp
    assert (smtp.spool, smtp.tls_ca) == (tmp_path / "spool", tmp_path / "ca.pem")
    assert smtp.password_file == node.parent / "node.secret"
    assert (smtp.host, smtp.port) == ("h", 2525)            # sub-tables merge key by key
    assert s.ldap_ca_file is None                           # "" = none (was the folder)
    assert load(tmp_path, BASE + '[alerts]\nlog = ""\n').alerts.log is None


def test_auditwatch_runs_on_what_the_one_loader_reads_through_include(tmp_path):
    """auditwatch used to re-read the node's own file for [alerts] and [throttle], so an
    including node ran with the defaults. Here the base sets them; the node includes it."""
    (tmp_path / "base.toml").write_text(BASE + '[alerts]\nwindow = 7\nlog = "alerts.log"\n'
                                        'poll_interval = 0.05\n[alerts.ip]\nthreshold = 2\n')
    node = tmp_path / "node" / "node.toml"
    (node.parent / "v" / "log").mkdir(parents=True)
    (node.parent / "v" / "run").mkdir()
    node.write_text('include = "../base.toml"\n[node]\nvar_dir = "v"\n')
    audit = node.parent / "v/log/audit.log"
    audit.touch()
    err = tmp_path / "auditwatch.err"
    with open(err, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "carbotui.admin.auditwatch", "--config",
                                 str(node)], cwd=ROOT, stdout=out, stderr=out)
    try:
        _wait(lambda: "watching " in err.read_text(), proc)
        assert "ip=2" in err.read_text() and "window 7 s" in err.read_text()
        log = AuditLog(audit)
        for account in ("a@demo.test", "b@demo.test"):
            log.write(AuditEvent(account=account, protocol="imap", client_ip="192.0.2.9",
                                 proxy_ip="127.0.0.1", error=failure(account, "bad")))
        alerts = tmp_path / "alerts.log"                    # the base's folder: it set it
        _wait(lambda: alerts.exists() and '"rule": "ip"' in alerts.read_text(), proc)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0, err.read_text()


def _wait(condition, proc, seconds: float = 15.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert proc.poll() is None, "auditwatch exited"
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


@pytest.mark.parametrize("path", ["carbotui.toml", "etc/cluster/node1.toml",
                                  "etc/cluster/node2.toml"])
def test_carbotui_check_accepts_the_demo_and_cluster_files(path):
    p = subprocess.run([str(CARBOTUI), "check", "--config", path, "--offline"], cwd=ROOT,
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith(f"{path}: OK") and not p.stderr


def test_carbotui_check_refuses_a_misspelt_key_with_exit_1(tmp_path):
    node = tmp_path / "node.toml"
    node.write_text(f'include = "{ROOT / "etc/cluster/node1.toml"}"\n'
                    '[mail]\npreauth_timeuot = 30\n[throttle]\nuser_limit = -1\n')
    p = subprocess.run([str(CARBOTUI), "check", "--config", str(node)], cwd=ROOT,
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 1 and not p.stdout
    assert p.stderr.splitlines() == [
        f"{node}: mail.preauth_timeuot: unknown key (did you mean preauth_timeout?)",
        f"{node}: throttle.user_limit: must not be negative (0 = off), got -1"]


def test_carbotui_check_lists_the_keys_with_their_carbonio_names():
    p = subprocess.run([str(CARBOTUI), "check", "--keys"], cwd=ROOT, capture_output=True,
                       text=True, timeout=60)
    assert p.returncode == 0
    rows = {line.split()[0]: line for line in p.stdout.splitlines()}
    assert set(rows) >= {d for d, *_ in config.keys()}
    assert rows["throttle.ip_limit"].split()[1:] == ["int", "0", "zimbraReverseProxyIPLoginLimit"]
