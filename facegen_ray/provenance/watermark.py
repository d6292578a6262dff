"""An invisible watermark for generated faces: a few bytes (model tag + image-id tag + CRC-16)
hidden in the luminance with spread-transform dither modulation (STDM), numpy only.

Why our own: `invisible-watermark` (imwatermark) installs here (it pulls opencv-python and
PyWavelets), but its encoder refuses images under 256x256 and our faces are 16-256 px.

How it works (all keyed by `key`, so only a holder of the key reads or writes the mark):
- The image's luminance is folded with period T=32 px: F[a,b] = mean of Y[i,j] over i%T=a,
  j%T=b (every tile copy, partial ones too). The mark is a T x T tile added to every copy, so
  a crop (any offset) only shifts the folded tile cyclically.
- L=48 orthonormal keyed patterns, periodic in T and band-limited to 2..7 cycles per tile
  (0.06-0.22 cycles/px: below the Nyquist limit of a 0.5x resize and in the low DCT indices
  that JPEG keeps). Bit i sets the projection <F, P_i> onto the lattice
  DELTA*Z + d_i + bit*DELTA/2 (d_i a keyed dither); the change is spread over the pattern, so
  the distortion (about DELTA/sqrt(12) per bit, ~2 grey levels RMS) does not depend on the face.
- Detection: for each scale hypothesis (1x, 2x: undoes a 0.5x resize), all T*T cyclic shifts
  at once by FFT cross-correlation; a sync score sum_i cos(4 pi (y_i - d_i)/DELTA) (~N(0, L/2)
  for an unmarked image, ~L for a marked one) picks the alignment; then the bits are read and
  the CRC-16 must match. Found = z-score >= Z_MIN and CRC ok.

Not guaranteed: robustness to rotation, large rescaling other than 1x/0.5x, heavy blur or
recompression below JPEG quality ~50, deliberate removal by someone with the key, or images
smaller than T px (those are not marked: `embed` returns them unchanged with marked=False).
The key is public in the source (DEFAULT_KEY) unless FACEGEN_WATERMARK_KEY is set, so anyone
can read, strip or forge the mark: it labels honest output, it does not prove provenance.
"""

from __future__ import annotations

import binascii
import hashlib
import os
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
from PIL import Image

DEFAULT_KEY = "facegen-ray/watermark/v1"
TILE = 32  # period of the mark, px
BAND = (3.0, 5.0)  # radial frequency band, cycles per tile
PAYLOAD_BYTES = 4  # model tag (2 bytes) + image-id tag (2 bytes)
NBITS = (PAYLOAD_BYTES + 2) * 8  # + CRC-16
DELTA = 56.0  # STDM quantiser step on the projections (strength)
Z_MIN = 6.0  # sync z-score needed before the CRC is checked
SCALES = (1.0, 2.0)  # detector's scale hypotheses (2.0 undoes a 0.5x resize)
SEARCH = 0.1  # detector looks for the window within +-10% of the size around the centre
GAINS = (1.0, 0.9, 0.8, 0.7, 0.6)  # detector's gain hypotheses (resizing attenuates the band)
_LUMA = np.array([0.299, 0.587, 0.114])


def watermark_key() -> str:
    return os.environ.get("FACEGEN_WATERMARK_KEY") or DEFAULT_KEY


@lru_cache(maxsize=4)
def _patterns(key: str) -> tuple[np.ndarray, np.ndarray]:
    """(P [T*T, NBITS] orthonormal columns, periodic in T and band-limited; dither [NBITS] in [0, DELTA))."""
    seed = int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "little")
    rng = np.random.default_rng(seed)
    k = np.fft.fftfreq(TILE) * TILE  # cycles per tile
    r = np.hypot(k[:, None], k[None, :])
    band = (r >= BAND[0]) & (r <= BAND[1])
    cols = []
    for _ in range(NBITS):
        spec = (rng.standard_normal((TILE, TILE)) + 1j * rng.standard_normal((TILE, TILE))) * band
        cols.append(np.real(np.fft.ifft2(spec)).ravel())
    q, _ = np.linalg.qr(np.stack(cols, 1))  # orthonormal, still in the band (span of band signals)
    dither = rng.uniform(0.0, DELTA, NBITS)
    return q, dither


def payload_bytes(model_version: str, image_id: str) -> bytes:
    """2 bytes of sha256(model version) + the first 2 bytes of the image id (hex)."""
    tag = hashlib.sha256(str(model_version).encode("utf-8")).digest()[:2]
    try:
        iid = bytes.fromhex(str(image_id)[:4])
    except ValueError:
        iid = hashlib.sha256(str(image_id).encode("utf-8")).digest()[:2]
    return tag + iid.ljust(2, b"\0")


def model_tag(model_version: str) -> str:
    return hashlib.sha256(str(model_version).encode("utf-8")).hexdigest()[:4]


def _bits(payload: bytes) -> np.ndarray:
    crc = binascii.crc_hqx(payload, 0xFFFF).to_bytes(2, "big")
    return np.unpackbits(np.frombuffer(payload + crc, np.uint8)).astype(np.int64)


def _luma(img: np.ndarray) -> np.ndarray:
    return img[..., :3].astype(np.float64) @ _LUMA


def _lattice_target(y: np.ndarray, bits: np.ndarray, dither: np.ndarray) -> np.ndarray:
    off = dither + bits * (DELTA / 2)
    return np.round((y - off) / DELTA) * DELTA + off


