"""Continuous batching for the generator replica: a batch is whatever waits when the forward is free.

Plain asyncio and one thread; no Ray (tests and benchmarks/batcher.py drive it directly).

    submit(item) ──► queue of (item, future)
                      │  one loop: wait for the first item; take everything queued, up to
                      │  max_batch_size images; run `forward(items)` on the single forward
                      ▼  thread; resolve the futures; repeat
                    forward thread (ThreadPoolExecutor(max_workers=1))

A lone request runs at once (no timer waits for company). Under load the queue fills while a
forward runs, and the next batch is the whole backlog (up to max_batch_size), taken only when
the forward thread is free. That is the difference from the arrival-time rule of Ray's
`@serve.batch` (first request plus whatever arrives within a wait window, formed while earlier
batches still wait for the forward slot), which under backlog runs many small batches.

`prepare(item)` (optional) runs when an item is submitted, on the event loop, while an earlier
batch is running: per-item work that does not depend on the batch (the replica draws each
request's latents there), so the forward thread only concatenates.

An item larger than max_batch_size runs alone (`forward` chunks it). A future cancelled before
its batch is taken (client gone) is skipped.
"""

from __future__ import annotations

import asyncio
import collections
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


@dataclass
class _Waiting:
    item: Any
    size: int
    future: asyncio.Future


@dataclass
class BatchStats:
    """What the batcher did (tests and benchmarks read it): the images per batch of the last
    `history` batches, and the queue length (images) each batch left behind when it was taken."""

    history: int = 10_000
    batches: int = 0
    images: int = 0
    sizes: collections.deque = field(default_factory=collections.deque)
    left_behind: collections.deque = field(default_factory=collections.deque)

    def add(self, size: int, left: int) -> None:
        self.batches += 1
        self.images += size
        for q, v in ((self.sizes, size), (self.left_behind, left)):
            q.append(v)
            while len(q) > self.history:
                q.popleft()


class ContinuousBatcher(Generic[T, R]):
    """Batches submitted items for `forward(items) -> results` (one result per item, in order),
    run on one dedicated thread; see the module docstring.

    forward may raise: every item of that batch then gets the exception. size_of(item) counts
    an item's images (default 1) against max_batch_size."""

    def __init__(
        self,
        forward: Callable[[list[Any]], Sequence[R]],
        *,
        max_batch_size: int,
        size_of: Callable[[T], int] = lambda _item: 1,
        prepare: Callable[[T], Any] | None = None,
        thread_name: str = "facegen-forward",
    ) -> None:
        if int(max_batch_size) < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        self.forward = forward
        self.max_batch_size = int(max_batch_size)
        self.size_of = size_of
        self.prepare = prepare
        self.stats = BatchStats()
        self._queue: collections.deque[_Waiting] = collections.deque()
        self._queued_images = 0
        self._running_images = 0
        self._wake: asyncio.Event | None = None
        self._loop_task: asyncio.Task | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=thread_name)
        self._forward_thread: threading.Thread | None = None
        self._closed = False

    # ---- state
    def queued(self) -> int:
        """Requests waiting for a batch (not counting the one running)."""
        return len(self._queue)

    def queued_images(self) -> int:
        return self._queued_images

    def images_in_flight(self) -> int:
        """Images queued plus those of the batch running now (what an autoscaler should count)."""
        return self._queued_images + self._running_images

    def set_max_batch_size(self, n: int) -> None:
        if int(n) < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {n}")
        self.max_batch_size = int(n)

    def run_on_forward_thread(self, fn: Callable[..., Any], *args: Any) -> asyncio.Future:
        """Run fn on the forward thread, between batches (model warm-up, CUDA-graph capture)."""
        return asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    # ---- requests
    async def submit(self, item: T) -> R:
        """Queue one item and wait for its result."""
        if self._closed:
            raise RuntimeError("the batcher is closed")
        loop = asyncio.get_running_loop()
        if self._wake is None:
            self._wake = asyncio.Event()
        if self._loop_task is None or self._loop_task.done():
            self._loop_task = loop.create_task(self._run())
        prepared = self.prepare(item) if self.prepare is not None else item
        entry = _Waiting(prepared, max(1, int(self.size_of(item))), loop.create_future())
        self._queue.append(entry)
        self._queued_images += entry.size
        self._wake.set()
        return await entry.future

    def _take(self) -> tuple[list[_Waiting], int]:
        """Everything queued now, up to max_batch_size images (always at least one item)."""
        batch: list[_Waiting] = []
        images = 0
        while self._queue:
            head = self._queue[0]
            if head.future.done():  # cancelled while waiting: its client is gone
                self._queue.popleft()
                self._queued_images -= head.size
                continue
            if batch and images + head.size > self.max_batch_size:
                break
            self._queue.popleft()
            self._queued_images -= head.size
            batch.append(head)
            images += head.size
        return batch, images

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        assert self._wake is not None
        while True:
            if not self._queue:
                self._wake.clear()
                await self._wake.wait()
            batch, images = self._take()
            if not batch:
                continue
            self.stats.add(images, self._queued_images)
            items = [w.item for w in batch]
            self._running_images = images
            try:
                results = await loop.run_in_executor(self._executor, self.forward, items)
                if len(results) != len(batch):
                    raise RuntimeError(f"forward returned {len(results)} results for {len(batch)} items")
            except asyncio.CancelledError:
                for w in batch:
                    if not w.future.done():
                        w.future.cancel()
                raise
            except Exception as e:  # noqa: BLE001 - every item of the batch gets the error
                for w in batch:
                    if not w.future.done():
                        w.future.set_exception(e)
                continue
            finally:
                self._running_images = 0
            for w, r in zip(batch, results):
                if not w.future.done():
                    w.future.set_result(r)

    async def close(self) -> None:
        """Stop the loop (waiting items get CancelledError) and the forward thread."""
        self._closed = True
        if self._loop_task is not None:
            self._loop_task.cancel()
            try:
                await self._loop_task
            except (asyncio.CancelledError, Exception):  # noqa: BLE001
                pass
        while self._queue:
            w = self._queue.popleft()
            if not w.future.done():
                w.future.cancel()
        self._queued_images = 0
        self._executor.shutdown(wait=False, cancel_futures=True)


