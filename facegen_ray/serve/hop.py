"""The ingress → generator hop, micro-batched: one handle call carries every request waiting
at this ingress replica when a call slot is free.

    HTTP requests ─► CallBatcher.submit(req) ──(slot free)──► generator.render.remote(req)
                                             ──(backlog)────► generator.render_many.remote([req, ...])

A Serve handle call costs the same CPU whatever it carries (about 0.9 ms on the project's 2-core
VM, docs/serving.md), and a 256x256 reply sent per request goes through the object store once
per request. So the ingress keeps at most `max_in_flight` calls outstanding: a request that
finds a slot free is sent at once, alone (no timer, the one-client latency is unchanged); while
every slot is busy, requests queue here, and the next free slot sends all of them (up to
`max_items` images, whole requests) in one call whose one reply carries all their images. The
rule is the generator's own (serve/batcher.py) one level up: the call is whatever is waiting
when a slot becomes free, so its size follows the load.

Plain asyncio, no Ray: `send_one(req)` and `send_many(reqs)` are the handle's methods (or any
coroutine functions) and are awaited on the caller's event loop.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

Req = TypeVar("Req")
Res = TypeVar("Res")

KEEP_SIZES = 10_000


@dataclass
class CallStats:
    calls: int = 0
    requests: int = 0
    sizes: deque[int] = field(default_factory=lambda: deque(maxlen=KEEP_SIZES))  # requests per call


class CallBatcher(Generic[Req, Res]):
    """Micro-batches calls: at most max_in_flight outstanding, each carrying every request queued
    when its slot became free (up to max_items images; a larger single request goes alone)."""

    def __init__(
        self,
        send_one: Callable[[Req], Awaitable[Res]],
        send_many: Callable[[list[Req]], Awaitable[list[Res]]],
        max_in_flight: int,
        max_items: int,
        size_of: Callable[[Req], int] = lambda _req: 1,
    ) -> None:
        if max_in_flight < 1 or max_items < 1:
            raise ValueError(f"max_in_flight ({max_in_flight}) and max_items ({max_items}) must be >= 1")
        self._send_one = send_one
        self._send_many = send_many
        self.max_in_flight = int(max_in_flight)
        self.max_items = int(max_items)
        self._size_of = size_of
        self._queue: deque[tuple[Req, asyncio.Future, float]] = deque()
        self._in_flight = 0
        self._tasks: set[asyncio.Task] = set()
        self.stats = CallStats()

    def in_flight(self) -> int:
        return self._in_flight

    def queued(self) -> int:
        return len(self._queue)

    async def submit(self, req: Req) -> Res:
        """The request's result, from a call of its own or shared with the requests queued beside it;
        the call's exception if the call failed."""
        return (await self.submit_timed(req))[0]

    async def submit_timed(self, req: Req) -> tuple[Res, float]:
        """(result, seconds the request waited here for a call slot)."""
        fut: asyncio.Future = asyncio.get_running_loop().create_future()
        self._queue.append((req, fut, time.perf_counter()))
        self._pump()
        return await fut

    def _take(self) -> list[tuple[Req, asyncio.Future, float]]:
        batch = [self._queue.popleft()]
        items = self._size_of(batch[0][0])
        while self._queue and items + self._size_of(self._queue[0][0]) <= self.max_items:
            entry = self._queue.popleft()
            items += self._size_of(entry[0])
            batch.append(entry)
        return batch

    def _pump(self) -> None:
        while self._queue and self._in_flight < self.max_in_flight:
            now = time.perf_counter()
            # a waiter already cancelled (its client went away) is not sent
            batch = [(r, f, now - t) for r, f, t in self._take() if not f.done()]
            if not batch:
                continue
            self._in_flight += 1
            task = asyncio.get_running_loop().create_task(self._call(batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _call(self, batch: list[tuple[Req, asyncio.Future, float]]) -> None:
        self.stats.calls += 1
        self.stats.requests += len(batch)
        self.stats.sizes.append(len(batch))
        try:
            if len(batch) == 1:
                results = [await self._send_one(batch[0][0])]
            else:
                results = list(await self._send_many([r for r, _, _ in batch]))
                if len(results) != len(batch):
                    raise RuntimeError(f"the generator answered {len(results)} results for {len(batch)} requests")
        except asyncio.CancelledError:
            for _, fut, _ in batch:
                fut.cancel()
            raise
        except Exception as e:  # noqa: BLE001 - every request of the call gets the call's error
            for _, fut, _ in batch:
                if not fut.done():
                    fut.set_exception(e)
        else:
            for (_, fut, waited), res in zip(batch, results):
                if not fut.done():
                    fut.set_result((res, waited))
        finally:
            self._in_flight -= 1
            self._pump()
