"""Training quality on a time budget: FID along the way, through the real `facegen` path.

    python benchmarks/quality.py                                   # configs/cpu-32.yaml, 60 min, UTKFace
    python benchmarks/quality.py --config configs/utkface-64.yaml --minutes 30 --num-gen 10000 ...  # GPU

1. `facegen prepare` the UTKFace zips into <root>/datasets/faces at the config's resolution
   (skipped when the dataset exists).
2. `facegen train --config CONFIG` in segments: each segment resumes the run from its last
   checkpoint with a higher train.total_images, sized from the measured throughput so that
   the segments end at the evaluation points (--eval-at, minutes of training). Training time is
   the wall time of the `facegen train` processes (Ray start-up included); evaluation is not
   counted.
3. At each evaluation point: `facegen evaluate` of the exported G_ema (FID and KID of
   --num-gen generated vs --num-real reals; the reals' features are cached per dataset
   version, so only the first evaluation extracts them); precision/recall at the end.
4. Writes <out>/fid_curve.png, <out>/grid-psi1.0.png and <out>/grid-psi0.7.png (8x8), and
   prints ONE JSON line with every point.

State lives in <out>/state.json: re-running the same command after an interruption continues
(the run resumes from its checkpoint; finished segments and evaluations are not repeated).
"""

from __future__ import annotations

import argparse
import datetime as dt
import glob
import json
import os
import platform
import subprocess
import sys
import time

import yaml

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)  # run from a checkout
DEFAULT_DATA = sorted(glob.glob(os.path.join(REPO, "..", "shared", "data", "utkface", "utkface-part-*.zip")))


def log(msg: str) -> None:
    print(f"[quality {dt.datetime.now():%H:%M:%S}] {msg}", file=sys.stderr, flush=True)


