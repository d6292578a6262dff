"""Direct tests of the shard feeder (data/feeder.py) and the GAN step (train/steps.py), without
Ray Train: the feeder reads a real Ray Dataset's iterator, the step runs the real models."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from facegen_ray.config import FacegenConfig
from facegen_ray.data.feeder import DATA_COLUMNS, KeptRows, ShardFeeder
from facegen_ray.train.distributed import module_digest
from facegen_ray.train.schedule import ProgressiveSchedule
from facegen_ray.train.steps import GANSteps
from tests.conftest import tiny_model_dict


@pytest.fixture(scope="module")
def ids_dataset(ray_session):
    """23 rows whose `image` holds the row id (so order and coverage are visible)."""
    import ray

    n = 23
    return ray.data.from_items(
        [
            {"image": np.full((1,), i, dtype=np.int64), "age": i, "gender": 0, "race": 0, "weight": 1.0, "extra": i}
            for i in range(n)
        ]
    ), n


def _ids(batch) -> list[int]:
    return batch["image"].view(-1).tolist()


def test_feeder_rolls_over_epochs_and_every_epoch_is_a_permutation(ids_dataset):
    ds, n = ids_dataset
    f = ShardFeeder(ds, chunk=4, seed=3, rank=0, shuffle_buffer=8)
    stream: list[int] = []
    for size in (5, 7, 9, 11, 6, 8):  # batch sizes change like stages do; 46 rows = 2 epochs
        b = f.take(size)
        assert set(b) == set(DATA_COLUMNS), "only the training columns are handed out"
        assert len(b["image"]) == size
        stream += _ids(b)
    assert len(stream) == 2 * n
    assert sorted(stream[:n]) == list(range(n)), "epoch 0 holds every row once"
    assert sorted(stream[n:]) == list(range(n)), "epoch 1 holds every row once"
    assert stream[:n] != stream[n:], "epochs are shuffled with different seeds"
    assert f.position == {"epoch": 1, "rows": n}


def test_feeder_resumes_at_its_position_mid_epoch(ids_dataset):
    ds, n = ids_dataset
    a = ShardFeeder(ds, chunk=4, seed=5, rank=1, shuffle_buffer=8)
    head = _ids(a.take(30))  # into epoch 1
    pos = a.position
    assert pos == {"epoch": 1, "rows": 30 - n}
    tail = _ids(a.take(20))
    b = ShardFeeder(ds, chunk=4, seed=5, rank=1, shuffle_buffer=8, **pos)
    assert _ids(b.take(20)) == tail, "a feeder rebuilt from the position continues the same stream"
    assert len(head) == 30


def test_feeder_close_ends_the_half_read_iterator_and_keeps_the_position(ids_dataset):
    ds, n = ids_dataset
    ref = ShardFeeder(ds, chunk=4, seed=5, rank=1, shuffle_buffer=8)
    want = _ids(ref.take(6)) + _ids(ref.take(9))
    ref.close()
    with ShardFeeder(ds, chunk=4, seed=5, rank=1, shuffle_buffer=8) as f:
        assert _ids(f.take(6)) == want[:6]
        it = f._it
        pos = f.position
        f.close()
        assert f._it is None and f.position == pos == {"epoch": 0, "rows": 6}
        with pytest.raises(StopIteration):
            next(it)  # the Ray Data iterator was closed, not left to the garbage collector
        assert _ids(f.take(9)) == want[6:], "take() after close() re-opens the epoch where it stopped"
    # a caching feeder closed inside epoch 0 keeps each row once: its in-memory epochs match one never closed
    ref = ShardFeeder(ds, chunk=4, seed=5, rank=1, shuffle_buffer=8, cache=True, prefetch=False)
    want = _ids(ref.take(3 * n))
    with ShardFeeder(ds, chunk=4, seed=5, rank=1, shuffle_buffer=8, cache=True, prefetch=False) as f:
        got = _ids(f.take(10))
        f.close()
        got += _ids(f.take(3 * n - 10))
        assert len(f._rows) == n
    assert got == want


def test_feeder_refuses_an_empty_shard(ray_session):
    import ray

    empty = ray.data.from_items([{"image": np.zeros(1), "age": 0, "gender": 0, "race": 0, "weight": 1.0}]).filter(
        lambda r: False
    )
    with pytest.raises(RuntimeError, match="empty"):
        ShardFeeder(empty, chunk=4, seed=0, rank=0, shuffle_buffer=0).take(2)


class CountingShard:
    """A shard that counts how often it is opened (each open = one run of Ray Data's pipeline)."""

    def __init__(self, ds) -> None:
        self.ds, self.opens = ds, 0

    def iter_torch_batches(self, **kwargs):
        self.opens += 1
        return self.ds.iter_torch_batches(**kwargs)


def test_in_memory_feeder_streams_epoch_0_once_then_permutes_it(ids_dataset):
    ds, n = ids_dataset
    shard = CountingShard(ds)
    f = ShardFeeder(shard, chunk=4, seed=3, rank=0, shuffle_buffer=8, cache=True)
    stream: list[int] = []
    for size in (5, 7, 9, 11, 6, 8, 23, 23, 1):  # 93 rows: 4 epochs and one row
        b = f.take(size)
        assert set(b) == set(DATA_COLUMNS) and len(b["image"]) == size
        assert b["image"].dtype == torch.int64
        stream += _ids(b)
    assert shard.opens == 1, "epochs after the first come from memory, not from the pipeline"
    assert f.in_memory and f.position == {"epoch": 4, "rows": 1}
    epochs = [stream[i * n : (i + 1) * n] for i in range(4)]
    for e in epochs:
        assert sorted(e) == list(range(n)), "every epoch holds every row once"
    first = ShardFeeder(ds, chunk=4, seed=3, rank=0, shuffle_buffer=8)
    assert epochs[0] == _ids(first.take(n)), "epoch 0 is the streamed epoch 0"
    assert len({tuple(e) for e in epochs}) == 4, "each epoch has its own order"
    other_rank = ShardFeeder(ds, chunk=4, seed=3, rank=1, shuffle_buffer=8, cache=True)
    assert _ids(other_rank.take(2 * n))[n:] != epochs[1], "the permutation depends on the rank"


@pytest.mark.parametrize("at", [0, 10, 23, 30, 46, 57])
def test_in_memory_feeder_resumes_exactly(ids_dataset, at):
    ds, n = ids_dataset
    a = ShardFeeder(ds, chunk=4, seed=5, rank=1, shuffle_buffer=8, cache=True)
    if at:
        a.take(at)
    pos = a.position
    tail = _ids(a.take(40))
    shard = CountingShard(ds)
    b = ShardFeeder(shard, chunk=4, seed=5, rank=1, shuffle_buffer=8, cache=True, **pos)
    assert _ids(b.take(40)) == tail, f"a feeder rebuilt from {pos} continues the same stream"
    assert shard.opens == 1, "a restart reads the shard once"


@pytest.mark.parametrize("split_columns", [False, True])
def test_in_memory_prefetch_hands_out_the_same_stream_and_position(ids_dataset, monkeypatch, split_columns):
    """The prefetch thread gathers the next batch ahead; batch sizes that change (a new stage),
    batches spanning epochs or longer than the shard must still give the unprefetched stream,
    and the position must count only rows handed out."""
    ds, n = ids_dataset
    if split_columns:  # the image-sized path: every column gathered from the batches it arrived in
        monkeypatch.setattr(KeptRows, "CONCAT_BYTES", 0)
    sizes = (5, 7, 30, 7, 7, 7, 3, 50, 4, 4, 9)
    plain = ShardFeeder(ds, chunk=4, seed=2, rank=0, shuffle_buffer=8, cache=True, prefetch=False)
    ahead = ShardFeeder(ds, chunk=4, seed=2, rank=0, shuffle_buffer=8, cache=True)
    for size in sizes:
        a, b = plain.take(size), ahead.take(size)
        assert set(a) == set(b) and all(torch.equal(a[c], b[c]) for c in a), f"batch of {size} differs"
        assert ahead.position == plain.position
    assert ahead._ahead is not None, "the next batch is being gathered ahead"
    b["image"].fill_(-1)  # the caller owns what it was handed: the kept rows are untouched
    assert _ids(ahead.take(n)) == _ids(plain.take(n))
    ahead.close()
    assert ahead._pool is None and _ids(ahead.take(3)) == _ids(plain.take(3)), "still works after close()"
    ahead.close()


@pytest.mark.parametrize("concat_bytes", [KeptRows.CONCAT_BYTES, 0, 100])
def test_kept_rows_gather_like_one_concatenated_array(monkeypatch, concat_bytes):
    """Large columns stay in their batches (gathered row by row), small ones are concatenated:
    both give what indexing one concatenated array gives, for any batch lengths."""
    monkeypatch.setattr(KeptRows, "CONCAT_BYTES", concat_bytes)
    rng = np.random.default_rng(0)
    lengths = [5, 1, 7, 3]
    parts = [
        {
            "image": torch.from_numpy(rng.standard_normal((k, 3, 2, 2)).astype(np.float32)),
            "age": torch.from_numpy(rng.integers(0, 99, k)),
        }
        for k in lengths
    ]
    kept = KeptRows(parts)
    whole = {c: np.concatenate([p[c].numpy() for p in parts]) for c in ("image", "age")}
    assert len(kept) == sum(lengths)
    assert bool(kept.split) == (concat_bytes < whole["image"].nbytes)
    for idx in (np.arange(len(kept)), rng.permutation(len(kept))[:9], np.array([15, 0, 5, 6, 12, 13])):
        got = kept.take(idx)
        assert list(got) == ["image", "age"]
        for c in got:
            assert got[c].dtype == whole[c].dtype and np.array_equal(got[c], whole[c][idx])
    got["image"][:] = 0  # a gather is a copy: the kept rows are untouched
    assert np.array_equal(kept.take(np.array([13]))["image"], whole["image"][[13]])


def test_in_memory_feeder_refuses_an_empty_shard_and_a_bad_position(ray_session, ids_dataset):
    import ray

    empty = ray.data.from_items([{"image": np.zeros(1), "age": 0, "gender": 0, "race": 0, "weight": 1.0}]).filter(
        lambda r: False
    )
    for epoch in (0, 2):
        with pytest.raises(RuntimeError, match="empty"):
            ShardFeeder(empty, chunk=4, seed=0, rank=0, shuffle_buffer=0, cache=True, epoch=epoch).take(2)
    ds, n = ids_dataset
    with pytest.raises(RuntimeError, match="fewer rows"):
        ShardFeeder(ds, chunk=4, seed=0, rank=0, shuffle_buffer=0, cache=True, epoch=3, rows=n + 1).take(1)


def _gan(tmp_path, **loss) -> tuple[GANSteps, object]:
    cfg = FacegenConfig.model_validate(
        {
            "storage": {"root": str(tmp_path)},
            "model": tiny_model_dict(16),
            "loss": {"name": "nonsaturating", "r1_interval": 2, "pl_weight": 2.0, "pl_interval": 2, **loss},
            "train": {"start_resolution": 16, "batch_size": {16: 4}, "total_images": 10**6},
        }
    )
    gan = GANSteps(cfg, torch.device("cpu"))
    point = ProgressiveSchedule(cfg.train, cfg.model, num_workers=1).at(0)
    gan.apply(point)
    return gan, point


def test_step_updates_d_then_g_and_ema_follows(tmp_path):
    gan, point = _gan(tmp_path)
    reals = torch.rand(4, 3, 16, 16) * 2 - 1
    g_init = [p.detach().clone() for p in gan.G.parameters()]
    g0, d0, e0 = module_digest(gan.G), module_digest(gan.D), module_digest(gan.G_ema)
    d_loss = gan.d_step(gan.to_device_reals(reals, point), None, 0)  # R1 due at step 0
    assert np.isfinite(d_loss)
    assert module_digest(gan.D) != d0 and module_digest(gan.G) == g0, "a D step changes D only"
    assert "d_r1_penalty" in gan.reg_stats
    d1 = module_digest(gan.D)
    g_loss = gan.g_step(4, None, 0)  # path length due at step 0
    assert np.isfinite(g_loss)
    assert module_digest(gan.G) != g0 and module_digest(gan.D) == d1, "a G step changes G only"
    assert "g_pl_penalty" in gan.reg_stats
    gan.ema(10_000, 4)
    assert module_digest(gan.G_ema) != e0
    # the EMA lies between the old (initial) and the new weights, strictly inside where they differ
    for pe, p, p0 in zip(gan.G_ema.parameters(), gan.G.parameters(), g_init):
        lo, hi = torch.minimum(p, p0), torch.maximum(p, p0)
        assert torch.all((pe >= lo - 1e-6) & (pe <= hi + 1e-6))
    assert any(not torch.equal(pe, p) for pe, p in zip(gan.G_ema.parameters(), gan.G.parameters()))
    assert all(p.requires_grad for p in gan.D.parameters()), "D is left trainable for the next D step"


def test_step_state_round_trips(tmp_path):
    gan, point = _gan(tmp_path)
    reals = torch.rand(4, 3, 16, 16) * 2 - 1
    gan.d_step(gan.to_device_reals(reals, point), None, 0)
    gan.g_step(4, None, 0)
    state = gan.state_dict()
    other, _ = _gan(tmp_path / "b")
    other.load_state_dict(state)
    for name in ("G", "D", "G_ema"):
        assert module_digest(getattr(other, name)) == module_digest(getattr(gan, name))
    assert other.loss.state_dict() == gan.loss.state_dict()


def test_worker_resources_share_the_machine_only_when_facegen_started_ray(tmp_path, monkeypatch):
    from facegen_ray import runtime
    from facegen_ray.train.trainer import worker_resources

    def cfg(**train):
        return FacegenConfig.model_validate({"storage": {"root": str(tmp_path)}, "train": train})

    monkeypatch.setattr(runtime, "local_cpus", lambda: 8)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert worker_resources(cfg(num_workers=1)) == {"CPU": 8.0}
    assert worker_resources(cfg(num_workers=3)) == {"CPU": 2.0}
    assert worker_resources(cfg(num_workers=16)) == {"CPU": 1.0}
    assert worker_resources(cfg(num_workers=2, use_gpu=True)) == {"CPU": 4.0, "GPU": 1.0}
    assert worker_resources(cfg(resources_per_worker={"CPU": 3})) == {"CPU": 3.0}
    monkeypatch.setenv("RAY_ADDRESS", "ray://head:10001")  # a cluster: Ray Train's default reservation
    assert worker_resources(cfg(num_workers=2)) == {"CPU": 1.0}
