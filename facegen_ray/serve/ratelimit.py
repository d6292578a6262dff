"""Rate limits that hold across ingress replicas: token buckets in one actor of the app.

    FacegenIngress replica 1 ─┐  actor.take.remote(route, [address key, rater key]), or take_many
                              │  with every take waiting at that replica (serve/session_routes.py)
    FacegenIngress replica 2 ─┼──────────────►  GuardActor (plain Ray actor, head node): TokenBuckets
    ...                       ┘  actor.session_secret.remote()   (the HMAC secret when the env has none)
                                   ▲ created and owned by FacegenGuard (Serve deployment, 1 replica,
                                     no CPU, head node), which hands out its handle (actor_handle)

Each route class (serve.rate_limits: generate, feedback, pairs, vote, session) has a bucket per
client address and one per rater: `burst` requests at once, refilled at `per_minute`. A request
takes one token from each of its buckets, or none when any is empty: it then gets 429 with
Retry-After (the seconds until the emptiest bucket has a token). State lives in the guard's
memory only (a restart refills every bucket); the LRU keeps at most `max_keys` buckets, dropping
the least recently used (a dropped bucket comes back full, so the table cannot grow without
bound under a flood of new addresses).

An ingress built without a guard (in-process tests) uses a LocalGuard: the same buckets in its
own memory.
"""

from __future__ import annotations

import logging
import math
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import ray
from ray import serve

from facegen_ray.config import ServeConfig
from facegen_ray.serve.identity import new_secret, secret_from_env
from facegen_ray.serve.singletons import on_head_node

GUARD_NAME = "FacegenGuard"
MAX_KEYS = 200_000

log = logging.getLogger("ray.serve")


class TokenBuckets:
    """Token buckets by (route, key); `take` is all-or-nothing over a request's keys."""

    def __init__(
        self,
        specs: dict[str, Any],
        clock: Callable[[], float] = time.monotonic,
        max_keys: int = MAX_KEYS,
    ) -> None:
        # spec: {"per_minute": float, "burst": int} (serve.rate_limits, as dicts or RateSpec)
        self.specs = {
            k: (float(s["per_minute"]) / 60.0, float(s["burst"]))
            for k, s in ((k, s if isinstance(s, dict) else s.model_dump()) for k, s in specs.items())
        }
        self.clock = clock
        self.max_keys = max_keys
        self._buckets: OrderedDict[tuple[str, str], tuple[float, float]] = OrderedDict()

    def _level(self, route: str, key: str, now: float) -> float:
        rate, burst = self.specs[route]
        tokens, last = self._buckets.get((route, key), (burst, now))
        return min(burst, tokens + max(0.0, now - last) * rate)

    def take(self, route: str, keys: list[str], cost: float = 1.0) -> float:
        """0.0 when `cost` tokens were taken from every key's bucket; else the seconds to wait
        (nothing taken). A cost above the burst is charged as the burst. A route without a
        configured bucket is not limited."""
        if route not in self.specs:
            return 0.0
        rate, burst = self.specs[route]
        cost = min(float(cost), burst)
        now = self.clock()
        levels = {k: self._level(route, k, now) for k in dict.fromkeys(keys)}
        short = [cost - lv for lv in levels.values() if lv < cost]
        if short:
            return max(short) / rate
        for k, lv in levels.items():
            self._buckets[(route, k)] = (lv - cost, now)
            self._buckets.move_to_end((route, k))
        while len(self._buckets) > self.max_keys:
            self._buckets.popitem(last=False)
        return 0.0

    def __len__(self) -> int:
        return len(self._buckets)


class GuardCore:
    """What the guard holds: the buckets and the session secret (env, else random)."""

    def __init__(self, serve_cfg: dict[str, Any]) -> None:
        cfg = ServeConfig.model_validate(serve_cfg)
        self.buckets = TokenBuckets(cfg.rate_limits)
        env = secret_from_env()
        if env is None:
            log.warning(
                "FACEGEN_SESSION_SECRET is not set: rater sessions use a random secret that ends "
                "when the app's guard restarts (set it, >= 32 chars, on every node to keep sessions)"
            )
        self._secret = env or new_secret()

    def take(self, route: str, keys: list[str], cost: float = 1.0) -> float:
        return self.buckets.take(route, keys, cost)

    def take_many(self, takes: list[tuple[str, list[str], float]]) -> list[float]:
        """take() for each (route, keys, cost), in order: one call for an ingress's waiting requests."""
        return [self.buckets.take(route, keys, cost) for route, keys, cost in takes]

    def session_secret(self) -> bytes:
        return self._secret


class _Local:
    """`obj.method.remote(...)` -> awaitable, like a Serve handle, for a GuardCore in process."""

    def __init__(self, fn) -> None:
        self._fn = fn

    async def remote(self, *args: Any) -> Any:
        return self._fn(*args)


class LocalGuard:
    """A guard in the ingress's own memory (tests that drive the FastAPI app in process); its
    actor_handle() is itself."""

    def __init__(self, serve_cfg: dict[str, Any]) -> None:
        self.core = GuardCore(serve_cfg)
        self.take = _Local(self.core.take)
        self.take_many = _Local(self.core.take_many)
        self.session_secret = _Local(self.core.session_secret)
        self.actor_handle = _Local(lambda: self)


class GuardActor(GuardCore):
    """The guard's state in a plain Ray actor (ray.remote below): the ingress replicas call it
    directly, which costs a third of a Serve handle call (1.6 vs 5 ms on the 2-core VM)."""


RemoteGuardActor = ray.remote(GuardActor)


@serve.deployment(name=GUARD_NAME, num_replicas=1, ray_actor_options=on_head_node(), max_ongoing_requests=10_000)
class GuardDeployment:
    """The app's one guard replica: Serve keeps it alive, on the head node, for the app's life.
    It owns the GuardActor that holds the rate limits and the session secret, so that actor ends
    and is made anew with this replica; ingress replicas ask for its handle once
    (actor_handle) and again after a failed call."""

    def __init__(self, serve_cfg: dict[str, Any]) -> None:
        self.actor = RemoteGuardActor.options(**on_head_node()).remote(serve_cfg)

    def actor_handle(self) -> Any:
        return self.actor


def retry_after(wait_s: float) -> str:
    """The Retry-After header value (whole seconds, at least 1)."""
    return str(max(1, math.ceil(wait_s)))


__all__ = ["GUARD_NAME", "GuardActor", "GuardCore", "GuardDeployment", "LocalGuard", "TokenBuckets", "retry_after"]
