"""Run a per-item function over a lazy stream of items: on Ray (local or cluster) or in threads.

Bounded in flight, so a source that streams a terabyte archive never runs ahead of the workers,
and results come back as they finish, for progress and summaries.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from typing import Any, TypeVar

T = TypeVar("T")
H = TypeVar("H")


def init_ray(address: str | None) -> None:
    import ray

    if ray.is_initialized():
        return
    # With no address, ray.init() joins RAY_ADDRESS or a job's cluster when set (`ray job
    # submit`), and otherwise starts an embedded local Ray: the same code runs everywhere.
    ray.init(address=address or None, log_to_driver=False, include_dashboard=False if not address else None)


_END = object()


def _bounded(
    items: Iterable[T], submit: Callable[[T], H], wait_any: Callable[[list[H]], Iterable[H]], limit: int
) -> Iterator[tuple[T, H]]:
    """Submit items lazily, at most `limit` in flight; yield (item, handle) as each finishes."""
    pending: dict[H, T] = {}
    it = iter(items)
    exhausted = False
    while True:
        while not exhausted and len(pending) < limit:
            item = next(it, _END)
            if item is _END:
                exhausted = True
            else:
                pending[submit(item)] = item  # type: ignore[arg-type]
        if not pending:
            return
        for handle in wait_any(list(pending)):
            yield pending.pop(handle), handle


def map_ray(
    fn: Callable[..., Any], items: Iterable[T], extra: tuple[Any, ...], max_in_flight: int, num_cpus: float
) -> Iterator[tuple[T | None, Any, BaseException | None]]:
    """fn(item, *extra) as Ray tasks; a task whose worker dies yields its exception, not a crash."""
    import ray

    remote = ray.remote(num_cpus=num_cpus, max_retries=0)(fn)
    extra_refs = [ray.put(x) for x in extra]
    if max_in_flight <= 0:
        max_in_flight = max(2, int(2 * ray.cluster_resources().get("CPU", 2)))
    for item, ref in _bounded(
        items,
        lambda i: remote.remote(i, *extra_refs),
        lambda refs: ray.wait(refs, num_returns=1)[0],
        max_in_flight,
    ):
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
        for item, fut in _bounded(
            items,
            lambda i: pool.submit(fn, i, *extra),
            lambda futs: wait(futs, return_when=FIRST_COMPLETED)[0],
            workers * 2,
        ):
            exc = fut.exception()
            yield item, (None if exc else fut.result()), exc
