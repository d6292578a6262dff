"""Training throughput: real images/s per resolution, one JSON line.

Times the same GAN steps the Ray Train workers run (facegen_ray.train.steps.GANSteps: n_critic
D steps + one G step, with the configured lazy regularisation and EMA) on synthetic reals,
at the final stage of a model built for each resolution. No Ray: this measures the step, not
the data path.

    python benchmarks/train.py                                   # CPU, reduced widths
    python benchmarks/train.py --device cuda --variants          # GPU: fp32 / AMP / +channels_last / +compile
    python benchmarks/train.py --preset reference-64             # the NVlabs StyleGAN2 comparison (README)
    python benchmarks/train.py --compare-ray --config configs/cpu-32.yaml --data DATASET_URI
        # the step alone vs `facegen train` (Ray Train, real data) on the same model: the ratio
        # and where facegen train's wall time goes (steps, data wait, checkpoints, start-up)

Preset reference-64: 64x64, batch 8, channel base 4096 / max 512, z and w 512, 8 mapping layers,
style mixing 0.9, R1 every 16 D steps, path length weight 2 every 4 G steps on half the batch,
skip G with a residual D (our D is residual with either G; --architecture orig for our default G):
the configuration the NVlabs stylegan3 repository trains with cfg=stylegan2 at this size.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))  # run from a checkout

from facegen_ray.config import FacegenConfig
from facegen_ray.train.schedule import ProgressiveSchedule
from facegen_ray.train.steps import GANSteps


def bench_one(res: int, args, amp: bool, channels_last: bool, compile_: bool) -> dict:
    cfg = FacegenConfig.model_validate(
        {
            "model": {
                "resolution": res,
                "z_dim": args.z_dim,
                "w_dim": args.z_dim,
                "mapping_layers": args.mapping_layers,
                "fmap_base": args.fmap_base,
                "fmap_max": args.fmap_max,
                "fmap_min": 8,
                **({"architecture": args.architecture} if args.architecture else {}),
            },
            "loss": {
                "name": args.loss,
                "r1_interval": 16,
                "pl_weight": args.pl_weight,
                "pl_interval": 4,
                "pl_batch_shrink": 2,
            },
            "train": {
                "start_resolution": res,
                "batch_size": {res: args.batch},
                "amp": amp,
                "channels_last": channels_last,
                "compile": compile_,
                "total_images": 10**9,
            },
        }
    )
    device = torch.device(args.device)
    gan = GANSteps(cfg, device)
    point = ProgressiveSchedule(cfg.train, cfg.model, num_workers=1).at(0)
    gan.apply(point)
    reals = torch.rand(args.batch, 3, res, res) * 2 - 1

    def iteration(i: int) -> None:
        for k in range(gan.n_critic):
            gan.d_step(gan.to_device_reals(reals, point), None, i * gan.n_critic + k)
        gan.g_step(args.batch, None, i)
        gan.ema(10**6, args.batch)

    for i in range(args.warmup):
        iteration(i)
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    n = 0
    while n < args.min_iters or (time.perf_counter() - t0 < args.min_seconds and n < args.max_iters):
        iteration(args.warmup + n)
        n += 1
    if device.type == "cuda":
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    out = {
        "img_per_s": round(n * gan.n_critic * args.batch / dt, 2),
        "iters": n,
        "seconds": round(dt, 3),
        "g_params": sum(p.numel() for p in gan.G.parameters()),
        "d_params": sum(p.numel() for p in gan.D.parameters()),
    }
    if args.profile:
        out["profile"] = profile_iterations(iteration, args.warmup + n, args.profile, cuda=device.type == "cuda")
    out["architecture"] = cfg.model.architecture
    return out


def profile_iterations(iteration, start: int, count: int, top: int = 15, cuda: bool = False) -> dict:
    """torch.profiler over `count` more iterations (numbered from `start`, so R1 every 16 D
    steps and path length every 4 G steps fall where they would): the ops with the largest
    share of self CPU time, and the share of the convolution ops together. With cuda=True the
    same for self CUDA (kernel) time, plus the wall time and the share of it the GPU was busy
    (low = the step waits on Python and kernel launches, not on the GPU)."""
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    if cuda:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    with profile(activities=acts) as prof:
        for k in range(count):
            iteration(start + k)
        if cuda:
            torch.cuda.synchronize()
    wall = time.perf_counter() - t0
    events = prof.key_averages()

    def table(attr: str) -> dict:
        rows = [(e.key, getattr(e, attr, 0) or 0) for e in events]
        total = sum(t for _, t in rows) or 1.0
        rows.sort(key=lambda r: r[1], reverse=True)
        conv = sum(t for k, t in rows if "conv" in k.lower())
        return {
            "total_s": round(total / 1e6, 3),
            "conv_share": round(conv / total, 3),
            "top": [{"op": k, "share": round(t / total, 3)} for k, t in rows[:top]],
        }

    out = {"iterations": count, "wall_s": round(wall, 3)}
    cpu = table("self_cpu_time_total")
    out.update({"self_cpu_s": cpu["total_s"], "conv_share": cpu["conv_share"], "top": cpu["top"]})
    if cuda:
        dev = table(
            "self_device_time_total" if hasattr(events[0], "self_device_time_total") else "self_cuda_time_total"
        )
        out["cuda"] = {**dev, "busy_share_of_wall": round(dev["total_s"] / wall, 3) if wall else None}
    return out


class CpuSampler:
    """CPU seconds per process while `facegen train` runs (Linux /proc; a no-op elsewhere):
    a thread snapshots every process's utime+stime every `every` s and keeps, per pid, the first
    and last values seen, so processes that start and end inside the window are counted too
    (from their first snapshot: up to `every` s of a new process's CPU is missed)."""

    def __init__(self, every: float = 1.0) -> None:
        import threading

        self.every, self.first, self.last, self.names = every, {}, {}, {}
        self.series: list[tuple[float, dict[str, float]]] = []  # (time, cumulative CPU s per group)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.ok = os.path.isdir("/proc/self")

    def _snap(self) -> None:
        tck = os.sysconf("SC_CLK_TCK")
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            try:
                with open(f"/proc/{pid}/stat") as f:
                    st = f.read()
                rest = st[st.rindex(")") + 2 :].split()
                cpu = (int(rest[11]) + int(rest[12])) / tck
                with open(f"/proc/{pid}/cmdline", "rb") as f:  # re-read: an idle Ray worker is renamed as an
                    name = f.read().replace(b"\0", b" ").decode(errors="replace")[:80].strip()  # actor; an exited
                if name:  # process (zombie) reads as "": keep its last name
                    self.names[pid] = name
            except (OSError, ValueError, IndexError):
                continue
            self.first.setdefault(pid, cpu)
            self.last[pid] = cpu
        self.series.append((time.perf_counter(), self._groups()))

    def _run(self) -> None:
        while not self._stop.is_set():
            self._snap()
            self._stop.wait(self.every)

    def __enter__(self) -> CpuSampler:
        self.t0 = time.perf_counter()
        if self.ok:
            self._snap()
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.wall = time.perf_counter() - self.t0
        if self.ok:
            self._stop.set()
            self._thread.join()
            self._snap()

    def _groups(self) -> dict[str, float]:
        used = {pid: self.last[pid] - self.first[pid] for pid in self.last}
        me = str(os.getpid())
        groups = {"train_worker": 0.0, "ray_other": 0.0, "driver": 0.0, "other": 0.0}
        for pid, sec in used.items():
            name = self.names.get(pid, "")
            if pid == me:
                groups["driver"] += sec
            elif "RayTrainWorker" in name:
                groups["train_worker"] += sec
            elif "ray" in name.lower():
                groups["ray_other"] += sec
            else:
                groups["other"] += sec
        return groups

    def split(self) -> dict:
        """Cores used by the train worker(s), the rest of Ray, this driver and everything else:
        over the whole window (Ray's start-up and the export included), and in the steady
        state: from the snapshot where the worker had used 20% of its CPU time to the one
        where it had used 90% (start-up and shutdown left out)."""
        if not self.ok or len(self.series) < 3:
            return {}
        total = self.series[-1][1]
        out = {f"{k}_cores": round(v / self.wall, 3) for k, v in total.items()}
        worker = total["train_worker"]
        a = next((x for x in self.series if x[1]["train_worker"] >= 0.2 * worker), None)
        b = next((x for x in self.series if x[1]["train_worker"] >= 0.9 * worker), None)
        if a is not None and b is not None and b[0] - a[0] > 5 * self.every:
            span = b[0] - a[0]
            out.update({f"steady_{k}_cores": round((b[1][k] - a[1][k]) / span, 3) for k in total})
            out["steady_window_s"] = round(span, 1)
        return out


def compare_ray(args) -> dict:
    """The GAN step alone (GANSteps on random reals, this process) vs `facegen train` (embedded
    Ray, Ray Train worker, the real dataset) on the same model, batch and fixed resolution.

    This machine's speed drifts by about +-10% over minutes (measured: the same step loop gives
    34-39 images/s in consecutive 30 s windows), so one step figure taken minutes before the run
    says little. Each repeat therefore times the step in a window right before AND right after
    its `facegen train` run and divides by their mean; --repeats runs that R times and reports
    every ratio and their median."""
    import statistics
    import tempfile

    import ray
    import yaml

    from facegen_ray.runtime import ensure_ray
    from facegen_ray.train.trainer import train

    if not args.config or not args.data:
        raise SystemExit("--compare-ray needs --config FILE and --data DATASET_URI")
    with open(args.config) as f:
        doc = yaml.safe_load(f)
    res = int(doc["model"]["resolution"])
    batch = int(doc["train"]["batch_size"].get(res, doc["train"]["batch_size"].get(str(res), 32)))
    root = tempfile.mkdtemp(prefix="facegen-compare-")
    doc["storage"] = {"root": root}
    doc["train"].update(
        {
            "dataset": args.data,
            "run_name": "compare-ray",
            "start_resolution": res,
            "total_images": args.images,
            "checkpoint_every_images": args.images,
            "log_every_images": max(batch, args.images // 6),
            "eval_every_images": None,
            "num_workers": 1,
            "use_gpu": False,
        }
    )
    cfg = FacegenConfig.model_validate(doc)
    # the step alone, same model/loss/batch
    gan = GANSteps(cfg, torch.device("cpu"))
    point = ProgressiveSchedule(cfg.train, cfg.model, num_workers=1).at(0)
    gan.apply(point)
    reals = torch.rand(batch, 3, res, res) * 2 - 1
    i = 0

    def iteration() -> None:
        nonlocal i
        gan.d_step(gan.to_device_reals(reals, point), None, i)
        gan.g_step(batch, None, i)
        gan.ema(10**6, batch)
        i += 1

    step_cores: list[float] = []  # CPU time of this process per wall second in each step window

    def step_window() -> float:
        start = i
        t0, c0 = time.perf_counter(), time.process_time()
        while time.perf_counter() - t0 < max(args.min_seconds, 20.0):
            iteration()
        wall = time.perf_counter() - t0
        step_cores.append(round((time.process_time() - c0) / wall, 3))
        return (i - start) * batch / wall

    for _ in range(args.warmup):
        iteration()
    repeats = []
    for r in range(max(1, args.repeats)):
        before = step_window()  # no Ray running: the step as benchmarks/train.py times it
        doc["train"]["run_name"] = f"compare-ray-{r}"
        cfg_r = FacegenConfig.model_validate(doc)
        with CpuSampler() as cpu:
            t0 = time.perf_counter()
            ensure_ray()  # a fresh embedded Ray, started the way the CLI starts it
            out = train(cfg_r, export=False)
            wall = time.perf_counter() - t0
        ray.shutdown()
        after = step_window()
        hist = out.history
        steady = hist[1:] if len(hist) > 2 else hist  # the first interval includes warm-up
        ray_rate = sum(h["img_per_s"] for h in steady) / len(steady)
        step_rate = (before + after) / 2
        repeats.append(
            {
                "step_before": round(before, 2),
                "step_after": round(after, 2),
                "step_cores": step_cores[-2:],
                "facegen_train_img_per_s": round(ray_rate, 2),
                "intervals": [round(h["img_per_s"], 1) for h in steady],
                "ratio": round(ray_rate / step_rate, 3),
                "split": {
                    "data_wait_share": round(sum(h.get("data_wait", 0.0) for h in steady) / len(steady), 4),
                    "checkpoint_s": round(sum(h.get("checkpoint_s", 0.0) for h in hist), 2),
                    "train_wall_s": round(wall, 1),
                    "stepping_s": round(out.images_seen / ray_rate, 1),
                    **cpu.split(),
                },
                "images": out.images_seen,
            }
        )
        print(json.dumps({"repeat": r, **repeats[-1]}), file=sys.stderr, flush=True)
    ratios = [x["ratio"] for x in repeats]
    return {
        "benchmark": "train_compare_ray",
        "config": args.config,
        "resolution": res,
        "batch": batch,
        "threads_step": torch.get_num_threads(),
        "threads_worker": out.history[-1].get("threads"),
        "machine": f"{platform.machine()} {os.cpu_count()} cpus",
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "ratio_median": round(statistics.median(ratios), 3),
        "ratios": ratios,
        "repeats": repeats,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--resolutions", default="8,16,32,64")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--fmap-base", type=int, default=1024, help="reduced from 16384 so CPU runs finish")
    ap.add_argument("--fmap-max", type=int, default=128)
    ap.add_argument("--z-dim", type=int, default=128)
    ap.add_argument("--mapping-layers", type=int, default=4)
    ap.add_argument("--loss", default="nonsaturating")
    ap.add_argument(
        "--architecture",
        choices=["orig", "skip"],
        default=None,
        help="model.architecture (default: the config default)",
    )
    ap.add_argument("--pl-weight", type=float, default=0.0)
    ap.add_argument("--amp", action="store_true")
    ap.add_argument("--channels-last", action="store_true")
    ap.add_argument("--compile", action="store_true")
    ap.add_argument(
        "--variants", action="store_true", help="GPU: fp32, amp, amp+channels_last, amp+channels_last+compile"
    )
    ap.add_argument("--only", default=None, help="with --variants: a comma list of the variant names to run")
    ap.add_argument(
        "--partial",
        default=None,
        help="append each (variant, resolution) result here as a JSON line "
        "as soon as it is measured (survives a time limit)",
    )
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--min-iters", type=int, default=3)
    ap.add_argument("--max-iters", type=int, default=200)
    ap.add_argument("--min-seconds", type=float, default=5.0)
    ap.add_argument("--preset", choices=["reference-64"], help="a named configuration (overrides widths/batch)")
    ap.add_argument(
        "--profile",
        type=int,
        default=0,
        metavar="N",
        help="after timing, profile N more iterations (torch.profiler): top ops by self CPU time",
    )
    ap.add_argument("--compare-ray", action="store_true", help="also run `facegen train` on --data and compare")
    ap.add_argument("--config", default=None, help="--compare-ray: config YAML whose model/loss/batch to use")
    ap.add_argument("--data", default=None, help="--compare-ray: prepared dataset URI")
    ap.add_argument("--images", type=int, default=6000, help="--compare-ray: images facegen train runs for")
    ap.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="--compare-ray: step window / facegen train / step window, this many times (median ratio)",
    )
    args = ap.parse_args()
    if args.preset == "reference-64":
        args.resolutions, args.batch, args.fmap_base, args.fmap_max = "64", 8, 4096, 512
        args.z_dim, args.mapping_layers, args.pl_weight = 512, 8, 2.0
        # the reference's architecture (skip G, residual D), unless --architecture says otherwise
        args.architecture = args.architecture or "skip"
    if args.compare_ray:
        print(json.dumps(compare_ray(args)))
        return
    resolutions = [int(r) for r in args.resolutions.split(",")]
    if args.variants:
        variants = {
            "fp32": (False, False, False),
            "amp": (True, False, False),
            "amp+channels_last": (True, True, False),
            "amp+channels_last+compile": (True, True, True),
        }
        if args.only:
            keep = args.only.split(",")
            unknown = sorted(set(keep) - set(variants))
            if unknown:
                ap.error(f"--only: unknown variant(s) {unknown}; choose from {sorted(variants)}")
            variants = {k: v for k, v in variants.items() if k in keep}
    else:
        name = (
            "+".join(
                [
                    n
                    for n, f in (("amp", args.amp), ("channels_last", args.channels_last), ("compile", args.compile))
                    if f
                ]
            )
            or "fp32"
        )
        variants = {name: (args.amp, args.channels_last, args.compile)}
    results: dict[str, dict[str, dict]] = {}
    for vname, (amp, cl, comp) in variants.items():
        results[vname] = {}
        for r in resolutions:
            try:
                results[vname][str(r)] = bench_one(r, args, amp, cl, comp)
            except Exception as e:  # noqa: BLE001 - recorded; the other variants still run
                results[vname][str(r)] = {"img_per_s": None, "error": f"{type(e).__name__}: {str(e)[:400]}"}
            if args.device.startswith("cuda"):
                results[vname][str(r)]["peak_mem_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
                torch.cuda.reset_peak_memory_stats()
                torch.cuda.empty_cache()
            if args.partial:
                with open(args.partial, "a") as f:
                    f.write(
                        json.dumps({"variant": vname, "resolution": r, "batch": args.batch, **results[vname][str(r)]})
                        + "\n"
                    )
    out = {
        "benchmark": "train_step_throughput",
        "device": torch.cuda.get_device_name(0)
        if args.device.startswith("cuda")
        else platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "batch": args.batch,
        "widths": {
            "fmap_base": args.fmap_base,
            "fmap_max": args.fmap_max,
            "z_dim": args.z_dim,
            "mapping_layers": args.mapping_layers,
        },
        "loss": args.loss,
        "img_per_s": {v: {r: res["img_per_s"] for r, res in rs.items()} for v, rs in results.items()},
        "details": results,
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
