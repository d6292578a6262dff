"""A sweep's record for docs/: every trial's FID at each rung on one plot, and a Markdown table.

    python benchmarks/tune_report.py <root>/tune/<name>/results.json \
        --plot docs/tune/cpu-32-search.png --table docs/tune/cpu-32-search.md

Reads the results.json that `facegen tune` writes (a local path or URI). A sweep that has not
finished has none: `--sweep FILE --root ROOT` in place of results.json reads the trials recorded
so far from the experiment folder (Tune's own records, read offline: nothing is started) and
builds the same rows (`--write-snapshot PATH` keeps them as JSON):

    python benchmarks/tune_report.py --sweep tune_configs/cpu-32-search.yaml --root <root> \
        --plot … --table … --write-snapshot <out>/snapshot.json

The plot draws FID vs images for every trial: finished trials solid, trials ASHA stopped dashed and ending in an x,
the sweep's start point (trial 1, the hand-set default) in black. The table lists each trial's
status, FID at every evaluation point, CPU-minutes and its sampled settings. Prints one JSON line
(best trial and its settings as --set arguments, budget, files written).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))  # run from a checkout


def _short(key: str) -> str:
    return key.split(".", 1)[1] if "." in key else key


def _val(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.3g}"
    if isinstance(v, list):
        return "(" + ", ".join(_val(x) for x in v) + ")"
    return str(v)


def _minutes(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f}"


def trial_order(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """Trials in the order they started (Tune's trial ids end in a counter: xxxxx_00000, ...)."""
    return sorted(summary["trials"], key=lambda r: r["trial_id"])


def markdown_table(summary: dict[str, Any]) -> str:
    metric = summary["metric"]
    trials = trial_order(summary)
    # an evaluation falls due at the first step past its point (40,032 images at batch 64): one
    # column per thousand images
    rungs = sorted({round(e["images_seen"] / 1000) for r in trials for e in r["evals"]})
    keys = sorted({k for r in trials for k in r["params"]})
    head = ["#", "trial", "rank", "status", *[f"{metric} @{n}k" for n in rungs], "CPU-min", *map(_short, keys)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for i, r in enumerate(trials, 1):
        at = {round(e["images_seen"] / 1000): e[metric] for e in r["evals"]}
        cells = [
            str(i),
            r["trial_id"],
            _val(r["rank"]),
            r["status"],
            *(f"{at[n]:.1f}" if n in at else "" for n in rungs),
            _minutes(r.get("cpu_minutes")),
            *(_val(r["params"].get(k)) for k in keys),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    b = summary.get("budget") or {}
    lines.append("")
    lines.append(
        f"{summary['num_trials']} trials ({summary['num_finished']} finished, {summary['num_stopped']} stopped, "
        + (f"{summary['num_unfinished']} unfinished, " if summary.get("num_unfinished") else "")
        + f"{summary['num_errors']} errors); spent {_minutes(b.get('cpu_minutes'))} CPU-minutes, "
        + f"{b.get('images', 0):,} images; {metric} of {summary.get('num_gen')} generated vs "
        + f"{summary.get('num_real')} reals."
    )
    return "\n".join(lines) + "\n"


def plot(summary: dict[str, Any], out: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric = summary["metric"]
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=120)
    for i, r in enumerate(trial_order(summary), 1):
        ev = r["evals"]
        if not ev:
            continue
        xs = [e["images_seen"] / 1000 for e in ev]
        ys = [e[metric] for e in ev]
        stopped = r["status"] != "finished"
        kw = {"color": "black", "lw": 2.0, "zorder": 3} if i == 1 else {"lw": 1.0, "alpha": 0.8}
        (line,) = ax.plot(
            xs, ys, "--" if stopped else "-", marker="o", ms=3, label=f"{i}" + (" (default)" if i == 1 else ""), **kw
        )
        if stopped:
            ax.plot(xs[-1], ys[-1], "x", ms=8, color=line.get_color())
    ax.set_xlabel("thousand real images shown to D")
    ax.set_ylabel(f"{metric.upper()} ({summary.get('num_gen')} gen vs {summary.get('num_real')} real)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6, ncol=2, title="trial (dashed/x: stopped)", title_fontsize=6)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)


def snapshot(sweep_file: str, root: str | None) -> dict[str, Any]:
    """The summary `facegen tune` would write, from the trials Tune has recorded so far."""
    from ray.tune import ExperimentAnalysis, ResultGrid

    from facegen_ray.storage import Layout, Storage
    from facegen_ray.tune.results import summarize, trial_row
    from facegen_ray.tune.runner import trial_resources
    from facegen_ray.tune.spec import load_sweep

    sweep = load_sweep(sweep_file, root=root)
    exp_uri = Layout(sweep.base_cfg.storage.root).tune(sweep.name)
    if not Storage().exists(exp_uri):
        raise SystemExit(f"tune_report: no experiment at {exp_uri}")
    analysis = ExperimentAnalysis(exp_uri)
    cpus = trial_resources(sweep)["CPU"]
    rows = [trial_row(r, sweep, exp_uri, cpus) for r in ResultGrid(analysis)]
    # Tune's saved state says which trials were still running or waiting when it last wrote
    states = {t.trial_id: t.status for t in analysis.trials}
    for r in rows:
        if states.get(r["trial_id"]) in ("RUNNING", "PENDING", "PAUSED"):
            r["status"] = "unfinished"
    summary = summarize(rows, sweep, exp_uri, num_gen=sweep.base_cfg.eval.num_gen)
    summary["num_real"] = sweep.base_cfg.eval.num_real
    summary["num_unfinished"] = sum(r["status"] == "unfinished" for r in rows)
    summary["snapshot"] = True
    return summary


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("results", nargs="?", help="results.json of a sweep (path or URI)")
    ap.add_argument("--sweep", default=None, help="instead of results.json: the sweep file of a sweep in progress")
    ap.add_argument("--root", default=None, help="with --sweep: the storage root it runs under")
    ap.add_argument("--write-snapshot", default=None, help="with --sweep: write the rows read as JSON")
    ap.add_argument("--plot", default=None, help="PNG to write")
    ap.add_argument("--table", default=None, help="Markdown file to write")
    ap.add_argument("--title", default=None)
    args = ap.parse_args()

    from facegen_ray.storage import Storage

    if (args.results is None) == (args.sweep is None):
        ap.error("give results.json or --sweep FILE (with --root), not both")
    summary = snapshot(args.sweep, args.root) if args.sweep else Storage().read_json(args.results)
    if args.write_snapshot:
        with open(args.write_snapshot, "w") as f:
            json.dump(summary, f, indent=1, default=str)
    if args.plot:
        plot(summary, args.plot, args.title or f"sweep {summary['sweep']}: {summary['metric']} vs images, every trial")
    if args.table:
        with open(args.table, "w") as f:
            f.write(markdown_table(summary))
    best = summary.get("best") or {}
    print(
        json.dumps(
            {
                "benchmark": "tune_report",
                "sweep": summary["sweep"],
                "best": {"trial_id": best.get("trial_id"), summary["metric"]: best.get(summary["metric"])},
                # the winner's searched settings as --set arguments (for benchmarks/quality.py on the
                # shipped config: its schedule, not the sweep's proxy one)
                "winner_sets": [f"{k}={json.dumps(v)}" for k, v in sorted((best.get("params") or {}).items())],
                "budget": summary.get("budget"),
                "trials": summary["num_trials"],
                "plot": args.plot,
                "table": args.table,
            }
        )
    )


if __name__ == "__main__":
    main()
