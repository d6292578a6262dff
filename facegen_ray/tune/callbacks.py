"""The sweep driver's own pieces around Ray Tune: the trials progress bar (a Tune callback) and
the set-up that keeps Tune from copying the driver's AWS secrets into trial actors."""

from __future__ import annotations

from facegen_ray.storage_workers import SECRET_ENV


def trials_bar_callback(total: int, metric: str):
    """A Tune callback (it runs on this driver) drawing trials finished out of `total`, with the
    best `metric` so far; None when bars are off (not a terminal: Tune's own status lines stay)."""
    from facegen_ray import progress

    if not progress.enabled():
        return None
    from ray.tune import Callback

    class TrialsBar(Callback):
        def __init__(self):
            self.bar = progress.bar(total=total, desc="tune trials", unit="trial")
            self.best: float | None = None

        def _done(self, trial, status: str) -> None:
            value = (trial.last_result or {}).get(metric)
            if isinstance(value, (int, float)) and value == value:
                self.best = value if self.best is None else min(self.best, value)
            self.bar.update(1)
            self.bar.set_postfix_str(
                f"last {trial.trial_id} {status}"
                + (f", best {metric} {self.best:.3g}" if self.best is not None else "")
            )

        def on_trial_complete(self, iteration, trials, trial, **info):
            self._done(trial, "done")

        def on_trial_error(self, iteration, trials, trial, **info):
            self._done(trial, "error")

        def on_experiment_end(self, trials, **info):
            self.bar.close()

    return TrialsBar()


def stop_tune_forwarding_credentials() -> None:
    """Ray Tune copies the driver's AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY/session token into
    every trainable actor's runtime_env (ray.tune.execution.class_cache), and Ray's runtime_env
    agent writes each runtime_env it creates, values included, to its log on the node's disk.
    Trial actors find credentials the way every other facegen process does, through their own
    node's AWS chain (storage.s3_worker_options), so the secret variables are taken off the
    list. tests/test_secrets.py scans the node's disk for them."""
    try:
        from ray.tune.execution import class_cache
    except ImportError:  # a Ray without that module forwards nothing
        return
    names = getattr(class_cache, "ENV_VARS_TO_PROPAGATE", None)
    if isinstance(names, set):
        names.difference_update(SECRET_ENV)
