"""Training killed in the middle of a checkpoint write: the previous checkpoint stays loadable and
`facegen train` resumes from it (local storage and S3 on moto's server).

Fast tests drive `upload_checkpoint` (the crash-safe copy of one rank's checkpoint files into the
run folder) directly; the slow test runs `facegen train` in its own process session, lets rank 0
stop halfway through uploading a checkpoint (FACEGEN_CHECKPOINT_FAULT: state.pt written,
meta.json not yet), SIGKILLs every process of that session (driver, embedded Ray, workers) and
runs `facegen train` again with the same run name.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from conftest import tiny_model_dict

from facegen_ray.cli import main as cli_main
from facegen_ray.storage import Layout, Storage, join
from facegen_ray.storage_workers import worker_filesystem
from facegen_ray.train.checkpoint import (
    META_FILE,
    STATE_FILE,
    load_checkpoint,
    rng_file,
    save_checkpoint,
    upload_checkpoint,
    upload_order,
)

REPO = Path(__file__).resolve().parents[1]


def _local_checkpoint(tmp_path: Path, images: int = 32) -> str:
    d = str(tmp_path / f"local-ckpt-{images}")
    state = {"counters": {"images_seen": images}, "weights": torch.arange(50_000, dtype=torch.float32)}
    save_checkpoint(d, 0, state, {"images_seen": images})
    save_checkpoint(d, 1, None, None)  # rank 1's RNG file beside rank 0's (what Ray merges)
    return d


def _read_or_empty(storage: Storage, uri: str) -> str:
    try:
        storage.fs(uri)[0].invalidate_cache()
        return storage.read_text(uri)
    except OSError:  # not written yet (FileNotFoundError, storage.StorageError)
        return ""


def _files(storage: Storage, folder: str) -> list[str]:
    """Names of the files in a checkpoint folder (without the empty folder-marker object that
    pyarrow's S3 filesystem keeps for a folder, listed by fsspec under the folder's own name)."""
    own = folder.rstrip("/").rsplit("/", 1)[-1]
    storage.fs(folder)[0].invalidate_cache()  # s3fs would answer from listings made before a write
    return sorted(n for n in (p.rsplit("/", 1)[-1] for p in storage.find(folder)) if n != own)


def test_upload_order_puts_meta_last():
    assert upload_order([META_FILE, "rng-rank1.pt", STATE_FILE, "rng-rank0.pt"])[-1] == META_FILE
    assert upload_order([STATE_FILE, "rng-rank0.pt"]) == ["rng-rank0.pt", STATE_FILE]


def _dest_fs(where: str, tmp_path: Path, request):
    """(pyarrow filesystem, destination path, Storage, destination URI) for local or S3."""
    if where == "local":
        uri = str(tmp_path / "run" / "checkpoint-000000000032")
        storage = Storage()
    else:
        storage = request.getfixturevalue("s3_storage")
        uri = join(request.getfixturevalue("s3_root"), "run", "checkpoint-000000000032")
    fs, path = worker_filesystem(storage, uri)
    return fs, path, storage, uri


@pytest.mark.parametrize("where", ["local", "s3"])
def test_upload_writes_whole_files_and_meta_last(where, tmp_path, request):
    """After every file of the upload, what is in the destination is a prefix of upload_order,
    each file byte-identical to its source; meta.json appears only after state.pt."""
    src = _local_checkpoint(tmp_path)
    fs, dest, storage, uri = _dest_fs(where, tmp_path, request)
    names = upload_order(os.listdir(src))
    seen: list[list[str]] = []

    def after_file(name: str) -> None:
        present = _files(storage, uri)
        seen.append(present)
        for p in present:
            assert storage.read_bytes(join(uri, p)) == Path(src, p).read_bytes(), p

    upload_checkpoint(src, fs, dest, after_file)
    assert seen == [sorted(names[:k]) for k in range(1, len(names) + 1)]
    assert [s for s in seen if META_FILE in s] == [sorted(names)]  # meta.json: the last file to appear


@pytest.mark.parametrize("where", ["local", "s3"])
def test_upload_interrupted_inside_a_file_leaves_no_partial_file(where, tmp_path, request, monkeypatch):
    """A crash halfway through copying state.pt's bytes: no state.pt (whole or torn) and no
    meta.json at the destination, so the folder reads as incomplete; a later upload of the same
    checkpoint completes it (and removes the interrupted copy's temp file)."""
    import shutil

    import facegen_ray.train.checkpoint as ck

    src = _local_checkpoint(tmp_path)
    fs, dest, storage, uri = _dest_fs(where, tmp_path, request)
    real_copy = shutil.copyfileobj

    class Crash(Exception):
        pass

    def half_copy(fsrc, fdst, length=0):
        if getattr(fsrc, "name", "").endswith(STATE_FILE):
            fdst.write(fsrc.read(1000))  # some bytes out, then the process "dies"
            raise Crash
        return real_copy(fsrc, fdst, length)

    monkeypatch.setattr(ck.shutil, "copyfileobj", half_copy)
    with pytest.raises(Crash):
        upload_checkpoint(src, fs, dest)
    present = _files(storage, uri)
    assert STATE_FILE not in present and META_FILE not in present
    assert set(present) - {rng_file(0), rng_file(1)} <= {p for p in present if p.startswith(f".{STATE_FILE}.tmp-")}
    if where == "local":
        with pytest.raises(FileNotFoundError, match="incomplete checkpoint"):
            load_checkpoint(uri, 0)
    monkeypatch.setattr(ck.shutil, "copyfileobj", real_copy)
    upload_checkpoint(src, fs, dest)
    assert _files(storage, uri) == sorted(os.listdir(src))  # complete, no temp files left
    if where == "local":
        state, rng = load_checkpoint(uri, 1)
        assert state["counters"]["images_seen"] == 32 and rng is not None


# ----------------------------------------------------------------------------- SIGKILL of a real run
TRAIN = {
    "run_name": "crash",
    "num_workers": 2,
    "start_resolution": 8,
    "stabilize_images": 48,
    "fade_images": 32,
    "total_images": 96,
    "batch_size": {8: 8},
    "checkpoint_every_images": 32,
    "log_every_images": 32,
    "keep_checkpoints": 2,
    "shuffle_buffer": 16,
    "ema_half_life_images": 200,
    "max_failures": 0,
    "seed": 7,
    "amp": False,
    "export": False,
}


def _session_pids(sid: int) -> list[int]:
    """Processes of the session `sid` (the `facegen train` we started and everything it started)."""
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == sid:
            out.append(int(d))
    return out


def _train_cmd(cfg_path: Path) -> list[str]:
    return [sys.executable, "-m", "facegen_ray.cli", "train", "--config", str(cfg_path)]


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # an embedded Ray of its own
    return {**env, **extra}


RAY_DID_NOT_START = "The current node timed out during startup"  # Ray 2.60 on a saturated machine


def _kill_session(proc: subprocess.Popen) -> list[int]:
    """SIGKILL every process of proc's session at once (all started by this test); -> their pids."""
    victims = _session_pids(proc.pid)
    for pid in victims:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait(timeout=60)
    return victims


def _read_meta(storage: Storage, ckpt_uri: str) -> dict:
    return json.loads(storage.read_text(join(ckpt_uri, META_FILE)))


def _load(storage: Storage, ckpt_uri: str, tmp_path: Path, rank: int = 0):
    """load_checkpoint on a local copy of a checkpoint folder (what Ray hands a worker)."""
    local = tmp_path / f"copy-{time.time_ns()}"
    local.mkdir()
    for name in _files(storage, ckpt_uri):
        (local / name).write_bytes(storage.read_bytes(join(ckpt_uri, name)))
    return load_checkpoint(str(local), rank)


@pytest.mark.slow
@pytest.mark.parametrize("where", ["local", "s3"])
def test_sigkill_during_checkpoint_upload_resumes_from_previous(where, ray_session, sample_zip, tmp_path, request):
    storage_cfg: dict = {}
    if where == "local":
        root, storage = str(tmp_path / "root"), Storage()
    else:
        endpoint = request.getfixturevalue("s3_server")
        storage, root = request.getfixturevalue("s3_storage"), request.getfixturevalue("s3_root")
        storage_cfg = {"endpoint_url": endpoint, "region": "us-east-1"}
    sets = [a for k, v in storage_cfg.items() for a in ("--set", f"storage.{k}={v}")]
    assert (
        cli_main(
            ["prepare", str(sample_zip), Layout(root).dataset("faces"), "--resolution", "8", "--limit", "48", *sets]
        )
        == 0
    )
    cfg_path = tmp_path / "train.yaml"
    cfg_path.write_text(
        yaml.safe_dump(
            {
                "storage": {"root": root, **storage_cfg},
                "model": tiny_model_dict(8),
                "loss": {"name": "nonsaturating", "r1_gamma": 1.0, "r1_interval": 4},
                "train": TRAIN,
            }
        )
    )
    run_uri = Layout(root).run("crash")
    prev, cut = join(run_uri, "checkpoint-000000000032"), join(run_uri, "checkpoint-000000000064")

    # 1. the run stops halfway through uploading its 64-image checkpoint; SIGKILL everything
    marker = tmp_path / "upload-paused"
    log1 = tmp_path / "first.log"
    for attempt in (1, 2):  # a second start only when the first Ray node did not come up at all
        with open(log1, "wb") as out:
            proc = subprocess.Popen(
                _train_cmd(cfg_path),
                cwd=REPO,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=_env(FACEGEN_CHECKPOINT_FAULT=f"64:{marker}"),
                start_new_session=True,
            )
        try:
            deadline = time.time() + 1200
            while not marker.exists() and proc.poll() is None and time.time() < deadline:
                time.sleep(1)
            # rank 0 now sleeps inside the 64-image upload; Ray's controller commits the 32-image
            # checkpoint to its snapshot asynchronously, and with a fast step the pause can come
            # first. Kill once that commit is on storage (the crash this test stands for: after
            # the previous checkpoint was committed), not in the race before it.
            deadline = time.time() + 120
            while marker.exists() and proc.poll() is None and time.time() < deadline:
                if "checkpoint-000000000032" in _read_or_empty(
                    storage, join(run_uri, "checkpoint_manager_snapshot.json")
                ):
                    break
                time.sleep(0.5)
        finally:
            victims = _kill_session(proc)
        if marker.exists() or attempt == 2 or RAY_DID_NOT_START not in log1.read_text(errors="replace"):
            break
    assert marker.exists(), f"the upload never paused (rc {proc.returncode}):\n{log1.read_text()[-4000:]}"
    assert proc.returncode == -signal.SIGKILL and len(victims) > 3  # the driver, Ray's daemons, the workers

    # 2. the interrupted folder is incomplete, the previous checkpoint is whole and Ray's
    #    committed state points at it
    names = _files(storage, cut)
    assert STATE_FILE in names and META_FILE not in names, names
    assert _read_meta(storage, prev)["images_seen"] == 32
    state, rng = _load(storage, prev, tmp_path, rank=1)
    assert state["counters"]["images_seen"] == 32 and rng is not None
    snapshot = storage.read_text(join(run_uri, "checkpoint_manager_snapshot.json"))
    assert "checkpoint-000000000032" in snapshot and "checkpoint-000000000064" not in snapshot
    from facegen_ray.errors import UserError
    from facegen_ray.train.warm_start import source_kind

    with pytest.raises(UserError, match="complete checkpoint directory"):  # warm starts refuse the torn folder
        source_kind(storage, cut)

    # 3. the same command again resumes from 32 and finishes
    for _ in range(3):  # started again only when its Ray node did not come up at all
        second = subprocess.run(
            _train_cmd(cfg_path), cwd=REPO, capture_output=True, text=True, env=_env(), timeout=1800
        )
        log = second.stdout + second.stderr
        if second.returncode == 0 or RAY_DID_NOT_START not in log:
            break
    assert second.returncode == 0, log[-4000:]
    assert "resumed from checkpoint at 32 images" in log, log[-4000:]
    result = next(
        json.loads(line)
        for line in reversed(second.stdout.splitlines())
        if line.startswith("{") and '"images_seen"' in line
    )  # the CLI's summary line
    assert result["images_seen"] == 96
    assert _read_meta(storage, cut)["images_seen"] == 64  # the torn folder was written again, whole
    final, _ = _load(storage, join(run_uri, "checkpoint-000000000096"), tmp_path)
    assert final["counters"]["images_seen"] == 96
    # the run's clock went on from the 32-image checkpoint's (Tune's CPU-minutes of a resumed trial)
    assert final["counters"]["train_s"] > state["counters"]["train_s"] > 0
    assert final["history"][-1]["resumed_train_s"] == pytest.approx(state["counters"]["train_s"], abs=1e-3)
    assert not [p for p in storage.find(run_uri) if ".tmp-" in p.rsplit("/", 1)[-1]]
