"""`ray job submit --working-dir . -- facegen train ...`: the README's cluster command, against a
real Ray head started with `ray start --head --block` (its own ports and temp dir, stopped at
the end; the session's Ray instance is untouched)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import pytest
from conftest import free_port

from facegen_ray.cli import main as cli_main
from facegen_ray.storage import Layout

REPO = Path(__file__).resolve().parents[1]
RAY = str(Path(sys.executable).with_name("ray"))


def _wait_for(url: str, proc: subprocess.Popen, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"ray start exited with {proc.returncode}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass  # the dashboard is not listening yet: poll again
        time.sleep(1)
    raise TimeoutError(f"{url} did not answer in {seconds}s")


@pytest.mark.slow
def test_ray_job_submit_trains_and_exports(ray_session, sample_zip, tmp_path):
    root = tmp_path / "root"
    assert (
        cli_main(
            ["prepare", str(sample_zip), Layout(str(root)).dataset("faces"), "--resolution", "16", "--limit", "48"]
        )
        == 0
    )
    dash = free_port()
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["RAY_AUTH_MODE"] = "disabled"  # a throwaway local head: no dashboard token
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"  # the entrypoint's `facegen`
    log = open(tmp_path / "ray-start.log", "w")  # noqa: SIM115 - closed in finally
    ray_tmp = tempfile.mkdtemp(prefix="rj-", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    head = subprocess.Popen(
        [
            RAY,
            "start",
            "--head",
            "--block",
            "--num-cpus",
            "2",
            "--port",
            str(free_port()),
            "--dashboard-port",
            str(dash),
            "--dashboard-host",
            "127.0.0.1",
            "--disable-usage-stats",
            # ports of its own: the session's Ray instance already holds the default agent ports
            *[
                a
                for flag in (
                    "--dashboard-agent-listen-port",
                    "--dashboard-agent-grpc-port",
                    "--metrics-export-port",
                    "--runtime-env-agent-port",
                    "--ray-client-server-port",
                )
                for a in (flag, str(free_port()))
            ],
            "--temp-dir",
            ray_tmp,
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        address = f"http://127.0.0.1:{dash}"
        try:
            _wait_for(f"{address}/api/version", head)
        except (RuntimeError, TimeoutError) as e:
            raise AssertionError(f"{e}:\n{(tmp_path / 'ray-start.log').read_text()[-3000:]}") from None
        argv = [
            RAY,
            "job",
            "submit",
            "--address",
            address,
            "--working-dir",
            str(REPO),
            "--",
            "facegen",
            "train",
            "--config",
            "facegen_ray/configs/quickstart.yaml",
            "--root",
            str(root),
            "--set",
            "train.run_name=submitted",
            "--set",
            "train.total_images=192",
            "--set",
            "train.stabilize_images=64",
            "--set",
            "train.fade_images=32",
        ]
        for _ in range(60):  # the dashboard answers before its job agent has registered
            out = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600)
            if "No available agent to submit job" not in out.stderr:
                break
            time.sleep(2)
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
        assert "succeeded" in out.stdout + out.stderr
        summary = json.loads(next(line for line in out.stdout.splitlines() if line.startswith('{"run"')))
        assert summary["run"] == "submitted" and summary["images_seen"] == 192 and summary["model_version"] == "v1"
        assert (root / "models" / "v1" / "model.json").is_file()
        assert list((root / "runs" / "submitted" / "samples").glob("*.png"))
    finally:
        if head.poll() is None:
            os.killpg(head.pid, signal.SIGTERM)
            try:
                head.wait(timeout=90)
            except subprocess.TimeoutExpired:
                os.killpg(head.pid, signal.SIGKILL)
        log.close()
        shutil.rmtree(ray_tmp, ignore_errors=True)
