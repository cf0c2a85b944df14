"""Fleet lists a worker's /proc/<pid>/fd at most every SLOW_EVERY seconds (with thousands
of sessions the listing was a large part of each dashboard refresh); other processes are
counted on every refresh."""
import os
import socket
from pathlib import Path
from types import SimpleNamespace

import psutil

from carbotui.admin import node
from carbotui.admin.node import Fleet, Process


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def _fleet(tmp_path: Path, clock: Clock) -> Fleet:
    return Fleet(SimpleNamespace(run_dir=tmp_path, supervisor_socket=tmp_path / "supervisor.sock"),
                 clock=clock)


def _me() -> Process:
    return Process(name="proxy:proxy_00", short="proxy_00", group="proxy", state="RUNNING",
                   pid=os.getpid(), started=0.0, description="")


def test_worker_fd_count_is_listed_once_per_slow_interval(tmp_path):
    clock = Clock()
    fleet = _fleet(tmp_path, clock)
    first = fleet._with_psutil(_me(), sockets=3).open_files
    assert first == psutil.Process().num_fds()
    extra = [socket.socketpair() for _ in range(50)]
    try:
        clock.now += node.SLOW_EVERY / 2
        assert fleet._with_psutil(_me(), sockets=3).open_files == first     # the cached count
        clock.now += node.SLOW_EVERY
        assert fleet._with_psutil(_me(), sockets=3).open_files >= first + 100
    finally:
        for a, b in extra:
            a.close()
            b.close()


def test_a_clock_that_goes_back_lists_again(tmp_path):
    clock = Clock()
    fleet = _fleet(tmp_path, clock)
    first = fleet._with_psutil(_me(), sockets=3).open_files
    extra = socket.socketpair()
    try:
        clock.now -= 60
        assert fleet._with_psutil(_me(), sockets=3).open_files == first + 2
    finally:
        extra[0].close()
        extra[1].close()


def test_other_processes_are_counted_on_every_refresh(tmp_path):
    fleet = _fleet(tmp_path, Clock())
    first = fleet._with_psutil(_me()).open_files            # no worker socket count
    extra = socket.socketpair()
    try:
        assert fleet._with_psutil(_me()).open_files == first + 2
    finally:
        extra[0].close()
        extra[1].close()


def test_one_stale_worker_count_is_listed_again_per_refresh(tmp_path):
    clock = Clock()
    fleet = _fleet(tmp_path, clock)
    me = _me()
    other = Process(name="proxy:proxy_01", short="proxy_01", group="proxy", state="RUNNING",
                    pid=os.getppid(), started=0.0, description="")
    # first sight: both listed at once
    assert fleet._with_psutil(me, sockets=3).open_files == psutil.Process().num_fds()
    fleet._with_psutil(other, sockets=3)
    listed = dict(fleet._worker_fds)
    clock.now += node.SLOW_EVERY * 2              # both stale
    fleet._fd_listings_left = 1                   # what collect() sets: one this refresh
    fleet._with_psutil(me, sockets=3)
    fleet._with_psutil(other, sockets=3)
    assert fleet._worker_fds[me.pid][0] == clock.now          # listed again
    assert fleet._worker_fds[other.pid] == listed[other.pid]  # its turn is the next refresh
    fleet._fd_listings_left = 1
    fleet._with_psutil(me, sockets=3)
    fleet._with_psutil(other, sockets=3)
    assert fleet._worker_fds[other.pid][0] == clock.now
