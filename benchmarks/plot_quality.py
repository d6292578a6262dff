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


def plot_fid_curves(
    curves: list[tuple[str | None, list[dict]]],
    out: str,
    title: str,
    figsize: tuple[float, float] = (6.4, 3.8),
    fontsize: int = 7,
) -> None:
    """FID vs images of quality.py evaluation points, one curve per (label, evals); label None:
    no legend (quality.py's own single curve). The y label names the last point's sample counts."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    last = curves[-1][1][-1]
    n_gen, n_real = last["num_gen"], last["num_real"]
    fig, ax = plt.subplots(figsize=figsize, dpi=120)
    for label, ev in curves:
        ax.plot([e["images"] / 1000 for e in ev], [e["fid"] for e in ev], "o-", label=label)
        for e in ev:
            ax.annotate(
                f"{e['fid']:.1f} ({e['train_minutes']:.0f} min)",
                (e["images"] / 1000, e["fid"]),
                textcoords="offset points",
                xytext=(4, 6),
                fontsize=fontsize,
            )
    ax.set_xlabel("thousand real images shown to D")
    ax.set_ylabel(f"FID ({n_gen} gen vs {n_real} real)")
    ax.set_title(title, fontsize=9 if any(label for label, _ in curves) else None)
    ax.grid(alpha=0.3)
    if any(label for label, _ in curves):
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", metavar="RESULT_JSON[:LABEL]")
    ap.add_argument("--out", required=True, help="PNG to write")
    ap.add_argument("--title", default="FID vs images shown, benchmarks/quality.py runs")
    args = ap.parse_args()

    curves, summary = [], {}
    first_counts = None
    for spec in args.runs:
        path, _, label = spec.partition(":")
        doc = load(path)
        label = label or doc.get("config", path)
        ev = doc["evals"]
        if not ev:
            raise SystemExit(f"{path}: no evaluation points")
        counts = {(e["num_gen"], e["num_real"]) for e in ev}
        first_counts = first_counts or counts
        if counts != first_counts:
            raise SystemExit(
                f"{path}: FID sample counts {sorted(counts)} differ from the other runs' {sorted(first_counts)}"
            )
        curves.append((f"{label} ({doc.get('date', '?')})", ev))
        summary[label] = [[e["images"], round(e["fid"], 2), e["train_minutes"]] for e in ev]
    plot_fid_curves(curves, args.out, args.title)
    print(json.dumps({"benchmark": "quality_curves", "out": args.out, "points_images_fid_minutes": summary}))


if __name__ == "__main__":
    main()
