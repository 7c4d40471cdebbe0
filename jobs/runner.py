"""Run a per-item function over a lazy stream of items: on Ray (local or cluster) or in threads.

Bounded in flight, so a source that streams a terabyte archive never runs ahead of the workers,
and results come back as they finish, for progress and summaries.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any, TypeVar

T = TypeVar("T")


def init_ray(address: str | None) -> None:
    import ray

    if ray.is_initialized():
        return
    # With no address, ray.init() joins RAY_ADDRESS or a job's cluster when set (`ray job
    # submit`), and otherwise starts an embedded local Ray: the same code runs everywhere.
    ray.init(address=address or None, log_to_driver=False, include_dashboard=False if not address else None)


def map_ray(
    fn: Callable[..., Any], items: Iterable[T], extra: tuple[Any, ...], max_in_flight: int, num_cpus: float
) -> Iterator[tuple[T | None, Any, BaseException | None]]:
    """fn(item, *extra) as Ray tasks; a task whose worker dies yields its exception, not a crash."""
    import ray

    remote = ray.remote(num_cpus=num_cpus, max_retries=0)(fn)
    extra_refs = [ray.put(x) for x in extra]
    if max_in_flight <= 0:
        max_in_flight = max(2, int(2 * ray.cluster_resources().get("CPU", 2)))
    pending: dict[Any, T] = {}
    it = iter(items)
    exhausted = False
    while pending or not exhausted:
        while not exhausted and len(pending) < max_in_flight:
            try:
                item = next(it)
            except StopIteration:
                exhausted = True
                break
            pending[remote.remote(item, *extra_refs)] = item
        if not pending:
            break
        done, _ = ray.wait(list(pending), num_returns=1)
        for ref in done:
            item = pending.pop(ref)
            try:
                yield item, ray.get(ref), None
            except Exception as e:  # a worker died: costs this item only
                yield item, None, e


def map_threads(
    fn: Callable[..., Any], items: Iterable[T], extra: tuple[Any, ...], max_in_flight: int
) -> Iterator[tuple[T | None, Any, BaseException | None]]:
    """Threads suffice locally: the heavy work runs in isolated child processes."""
    workers = max_in_flight or os.cpu_count() or 2
    with ThreadPoolExecutor(workers) as pool:
        pending: dict[Future[Any], T] = {}
        it = iter(items)
        exhausted = False
        while pending or not exhausted:
            while not exhausted and len(pending) < workers * 2:
                try:
                    item = next(it)
                except StopIteration:
                    exhausted = True
                    break
                pending[pool.submit(fn, item, *extra)] = item
            if not pending:
                break
            done, _ = wait(list(pending), return_when=FIRST_COMPLETED)
            for fut in done:
                item = pending.pop(fut)
                exc = fut.exception()
                yield item, (None if exc else fut.result()), exc
