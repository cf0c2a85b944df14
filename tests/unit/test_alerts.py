"""zmauditswatch rules with explicit timestamps, de-dup/cooldown, [alerts] parsing,
alert JSON and e-mail text. Pure: no files except tmp_path, no network."""
import pytest

from carbotui.services.alerts import AlertLog, AlertSettings, Rules, alert_from_json, compose
from carbotui.core.audit import AuditEvent, failure
from carbotui.core.settings import ConfigError

T0 = 1_700_000_000.0          # in the past: Rules ignores events dated in the future


def fail(ip, account, ts, proto="imap"):
    return AuditEvent(account=account, protocol=proto, client_ip=ip, proxy_ip="10.0.0.1",
                      error=failure(account, "invalid password"), timestamp=ts)


def ok(ip, account, ts):
    return AuditEvent(account=account, protocol="imap", client_ip=ip, timestamp=ts)


def feed_all(rules, events):
    out = []
    for ev in events:
        out += rules.feed(ev)
    return out


def test_defaults_are_carbonios_last_script():
    s = AlertSettings.from_table({})
    assert {r: x.threshold for r, x in s.rules.items()} == {
        "ipacct": 10, "acct": 10, "ip": 20, "total": 100}
    assert s.window == 60 and all(x.block_seconds == 0 for x in s.rules.values())
    assert s.smtp is None and s.log is None and s.command == ()


def test_25_failures_one_ip_several_accounts_fire_only_the_ip_rule():
    rules = Rules(AlertSettings.from_table({}), node="proxy.demo.test")
    accounts = [f"user{i:02d}@demo.test" for i in range(5)]
    events = [fail("203.0.113.5", accounts[i % 5], T0 + i) for i in range(25)]
    alerts = feed_all(rules, events)
    assert [(a.rule, a.key, a.count) for a in alerts] == [("ip", "203.0.113.5", 20)]
    a = alerts[0]
    assert set(a.accounts) == set(accounts) and a.ips == ("203.0.113.5",)
    assert a.first_seen == T0 and a.last_seen == T0 + 19 and a.protocols == ("imap",)
    assert "20 failed logins from 203.0.113.5 against 5 account(s) in 60 s" == a.summary()


def test_ipacct_and_acct_and_total():
    s = AlertSettings.from_table({"total": {"threshold": 30}})
    rules = Rules(s)
    # one IP hammers alice: ipacct (10) and acct (10) fire on the 10th failure
    alerts = feed_all(rules, [fail("198.51.100.1", "alice@demo.test", T0 + i * 0.1)
                              for i in range(10)])
    assert sorted(a.rule for a in alerts) == ["acct", "ipacct"]
    # a distributed attack on bob: 10 IPs, one failure each -> acct only
    alerts = feed_all(rules, [fail(f"192.0.2.{i}", "Bob@demo.test", T0 + 2 + i * 0.1)
                              for i in range(10)])
    assert [(a.rule, a.key) for a in alerts] == [("acct", "bob@demo.test")]
    assert len(alerts[0].ips) == 10
    # 10 more anywhere -> total (30)
    alerts = feed_all(rules, [fail(f"192.0.2.{100 + i}", f"u{i}@demo.test", T0 + 4 + i * 0.1)
                              for i in range(10)])
    assert [a.rule for a in alerts] == ["total"]
    assert alerts[0].count == 30 and alerts[0].key == "*"


def test_successes_do_not_count_and_window_slides():
    rules = Rules(AlertSettings.from_table({"ip": {"threshold": 3}, "window": 60}))
    events = [fail("192.0.2.9", "a@d", T0), ok("192.0.2.9", "a@d", T0 + 1),
              fail("192.0.2.9", "b@d", T0 + 30), fail("192.0.2.9", "c@d", T0 + 61)]
    assert feed_all(rules, events) == []        # the first left the window at T0+60
    alerts = rules.feed(fail("192.0.2.9", "d@d", T0 + 62))
    assert [(a.rule, a.count) for a in alerts] == [("ip", 3)]


def test_cooldown_deduplicates_then_fires_again():
    s = AlertSettings.from_table({"ip": {"threshold": 3}, "window": 60, "cooldown": 120,
                                  "ipacct": {"threshold": 0}, "acct": {"threshold": 0}})
    rules = Rules(s)
    ip = "192.0.2.77"
    first = feed_all(rules, [fail(ip, "a@d", T0 + i) for i in range(50)])   # 50 s of attack
    assert len(first) == 1 and first[0].last_seen == T0 + 2
    quiet = feed_all(rules, [fail(ip, "a@d", T0 + 100 + i) for i in range(20)])
    assert quiet == []                           # still within 120 s of the alert
    again = rules.feed(fail(ip, "a@d", T0 + 123))
    assert [a.rule for a in again] == ["ip"] and again[0].count >= 3


