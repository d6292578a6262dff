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
subclass below shifts that cutoff down by the margin; everything else, including how the
scheduler is saved with the experiment and restored by `facegen tune --resume`, is Ray's.
"""

from __future__ import annotations

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


__all__ = ["MarginASHAScheduler", "MarginBracket"]
