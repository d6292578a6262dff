"""serve/hop.py: the ingress's micro-batched calls to the generator, without Ray. The "generator"
is a pair of gated coroutines: a call stays outstanding until the test releases it, so what
each call carries is decided by the rule, not by timing."""

from __future__ import annotations

import asyncio

import pytest

from facegen_ray.serve.hop import CallBatcher


class GatedGenerator:
    """send_one / send_many stand-ins: every call is recorded and waits for release()."""

    def __init__(self, fail_on: int | None = None, short_answer: bool = False) -> None:
        self.calls: list[list[int]] = []
        self.gates: list[asyncio.Event] = []
        self.outstanding = 0
        self.max_outstanding = 0
        self.fail_on = fail_on
        self.short_answer = short_answer

    async def _serve(self, reqs: list[int]) -> list[str]:
        self.calls.append(list(reqs))
        gate = asyncio.Event()
        self.gates.append(gate)
        self.outstanding += 1
        self.max_outstanding = max(self.max_outstanding, self.outstanding)
        try:
            await gate.wait()
        finally:
            self.outstanding -= 1
        if self.fail_on is not None and self.fail_on in reqs:
            raise RuntimeError(f"replica died rendering {self.fail_on}")
        out = [f"image-{r}" for r in reqs]
        return out[:-1] if self.short_answer and len(reqs) > 1 else out

    async def send_one(self, req: int) -> str:
        return (await self._serve([req]))[0]

    async def send_many(self, reqs: list[int]) -> list[str]:
        return await self._serve(reqs)

    def release(self, i: int) -> None:
        self.gates[i].set()


async def _settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def _batcher(g: GatedGenerator, max_in_flight: int = 1, max_items: int = 64, size_of=lambda r: 1) -> CallBatcher:
    return CallBatcher(g.send_one, g.send_many, max_in_flight=max_in_flight, max_items=max_items, size_of=size_of)


def test_a_lone_request_is_sent_at_once_alone():
    async def main():
        g = GatedGenerator()
        b = _batcher(g, max_in_flight=2)
        task = asyncio.ensure_future(b.submit_timed(7))
        await _settle()
        assert g.calls == [[7]]  # sent without waiting for company
        g.release(0)
        res, waited = await task
        assert res == "image-7" and waited < 1.0
        assert list(b.stats.sizes) == [1]

    asyncio.run(main())


def test_requests_waiting_for_a_slot_go_in_one_call_and_get_their_own_results():
    async def main():
        g = GatedGenerator()
        b = _batcher(g, max_in_flight=1)
        tasks = [asyncio.ensure_future(b.submit(i)) for i in range(6)]
        await _settle()
        assert g.calls == [[0]] and b.queued() == 5  # the slot is busy: the rest wait here
        g.release(0)
        await _settle()
        assert g.calls == [[0], [1, 2, 3, 4, 5]]  # the freed slot takes everything waiting
        g.release(1)
        assert await asyncio.gather(*tasks) == [f"image-{i}" for i in range(6)]
        assert b.stats.calls == 2 and b.stats.requests == 6 and b.in_flight() == 0

    asyncio.run(main())


def test_never_more_calls_outstanding_than_slots():
    async def main():
        g = GatedGenerator()
        b = _batcher(g, max_in_flight=3)
        tasks = [asyncio.ensure_future(b.submit(i)) for i in range(10)]
        await _settle()
        assert g.calls == [[0], [1], [2]] and g.outstanding == 3 and b.queued() == 7
        released = 0
        while any(not t.done() for t in tasks):
            for i in range(released, len(g.gates)):
                g.release(i)
            released = len(g.gates)
            await _settle()
        assert g.max_outstanding == 3
        assert sorted(r for call in g.calls for r in call) == list(range(10))

    asyncio.run(main())


def test_a_call_carries_whole_requests_up_to_max_items():
    async def main():
        g = GatedGenerator()
        sizes = {0: 1, 1: 3, 2: 2, 3: 1, 4: 4, 5: 9}  # images per request
        b = _batcher(g, max_in_flight=1, max_items=4, size_of=sizes.__getitem__)
        tasks = [asyncio.ensure_future(b.submit(i)) for i in range(6)]
        await _settle()
        for i in range(5):
            g.release(i)
            await _settle()
        assert g.calls == [[0], [1], [2, 3], [4], [5]]  # 3+2 > 4; a 9-image request goes alone
        await asyncio.gather(*tasks)

    asyncio.run(main())


def test_a_failed_call_fails_its_own_requests_only():
    async def main():
        g = GatedGenerator(fail_on=2)
        b = _batcher(g, max_in_flight=1)
        first = asyncio.ensure_future(b.submit(0))
        await _settle()
        mid = [asyncio.ensure_future(b.submit(i)) for i in (1, 2, 3)]
        await _settle()
        g.release(0)
        await _settle()
        late = asyncio.ensure_future(b.submit(4))
        await _settle()
        g.release(1)  # the call [1, 2, 3] fails
        await _settle()
        g.release(2)
        assert await first == "image-0"
        for t in mid:
            with pytest.raises(RuntimeError, match="replica died rendering 2"):
                await t
        assert await late == "image-4"  # the slot was freed by the failed call
        assert g.calls == [[0], [1, 2, 3], [4]]

    asyncio.run(main())


def test_a_short_answer_is_an_error_not_a_misdelivery():
    async def main():
        g = GatedGenerator(short_answer=True)
        b = _batcher(g, max_in_flight=1)
        tasks = [asyncio.ensure_future(b.submit(i)) for i in range(3)]
        await _settle()
        g.release(0)
        await _settle()
        g.release(1)
        assert await tasks[0] == "image-0"
        for t in tasks[1:]:
            with pytest.raises(RuntimeError, match="answered 1 results for 2 requests"):
                await t

    asyncio.run(main())


def test_a_request_whose_client_left_is_not_sent():
    async def main():
        g = GatedGenerator()
        b = _batcher(g, max_in_flight=1)
        first = asyncio.ensure_future(b.submit(0))
        await _settle()
        gone = asyncio.ensure_future(b.submit(1))
        kept = asyncio.ensure_future(b.submit(2))
        await _settle()
        gone.cancel()
        await _settle()
        g.release(0)
        await _settle()
        assert g.calls == [[0], [2]]
        g.release(1)
        assert await first == "image-0" and await kept == "image-2"

    asyncio.run(main())


def test_bad_limits_are_refused():
    g = GatedGenerator()
    with pytest.raises(ValueError):
        CallBatcher(g.send_one, g.send_many, max_in_flight=0, max_items=64)
    with pytest.raises(ValueError):
        CallBatcher(g.send_one, g.send_many, max_in_flight=1, max_items=0)


def test_the_calls_in_flight_follow_the_replicas_unless_set():
    from facegen_ray.config import ConfigError, load_config
    from facegen_ray.config.serve import CALLS_PER_REPLICA

    assert load_config(None, ["serve.max_replicas=3"]).serve.calls_in_flight() == 3 * CALLS_PER_REPLICA
    assert load_config(None, ["serve.ingress_calls_in_flight=5"]).serve.calls_in_flight() == 5
    with pytest.raises(ConfigError, match="ingress_calls_in_flight"):
        load_config(None, ["serve.ingress_calls_in_flight=0"])
