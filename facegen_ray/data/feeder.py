"""Shard -> batches for the training loop: `ShardFeeder` serves batches of any size from a
Ray Data shard iterator, epoch after epoch, and can rebuild its stream from a saved position
(exact resume). No model code here; used by facegen_ray.train.loop on every worker.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np
import torch

DATA_COLUMNS = ["image", "age", "gender", "race", "weight"]  # the shard columns training reads


class KeptRows:
    """Epoch 0's rows as later epochs read them, in their arrival order.

    Small columns are concatenated once. Large ones (the images: 245 MB of float32 for
    UTKFace at 32²) stay in the batches they arrived in and are gathered row by row: copying
    them into one fresh array at the end of epoch 0 stalled the batch that switches epochs on
    page faults (benchmarks/train_data.py shows the wait) and held the rows twice meanwhile."""

    CONCAT_BYTES = 16 << 20  # columns up to this size are concatenated

    def __init__(self, parts: list[dict[str, torch.Tensor]]) -> None:
        arrays = {c: [b[c].numpy() for b in parts] for c in parts[0]}
        self.columns = list(arrays)
        lengths = [len(a) for a in arrays[self.columns[0]]]
        self.n = int(sum(lengths))
        self.starts = np.cumsum([0] + lengths[:-1])  # row index where each batch begins
        self.whole = {c: np.concatenate(v) for c, v in arrays.items() if sum(a.nbytes for a in v) <= self.CONCAT_BYTES}
        self.split = {c: v for c, v in arrays.items() if c not in self.whole}

    def __len__(self) -> int:
        return self.n

    def take(self, idx: np.ndarray) -> dict[str, np.ndarray]:
        """Rows idx (indices into the arrival order), as new arrays."""
        out: dict[str, np.ndarray] = {}
        if self.split:
            part = np.searchsorted(self.starts, idx, side="right") - 1
            where = list(zip(part.tolist(), (idx - self.starts[part]).tolist()))
        for c in self.columns:
            if c in self.whole:
                out[c] = np.take(self.whole[c], idx, axis=0)
                continue
            batches = self.split[c]
            buf = np.empty((len(idx),) + batches[0].shape[1:], batches[0].dtype)
            for j, (p, o) in enumerate(where):
                buf[j] = batches[p][o]
            out[c] = buf
        return out


class ShardFeeder:
    """Serves batches of any size from a Ray Data shard iterator, epoch after epoch.

    The stream is epoch 0's rows, then epoch 1's, ... Batches are cut from fixed-size chunks,
    so the batch size may change between stages without losing rows, and a batch may span two
    epochs. `position` = (epoch, rows of it already handed out) rebuilds the same stream after
    a restart.

    Streamed (cache=False): every epoch re-opens the shard (Ray Data runs its pipeline again)
    and shuffles it with a local buffer seeded from (seed, epoch, rank); a restart re-opens
    the saved epoch and skips the rows already handed out.

    In memory (cache=True, for shards that fit: train.cache_dataset_bytes): epoch 0 is streamed
    as above while its rows are kept; epochs >= 1 are permutations of those rows drawn from
    (seed, epoch, rank), served from memory, so no epoch after the first waits for a pipeline
    to start or a shuffle buffer to fill. A restart in epoch >= 1 reads epoch 0's rows once
    (same seed, same order) and continues with the same permutation. With prefetch (default),
    the next batch of the same size is gathered on a thread while the caller trains on this
    one; `position` counts only the rows handed out, so a prefetched batch changes nothing a
    checkpoint saves.
    """

    def __init__(
        self,
        shard,
        *,
        chunk: int,
        seed: int,
        rank: int,
        shuffle_buffer: int,
        epoch: int = 0,
        rows: int = 0,
        cache: bool = False,
        prefetch: bool = True,
    ):
        self.shard = shard
        self.chunk = max(1, int(chunk))
        self.seed = int(seed)
        self.rank = int(rank)
        self.shuffle_buffer = int(shuffle_buffer)
        self.cache = bool(cache)
        self._epoch = int(epoch)  # epoch being handed out
        self._skip = int(rows)  # rows of it to drop when (re)opening that epoch
        self._pulled = 0  # rows pulled from the open epoch (incl. skipped)
        self._it: Iterator[dict[str, torch.Tensor]] | None = None
        self._pending: list[dict[str, torch.Tensor]] = []
        self._pending_rows = 0
        self._empty_epochs = 0  # streamed epochs in a row that had no rows
        # in-memory epochs (cache=True)
        self._kept: list[dict[str, torch.Tensor]] | None = [] if self.cache else None  # epoch 0's rows so far
        self._rows: KeptRows | None = None  # epoch 0's rows, in their arrival order
        self._mem_started = False  # an in-memory epoch has been served from
        self._cursor = 0  # rows of the in-memory epoch handed out
        self._orders: dict[int, np.ndarray] = {}  # permutations by epoch (current and next)
        # the next batch, gathered on a thread while the caller trains on this one:
        # ((epoch, cursor, rows), future of (batch, epoch after, cursor after))
        self.prefetch = bool(prefetch)
        self._ahead: tuple[tuple[int, int, int], Future] | None = None
        self._pool: ThreadPoolExecutor | None = None

    @property
    def in_memory(self) -> bool:
        """True once epochs are served from memory (epoch >= 1 of a caching feeder)."""
        return self.cache and self._epoch >= 1

    @property
    def position(self) -> dict[str, int]:
        """(epoch, rows handed out from it); the rows still pending all belong to that epoch."""
        if self.in_memory:
            return {"epoch": self._epoch, "rows": self._cursor if self._mem_started else self._skip}
        if self._it is None:
            return {"epoch": self._epoch, "rows": self._skip}
        return {"epoch": self._epoch, "rows": self._pulled - self._pending_rows}

    # ------------------------------------------------------------------ streamed epochs
    def _iterate(self, epoch: int) -> Iterator[dict[str, torch.Tensor]]:
        kwargs: dict[str, Any] = {}
        if self.shuffle_buffer > 0:
            kwargs["local_shuffle_buffer_size"] = self.shuffle_buffer
            kwargs["local_shuffle_seed"] = (self.seed * 1_000_003 + epoch * 1009 + self.rank) % (2**31)
        for batch in self.shard.iter_torch_batches(batch_size=self.chunk, device="cpu", **kwargs):
            yield {k: v for k, v in batch.items() if k in DATA_COLUMNS}

    def _open(self) -> None:
        self._it = self._iterate(self._epoch)
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
        batch = next(self._it, None)
        if batch is not None and self._kept is not None and self._epoch == 0:
            self._kept.append(batch)
        return batch

    def _push(self, batch: dict[str, torch.Tensor]) -> None:
        self._pending.append(batch)
        self._pending_rows += len(batch["image"])

    def _take_streamed(self, n: int, out: list[dict[str, torch.Tensor]]) -> int:
        """Up to n rows of the streamed epoch into out; returns how many (0: the epoch ended)."""
        if self._it is None:
            self._open()
        got = 0
        while got < n:
            if self._pending_rows == 0:
                batch = self._next_raw()
                if batch is None:  # the epoch ended
                    self._empty_epochs = self._empty_epochs + 1 if self._pulled == 0 else 0
                    if self._empty_epochs > 1 or (self._pulled == 0 and self.cache and self._epoch == 0):
                        raise RuntimeError("this worker's dataset shard is empty (fewer rows than workers?)")
                    self._end_streamed_epoch()
                    return got
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
        return got

    def _end_streamed_epoch(self) -> None:
        if self._kept is not None and self._epoch == 0:
            self._keep_rows(self._kept)
        self._it = None
        self._epoch += 1
        self._skip = 0

    # ------------------------------------------------------------------ in-memory epochs
    def _load_rows(self) -> None:
        """Epoch 0's rows in the order epoch 0 streamed them (a restart in a later epoch)."""
        parts = list(self._iterate(0))
        if not parts:
            raise RuntimeError("this worker's dataset shard is empty (fewer rows than workers?)")
        self._keep_rows(parts)

    def _keep_rows(self, parts: list[dict[str, torch.Tensor]]) -> None:
        """Epoch 0's batches -> the rows later epochs permute (numpy: gathered on one thread)."""
        self._rows = KeptRows(parts)
        self._kept = None

    def _permutation(self, epoch: int) -> np.ndarray:
        g = torch.Generator().manual_seed((self.seed * 1_000_003 + epoch * 1009 + self.rank + 7919) % (2**63 - 1))
        return torch.randperm(len(self._rows), generator=g).numpy()

    def _orders_for(self, epoch: int, cursor: int, n: int) -> dict[int, np.ndarray]:
        """The permutations a gather of n rows from (epoch, cursor) reads; computed here, on the
        caller's thread, and cached (the current epoch's and the next ones only)."""
        total = len(self._rows)
        last = epoch + (cursor + n) // total
        self._orders = {e: o for e, o in self._orders.items() if e >= epoch}
        for e in range(epoch, last + 1):
            if e not in self._orders:
                self._orders[e] = self._permutation(e)
        return {e: self._orders[e] for e in range(epoch, last + 1)}

    def _gather(
        self, epoch: int, cursor: int, n: int, orders: dict[int, np.ndarray]
    ) -> tuple[dict[str, torch.Tensor], int, int]:
        """n rows from (epoch, cursor) on; returns them and the position after them. Reads only
        the kept rows and the given permutations, so it may run on the prefetch thread."""
        total = len(self._rows)
        parts: list[dict[str, np.ndarray]] = []
        got = 0
        while got < n:
            if cursor >= total:
                epoch, cursor = epoch + 1, 0
            k = min(n - got, total - cursor)
            idx = orders[epoch][cursor : cursor + k]
            # numpy, one thread. torch's index_select spreads this small copy over the
            # intra-op threads, whose wake-up after each training step costs several times
            # more than the copy itself
            parts.append(self._rows.take(idx))
            cursor += k
            got += k
        rows = parts[0] if len(parts) == 1 else {c: np.concatenate([p[c] for p in parts]) for c in parts[0]}
        return {c: torch.from_numpy(v) for c, v in rows.items()}, epoch, cursor

    def _take_in_memory(self, n: int) -> dict[str, torch.Tensor]:
        """The next n rows from memory: the prefetched batch when it is exactly these rows, else
        gathered now; then the following n rows are gathered on the prefetch thread."""
        if self._rows is None:
            self._load_rows()
        if not self._mem_started:  # first in-memory epoch of this feeder (or a restart into one)
            if self._skip > len(self._rows):
                raise RuntimeError(f"cannot resume data position: epoch {self._epoch} has fewer rows than {self._skip}")
            self._cursor, self._skip, self._mem_started = self._skip, 0, True
        key = (self._epoch, self._cursor, n)
        ahead, self._ahead = self._ahead, None
        if ahead is not None and ahead[0] == key:
            batch, self._epoch, self._cursor = ahead[1].result()
        else:  # nothing prefetched, or for another batch size (a new stage)
            batch, self._epoch, self._cursor = self._gather(*key, self._orders_for(*key))
        if self.prefetch:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="facegen-feeder")
            nxt = (self._epoch, self._cursor, n)
            self._ahead = (nxt, self._pool.submit(self._gather, *nxt, self._orders_for(*nxt)))
        return batch

    def take(self, n: int) -> dict[str, torch.Tensor]:
        """The next n rows ({column: tensor [n,...]}); rolls over into the next epoch as needed."""
        if self.in_memory:
            return self._take_in_memory(n)
        out: list[dict[str, torch.Tensor]] = []
        got = 0
        while got < n:
            if self.in_memory:  # epoch 0 of a caching feeder ended inside this batch
                out.append(self._take_in_memory(n - got))
                break
            got += self._take_streamed(n - got, out)
        # a copy, so the caller owns its rows (streamed parts are views of Ray's batches and of
        # epoch 0's kept rows); numpy's concatenate runs on one thread (torch.cat would wake the
        # intra-op threads for this small copy, which costs more than the copy)
        return {c: torch.from_numpy(np.concatenate([b[c].numpy() for b in out])) for c in out[0]}

    def close(self) -> None:
        """Stops the prefetch thread and closes the open shard iterator; `position` is kept, and
        a later take() re-opens the epoch there. Without close(), a half-read iterator ends
        only when the garbage collector finds it, and Ray Data's end-of-iteration code then
        runs inside whatever the process is doing at that moment (on CPython 3.11 that broke
        an unrelated ast.parse with "AST constructor recursion depth mismatch")."""
        self._ahead = None
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        if self._it is not None:
            self._skip = self.position["rows"]  # where take() re-opens the epoch
            it, self._it = self._it, None
            self._pending, self._pending_rows, self._pulled = [], 0, 0
            if self._kept is not None and self._epoch == 0:
                self._kept = []  # re-opening replays epoch 0 from its first row and keeps the rows again
            it.close()

    def __enter__(self) -> ShardFeeder:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
