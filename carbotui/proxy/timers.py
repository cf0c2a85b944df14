"""The sessions' deadlines, on one event-loop timer per loop.

Every mail session arms a timer for its whole life (the preauth, then the idle limit) and
one more for its login; every HTTP wait (the next request, an upstream's answer) arms one
too, and nearly all of them are cancelled long before their time. uvloop's ``call_later``
makes, each time, a TimerHandle and a libuv timer handle, and its ``cancel`` a handle
close: about 8,000 instructions per armed-and-cancelled timer (callgrind,
bench/instructions_https.py). Here deadlines go in buckets of 1/64 s (a timing wheel):
arming one is a list append, cancelling it a swap with the bucket's last entry (nothing
left behind), and the loop has one timer, armed at the earliest bucket (a heap of the
buckets' keys).

The contract is asyncio.TimerHandle's, as the sessions use it: ``call_later`` /
``call_at`` -> a `Deadline` with ``when()``, ``cancel()`` and ``cancelled()``. A callback
runs no earlier than its time (less the loop clock's resolution, 1 ms, as asyncio's own
handles) and at most one bucket (1/64 s, 16 ms) after it: these are timeouts of seconds.
Buckets run in time order; within one the order is not kept. Each callback runs on its
own: an exception goes to the loop's exception handler and the others still run. A
deadline armed by a callback runs at a later turn of the loop, never in the same batch.
`for_loop` gives a loop's one `Timers`.
"""
from __future__ import annotations

import heapq
import math
from typing import Any, Callable, Final

SLOTS: Final = 64.0          # buckets per second
_RESOLUTION: Final = 0.001   # uvloop's clock: whole milliseconds
_NONE: Final = 1 << 62       # no bucket armed
_ARMED: Final = 0
_CANCELLED: Final = 1
_DONE: Final = 2


class Deadline:
    """One armed callback (asyncio.TimerHandle's ``when``, ``cancel``, ``cancelled``)."""

    def __init__(self, owner: Timers, when: float, key: int, callback: Callable[..., Any],
                 args: tuple) -> None:
        self._owner = owner
        self._when = when
        self._key = key
        self._callback: Callable[..., Any] | None = callback
        self._args = args
        self._state = _ARMED
        self._bucket: list[Deadline] | None = None    # the one it is in, at _index
        self._index = 0

    def when(self) -> float:
        return self._when

    def cancelled(self) -> bool:
        return self._state == _CANCELLED

    def cancel(self) -> None:
        if self._state != _ARMED:
            return
        self._state = _CANCELLED
        self._callback = None                  # nothing kept alive until its time
        self._args = ()
        bucket = self._bucket
        if bucket is not None:
            self._bucket = None
            last = bucket.pop()
            if last is not self:
                bucket[self._index] = last
                last._index = self._index
            elif not bucket:
                self._owner._drop(self._key)

    def __repr__(self) -> str:
        state = ("armed", "cancelled", "done")[self._state]
        return f"<Deadline {state} when={self._when:.3f}>"


class Timers:
    """The deadlines of one event loop, on one loop timer."""

    def __init__(self, loop: Any) -> None:
        self.loop = loop
        self._buckets: dict[int, list[Deadline]] = {}
        self._keys: list[int] = []             # a heap: the buckets' keys (some gone)
        self._armed = _NONE                    # the key the loop timer is armed for
        self._handle: Any = None
        self._running = False

    def __len__(self) -> int:
        """Deadlines armed and not yet run nor cancelled."""
        return sum([len(bucket) for bucket in self._buckets.values()])

    def call_later(self, delay: float, callback: Callable[..., Any], *args: Any) -> Deadline:
        return self._push(self.loop.time() + delay, callback, args)

    def call_at(self, when: float, callback: Callable[..., Any], *args: Any) -> Deadline:
        return self._push(when, callback, args)

    def _push(self, when: float, callback: Callable[..., Any], args: tuple) -> Deadline:
        # (call_later forwarding *args to call_at would be a Python-level call in mypyc)
        # The bucket that runs at key / SLOTS, the first slot boundary after ``when``.
        key = int(when * SLOTS) + 1 if when < math.inf else _NONE
        deadline = Deadline(self, when, key, callback, args)
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = []
            heapq.heappush(self._keys, key)
            if key < self._armed and not self._running:
                self._arm(key)
        deadline._bucket = bucket
        deadline._index = len(bucket)
        bucket.append(deadline)
        return deadline

    def _drop(self, key: int) -> None:
        """A bucket left empty by cancels goes at once; its key stays in the heap until
        its time, unless stale keys outnumber the buckets (then the heap is rebuilt)."""
        del self._buckets[key]
        if len(self._keys) > 2 * len(self._buckets) + 1024:
            self._keys = list(self._buckets)
            heapq.heapify(self._keys)

    def _arm(self, key: int) -> None:
        if self._handle is not None:
            self._handle.cancel()
        self._armed = key
        self._handle = self.loop.call_at(key / SLOTS, self._run) if key < _NONE else None

    def _run(self) -> None:
        self._handle = None
        self._armed = _NONE
        self._running = True
        try:
            # What is due now, taken out first: a callback that arms a deadline (a lazy
            # timer re-arming itself) adds a bucket, not to this batch.
            now = int((self.loop.time() + _RESOLUTION) * SLOTS)
            keys, buckets = self._keys, self._buckets
            due: list[list[Deadline]] = []
            while keys and keys[0] <= now:
                bucket = buckets.pop(heapq.heappop(keys), None)
                if bucket:
                    for deadline in bucket:
                        deadline._bucket = None     # a cancel now only marks it
                    due.append(bucket)
            for bucket in due:
                for deadline in bucket:
                    callback = deadline._callback
                    if deadline._state != _ARMED or callback is None:
                        continue               # cancelled by a callback before it
                    args = deadline._args
                    deadline._state = _DONE
                    deadline._callback = None
                    deadline._args = ()
                    try:
                        callback(*args)
                    except (SystemExit, KeyboardInterrupt):
                        raise
                    except BaseException as exc:
                        self.loop.call_exception_handler({
                            "message": f"Exception in the deadline callback {callback!r}",
                            "exception": exc, "handle": deadline})
        finally:
            self._running = False
            if self._keys:
                self._arm(self._keys[0])


_current: Timers | None = None


def for_loop(loop: Any) -> Timers:
    """The `Timers` of ``loop`` (a worker runs one loop: made once; tests that run one loop
    after another get one per loop)."""
    global _current
    timers = _current
    if timers is None or timers.loop is not loop:
        timers = _current = Timers(loop)
    return timers