def test_out_of_order_lines_and_old_lines():
    rules = Rules(AlertSettings.from_table({"ip": {"threshold": 2}, "window": 10}))
    assert rules.feed(fail("192.0.2.1", "a@d", T0 + 100)) == []
    assert rules.feed(fail("192.0.2.1", "a@d", T0 + 50)) == []   # before the window: ignored
    assert [a.rule for a in rules.feed(fail("192.0.2.1", "a@d", T0 + 99.5))] == ["ip"]


def test_sweep_forgets_idle_keys():
    rules = Rules(AlertSettings.from_table({"window": 10}))
    feed_all(rules, [fail(f"192.0.2.{i}", f"u{i}@d", T0) for i in range(50)])
    rules.feed(fail("192.0.2.200", "x@d", T0 + 30))
    assert set(rules.windows["ip"]) == {"192.0.2.200"}


def test_block_only_on_ip_rules():
    s = AlertSettings.from_table({"ip": {"threshold": 2, "block_seconds": 600}})
    a = feed_all(Rules(s), [fail("192.0.2.5", "a@d", T0), fail("192.0.2.5", "b@d", T0 + 1)])
    assert a[0].block_ip == "192.0.2.5" and a[0].block_seconds == 600
    with pytest.raises(ConfigError, match=r"alerts\.acct\.block_seconds"):
        AlertSettings.from_table({"acct": {"block_seconds": 60}})


@pytest.mark.parametrize("table, key", [
    ({"window": 0}, "alerts.window"),
    ({"ip": {"threshold": -1}}, "alerts.ip.threshold"),
    ({"ip": {"treshold": 5}}, "alerts.ip.treshold"),
    ({"smtp": {"host": "127.0.0.1", "from": "a@b"}}, "alerts.smtp.to"),
    ({"smtp": {"host": "h", "from": "nobody", "to": ["a@b"]}}, "alerts.smtp.from"),
    ({"smtp": {"host": "h", "from": "a@b", "to": ["a@b"], "port": 0}}, "alerts.smtp.port"),
    ({"smtp": {"host": "h", "from": "a@b", "to": ["a@b"], "username": "u"}},
     "alerts.smtp.password_file"),
    ({"command": "mail -s x"}, "alerts.command"),
    ({"sinks": []}, "alerts.sinks"),
])
def test_bad_settings_name_the_key(table, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        AlertSettings.from_table(table)


def test_paths_relative_to_the_settings_file(tmp_path):
    s = AlertSettings.from_table({"log": "var/log/alerts.log", "smtp": {
        "host": "127.0.0.1", "port": 10025, "from": "aw@demo.test", "to": ["admin@demo.test"]}},
        base=tmp_path)
    assert s.log == tmp_path / "var/log/alerts.log"
    assert s.smtp.spool == tmp_path / "var/spool/alerts" and s.smtp.where == "127.0.0.1:10025"


def _alert():
    rules = Rules(AlertSettings.from_table({"ip": {"threshold": 2}}), node="proxy.demo.test")
    return feed_all(rules, [fail("203.0.113.5", "alice@demo.test", T0),
                            fail("203.0.113.5", "bob@demo.test", T0 + 1.25, "pop3")])[0]


def test_alert_json_round_trip_and_log(tmp_path):
    a = _alert()
    assert alert_from_json(a.to_json()) == a
    AlertLog(tmp_path / "log" / "alerts.log").emit(a)
    AlertLog(tmp_path / "log" / "alerts.log").emit(a)
    lines = (tmp_path / "log" / "alerts.log").read_text().splitlines()
    assert len(lines) == 2 and '"rule": "ip"' in lines[0]


def test_email_names_ip_and_accounts():
    a = _alert()
    s = AlertSettings.from_table({"smtp": {"host": "h", "from": "aw@demo.test",
                                           "to": ["admin@demo.test", "sec@demo.test"]}}).smtp
    msg = compose(a, s)
    assert msg["To"] == "admin@demo.test, sec@demo.test"
    assert "203.0.113.5" in msg["Subject"] and "proxy.demo.test" in msg["Subject"]
    body = msg.get_content()
    assert "alice@demo.test" in body and "bob@demo.test" in body and "imap, pop3" in body
    assert compose(a, s)["Message-ID"] == msg["Message-ID"]       # stable for re-sends


def test_per_account_rules_count_the_canonical_account():
    """M1 on auditwatch's side: case and surrounding or repeated spaces make no new key."""
    rules = Rules(AlertSettings.from_table({"acct": {"threshold": 4}, "ipacct": {"threshold": 4},
                                            "ip": {"threshold": 0}}))
    spellings = ["user01@demo.test", "User01@Demo.Test", " user01@demo.test", "user01@demo.test  "]
    alerts = feed_all(rules, [fail("192.0.2.4", name, T0 + i) for i, name in enumerate(spellings)])
    assert sorted((a.rule, a.key) for a in alerts) == [
        ("acct", "user01@demo.test"), ("ipacct", "192.0.2.4 user01@demo.test")]
    assert alerts[0].accounts == ("user01@demo.test",)
