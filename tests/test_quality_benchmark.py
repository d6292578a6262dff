"""benchmarks/quality.py's run naming: benchmarks sharing a --root (its prepared dataset and
cached real-image statistics) never resume each other's training. Argument checks only: they
exit before anything is prepared or trained."""

from __future__ import annotations

import subprocess
import sys

from conftest import REPO


def _quality(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "quality.py"), *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_a_fresh_benchmark_refuses_a_run_that_already_exists(tmp_path):
    run = tmp_path / "runs" / "cpu-32-seed1"  # configs/cpu-32.yaml's run_name + the --out folder
    run.mkdir(parents=True)
    (run / "marker").write_text("someone else's checkpoint")
    p = _quality("--root", str(tmp_path), "--out", str(tmp_path / "seed1"))
    assert p.returncode == 2, p.stderr
    assert "already holds a run" in p.stderr and "--run-name" in p.stderr
    assert not (tmp_path / "seed1").exists()  # nothing written
    assert (run / "marker").read_text() == "someone else's checkpoint"


def test_the_run_is_named_with_run_name_not_set(tmp_path):
    p = _quality("--root", str(tmp_path), "--out", str(tmp_path / "o"), "--set", "train.run_name=x")
    assert p.returncode == 2 and "--run-name" in p.stderr
