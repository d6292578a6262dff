"""benchmarks/serve_hops.py: refuses bad arguments, and both call paths deliver every item."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load():
    spec = importlib.util.spec_from_file_location("serve_hops", ROOT / "benchmarks" / "serve_hops.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("argv", [["--sizes", "0"], ["--sizes", "big"], ["--clients", "0"], ["--clients", "x"]])
def test_bad_arguments_exit_2(argv, capsys):
    assert _load().main(argv) == 2
    assert "serve_hops:" in capsys.readouterr().err


def test_reply_shapes():
    mod = _load()
    assert mod.reply_shape("256") == (256, 256, 3)
    assert mod.reply_shape("token") == (32,)


def test_both_paths_answer_every_item():
    """Run as its own process: it starts (and shuts down) a Ray and Serve of its own, which must
    not meet the test session's."""
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "serve_hops.py"),
            "--clients",
            "1,8",
            "--seconds",
            "0.5",
            "--sizes",
            "16",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    recs = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert [(r["mode"], r["clients"]) for r in recs] == [
        ("per_request", 1),
        ("micro_batch", 1),
        ("per_request", 8),
        ("micro_batch", 8),
    ]
    for r in recs:
        assert r["items"] > 0 and r["reply_bytes"] == 16 * 16 * 3
        # a micro-batch call carries at least one item; per-request calls carry exactly one
        assert r["median_items_per_call"] >= 1
        assert r["calls_per_s"] <= r["items_per_s"] + 1e-6
    assert recs[0]["median_items_per_call"] == 1
