"""Provenance of generated images: every image we write or serve says it is synthetic.

Two independent carriers, both read by `facegen detect`:
- metadata: a PNG text chunk / JPEG EXIF ImageDescription holding JSON
  {"synthetic": true, "generator": "facegen-ray", "model_version", "seed", "psi", "edit",
  "image_id", "watermark"}; plus PNG "Software"/"Description" and EXIF Software tags. Metadata
  is stripped by many uploaders and editors, so it is a label, not a guarantee.
- an invisible watermark (provenance.watermark) in the pixels: model tag + image-id tag.
Encoding stays deterministic: same pixels + same provenance -> same bytes (no timestamps).
"""

from __future__ import annotations

import hashlib
import io
import json
from typing import Any

import numpy as np
from PIL import Image, PngImagePlugin

from facegen_ray.provenance import watermark

METADATA_KEY = "facegen:provenance"
GENERATOR = "facegen-ray"
WATERMARK_ID = "facegen-stdm-v1"
_EXIF_DESCRIPTION, _EXIF_SOFTWARE = 0x010E, 0x0131
# zlib level of the PNGs we write and serve: level 1 compresses several times faster than the
# default 6 for a slightly larger file; at 6 a served face spends more time being compressed
# than being generated on a GPU (docs/performance.md)
PNG_COMPRESS_LEVEL = 1


def provenance_record(
    model_version: str,
    image_id: str | None,
    seed: int | list[int] | None,
    psi: float | None,
    edit: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The JSON every image carries (and /generate returns next to it)."""
    return {
        "synthetic": True,
        "generator": GENERATOR,
        "model_version": str(model_version),
        "image_id": image_id,
        "seed": seed,
        "psi": psi,
        "edit": edit or None,
        "watermark": WATERMARK_ID,
    }


def grid_id(model_version: str, weights_digest: str, seeds: list[int], psi: float) -> str:
    """32 hex chars naming a `facegen generate` grid (model, weights, seeds, psi)."""
    text = json.dumps([str(model_version), str(weights_digest), [int(s) for s in seeds], round(float(psi), 4)])
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


def encode(arr: np.ndarray, fmt: str, quality: int, record: dict[str, Any]) -> bytes:
    """uint8 [H,W,3] -> PNG/JPEG bytes with the watermark in the pixels and `record` in the
    metadata. Deterministic."""
    marked, ok = watermark.embed(arr, record["model_version"], record.get("image_id") or "")
    rec = dict(record, watermark=WATERMARK_ID if ok else None)
    text = json.dumps(rec, sort_keys=True, separators=(",", ":"))
    im = Image.fromarray(np.ascontiguousarray(marked), mode="RGB")
    buf = io.BytesIO()
    if fmt == "png":
        info = PngImagePlugin.PngInfo()
        info.add_text(METADATA_KEY, text)
        info.add_text("Software", GENERATOR)
        info.add_text("Description", "synthetic image: AI-generated face, not a real person")
        im.save(buf, format="PNG", compress_level=PNG_COMPRESS_LEVEL, pnginfo=info)
    else:
        exif = Image.Exif()
        exif[_EXIF_DESCRIPTION] = text
        exif[_EXIF_SOFTWARE] = GENERATOR
        im.save(buf, format="JPEG", quality=quality, exif=exif.tobytes())
    return buf.getvalue()


def output_id(model_version: str, weights_digest: str, control: dict[str, Any]) -> str:
    """32 hex chars naming a control output of `facegen generate` (mixing grid, interpolation or
    edit strip): model, weights and every parameter that fixes the picture."""
    text = json.dumps([str(model_version), str(weights_digest), control], sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


def gif_comment(record: dict[str, Any]) -> bytes:
    """The provenance JSON for a GIF's comment extension (GIFs carry no watermark: their
    256-colour palette destroys one)."""
    return json.dumps(dict(record, watermark=None), sort_keys=True, separators=(",", ":")).encode("utf-8")


def read_metadata(data: bytes) -> dict[str, Any] | None:
    """The provenance JSON from a PNG text chunk, a JPEG EXIF ImageDescription or a GIF comment;
    None if absent."""
    with Image.open(io.BytesIO(data)) as im:
        text = (getattr(im, "text", None) or {}).get(METADATA_KEY) if im.format == "PNG" else None
        if text is None and im.format == "GIF":
            comment = im.info.get("comment")
            text = comment.decode("utf-8", "replace") if isinstance(comment, bytes) else comment
        if text is None:
            desc = im.getexif().get(_EXIF_DESCRIPTION)
            text = desc if isinstance(desc, str) and desc.startswith("{") else None
    if not text:
        return None
    try:
        rec = json.loads(text)
    except ValueError:
        return None
    return rec if isinstance(rec, dict) else None


def inspect(data: bytes) -> dict[str, Any]:
    """What an image file says about itself: metadata, watermark, and whether they agree."""
    with Image.open(io.BytesIO(data)) as im:
        fmt = im.format
        arr = np.asarray(im.convert("RGB"))
    meta = read_metadata(data)
    det = watermark.detect(arr)
    out: dict[str, Any] = {
        "format": fmt,
        "size": [int(arr.shape[1]), int(arr.shape[0])],
        "metadata": meta,
        "watermark": det.to_json(),
    }
    out["synthetic"] = bool((meta or {}).get("synthetic")) or det.found
    if meta and det.found:
        out["consistent"] = (
            det.model_tag == watermark.model_tag(meta.get("model_version", ""))
            and det.image_id_prefix == watermark.payload_bytes("", meta.get("image_id") or "")[2:].hex()
        )
    return out


def summary_line(path: str, rep: dict[str, Any]) -> str:
    meta, wm = rep["metadata"], rep["watermark"]
    parts = [f"{path}: {'SYNTHETIC' if rep['synthetic'] else 'no provenance found'}"]
    if meta:
        parts.append(
            f"metadata: model {meta.get('model_version')} seed {meta.get('seed')} psi {meta.get('psi')}"
            + (f" edit {json.dumps(meta['edit'])}" if meta.get("edit") else "")
            + (f" image {meta['image_id']}" if meta.get("image_id") else "")
        )
    else:
        parts.append("metadata: none")
    if wm["found"]:
        parts.append(f"watermark: model tag {wm['model_tag']}, image id {wm['image_id_prefix']}… (z={wm['z']})")
    else:
        parts.append(f"watermark: not found (z={wm['z']})")
    if "consistent" in rep:
        parts.append("metadata and watermark agree" if rep["consistent"] else "metadata and watermark DISAGREE")
    return "; ".join(parts)


__all__ = [
    "provenance_record",
    "encode",
    "read_metadata",
    "inspect",
    "summary_line",
    "grid_id",
    "GENERATOR",
    "METADATA_KEY",
    "WATERMARK_ID",
]
