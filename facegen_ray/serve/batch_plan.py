"""The generator replica's batch, outside the deployment class: a queued request with the
latents drawn on its arrival (Job), how a batch is sorted into refusals, plain rows and
controlled requests (plan_batch), the fake forward's images (serve.fake_forward_ms) and the
CUDA-graph capture done at model load."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from facegen_ray.errors import UserError
from facegen_ray.models import encode_attributes
from facegen_ray.models.sampling import GraphedSynthesis, seeds_to_z
from facegen_ray.serve import generation as gen
from facegen_ray.serve.control import control_of
from facegen_ray.serve.messages import RenderRequest, RenderResult


@dataclass
class Job:
    """A request in the batcher: its RenderRequest and the latents drawn on arrival (plain
    requests; None for requests with controls, or when no model was loaded yet)."""

    req: RenderRequest
    z: torch.Tensor | None = None  # [k, z_dim] float32 (CPU)


def fake_images(seeds: list[int], resolution: int) -> np.ndarray:
    """serve.fake_forward_ms's output: uint8 [n,R,R,3], each image one grey level from its seed."""
    level = (np.asarray(seeds, dtype=np.int64) % 251).astype(np.uint8)  # [n]
    return np.ascontiguousarray(np.broadcast_to(level[:, None, None, None], (len(seeds), resolution, resolution, 3)))


def capture_graphs(model: gen.LoadedModel) -> GraphedSynthesis:
    """The model's synthesis with every CUDA-graph bucket captured now (the forward thread runs
    this at model load, so no request waits for a capture)."""
    synth = GraphedSynthesis(model.G.synthesis, model.device)
    with torch.no_grad():
        z = seeds_to_z([0], model.G.z_dim).to(model.device)
        synth.capture_all(model.G.mapping(z, None))  # [1,L,D]
    return synth


@dataclass
class BatchPlan:
    """A batch sorted for the forward thread: the refusals answered already (results[i] set),
    the plain requests' rows in order (seeds, truncations, conditions, latents drawn on arrival),
    and the requests with controls."""

    results: list[RenderResult | None]
    plain: list[int] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)
    psis: list[float] = field(default_factory=list)
    conds: list[list[int]] = field(default_factory=list)
    zs: list[torch.Tensor | None] = field(default_factory=list)
    controlled: list[tuple[int, Any]] = field(default_factory=list)  # (job index, (condition, controls))


def plan_batch(model: gen.LoadedModel, jobs: list[Job]) -> BatchPlan:
    """Sort a batch's jobs: 422 for attributes on an unconditional model, a bad attribute or a
    bad control; requests with controls apart (serve/control.py); the rest as plain rows."""
    plan = BatchPlan(results=[None] * len(jobs))
    for i, job in enumerate(jobs):
        req = job.req
        if req.attributes is not None and not model.conditional:
            plan.results[i] = RenderResult.failure(
                422,
                f"model {model.version} is unconditional: it cannot generate by attributes; "
                "omit 'attributes' (or serve a model trained with model.conditional=true)",
            )
            continue
        cond = None
        if model.conditional:
            a = req.attributes or {}
            try:
                cond = encode_attributes(a.get("age"), a.get("gender"), a.get("race"), model.cfg)[0].tolist()
            except UserError as e:
                plan.results[i] = RenderResult.failure(422, str(e))
                continue
        try:
            ctl = control_of(req.item())
        except UserError as e:
            plan.results[i] = RenderResult.failure(422, str(e))
            continue
        if ctl is not None:
            plan.controlled.append((i, (cond, ctl)))
            continue
        plan.plain.append(i)
        plan.seeds.extend(req.seeds)
        plan.psis.extend([req.truncation] * req.images)
        plan.conds.extend([cond if cond is not None else [-1, -1, -1]] * req.images)
        # latents drawn on arrival, unless the model (its z_dim) changed since
        plan.zs.append(job.z if job.z is not None and job.z.shape[1] == model.G.z_dim else None)
    return plan
