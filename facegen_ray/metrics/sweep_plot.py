"""The truncation sweep's plot (`facegen evaluate --sweep-plot`): FID and precision/recall
against ψ, from the rows evaluate_model returns under "sweep"."""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

# Imported where used, not here: matplotlib (only when a plot is asked for).


def plot_sweep(rows: Sequence[dict[str, Any]]) -> bytes:
    """PNG bytes: FID (left axis) and precision/recall (right axis) against ψ."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    psi = [r["truncation"] for r in rows]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(psi, [r["fid"] for r in rows], "o-", color="tab:red", label="FID")
    ax.set_xlabel("truncation ψ")
    ax.set_ylabel("FID (lower is better)")
    ax2 = ax.twinx()
    ax2.plot(psi, [r["precision"] for r in rows], "s--", color="tab:blue", label="precision")
    ax2.plot(psi, [r["recall"] for r in rows], "^--", color="tab:green", label="recall")
    ax2.set_ylim(0, 1.05)
    ax2.set_ylabel("precision / recall")
    n = rows[0]["num_gen"] if rows else 0
    ax.set_title(f"truncation sweep ({n} generated)")
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, loc="best")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()
