"""Process-parallel map over independent work items (episodes are seeded per index).

Workers are spawned processes that use one thread each for torch/BLAS (`workers` of them share
the cores; more threads per worker only oversubscribe). `persistent=True` keeps the pool alive
for later calls with the same worker count and working directory, so a process that evaluates
many policies (`kalm compare`, `kalm run`) starts its workers, and imports torch, d3rlpy and the
text encoder in them, once instead of once per evaluation.
"""

from __future__ import annotations

import atexit
import multiprocessing as mp
import multiprocessing.connection
import os
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Any, TypeVar

T = TypeVar("T")

_THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
_POOLS: dict[tuple[int, str], ProcessPoolExecutor] = {}


def default_workers() -> int:
    return max(1, min(os.cpu_count() or 1, 8))


def _exit_with_parent() -> None:
    """A worker blocks on its task queue, which it holds both ends of, so it never sees its
    parent die (killed, or out of memory) and would live on as an orphan holding gigabytes;
    this waits on the parent's sentinel and ends the worker when it fires."""
    parent = mp.parent_process()
    if parent is None:
        return

    def watch() -> None:
        mp.connection.wait([parent.sentinel])
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def _init_worker(threads: int) -> None:
    """Runs first in every worker: `threads` threads for torch and BLAS."""
    _exit_with_parent()
    for var in _THREAD_VARS:
        os.environ.setdefault(var, str(threads))
    if "torch" in sys.modules:  # already imported while unpickling: set it directly
        sys.modules["torch"].set_num_threads(threads)


def _new_pool(workers: int) -> ProcessPoolExecutor:
    threads = max(1, (os.cpu_count() or 1) // workers)
    return ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn"),
                               initializer=_init_worker, initargs=(threads,))


def shutdown_pools() -> None:
    """Stop the persistent worker pools (at exit, or to free their memory earlier)."""
    while _POOLS:
        _, pool = _POOLS.popitem()
        pool.shutdown(wait=True, cancel_futures=True)


atexit.register(shutdown_pools)


def _shared_pool(workers: int) -> tuple[tuple[int, str], ProcessPoolExecutor]:
    key = (workers, os.getcwd())  # workers resolve relative paths against their start folder
    pool = _POOLS.get(key)
    if pool is None or getattr(pool, "_broken", False):  # e.g. its workers got a Ctrl-C
        _POOLS[key] = pool = _new_pool(workers)
    return key, pool


def imap_ordered(
    fn: Callable[..., T], items: Iterable[Any], workers: int, prefetch: int = 2,
    persistent: bool = False,
) -> Iterator[T]:
    """Apply fn to items in worker processes, yielding results in item order.

    At most workers * prefetch items are in flight, so a caller may stop early (resumable
    collection stops once it has enough episodes). workers <= 1 runs in this process.
    `persistent` reuses (and keeps) a shared pool; callers that stop early should not use it,
    as items already running finish before the pool takes new ones.
    """
    if workers <= 1:
        for item in items:
            yield fn(item)
        return
    if not persistent:
        with _new_pool(workers) as pool:
            yield from _drive(pool, fn, items, workers * prefetch)
        return
    key, pool = _shared_pool(workers)
    try:
        yield from _drive(pool, fn, items, workers * prefetch)
    except (BrokenProcessPool, KeyboardInterrupt):
        # a dead worker (or an interrupt, which reaches the workers too): never reuse the pool
        if _POOLS.get(key) is pool:
            del _POOLS[key]
        pool.shutdown(wait=False, cancel_futures=True)
        raise


def _drive(pool: ProcessPoolExecutor, fn: Callable[..., T], items: Iterable[Any],
           in_flight: int) -> Iterator[T]:
    it = iter(items)
    pending: dict[int, Future] = {}
    done: dict[int, Any] = {}
    submitted = next_out = 0
    try:
        while True:
            while len(pending) < in_flight:
                try:
                    item = next(it)
                except StopIteration:
                    break
                pending[submitted] = pool.submit(fn, item)
                submitted += 1
            if not pending and next_out == submitted:
                return
            finished, _ = wait(pending.values(), return_when=FIRST_COMPLETED)
            for idx in [i for i, f in pending.items() if f in finished]:
                done[idx] = pending.pop(idx).result()
            while next_out in done:
                yield done.pop(next_out)
                next_out += 1
    finally:
        for f in pending.values():
            f.cancel()
