"""Benchmark `facegen prepare` on the full UTKFace set (both zips in ../shared/data/utkface).

Prepares all sources into one dataset version at each resolution (default 64 and 256) in a
temporary folder and prints ONE JSON line: images/s per resolution (files processed per
second of wall time, listing + decode/crop/resize/encode + dedupe + Parquet write), counts,
and machine info. Ray start-up is timed separately and not included.

    python benchmarks/prepare.py                       # full set, 64 and 256
    python benchmarks/prepare.py --limit 500 --resolutions 64
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import platform
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_SOURCES = sorted(glob.glob(str(REPO.parent / "shared" / "data" / "utkface" / "*.zip")))


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("sources", nargs="*", default=DEFAULT_SOURCES, help="default: the two UTKFace zips")
    ap.add_argument("--resolutions", default="64,256")
    ap.add_argument("--limit", type=int, default=None, help="random subset of N files (quick run)")
    ap.add_argument("--format", default="png", choices=["png", "jpeg"])
    args = ap.parse_args()
    if not args.sources:
        raise SystemExit("no sources: pass zips/folders or put UTKFace zips in ../shared/data/utkface")

    import ray

    from facegen_ray.config import config_from_dict
    from facegen_ray.data.pipeline import ensure_ray, prepare

    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    t0 = time.perf_counter()
    ensure_ray()
    ray_init_s = time.perf_counter() - t0
    out: dict = {
        "benchmark": "prepare",
        "sources": [os.path.basename(s) for s in args.sources],
        "limit": args.limit,
        "image_format": args.format,
        "ray_init_s": round(ray_init_s, 2),
        "resolutions": {},
    }
    with tempfile.TemporaryDirectory(prefix="facegen-bench-") as tmp:
        for res in [int(r) for r in args.resolutions.split(",")]:
            cfg = config_from_dict(
                {
                    "storage": {"root": tmp},
                    "data": {"resolution": res, "limit": args.limit, "image_format": args.format},
                }
            )
            t = time.perf_counter()
            result = prepare(cfg, args.sources, os.path.join(tmp, f"faces-{res}"))
            dt = time.perf_counter() - t
            m = result.manifest
            out["resolutions"][str(res)] = {
                "seconds": round(dt, 2),
                "images_per_s": round(m["num_candidates"] / dt, 1),
                "files": m["num_candidates"],
                "num_images": m["num_images"],
                "num_rejected": m["num_rejected"],
                "rejected": {k: v for k, v in m["rejected"].items() if v},
                "num_shards": m["num_shards"],
                "shard_mb": round(sum(f["bytes"] for f in m["files"]) / 2**20, 1),
            }
    res_cpus = ray.cluster_resources().get("CPU")
    out["machine"] = {
        "cpus": os.cpu_count(),
        "ray_cpus": res_cpus,
        "cpu_model": _cpu_model(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "ray": ray.__version__,
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
