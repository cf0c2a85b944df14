"""carbotui/proxy/timers.py: the sessions' deadlines on one loop timer, on uvloop and on
asyncio's loop. Each test drives a real loop; times are the loop's clock, and the waits end
on futures the callbacks resolve (no sleeps as synchronisation)."""
from __future__ import annotations

import asyncio
import random

from carbotui.proxy import timers as timers_mod
from carbotui.proxy.timers import Timers, for_loop
# the tlsbio tests' fixture: each test on uvloop and on asyncio's loop
from tests.unit.test_tlsbio import run  # noqa: F401


def test_callbacks_run_in_time_order_never_early(run):
    async def main():
        loop = asyncio.get_running_loop()
        t = Timers(loop)
        fired: list[tuple[str, float]] = []
        done = loop.create_future()
        delays = {"c": 0.06, "a": 0.02, "b": 0.04, "b2": 0.04, "z": 0.0}
        armed = {}
        for name, delay in delays.items():
            armed[name] = t.call_later(delay, lambda n=name: fired.append((n, loop.time())))
        t.call_later(0.08, done.set_result, None)
        await done
        return fired, armed

    fired, armed = run(main())
    names = [n for n, _ in fired]
    assert names[:2] == ["z", "a"] and set(names[2:4]) == {"b", "b2"} and names[4] == "c"
    for name, at in fired:
        assert at >= armed[name].when() - 0.001          # never before its time
    assert all(not d.cancelled() for d in armed.values())


def test_cancel_before_its_time_keeps_it_from_running_and_others_still_run(run):
    async def main():
        loop = asyncio.get_running_loop()
        t = Timers(loop)
        fired = []
        done = loop.create_future()
        first = t.call_later(0.01, fired.append, "first")
        second = t.call_later(0.02, fired.append, "second")
        t.call_later(0.03, fired.append, "third")
        first.cancel()
        first.cancel()                                     # twice: still once
        t.call_later(0.05, done.set_result, None)
        await done
        return fired, first, second

    fired, first, second = run(main())
    assert fired == ["second", "third"]
    assert first.cancelled() and not second.cancelled()
    second.cancel()                                        # after it ran: nothing
    assert not second.cancelled()


def test_a_callback_may_cancel_a_later_one_of_its_batch(run):
    async def main():
        loop = asyncio.get_running_loop()
        t = Timers(loop)
        fired = []
        when = loop.time() + 0.01
        later = None

        def first():
            fired.append("first")
            later.cancel()
        t.call_at(when, first)
        later = t.call_at(when, fired.append, "later")   # same time, armed after
        done = loop.create_future()
        t.call_at(when + 0.02, done.set_result, None)
        await done
        return fired

    assert run(main()) == ["first"]


def test_a_callback_re_arming_at_once_runs_at_the_next_turn_not_in_a_loop(run):
    async def main():
        loop = asyncio.get_running_loop()
        t = Timers(loop)
        runs = []
        done = loop.create_future()

        def again():
            runs.append(loop.time())
            if len(runs) < 5:
                t.call_later(0, again)                     # due at once
            else:
                done.set_result(None)
        t.call_later(0, again)
        await done
        return runs

    assert len(run(main())) == 5


def test_an_exception_goes_to_the_loops_handler_and_the_rest_still_runs(run):
    async def main():
        loop = asyncio.get_running_loop()
        seen = []
        loop.set_exception_handler(lambda _loop, context: seen.append(context))
        t = Timers(loop)
        fired = []
        done = loop.create_future()

        def boom():
            raise RuntimeError("boom")
        when = loop.time() + 0.01
        t.call_at(when, boom)
        t.call_at(when, fired.append, "after")
        t.call_at(when + 0.01, done.set_result, None)
        await done
        return seen, fired

    seen, fired = run(main())
    assert fired == ["after"]
    assert len(seen) == 1 and isinstance(seen[0]["exception"], RuntimeError)


def test_an_earlier_deadline_re_arms_the_loop_timer(run):
    async def main():
        loop = asyncio.get_running_loop()
        t = Timers(loop)
        fired = []
        t.call_later(20, fired.append, "late")             # the loop timer: in 20 s
        done = loop.create_future()
        t.call_later(0.01, done.set_result, "soon")
        return await done, fired

    got, fired = run(main())
    assert got == "soon" and fired == []


def test_a_cancelled_deadline_leaves_nothing_behind(run):
    async def main():
        loop = asyncio.get_running_loop()
        t = Timers(loop)
        keep = [t.call_later(30 + i, lambda: None) for i in range(10)]
        for i in range(5000):                  # logins' deadlines, cancelled, 20 ms apart
            t.call_at(loop.time() + 30 + i / 50, lambda: None).cancel()
        return keep, t

    keep, t = run(main())
    assert len(t) == 10 and all(not d.cancelled() for d in keep)
    assert len(t._buckets) == 10                       # the emptied ones went at once
    assert len(t._keys) <= 2 * 10 + 1024 + 1           # stale keys: the heap was rebuilt


def test_random_schedule_matches_a_reference(run):
    """Many deadlines armed and cancelled at random: exactly the ones not cancelled run,
    none before its time, bucket (1/64 s) after bucket."""
    rng = random.Random(7)

    async def main():
        loop = asyncio.get_running_loop()
        t = Timers(loop)
        base = loop.time() + 0.02
        fired = []
        entries = []
        for i in range(400):
            when = base + rng.randrange(0, 100) / 1000
            entries.append((when, i, t.call_at(when, lambda i=i: fired.append((i, loop.time())))))
        cancelled = set(rng.sample(range(400), 150))
        for i in cancelled:
            entries[i][2].cancel()
        done = loop.create_future()
        t.call_at(base + 0.15, done.set_result, None)
        await done
        return fired, entries, cancelled

    fired, entries, cancelled = run(main())
    assert sorted(i for i, _ in fired) == sorted(set(range(400)) - cancelled)
    slots = [int(entries[i][0] * timers_mod.SLOTS) for i, _ in fired]
    assert slots == sorted(slots)
    assert all(at >= entries[i][0] - 0.001 for i, at in fired)


def test_for_loop_is_one_per_loop(run):
    async def main():
        loop = asyncio.get_running_loop()
        return for_loop(loop), for_loop(loop), loop

    first, again, loop = run(main())
    assert first is again and first.loop is loop
    second, _, other = run(main())
    assert second is not first and second.loop is other
