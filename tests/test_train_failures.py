"""train/failures.py: a run that cannot restart its workers gives up after train.resource_wait_s
instead of waiting forever (Ray Train's controller retries are unbounded by default), and says
what to do. The cluster proof is benchmarks/cluster_faults.py partition (docs/cluster.md)."""

from __future__ import annotations

import pytest

from facegen_ray.config import TrainConfig
from facegen_ray.train.failures import controller_failure_limit, explain, failure_config, start_timeout_s


def test_start_timeout_follows_ray_trains_variable():
    assert start_timeout_s({}) == 60.0
    assert start_timeout_s({"RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": "15"}) == 15.0
    for bad in ("", "soon", "0", "-3"):
        assert start_timeout_s({"RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": bad}) == 60.0


@pytest.mark.parametrize(
    ("wait_s", "max_failures", "timeout_s", "limit"),
    [
        (600, 3, 60, 40),  # the defaults: 10 start attempts for each of 4 (re)starts
        (600, 0, 60, 10),
        (90, 1, 60, 4),  # ceil(1.5) = 2 per start
        (0, 1, 60, 2),  # no wait still allows one attempt per start
        (600, -1, 60, -1),  # unbounded worker failures: unbounded restarts too
    ],
)
def test_controller_limit_is_the_resource_wait_per_start(wait_s, max_failures, timeout_s, limit):
    train = TrainConfig(resource_wait_s=wait_s, max_failures=max_failures)
    assert controller_failure_limit(train, timeout_s) == limit


def test_failure_config_bounds_the_controller():
    cfg = failure_config(TrainConfig(resource_wait_s=120, max_failures=1))
    assert cfg.max_failures == 1
    assert cfg.controller_failure_limit == controller_failure_limit(TrainConfig(resource_wait_s=120, max_failures=1))
    assert cfg.controller_failure_limit != -1  # Ray's default (-1) is what hung the partitioned run


def test_explain_names_the_lost_host_and_the_resume():
    from ray.train import ControllerError
    from ray.train.v2._internal.exceptions import WorkerGroupStartupTimeoutError

    train = TrainConfig(resource_wait_s=120, num_workers=2, placement_strategy="STRICT_SPREAD")
    msg = explain("r1", train, ControllerError(WorkerGroupStartupTimeoutError(num_workers=2)))
    assert "could not be (re)started within train.resource_wait_s=120 s" in msg
    assert "STRICT_SPREAD" in msg and "run the same command again" in msg and "latest checkpoint" in msg
    assert explain("r1", train, RuntimeError("boom")) == "training run 'r1' failed: boom"
