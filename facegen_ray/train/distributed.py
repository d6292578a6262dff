"""Collectives of the hand-written data parallelism (what DDP does, done by hand because R1
and path-length regularisation need double backward, which the DDP wrapper does not support):
one flat gradient all-reduce per step, rank 0's weights broadcast at start, running buffers
averaged, and a digest to check that every rank holds the same weights.
"""

from __future__ import annotations

import hashlib

import torch
import torch.distributed as dist


def world_size() -> int:
    """Workers in the process group (1 without one)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def allreduce_grads(module: torch.nn.Module, world: int, sanitize: bool) -> None:
    """Average gradients across workers with one flat all-reduce (every rank has the same
    set of parameters with gradients, because they run the same stage)."""
    params = [p for p in module.parameters() if p.grad is not None]
    if not params:
        return
    if world > 1:
        flat = torch.cat([p.grad.reshape(-1) for p in params])
        dist.all_reduce(flat)
        flat /= world
        offset = 0
        for p in params:
            n = p.numel()
            p.grad.copy_(flat[offset : offset + n].view_as(p.grad))
            offset += n
    if sanitize:  # fp32 path: keep one bad batch from poisoning the weights
        for p in params:
            torch.nan_to_num_(p.grad, nan=0.0, posinf=1e5, neginf=-1e5)


def any_rank(flag: bool, world: int, device: torch.device) -> bool:
    """True on every rank when `flag` is true on any rank (one tiny all-reduce; none when world is 1)."""
    if world <= 1:
        return bool(flag)
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def broadcast_module(module: torch.nn.Module, world: int) -> None:
    if world <= 1:
        return
    for t in list(module.parameters()) + list(module.buffers()):
        dist.broadcast(t.data, src=0)


def average_buffers(module: torch.nn.Module, world: int, name_part: str) -> None:
    """Average the running buffers (e.g. w_avg) that each worker updates from its own batch."""
    if world <= 1:
        return
    for name, b in module.named_buffers():
        if name_part in name and b.is_floating_point():
            dist.all_reduce(b.data)
            b.data /= world


def module_digest(module: torch.nn.Module) -> str:
    """sha256 over all parameters and buffers: equal digests = bit-identical weights."""
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()
