"""Per-image work of `facegen prepare`: decode, validate, centre-crop, resize, encode, hash.

`process_image` handles one file's bytes and either returns the training-ready image or the
reason it was rejected; `process_batch` is the Ray Data UDF that maps it over a batch of
(source, bytes) rows. Nothing here raises for a bad file: it becomes a reject reason.

Reject reasons (the keys of the manifest's `rejected`):
  unreadable        empty, truncated, corrupt, not an image, or a decompression bomb
  too_small         shorter side < data.min_size
  unsupported_mode  pixel data that has no faithful 8-bit RGB form (float or 32-bit ints, ...)
  low_resolution    the quality filter (quality.py, thresholds in data.*): face too small
  near_constant       after the crop, a blank frame, a blurry image. These rows keep their
  blurry              encoded image (never written to a shard) so `prepare --report` can show them
  duplicate         same content hash as an earlier row (decided globally, in pipeline.py)

Content hash: sha256 of the final RGB pixels (uint8 [R,R,3], row-major) at the dataset
resolution, not of the source bytes: the same face stored as .jpg and .png, or with different
metadata, is one image for training, and the hash is what the stored row actually holds.
"""

from __future__ import annotations

import hashlib
import io
import warnings
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
from PIL import Image, ImageFile, ImageOps

from facegen_ray.data.attributes import parse_utkface_name
from facegen_ray.data.quality import QUALITY_REASONS, Measures, QualityRules, judge, measure

REJECT_REASONS = ("unreadable", "too_small", "unsupported_mode", *QUALITY_REASONS, "duplicate")

# 8-bit modes Pillow converts to RGB faithfully; 16-bit greyscale is scaled down by hand.
_RGB_CONVERTIBLE = {"1", "L", "P", "RGB", "RGBX", "CMYK", "YCbCr", "LAB", "HSV"}
_WITH_ALPHA = {"LA", "La", "PA", "RGBA", "RGBa"}
_SIXTEEN_BIT_GREY = {"I;16", "I;16L", "I;16B", "I;16N"}

ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated file is unreadable, not half-grey


class Rejected(Exception):
    """A file that cannot become a training image; `reason` is one of REJECT_REASONS."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


@dataclass
class Processed:
    """One decoded image: encoded bytes at the dataset resolution and its pixel hash, with the
    quality filter's measurements and verdict (None: kept) when it ran."""

    image: bytes
    sha256: str
    upscaled: bool  # the square crop was smaller than the resolution
    measures: Measures | None = None
    quality_reject: str | None = None  # one of quality.QUALITY_REASONS


