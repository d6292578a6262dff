"""The generator replica's continuous batcher (serve/batcher.py), without Ray and without timing:
a gated fake forward decides when the "generator" becomes free, the tests count batch sizes."""

from __future__ import annotations

import asyncio
import threading

import pytest

from facegen_ray.serve.batcher import ArrivalTimeBatcher, ContinuousBatcher


class GatedForward:
    """forward(items) blocks on the forward thread until the test opens the gate; records batches."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.started = threading.Event()
        self.batches: list[list] = []
        self.threads: set[str] = set()

    def __call__(self, items: list) -> list:
        self.batches.append(list(items))
        self.threads.add(threading.current_thread().name)
        self.started.set()
        self.gate.wait(timeout=30)
        return [("done", it) for it in items]


async def _until(cond, tries: int = 2000) -> None:
    for _ in range(tries):
        if cond():
            return
        await asyncio.sleep(0.001)
    raise AssertionError("condition not reached")


async def _backlog_scenario(batcher, fwd: GatedForward, arrivals: int) -> list:
    """One request starts a batch (the gate holds the forward busy); `arrivals` more arrive one by
    one, each after the batcher has done all it does on arrival; then the forward is freed."""
    first = asyncio.ensure_future(batcher.submit(0))
    await _until(fwd.started.is_set)
    rest = []
    for i in range(1, arrivals + 1):
        rest.append(asyncio.ensure_future(batcher.submit(i)))
        await _until(lambda: batcher.queued() == 0 if isinstance(batcher, ArrivalTimeBatcher) else True)
        for _ in range(5):
            await asyncio.sleep(0)
    fwd.gate.set()
    results = await asyncio.gather(first, *rest)
    await batcher.close()
    return results


def test_continuous_batch_is_the_backlog_while_the_arrival_time_rule_runs_small_batches():
    """The scenario of issue 31: requests arrive (spaced wider than the batch wait window) while
    the generator is busy. Continuous batching runs them as one batch when the generator is free;
    the arrival-time rule (Ray's @serve.batch) has already formed one small batch per arrival,
    each waiting for the forward slot."""

    async def main():
        fwd_c = GatedForward()
        cont = ContinuousBatcher(fwd_c, max_batch_size=64)
        res_c = await _backlog_scenario(cont, fwd_c, 10)
        fwd_a = GatedForward()
        arr = ArrivalTimeBatcher(fwd_a, max_batch_size=64, wait_s=0.0)
        res_a = await _backlog_scenario(arr, fwd_a, 10)
        return cont, res_c, arr, res_a

    cont, res_c, arr, res_a = asyncio.run(main())
    assert res_c == res_a == [("done", i) for i in range(11)]
    assert list(cont.stats.sizes) == [1, 10]  # the lone request at once, then the whole backlog
    assert list(cont.stats.left_behind) == [0, 0]
    assert list(arr.stats.sizes) == [1] * 11  # one batch per arrival, formed before the slot was free
    assert max(arr.stats.left_behind) == 0  # ... although nothing was left in its arrival queue


def test_backlog_beyond_max_batch_size_is_cut_in_order_and_one_thread_runs_forwards():
    async def main():
        fwd = GatedForward()
        b = ContinuousBatcher(fwd, max_batch_size=4)
        results = await _backlog_scenario(b, fwd, 10)
        return fwd, b, results

    fwd, b, results = asyncio.run(main())
    assert results == [("done", i) for i in range(11)]
    assert list(b.stats.sizes) == [1, 4, 4, 2]
    assert list(b.stats.left_behind) == [0, 6, 2, 0]
    assert fwd.batches == [[0], [1, 2, 3, 4], [5, 6, 7, 8], [9, 10]]
    assert len(fwd.threads) == 1


def test_sizes_count_images_an_oversized_item_runs_alone_and_prepare_runs_on_submit():
    async def main():
        fwd = GatedForward()
        prepared: list[int] = []

        def prepare(item):
            prepared.append(item["n"])
            return item

        b = ContinuousBatcher(fwd, max_batch_size=8, size_of=lambda it: it["n"], prepare=prepare)
        first = asyncio.ensure_future(b.submit({"n": 1}))
        await _until(fwd.started.is_set)
        others = [asyncio.ensure_future(b.submit({"n": n})) for n in (3, 4, 20, 2)]
        await _until(lambda: b.queued() == 4)
        assert prepared == [1, 3, 4, 20, 2]  # drawn while the first batch still runs
        assert b.queued_images() == 29
        fwd.gate.set()
        await asyncio.gather(first, *others)
        await b.close()
        return fwd, b

    fwd, b = asyncio.run(main())
    assert [[it["n"] for it in batch] for batch in fwd.batches] == [[1], [3, 4], [20], [2]]
    assert list(b.stats.sizes) == [1, 7, 20, 2]


def test_a_failing_forward_fails_its_batch_only_and_cancelled_requests_are_skipped():
    calls: list[list[int]] = []
    gate = threading.Event()

    def forward(items):
        calls.append(list(items))
        if len(calls) == 1:
            gate.wait(timeout=30)
            return items
        if 13 in items:
            raise RuntimeError("boom")
        return [i * 10 for i in items]

    async def main():
        b = ContinuousBatcher(forward, max_batch_size=2)
        first = asyncio.ensure_future(b.submit(1))
        await _until(lambda: bool(calls))
        gone = asyncio.ensure_future(b.submit(99))
        bad = [asyncio.ensure_future(b.submit(x)) for x in (12, 13)]
        good = asyncio.ensure_future(b.submit(5))
        await _until(lambda: b.queued() == 4)
        gone.cancel()
        await asyncio.sleep(0)
        gate.set()
        out = await asyncio.gather(first, *bad, good, return_exceptions=True)
        after = await b.submit(7)  # the loop survived the failure
        await b.close()
        with pytest.raises(RuntimeError, match="closed"):
            await b.submit(8)
        return out, after

    out, after = asyncio.run(main())
    assert out[0] == 1
    assert isinstance(out[1], RuntimeError) and isinstance(out[2], RuntimeError)
    assert out[3] == 50 and after == 70
    assert [99] not in calls and all(99 not in c for c in calls)
    with pytest.raises(ValueError):
        ContinuousBatcher(forward, max_batch_size=0)
