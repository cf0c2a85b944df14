"""Pure helpers of bench/ (the auth_http answers, percentiles, verdicts, wrk parsing)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import authserver  # noqa: E402
import run  # noqa: E402


def test_auth_routes_odd_and_even_users_like_the_demo_ldap():
    assert authserver.route("user01@demo.test", "imap", idle=False) == ("127.0.0.1", 7143)
    assert authserver.route("USER02@demo.test", "pop3", idle=False) == ("127.0.0.2", 7110)
    assert authserver.route("user03@demo.test", "imap", idle=True) == ("127.0.0.31", 7143)
    assert authserver.route("user21@demo.test", "imap", idle=False) is None
    assert authserver.route("user01@demo.test", "smtp", idle=False) is None


def test_auth_answer_follows_nginx_auth_http():
    head = (b"GET /auth HTTP/1.0\r\nHost: 127.0.0.1\r\nAuth-Method: plain\r\n"
            b"Auth-User: user04%40demo.test\r\nAuth-Pass: x\r\nAuth-Protocol: imap\r\n"
            b"Auth-Login-Attempt: 1\r\nClient-IP: 127.0.0.1")
    reply = authserver.answer(head)
    assert b"Auth-Status: OK\r\n" in reply and b"Auth-Server: 127.0.0.2\r\n" in reply
    assert b"Auth-Port: 7143\r\n" in reply and reply.endswith(b"\r\n\r\n")
    idle = authserver.answer(head.replace(b"GET /auth", b"GET /idle"))
    assert b"Auth-Server: 127.0.0.32\r\n" in idle
    bad = authserver.answer(head.replace(b"user04", b"nobody"))
    assert b"Auth-Status: Invalid" in bad and b"Auth-Wait: 1" in bad


def test_percentile_and_verdict():
    values = list(range(1, 101))
    assert run.pct(values, 0.5) == 50 and run.pct(values, 0.99) == 99
    assert run.pct([], 0.5) is None
    assert run.verdict(1.2, ">=", 1.0) == "met" and run.verdict(0.8, ">=", 1.0) == "NOT met"
    assert run.verdict(3.5, "<=", 3.0) == "NOT met" and run.verdict(None, "<=", 1) == "not measured"


def test_wrk_output_parsing_patterns():
    out = """  Latency Distribution
     50%    8.21ms
     75%   12.00ms
     90%   20.00ms
     99%   41.20us
  21436 requests in 3.00s, 3.43MB read
  Socket errors: connect 0, read 12, write 0, timeout 0
"""
    assert run._WRK_N.search(out).groups() == ("21436", "3.00", "s")
    assert run._WRK_LAT.findall(out) == [("50", "8.21", "ms"), ("99", "41.20", "us")]


def test_a_ratio_that_rounds_to_its_threshold_shows_a_third_decimal():
    assert run._value({"value": 0.998, "target": ">= 1.0"}) == "0.998"
    assert run._value({"value": 1.72, "target": "<= 1.0"}) == "1.72"
    assert run._value({"value": 30.22, "target": "<= 40 KB"}) == "30.22"
    assert run._value({"value": None, "target": ">= 1.0"}) == "—"
    assert run._value({"value": 10000, "target": "10000, 0 dropped"}) == "10,000"


def test_the_nginx_reference_logs_as_carbonio_unless_told_not_to(tmp_path):
    # The reference proxy does the logging work carbotui does (Carbonio's access log format,
    # error_log info); --nginx-logs off is the reference as it was before.
    nginx = run.Nginx(run.Procs())
    nginx.prefix = tmp_path
    conf = nginx.write_conf().read_text()
    assert f"access_log {tmp_path}/access.log carbonio;" in conf
    assert f"error_log {tmp_path}/error.log info;" in conf
    assert "log_format carbonio '$remote_addr:$remote_port - $remote_user [$time_local] '" in conf
    assert '"$upstream_addr" "$server_addr:$server_port"' in conf
    nginx.logs = "off"
    conf = nginx.write_conf().read_text()
    assert "access_log off;" in conf and f"error_log {tmp_path}/error.log warn;" in conf
