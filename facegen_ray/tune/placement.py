"""The sweep driver removes the placement group a stopped trial's Ray Train run leaves behind.

A trial's Ray Train controller creates the placement group its workers run in and removes it
when the run ends. Placement groups are owned by the job (the sweep's driver), not by the actor
that created them, so when Tune ends a trial from outside — ASHA stopping it at a rung, a failed
trial driver that Tune retries — only Ray Train's PlacementGroupCleaner is left to remove it. It
did not, on the 2-core sweep of 2026-12-06 (a trial stopped at its 40k rung; the cluster had its
dashboard; why the cleaner missed it was not found), and a controller that has begun its own
shutdown has dismissed it already (asha.py: a trial stopped at max_t). Its CPUs then stay
reserved until the cluster stops, and on a small cluster the next trial's workers never start.

So rank 0 names its worker group's placement group in its reports (train/loop.py,
PLACEMENT_GROUP_KEY), and ReleasePlacementGroups — a Tune callback on the
driver — removes every group a trial named once that trial has ended (complete, error) or is
about to be retried (recover), unless Ray Train already removed it.
"""

from __future__ import annotations

from typing import Any

from ray.tune import Callback

from facegen_ray.train.loop import PLACEMENT_GROUP_KEY


def release(pg_hex: str) -> dict[str, float] | None:
    """Remove the placement group unless it is gone already; returns what it reserved (summed
    over its bundles) when it was removed here, else None."""
    from ray._raylet import PlacementGroupID
    from ray.util.placement_group import PlacementGroup, placement_group_table, remove_placement_group

    pg = PlacementGroup(PlacementGroupID(bytes.fromhex(pg_hex)))
    info = placement_group_table(pg)
    if not info or info.get("state") in (None, "REMOVED"):
        return None
    held: dict[str, float] = {}
    for bundle in (info.get("bundles") or {}).values():
        for k, v in bundle.items():
            held[k] = held.get(k, 0.0) + float(v)
    remove_placement_group(pg)
    return held


class ReleasePlacementGroups(Callback):
    """Per trial, the placement groups its reports named; removed when the trial ends."""

    def __init__(self) -> None:
        self.named: dict[str, set[str]] = {}

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        pg = (result or {}).get(PLACEMENT_GROUP_KEY)
        if isinstance(pg, str) and pg:
            self.named.setdefault(trial.trial_id, set()).add(pg)

    def _release(self, trial) -> None:
        for pg in sorted(self.named.pop(trial.trial_id, set())):
            try:
                held = release(pg)
            except Exception as e:  # noqa: BLE001 - cleanup must never fail the sweep
                print(f"[facegen] trial {trial.trial_id}: could not remove placement group {pg}: {e}", flush=True)
                continue
            if held is not None:
                what = ", ".join(f"{v:g} {k}" for k, v in sorted(held.items()) if v)
                print(
                    f"[facegen] trial {trial.trial_id}: removed the placement group its ended run left ({what})",
                    flush=True,
                )

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self._release(trial)

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self._release(trial)

    def on_trial_recover(self, iteration, trials, trial, **info) -> None:
        self._release(trial)

    def get_state(self) -> dict[str, Any] | None:
        return {"named": {k: sorted(v) for k, v in self.named.items()}}

    def set_state(self, state: dict[str, Any]) -> None:
        for k, v in (state.get("named") or {}).items():
            self.named.setdefault(k, set()).update(v)


def ensure_release_callback(tuner) -> None:
    """A restored Tuner's callbacks come from tuner.pkl (Tuner.restore takes none): a sweep started
    before ReleasePlacementGroups existed gets one now. Ray 2.60 Tuner internals, like
    asha.carry_rung_state."""
    inner = getattr(tuner, "_local_tuner", None)
    run_config = getattr(inner, "_run_config", None)
    if run_config is None:
        return
    callbacks = list(run_config.callbacks or [])
    if not any(isinstance(c, ReleasePlacementGroups) for c in callbacks):
        run_config.callbacks = [*callbacks, ReleasePlacementGroups()]


__all__ = ["PLACEMENT_GROUP_KEY", "ReleasePlacementGroups", "ensure_release_callback", "release"]
