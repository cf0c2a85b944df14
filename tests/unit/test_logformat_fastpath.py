"""access.log's fast path (one check over all the fields a client controls) writes
exactly the line the field-by-field escaping writes, whatever a client sends."""
from __future__ import annotations

import itertools

import pytest

from carbotui.core import logformat as lf

ARGS = dict(timestamp=1764592803.5, client_ip="127.0.0.1", client_port=50412, scheme="https",
            status=200, bytes_sent=1432, upstream="127.0.0.2:8080", server_ip="::1",
            server_port=10443)


def escaped_line(method, host, target, version, referer, user_agent, remote_user):
    """The line with every field escaped by itself (the rule, written out)."""
    if method is None:
        request = "-"
    else:
        authority, uri = lf.clean_target(target)
        request = (f"{lf.escape(method, lf.METHOD_MAX)} https://"
                   f"{lf.escape(lf.host_name(authority or host), lf.HOST_MAX)}"
                   f"{lf.escape(uri, lf.URI_MAX)} HTTP/{lf.escape(version, 8)}")
    return (f"127.0.0.1:50412 - {lf.escape(remote_user, lf.USER_MAX, space=True)} "
            f"[{lf.time_local(ARGS['timestamp'])}] \"{request}\" 200 1432 "
            f"\"{lf.escape(lf.clean_url(referer), lf.REFERER_MAX)}\" "
            f"\"{lf.escape(user_agent, lf.USER_AGENT_MAX)}\" \"127.0.0.2:8080\" \"[::1]:10443\"\n")


VALUES = [b"", b"plain", b'a"quote', b"back\\slash", b"\x80\xff", b"ctl\x00\r\n", b"sp ace",
          b"x" * 700, b"y" * 2000]


@pytest.mark.parametrize("field", ["method", "host", "target", "version", "referer",
                                   "user_agent", "remote_user"])
@pytest.mark.parametrize("value", VALUES)
def test_each_field_as_the_escaping_writes_it(field, value):
    fields = dict(method=b"GET", host=b"mail.demo.test", target=b"/mail?view=1",
                  version=b"1.1", referer=b"https://mail.demo.test/", user_agent=b"curl/8",
                  remote_user=b"")
    fields[field] = (b"/" + value) if field == "target" else value
    line = lf.access_line(**ARGS, **fields)
    assert line == escaped_line(**fields)
    assert line.count("\n") == 1 and len(line.encode()) < lf.PIPE_BUF


def test_combinations_and_the_unparsed_request():
    for referer, agent in itertools.product(VALUES, repeat=2):
        fields = dict(method=None, host=b"", target=b"", version=b"", referer=referer,
                      user_agent=agent, remote_user=b"")
        assert lf.access_line(**ARGS, **fields) == escaped_line(**fields)
    fields = dict(method=b"GET", host=b"H", target=b"https://u:p@Other.Test:8443/x?zauthtoken=s",
                  version=b"1.1", referer=b"", user_agent=b"", remote_user=b"user01")
    line = lf.access_line(**ARGS, **fields)
    assert line == escaped_line(**fields)
    assert "GET https://other.test/x?zauthtoken=- HTTP/1.1" in line and "u:p" not in line
