"""carbotui/proxy/uvtrack.py: uvloop's transport map as plain weak references.

The map must answer as uvloop's WeakValueDictionary did (a live transport by its
descriptor, KeyError for none or a dead one), never keep a transport alive, and be
the one uvloop uses when the worker imports uvloop through import_uvloop(): checked in
a fresh interpreter, by uvloop's own refusal to add a reader on a descriptor a live
transport owns (the map's one reader).
"""
from __future__ import annotations

import asyncio
import gc
import subprocess
import sys
import textwrap
import weakref

import pytest

from carbotui.proxy import uvtrack
from carbotui.proxy.uvtrack import TransportRefs


class Thing:
    pass


def test_answers_like_a_weak_value_dictionary():
    for m in (TransportRefs(), weakref.WeakValueDictionary()):
        a, b = Thing(), Thing()
        m[7] = a
        m[8] = b
        assert m[7] is a and m[8] is b
        with pytest.raises(KeyError):
            m[9]
        m[7] = b                                # a descriptor number used again
        assert m[7] is b
        del a
        gc.collect()
        ref = weakref.ref(b)
        del b
        gc.collect()
        assert ref() is None                    # the map kept nothing alive
        for fd in (7, 8):
            with pytest.raises(KeyError):
                m[fd]


def test_one_entry_per_descriptor_number():
    m = TransportRefs()
    for _ in range(1000):
        m[5] = Thing()                          # each dies at once; 5 is reused
    assert len(m) == 1
    with pytest.raises(KeyError):
        m[5]


PROBE = textwrap.dedent("""
    import asyncio, gc, json, socket, sys, weakref
    original, original_isfuture = weakref.WeakValueDictionary, asyncio.isfuture
    from carbotui.proxy import uvtrack
    uvloop = uvtrack.import_uvloop()
    out = {"restored": weakref.WeakValueDictionary is original
                       and asyncio.isfuture is original_isfuture}
    loop = uvloop.new_event_loop()
    out["map"] = sorted({type(r).__name__ for r in gc.get_referents(loop)
                         if type(r) in (uvtrack.TransportRefs, weakref.WeakValueDictionary)})

    async def main():
        a, b = socket.socketpair()
        transport, _ = await loop.connect_accepted_socket(asyncio.Protocol, a)
        fd = transport.get_extra_info("socket").fileno()
        try:
            loop.add_reader(fd, lambda: None)
            out["refused"] = False
        except RuntimeError as exc:
            out["refused"] = "used by transport" in str(exc)
        transport.close()
        b.close()
        await asyncio.sleep(0)
        await asyncio.sleep(0)
    loop.run_until_complete(main())

    async def connect():                    # uvloop checks the waiter of each transport
        server = await loop.create_server(asyncio.Protocol, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        calls = []
        sys.setprofile(lambda frame, event, arg: event == "call" and calls.append(
            frame.f_code.co_name))
        transport, _ = await loop.create_connection(asyncio.Protocol, "127.0.0.1", port)
        sys.setprofile(None)
        out["isfuture_calls"] = calls.count("isfuture")
        transport.close()
        server.close()
    loop.run_until_complete(connect())
    del main, connect
    gc.collect()
    c, d = socket.socketpair()              # may take the dead transport's number
    loop.add_reader(c.fileno(), lambda: None)   # no live transport owns it: accepted
    loop.remove_reader(c.fileno())
    loop.close()
    print(json.dumps(out))
""")


def test_uvloop_uses_it_when_imported_through_import_uvloop():
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    result = __import__("json").loads(out.stdout)
    assert result == {"restored": True, "map": ["TransportRefs"], "refused": True,
                      "isfuture_calls": 0}


@pytest.mark.parametrize("obj", [asyncio.Future, "task", object, None, 1, "str"])
def test_is_future_answers_as_asyncio_isfuture(obj):
    loop = asyncio.new_event_loop()
    try:
        if obj is asyncio.Future:
            obj = loop.create_future()
        elif obj == "task":
            obj = loop.create_task(asyncio.sleep(0))
            loop.run_until_complete(obj)
        elif obj is object:
            obj = type("Lookalike", (), {"_asyncio_future_blocking": False})()
        assert uvtrack.is_future(obj) is asyncio.isfuture(obj)
    finally:
        loop.close()


def test_an_earlier_uvloop_import_is_left_alone():
    probe = ("import weakref, uvloop, gc; from carbotui.proxy import uvtrack; "
             "assert uvtrack.import_uvloop() is uvloop; loop = uvloop.new_event_loop(); "
             "print(sorted({type(r).__name__ for r in gc.get_referents(loop) "
             "if isinstance(r, weakref.WeakValueDictionary)}))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "['WeakValueDictionary']"
