"""FID-vs-images curves of several benchmarks/quality.py runs on one chart (A/B comparisons).

    python benchmarks/plot_quality.py docs/quality/result.json:skip docs/quality/orig/result.json:orig \
        --out docs/quality/skip-vs-orig.png

Each argument is RESULT_JSON[:LABEL] (quality.py's result.json, or its JSON line in a .jsonl).
Prints one JSON line: per label, the (images, FID) points plotted.
"""

from __future__ import annotations

import argparse
import json


def load(path: str) -> dict:
    with open(path) as f:
        text = f.read().strip()
    return json.loads(text.splitlines()[-1]) if path.endswith(".jsonl") else json.loads(text)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", metavar="RESULT_JSON[:LABEL]")
    ap.add_argument("--out", required=True, help="PNG to write")
    ap.add_argument("--title", default="FID vs images shown, benchmarks/quality.py runs")
    args = ap.parse_args()

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 3.8), dpi=120)
    summary = {}
    ylabel = None
    for spec in args.runs:
        path, _, label = spec.partition(":")
        doc = load(path)
        label = label or doc.get("config", path)
        ev = doc["evals"]
        if not ev:
            raise SystemExit(f"{path}: no evaluation points")
        counts = {(e["num_gen"], e["num_real"]) for e in ev}
        ylabel = ylabel or counts
        if counts != ylabel:
            raise SystemExit(f"{path}: FID sample counts {sorted(counts)} differ from the other runs' {sorted(ylabel)}")
        xs, ys = [e["images"] / 1000 for e in ev], [e["fid"] for e in ev]
        ax.plot(xs, ys, "o-", label=f"{label} ({doc.get('date', '?')})")
        for e in ev:
            ax.annotate(f"{e['fid']:.1f} ({e['train_minutes']:.0f} min)", (e["images"] / 1000, e["fid"]),
                        textcoords="offset points", xytext=(4, 6), fontsize=7)
        summary[label] = [[e["images"], round(e["fid"], 2), e["train_minutes"]] for e in ev]
    n_gen, n_real = sorted(ylabel)[0]
    ax.set_xlabel("thousand real images shown to D")
    ax.set_ylabel(f"FID ({n_gen} gen vs {n_real} real)")
    ax.set_title(args.title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(args.out)
    print(json.dumps({"benchmark": "quality_curves", "out": args.out, "points_images_fid_minutes": summary}))


if __name__ == "__main__":
    main()
