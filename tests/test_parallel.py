"""Worker pools: results in order, and no worker outlives a killed parent."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

from kalm.data.parallel import imap_ordered


def _square(x: int) -> int:
    return x * x


def test_results_come_back_in_item_order():
    assert list(imap_ordered(_square, range(7), workers=2)) == [x * x for x in range(7)]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (exited, not yet reaped by init) counts as gone
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_workers_exit_when_their_parent_is_killed():
    """`kalm run` killed mid-evaluation left its persistent pool's workers alive for an hour."""
    parent = subprocess.Popen([sys.executable, "-c", textwrap.dedent("""
        import os, sys, time
        from kalm.data import parallel
        list(parallel.imap_ordered(abs, [1, 2, 3, 4], workers=2,
                                   persistent=True))
        pool = next(iter(parallel._POOLS.values()))
        print(" ".join(str(p) for p in pool._processes), flush=True)
        time.sleep(120)
    """)], stdout=subprocess.PIPE, text=True)
    try:
        workers = [int(p) for p in parent.stdout.readline().split()]
        assert len(workers) == 2 and all(_alive(p) for p in workers)
    finally:
        parent.send_signal(signal.SIGKILL)
        parent.wait()
    deadline = time.monotonic() + 20
    while any(_alive(p) for p in workers) and time.monotonic() < deadline:
        time.sleep(0.2)
    left = [p for p in workers if _alive(p)]
    for p in left:
        os.kill(p, signal.SIGKILL)
    assert not left, f"workers {left} outlived their killed parent"
