"""The typed messages of the ingress -> generator replica render calls (no Ray here).

    FacegenIngress ── RenderRequest ──► GeneratorDeployment.render / .render_version
                   ◄── RenderResult ──

A RenderRequest is one HTTP request's images (at most MAX_IMAGES_PER_REQUEST seeds); the replica's
continuous batcher (serve/batcher.py) puts many of them in one forward pass and answers each
with its own RenderResult: ok with the model that rendered it, its uint8 images and the
condition codes, or not ok with the HTTP status and message the ingress answers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class ModelRef:
    """A model named by its resolved directory URI and registry label (render_version)."""

    uri: str
    label: str


@dataclass(frozen=True)
class RenderRequest:
    """seeds: one image each; truncation: the quantised psi; attributes: {"age", "gender",
    "race"} for conditional models or None; control: models.latent.Control.describe() (mix /
    interpolate / edit, already quantised) or None; model: render_version's model (None: the
    replica's current one)."""

    seeds: tuple[int, ...]
    truncation: float
    attributes: dict[str, Any] | None = None
    control: dict[str, Any] | None = None
    model: ModelRef | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "seeds", tuple(int(s) for s in self.seeds))
        object.__setattr__(self, "truncation", float(self.truncation))

    @property
    def images(self) -> int:
        return len(self.seeds)

    def item(self) -> dict[str, Any]:
        """The request as the dict the provenance record and models.latent.Control.from_item read:
        {"seeds", "truncation", "attributes", "control"?, and the control's keys at the top}."""
        out: dict[str, Any] = {"seeds": list(self.seeds), "truncation": self.truncation, "attributes": self.attributes}
        if self.control:
            out["control"] = self.control
            out.update(self.control)
        return out


@dataclass(frozen=True)
class RenderTiming:
    """Seconds in the replica: replica_s from arrival to result, forward_s its batch's pass."""

    replica_s: float
    forward_s: float


@dataclass(frozen=True)
class RenderResult:
    """ok: model (LoadedModel.describe()), images uint8 [k,H,W,3], conditions [[a,g,r]] per image
    for conditional models (else None), timing. Not ok: status (4xx/5xx) and error."""

    ok: bool
    model: dict[str, Any] | None = None
    images: np.ndarray | None = None
    conditions: list[list[int]] | None = None
    status: int = 200
    error: str | None = None
    timing: RenderTiming | None = None

    @classmethod
    def success(
        cls,
        model: dict[str, Any],
        images: np.ndarray,
        conditions: list[list[int]] | None = None,
        timing: RenderTiming | None = None,
    ) -> RenderResult:
        return cls(ok=True, model=model, images=images, conditions=conditions, timing=timing)

    @classmethod
    def failure(cls, status: int, error: str) -> RenderResult:
        return cls(ok=False, status=int(status), error=str(error))

    def timed(self, timing: RenderTiming) -> RenderResult:
        return RenderResult(self.ok, self.model, self.images, self.conditions, self.status, self.error, timing)


def server_timing(
    call_s: float, record_s: float, replica: dict[str, float] | None, slot_s: float = 0.0, limit_s: float = 0.0
) -> str:
    """The Server-Timing header of a generated response (ms; browsers' dev tools show it, and
    benchmarks/serve_load.py splits latency with it): `limit` (the rate-limit check: the round
    trip to the app's guard, serve/ratelimit.py), `slot` (waiting in the ingress for a call
    slot, serve/hop.py), `hop` (the handle call to the generator replica and back, Ray's part),
    `queue` (in the replica before its batch ran: earlier batches), `forward` (the batch's
    generator pass), `record` (PNG encoding with provenance and the durable image record).
    call_s includes slot_s. Without the replica's split: `generator` + `record`."""
    parts: list[tuple[str, float]] = [("limit", limit_s)] if limit_s > 0 else []
    parts += [("slot", slot_s)] if slot_s > 0 else []
    if replica and "replica_s" in replica:
        fwd = float(replica.get("forward_s", 0.0))
        parts += [
            ("hop", call_s - slot_s - float(replica["replica_s"])),
            ("queue", float(replica["replica_s"]) - fwd),
            ("forward", fwd),
        ]
    else:
        parts.append(("generator", call_s - slot_s))
    parts.append(("record", record_s))
    return ", ".join(f"{name};dur={max(0.0, v) * 1000:.2f}" for name, v in parts)
