"""Two recipes on one machine at the same time: benchmarks/quality.py for each, interleaved.

    python benchmarks/quality_pair.py --root <root> --out <out> --set train.seed=1 \\
        --label-a handset --config-a configs/cpu-32-handset.yaml --label-b winner --eval-at 60

(B, the Tune winner, is configs/cpu-32.yaml, quality.py's default; before it shipped, the
winner was the hand-set config plus `--winner-from docs/tune/cpu-32-search-report.jsonl`.)

A 60-minute budget is wall minutes, and a VM's speed moves (2x between days, ~25% within an
hour here): two recipes benchmarked one after the other compare machines as much as recipes.
This driver runs recipe A and recipe B as two quality.py benchmarks (each its own --out, run and
state.json) and alternates their training segments (`quality.py --max-segments 1`): the recipe
with fewer training minutes so far goes next, so at every moment the two have trained within
one segment (<= --max-segment-minutes) of each other, over the same stretch of the machine's
time. Each segment's images/s is in its state.json; the JSON line carries both recipes' rates
per segment, so the reader can see that they met the same machine.

Arguments it does not know (--minutes, --eval-at, --config, --num-gen, ...) go to both
quality.py runs; --config-a / --config-b give each recipe its own config file (the hand-set
recipe against the shipped one: --config-a configs/cpu-32-handset.yaml). Re-running the same
command after an interruption continues both.
Prints ONE JSON line: both results and B's FID relative to A's; <out>/pair.png plots both
recipes' images against training minutes (the lines lie on each other when the machine was fair).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def log(msg: str) -> None:
    print(f"[pair {dt.datetime.now():%H:%M:%S}] {msg}", file=sys.stderr, flush=True)


def segments(out: str) -> list[dict]:
    """The training segments in a quality.py benchmark's state.json (none before its first)."""
    try:
        with open(os.path.join(out, "state.json")) as f:
            return json.load(f)["segments"]
    except FileNotFoundError:
        return []


def trained_minutes(out: str) -> float:
    """Training minutes a quality.py benchmark has spent so far (0 before its first segment)."""
    return sum(s["wall_s"] for s in segments(out)) / 60.0


def finished(out: str) -> bool:
    return os.path.exists(os.path.join(out, "result.json"))


def next_recipe(minutes: dict[str, float], done: dict[str, bool]) -> str | None:
    """The unfinished recipe with fewer training minutes; a tie goes to the first listed."""
    waiting = [k for k in minutes if not done[k]]
    if not waiting:
        return None
    return min(waiting, key=lambda k: (minutes[k], list(minutes).index(k)))


def winner_sets(report: str) -> list[str]:
    """The overrides of a Tune report's winner (the first line's "winner_sets")."""
    with open(report) as f:
        doc = json.loads(f.readline())
    sets = doc.get("winner_sets")
    if not isinstance(sets, list) or not sets:
        raise SystemExit(f"{report}: the first line has no winner_sets list")
    return [str(s) for s in sets]


def rates(out: str) -> list[float]:
    return [round(s["segment_images"] / s["wall_s"], 1) for s in segments(out) if s["wall_s"] > 0]


