"""The pieces of a sweep that searches for a better recipe (tune_configs/cpu-32-search.yaml):
ASHA with a noise margin, start points (the hand-set default as trial 1), and the budget a
sweep reports (CPU-minutes and images per trial). No Ray cluster: the scheduler's bookkeeping,
the sweep file and the results rows are checked directly."""

from __future__ import annotations

import pickle
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import yaml

from facegen_ray.cli import main as cli_main
from facegen_ray.tune.spec import load_sweep, param_space, start_points
from tests.test_tune import no_ray, write_sweep  # noqa: F401 - fixture

REPO = Path(__file__).resolve().parents[1]
SEARCH = REPO / "tune_configs" / "cpu-32-search.yaml"


class _Trial:
    def __init__(self, trial_id: str):
        self.trial_id = trial_id


def _bracket(margin: float):
    from facegen_ray.tune.asha import MarginASHAScheduler

    sched = MarginASHAScheduler(time_attr="images_seen", max_t=400, grace_period=100, reduction_factor=2, margin=margin)
    return sched, sched._brackets[0]


@pytest.mark.parametrize("margin", [0.0, 2.0])
def test_margin_asha_stops_only_beyond_the_margin(margin):
    """Rewards are -FID. Trials reach the 100-image rung in turn: FID 40 (first: continues), FID
    50 (stopped by both: 10 worse). With 40 and 50 recorded the cutoff for reduction factor 2 is
    their median, FID 45: a trial at FID 46 is stopped by plain ASHA but continues with margin 2;
    then the cutoff is 46 and one at FID 48.5 is stopped by both."""
    from ray.tune.schedulers import TrialScheduler

    _, b = _bracket(margin)
    assert b.on_result(_Trial("a"), 100, -40.0) == TrialScheduler.CONTINUE
    assert b.on_result(_Trial("b"), 100, -50.0) == TrialScheduler.STOP  # 10 worse than the one value there
    near = b.on_result(_Trial("c"), 100, -46.0)  # cutoff over {40, 50} = 45
    assert near == (TrialScheduler.STOP if margin < 1.0 else TrialScheduler.CONTINUE)
    # now {40, 50, 46}: cutoff (median) 46; FID 48.5 is 2.5 worse, beyond either margin
    assert b.on_result(_Trial("d"), 100, -48.5) == TrialScheduler.STOP


def test_a_trial_is_never_stopped_on_its_final_report():
    """Ray's ASHA answers STOP to every report at max_t; Tune then ends the trial's actor while
    Ray Train is still shutting down, and the worker group's placement group is never removed
    (the real sweep stalled so). A report with final=True is let through; one at max_t without
    it (a trial of a longer schedule) and an early-rung stop are still stopped."""
    from ray.tune.schedulers import TrialScheduler

    sched, _ = _bracket(0.0)
    sched.set_search_properties("fid", "min")
    for t in "abcd":
        sched.on_trial_add(None, _Trial(t))
    end = {"images_seen": 400, "fid": 30.0}
    assert sched.on_trial_result(None, _Trial("a"), {**end, "final": True}) == TrialScheduler.CONTINUE
    assert sched.on_trial_result(None, _Trial("a"), {**end, "final": False}) == TrialScheduler.STOP
    assert sched._num_stopped == 1
    assert sched.on_trial_result(None, _Trial("b"), {"images_seen": 100, "fid": 40.0}) == TrialScheduler.CONTINUE
    worse = {"images_seen": 100, "fid": 90.0}
    assert sched.on_trial_result(None, _Trial("c"), worse) == TrialScheduler.STOP  # early rung: stopped
    # a run that ends at a rung (its own total, e.g. max_minutes) is not stopped either
    assert sched.on_trial_result(None, _Trial("d"), {**worse, "final": True}) == TrialScheduler.CONTINUE
    assert sched._num_stopped == 2


