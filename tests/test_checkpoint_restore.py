"""Two workers on one host restore the same Ray Train checkpoint at once (what happens after a host
is replaced: both DDP workers land on the new one). Each must read a whole state.pt: one worker's
download must never rewrite the files another worker is reading."""

from __future__ import annotations

import threading

import fsspec.implementations.local
import pyarrow.fs as pafs
import pytest
import torch
from ray.train import Checkpoint

from facegen_ray.train import checkpoint as ckpt_mod


class PausingFS(fsspec.implementations.local.LocalFileSystem):
    """A remote-looking filesystem (not pyarrow's LocalFileSystem, so Ray downloads from it) that
    pauses the second download of state.pt halfway until told to go on."""

    def __init__(self, mid: threading.Event, go: threading.Event):
        super().__init__()
        self.mid, self.go, self.opens = mid, go, 0

    def _open(self, path, mode="rb", **kw):
        f = super()._open(path, mode, **kw)
        if "r" in mode and path.endswith(ckpt_mod.STATE_FILE):
            self.opens += 1
            if self.opens == 2:
                return _Pausing(f, self.mid, self.go)
        return f


class _Pausing:
    def __init__(self, f, mid, go):
        self.f, self.mid, self.go, self.reads = f, mid, go, 0

    def read(self, n=-1):
        self.reads += 1
        if self.reads == 2:  # one chunk written: the file on disk is incomplete now
            self.mid.set()
            self.go.wait(30)
        return self.f.read(min(n, 1 << 16) if n and n > 0 else 1 << 16)

    def __getattr__(self, name):
        return getattr(self.f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()


def test_two_ranks_restoring_at_once_both_read_a_whole_checkpoint(tmp_path, monkeypatch):
    src = tmp_path / "checkpoint-000000000064"
    weights = {"w": torch.arange(600_000, dtype=torch.float32)}  # ~2.4 MB: several chunks
    ckpt_mod.save_checkpoint(str(src), 0, {"G": weights, "counters": {"images_seen": 64}}, {"images_seen": 64})
    ckpt_mod.save_checkpoint(str(src), 1, None, None)
    mid, go = threading.Event(), threading.Event()
    fs = pafs.PyFileSystem(pafs.FSSpecHandler(PausingFS(mid, go)))
    checkpoint = Checkpoint(str(src), filesystem=fs)  # what both workers get from Ray Train

    real_load = ckpt_mod.load_checkpoint
    results: dict[int, object] = {}

    def rank1():
        try:
            results[1] = ckpt_mod.restore(checkpoint, 1)
        except Exception as e:  # noqa: BLE001 (reported below)
            results[1] = e

    def load_while_rank1_downloads(directory, rank, map_location="cpu"):
        if rank != 0:
            return real_load(directory, rank, map_location)
        # rank 0 has its files; rank 1 starts its restore and is halfway through state.pt now
        t = threading.Thread(target=rank1)
        t.start()
        assert mid.wait(30), "rank 1 never downloaded"
        try:
            return real_load(directory, rank, map_location)
        finally:
            go.set()
            t.join(60)

    monkeypatch.setattr(ckpt_mod, "load_checkpoint", load_while_rank1_downloads)
    state0, _ = ckpt_mod.restore(checkpoint, 0)
    monkeypatch.setattr(ckpt_mod, "load_checkpoint", real_load)
    assert not isinstance(results.get(1), Exception), results.get(1)
    state1, rng1 = results[1]
    for state in (state0, state1):
        assert torch.equal(state["G"]["w"], weights["w"]) and state["counters"]["images_seen"] == 64
    assert rng1 is not None


def test_restore_from_a_local_checkpoint_reads_it_in_place(tmp_path):
    src = tmp_path / "ck"
    ckpt_mod.save_checkpoint(str(src), 0, {"counters": {"images_seen": 8}}, {"images_seen": 8})
    state, rng = ckpt_mod.restore(Checkpoint.from_directory(str(src)), 0)
    assert state["counters"]["images_seen"] == 8 and rng is not None
    with pytest.raises(FileNotFoundError):
        ckpt_mod.restore(Checkpoint.from_directory(str(tmp_path / "missing")), 0)
