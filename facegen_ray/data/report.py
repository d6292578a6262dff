"""`facegen prepare --report PATH`: a page a person reads to check the quality filter.

PATH (local or s3://, written through Storage) gets one self-contained HTML page:
  - the run: sources, resolution, version written, the thresholds and the rule each applies;
  - reject counts per reason (every reason, the older unreadable / too_small / ... too);
  - the measured scores (percentiles of sharpness and contrast over the images measured);
  - per quality rule, a contact sheet (an embedded PNG): rejected images picked at evenly
    spaced ranks from the worst to the borderline, each captioned with its score, then the
    kept images just above the threshold, so the boundary can be judged by eye;
  - the demographic mix (age bucket, gender, race from the labels) before and after the
    filter, with the groups it removed disproportionately flagged (quality.demographic_mix).
Next to it, PATH with the suffix .png: all the contact sheets in one PNG.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from facegen_ray.data.quality import QUALITY_REASONS, SCORES

TILE = 64  # px per face on a sheet
CAPTION = 11  # px of caption above each face
COLS = 12
REJECT_COLOUR = (190, 20, 20)
KEEP_COLOUR = (20, 120, 40)


@dataclass
class Tile:
    """One face on a contact sheet: its stored image, its score and whether it was kept."""

    source: str
    image: bytes
    score: float
    kept: bool


def pick_ranks(n: int, k: int) -> list[int]:
    """k indices spread evenly over 0..n-1 (all of them when n <= k), first and last included."""
    if n <= k:
        return list(range(n))
    return sorted({int(round(x)) for x in np.linspace(0, n - 1, k)})


def _fmt(score: float) -> str:
    return f"{score:.0f}" if abs(score) >= 10 else f"{score:.1f}"


def _tile_image(data: bytes) -> Image.Image:
    img = Image.open(io.BytesIO(data)).convert("RGB")
    if img.size[0] == TILE:
        return img
    # small faces are enlarged by an integer factor without smoothing, so blur is not invented
    method = Image.Resampling.NEAREST if img.size[0] < TILE else Image.Resampling.LANCZOS
    return img.resize((TILE, TILE), method)


def contact_sheet(title: str, tiles: Sequence[Tile], cols: int = COLS) -> Image.Image:
    """A titled grid of faces, each captioned with its score (red: rejected, green: kept)."""
    head = 14
    rows = max(1, -(-len(tiles) // cols))
    width = cols * TILE + (cols - 1) * 2
    sheet = Image.new("RGB", (width, head + rows * (TILE + CAPTION + 2)), "white")
    draw = ImageDraw.Draw(sheet)
    draw.text((2, 1), title, fill=(0, 0, 0))
    if not tiles:
        draw.text((2, head + 4), "(none)", fill=(90, 90, 90))
    for i, t in enumerate(tiles):
        r, c = divmod(i, cols)
        x, y = c * (TILE + 2), head + r * (TILE + CAPTION + 2)
        draw.text((x + 1, y), _fmt(t.score), fill=KEEP_COLOUR if t.kept else REJECT_COLOUR)
        sheet.paste(_tile_image(t.image), (x, y + CAPTION))
    return sheet


def stack(images: Sequence[Image.Image], gap: int = 6) -> Image.Image:
    width = max(im.size[0] for im in images)
    out = Image.new("RGB", (width, sum(im.size[1] for im in images) + gap * (len(images) - 1)), "white")
    y = 0
    for im in images:
        out.paste(im, (0, y))
        y += im.size[1] + gap
    return out


def png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def reason_sheet(
    reason: str, rejected: Sequence[Tile], kept: Sequence[Tile], num_rejected: int, threshold: float
) -> Image.Image:
    what = SCORES[reason][1]
    parts = [
        contact_sheet(
            f"{reason}: {num_rejected} rejected ({what} < {threshold:g}); {len(rejected)} shown, worst first", rejected
        )
    ]
    if kept:
        parts.append(contact_sheet(f"{reason}: kept, just above the threshold", kept))
    return stack(parts, gap=2)


# ---------------------------------------------------------------- HTML

_CSS = """
body{font-family:system-ui,sans-serif;margin:1.5em;max-width:70em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.2em}td,th{border:1px solid #ccc;padding:.2em .5em;text-align:right}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}tr.flag td{background:#fde2e2}
.flag-note{color:#a00;font-weight:600}.ok-note{color:#176b2c}img{image-rendering:pixelated;max-width:100%}
code{background:#f3f3f3;padding:0 .2em}
"""


def _pct(x: float) -> str:
    return f"{100 * x:.2f}%"


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]], classes: Sequence[str] | None = None) -> str:
    out = ["<table><tr>" + "".join(f"<th>{html.escape(str(h))}</th>" for h in header) + "</tr>"]
    for i, r in enumerate(rows):
        cls = f' class="{classes[i]}"' if classes and classes[i] else ""
        out.append(f"<tr{cls}>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>")
    return "\n".join(out) + "</table>"


def render_html(info: dict[str, Any], sheets: dict[str, bytes]) -> str:
    """The page. info: sources, resolution, version_uri (or None), created, num_candidates,
    rejected (reason -> count), quality (the manifest's "quality" section: thresholds,
    scores, mix). sheets: reason -> PNG bytes."""
    q = info["quality"]
    mix = q["mix"]
    e = html.escape
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>facegen prepare report</title>"
        f"<style>{_CSS}</style></head><body>",
        "<h1>facegen prepare: data quality report</h1>",
        "<p>Sources: "
        + ", ".join(f"<code>{e(s)}</code>" for s in info["sources"])
        + f"<br>Resolution {info['resolution']}&times;{info['resolution']}; {info['num_candidates']} image files; "
        f"written: <code>{e(str(info.get('version_uri') or 'nothing (no usable image)'))}</code>; "
        f"{e(info['created'])}</p>",
    ]

    parts.append("<h2 id='rules'>Thresholds</h2>")
    rules = [
        (r, SCORES[r][1], f"< {q['thresholds'][r]:g}" if q["thresholds"][r] else "off", SCORES[r][2])
        for r in QUALITY_REASONS
    ]
    parts.append(_table(["reason", "score", "rejected when", "config"], rules))
    parts.append(
        f"<p>Sharpness and contrast are measured on the square crop at {q['quality_size']} px "
        f"(smaller crops at their own size); low_resolution compares the crop with "
        f"resolution / data.max_upscale = {q['min_crop']} px.</p>"
    )

    parts.append("<h2 id='rejects'>Rejects per reason</h2>")
    n = max(int(info["num_candidates"]), 1)
    parts.append(
        _table(["reason", "images", "share of files"], [(k, v, _pct(v / n)) for k, v in info["rejected"].items()])
    )

    parts.append("<h2 id='scores'>Measured scores</h2>")
    sc = q["scores"]
    keys = list(next(iter(sc.values())).keys()) if sc else []
    parts.append(_table(["score", *keys], [(name, *(f"{v:.1f}" for v in vals.values())) for name, vals in sc.items()]))

    parts.append(
        "<h2 id='sheets'>Contact sheets</h2><p>Per rule: rejected faces at evenly spaced ranks, worst "
        "first (red: score), then kept faces just above the threshold (green). Faces are shown as stored "
        "(small ones enlarged without smoothing).</p>"
    )
    for r in QUALITY_REASONS:
        if r in sheets:
            b64 = base64.b64encode(sheets[r]).decode()
            parts.append(f"<h3>{e(r)}</h3><img alt='{e(r)} contact sheet' src='data:image/png;base64,{b64}'>")
        else:
            parts.append(f"<h3>{e(r)}</h3><p>No image rejected.</p>")

    parts.append("<h2 id='mix'>Demographic mix before and after the filter</h2>")
    ov = mix["overall"]
    parts.append(
        f"<p>Before: the {ov['before']} images that decoded and passed the size and mode checks (the "
        f"filter's input); after: the {ov['after']} it kept (before de-duplication). Overall reject rate "
        f"{_pct(ov['reject_rate'])}. Rule: {e(mix['rule'])}.</p>"
    )
    if mix["flags"]:
        parts.append(
            "<p class='flag-note'>Removed disproportionately: "
            + "; ".join(
                f"{e(f['attribute'])}={e(f['name'])} ({e(f['reason'])}: {f['rejected']}/{f['before']} = "
                f"{_pct(f['reject_rate'])}, {f['times']:.1f}x the overall {_pct(f['overall_rate'])})"
                for f in mix["flags"]
            )
            + "</p>"
        )
    else:
        parts.append("<p class='ok-note'>No group removed disproportionately.</p>")
    for attr, rows in mix["attributes"].items():
        header = [
            "group",
            "before",
            "share before",
            "after",
            "share after",
            "rejected",
            "reject rate",
            *QUALITY_REASONS,
            "flag",
        ]
        body = [
            (
                f"{r['name']}" + (f" ({r['group']})" if r["name"] != r["group"] else ""),
                r["before"],
                _pct(r["share_before"]),
                r["after"],
                _pct(r["share_after"]),
                r["rejected"],
                _pct(r["reject_rate"]),
                *(r["by_reason"].get(x, 0) for x in QUALITY_REASONS),
                ", ".join(r["flagged"]) or "",
            )
            for r in rows
        ]
        parts.append(f"<h3>{e(attr)}</h3>" + _table(header, body, ["flag" if r["flagged"] else "" for r in rows]))
    parts.append("</body></html>")
    return "\n".join(parts)