def test_rung_records_survive_a_resume():
    """Tune pickles the scheduler only into tuner.pkl when the sweep starts (empty rungs) and
    checkpoints callbacks, not the scheduler. Without RungState a restored sweep's rungs are empty
    and the next trial passes one at any FID (seen on the real sweep: FID 319 through a rung where
    the default had 93); with it the records come back and that trial is stopped."""
    from ray.tune.schedulers import TrialScheduler

    from facegen_ray.tune.asha import RungState

    sched, b = _bracket(3.0)
    at_start = pickle.dumps((sched, RungState(sched)))  # tuner.pkl: one pickle, empty rungs
    b.on_result(_Trial("a"), 100, -40.0)
    b.on_result(_Trial("b"), 100, -44.0)
    saved = pickle.loads(pickle.dumps(RungState(sched).get_state()))  # Tune's callback checkpoint

    lost, _ = pickle.loads(at_start)  # restored without the callback state: the bug
    assert lost._brackets[0].on_result(_Trial("c"), 100, -319.0) == TrialScheduler.CONTINUE

    back, cb = pickle.loads(at_start)
    assert cb.scheduler is back and back.margin == 3.0 and back._brackets[0].margin == 3.0
    cb.set_state(saved)
    assert back._brackets[0]._rungs[-1][1] == {"a": -40.0, "b": -44.0}
    assert back._brackets[0].on_result(_Trial("c"), 100, -319.0) == TrialScheduler.STOP
    assert back._brackets[0].on_result(_Trial("d"), 100, -41.0) == TrialScheduler.CONTINUE
    with pytest.raises(ValueError, match="margin"):
        _bracket(-1.0)


def test_a_restored_tuner_carries_rung_state(tmp_path):
    """carry_rung_state on a Tuner as Tuner.restore returns it: a RungState bound to the
    restored scheduler is present whether or not the sweep was started with one."""
    from ray import tune

    from facegen_ray.tune.asha import MarginASHAScheduler, RungState, carry_rung_state

    for with_callback in (True, False):
        sched = MarginASHAScheduler(time_attr="images_seen", max_t=400, grace_period=100, reduction_factor=2)
        tuner = tune.Tuner(
            _noop_trainable,
            tune_config=tune.TuneConfig(metric="fid", mode="min", scheduler=sched),
            run_config=tune.RunConfig(
                storage_path=str(tmp_path), callbacks=[RungState(sched)] if with_callback else []
            ),
        )
        restored = pickle.loads(pickle.dumps(tuner._local_tuner.__getstate__()))  # what tuner.pkl holds
        tuner._local_tuner.__setstate__(restored)
        carry_rung_state(tuner)
        cbs = [c for c in tuner._local_tuner._run_config.callbacks if isinstance(c, RungState)]
        assert len(cbs) == 1 and cbs[0].scheduler is tuner._local_tuner._tune_config.scheduler


def _noop_trainable(config):  # Tune's generator needs a trainable to name; never run here
    return None


def test_search_sweep_is_valid_and_its_first_trial_is_the_hand_set_default():
    """The shipped search file validates; its start point reproduces configs/cpu-32-handset.yaml
    (configs/cpu-32.yaml when the search ran) on every searched key, so trial 1 is the hand-set
    recipe on the sweep's proxy schedule; the scheduler is ASHA with the file's margin."""
    from facegen_ray.config import load_config
    from facegen_ray.tune.asha import MarginASHAScheduler
    from facegen_ray.tune.runner import _scheduler

    s = load_sweep(SEARCH)
    raw = yaml.safe_load(SEARCH.read_text())
    shipped = load_config(REPO / "configs" / "cpu-32-handset.yaml")
    point = s.spec.start_points[0]
    assert set(point) == set(s.spec.search_space)
    trial = s.trial_config(point)
    assert trial.train.g_lr == shipped.train.g_lr and trial.train.d_lr == shipped.train.d_lr
    assert tuple(trial.train.betas) == tuple(shipped.train.betas)
    assert trial.loss.name == shipped.loss.name
    assert trial.loss.r1_gamma_at(32, 32) == pytest.approx(shipped.loss.r1_gamma_at(32, 32))
    assert trial.loss.ls_lambda == shipped.loss.ls_lambda and trial.loss.gp_lambda == shipped.loss.gp_lambda
    assert trial.train.batch_size == shipped.train.batch_size
    assert trial.train.ema_half_life_images == shipped.train.ema_half_life_images
    assert trial.model.mapping_lr_mul == shipped.model.mapping_lr_mul
    assert trial.model.style_mixing_prob == shipped.model.style_mixing_prob
    # through Ray Tune's own generator (no cluster needed): trial 1 is the start point, decoded
    # (list values such as train.betas survive), the rest are samples of the space
    from ray.tune.search import BasicVariantGenerator

    from facegen_ray.tune.distributions import decode_params

    gen = BasicVariantGenerator(points_to_evaluate=start_points(s.spec), random_state=0)
    gen.add_configurations({"run": {"run": _noop_trainable, "config": param_space(s.spec), "num_samples": 3}})
    trials = [gen.next_trial() for _ in range(3)]
    params = [decode_params(t.config["params"]) for t in trials]
    assert params[0] == point
    for p in params[1:]:
        assert set(p) == set(point) and p["train.betas"] in raw["search_space"]["train.betas"]["choice"]
        assert isinstance(s.trial_config(p).train.betas, tuple | list)
    sched = _scheduler(s)
    assert isinstance(sched, MarginASHAScheduler)
    assert sched.margin == raw["scheduler"]["margin"] > 0
    assert sorted(m for m, _ in sched._brackets[0]._rungs) == [40_000, 120_000]
    # a resumed trial loses at most one rung: checkpoints at least as often as evaluations
    assert s.base_cfg.train.checkpoint_every_images <= s.base_cfg.train.eval_every_images


