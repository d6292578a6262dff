"""Full training state <-> a checkpoint directory (what Ray Train uploads and hands back).

A checkpoint directory holds

    state.pt          (rank 0) torch.save of: G, D, G_ema state_dicts, both optimizers, both
                      AMP GradScalers, loss state (path-length mean), counters (images seen,
                      D/G steps), data position (epoch, rows consumed), stage, alpha, history
    meta.json         (rank 0) counters + config JSON, readable without torch
    rng-rank<R>.pt    (every rank) that worker's torch/CUDA/numpy/python RNG states

Ray Train V2 merges the directories every worker reports into one, so each rank writes only
its own files. `meta.json` is written last by rank 0: a directory without it is incomplete.

Crash safety of the copy in the run folder (what `upload_checkpoint` guarantees, and what a test
checks by SIGKILLing `facegen train` halfway through an upload):
  - every file appears whole or not at all: it is written under a temp name beside its final
    one and then moved there (a rename on a local/shared filesystem; a server-side copy on S3);
  - rank 0 uploads meta.json after state.pt, so a folder with meta.json has a whole state.pt
    (what warm starts and `facegen retrain` check; an interrupted folder is refused there);
  - Ray Train resumes only from checkpoints its controller committed (checkpoint_manager_snapshot.json,
    written after every rank's upload returned), so an interrupted folder is never resumed from:
    the run restarts at the previous checkpoint and later rewrites that folder.
"""

from __future__ import annotations

import io
import json
import os
import random
import shutil
import tempfile
import uuid
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

STATE_FILE = "state.pt"
META_FILE = "meta.json"
FORMAT = 1


def rng_file(rank: int) -> str:
    return f"rng-rank{rank}.pt"


def capture_rng() -> dict[str, Any]:
    """Every RNG a training step draws from, as picklable objects."""
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _torch_save(obj: Any, path: str) -> None:
    buf = io.BytesIO()
    torch.save(obj, buf)
    tmp = f"{path}.tmp"
    with open(tmp, "wb") as f:
        f.write(buf.getvalue())
    os.replace(tmp, path)


def save_checkpoint(directory: str, rank: int, state: dict[str, Any] | None, meta: dict[str, Any] | None) -> None:
    """Write this rank's part of a checkpoint into a local directory.

    state/meta are only given on rank 0 (the model state is identical on every rank);
    every rank writes its RNG states.
    """
    os.makedirs(directory, exist_ok=True)
    _torch_save(capture_rng(), os.path.join(directory, rng_file(rank)))
    if rank == 0:
        if state is None or meta is None:
            raise ValueError("rank 0 must write the model state and meta")
        _torch_save({"format": FORMAT, **state}, os.path.join(directory, STATE_FILE))
        with open(os.path.join(directory, META_FILE), "w") as f:
            json.dump({"format": FORMAT, **meta}, f, indent=2, sort_keys=True, default=str)


def upload_order(names: list[str]) -> list[str]:
    """The order the files of one rank's checkpoint are uploaded in: META_FILE last."""
    return sorted(names, key=lambda n: (n == META_FILE, n))


def _is_local(fs) -> bool:
    """Whether `fs` (a pyarrow FileSystem) is a POSIX filesystem (folders exist, rename is atomic)."""
    while getattr(fs, "type_name", None) == "subtree":
        fs = fs.base_fs
    return getattr(fs, "type_name", None) == "local"


def upload_checkpoint(local_dir: str, fs, dest: str, after_file: Callable[[str], None] | None = None) -> None:
    """Copy this rank's checkpoint files from `local_dir` to `dest` on the pyarrow filesystem
    `fs`, crash-safely (see the module docstring): file by file in `upload_order`, each one
    written under a temp name beside its final one and then moved there (a rename on a local or
    shared filesystem; on S3 a server-side copy, so the final object appears whole or not at all,
    whatever happens to the temp one). `after_file(name)` is called after each file (a
    fault-injection point for tests)."""
    import pyarrow.fs as pafs

    if _is_local(fs):  # (object stores need no folders)
        fs.create_dir(dest, recursive=True)
    names = upload_order([n for n in os.listdir(local_dir) if os.path.isfile(os.path.join(local_dir, n))])
    stale = tuple(f".{n}.tmp-" for n in names)  # temp files an interrupted upload of these names left
    for info in fs.get_file_info(pafs.FileSelector(dest, allow_not_found=True)):
        if info.base_name.startswith(stale):
            fs.delete_file(info.path)
    for name in names:
        tmp = f"{dest}/.{name}.tmp-{uuid.uuid4().hex}"
        with open(os.path.join(local_dir, name), "rb") as src, fs.open_output_stream(tmp, compression=None) as out:
            shutil.copyfileobj(src, out, 1 << 20)
        fs.move(tmp, f"{dest}/{name}")
        if after_file is not None:
            after_file(name)


def load_checkpoint(directory: str, rank: int, map_location: str | torch.device = "cpu") -> tuple[dict, dict | None]:
    """(state dict, this rank's RNG states or None if that rank did not exist before).

    Raises FileNotFoundError / ValueError for an incomplete or foreign directory.
    """
    meta_path = os.path.join(directory, META_FILE)
    state_path = os.path.join(directory, STATE_FILE)
    if not (os.path.isfile(meta_path) and os.path.isfile(state_path)):
        raise FileNotFoundError(f"incomplete checkpoint in {directory}: needs {STATE_FILE} and {META_FILE}")
    state = torch.load(state_path, map_location=map_location, weights_only=False)
    if state.get("format") != FORMAT:
        raise ValueError(f"checkpoint {directory} has format {state.get('format')!r}, expected {FORMAT}")
    rng_path = os.path.join(directory, rng_file(rank))
    rng = torch.load(rng_path, map_location="cpu", weights_only=False) if os.path.isfile(rng_path) else None
    return state, rng


def load_g_ema(directory: str, model_cfg) -> tuple[torch.nn.Module, dict]:
    """(G_ema of a checkpoint folder in eval mode, the checkpoint's state): what export and
    benchmarks score. A model_cfg unlike the run's fails in load_state_dict."""
    from facegen_ray.models import Generator

    state, _ = load_checkpoint(directory, 0, map_location="cpu")
    G_ema = Generator(model_cfg)
    G_ema.load_state_dict(state["G_ema"])
    return G_ema.eval(), state


def restore(checkpoint, rank: int, map_location: str | torch.device = "cpu") -> tuple[dict, dict | None]:
    """load_checkpoint of a Ray Train checkpoint (on the run's storage) for worker `rank`.

    A checkpoint on a remote filesystem (S3) is downloaded into a directory of this worker's
    own, then removed. Not Checkpoint.as_directory(): that gives every process on a node the
    same temporary directory, and a worker that starts its download after another finished
    rewrites the files in place while the other reads them ("PytorchStreamReader failed
    reading file data/1 ... checkpoint file is corrupted": two workers restoring on one host,
    e.g. after their host was replaced). A local checkpoint is read in place."""
    import pyarrow.fs as pafs

    if isinstance(checkpoint.filesystem, pafs.LocalFileSystem):
        return load_checkpoint(checkpoint.path, rank, map_location=map_location)
    directory = tempfile.mkdtemp(prefix=f"facegen-restore-rank{rank}-")
    try:
        checkpoint.to_directory(directory)
        return load_checkpoint(directory, rank, map_location=map_location)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def read_meta(directory: str) -> dict[str, Any]:
    with open(os.path.join(directory, META_FILE)) as f:
        return json.load(f)
