"""The training loop's parts that need no Ray: its counters and log window (loop_state.py),
the log / evaluation / checkpoint decision (`what_is_due`) and the crash tests' fault hooks,
which do nothing unless a run names a fault (faults.py)."""

from __future__ import annotations

import dataclasses
import os

import pytest

from facegen_ray.config import TrainConfig
from facegen_ray.train.faults import FaultHooks
from facegen_ray.train.loop import what_is_due
from facegen_ray.train.loop_state import Counters, LogWindow, crossed, due_after
from facegen_ray.train.schedule import SchedulePoint


def _point(seen: int, batch: int = 8, done: bool = False) -> SchedulePoint:
    return SchedulePoint(seen, 1, 1.0, 8, batch, batch, 1.0, False, done)


def test_counters_round_trip_a_checkpoint_dict():
    c = Counters()
    c.update({"images_seen": 96, "d_steps": "12", "g_steps": 12, "iterations": 12, "other": 5, "train_s": 7})
    assert c.as_dict() == {"images_seen": 96, "d_steps": 12, "g_steps": 12, "iterations": 12, "train_s": 7.0}
    assert isinstance(c.train_s, float) and isinstance(c.images_seen, int)
    c.update({"images_seen": 100})  # a partial dict keeps the rest (an older checkpoint: no train_s)
    assert (c.images_seen, c.d_steps, c.train_s) == (100, 12, 7.0)


def test_log_window_means_and_rates():
    w = LogWindow(started=10.0, images_at_start=100, checkpoint_s=1.5)
    w.add_d(1.0)
    w.add_d(3.0)
    w.add_g(-2.0)
    w.data_s = 0.5
    assert w.entry(12.0, 140) == {
        "d_loss": 2.0,
        "g_loss": -2.0,
        "img_per_s": 20.0,
        "data_wait": 0.25,
        "checkpoint_s": 1.5,
    }
    assert LogWindow(started=0.0, images_at_start=0).entry(0.0, 0)["d_loss"] == 0.0  # no steps: no division by 0


@pytest.mark.parametrize(
    ("every", "prev", "seen", "expected"),
    [
        (10, 0, 8, False),
        (10, 8, 16, True),
        (10, 10, 18, False),
        (10, 9, 10, True),
        (0, 0, 100, False),
        (None, 0, 9, False),
    ],
)
def test_crossed_is_a_multiple_in_the_half_open_interval(every, prev, seen, expected):
    assert crossed(every, prev, seen) is expected


def test_due_after_each_interval_and_the_end():
    kw = {"log_every": 16, "checkpoint_every": 64, "eval_every": None}
    assert not due_after(0, 8, **kw, final=False).report
    d = due_after(8, 16, **kw, final=False)
    assert (d.log, d.checkpoint, d.evaluation, d.write_checkpoint) == (True, False, False, False)
    d = due_after(56, 64, **kw, final=False)
    assert d.log and d.checkpoint and d.write_checkpoint and not d.evaluate
    d = due_after(66, 70, **{**kw, "eval_every": 68}, final=False)
    assert d.evaluation and d.evaluate and not d.log
    d = due_after(1, 2, **kw, final=True)  # the schedule's end: report, evaluate, checkpoint
    assert d.report and d.write_checkpoint and d.evaluate and not d.log


def test_what_is_due_asks_the_budget_only_at_log_points():
    tcfg = TrainConfig(log_every_images=16, checkpoint_every_images=64)
    asked = []

    def over() -> bool:
        asked.append(1)
        return True

    c = Counters(images_seen=8)
    assert not what_is_due(tcfg, c, _point(0), _point(8), 1, over).report and asked == []
    c.images_seen = 16
    due = what_is_due(tcfg, c, _point(8), _point(16), 1, over)
    assert due.final and due.log and due.write_checkpoint and asked == [1]
    assert not what_is_due(tcfg, c, _point(8), _point(16), 1, None).final  # no budget
    assert not what_is_due(tcfg, c, _point(8), _point(16), 1, lambda: False).final
    asked.clear()
    due = what_is_due(tcfg, c, _point(8), _point(16, done=True), 1, over)  # ended anyway: not asked
    assert due.final and asked == []
    c.images_seen = 32  # n_critic = 2: the iteration covered 16 -> 32
    assert what_is_due(tcfg, c, _point(16), _point(32), 2, None).log


def test_fault_hooks_do_nothing_by_default(tmp_path):
    hooks = FaultHooks.from_config({}, rank=0)
    assert hooks == FaultHooks() and hooks.upload_pause(10**9, "dest") is None
    hooks.after_iteration(10**9, 10**9)  # returns: no fault named


def test_fault_hooks_fire_once_on_their_rank_after_their_point(tmp_path):
    marker = tmp_path / "marker"
    cfg = {"checkpoint_fault": {"after_images": 32, "marker": str(marker), "pause_s": 0}}
    assert FaultHooks.from_config(cfg, rank=1).upload_pause(64, "d") is None  # rank 0 only
    hooks = FaultHooks.from_config(cfg, rank=0)
    assert hooks.upload_pause(16, "d") is None  # not yet
    pause = hooks.upload_pause(32, "dest/ckpt")
    assert pause is not None
    pause("meta.json")  # only after state.pt
    assert not marker.exists()
    pause("state.pt")
    assert marker.read_text() == f"{os.getpid()} dest/ckpt\n"
    assert hooks.upload_pause(64, "d") is None  # the marker: once per run

    worker = {"rank": 1, "after_images": 32, "marker": str(tmp_path / "w")}
    hooks = FaultHooks.from_config({"fault": worker}, rank=0)
    hooks.after_iteration(64, 32)  # another rank: returns
    hooks = dataclasses.replace(hooks, rank=1)
    hooks.after_iteration(64, 0)  # no checkpoint yet: returns
    (tmp_path / "w").write_text("fired\n")
    hooks.after_iteration(64, 32)  # fired before: returns
