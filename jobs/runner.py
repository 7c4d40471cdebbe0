"""Run a per-item function over a lazy stream of items: on Ray (local or cluster) or in threads.

Bounded in flight, so a source that streams a terabyte archive never runs ahead of the workers,
and results come back as they finish, for progress and summaries.
"""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from typing import Any, TypeVar

from training.ray_util import init_ray  # noqa: F401  (moved below jobs/; the jobs import it from here)

T = TypeVar("T")
H = TypeVar("H")


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


def _run_batch(
    fn: Callable[..., Any], per_batch: bool, batch: list[Any], *extra: Any
) -> tuple[list[tuple[Any, BaseException | None]], float]:
    """fn(item, *extra) for each item of a batch, in one Ray task; an item's exception is its own.
    per_batch: fn takes the whole batch and returns that list itself."""
    t = time.perf_counter()
    if per_batch:
        return fn(batch, *extra), time.perf_counter() - t
    out: list[tuple[Any, BaseException | None]] = []
    for item in batch:
        try:
            out.append((fn(item, *extra), None))
        except Exception as e:
            out.append((None, e))
    return out, time.perf_counter() - t


class BatchSizer:
    """Items per task: `fixed` when set, else as many as fill about `target_s` of a worker's time.

    Starts at one item per task (nothing measured yet) and follows a running mean of seconds per
    item, so tiny videos share a task while long ones keep one each; never over `max_items`, nor
    `max_bytes` of in-memory item data (videos streamed out of archives).
    """

    def __init__(self, fixed: int = 0, target_s: float = 2.0, max_items: int = 64, max_bytes: int = 1 << 26):
        self.fixed, self.target_s, self.max_items, self.max_bytes = fixed, target_s, max_items, max_bytes
        self.per_item_s: float | None = None

    def observe(self, n: int, seconds: float) -> None:
        if n:
            s = seconds / n
            self.per_item_s = s if self.per_item_s is None else 0.7 * self.per_item_s + 0.3 * s

    def size(self) -> int:
        if self.fixed:
            return self.fixed
        if self.per_item_s is None:
            return 1
        return max(1, min(self.max_items, int(self.target_s / max(self.per_item_s, 1e-6))))

    def take(self, it: Iterator[T]) -> list[T]:
        batch: list[T] = []
        nbytes, want = 0, self.size()
        while len(batch) < want and nbytes < self.max_bytes:
            item = next(it, _END)
            if item is _END:
                break
            batch.append(item)  # type: ignore[arg-type]
            nbytes += len(getattr(item, "data", None) or b"")
        return batch


def map_ray_batched(
    fn: Callable[..., Any],
    items: Iterable[T],
    extra: tuple[Any, ...],
    max_in_flight: int,
    num_cpus: float,
    sizer: BatchSizer | None = None,
    per_batch: bool = False,
) -> Iterator[tuple[T | None, Any, BaseException | None]]:
    """fn(item, *extra) over Ray tasks that each take a batch of items, at most `max_in_flight` tasks.
    With per_batch, fn(batch, *extra) returns [(result, exception or None)] for the batch itself.

    Per-task cost is paid once per batch. A task whose worker process dies (OOM killer, a crash
    outside the isolated decoder) is retried one item per task, so only the item that kills its
    worker again is lost; it is yielded with the exception.
    """
    import ray

    remote = ray.remote(num_cpus=num_cpus, max_retries=0)(_run_batch)
    sizer = sizer or BatchSizer()
    extra_refs = [ray.put(x) for x in extra]
    fn_ref = ray.put(fn)
    if max_in_flight <= 0:
        max_in_flight = max(2, int(2 * ray.cluster_resources().get("CPU", 2)))
    it = iter(items)
    retry: deque[list[T]] = deque()
    pending: dict[Any, list[T]] = {}
    exhausted = False
    while True:
        while len(pending) < max_in_flight and (retry or not exhausted):
            batch = retry.popleft() if retry else sizer.take(it)
            if not batch:
                exhausted = True
                break
            pending[remote.remote(fn_ref, per_batch, batch, *extra_refs)] = batch
        if not pending:
            return
        for ref in ray.wait(list(pending), num_returns=1)[0]:
            batch = pending.pop(ref)
            try:
                results, seconds = ray.get(ref)
            except Exception as e:  # the worker died: retry its items one per task
                if len(batch) > 1:
                    retry.extend([item] for item in batch)
                else:
                    yield batch[0], None, e
                continue
            sizer.observe(len(batch), seconds)
            for item, (row, exc) in zip(batch, results, strict=True):
                yield item, row, exc


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
