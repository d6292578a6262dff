"""The results of a sweep: one row per trial (params, best and last metric, images, status),
ranked (lower FID/KID is better; trials without the metric last), written beside the
experiment as results.json, results.csv and the winner's best_config.yaml, and the table
`facegen tune` prints.
"""

from __future__ import annotations

import csv
import io
import os
import sys
from typing import Any

import numpy as np
import yaml

from facegen_ray.storage import Storage, fs_path_to_uri, join
from facegen_ray.tune.distributions import decode_params
from facegen_ray.tune.spec import Sweep, trial_config

RESULTS_JSON = "results.json"
RESULTS_CSV = "results.csv"
# what a trial driver adds to each result: the training loop time of the drivers before it (a
# resumed sweep restarts the trial's Tune clock, time_total_s; trial_row adds this to it)
EARLIER_KEY = "earlier_attempts_s"
BEST_CONFIG = "best_config.yaml"


def trial_row(result, sweep: Sweep, exp_uri: str, cpus_per_trial: float = 1.0) -> dict[str, Any]:
    """One Tune Result -> the row of results.json/csv. cpus_per_trial: what the trial's Train
    workers reserve; with the trial's wall time it gives the CPU-minutes the trial cost."""
    metric = sweep.spec.metric
    params = decode_params(dict((result.config or {}).get("params", {})))
    trial_id = os.path.basename(str(result.path).rstrip("/"))
    last = result.metrics or {}
    evals: list[dict[str, Any]] = []
    df = result.metrics_dataframe
    if df is not None and metric in df.columns:
        for rec in df.to_dict("records"):
            if rec.get(metric) is not None and not (isinstance(rec[metric], float) and np.isnan(rec[metric])):
                evals.append({"images_seen": int(rec.get("images_seen", 0)), metric: float(rec[metric])})
    elif metric in last:
        evals.append({"images_seen": int(last.get("images_seen", 0)), metric: float(last[metric])})
    # Tune starts a resumed trial's records afresh (its function trainable has no Tune checkpoint);
    # the run's own history, restored from its Train checkpoint, has every evaluation
    history = _run_history(sweep, join(exp_uri, "runs", trial_id))
    from_run = [
        {"images_seen": int(h["images_seen"]), metric: float(h[metric])} for h in history if h.get(metric) is not None
    ]
    if len(from_run) > len(evals):
        evals = from_run
    try:
        total = trial_config(sweep.base, sweep.paths, params).train.total_images
    except Exception:  # noqa: BLE001 - an invalid sample shows up as the trial's error
        total = None
    value = float(last[metric]) if metric in last else None
    images = int(last["images_seen"]) if "images_seen" in last else None
    if result.error is not None:
        status = "error"
    elif value is None:
        status = "no-result"
    elif total is not None and images is not None and images < total:
        status = "stopped"  # by the scheduler (ASHA) or the time budget
    else:
        status = "finished"
    best = min(evals, key=lambda e: e[metric]) if evals else None
    row: dict[str, Any] = {
        "trial_id": trial_id,
        "status": status,
        "params": params,
        metric: value,
        "images_seen": images,
        "evals": evals,
        f"best_{metric}": best[metric] if best else None,
        "best_images_seen": best["images_seen"] if best else None,
        "checkpoint": fs_path_to_uri(last.get("checkpoint_path"), exp_uri),
        "run_uri": join(exp_uri, "runs", trial_id),
        "error": _error_line(result.error),
    }
    for key in ("fid", "kid", "kid_std"):  # the other metrics of the trial's last evaluation, beside its own
        if key != metric and last.get(key) is not None:
            row[key] = float(last[key])
    if last.get("time_total_s") is not None:
        # the trial's wall time: Tune's clock (restarted when a sweep resumes) plus the training
        # loop time of the drivers before the last one, from the run's checkpoint (their start-up,
        # and their time after their last checkpoint, are not counted)
        earlier = float(last.get(EARLIER_KEY) or 0.0)
        row["time_total_s"] = round(float(last["time_total_s"]) + earlier, 1)
        row[EARLIER_KEY] = round(earlier, 1)
        # reserved CPUs x wall time (training, evaluations and start-up)
        row["cpu_minutes"] = round(row["time_total_s"] * cpus_per_trial / 60.0, 1)
    return row


def _run_history(sweep: Sweep, run_uri: str) -> list[dict[str, Any]]:
    """The run's own history.json. Missing (a trial that never started training): Tune's records
    only. Unreadable as JSON (a torn copy): said on stderr, Tune's records only. A storage that
    cannot be reached raises: a report built without the runs' histories would silently drop
    the evaluations before each resume."""
    uri = join(run_uri, "history.json")
    try:
        history = Storage(sweep.base_cfg.storage).read_json(uri)
    except FileNotFoundError:
        return []
    except ValueError as e:  # json.JSONDecodeError and UnicodeDecodeError are both ValueErrors
        print(f"[facegen] {uri} is not JSON ({e}); this trial's row uses Tune's records only", file=sys.stderr)
        return []
    return history if isinstance(history, list) else []


def _error_line(error: BaseException | None) -> str | None:
    """A trial's exception as one line (its type and the last line of its message)."""
    if error is None:
        return None
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[-1][:500] if lines else ''}"


