"""Hyperparameter sweeps: Ray Tune over Ray Train runs, ranked by FID (see runner.py).

from facegen_ray.tune import load_sweep, run_sweep
summary = run_sweep(load_sweep("tune_configs/quickstart-cpu.yaml"))
"""

from facegen_ray.tune.spec import (
    Sweep,
    SweepError,
    SweepSpec,
    load_sweep,
    param_space,
    to_tune_domain,
)

# Imported where used, not here: tune.runner (numpy, pyarrow, Ray at run time): commands/tune
# imports tune.spec, so this package stays light.

__all__ = ["Sweep", "SweepError", "SweepSpec", "load_sweep", "param_space", "run_sweep", "to_tune_domain"]


def run_sweep(*args, **kwargs):
    """See facegen_ray.tune.runner.run_sweep (imported lazily: it pulls in Ray)."""
    from facegen_ray.tune.runner import run_sweep as _run

    return _run(*args, **kwargs)