def test_the_shipped_cpu_32_recipe_is_the_search_winner_on_the_hand_set_config():
    """configs/cpu-32.yaml trains exactly what the 60-minute pairs trained as "winner": the
    hand-set config with the search report's winner_sets (benchmarks/quality_pair.py
    --winner-from). The report's unused lambdas (R1 gamma, WGAN-GP) are the only difference, and
    least squares reads neither."""
    import json

    from facegen_ray.config import load_config

    report = json.loads((REPO / "docs" / "tune" / "cpu-32-search-report.jsonl").read_text().splitlines()[0])
    as_paired = load_config(REPO / "configs" / "cpu-32-handset.yaml", overrides=report["winner_sets"])
    shipped = load_config(REPO / "configs" / "cpu-32.yaml")
    assert shipped.loss.name == "lsgan"
    a, b = as_paired.model_dump(), shipped.model_dump()
    for cfg in (a, b):
        cfg["train"].pop("run_name")
        for unused in ("r1_gamma", "gp_lambda"):  # read by non-saturating and WGAN-GP only
            cfg["loss"].pop(unused)
    assert a == b


@pytest.mark.parametrize(
    "fields, expected",
    [
        ({"start_points": [{"train.d_lr": 0.001}]}, "'train.d_lr' is not a search_space key"),
        (
            {"start_points": [{"train.g_lr": 0.001}, {"train.g_lr": 0.002}], "num_samples": 1},
            "2 points but num_samples is 1",
        ),
        ({"start_points": [{"train.g_lr": -1.0}]}, "start_points[0]"),
        (
            {"search_space": {"train.g_lr": {"grid": [0.001, 0.002]}}, "start_points": [{"train.g_lr": 0.001}]},
            "not supported with grid",
        ),
        ({"scheduler": {"type": "asha", "margin": -1}}, "margin"),
    ],
)
def test_bad_start_points_and_margin_exit_2(tmp_path, capsys, no_ray, fields, expected):  # noqa: F811
    base = {"search_space": {"train.g_lr": {"loguniform": [1e-4, 1e-2]}}, "num_samples": 2}
    sweep = write_sweep(tmp_path / "sweep.yaml", **{**base, **fields})
    assert cli_main(["tune", str(sweep), "--root", str(tmp_path / "root")]) == 2
    assert expected in capsys.readouterr().err


def _result(trial_id: str, evals: list[tuple[int, float]], time_total_s: float, error=None):
    df = pd.DataFrame([{"images_seen": n, "fid": f} for n, f in evals])
    last = {"images_seen": evals[-1][0], "fid": evals[-1][1], "time_total_s": time_total_s}
    return SimpleNamespace(
        config={"params": {"train.g_lr": 0.001}},
        path=f"/x/{trial_id}",
        metrics=last,
        metrics_dataframe=df,
        error=error,
    )


def test_budget_counts_cpu_minutes_and_images_per_trial():
    """Each row: images trained and CPU-minutes (reserved CPUs x Tune's wall time); the summary
    adds them up and the printed table ends with what the sweep spent."""
    from facegen_ray.tune.results import format_table, summarize, trial_row

    s = load_sweep(SEARCH)
    rows = [
        trial_row(_result("t1", [(40_000, 80.0), (80_000, 60.0), (120_000, 50.0)], 1800.0), s, "/exp", 2.0),
        trial_row(_result("t2", [(40_000, 120.0)], 600.0), s, "/exp", 2.0),
    ]
    assert rows[0]["status"] == "finished" and rows[1]["status"] == "stopped"
    assert rows[0]["cpu_minutes"] == 60.0 and rows[1]["cpu_minutes"] == 20.0
    assert [e["images_seen"] for e in rows[0]["evals"]] == [40_000, 80_000, 120_000]
    summary = summarize(rows, s, "/exp", num_gen=2000)
    assert summary["budget"] == {"cpu_minutes": 80.0, "images": 160_000, "trials_counted": 2}
    assert summary["best"]["trial_id"] == "t1"
    table = format_table(summary)
    assert "cpu-min" in table.splitlines()[0]
    assert table.splitlines()[-1] == "spent: 80 CPU-minutes, 160,000 images trained over 2 trials"


