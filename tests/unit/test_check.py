"""`carbotui check`'s pure parts and the [ldap] url setting: every URL checked, the
certificate verdicts, the /proc socket reading, the probes that need no outside service
(the [tls] pair from files, a memcached port with nothing on it), the time bound."""
from __future__ import annotations

import datetime as dt
import os
import socket
import ssl
import subprocess
import sys
import threading
import time

import pytest

from carbotui.backends import directory
from carbotui.cli import check
from carbotui.core import certs
from carbotui.core import settings as config

CA, CA_KEY = certs.make_ca("test CA")
NOW = dt.datetime.now(dt.timezone.utc)
BASE = """
[node]
name = "proxy.demo.test"
[tls]
certificate = "c.crt"
private_key = "c.key"
[ldap]
base = "o=carbotui"
"""


def load(tmp_path, ldap: str = 'url = "ldap://127.0.0.1:10389"\n', extra: str = ""):
    p = tmp_path / "carbotui.toml"
    p.write_text(BASE.replace("[ldap]\n", "[ldap]\n" + ldap) + extra)
    return config.load(p)


# --- [ldap] url -----------------------------------------------------------------------------

@pytest.mark.parametrize("raw, urls", [
    ('"ldap://127.0.0.1:10389"', ("ldap://127.0.0.1:10389",)),
    ('"ldap://a.example:389 ldap://b.example:389"', ("ldap://a.example:389", "ldap://b.example:389")),
    ('["ldaps://a.example", "ldap://[::1]:389/"]', ("ldaps://a.example", "ldap://[::1]:389")),
    ('"ldapi://%2Frun%2Fslapd%2Fldapi"', ("ldapi://%2Frun%2Fslapd%2Fldapi",)),
    ('"ldapi:///run/slapd/ldapi"', ("ldapi:///run/slapd/ldapi",)),
], ids=["one", "zimbra-spaces", "list-mixed", "ldapi", "ldapi-path"])
def test_url_takes_one_a_list_or_zimbras_space_separated_string(tmp_path, raw, urls):
    s = load(tmp_path, f"url = {raw}\n")
    assert s.ldap_urls == urls and isinstance(s.ldap_urls, config.LdapUrls)
    for url in urls:                   # and ldap3 takes each as it is stored
        server = directory.make_server(s, url)
        assert server.ipc == url.startswith("ldapi:") and server.ssl == url.startswith("ldaps:")
    if urls[0].startswith("ldapi:"):
        assert server.host.replace("//", "/") == "/run/slapd/ldapi"


@pytest.mark.parametrize("raw, message", [
    ('"http://a.example"', "'http://a.example': expected ldap://, ldaps:// or ldapi://"),
    ('"ldap://"', "'ldap://': no host name"),
    ('"ldap://a.example:0"', "port '0' is not in 1..65535"),
    ('"ldap://a.example:x"', "port 'x' is not in 1..65535"),
    ('"ldap://a.example/o=carbotui"', "a DN, attributes or a filter in the URL are not used"),
    ('"ldap://[zz]:389"', "'zz' is not an IPv6 address"),
    ('["ldap://a.example", "ldap://A.example"]', "'ldap://A.example' is listed twice"),
    ('["ldapi://%2Frun%2Fldapi", "ldap://b.example"]', "ldapi:// is this host's own slapd "
                                                        "socket; it cannot be one of several"),
    ('"ldapi:///"', "ldapi:// needs the socket's path"),
    ('[]', "no URL given"),
    ('""', "no URL given"),
    ('3', "expected a URL, a list of URLs or URLs separated by spaces, got 3"),
])
def test_every_url_is_checked_and_the_message_names_it(tmp_path, raw, message):
    with pytest.raises(config.ConfigError) as err:
        load(tmp_path, f"url = {raw}\n")
    assert err.value.problems[0].startswith("ldap.url: ") and message in err.value.problems[0]


