"""Shard -> batches for the training loop: `ShardFeeder` serves batches of any size from a
Ray Data shard iterator, epoch after epoch, and can rebuild its stream from a saved position
(exact resume). No model code here; used by facegen_ray.train.loop on every worker.
"""

from __future__ import annotations

from typing import Any, Iterator

import torch

DATA_COLUMNS = ["image", "age", "gender", "race", "weight"]  # the shard columns training reads


class ShardFeeder:
    """Serves batches of any size from a Ray Data shard iterator, epoch after epoch.

    The stream is epoch 0's rows, then epoch 1's, ... (each epoch shuffled by a local buffer
    seeded from (seed, epoch, rank)). Batches are cut from fixed-size chunks, so the batch size
    may change between stages without losing rows, and a batch may span two epochs.
    `position` = (epoch, rows of it already handed out) rebuilds the same stream after a
    restart: reopen that epoch and skip that many rows.
    """

    def __init__(self, shard, *, chunk: int, seed: int, rank: int, shuffle_buffer: int,
                 epoch: int = 0, rows: int = 0):
        self.shard = shard
        self.chunk = max(1, int(chunk))
        self.seed = int(seed)
        self.rank = int(rank)
        self.shuffle_buffer = int(shuffle_buffer)
        self._epoch = int(epoch)          # epoch the open iterator reads
        self._skip = int(rows)            # rows to drop when (re)opening that epoch
        self._pulled = 0                  # rows pulled from the open epoch (incl. skipped)
        self._it: Iterator[dict[str, torch.Tensor]] | None = None
        self._pending: list[dict[str, torch.Tensor]] = []
        self._pending_rows = 0

    @property
    def position(self) -> dict[str, int]:
        """(epoch, rows handed out from it); the rows still pending all belong to that epoch."""
        if self._it is None:
            return {"epoch": self._epoch, "rows": self._skip}
        return {"epoch": self._epoch, "rows": self._pulled - self._pending_rows}

    def _open(self) -> None:
        kwargs: dict[str, Any] = {}
        if self.shuffle_buffer > 0:
            kwargs["local_shuffle_buffer_size"] = self.shuffle_buffer
            kwargs["local_shuffle_seed"] = (self.seed * 1_000_003 + self._epoch * 1009 + self.rank) % (2**31)
        self._it = iter(self.shard.iter_torch_batches(batch_size=self.chunk, device="cpu", **kwargs))
        self._pulled = 0
        skip, self._skip = self._skip, 0
        while skip > 0:  # replay the rows this epoch already handed out (resume)
            batch = self._next_raw()
            if batch is None:
                raise RuntimeError(f"cannot resume data position: epoch {self._epoch} has fewer rows than {skip}")
            n = len(batch["image"])
            self._pulled += n
            if n > skip:
                self._push({k: v[skip:] for k, v in batch.items()})
                skip = 0
            else:
                skip -= n

    def _next_raw(self) -> dict[str, torch.Tensor] | None:
        try:
            batch = next(self._it)
        except StopIteration:
            return None
        return {k: v for k, v in batch.items() if k in DATA_COLUMNS}

    def _push(self, batch: dict[str, torch.Tensor]) -> None:
        self._pending.append(batch)
        self._pending_rows += len(batch["image"])

    def take(self, n: int) -> dict[str, torch.Tensor]:
        """The next n rows ({column: tensor [n,...]}); rolls over into the next epoch as needed."""
        if self._it is None:
            self._open()
        empty_in_a_row = 0
        out: list[dict[str, torch.Tensor]] = []
        got = 0
        while got < n:
            if self._pending_rows == 0:
                batch = self._next_raw()
                if batch is None:  # epoch exhausted: next epoch
                    empty_in_a_row = empty_in_a_row + 1 if self._pulled == 0 else 0
                    if empty_in_a_row > 1:
                        raise RuntimeError("this worker's dataset shard is empty (fewer rows than workers?)")
                    self._epoch += 1
                    self._skip = 0
                    self._open()
                    continue
                self._pulled += len(batch["image"])
                self._push(batch)
            head = self._pending[0]
            k = min(n - got, len(head["image"]))
            out.append({c: v[:k] for c, v in head.items()})
            rest = {c: v[k:] for c, v in head.items()}
            if len(rest["image"]):
                self._pending[0] = rest
            else:
                self._pending.pop(0)
            self._pending_rows -= k
            got += k
        return {c: torch.cat([b[c] for b in out]) for c in out[0]}

