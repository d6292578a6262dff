"""Progress bars: drawn on a terminal, silent in logs/CI (facegen_ray/progress.py), and the
bars of evaluate, train and tune built on that decision."""

from __future__ import annotations

import io
import time

from facegen_ray import progress
from facegen_ray.config import config_from_dict


class _Stream(io.StringIO):
    def __init__(self, tty: bool):
        super().__init__()
        self._tty = tty

    def isatty(self) -> bool:
        return self._tty


def test_progress_enabled_follows_the_terminal(monkeypatch):
    monkeypatch.delenv(progress.ENV, raising=False)
    assert progress.enabled(_Stream(True)) is True
    assert progress.enabled(_Stream(False)) is False
    assert progress.enabled(object()) is False  # no isatty at all
    closed = io.StringIO()
    closed.close()  # isatty() raises ValueError
    assert progress.enabled(closed) is False
    monkeypatch.setenv(progress.ENV, "0")
    assert progress.enabled(_Stream(True)) is False
    monkeypatch.setenv(progress.ENV, "1")
    assert progress.enabled(_Stream(False)) is True


def test_progress_bar_draws_only_on_a_terminal(monkeypatch):
    monkeypatch.delenv(progress.ENV, raising=False)
    log, tty = _Stream(False), _Stream(True)
    for stream in (log, tty):
        with progress.bar(total=50, desc="features", unit="img", stream=stream, mininterval=0) as b:
            for _ in range(5):
                b.update(10)
    assert log.getvalue() == ""  # a log file or CI gets nothing
    assert "features" in tty.getvalue() and "50/50" in tty.getvalue()


def test_configure_ray_data_follows_the_decision(monkeypatch):
    class Ctx:
        enable_progress_bars = True

    ctx = Ctx()
    monkeypatch.setattr("sys.stderr", _Stream(False))
    monkeypatch.delenv(progress.ENV, raising=False)
    assert progress.configure_ray_data(ctx) is False and ctx.enable_progress_bars is False
    monkeypatch.setattr("sys.stderr", _Stream(True))
    assert progress.configure_ray_data(ctx) is True and ctx.enable_progress_bars is True


def test_polled_bar_follows_the_reported_count(monkeypatch):
    monkeypatch.delenv(progress.ENV, raising=False)
    reports = iter([None, (64, "8x8 α=0.50"), (32, ""), (160, "16x16 α=1.00")])
    tty = _Stream(True)
    with progress.PolledBar(lambda: next(reports), 320, "train quick", unit="img", interval=3600, stream=tty) as b:
        for expected in (0, 64, 64, 160):  # None: nothing yet; a smaller count never moves it back
            b.update_once()
            assert b.bar.n == expected
    assert "train quick" in tty.getvalue() and "16x16" in tty.getvalue()

    def broken():
        raise RuntimeError("board gone")

    b = progress.PolledBar(broken, 10, "x", stream=_Stream(True), interval=3600)
    b.update_once()  # a failing poll never breaks the work it shows
    b.bar.close()
    calls = []
    log = _Stream(False)
    with progress.PolledBar(lambda: calls.append(1), 10, "x", stream=log, interval=0.01):
        time.sleep(0.05)
    assert calls == [] and log.getvalue() == ""  # off the terminal: no thread, no polling, no output


def test_polled_bar_thread_polls_while_running(monkeypatch):
    monkeypatch.delenv(progress.ENV, raising=False)
    counts = iter(range(1, 1000))
    with progress.PolledBar(lambda: (next(counts), ""), None, "t", stream=_Stream(True), interval=0.01) as b:
        deadline = time.time() + 5
        while b.bar.n < 3 and time.time() < deadline:
            time.sleep(0.01)
    assert b.bar.n >= 3


