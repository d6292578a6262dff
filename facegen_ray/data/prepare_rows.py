"""The row-level steps of `facegen prepare` (data/pipeline.py) that run on Ray Data batches
(pyarrow tables): dropping rejects and duplicates, the held-out split, shard rows with
data.balance applied, and the rows-per-shard rule.
"""

from __future__ import annotations

import zlib

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from facegen_ray.data import attributes as attrs
from facegen_ray.data.shards import in_holdout, shard_schema


def _filter_rows(batch, *, drop: list[str]):
    """UDF: keep accepted rows whose source is not a duplicate."""
    mask = pc.is_null(batch.column("reject"))
    if drop:
        mask = pc.and_(mask, pc.invert(pc.is_in(batch.column("source"), value_set=pa.array(drop, type=pa.string()))))
    return batch.filter(mask)


def _to_shard_rows(batch, *, weights: dict[str, float] | None, repeats: dict[str, int] | None, seed: int):
    """UDF: processed rows -> SHARD_SCHEMA rows (origin "dataset"), with --balance applied:
    `weights` per race x gender group, or `repeats` per source (oversampled copies, shuffled
    within the batch so copies do not sit next to each other)."""
    n = batch.num_rows
    genders = batch.column("gender").to_pylist()
    races = batch.column("race").to_pylist()
    if weights:
        w = [weights.get(attrs.group_key(g, r), 1.0) for g, r in zip(genders, races)]
    else:
        w = [1.0] * n
    table = pa.table(
        {
            "image": batch.column("image"),
            "sha256": batch.column("sha256"),
            "source": batch.column("source"),
            "age": batch.column("age"),
            "gender": batch.column("gender"),
            "race": batch.column("race"),
            "origin": pa.array(["dataset"] * n, type=pa.string()),
            "weight": pa.array(w, type=pa.float32()),
            "label_source": batch.column("label_source"),
        },
        schema=shard_schema(),
    )
    if repeats:
        sources = batch.column("source").to_pylist()
        idx = np.repeat(np.arange(n), [repeats.get(s, 1) for s in sources])
        if len(idx) != n:
            # seed per batch from its first source, so a re-run gives the same order
            h = zlib.crc32(sources[0].encode()) if sources else 0
            idx = np.random.default_rng([seed, h]).permutation(idx)
            table = table.take(pa.array(idx))
    return table


def _split_rows(batch, *, fraction: float, holdout: bool):
    """UDF: the rows of the held-out split (holdout=True) or the others (shards.in_holdout)."""
    mask = [in_holdout(h, fraction) == holdout for h in batch.column("sha256").to_pylist()]
    return batch.filter(pa.array(mask, type=pa.bool_()))


def _rows_per_shard(cfg_rows: int, target_mb: float, mean_bytes: float) -> int:
    """Rows per shard: data.shard_rows, fewer if that would exceed ~data.shard_target_mb."""
    by_size = int(target_mb * 2**20 / max(mean_bytes, 1.0))
    return max(1, min(cfg_rows, by_size))
