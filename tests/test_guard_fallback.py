"""The app's one-replica deployments and what happens when the guard does not answer.

- ModelState and FacegenGuard are pinned to the head node (serve/singletons.py): their options ask
  for the head's resource, and that resource exists under that name in this Ray (the live check).
  tests/test_cluster.py's serving host-kill test is the proof on separate hosts.
- Takes waiting together at an ingress replica go to the guard in one call (take_many).
- The ingress's rate limits never wait on a guard that does not answer: past
  serve.guard_timeout_s the replica's own buckets answer (still limiting), and the guard is asked
  again after GUARD_RETRY_S. The session secret has no stand-in: 503 with Retry-After.
  Plain asyncio with fake guards, no Ray.
"""

from __future__ import annotations

import asyncio

import pytest
from fastapi import HTTPException

from facegen_ray.config import ServeConfig
from facegen_ray.config.serve import RateSpec
from facegen_ray.serve import session_routes
from facegen_ray.serve.model_state import ModelState
from facegen_ray.serve.ratelimit import GuardCore, GuardDeployment
from facegen_ray.serve.session_routes import SessionRoutes
from facegen_ray.serve.singletons import HEAD_NODE_RESOURCE


class _Method:
    def __init__(self, fn) -> None:
        self.fn = fn

    def remote(self, *args):
        return self.fn(*args)


class FakeGuard:
    """A guard whose calls answer (a GuardCore), hang (mode "hang") or raise (mode "raise")."""

    def __init__(self, cfg: ServeConfig) -> None:
        self.core = GuardCore(cfg.model_dump(mode="json"))
        self.mode = "ok"
        self.calls = 0
        self.delay_s = 0.0  # the round trip
        self.take = _Method(lambda *a: self._answer(self.core.take, *a))
        self.take_many = _Method(lambda *a: self._answer(self.core.take_many, *a))
        self.handles = 0  # actor_handle() calls: the ingress asks once, and again after a failure
        self.actor_handle = _Method(self._handle)
        self.session_secret = _Method(lambda *a: self._answer(self.core.session_secret, *a))

    async def _handle(self):
        self.handles += 1
        return self

    async def _answer(self, fn, *args):
        self.calls += 1
        await asyncio.sleep(self.delay_s)
        if self.mode == "hang":
            await asyncio.sleep(3600)
        if self.mode == "raise":
            raise RuntimeError("ActorUnavailableError: the guard's node is gone")
        return fn(*args)


def routes(monkeypatch, burst: int = 3) -> tuple[SessionRoutes, FakeGuard]:
    monkeypatch.delenv("FACEGEN_SESSION_SECRET", raising=False)
    cfg = ServeConfig(guard_timeout_s=0.05, rate_limits={"feedback": RateSpec(burst=burst, per_minute=0.001)})
    r = SessionRoutes()
    r.cfg = cfg
    r.guard = FakeGuard(cfg)
    r._init_sessions()
    return r, r.guard


def test_the_singletons_ask_for_the_head_node():
    for dep in (GuardDeployment, ModelState):
        opts = dep.ray_actor_options
        assert opts["resources"] == {HEAD_NODE_RESOURCE: 0.001}, dep.name
        assert opts["num_cpus"] == 0, dep.name


def test_the_head_resource_exists_under_that_name(ray_session):
    import ray

    assert ray.cluster_resources().get(HEAD_NODE_RESOURCE) == 1.0, sorted(ray.cluster_resources())


def test_an_answering_guard_holds_the_buckets(monkeypatch):
    r, guard = routes(monkeypatch)

    async def go():
        return [await r._take("feedback", ["a:1.2.3.4"]) for _ in range(4)]

    waits = asyncio.run(go())
    assert waits[:3] == [0.0, 0.0, 0.0] and waits[3] > 0  # the guard's burst of 3, then a wait
    assert guard.calls == 4 and r._own_buckets is None
    assert guard.handles == 1  # the guard actor's handle is fetched once, then called directly


def test_takes_waiting_together_share_a_guard_call(monkeypatch):
    """50 requests at once from one address, a 20 ms guard: a few calls carry them all, and the
    answers are the shared buckets' (the burst of 3 admitted, in arrival order, the rest wait)."""
    r, guard = routes(monkeypatch)
    r.cfg = r.cfg.model_copy(update={"guard_timeout_s": 5.0})
    guard.delay_s = 0.02

    async def go():
        return await asyncio.gather(*(r._take("feedback", ["a:1.2.3.4"]) for _ in range(50)))

    waits = asyncio.run(go())
    assert waits[:3] == [0.0, 0.0, 0.0] and all(w > 0 for w in waits[3:])
    assert guard.calls <= 4  # one alone, then the backlog in one or two take_many calls (not 50)
    assert r._own_buckets is None


@pytest.mark.parametrize("mode", ["hang", "raise"])
def test_a_silent_guard_costs_one_timeout_then_local_buckets_limit(monkeypatch, mode):
    r, guard = routes(monkeypatch)
    guard.mode = mode

    async def go():
        t = asyncio.get_running_loop().time()
        waits = [await r._take("feedback", ["a:1.2.3.4"]) for _ in range(4)]
        return waits, asyncio.get_running_loop().time() - t

    waits, took = asyncio.run(go())
    assert guard.calls == 1  # asked once; the other three went straight to the replica's buckets
    assert waits[:3] == [0.0, 0.0, 0.0] and waits[3] > 0  # the limit still holds, per replica
    assert took < 5  # not the guard's hour (asserting on time only to fail instead of hanging)


def test_the_guard_is_asked_again_after_the_retry_interval(monkeypatch):
    r, guard = routes(monkeypatch)
    guard.mode = "raise"
    monkeypatch.setattr(session_routes, "GUARD_RETRY_S", 0.0)

    async def go():
        await r._take("feedback", ["a:1.2.3.4"])  # fails over to the own buckets
        guard.mode = "ok"
        return await r._take("feedback", ["a:5.6.7.8"])

    assert asyncio.run(go()) == 0.0
    assert guard.calls == 2  # back on the guard
    assert guard.handles == 2  # the failed call dropped the actor's handle: asked for anew


def test_no_session_secret_from_a_silent_guard_is_a_503(monkeypatch):
    r, guard = routes(monkeypatch)
    guard.mode = "hang"
    with pytest.raises(HTTPException) as e:
        asyncio.run(r._session_signer())
    assert e.value.status_code == 503 and e.value.headers["Retry-After"] == "5"
    assert r._signer is None  # nothing cached: the next request asks again
    guard.mode = "ok"
    signer = asyncio.run(r._session_signer())
    assert signer is r._signer and guard.calls == 2
