"""Watermark robustness: detection rate of the invisible watermark (facegen_ray/provenance/
watermark.py) after JPEG quality 90/75/50, a 0.5x resize and a 10% crop, and false positives on
unmarked real faces. Prints ONE JSON line.

Cover images are real UTKFace faces (--zip; default: ../shared/data/utkface/*.zip beside the
repository), resized to --resolution (the serving resolution); each is marked with its own
image id, then attacked.
The same faces unmarked give the false-positive count. Runs in-process, numpy only.

    python benchmarks/watermark.py --n 1000 --resolution 64
"""

from __future__ import annotations

import argparse
import glob
import io
import json
import time
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

from facegen_ray.provenance import watermark as wm

REPO = Path(__file__).resolve().parents[1]


def faces(zips: list[str], n: int, res: int) -> list[np.ndarray]:
    out = []
    for zp in zips:
        with zipfile.ZipFile(zp) as z:
            for name in sorted(m for m in z.namelist() if m.lower().endswith((".jpg", ".png"))):
                if len(out) >= n:
                    return out
                with Image.open(io.BytesIO(z.read(name))) as im:
                    out.append(np.asarray(im.convert("RGB").resize((res, res), Image.LANCZOS), np.uint8))
    return out


def jpeg(a: np.ndarray, q: int) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="JPEG", quality=q)
    return np.asarray(Image.open(buf).convert("RGB"))


def half(a: np.ndarray) -> np.ndarray:
    return np.asarray(Image.fromarray(a).resize((a.shape[1] // 2, a.shape[0] // 2), Image.BILINEAR))


def crop10(a: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Keep 90% of each side at a random offset (no rescale)."""
    h, w = a.shape[:2]
    ch, cw = int(round(h * 0.9)), int(round(w * 0.9))
    y, x = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
    return a[y : y + ch, x : x + cw]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--resolution", type=int, default=64)
    ap.add_argument("--zip", action="append", default=None)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    zips = args.zip or sorted(glob.glob(str(REPO.parent / "shared" / "data" / "utkface" / "*.zip")))
    imgs = faces(zips, args.n, args.resolution)
    rng = np.random.default_rng(args.seed)
    attacks = {
        "none": lambda a: a,
        "jpeg90": lambda a: jpeg(a, 90),
        "jpeg75": lambda a: jpeg(a, 75),
        "jpeg50": lambda a: jpeg(a, 50),
        "resize0.5": half,
        "crop10": lambda a: crop10(a, rng),
    }
    hits = {k: 0 for k in attacks}
    psnr, fp, t0 = [], 0, time.perf_counter()
    for _i, a in enumerate(imgs):
        iid = f"{rng.integers(0, 2**63):016x}" * 2
        marked, ok = wm.embed(a, "v1", iid)
        psnr.append(10 * np.log10(255.0**2 / max(np.mean((marked.astype(float) - a) ** 2), 1e-12)))
        for k, f in attacks.items():
            d = wm.detect(f(marked))
            hits[k] += int(d.found and d.image_id_prefix == iid[:4] and d.model_tag == wm.model_tag("v1"))
        fp += int(wm.detect(a).found)
    n = len(imgs)
    print(
        json.dumps(
            {
                "benchmark": "watermark",
                "n": n,
                "resolution": args.resolution,
                "payload_bits": wm.NBITS,
                "detection_rate": {k: round(v / n, 4) for k, v in hits.items()},
                "false_positives": fp,
                "false_positive_rate": round(fp / n, 5),
                "psnr_db_mean": round(float(np.mean(psnr)), 2),
                "psnr_db_min": round(float(np.min(psnr)), 2),
                "seconds": round(time.perf_counter() - t0, 1),
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()
