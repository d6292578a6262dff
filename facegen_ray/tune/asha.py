"""ASHA with a noise margin: a trial is stopped at a rung only when its metric is worse than
the rung's cutoff by more than `margin` (in the metric's units).

Plain ASHA (Ray Tune's AsyncHyperBandScheduler) stops a trial whose value at a rung is worse
than the (1 - 1/reduction_factor) quantile of the values recorded there. An FID measured on a
few thousand generated images has a sampling spread of its own (benchmarks/fid_noise.py
measures it); two trials closer than that spread are not distinguishable, and stopping one of
them is a coin toss. With margin m the rule becomes: stop when FID > cutoff + m. m = 0 is
Ray's ASHA unchanged.

Ray keeps a bracket's bookkeeping in a private class (_Bracket, whose `cutoff` is the quantile
of the recorded rewards; Tune negates the metric for mode="min", so rewards are -FID). The
subclass below shifts that cutoff down by the margin; everything else is Ray's.

Resume: Tune checkpoints its search algorithm and its callbacks with the experiment, but not
its scheduler (ray 2.60, TuneController.save_to_dir). After `facegen tune --resume` a fresh
scheduler would see empty rungs, and the next trial to reach one would pass it whatever its
FID (the first real sweep let a trial at FID 319 through a rung where the default had 93, after a
resume). RungState is a callback that carries the rung records inside Tune's own callback
checkpoint and puts them back into the scheduler on restore.

A trial's last report is never answered with STOP. Ray's ASHA stops every trial that reaches
max_t, on the report itself; Tune then ends the trial's actor at once (its cleanup does not wait
for the training thread), while Ray Train is still shutting down: the controller has already
dismissed its placement-group cleaner and is killed before it removes the worker group's
placement group. Those CPUs stay reserved for the life of the cluster; on the 2-core sweep the
next trial's workers then never started (2026-12-06: trial 1 ended at max_t, trial 2 waited for
CPUs that a dead run held). A report with `final` set comes from a run that is ending by itself,
so the scheduler lets it end. A stop at an earlier rung kills a running controller; the group
it leaves is removed by the sweep's driver (tune/placement.py; tests/test_tune.py checks that
none is left).
"""

from __future__ import annotations

from typing import Any

from ray.tune import Callback
from ray.tune.schedulers import TrialScheduler
from ray.tune.schedulers.async_hyperband import AsyncHyperBandScheduler, _Bracket


class MarginBracket(_Bracket):
    """A bracket whose cutoff is `margin` below the quantile of the rewards (reward = -metric)."""

    def __init__(self, *args, margin: float = 0.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.margin = float(margin)

    def cutoff(self, recorded):
        c = super().cutoff(recorded)
        return None if c is None else c - self.margin


class MarginASHAScheduler(AsyncHyperBandScheduler):
    """AsyncHyperBandScheduler whose rung decisions ignore differences smaller than `margin`."""

    def __init__(
        self,
        *,
        time_attr: str,
        max_t: int,
        grace_period: int,
        reduction_factor: float,
        brackets: int = 1,
        margin: float = 0.0,
        stop_last_trials: bool = True,
    ):
        if margin < 0:
            raise ValueError(f"margin must be >= 0, got {margin}")
        super().__init__(
            time_attr=time_attr,
            max_t=max_t,
            grace_period=grace_period,
            reduction_factor=reduction_factor,
            brackets=brackets,
            stop_last_trials=stop_last_trials,
        )
        self.margin = float(margin)
        self._brackets = [
            MarginBracket(grace_period, max_t, reduction_factor, s, stop_last_trials=stop_last_trials, margin=margin)
            for s in range(brackets)
        ]

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        action = super().on_trial_result(tune_controller, trial, result)
        if action == TrialScheduler.STOP and result.get("final"):
            self._num_stopped -= 1  # it ends by itself: let Ray Train finish its shutdown
            return TrialScheduler.CONTINUE
        return action

    def rung_records(self) -> list[list[tuple[int, dict[str, float]]]]:
        """Per bracket, per rung: (milestone, {trial id: reward}) — what a resume must keep."""
        return [[(int(m), dict(rec)) for m, rec in b._rungs] for b in self._brackets]

    def restore_rung_records(self, records: list[list[tuple[int, dict[str, float]]]]) -> None:
        """Merge saved records into this scheduler's rungs (matched by milestone)."""
        for bracket, saved in zip(self._brackets, records, strict=False):
            by_milestone = {int(m): rec for m, rec in saved}
            for m, rec in bracket._rungs:
                for trial_id, reward in by_milestone.get(int(m), {}).items():
                    rec.setdefault(trial_id, reward)


class RungState(Callback):
    """Saves the scheduler's rung records with Tune's experiment checkpoint (callback state is
    checkpointed and restored by Tune; the scheduler is not) and restores them on --resume."""

    def __init__(self, scheduler: MarginASHAScheduler):
        self.scheduler = scheduler

    def get_state(self) -> dict[str, Any] | None:
        return {"rungs": self.scheduler.rung_records()}

    def set_state(self, state: dict[str, Any]) -> None:
        self.scheduler.restore_rung_records(state.get("rungs") or [])


def carry_rung_state(tuner) -> None:
    """A restored Tuner's scheduler comes from tuner.pkl, pickled when the sweep started (empty
    rungs); its rung records come back through the RungState callback's checkpoint. A sweep
    started before that callback existed gets one now (its records are kept from here on).
    Reaches into Tuner internals (ray 2.60: _local_tuner._tune_config/_run_config): Tuner.restore
    takes no callbacks."""
    inner = getattr(tuner, "_local_tuner", None)
    sched = getattr(getattr(inner, "_tune_config", None), "scheduler", None)
    if not isinstance(sched, MarginASHAScheduler):
        return
    run_config = inner._run_config
    callbacks = list(run_config.callbacks or [])
    carried = [c for c in callbacks if isinstance(c, RungState)]
    for c in carried:
        c.scheduler = sched  # the same object already (one pickle); made sure
    if not carried:
        callbacks.append(RungState(sched))
        run_config.callbacks = callbacks


__all__ = ["MarginASHAScheduler", "MarginBracket", "RungState", "carry_rung_state"]
