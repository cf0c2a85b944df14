"""carbotui.core.certs: CA, issuance, PEM round trips, pair and hostname checks."""

import datetime as dt
import ssl
import stat

import pytest

from carbotui.core import certs


@pytest.fixture(scope="module")
def ca():
    return certs.make_ca("carbotui test CA")


@pytest.fixture(scope="module")
def leaf(ca):
    return certs.issue(*ca, ["proxy.demo.test", "*.demo.test", "localhost"], ["127.0.0.1", "::1"], days=30)


def test_ca_is_a_ca(ca):
    cert, key = ca
    assert certs.check_pair(cert, key)
    bc = cert.extensions.get_extension_for_class(certs.x509.BasicConstraints).value
    assert bc.ca and bc.path_length == 0
    assert "carbotui test CA" in certs.describe(cert)["subject"]


def test_leaf_is_signed_by_ca(ca, leaf):
    assert certs.is_signed_by(leaf[0], ca[0])
    other_ca, _ = certs.make_ca("someone else")
    assert not certs.is_signed_by(leaf[0], other_ca)


def test_pem_round_trip(leaf):
    cert, key = leaf
    cert2 = certs.load_cert(certs.cert_to_pem(cert))
    key2 = certs.load_key(certs.key_to_pem(key).decode())  # str accepted too
    assert cert2 == cert
    assert certs.check_pair(cert2, key2)


def test_check_pair_rejects_foreign_key(ca, leaf):
    assert not certs.check_pair(leaf[0], ca[1])


@pytest.mark.parametrize(
    "host, ok",
    [
        ("proxy.demo.test", True),
        ("PROXY.demo.test.", True),        # case and trailing dot do not matter
        ("mail.demo.test", True),          # wildcard
        ("a.b.demo.test", False),          # a wildcard covers exactly one label
        ("demo.test", False),
        ("localhost", True),
        ("127.0.0.1", True),
        ("::1", True),
        ("[::1]", True),
        ("127.0.0.2", False),
        ("example.org", False),
    ],
)
def test_covers(leaf, host, ok):
    assert certs.covers(leaf[0], host) is ok


def _handshake(server_ctx, client_ctx, server_hostname):
    """An in-memory TLS handshake; True when the client accepts the server's certificate."""
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    client = client_ctx.wrap_bio(c_in, c_out, server_hostname=server_hostname)
    server = server_ctx.wrap_bio(s_in, s_out, server_side=True)
    for _ in range(10):
        for end, out, peer_in in ((client, c_out, s_in), (server, s_out, c_in)):
            try:
                end.do_handshake()
            except ssl.SSLWantReadError:
                pass
            except ssl.SSLCertVerificationError:
                return False
            peer_in.write(out.read())
        if client.version() and server.version():
            return True
    raise AssertionError("handshake did not finish")


@pytest.mark.parametrize("host", ["proxy.demo.test", "mail.demo.test", "a.b.demo.test", "127.0.0.1"])
def test_covers_agrees_with_openssl(tmp_path, ca, leaf, host):
    """OpenSSL's own verification (via the ssl module) accepts exactly what covers() accepts."""
    certs.write_pair(*ca, tmp_path / "ca.crt", tmp_path / "ca.key")
    certs.write_pair(*leaf, tmp_path / "s.crt", tmp_path / "s.key")
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(tmp_path / "s.crt", tmp_path / "s.key")
    client = ssl.create_default_context(cafile=str(tmp_path / "ca.crt"))
    assert _handshake(server, client, host) is certs.covers(leaf[0], host)


def test_write_pair_key_is_private(tmp_path, leaf):
    crt, key = tmp_path / "x.crt", tmp_path / "x.key"
    key.write_text("old")
    key.chmod(0o644)
    certs.write_pair(*leaf, crt, key)
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    c, k = certs.read_pair(crt, key)
    assert certs.check_pair(c, k)


def test_expiry_and_describe(leaf):
    left = certs.expires_in(leaf[0])
    assert dt.timedelta(days=29) < left <= dt.timedelta(days=30)
    d = certs.describe(leaf[0])
    assert d["names"] == ["proxy.demo.test", "*.demo.test", "localhost", "127.0.0.1", "::1"]
    assert d["expires_in_days"] in (29, 30)
    assert d["not_after"].endswith("+00:00")


def test_issue_needs_a_name(ca):
    with pytest.raises(ValueError):
        certs.issue(*ca, [], ["127.0.0.1"])
