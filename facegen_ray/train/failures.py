"""How many times a training run may fail, and what it says when it gives up.

Ray Train counts two kinds of failure separately:

- a worker group error (a worker raised, its process or its host died): bounded by
  `train.max_failures`; each one restarts the group from the latest checkpoint;
- a controller error, in practice "the worker group could not be started": after a failure the
  controller asks for the workers' resources again and gives up on that attempt after
  RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S (60 s by default), then tries again. Ray's default
  limit for these is infinite, so a run that lost a host nobody replaces (a partition that got
  the node declared dead, a STRICT_SPREAD run with one worker host fewer than workers) waits
  forever with its job RUNNING: a hang, not a recovery.

`failure_config` bounds the second kind by the wait the run already allows for its resources
at start, `train.resource_wait_s`: each of the run's 1 + max_failures (re)starts may wait that
long for its workers, so the controller gets ceil(resource_wait_s / startup timeout) tries per
start. Past that the run fails, and `explain` turns the error into one that says what was
missing and how to resume (the same command: a run resumes from its latest checkpoint).
"""

from __future__ import annotations

import math
import os

from facegen_ray.config import TrainConfig

START_TIMEOUT_ENV = "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S"  # Ray Train's own setting
DEFAULT_START_TIMEOUT_S = 60.0  # Ray Train's default for it


def start_timeout_s(env: dict[str, str] | None = None) -> float:
    """Ray Train's per-attempt wait for a worker group to start (its env var, else 60 s)."""
    raw = (os.environ if env is None else env).get(START_TIMEOUT_ENV)
    try:
        value = float(raw) if raw else DEFAULT_START_TIMEOUT_S
    except ValueError:
        value = DEFAULT_START_TIMEOUT_S
    return value if value > 0 else DEFAULT_START_TIMEOUT_S


def controller_failure_limit(train: TrainConfig, timeout_s: float | None = None) -> int:
    """Worker-group start attempts allowed over the whole run (-1: unbounded, as max_failures -1)."""
    if train.max_failures == -1:
        return -1
    per_start = max(1, math.ceil(train.resource_wait_s / (timeout_s or start_timeout_s())))
    return per_start * (train.max_failures + 1)


def failure_config(train: TrainConfig):
    """Ray Train's FailureConfig for a run: max_failures as configured, controller retries bounded."""
    from ray.train import FailureConfig

    return FailureConfig(max_failures=train.max_failures, controller_failure_limit=controller_failure_limit(train))


def explain(run_name: str, train: TrainConfig, error: BaseException) -> str:
    """The message for a failed fit: a worker group that never restarted gets what to do about it."""
    cause = getattr(error, "controller_failure", None)
    if cause is not None and type(cause).__name__ in {
        "WorkerGroupStartupTimeoutError",
        "WorkerGroupStartupFailedError",
    }:
        return (
            f"training run {run_name!r} stopped: its {train.num_workers} workers could not be (re)started "
            f"within train.resource_wait_s={train.resource_wait_s:g} s (placement {train.placement_strategy}); "
            "a host was probably lost and not replaced. Add or restore hosts (`ray status` shows what is "
            "there) and run the same command again: it resumes from the run's latest checkpoint. "
            f"Ray said: {cause}"
        )
    return f"training run {run_name!r} failed: {error}"