def plot_pair(outs: dict[str, str], fids: dict[str, float], path: str) -> None:
    """Images vs training minutes of both recipes, one point per segment end: two lines that lie
    on each other say the recipes met the same machine; the legend carries each final FID."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=120)
    for label, out in outs.items():
        minutes, images = [0.0], [0]
        for s in segments(out):
            minutes.append(minutes[-1] + s["wall_s"] / 60.0)
            images.append(s["images"])
        ax.plot(minutes, [i / 1000 for i in images], "o-", ms=3, label=f"{label}: FID {fids[label]:.2f}")
    ax.set_xlabel("training minutes (facegen train wall time)", fontsize=8)
    ax.set_ylabel("images shown (thousands)", fontsize=8)
    ax.set_title("two recipes, alternating segments on one machine", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def segment_command(root: str, out: str, label: str, sets: list[str], passthrough: list[str]) -> list[str]:
    """quality.py for one segment of recipe `label`. Its run is named after the pair's folder
    and the label (<out> = .../pair-s0, label shipped: run pair-s0-shipped), so two pairs (two
    seeds) can share one --root and its prepared dataset without resuming each other's runs."""
    cmd = [sys.executable, os.path.join(HERE, "quality.py"), "--root", root, "--out", os.path.join(out, label)]
    cmd += ["--run-name", f"{os.path.basename(os.path.normpath(out))}-{label}"]
    return cmd + ["--max-segments", "1", *sum((["--set", s] for s in sets), []), *passthrough]


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False
    )
    ap.add_argument("--root", required=True, help="quality.py --root, shared (dataset, real statistics)")
    ap.add_argument("--out", required=True, help="the pair's folder: <out>/<label-a>, <out>/<label-b>")
    ap.add_argument("--label-a", default="a")
    ap.add_argument("--label-b", default="b")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="overrides for both")
    ap.add_argument("--set-a", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--set-b", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--winner-from", default=None, help="a Tune report (.jsonl): its winner_sets go to B")
    ap.add_argument("--config-a", default=None, help="A's config file (default: quality.py's, or --config)")
    ap.add_argument("--config-b", default=None, help="B's config file")
    args, passthrough = ap.parse_known_args()
    if args.label_a == args.label_b:
        ap.error("--label-a and --label-b must differ")

    def given(flag: str) -> bool:  # in the arguments that go to quality.py, as `--flag v` or `--flag=v`
        return any(p == flag or p.startswith(flag + "=") for p in passthrough)

    for flag in ("--out", "--root", "--max-segments", "--run-name"):
        if given(flag):
            ap.error(f"{flag} is set per recipe by the pair")
    if (args.config_a or args.config_b) and given("--config"):
        ap.error("--config goes to both recipes; with --config-a/--config-b name each recipe's file instead")
    for path in (args.config_a, args.config_b):
        if path and not os.path.isfile(path):
            ap.error(f"no config file {path}")
    sets_b = list(args.set_b)
    if args.winner_from:
        sets_b = winner_sets(args.winner_from) + sets_b
    out = os.path.abspath(args.out)
    recipes = {
        args.label_a: (os.path.join(out, args.label_a), args.set + args.set_a),
        args.label_b: (os.path.join(out, args.label_b), args.set + sets_b),
    }
    configs = {
        label: ["--config", os.path.abspath(path)] if path else []
        for label, path in ((args.label_a, args.config_a), (args.label_b, args.config_b))
    }
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "pair.json"), "w") as f:
        info = {k: {"out": o, "sets": s, "config": configs[k][1:]} for k, (o, s) in recipes.items()}
        json.dump(info | {"args": passthrough}, f, indent=1)

    while True:
        minutes = {k: trained_minutes(o) for k, (o, _) in recipes.items()}
        done = {k: finished(o) for k, (o, _) in recipes.items()}
        label = next_recipe(minutes, done)
        if label is None:
            break
        _, sets = recipes[label]
        log(f"{label}: next segment at {minutes[label]:.1f} min (trained minutes: {minutes})")
        cmd = segment_command(args.root, out, label, sets, configs[label] + passthrough)
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"quality.py for {label} failed with exit code {proc.returncode}")

    results = {}
    for k, (rout, _) in recipes.items():
        with open(os.path.join(rout, "result.json")) as f:
            results[k] = json.load(f)
        results[k]["segment_images_per_s"] = rates(rout)
    fids = {k: r["final"]["fid"] for k, r in results.items()}
    fa, fb = fids.values()
    chart = os.path.join(out, "pair.png")
    plot_pair({k: o for k, (o, _) in recipes.items()}, fids, chart)
    print(
        json.dumps(
            {
                "benchmark": "quality_pair",
                "date": dt.date.today().isoformat(),
                "labels": list(recipes),
                "fid": fids,
                "images": {k: r["images"] for k, r in results.items()},
                "b_vs_a_fid_change": round((fb - fa) / fa, 4),
                "chart": chart,
                "results": results,
            }
        )
    )


if __name__ == "__main__":
    main()
