"""Process-parallel map over independent work items (episodes are seeded per index)."""

from __future__ import annotations

import multiprocessing as mp
import os
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from typing import Any, TypeVar

T = TypeVar("T")


def default_workers() -> int:
    return max(1, min(os.cpu_count() or 1, 8))


def imap_ordered(
    fn: Callable[..., T], items: Iterable[Any], workers: int, prefetch: int = 2
) -> Iterator[T]:
    """Apply fn to items in worker processes, yielding results in item order.

    At most workers * prefetch items are in flight, so a caller may stop early (resumable
    collection stops once it has enough episodes). workers <= 1 runs in this process.
    """
    if workers <= 1:
        for item in items:
            yield fn(item)
        return
    ctx = mp.get_context("spawn")  # safe with torch/mujoco state in the parent
    it = iter(items)
    pending: dict[int, Future] = {}
    done: dict[int, Any] = {}
    submitted = next_out = 0
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
        try:
            while True:
                while len(pending) < workers * prefetch:
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
