"""The generator replica's request path without Ray: GeneratorDeployment's class, with a loaded
tiny model and a stand-in for the ModelState handle, renders RenderRequests through its
continuous batcher (serve/batcher.py) and answers RenderResults."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_model_dict

from facegen_ray.config import ModelConfig, load_config
from facegen_ray.config.base import ConfigError
from facegen_ray.models import Generator, save_model_dir
from facegen_ray.serve import generation as gen
from facegen_ray.serve.batch_plan import fake_images
from facegen_ray.serve.messages import ModelRef, RenderRequest, RenderResult
from facegen_ray.serve.replica import GeneratorDeployment
from facegen_ray.storage import Storage


class _Method:
    def __init__(self, fn) -> None:
        self.remote = fn


class StateStandIn:
    """ModelState's handle: the pointer names the model the replica already holds."""

    def __init__(self) -> None:
        async def current():
            return {"epoch": "e", "generation": 1, "target": {"uri": "u", "label": "t1"}}

        async def report(replica, status):
            return None

        self.current = _Method(current)
        self.report = _Method(report)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> str:
    cfg = ModelConfig(**tiny_model_dict(16))
    torch.manual_seed(0)
    G = Generator(cfg)
    G.set_stage(G.max_stage, 1.0)
    with torch.no_grad():
        G.mapping.w_avg.normal_()
    uri = str(tmp_path_factory.mktemp("replica") / "m1")
    save_model_dir(Storage(), uri, G, cfg, {"version": "t1"})
    return uri


def _replica(model_dir: str, **serve_cfg):
    cls = GeneratorDeployment.func_or_class
    rep = cls(StateStandIn(), str(Path(model_dir).parent), {}, {"model_poll_interval_s": 60, **serve_cfg})
    rep.model = gen.load_model(Storage(), model_dir, str(Path(model_dir).parent))
    rep.loaded_key, rep.loaded_target = ("e", 1), (model_dir, "t1")
    rep._sync()[1].set()
    return rep


def test_requests_waiting_together_are_one_forward_and_each_gets_its_own_images(model_dir):
    async def main():
        rep = _replica(model_dir)
        reqs = [
            RenderRequest((3,), 0.7),
            RenderRequest((4, 5, 6), 0.5),
            RenderRequest((7,), 0.7, attributes={"age": "20-29"}),  # unconditional model: 422
            RenderRequest((8,), 0.7, control={"edit": {"nonexistent": 1.0}}),  # no directions: 422
            RenderRequest((9,), 1.0),
        ]
        out = await asyncio.gather(*(rep.render(r) for r in reqs))
        stats = list(rep.batcher.stats.sizes)
        await rep.batcher.close()
        return out, stats, rep.model

    out, stats, model = asyncio.run(main())
    assert all(isinstance(r, RenderResult) for r in out)
    assert stats == [7]  # all five waited together: one batch (7 images counted)
    assert [r.ok for r in out] == [True, True, False, False, True]
    assert out[2].status == 422 and "unconditional" in out[2].error
    assert out[3].status == 422
    for r, (seeds, psi) in zip([out[0], out[1], out[4]], [([3], 0.7), ([4, 5, 6], 0.5), ([9], 1.0)]):
        assert r.model["model_version"] == "t1" and r.conditions is None
        assert r.timing is not None and r.timing.replica_s >= r.timing.forward_s > 0
        alone = gen.generate(model.G, seeds, psi)
        assert r.images.shape == alone.shape and np.abs(r.images.astype(int) - alone.astype(int)).max() <= 1


def test_fake_forward_answers_images_of_the_models_shape(model_dir):
    async def main():
        rep = _replica(model_dir, fake_forward_ms="0+0.1n")
        assert rep.fake_ms == (0.0, 0.1)
        a, b = await asyncio.gather(rep.render(RenderRequest((1, 2), 0.7)), rep.render(RenderRequest((300,), 0.7)))
        other = await rep.render_version(RenderRequest((5,), 0.7, model=ModelRef(model_dir, "t1")))
        await rep.batcher.close()
        return a, b, other

    a, b, other = asyncio.run(main())
    assert a.ok and a.images.shape == (2, 16, 16, 3) and a.images.dtype == np.uint8
    assert np.array_equal(a.images, fake_images([1, 2], 16)) and np.array_equal(b.images, fake_images([300], 16))
    assert len({int(a.images[0, 0, 0, 0]), int(a.images[1, 0, 0, 0])}) == 2
    assert other.ok and other.images.shape == (1, 16, 16, 3)  # render_version renders for real


def test_fake_forward_ms_is_validated_strictly():
    assert load_config(None, ["serve.fake_forward_ms=45+23.5n"]).serve.fake_forward_ms == "45+23.5n"
    for bad in ["45", "45+n", "n+45", "-1+2n", "1+2n+3", "45 + 23.5 ms"]:
        with pytest.raises(ConfigError, match="fake_forward_ms"):
            load_config(None, [f"serve.fake_forward_ms={bad}"])


def test_a_micro_batched_call_answers_each_request_and_the_images_waiting_are_reported(model_dir):
    """render_many (the ingress's micro-batch, serve/hop.py): each request answered in order as
    if it had come alone; record_autoscaling_stats counts the images queued or rendering
    (serve/autoscale.py scales on it), not the calls."""

    async def main():
        rep = _replica(model_dir, fake_forward_ms="300+0n")  # long enough to queue behind
        idle = await rep.record_autoscaling_stats()
        first = asyncio.ensure_future(rep.render(RenderRequest((1, 2, 3), 0.7)))  # 3 images running
        while rep.batcher.queued() or not rep.batcher.images_in_flight():
            await asyncio.sleep(0.001)
        many = asyncio.ensure_future(
            rep.render_many(
                [RenderRequest((4,), 0.7), RenderRequest((5, 6), 0.7), RenderRequest((7,), 0.7, {"age": 3})]
            )
        )
        while rep.batcher.queued() < 3:
            await asyncio.sleep(0.001)
        busy = await rep.record_autoscaling_stats()
        out = [await first, *(await many)]
        after = await rep.record_autoscaling_stats()
        stats = await rep.batch_stats()
        await rep.batcher.close()
        return idle, busy, after, out, stats

    idle, busy, after, out, stats = asyncio.run(main())
    assert idle == after == {"images_in_flight": 0.0}
    assert busy == {"images_in_flight": 7.0}  # 3 rendering + 1 + 2 + 1 queued, in one call
    assert [r.ok for r in out] == [True, True, True, False] and out[3].status == 422
    assert [r.images.shape[0] for r in out[:3]] == [3, 1, 2]
    assert np.array_equal(out[2].images, fake_images([5, 6], 16))
    assert stats["call_sizes"] == [1, 3] and stats["calls"] == 2 and stats["sizes"] == [3, 4]