def test_start_tls_needs_an_ldap_url_among_them(tmp_path):
    with pytest.raises(config.ConfigError, match="ldap.start_tls: only for an ldap:// url"):
        load(tmp_path, 'url = "ldaps://a.example ldaps://b.example"\nstart_tls = true\n')
    s = load(tmp_path, 'url = "ldap://a.example ldaps://b.example"\nstart_tls = true\n')
    assert s.ldap_start_tls and len(s.ldap_urls) == 2


def test_the_keys_listing_shows_the_url_as_localconfig_ldap_url():
    row = next(r for r in config.keys() if r[0] == "ldap.url")
    assert row[2] == "(required)" and row[3] == "ldap_url (localconfig)"


def test_each_server_gets_its_own_verified_tls(tmp_path):
    ca = tmp_path / "ca.pem"
    ca.write_bytes(certs.cert_to_pem(CA))
    s = load(tmp_path, f'url = "ldaps://a.example:636 ldap://b.example"\nca_file = "{ca}"\n')
    a, b = (directory.make_server(s, u) for u in s.ldap_urls)
    assert a.ssl and a.tls.validate == ssl.CERT_REQUIRED and a.tls.sni == "a.example"
    assert a.tls.ca_certs_file == str(ca) and a.connect_timeout == 5
    assert b.tls is None                         # ldap:// without start_tls: no TLS
    s = load(tmp_path, 'url = "ldap://a.example ldap://b.example"\nstart_tls = true\n'
                       'timeout = 1.5\n')
    servers = [directory.make_server(s, u) for u in s.ldap_urls]
    assert [x.tls.sni for x in servers] == ["a.example", "b.example"]
    assert all(x.tls.context.verify_mode == ssl.CERT_REQUIRED and x.tls.context.check_hostname
               for x in servers)
    assert {x.connect_timeout for x in servers} == {2}     # whole seconds, rounded up


def test_a_missing_ca_file_is_one_line_naming_it(tmp_path):
    s = load(tmp_path, f'url = "ldaps://127.0.0.1:1"\nca_file = "{tmp_path / "none.pem"}"\n')
    assert check.probe_ldap(s) == [check.error(
        f"ldap.ca_file {tmp_path / 'none.pem'}: invalid CA public key file")]


def test_every_dead_server_fails_the_lookup_naming_each(tmp_path):
    s = load(tmp_path, 'url = "ldap://127.0.0.1:1 ldap://127.0.0.1:2"\ntimeout = 1\n')
    d = directory.Directory(s)
    start = time.monotonic()
    with pytest.raises(directory.DirectoryUnavailable) as err:
        d.default_domain()
    assert "ldap://127.0.0.1:1" in str(err.value) and "ldap://127.0.0.1:2" in str(err.value)
    assert time.monotonic() - start < 2 and d.in_use == ""


# --- certificates ---------------------------------------------------------------------------



def test_pair_problems_names_each_fault():
    cert, key = certs.issue(CA, CA_KEY, ["mail.example.test"])
    other_cert, other_key = certs.issue(CA, CA_KEY, ["mail.example.test"])
    assert certs.pair_problems(cert, key, ["mail.example.test"]) == []
    assert certs.pair_problems(cert, other_key) == [
        (True, "the private key does not match the certificate")]
    old, old_key = certs.issue(CA, CA_KEY, ["a.test"], days=1, start=NOW - dt.timedelta(days=3))
    (bad, text), = certs.pair_problems(old, old_key)
    assert bad and text.startswith("expired on ") and "(2 days ago)" in text
    soon, soon_key = certs.issue(CA, CA_KEY, ["a.test"], days=10)
    (bad, text), = certs.pair_problems(soon, soon_key)
    assert not bad and "(in 9 days)" in text           # a warning, not an error
    late, late_key = certs.issue(CA, CA_KEY, ["a.test"], start=NOW + dt.timedelta(days=1))
    assert certs.pair_problems(late, late_key)[0][1].startswith("not valid before ")
    (bad, text), = certs.pair_problems(cert, key, ["mail.example.test", "webmail.example.test"])
    assert bad and text == ("does not cover webmail.example.test "
                            "(it names mail.example.test)")


def _pair(tmp_path, cert, key):
    certs.write_pair(cert, key, tmp_path / "c.crt", tmp_path / "c.key")


