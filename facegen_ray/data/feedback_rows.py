"""Approved feedback images as dataset rows: the image fitted to the dataset's resolution with
the training downsample, its labels (the attributes it was generated for), and the shard row."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from facegen_ray.data.shards import decode_image, downsample
from facegen_ray.data.transforms import encode_image, pixel_sha256
from facegen_ray.storage import Storage

LABEL_SOURCE = "requested"  # labels = the attributes the image was generated for


@dataclass
class FeedbackImage:
    """One approved image chosen for the merge (before conversion)."""

    image_id: str
    record: dict[str, Any]
    image_uri: str
    approvals: int
    rejections: int
    mean_rating: float | None
    feedback_ids: list[str] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)  # approving sources (serve/source.py)


def fit_resolution(arr: np.ndarray, resolution: int) -> np.ndarray | None:
    """uint8 [r,r,3] -> uint8 [R,R,3] at the dataset resolution, or None when the sizes do not
    divide (see the module docstring: nearest upscale, box downscale)."""
    h, w = arr.shape[:2]
    if h != w:
        return None
    if h == resolution:
        return arr
    if h < resolution:
        f = resolution // h
        if f * h != resolution or f & (f - 1):
            return None
        return np.repeat(np.repeat(arr, f, axis=0), f, axis=1)
    if h % resolution:
        return None

    return np.clip(np.rint(downsample(arr[None], resolution)[0]), 0, 255).astype(np.uint8)


def _labels(record: dict[str, Any]) -> tuple[int | None, int | None, int | None, str | None]:
    """(age years, gender, race, label_source) of a generated image: the requested attributes
    when the model was conditional (the record carries condition codes), else all null."""
    cond = record.get("condition")
    if cond is None:
        return None, None, None, None
    attrs = record.get("attributes") or {}

    def code(key: str, idx: int) -> int | None:
        v = attrs.get(key)
        if v is None and len(cond) > idx and int(cond[idx]) >= 0:
            v = int(cond[idx])
        return None if v is None else int(v)

    age = attrs.get("age")
    age = None if age is None else int(age)
    gender, race = code("gender", 1), code("race", 2)
    any_label = any(x is not None for x in (age, gender, race))
    return age, gender, race, (LABEL_SOURCE if any_label else None)


def _convert(
    storage: Storage,
    items: list[FeedbackImage],
    manifest: dict[str, Any],
    base_hashes: set[str],
    skipped: dict[str, int],
    weight: float,
) -> tuple[list[dict[str, Any]], list[FeedbackImage]]:
    """Selected images -> shard rows (one per image) at the dataset's resolution/format."""
    res = int(manifest["resolution"])
    fmt = manifest.get("image_format") or "png"
    rows: list[dict[str, Any]] = []
    used: list[FeedbackImage] = []
    seen: set[str] = set()
    for it in items:
        try:
            arr = decode_image(storage.read_bytes(it.image_uri))
        except FileNotFoundError:
            skipped["missing_image"] += 1
            continue
        except Exception:  # noqa: BLE001 - a corrupt stored image is skipped, counted
            skipped["unreadable"] += 1
            continue
        fitted = fit_resolution(arr, res)
        if fitted is None:
            skipped["resolution"] += 1
            continue
        img = Image.fromarray(np.ascontiguousarray(fitted), mode="RGB")
        data = encode_image(img, fmt)
        if fmt == "jpeg":  # hash what the JPEG decodes to, as prepare does
            fitted = decode_image(data)
        sha = pixel_sha256(fitted)
        if sha in base_hashes:
            skipped["in_base"] += 1
            continue
        if sha in seen:
            skipped["duplicate"] += 1
            continue
        seen.add(sha)
        age, gender, race, label_source = _labels(it.record)
        rows.append(
            {
                "image": data,
                "sha256": sha,
                "source": it.image_uri,
                "age": age,
                "gender": gender,
                "race": race,
                "origin": "feedback",
                "weight": float(weight),
                "label_source": label_source,
            }
        )
        used.append(it)
    return rows, used
