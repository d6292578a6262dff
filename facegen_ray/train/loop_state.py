"""What the training loop (loop.py) carries from one iteration to the next, as types: the
step counters that checkpoints store, the losses and timings accumulated between two log
lines, and the decision of what is due after an iteration (log, evaluate, checkpoint).

Every decision depends on the counters only, so every rank takes the same one without
talking.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass
class Counters:
    """The run's position; checkpointed as a dict (`as_dict`), summed over workers."""

    images_seen: int = 0  # real images shown to D, all workers together
    d_steps: int = 0
    g_steps: int = 0
    iterations: int = 0  # n_critic D steps + one G step
    # wall seconds of the training loop, summed over every process that resumed this run, up to
    # this point (a killed process's time after its last checkpoint is not in it)
    train_s: float = 0.0

    def update(self, values: Mapping[str, Any]) -> None:
        """Take the known fields from a checkpoint's or a warm start's counters dict."""
        for f in dataclasses.fields(self):
            if f.name in values:
                setattr(self, f.name, type(f.default)(values[f.name]))

    def as_dict(self) -> dict[str, int | float]:
        return dataclasses.asdict(self)


@dataclass
class LogWindow:
    """What accumulates between two log lines: the mean losses, throughput and where the wall
    time went (waiting for data; the previous checkpoint's time is reported in the next line,
    as it happens after the line that announced it)."""

    started: float  # perf_counter at the window's start
    images_at_start: int
    checkpoint_s: float = 0.0
    data_s: float = 0.0
    d_loss_sum: float = 0.0
    d_count: int = 0
    g_loss_sum: float = 0.0
    g_count: int = 0

    def add_d(self, loss: float) -> None:
        self.d_loss_sum += loss
        self.d_count += 1

    def add_g(self, loss: float) -> None:
        self.g_loss_sum += loss
        self.g_count += 1

    def entry(self, now: float, images_seen: int) -> dict[str, float]:
        """The window's part of a history entry."""
        wall = max(now - self.started, 1e-9)
        return {
            "d_loss": self.d_loss_sum / max(self.d_count, 1),
            "g_loss": self.g_loss_sum / max(self.g_count, 1),
            "img_per_s": (images_seen - self.images_at_start) / wall,
            "data_wait": self.data_s / wall,
            "checkpoint_s": self.checkpoint_s,
        }


@dataclass(frozen=True)
class Due:
    """What an iteration that moved images_seen from `prev` to `seen` crossed."""

    log: bool = False
    checkpoint: bool = False
    evaluation: bool = False
    final: bool = False  # the schedule (or the time budget) ended the run here

    @property
    def report(self) -> bool:
        """Anything to write: a history entry goes out with every one of them."""
        return self.log or self.checkpoint or self.evaluation or self.final

    @property
    def write_checkpoint(self) -> bool:
        return self.checkpoint or self.final

    @property
    def evaluate(self) -> bool:
        return self.evaluation or self.final


def crossed(every: int | None, prev: int, seen: int) -> bool:
    """A multiple of `every` lies in (prev, seen]; never when `every` is 0 or None."""
    return bool(every) and seen // every > prev // every


def due_after(
    prev: int, seen: int, *, log_every: int, checkpoint_every: int, eval_every: int | None, final: bool
) -> Due:
    """The log / checkpoint / evaluation decision after one iteration (the same on every rank)."""
    return Due(
        log=crossed(log_every, prev, seen),
        checkpoint=crossed(checkpoint_every, prev, seen),
        evaluation=crossed(eval_every, prev, seen),
        final=final,
    )
