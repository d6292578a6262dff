"""Sampling without per-row loops (models/sampling.py): the seed -> latent contract, per-row
truncation on the device, prepared latents and CUDA-graph buckets built at load (on CPU: the
padded eager path)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import tiny_model_dict

from facegen_ray.config import ModelConfig
from facegen_ray.models import Generator
from facegen_ray.models.sampling import GraphedSynthesis, generate, seeds_to_z, truncate


@pytest.fixture(scope="module")
def G():
    torch.manual_seed(0)
    g = Generator(ModelConfig(**tiny_model_dict(16)))
    g.set_stage(g.max_stage, 1.0)
    with torch.no_grad():
        g.mapping.w_avg.normal_()
    return g.eval()


def test_seeds_to_z_is_each_seeds_own_stream():
    z = seeds_to_z([7, 3, 7, 2**31 - 1], 64)
    for row, s in zip(z, [7, 3, 7, 2**31 - 1]):  # what a fresh generator for that seed draws
        assert torch.equal(row, torch.randn(1, 64, generator=torch.Generator().manual_seed(s))[0])
    assert seeds_to_z([], 8).shape == (0, 8)


def test_truncate_per_row_equals_the_mappings_own_truncation(G):
    z = seeds_to_z([1, 2, 3], G.z_dim)
    cutoff = G.cfg.truncation_cutoff
    raw = G.mapping(z, None)
    psi = torch.tensor([0.5, 1.0, 0.7])
    mine = truncate(raw, G.mapping.w_avg, psi, cutoff)
    for i, p in enumerate([0.5, 1.0, 0.7]):
        ref = G.mapping(z[i : i + 1], None, p, cutoff)
        assert torch.allclose(mine[i : i + 1], ref, atol=1e-6)


def test_mixed_psi_is_one_forward_and_images_do_not_depend_on_the_batch(G):
    calls = []
    orig = G.synthesis.forward

    def counting(ws, noise_mode="random"):
        calls.append(ws.shape[0])
        return orig(ws, noise_mode=noise_mode)

    G.synthesis.forward = counting
    try:
        mixed = generate(G, [5, 6, 7, 8], [0.5, 0.7, 0.5, 1.0])
        assert calls == [4]  # one pass for three psi values (the old code ran one per psi)
        alone = [generate(G, [s], p) for s, p in [(5, 0.5), (6, 0.7), (7, 0.5), (8, 1.0)]]
        pre = generate(G, [5, 6, 7, 8], [0.5, 0.7, 0.5, 1.0], z=seeds_to_z([5, 6, 7, 8], G.z_dim), batch_size=3)
    finally:
        G.synthesis.forward = orig
    assert calls[-2:] == [3, 1]
    for i, one in enumerate(alone):
        assert np.abs(mixed[i].astype(int) - one[0].astype(int)).max() <= 1
    assert np.abs(pre.astype(int) - mixed.astype(int)).max() <= 1
    with pytest.raises(ValueError, match="z has shape"):
        generate(G, [1, 2], 0.7, z=torch.zeros(3, G.z_dim))


def test_capture_all_builds_every_bucket_before_first_use(G):
    synth = GraphedSynthesis(G.synthesis, "cpu", buckets=(1, 2, 4), capture=False)
    ws = G.mapping(seeds_to_z([0], G.z_dim), None)
    synth.capture_all(ws)
    assert sorted(synth._graphs) == [1, 2, 4] and synth.failed is None
    built = dict(synth._graphs)
    out = generate(G, [9, 10, 11], 0.7, synthesis=synth)
    assert synth._graphs == built  # used, not rebuilt
    assert np.abs(out.astype(int) - generate(G, [9, 10, 11], 0.7).astype(int)).max() <= 1
