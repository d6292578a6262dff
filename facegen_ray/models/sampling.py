"""Deterministic sampling: seed -> latent -> image. Pure torch; shared by evaluation, the
Serve app and `facegen generate`, so a seed means the same face everywhere.

- `seeds_to_z(seeds, z_dim)`: each seed draws its own latent from a CPU `torch.Generator`,
  so a seed means the same z whatever else is in the batch and on whichever device G runs.
- `generate(G, seeds, truncation, c, device)`: uint8 images NHWC with `noise_mode="const"`
  (the stored noise buffers) and the model's truncation cutoff; one psi per row, applied on
  the device (`truncate`), so a batch of mixed psi is one forward pass, not one per psi.
- `GraphedSynthesis`: the synthesis network replayed from CUDA graphs, one per batch-size
  bucket (the Serve replicas on a GPU): at batch 1 a forward is mostly kernel launches and
  Python, which a graph replay removes (the GPU figures: docs/performance.md).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence

import numpy as np
import torch

from facegen_ray.errors import UserError

log = logging.getLogger(__name__)

PSI_DECIMALS = 4  # truncation is quantised to 1e-4: the id and the image use the same value


def quantize_psi(psi: float) -> float:
    """Truncation psi rounded to PSI_DECIMALS (so 0.7 and 0.70000001 are the same image)."""
    return round(float(psi), PSI_DECIMALS)


def seeds_to_z(seeds: Sequence[int], z_dim: int) -> torch.Tensor:
    """One standard-normal latent per seed, drawn on the CPU -> z [N, z_dim] float32.

    Each seed keeps its own CPU generator (the stream that fixes a seed's face everywhere: a
    shared batched stream would make a face depend on its batch neighbours); the rows are drawn
    straight into one preallocated tensor."""
    z = torch.empty(len(seeds), z_dim)
    g = torch.Generator(device="cpu")
    for i, s in enumerate(seeds):
        g.manual_seed(int(s))
        torch.randn(z_dim, generator=g, out=z[i])
    return z


def truncate(ws: torch.Tensor, w_avg: torch.Tensor, psi: torch.Tensor, cutoff: int | None) -> torch.Tensor:
    """Per-row truncation on the device: ws [N,L,D], psi [N] -> w_avg + psi * (ws - w_avg) on the
    first `cutoff` layers (all when None), the same lerp the mapping network applies for one psi."""
    cut = ws.shape[1] if cutoff is None else min(int(cutoff), ws.shape[1])
    head = w_avg.to(ws.dtype).lerp(ws[:, :cut], psi.to(ws.dtype).view(-1, 1, 1))  # [N,cut,D]
    return torch.cat([head, ws[:, cut:]], dim=1) if cut < ws.shape[1] else head


def to_uint8(img: torch.Tensor) -> np.ndarray:
    """img [N,3,H,W] roughly in [-1,1] -> uint8 [N,H,W,3]."""
    x = ((img.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)  # [N,3,H,W]
    return x.permute(0, 2, 3, 1).contiguous().cpu().numpy()


@torch.no_grad()
def generate(
    G: torch.nn.Module,
    seeds: Sequence[int],
    truncation: float | Sequence[float] = 1.0,
    c: torch.Tensor | None = None,
    device: str | torch.device | None = None,
    batch_size: int | None = None,
    synthesis: Callable[[torch.Tensor], torch.Tensor] | None = None,
    z: torch.Tensor | None = None,
) -> np.ndarray:
    """Seeds -> uint8 images [N,H,W,3] with constant noise.

    truncation: one psi for all, or one per seed (applied per row on the device, so rows with
    different psi share a forward pass). c: condition codes [N,3] or [1,3] (broadcast) for
    conditional models, None otherwise. device: where to run (default: where G's parameters
    are). batch_size bounds the images per forward pass (default: all rows at once). synthesis:
    ws -> images in place of G.synthesis with constant noise (a GraphedSynthesis); the mapping
    runs eagerly. z: the seeds' latents when drawn beforehand (seeds_to_z; the Serve replica
    draws them while the previous batch runs).
    """
    seeds = [int(s) for s in seeds]
    n = len(seeds)
    if not n:
        raise UserError("no seeds given")
    if isinstance(truncation, (int, float)):
        psis = [quantize_psi(truncation)] * n
    else:
        psis = [quantize_psi(t) for t in truncation]
        if len(psis) != n:
            raise ValueError(f"{len(psis)} truncation values for {n} seeds")
    dev = torch.device(device) if device is not None else next(G.parameters()).device
    cutoff = getattr(getattr(G, "cfg", None), "truncation_cutoff", None)
    if z is None:
        z = seeds_to_z(seeds, G.z_dim)  # [N, z_dim]
    elif tuple(z.shape) != (n, G.z_dim):
        raise ValueError(f"z has shape {tuple(z.shape)}, expected {(n, G.z_dim)}")
    if c is not None:
        c = c.to(torch.long)
        if c.dim() == 1:
            c = c.unsqueeze(0)
        if c.shape[0] == 1 and n > 1:
            c = c.expand(n, -1)
        if c.shape[0] != n:
            raise ValueError(f"condition has {c.shape[0]} rows for {n} seeds")
    psi = torch.tensor(psis, dtype=torch.float32)  # [N]
    z = z.to(dev, non_blocking=True)
    psi = psi.to(dev, non_blocking=True)
    c = c.to(dev) if c is not None else None
    w_avg = G.mapping.w_avg
    step = batch_size or n
    out = []
    for k in range(0, n, step):  # forward passes of at most batch_size rows
        ci = c[k : k + step] if c is not None else None
        ws = truncate(G.mapping(z[k : k + step], ci), w_avg, psi[k : k + step], cutoff)  # [n_k,L,D]
        img = synthesis(ws) if synthesis is not None else G.synthesis(ws, noise_mode="const")  # [n_k,3,R,R]
        out.append(to_uint8(img))
    return out[0] if len(out) == 1 else np.concatenate(out, axis=0)


class GraphedSynthesis:
    """`synthesis(ws, noise_mode="const")` of one generator, replayed from CUDA graphs.

    A batch of n rows runs in the graph of the smallest bucket >= n (the rows are padded with
    copies of the first one and the padding is dropped from the output); larger batches, and
    every batch after a capture failed, run eagerly. Graphs are captured on first use of their
    bucket (or all at once by `capture_all`, at model load) and share one memory pool; a lock keeps replays (and their output copies) one at a
    time. The generator must not change stage or weights afterwards (a loaded serving model
    never does). `capture=False` runs the padded batches eagerly instead, which is how CPU
    tests check the padding and slicing.
    """

    BUCKETS = (1, 2, 4, 8, 16, 32, 64)

    def __init__(
        self,
        synthesis: torch.nn.Module,
        device: str | torch.device,
        *,
        buckets: Sequence[int] = BUCKETS,
        capture: bool | None = None,
    ):
        self.synthesis = synthesis
        self.device = torch.device(device)
        self.buckets = tuple(sorted(int(b) for b in buckets))
        self.capture = self.device.type == "cuda" if capture is None else bool(capture)
        if self.capture and self.device.type != "cuda":
            raise ValueError("CUDA graphs need a CUDA device")
        self.failed: str | None = None  # why capturing failed (then everything runs eagerly)
        self._graphs: dict[int, tuple[torch.Tensor, torch.Tensor, object | None]] = {}
        self._pool = None
        self._lock = threading.Lock()

    def bucket(self, n: int) -> int | None:
        return next((b for b in self.buckets if b >= n), None)

    @torch.no_grad()
    def _eager(self, ws: torch.Tensor) -> torch.Tensor:
        return self.synthesis(ws, noise_mode="const")

    @torch.no_grad()
    def _build(self, b: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, object | None]:
        static_in = torch.zeros((b, *like.shape[1:]), dtype=like.dtype, device=self.device)
        static_in.copy_(like[:1].expand(b, *like.shape[1:]))
        if not self.capture:
            return static_in, static_in, None
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            for _ in range(2):  # warm-up outside the capture (cuDNN algorithm choice, allocations)
                self._eager(static_in)
        torch.cuda.current_stream(self.device).wait_stream(side)
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool):
            static_out = self._eager(static_in)
        return static_in, static_out, graph

    @torch.no_grad()
    def capture_all(self, like: torch.Tensor) -> None:
        """Build every bucket now (a replica does it at model load, on its forward thread, so no
        request pays for a capture). like: ws [k,L,D] of the model (its first row fills the
        static inputs). A failure switches this synthesis to eager, as on first use."""
        for b in self.buckets:
            with self._lock:
                if self.failed is not None or b in self._graphs:
                    continue
                try:
                    self._graphs[b] = self._build(b, like.to(self.device))
                except Exception as e:  # noqa: BLE001 - serving goes on, eagerly
                    self.failed = f"{type(e).__name__}: {e}"
                    log.warning("CUDA graph capture failed (bucket %d), running eagerly: %s", b, self.failed)

    @torch.no_grad()
    def __call__(self, ws: torch.Tensor) -> torch.Tensor:
        n = ws.shape[0]
        b = self.bucket(n)
        if b is None or self.failed is not None:
            return self._eager(ws)
        with self._lock:
            entry = self._graphs.get(b)
            if entry is None:
                try:
                    entry = self._graphs[b] = self._build(b, ws)
                except Exception as e:  # noqa: BLE001 - serving goes on, eagerly
                    self.failed = f"{type(e).__name__}: {e}"
                    log.warning("CUDA graph capture failed (bucket %d), running eagerly: %s", b, self.failed)
                    return self._eager(ws)
            static_in, static_out, graph = entry
            static_in[:n].copy_(ws)
            if n < b:
                static_in[n:].copy_(ws[:1].expand(b - n, *ws.shape[1:]))
            if graph is None:
                return self._eager(static_in)[:n]
            graph.replay()
            return static_out[:n].clone()
