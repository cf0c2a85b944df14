"""uvloop's map of file descriptors to transports, without Python code per connection.

uvloop remembers every transport it makes (``Loop._transports``, filled in
``UVBaseTransport._init_protocol``) so that ``add_reader``/``add_writer`` can refuse a
descriptor a live transport owns. The map is a ``weakref.WeakValueDictionary``, whose
``__setitem__`` and the callback that removes a dead entry are Python functions: four
interpreted calls per transport, two transports per mail session — about 8,000
instructions of a ~240,000-instruction IMAP session (callgrind, bench/instructions.py).

uvloop reads the class once, when its ``loop`` module is first imported (``cdef
weakref_WeakValueDictionary = weakref.WeakValueDictionary`` in its stdlib.pxi), and uses
the map only as ``m[fd] = transport`` and ``m[fd]`` (KeyError when there is none).
``import_uvloop()`` imports it with ``weakref.WeakValueDictionary`` standing for
``TransportRefs`` for the length of that import only: a dict of plain weak references
(compiled: no Python call per connection). A dead entry stays until its descriptor
number is used again, so the map holds at most one entry per descriptor number the
worker has had open at once (what the WeakValueDictionary held for live ones).

The same import takes ``asyncio.isfuture`` the same way (``cdef aio_isfuture =
getattr(asyncio, 'isfuture', None)``): uvloop calls it on the waiter of every transport
it makes (``_set_waiter``, once per backend connection), and asyncio's is a Python
function. ``is_future`` is the same test, compiled.

If uvloop was imported before (a test, an embedding program), nothing changes and
uvloop keeps its own map.
"""
from __future__ import annotations

import sys
import weakref
from typing import Any

_ref = weakref.ref


class TransportRefs:
    """fd -> weak reference to a transport; ``m[fd] = t`` and ``m[fd]`` as in a
    WeakValueDictionary (the only two operations uvloop makes on it). A class of its
    own holding a dict, not a dict subclass: compiled, its ``__setitem__`` then stores
    with one C call (a subclass's would go through ``dict.__setitem__`` by name)."""

    def __init__(self) -> None:
        self._refs: dict[Any, Any] = {}

    def __setitem__(self, fd: Any, transport: Any) -> None:
        self._refs[fd] = _ref(transport)

    def __getitem__(self, fd: Any) -> Any:
        transport = self._refs[fd]()
        if transport is None:
            raise KeyError(fd)
        return transport

    def __len__(self) -> int:
        """Entries held, dead ones included (at most one per descriptor number)."""
        return len(self._refs)


def is_future(obj: object) -> bool:
    """asyncio.isfuture (asyncio/base_futures.py), word for word, compiled."""
    return (hasattr(obj.__class__, "_asyncio_future_blocking")
            and getattr(obj, "_asyncio_future_blocking") is not None)


def import_uvloop() -> Any:
    """The uvloop module, its loop module imported with TransportRefs as its transport
    map and is_future as its isfuture if this is its first import (see the module's
    docstring)."""
    if "uvloop.loop" in sys.modules:
        import uvloop
        return uvloop
    # what uvloop's loop module imports beyond itself, first: under the stand-in only
    # uvloop's own modules are imported
    import concurrent.futures.thread  # noqa: F401
    import queue  # noqa: F401
    import asyncio
    original, original_isfuture = weakref.WeakValueDictionary, asyncio.isfuture
    weakref.WeakValueDictionary = TransportRefs     # type: ignore[misc, assignment]
    asyncio.isfuture = is_future                    # type: ignore[assignment]
    try:
        import uvloop
    finally:
        weakref.WeakValueDictionary = original      # type: ignore[misc]
        asyncio.isfuture = original_isfuture
    return uvloop