def test_a_resumed_trial_counts_the_time_of_its_earlier_drivers():
    """A sweep resumed after the machine stopped restarts the trial's Tune clock (time_total_s);
    the trial driver passes on the loop time its run's checkpoint holds, and the row adds it."""
    from facegen_ray.tune.results import summarize, trial_row

    s = load_sweep(SEARCH)
    resumed = _result("t1", [(40_000, 80.0), (80_000, 60.0)], 600.0)
    resumed.metrics["earlier_attempts_s"] = 1200.0  # its first driver trained 20 minutes
    row = trial_row(resumed, s, "/exp", 2.0)
    assert row["time_total_s"] == 1800.0 and row["earlier_attempts_s"] == 1200.0
    assert row["cpu_minutes"] == 60.0  # not the 20.0 of the last driver alone
    assert summarize([row], s, "/exp", num_gen=2000)["budget"]["cpu_minutes"] == 60.0


def test_the_trial_driver_forwards_the_loop_time_of_the_drivers_before_it(monkeypatch):
    """The first report a trial driver sees carries the loop time restored from the checkpoint
    (earlier drivers); a Ray Train restart under the same driver does not change it (that time
    is in Tune's clock already). Reports without the metric are not forwarded."""
    import ray.tune.integration.ray_train as rt

    from facegen_ray.tune import runner

    sent: list[dict] = []
    monkeypatch.setattr(rt, "_in_tune_session", lambda: True)
    monkeypatch.setattr(
        rt,
        "get_session",
        lambda: SimpleNamespace(_get_or_create_inter_actor_queue=lambda: SimpleNamespace(put=sent.append)),
    )
    cb = runner._report_callback("fid")
    cb.after_report(None, [{"images_seen": 48_000, "train_s": 1500.0, "resumed_train_s": 1200.0}], None)
    cb.after_report(None, [{"images_seen": 60_000, "fid": 70.0, "train_s": 1900.0, "resumed_train_s": 1200.0}], None)
    # the workers restarted from a later checkpoint under this driver
    cb.after_report(None, [{"images_seen": 80_000, "fid": 60.0, "train_s": 2500.0, "resumed_train_s": 1700.0}], None)
    assert [r["images_seen"] for r in sent] == [60_000, 80_000]
    assert [r[runner.EARLIER_KEY] for r in sent] == [1200.0, 1200.0]
    assert sent[-1]["train_s"] == 2500.0
    fresh = runner._report_callback("fid")  # a fresh run: nothing before it
    fresh.after_report(None, [{"images_seen": 40_000, "fid": 90.0, "train_s": 300.0, "resumed_train_s": 0.0}], None)
    assert sent[-1][runner.EARLIER_KEY] == 0.0


def test_a_resumed_trial_keeps_the_evaluations_before_its_resume(tmp_path, capsys):
    """Tune restarts a resumed trial's records (no Tune checkpoint: the run resumes from its own
    Train checkpoint), so Tune's dataframe lacks what came before; the run's history.json has
    every evaluation, and the row takes them from there."""
    import json as _json

    from facegen_ray.tune.results import trial_row

    s = load_sweep(SEARCH, root=str(tmp_path))
    exp = str(tmp_path / "tune" / "cpu-32-search")
    run = Path(exp) / "runs" / "t1"
    run.mkdir(parents=True)
    history = [{"images_seen": 20_000}, {"images_seen": 40_000, "fid": 84.4}, {"images_seen": 80_000, "fid": 56.9}]
    history.append({"images_seen": 120_000, "fid": 38.8})
    run.joinpath("history.json").write_text(_json.dumps(history))
    row = trial_row(_result("t1", [(80_000, 56.9), (120_000, 38.8)], 600.0), s, exp, 2.0)
    assert [(e["images_seen"], e["fid"]) for e in row["evals"]] == [(40_000, 84.4), (80_000, 56.9), (120_000, 38.8)]
    assert row["fid"] == 38.8 and row["best_fid"] == 38.8
    # no run folder (a trial that never started training): Tune's records as they are
    assert len(trial_row(_result("t2", [(40_000, 99.0)], 60.0), s, exp, 2.0)["evals"]) == 1
    # a torn history.json: said, and Tune's records as they are; the file is left for a look
    torn = Path(exp) / "runs" / "t3"
    torn.mkdir(parents=True)
    torn.joinpath("history.json").write_text('[{"images_seen": 40000, "fi')
    assert len(trial_row(_result("t3", [(40_000, 97.0)], 60.0), s, exp, 2.0)["evals"]) == 1
    assert "is not JSON" in capsys.readouterr().err
    assert torn.joinpath("history.json").read_text().endswith('"fi')


