"""CalDAV/CardDAV through the web front, with ``curl -X PROPFIND`` and raw sockets:
``/dav/<user>/…`` and ``/principals/users/<user>/…`` reach that user's server; a path a
server could read as another user's (encoded slashes, dot segments) is never routed by
it; DAV's Basic credentials are a login like any other (tests/stack/test_activesync.py
has the brute force, across ActiveSync and DAV)."""
from __future__ import annotations

import pytest

from tests.stack.conftest import PASSWORD
from tests.stack.test_activesync import curl, raw_request, servers_seen, url

pytestmark = pytest.mark.usefixtures("proxy_up")

PROPFIND = ("-X", "PROPFIND", "-H", "Depth: 0", "-H", "Content-Type: application/xml",
            "--data", '<?xml version="1.0"?><propfind xmlns="DAV:"><prop><displayname/>'
                      '</prop></propfind>')


@pytest.mark.parametrize("path, user, server", [
    ("/dav/user02@demo.test/Calendar/", "user02@demo.test", "mbox2"),
    ("/dav/user01@demo.test/Contacts/", "user01@demo.test", "mbox1"),
    ("/principals/users/user02@demo.test/", "user02@demo.test", "mbox2"),
    ("/dav/user02%40demo.test/Calendar/", "user02@demo.test", "mbox2"),
])
def test_propfind_reaches_the_users_server(path, user, server):
    # Before: balanced, so half of a calendar client's requests got a 404 elsewhere.
    for _ in range(6):
        status, headers, body = curl("-u", f"{user}:{PASSWORD}", *PROPFIND, url(path))
        assert (status, headers["x-demo-server"]) == (207, server), body
        assert f"<D:displayname>{user} on {server}</D:displayname>".encode() in body


def test_the_path_routes_even_without_credentials():
    for _ in range(4):
        status, headers, _ = curl(*PROPFIND, url("/dav/user01@demo.test/Calendar/"))
        assert (status, headers["x-demo-server"]) == (401, "mbox1")   # asked by its server


@pytest.mark.parametrize("path", [
    "/dav/..%2Fuser02@demo.test/",
    "/dav/user01@demo.test/../user02@demo.test/",
    "/dav/user01@demo.test/%2e%2e/user02@demo.test/",
    "/dav/user01@demo.test%2F..%2Fuser02@demo.test/",
    "/dav/user01@demo.test%5C..%5Cuser02@demo.test/",
    "/dav/user01%252F..%252Fuser02@demo.test/",
    "/principals/users/./user01@demo.test/",
    "/dav/user01@demo.test;x/",
])
def test_a_dav_path_that_could_name_another_user_is_balanced(path):
    # Routed by its first user segment, user01's server would get a path that resolves to
    # user02's collection: the proxy must not pin it there (nor anywhere by that user).
    seen = servers_seen(lambda: raw_request(path, method="PROPFIND"))
    assert seen == {"mbox1", "mbox2"}, path


def test_curl_normalises_dot_segments_and_gets_the_resolved_users_server():
    # What a real client sends for "../": curl resolves it before sending (RFC 3986
    # §5.2.4), so the request that arrives names user02 alone and is routed by it.
    status, headers, _ = curl("-u", f"user02@demo.test:{PASSWORD}", *PROPFIND,
                              url("/dav/user01@demo.test/../user02@demo.test/"))
    assert (status, headers["x-demo-server"]) == (207, "mbox2")
    # --path-as-is sends it unresolved: balanced, answered by a server, never refused
    status, headers, _ = curl("--path-as-is", "-u", f"user02@demo.test:{PASSWORD}",
                              *PROPFIND, url("/dav/user01@demo.test/../user02@demo.test/"))
    assert status < 500 and headers["x-demo-server"] in ("mbox1", "mbox2")


def test_dav_logins_are_audited_as_http_dav(audit, custom_worker):
    # a worker of its own: its credential cache starts empty, so exactly one login
    port = custom_worker(port_base=31000).ports["https"]
    user = "user18@demo.test"
    for _ in range(5):
        assert curl("-u", f"{user}:{PASSWORD}", *PROPFIND,
                    url(f"/dav/{user}/Calendar/", port), port=port)[0] == 207
    assert curl("-u", f"{user}:nope", *PROPFIND, url(f"/dav/{user}/Calendar/", port),
                port=port)[0] == 401
    audit.wait(f"account={user}; protocol=http_dav; error=", "invalid password")
    ok = [line for line in audit.lines()
          if f"account={user}; protocol=http_dav;" in line and "error=" not in line]
    assert len(ok) == 1                 # once per login, not once per request