def rank_trials(rows: list[dict[str, Any]], metric: str) -> list[dict[str, Any]]:
    """Rows sorted by their final metric value, lowest first; trials without one last.
    Adds "rank" (1-based; None for trials without a value)."""
    ok = sorted((r for r in rows if r.get(metric) is not None), key=lambda r: (r[metric], r["trial_id"]))
    rest = sorted((r for r in rows if r.get(metric) is None), key=lambda r: r["trial_id"])
    out = []
    for i, r in enumerate(ok, 1):
        out.append({**r, "rank": i})
    out += [{**r, "rank": None} for r in rest]
    return out


def summarize(
    rows: list[dict[str, Any]],
    sweep: Sweep,
    exp_uri: str,
    *,
    reference: dict[str, Any] | None = None,
    num_gen: int | None = None,
) -> dict[str, Any]:
    metric = sweep.spec.metric
    ranked = rank_trials(rows, metric)
    best = ranked[0] if ranked and ranked[0]["rank"] == 1 else None
    best_out = None
    if best is not None:
        best_out = {
            "trial_id": best["trial_id"],
            metric: best[metric],
            "params": best["params"],
            "images_seen": best["images_seen"],
            "checkpoint": best["checkpoint"],
            "run_uri": best["run_uri"],
            "config": trial_config(sweep.base, sweep.paths, best["params"], run_name=f"{sweep.name}-best").model_dump(
                mode="json"
            ),
        }
    spent = [r for r in rows if r.get("cpu_minutes") is not None]
    return {
        "sweep": sweep.name,
        "metric": metric,
        "mode": "min",
        "experiment": exp_uri,
        "num_trials": len(rows),
        "num_finished": sum(r["status"] == "finished" for r in rows),
        "num_stopped": sum(r["status"] == "stopped" for r in rows),
        "num_errors": sum(r["status"] == "error" for r in rows),
        # what the sweep cost: CPU-minutes (reserved CPUs x trial wall time) and images trained
        "budget": {
            "cpu_minutes": round(sum(r["cpu_minutes"] for r in spent), 1) if spent else None,
            "images": sum(int(r["images_seen"] or 0) for r in rows),
            "trials_counted": len(spent),
        },
        "num_gen": num_gen,
        "num_real": (reference or {}).get("n_real"),
        "reference": reference,
        "best": best_out,
        "trials": ranked,
        "results": {
            "json": join(exp_uri, RESULTS_JSON),
            "csv": join(exp_uri, RESULTS_CSV),
            "best_config": join(exp_uri, BEST_CONFIG) if best_out else None,
        },
    }


def write_results(storage: Storage, exp_uri: str, summary: dict[str, Any], sweep: Sweep) -> None:
    metric = summary["metric"]
    storage.write_json(join(exp_uri, RESULTS_JSON), summary)
    keys = list(sweep.spec.search_space)
    buf = io.StringIO()
    w = csv.writer(buf)
    extra = [k for k in ("fid", "kid", "kid_std", "time_total_s", "cpu_minutes") if k != metric]
    w.writerow(
        ["rank", "trial_id", "status", metric, f"best_{metric}", "images_seen", *extra, *keys, "checkpoint", "error"]
    )
    for r in summary["trials"]:
        w.writerow(
            [
                r["rank"],
                r["trial_id"],
                r["status"],
                r[metric],
                r[f"best_{metric}"],
                r["images_seen"],
                *(r.get(k) for k in extra),
                *(r["params"].get(k) for k in keys),
                r["checkpoint"],
                r["error"],
            ]
        )
    storage.write_text(join(exp_uri, RESULTS_CSV), buf.getvalue())
    if summary["best"] is not None:
        head = (
            f"# best trial {summary['best']['trial_id']} of sweep {summary['sweep']} "
            f"({metric} {summary['best'][metric]:.3f}); train it further with\n"
            f"#   facegen train --config best_config.yaml\n"
        )
        storage.write_text(
            join(exp_uri, BEST_CONFIG), head + yaml.safe_dump(summary["best"]["config"], sort_keys=False)
        )


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}" if (abs(v) < 1e-2 or abs(v) >= 1e4) and v != 0 else f"{v:.4f}".rstrip("0").rstrip(".")
    return str(v)


def format_table(summary: dict[str, Any]) -> str:
    """The ranked trials as a fixed-width text table."""
    metric = summary["metric"]
    keys = sorted({k for r in summary["trials"] for k in r["params"]})
    head = ["rank", "trial", "status", metric, f"best {metric}", "kimg", "cpu-min", *keys]
    rows = [
        [
            _fmt(r["rank"]),
            r["trial_id"],
            r["status"],
            _fmt(r[metric]),
            _fmt(r[f"best_{metric}"]),
            _fmt(None if r["images_seen"] is None else r["images_seen"] / 1000),
            _fmt(r.get("cpu_minutes")),
            *(_fmt(r["params"].get(k)) for k in keys),
        ]
        for r in summary["trials"]
    ]
    widths = [max(len(h), *(len(row[i]) for row in rows)) if rows else len(h) for i, h in enumerate(head)]

    def line(cells):
        return "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()

    out = [line(head), line(["-" * w for w in widths]), *(line(r) for r in rows)]
    budget = summary.get("budget") or {}
    if budget.get("cpu_minutes") is not None:
        out.append(
            f"spent: {budget['cpu_minutes']:g} CPU-minutes, {budget['images']:,} images trained "
            f"over {summary['num_trials']} trials"
        )
    for r in summary["trials"]:
        if r["error"]:
            out.append(f"  {r['trial_id']}: {r['error']}")
    return "\n".join(out)