def test_tune_report_writes_every_trial_at_every_rung(tmp_path):
    """benchmarks/tune_report.py: one table row per trial in start order with its FID at each
    rung (blank where it was stopped), the budget line, and a plot file."""
    import importlib.util
    import json
    import subprocess
    import sys

    from facegen_ray.tune.results import summarize, trial_row

    s = load_sweep(SEARCH)
    rows = [
        trial_row(_result("ab_00001", [(40_000, 120.0)], 600.0), s, "/exp", 2.0),
        trial_row(_result("ab_00000", [(40_000, 80.0), (80_000, 60.0), (120_000, 50.0)], 1800.0), s, "/exp", 2.0),
    ]
    results = tmp_path / "results.json"
    results.write_text(json.dumps(summarize(rows, s, "/exp", num_gen=2000)))
    spec = importlib.util.spec_from_file_location("tune_report", REPO / "benchmarks" / "tune_report.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    table = mod.markdown_table(json.loads(results.read_text())).splitlines()
    assert table[0].startswith("| # | trial | rank | status | fid @40k | fid @80k | fid @120k | CPU-min | g_lr |")
    assert table[2].startswith("| 1 | ab_00000 | 1 | finished | 80.0 | 60.0 | 50.0 | 60.0 | 0.001 |")
    assert table[3].startswith("| 2 | ab_00001 | 2 | stopped | 120.0 |  |  | 20.0 | 0.001 |")
    assert "spent 80.0 CPU-minutes, 160,000 images" in table[-1]
    out = subprocess.run(
        [
            sys.executable,
            str(REPO / "benchmarks" / "tune_report.py"),
            str(results),
            "--plot",
            str(tmp_path / "p.png"),
            "--table",
            str(tmp_path / "t.md"),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    line = json.loads(out.stdout.strip().splitlines()[-1])
    assert line["best"] == {"trial_id": "ab_00000", "fid": 50.0} and line["budget"]["cpu_minutes"] == 80.0
    assert line["winner_sets"] == ["train.g_lr=0.001"]
    assert (tmp_path / "p.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "t.md").read_text().splitlines() == table


def test_the_driver_removes_the_placement_group_an_ended_trial_named(ray_session, capsys):
    """A stopped trial's Ray Train run may leave its worker group's placement group behind (its
    cleaner needs the dashboard's state API; a controller in shutdown has dismissed it). The
    driver's callback removes every group the trial's reports named once the trial ends, says
    so, and leaves a group that is already gone alone."""
    from ray.util.placement_group import placement_group, placement_group_table

    from facegen_ray.tune.placement import PLACEMENT_GROUP_KEY, ReleasePlacementGroups

    left = placement_group([{"CPU": 1.0}])
    assert left.wait(60)
    gone = placement_group([{"CPU": 1.0}])
    assert gone.wait(60)
    cb = ReleasePlacementGroups()
    trial = _Trial("t1")
    cb.on_trial_result(0, [], trial, {"images_seen": 40, PLACEMENT_GROUP_KEY: left.id.hex()})
    cb.on_trial_result(0, [], trial, {"images_seen": 80})  # reports without the key change nothing
    cb.on_trial_result(0, [], _Trial("t2"), {PLACEMENT_GROUP_KEY: gone.id.hex()})
    # resume: the names travel in Tune's callback checkpoint
    cb2 = ReleasePlacementGroups()
    cb2.set_state(pickle.loads(pickle.dumps(cb.get_state())))
    assert cb2.named == {"t1": {left.id.hex()}, "t2": {gone.id.hex()}}

    cb2.on_trial_complete(0, [], trial)
    assert placement_group_table(left)["state"] == "REMOVED"
    assert placement_group_table(gone)["state"] == "CREATED"  # another trial's: untouched
    assert "trial t1: removed the placement group its ended run left (1 CPU)" in capsys.readouterr().out

    from ray.util.placement_group import remove_placement_group

    remove_placement_group(gone)  # Ray Train removed it itself: nothing to do, nothing printed
    cb2.on_trial_error(0, [], _Trial("t2"))
    assert "removed" not in capsys.readouterr().out and cb2.named == {}