def facegen(*args: str, capture: bool = False) -> str:
    cmd = [sys.executable, "-m", "facegen_ray.cli", *args]
    log("$ facegen " + " ".join(args))
    if capture:
        proc = subprocess.run(cmd, cwd=REPO, stdout=subprocess.PIPE, text=True)
    else:
        proc = subprocess.run(cmd, cwd=REPO, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"facegen {args[0]} failed with exit code {proc.returncode}")
    return proc.stdout if capture else ""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=os.path.join(REPO, "configs", "cpu-32.yaml"))
    ap.add_argument("--root", default=os.path.join(REPO, "facegen-data", "quality"))
    ap.add_argument("--data", nargs="*", default=DEFAULT_DATA, help="sources for facegen prepare (UTKFace zips)")
    ap.add_argument("--minutes", type=float, default=60.0, help="training budget (wall minutes of facegen train)")
    ap.add_argument("--eval-at", default="20,40,60", help="evaluation points, minutes of training")
    ap.add_argument("--num-gen", type=int, default=5000, help="generated images at each evaluation point")
    ap.add_argument(
        "--final-num-gen", type=int, default=None, help="generated images at the last point (default --num-gen)"
    )
    ap.add_argument("--num-real", type=int, default=None, help="default: all reals")
    ap.add_argument(
        "--final-metrics",
        default="fid,kid,pr",
        help="metrics of the last evaluation (precision/recall over 10k x 21k features takes minutes)",
    )
    ap.add_argument("--first-segment", type=int, default=8000, help="images of the first segment (rate unknown)")
    ap.add_argument("--max-segment-minutes", type=float, default=8.0)
    ap.add_argument(
        "--time-boxed",
        action="store_true",
        help="end each segment by time (train.max_minutes = the minutes left to the next evaluation "
        "point, less --startup-s) instead of by an image count sized from the measured rate; "
        "the images reached are read from the exported model",
    )
    ap.add_argument("--startup-s", type=float, default=30.0, help="--time-boxed: facegen train's start-up and export")
    ap.add_argument(
        "--max-segments",
        type=int,
        default=None,
        help="return after this many training segments in this call (state.json keeps the place; "
        "re-running continues): benchmarks/quality_pair.py interleaves two recipes this way",
    )
    ap.add_argument("--out", default=None, help="default <root>/quality")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="extra config overrides")
    ap.add_argument(
        "--run-name",
        default=None,
        help="training run under <root>/runs/ (default: the config's run_name + '-' + the --out folder's name, "
        "so runs sharing a --root, and its prepared dataset and real-image statistics, never share a checkpoint)",
    )
    args = ap.parse_args()
    if any(s.split("=", 1)[0].strip() == "train.run_name" for s in args.set):
        ap.error("set the run with --run-name, not --set train.run_name")

    with open(args.config) as f:
        cfg = yaml.safe_load(f)
    res = int(cfg["data"]["resolution"])
    root = os.path.abspath(args.root)
    out = os.path.abspath(args.out or os.path.join(root, "quality"))
    state_file = os.path.join(out, "state.json")
    previous = None
    if os.path.exists(state_file):
        with open(state_file) as f:
            previous = json.load(f)
    # a continued benchmark keeps its run (state files before --run-name trained the config's own)
    run_name = (
        (previous.get("run_name") or cfg["train"]["run_name"])
        if previous is not None
        else (args.run_name or f"{cfg['train']['run_name']}-{os.path.basename(out)}")
    )
    if previous is None and os.path.exists(os.path.join(root, "runs", run_name)):
        ap.error(
            f"{os.path.join(root, 'runs', run_name)} already holds a run, and {state_file} does not exist: "
            "a fresh benchmark would resume someone else's training; use another --out or --run-name"
        )
    os.makedirs(out, exist_ok=True)
    dataset = os.path.join(root, "datasets", "faces")
    model_dir = os.path.join(root, "runs", run_name, "model")
    common = [
        "--config",
        args.config,
        "--root",
        root,
        *sum((["--set", s] for s in [f"train.run_name={run_name}", *args.set]), []),
    ]
    eval_at = sorted(float(x) for x in args.eval_at.split(","))
    if eval_at[-1] < args.minutes:
        eval_at.append(args.minutes)
    eval_at = [m for m in eval_at if m <= args.minutes]

    from facegen_ray.config import FacegenConfig
    from facegen_ray.train.schedule import ProgressiveSchedule

    fcfg = FacegenConfig.model_validate(cfg)
    schedule = ProgressiveSchedule(fcfg.train, fcfg.model, num_workers=fcfg.train.num_workers)

    def resolution_at(n_images: int) -> int:
        return schedule.at(n_images).resolution

    state = {
        "segments": [],
        "evals": [],
        "config": args.config,
        "run_name": run_name,
        "started": dt.datetime.now().isoformat(timespec="seconds"),
    }
    if previous is not None:
        state = previous
        log(f"continuing from {state_file}: {len(state['segments'])} segments, {len(state['evals'])} evaluations")

    def save() -> None:
        tmp = state_file + ".tmp"
        with open(tmp, "w") as f:
            json.dump(state, f, indent=1)
        os.replace(tmp, state_file)

    # ---------------------------------------------------------------- 1. data
    if not os.path.exists(os.path.join(dataset, "manifest.json")):
        if not args.data:
            raise SystemExit("no UTKFace zips found: pass --data SOURCE ...")
        t0 = time.perf_counter()
        facegen("prepare", *args.data, dataset, "--resolution", str(res), "--root", root)
        state["prepare_s"] = round(time.perf_counter() - t0, 1)
        save()

    def trained_minutes() -> float:
        return sum(s["wall_s"] for s in state["segments"]) / 60.0

    def images() -> int:
        return state["segments"][-1]["images"] if state["segments"] else 0

    def evaluate(final: bool) -> dict:
        metrics = args.final_metrics if final else "fid,kid"
        n_gen = (args.final_num_gen or args.num_gen) if final else args.num_gen
        cmd = [
            "evaluate",
            model_dir,
            "--data",
            dataset,
            "--metrics",
            metrics,
            "--num-gen",
            str(n_gen),
            "--local",
            *common,
        ]
        if args.num_real:
            cmd += ["--num-real", str(args.num_real)]
        t0 = time.perf_counter()
        doc = json.loads(facegen(*cmd, capture=True).strip().splitlines()[-1])
        point = {
            "images": images(),
            "train_minutes": round(trained_minutes(), 2),
            "fid": doc.get("fid"),
            "kid": (doc.get("kid") or {}).get("mean"),
            "num_gen": doc.get("num_gen"),
            "num_real": doc.get("num_real"),
            "eval_s": round(time.perf_counter() - t0, 1),
        }
        if final:
            point.update({"precision": doc.get("precision"), "recall": doc.get("recall")})
        log(f"evaluation: {point}")
        return point

    # ---------------------------------------------------------------- 2. train in segments, 3. evaluate
    segments_this_call = 0
    while True:
        done_evals = {round(e["train_minutes_target"], 3) for e in state["evals"]}
        pending = [m for m in eval_at if round(m, 3) not in done_evals]
        if not pending:
            break
        target = pending[0]
        t_now = trained_minutes()
        if t_now >= target - 0.5:
            point = evaluate(final=target == eval_at[-1])
            point["train_minutes_target"] = target
            state["evals"].append(point)
            save()
            continue
        if args.max_segments is not None and segments_this_call >= args.max_segments:
            log(f"paused after {segments_this_call} segment(s): {trained_minutes():.1f} training minutes")
            print(json.dumps({"benchmark": "quality", "paused": True, "trained_minutes": round(trained_minutes(), 2)}))
            return
        budget = None
        if args.time_boxed:
            minutes = min(target - t_now, args.max_segment_minutes)
            budget = max(0.1, minutes - args.startup_s / 60.0)
            goal = 10**9  # the budget ends the segment
        elif not state["segments"]:
            goal = args.first_segment
        else:
            # images/s of the last segment (start-up included), scaled by the pixel count when
            # the schedule moves to a higher resolution (a step costs ~ res^2): the segment ends
            # near the next evaluation point instead of overshooting it
            last = state["segments"][-1]
            rate = last["segment_images"] / max(last["wall_s"], 1e-9)
            r_last, r_next = resolution_at(last["images"]), resolution_at(images() + int(rate * 60))
            rate *= (r_last / r_next) ** 2
            minutes = min(target - t_now, args.max_segment_minutes)
            goal = images() + max(1000, int(rate * minutes * 60))
        t0 = time.perf_counter()
        extra = ["--set", f"train.max_minutes={budget:.4f}"] if budget is not None else []
        facegen("train", *common, "--set", f"train.total_images={goal}", *extra)
        wall = time.perf_counter() - t0
        if budget is not None:
            with open(os.path.join(model_dir, "model.json")) as f:
                goal = int(json.load(f)["metadata"]["images_seen"])
        seg = {"images": goal, "segment_images": goal - images(), "wall_s": round(wall, 1)}
        state["segments"].append(seg)
        save()
        segments_this_call += 1
        log(f"segment: {seg}; {trained_minutes():.1f} of {args.minutes:g} training minutes")

    # ---------------------------------------------------------------- 4. pictures and the JSON line
    for psi in ("1.0", "0.7"):
        facegen(
            "generate",
            model_dir,
            "--seeds",
            "0-63",
            "--truncation",
            psi,
            "--cols",
            "8",
            "--out",
            os.path.join(out, f"grid-psi{psi}.png"),
            *common,
        )
    from plot_quality import plot_fid_curves  # benchmarks/ is on the path: this script's folder

    ev = state["evals"]
    plot_fid_curves(
        [(None, ev)],
        os.path.join(out, "fid_curve.png"),
        f"{os.path.basename(args.config)} on UTKFace, {platform.node() or 'this machine'}",
        figsize=(6, 3.6),
        fontsize=8,
    )

    result = {
        "benchmark": "quality",
        "config": os.path.relpath(args.config, REPO),
        "sets": list(args.set),  # the overrides trained (a tuned recipe is the config plus these)
        "run_name": run_name,
        "resolution": res,
        "date": dt.date.today().isoformat(),
        "machine": f"{platform.machine()}, {os.cpu_count()} cpus",
        "budget_minutes": args.minutes,
        "trained_minutes": round(trained_minutes(), 2),
        "images": images(),
        "segments": len(state["segments"]),
        "evals": ev,
        "final": ev[-1],
        "outputs": {
            k: os.path.join(out, v)
            for k, v in (
                ("curve", "fid_curve.png"),
                ("grid_psi1", "grid-psi1.0.png"),
                ("grid_psi07", "grid-psi0.7.png"),
            )
        },
    }
    with open(os.path.join(out, "result.json"), "w") as f:
        json.dump(result, f, indent=1)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
