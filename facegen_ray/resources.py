"""Waiting for the cluster to have what a job needs, instead of failing on what it has now.

An autoscaling cluster (cluster/ray-up-aws.yaml with min_workers: 0, a KubeRay RayCluster with
autoscaling) starts without the GPU nodes a training run or sweep needs. Comparing the needs
with `ray.cluster_resources()` at start would fail before the autoscaler could add a node; this
module asks the autoscaler for the bundles (ray.autoscaler.sdk.request_resources), prints a
progress line while it waits, and fails with a clear message after the configured wait.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterator

from facegen_ray.errors import UserError

# Imported where used, not here: ray (this module is imported by the driver before Ray starts).

# Ray's own resource of the head node (1.0 there, absent elsewhere): asking for a sliver of it pins
# a task or actor to the head without taking CPU (tune/runner.py's trial drivers, serve/singletons.py)
HEAD_NODE_RESOURCE = "node:__internal_head__"


def shortfall(bundles: list[dict[str, float]], have: dict[str, float]) -> dict[str, tuple[float, float]]:
    """{resource: (needed, present)} for every resource the cluster has less of than the bundles
    need in total (a first check: placement may still need them on one node)."""
    need: dict[str, float] = {}
    for b in bundles:
        for k, v in b.items():
            if v > 0:
                need[k] = need.get(k, 0.0) + float(v)
    return {k: (v, float(have.get(k, 0.0))) for k, v in sorted(need.items()) if float(have.get(k, 0.0)) < v}


def _describe(missing: dict[str, tuple[float, float]]) -> str:
    return ", ".join(f"{need:g} {k} (cluster has {have:g})" for k, (need, have) in missing.items())


def wait_for_resources(bundles: list[dict[str, float]], wait_s: float, what: str, poll_s: float = 2.0) -> bool:
    """Return once the cluster has `bundles` (at once when it has them now). Otherwise ask the
    autoscaler for them and wait up to `wait_s`, printing a progress line every poll; UserError
    when they never appear (at once when wait_s is 0: an embedded Ray that cannot grow). A
    cluster without an autoscaler just waits for someone to add a node. True when a request
    was made (release it with release_resources())."""
    import ray

    missing = shortfall(bundles, ray.cluster_resources())
    if not missing:
        return False
    requested = False
    if wait_s > 0:
        try:
            from ray.autoscaler.sdk import request_resources

            request_resources(bundles=bundles)
            requested = True
        except Exception as e:  # noqa: BLE001 - no autoscaler API: wait all the same
            print(f"[facegen] could not ask the autoscaler for resources ({e}); waiting anyway", file=sys.stderr)
    start = time.monotonic()
    while missing:
        waited = time.monotonic() - start
        if waited >= wait_s:
            if requested:
                release_resources()
            grew = (
                f"the cluster did not grow to fit it within {wait_s:g} s (train.resource_wait_s)"
                if wait_s > 0
                else "this Ray instance cannot grow (facegen started it on this machine)"
            )
            raise UserError(
                f"{what} needs {_describe(missing)} and {grew}. Add nodes of that kind "
                f"(cluster/ray-up-aws.yaml worker types, max_workers), or lower train.num_workers / "
                f"set train.use_gpu=false"
            )
        print(
            f"[facegen] {what}: waiting for {_describe(missing)}; "
            f"{'asked the autoscaler, ' if requested else ''}{waited:.0f} of {wait_s:g} s",
            file=sys.stderr,
            flush=True,
        )
        time.sleep(min(poll_s, max(0.1, wait_s - waited)))
        missing = shortfall(bundles, ray.cluster_resources())
    return requested


def release_resources() -> None:
    """Withdraw this job's autoscaler request, so that idle nodes can be scaled down again."""
    with contextlib.suppress(Exception):
        from ray.autoscaler.sdk import request_resources

        request_resources(bundles=[])


@contextlib.contextmanager
def resources_for(bundles: list[dict[str, float]], wait_s: float, what: str, poll_s: float = 2.0) -> Iterator[None]:
    """wait_for_resources, holding the autoscaler request while the block runs."""
    requested = wait_for_resources(bundles, wait_s, what, poll_s)
    try:
        yield
    finally:
        if requested:
            release_resources()