def test_training_bar_is_off_without_a_terminal(monkeypatch):
    from facegen_ray.train.progress_bar import progress_postfix, training_bar

    monkeypatch.setattr("sys.stderr", _Stream(False))
    monkeypatch.delenv(progress.ENV, raising=False)
    callbacks, ctx = training_bar(config_from_dict({}))
    assert callbacks == []  # no Ray actor, no Train callback
    with ctx:
        pass
    text = progress_postfix(
        {"images_seen": 10, "resolution": 16, "alpha": 0.25, "d_loss": 0.5, "g_loss": 1.25, "img_per_s": 85.4}
    )
    assert text == "16x16 α=0.25 D 0.500 G 1.250 85 img/s"


def test_tune_trials_bar(monkeypatch):
    from facegen_ray.tune.callbacks import trials_bar_callback

    monkeypatch.delenv(progress.ENV, raising=False)
    monkeypatch.setattr("sys.stderr", _Stream(False))
    assert trials_bar_callback(4, "fid") is None
    tty = _Stream(True)
    monkeypatch.setattr("sys.stderr", tty)
    cb = trials_bar_callback(3, "fid")

    class Trial:
        def __init__(self, tid, result):
            self.trial_id, self.last_result = tid, result

    cb.on_trial_complete(1, [], Trial("a", {"fid": 80.0}))
    cb.on_trial_error(2, [], Trial("b", {}))
    cb.on_trial_complete(3, [], Trial("c", {"fid": 60.5}))
    assert cb.bar.n == 3 and cb.best == 60.5
    cb.on_experiment_end([])
    assert "tune trials" in tty.getvalue() and "best fid 60.5" in tty.getvalue()


def test_evaluate_progress_logs_without_a_terminal(monkeypatch, caplog):
    import logging

    from facegen_ray.metrics.reals import _Progress

    monkeypatch.delenv(progress.ENV, raising=False)
    monkeypatch.setattr("sys.stderr", _Stream(False))
    with caplog.at_level(logging.INFO, logger="facegen_ray.metrics.reals"):
        p = _Progress(100, "inception(real)")
        assert p._bar is None
        for _ in range(4):
            p.update(25)
        p.close()
    lines = [r.getMessage() for r in caplog.records if "inception(real)" in r.getMessage()]
    assert lines == [
        "inception(real): 25/100 images",
        "inception(real): 50/100 images",
        "inception(real): 75/100 images",
        "inception(real): 100/100 images",
    ]
    tty = _Stream(True)
    monkeypatch.setattr("sys.stderr", tty)
    p = _Progress(10, "inception(generated)")
    p.update(10)
    p.close()
    assert p._bar is not None and "inception(generated)" in tty.getvalue()


def test_training_bar_on_a_terminal_reads_rank0_reports(ray_session, monkeypatch):
    """The Train callback (run by the Train controller) puts rank 0's report on a board actor;
    the driver's bar polls it."""
    from facegen_ray.train.progress_bar import training_bar

    tty = _Stream(True)
    monkeypatch.setattr("sys.stderr", tty)
    monkeypatch.delenv(progress.ENV, raising=False)
    cfg = config_from_dict({"train": {"total_images": 640, "run_name": "barred"}})
    callbacks, bar = training_bar(cfg)
    assert len(callbacks) == 1 and isinstance(bar, progress.PolledBar) and bar.bar.total == 640
    assert bar.poll() is None  # nothing reported yet
    callbacks[0].after_report(
        None,
        [
            {
                "images_seen": 64,
                "resolution": 8,
                "alpha": 0.5,
                "d_loss": 0.7,
                "g_loss": 1.1,
                "img_per_s": 40.0,
                "checkpoint_s": 0.0,
            },
            {"images_seen": 64},
        ],
        None,
    )
    callbacks[0].after_report(None, [{"fid": 80.0}], None)  # a report without images_seen changes nothing
    deadline = time.time() + 30
    while bar.poll() is None and time.time() < deadline:  # .remote() is asynchronous
        time.sleep(0.05)
    bar.update_once()
    bar.bar.close()
    assert bar.bar.n == 64 and "train barred" in tty.getvalue() and "8x8 α=0.50" in tty.getvalue()
