"""`facegen quickstart` end to end in a subprocess (the README's first command, minus the install)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import free_port


@pytest.mark.slow
def test_quickstart_runs_the_whole_loop(tmp_path):
    root = tmp_path / "qs"
    env = {**os.environ, "RAY_ADDRESS": ""}
    env.pop("RAY_ADDRESS")
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "facegen_ray.cli",
            "quickstart",
            "--root",
            str(root),
            "--port",
            str(free_port()),
            "--num-gen",
            "32",
            "--set",
            "gate.fid_tolerance=100",
        ],  # any finite FID passes: the swap runs
        capture_output=True,
        text=True,
        timeout=900,
        env=env,
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    for step in range(1, 10):
        assert f"[quickstart {step}/9]" in out.stdout
    metrics = json.loads(next(line for line in out.stdout.splitlines() if line.startswith('{"fid"')))
    assert metrics["num_gen"] == 32 and metrics["num_real"] > 300 and metrics["fid"] > 0
    assert (root / "quickstart-grid.png").stat().st_size > 0
    registry = json.loads((root / "models" / "registry.json").read_text())
    records = list((root / "feedback").rglob("*.json"))
    assert any('"approved": true' in p.read_text() for p in records)
    # retrain: the approved face merged into dataset v2, candidate v2 warm-started from v1, gated
    merged = json.loads((root / "datasets" / "faces" / "v2" / "manifest.json").read_text())
    assert merged["feedback"]["merged"] == 1
    gate_reports = list((root / "models" / "v2" / "gate").glob("*.json"))
    assert len(gate_reports) == 1
    assert json.loads(gate_reports[0].read_text())["decision"] == "promoted"
    assert registry["serving"] == "v2"
    assert "/healthz: v2; generate answered by v2" in out.stdout  # the running app swapped, no restart
    assert "done in" in out.stdout


def test_quickstart_refuses_unwritable_root(tmp_path):
    (tmp_path / "file").write_text("not a folder")
    out = subprocess.run(
        [sys.executable, "-m", "facegen_ray.cli", "quickstart", "--root", str(Path(tmp_path / "file" / "sub"))],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2
    assert "not writable" in out.stderr
    assert (tmp_path / "file").read_text() == "not a folder"