class ArrivalTimeBatcher(Generic[T, R]):
    """The arrival-time rule of Ray's `@serve.batch`, for comparison only (benchmarks/batcher.py,
    tests): a batch is the first waiting item plus whatever arrives within `wait_s` (or until
    max_batch_size images); once formed it queues for the single forward slot and the next batch
    starts forming at once. Same forward thread and interface as ContinuousBatcher."""

    def __init__(
        self,
        forward: Callable[[list[Any]], Sequence[R]],
        *,
        max_batch_size: int,
        wait_s: float,
        size_of: Callable[[T], int] = lambda _item: 1,
    ) -> None:
        self.forward = forward
        self.max_batch_size = int(max_batch_size)
        self.wait_s = float(wait_s)
        self.size_of = size_of
        self.stats = BatchStats()
        self._queue: asyncio.Queue | None = None
        self._task: asyncio.Task | None = None
        self._slot: asyncio.Lock | None = None
        self._running: set[asyncio.Task] = set()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="arrival-forward")

    def queued(self) -> int:
        return self._queue.qsize() if self._queue is not None else 0

    async def submit(self, item: T) -> R:
        loop = asyncio.get_running_loop()
        if self._queue is None:
            self._queue, self._slot = asyncio.Queue(), asyncio.Lock()
        if self._task is None or self._task.done():
            self._task = loop.create_task(self._form())
        fut = loop.create_future()
        await self._queue.put(_Waiting(item, max(1, int(self.size_of(item))), fut))
        return await fut

    async def _form(self) -> None:
        assert self._queue is not None
        loop = asyncio.get_running_loop()
        while True:
            first = await self._queue.get()
            batch, images = [first], first.size
            deadline = loop.time() + self.wait_s
            while images < self.max_batch_size:
                left = deadline - loop.time()
                if left <= 0 and self._queue.empty():
                    break
                try:
                    w = self._queue.get_nowait() if left <= 0 else await asyncio.wait_for(self._queue.get(), left)
                except (TimeoutError, asyncio.QueueEmpty):
                    break
                batch.append(w)
                images += w.size
            # the batch is formed now; it waits for the forward slot while the next one forms
            task = loop.create_task(self._execute(batch, images))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    async def _execute(self, batch: list[_Waiting], images: int) -> None:
        assert self._slot is not None
        async with self._slot:
            self.stats.add(images, self.queued())
            try:
                results = await asyncio.get_running_loop().run_in_executor(
                    self._executor, self.forward, [w.item for w in batch]
                )
            except Exception as e:  # noqa: BLE001
                for w in batch:
                    if not w.future.done():
                        w.future.set_exception(e)
                return
            for w, r in zip(batch, results):
                if not w.future.done():
                    w.future.set_result(r)

    async def close(self) -> None:
        for t in [self._task, *self._running]:
            if t is not None:
                t.cancel()
        self._executor.shutdown(wait=False, cancel_futures=True)