def test_the_tls_pair_probe(tmp_path):
    s = load(tmp_path)
    assert check.probe_certificates(s) == [check.error(
        f"tls.certificate: cannot read {tmp_path / 'c.crt'}: No such file or directory")]
    cert, key = certs.issue(CA, CA_KEY, ["proxy.demo.test"])
    _pair(tmp_path, cert, key)
    assert check.probe_certificates(s) == [check.checked("the [tls] certificate")]
    _pair(tmp_path, *certs.issue(CA, CA_KEY, ["other.test"]))
    (line,) = check.probe_certificates(s)
    assert line.level == "error" and "does not cover proxy.demo.test" in line.text
    (tmp_path / "c.key").write_text("not a key")
    (line,) = check.probe_certificates(s)
    assert line.level == "error" and "the private key cannot be read" in line.text


def test_a_certificate_expiring_soon_is_a_warning_only(tmp_path):
    _pair(tmp_path, *certs.issue(CA, CA_KEY, ["proxy.demo.test"], days=5))
    (line,) = check.probe_certificates(load(tmp_path))
    assert line.level == "warning" and str(line).startswith("warning: tls.certificate ")


# --- listeners and /proc ----------------------------------------------------------------------

def test_listening_reads_this_process_own_listeners():
    with socket.socket() as listener, socket.socket(socket.AF_INET6) as six:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        six.bind(("::1", 0))
        six.listen()
        with socket.create_connection(listener.getsockname()):   # not a listener
            bound = check.listening(os.getpid(), check.listening_sockets())
        assert bound == {("127.0.0.1", listener.getsockname()[1]),
                         ("::1", six.getsockname()[1])}


def test_a_process_config_file_is_read_from_its_command_line(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()",
                             "--config", "node.toml"], cwd=tmp_path, stdin=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 10         # until the child has exec'd python
        while check._config_of(proc.pid) is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert check._config_of(proc.pid) == tmp_path / "node.toml"
        assert check._config_of(os.getpid()) is None          # pytest has no --config
    finally:
        proc.communicate(b"", timeout=10)


def test_one_address_for_two_kinds_is_an_error_and_no_worker_means_no_comparison(tmp_path):
    s = load(tmp_path, extra='[listen]\nimap = ["127.0.0.1:143"]\npop3 = ["127.0.0.1:143"]\n')
    lines = check.probe_listeners(s)
    assert check.error("listen.pop3: 127.0.0.1:143 is also listed for imap") in lines
    assert lines[-1] == check.checked("no worker running (listeners not compared)")


# --- memcached, the time bound, the output ----------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_memcached_with_nothing_on_its_port_is_an_error_with_the_reason(tmp_path):
    port = _free_port()
    s = load(tmp_path, extra=f'[memcached]\nservers = ["127.0.0.1:{port}"]\ntimeout = 0.5\n')
    (line,) = check.probe_memcached(s)
    assert line.level == "error" and line.text.startswith(
        f"memcached.servers 127.0.0.1:{port}: unreachable (") and "Connect call failed" in line.text


def test_a_probe_that_hangs_is_one_line_after_the_deadline(tmp_path):
    s = load(tmp_path)
    release = threading.Event()

    def stuck(settings):
        release.wait(30)
        return []

    def broken(settings):
        raise KeyError("x")
    start = time.monotonic()
    try:
        lines = check.run_probes(s, (stuck, broken), within=0.3)
    finally:
        release.set()
    assert time.monotonic() - start < 2
    assert lines == [check.error("stuck: no answer within 0.3s"),
                     check.error("broken: KeyError: 'x'")]


def test_a_toml_syntax_error_is_located_as_file_line_column():
    text = "/etc/carbotui/base.toml: not valid TOML: Illegal character '\\n' (at line 3, column 10)"
    assert check._located("/etc/carbotui/node.toml", text) == \
        "/etc/carbotui/base.toml:3:10: not valid TOML: Illegal character '\\n'"
    assert check._located("n.toml", "ldap.url: no URL given") == "n.toml: ldap.url: no URL given"

