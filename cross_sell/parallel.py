"""Independent slices of numpy work, spread over the machine's cores with threads.

DuckDB already keeps every core busy; the numpy work between queries (scoring a million
customers chunk by chunk, say) runs on one core unless it is split. numpy releases the GIL in
its array operations, so threads over disjoint slices run in parallel, share the inputs without
copying them and write their results into one preallocated output. Each slice computes exactly
what it would compute alone, so the results do not depend on the number of threads.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

WORKERS_ENV = "CROSS_SELL_THREADS"


def workers() -> int:
    """Threads to use: ``$CROSS_SELL_THREADS`` when set, else one per core."""
    configured = os.environ.get(WORKERS_ENV)
    if configured:
        try:
            value = int(configured)
        except ValueError:
            raise ValueError(f"{WORKERS_ENV} must be a whole number of threads, not {configured!r}") from None
        if value < 1:
            raise ValueError(f"{WORKERS_ENV} must be at least 1, not {value}")
        return value
    return os.cpu_count() or 1


def for_each_slice(work: Callable[[int, int], None], total: int, size: int, *, threads: int | None = None) -> None:
    """Call ``work(start, stop)`` once for each consecutive slice of ``range(total)`` of ``size``
    items (the last may be shorter), on up to ``threads`` threads (default :func:`workers`; 1 runs
    the slices in order on the calling thread). ``work`` must only write to its own slice of any
    shared output. The first exception raised by a slice is raised here."""
    if size < 1:
        raise ValueError(f"slice size must be at least 1, not {size}")
    bounds = [(start, min(start + size, total)) for start in range(0, total, size)]
    threads = min(workers() if threads is None else threads, len(bounds))
    if threads <= 1:
        for start, stop in bounds:
            work(start, stop)
        return
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="cross_sell") as pool:
        for _ in pool.map(lambda bound: work(*bound), bounds):
            pass