def decode_rgb(data: bytes, min_size: int = 1) -> Image.Image:
    """Bytes -> fully decoded RGB image (EXIF orientation applied). Raises Rejected."""
    if not data:
        raise Rejected("unreadable", "empty file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as probe:
                probe.verify()  # structure / checksums, without decoding pixels
            img = Image.open(io.BytesIO(data))
            img.load()  # verify() does not decode: truncated pixel data shows up here
    except Exception as e:  # noqa: BLE001 - Pillow raises many types for bad input
        raise Rejected("unreadable", f"{type(e).__name__}: {e}") from None
    w, h = img.size
    if min(w, h) < min_size:
        raise Rejected("too_small", f"{w}x{h} < {min_size}")
    try:
        img = ImageOps.exif_transpose(img)
    except Exception:  # noqa: BLE001 - a broken EXIF block is not worth rejecting the face
        pass
    return to_rgb(img)


def to_rgb(img: Image.Image) -> Image.Image:
    """Any supported mode -> RGB; alpha is composited onto white. Raises Rejected."""
    mode = img.mode
    try:
        if mode == "RGB":
            return img
        if mode in _RGB_CONVERTIBLE:
            return img.convert("RGB")
        if mode in _WITH_ALPHA or (mode == "P" and "transparency" in img.info):
            rgba = img.convert("RGBA")
            bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            return Image.alpha_composite(bg, rgba).convert("RGB")
        if mode in _SIXTEEN_BIT_GREY:
            arr = np.asarray(img, dtype=np.uint16)
            return Image.fromarray((arr >> 8).astype(np.uint8), "L").convert("RGB")
    except Exception as e:  # noqa: BLE001
        raise Rejected("unsupported_mode", f"{mode}: {e}") from None
    raise Rejected("unsupported_mode", f"mode {mode} has no faithful 8-bit RGB form")


def center_crop_square(img: Image.Image) -> Image.Image:
    """The largest centred square of an image."""
    w, h = img.size
    s = min(w, h)
    left, top = (w - s) // 2, (h - s) // 2
    return img if (w == h) else img.crop((left, top, left + s, top + s))


def resize_square(img: Image.Image, resolution: int) -> Image.Image:
    """Square image -> resolution x resolution with Lanczos (antialiased when shrinking)."""
    if img.size == (resolution, resolution):
        return img
    return img.resize((resolution, resolution), Image.Resampling.LANCZOS)


def pixel_sha256(arr: np.ndarray) -> str:
    """Content hash of an RGB image: sha256 of its uint8 [H,W,3] pixels (row-major)."""
    return hashlib.sha256(np.ascontiguousarray(arr, dtype=np.uint8).tobytes()).hexdigest()


def encode_image(
    img: Image.Image, image_format: str = "png", jpeg_quality: int = 95, png_compress_level: int = 1
) -> bytes:
    """RGB image -> PNG (lossless, default) or JPEG bytes."""
    buf = io.BytesIO()
    if image_format == "png":
        img.save(buf, format="PNG", compress_level=png_compress_level)
    elif image_format == "jpeg":
        img.save(buf, format="JPEG", quality=jpeg_quality, subsampling=0)
    else:
        raise ValueError(f"unknown image format {image_format!r}")
    return buf.getvalue()


def process_image(
    data: bytes,
    *,
    resolution: int,
    min_size: int,
    image_format: str = "png",
    jpeg_quality: int = 95,
    png_compress_level: int = 1,
    quality: QualityRules | None = None,
) -> Processed:
    """Source bytes -> Processed (decode, validate, centre-crop, resize, encode, hash).
    Raises Rejected with the reason. With `quality`, the crop is also measured and judged
    (Processed.quality_reject); the image is still encoded, for the report's contact sheets."""
    crop = center_crop_square(decode_rgb(data, min_size))
    measures = verdict = None
    if quality is not None:
        measures = measure(crop, quality.quality_size)
        verdict = judge(measures, quality)
    upscaled = crop.size[0] < resolution
    img = resize_square(crop, resolution)
    arr = np.asarray(img, dtype=np.uint8)  # [R,R,3]
    if image_format == "jpeg":
        # the stored pixels are what the JPEG decodes to; hash those, not the pre-encode ones
        enc = encode_image(img, "jpeg", jpeg_quality)
        arr = np.asarray(Image.open(io.BytesIO(enc)).convert("RGB"), dtype=np.uint8)
        return Processed(enc, pixel_sha256(arr), upscaled, measures, verdict)
    return Processed(
        encode_image(img, "png", png_compress_level=png_compress_level), pixel_sha256(arr), upscaled, measures, verdict
    )


def process_batch(
    batch,
    *,
    resolution: int,
    min_size: int,
    image_format: str = "png",
    jpeg_quality: int = 95,
    png_compress_level: int = 1,
    quality: QualityRules | None = None,
):
    """Ray Data UDF (pyarrow batches): rows (source, bytes) -> one output row per input.

    Output columns (PROCESSED_SCHEMA): source, image (binary | null), sha256 (str | null),
    reject (reason | null), upscaled (bool), age, gender, race (int64 | null, from the file
    name), label_source ("filename" | null), nbytes (encoded size), crop (side of the square
    crop, px), contrast, sharpness (quality.py's measures; null when not measured). Rejected
    files keep their row so the driver can count them (image null, except for the quality
    filter's rejects, which keep it for the report); pipeline.py filters them out.
    """
    kw = dict(
        resolution=resolution,
        min_size=min_size,
        image_format=image_format,
        jpeg_quality=jpeg_quality,
        png_compress_level=png_compress_level,
        quality=quality,
    )
    sources = batch.column("source").to_pylist()
    blobs = batch.column("bytes").to_pylist()
    out: dict[str, list] = {f.name: [] for f in PROCESSED_SCHEMA}
    for src, data in zip(sources, blobs):
        m = None
        try:
            p = process_image(data or b"", **kw)
            image, sha, reject, up, m = p.image, p.sha256, p.quality_reject, p.upscaled, p.measures
        except Rejected as r:
            image, sha, reject, up = None, None, r.reason, False
        except Exception:  # noqa: BLE001 - never let one file stop the run
            image, sha, reject, up = None, None, "unreadable", False
        # labels of the quality filter's rejects too: the report compares the groups it removed
        labels = parse_utkface_name(src) if image is not None else None
        out["source"].append(src)
        out["image"].append(image)
        out["sha256"].append(sha)
        out["reject"].append(reject)
        out["upscaled"].append(up)
        out["age"].append(labels.age if labels else None)
        out["gender"].append(labels.gender if labels else None)
        out["race"].append(labels.race if labels else None)
        out["label_source"].append("filename" if labels else None)
        out["nbytes"].append(len(image) if image is not None else 0)
        out["crop"].append(m.crop if m else None)
        out["contrast"].append(m.contrast if m else None)
        out["sharpness"].append(m.sharpness if m else None)
    return pa.table(out, schema=PROCESSED_SCHEMA)


def _processed_schema():
    return pa.schema(
        [
            ("source", pa.string()),
            ("image", pa.binary()),
            ("sha256", pa.string()),
            ("reject", pa.string()),
            ("upscaled", pa.bool_()),
            ("age", pa.int64()),
            ("gender", pa.int64()),
            ("race", pa.int64()),
            ("label_source", pa.string()),
            ("nbytes", pa.int64()),
            ("crop", pa.int64()),
            ("contrast", pa.float64()),
            ("sharpness", pa.float64()),
        ]
    )


PROCESSED_SCHEMA = _processed_schema()