def _window(h: int, w: int) -> tuple[int, int]:
    """Top-left corner of the marked T x T window: the centre of the image (a crop of up to
    (size - T)/2 px from any side keeps it whole)."""
    return (h - TILE) // 2, (w - TILE) // 2


def embed(img: np.ndarray, model_version: str, image_id: str, key: str | None = None) -> tuple[np.ndarray, bool]:
    """uint8 [H,W,3] -> (marked uint8 [H,W,3], marked?). Deterministic for the same input.
    Images smaller than the tile (T px) come back unchanged with False."""
    h, w = img.shape[:2]
    if min(h, w) < TILE:
        return img, False
    P, dither = _patterns(key or watermark_key())
    bits = _bits(payload_bytes(model_version, image_id))
    u, v = _window(h, w)
    # only the T x T window changes: the float work stays inside it (at 256 x 256 a
    # whole-image float copy + clip per pass was most of the cost), the rest is one uint8 copy
    base = img[u : u + TILE, v : v + TILE].astype(np.float64)
    delta = np.zeros((TILE, TILE))
    win = img[u : u + TILE, v : v + TILE]
    for _ in range(4):  # re-measure after rounding/clipping and correct what they undid
        y = P.T @ _luma(win).ravel()
        err = _lattice_target(y, bits, dither) - y
        if np.max(np.abs(err)) < DELTA / 16:
            break
        delta += (P @ err).reshape(TILE, TILE)
        win = np.clip(np.rint(base + delta[..., None]), 0, 255).astype(np.uint8)
    if np.shares_memory(win, img):
        return img, True  # already on the lattice: unchanged (as before, the input itself)
    out = img.copy()
    out[u : u + TILE, v : v + TILE] = win
    return out, True


@dataclass
class Detection:
    found: bool
    z: float  # sync z-score of the best alignment
    crc_ok: bool
    model_tag: str | None  # 4 hex chars (sha256 of the model version) when found
    image_id_prefix: str | None  # 4 hex chars when found
    scale: float | None = None
    gain: float | None = None
    at: tuple[int, int] | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "found": self.found,
            "z": round(self.z, 2),
            "crc_ok": self.crc_ok,
            "model_tag": self.model_tag,
            "image_id_prefix": self.image_id_prefix,
            "scale": self.scale,
            "gain": self.gain,
            "at": list(self.at) if self.at else None,
        }


def _resize(y: np.ndarray, f: float) -> np.ndarray:
    if f == 1.0:
        return y

    h, w = y.shape
    im = Image.fromarray(y.astype(np.float32), mode="F")
    return np.asarray(im.resize((max(1, round(w * f)), max(1, round(h * f))), Image.LANCZOS), np.float64)


def _sliding_projections(y: np.ndarray, P: np.ndarray) -> np.ndarray:
    """[H,W] -> [NBITS, H-T+1, W-T+1]: <window at (u,v), P_i> for every window, by FFT."""
    h, w = y.shape
    sh = (h + TILE, w + TILE)
    fy = np.fft.rfft2(y, sh)
    fp = np.fft.rfft2(P.T.reshape(NBITS, TILE, TILE)[:, ::-1, ::-1], sh)
    full = np.fft.irfft2(fy[None] * fp, sh)
    return full[:, TILE - 1 : h, TILE - 1 : w]


def detect(img: np.ndarray, key: str | None = None, *, candidates: int = 3) -> Detection:
    """Look for the mark in uint8 [H,W,3] (any size); see the module docstring."""
    P, dither = _patterns(key or watermark_key())
    y0 = _luma(img)
    best: list[tuple[float, float, float, int, int, np.ndarray]] = []
    for f in SCALES:
        y = _resize(y0, f)
        if min(y.shape) < TILE:
            continue
        proj = _sliding_projections(y, P)
        # the window sits near the centre: a crop of up to SEARCH of the size moves it by less
        (u0, v0), r = _window(*y.shape), int(np.ceil(SEARCH * max(y.shape))) + 1
        us, vs = max(0, u0 - r), max(0, v0 - r)
        proj = proj[:, us : u0 + r + 1, vs : v0 + r + 1]
        for g in GAINS:
            score = np.cos(4 * np.pi * (proj / g - dither[:, None, None]) / DELTA).sum(0) / np.sqrt(NBITS / 2)
            for flat in np.argsort(score.ravel())[::-1][:candidates]:
                u, v = divmod(int(flat), score.shape[1])
                best.append((float(score[u, v]), f, g, us + u, vs + v, proj[:, u, v] / g))
    if not best:
        return Detection(False, 0.0, False, None, None)
    best.sort(key=lambda b: -b[0])
    for z, f, g, u, v, y in best[:candidates]:
        if z < Z_MIN:
            break
        bits = (np.round((y - dither) / (DELTA / 2)).astype(np.int64)) % 2
        data = np.packbits(bits.astype(np.uint8)).tobytes()
        payload, crc = data[:PAYLOAD_BYTES], data[PAYLOAD_BYTES:]
        if binascii.crc_hqx(payload, 0xFFFF).to_bytes(2, "big") == crc:
            return Detection(True, z, True, payload[:2].hex(), payload[2:].hex(), f, g, (u, v))
    z, f, g, u, v, _ = best[0]
    return Detection(False, z, False, None, None, f, g, (u, v))


__all__ = ["embed", "detect", "Detection", "payload_bytes", "model_tag", "watermark_key", "TILE", "DEFAULT_KEY"]
