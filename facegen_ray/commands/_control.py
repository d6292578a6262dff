"""`facegen generate --mix / --interpolate / --edit`: the style-mixing grid, interpolation and
edit strips (+ animated GIFs). The maths is models/latent.py; this module lays out the images."""

from __future__ import annotations

import argparse
import io
import re
from typing import Any

import numpy as np
from PIL import Image

from facegen_ray.errors import UserError
from facegen_ray.models.latent import (
    MAX_EDIT_STRENGTH,
    Control,
    ControlError,
    check_mixing,
    control_ws,
    mix_ws,
    seed_ws,
    synthesize,
)
from facegen_ray.provenance import gif_comment, output_id, provenance_record
from facegen_ray.serve.generation import encode_image, load_model, make_grid, parse_seeds
from facegen_ray.storage import Storage

_NUM = r"([+-]?(?:\d+(?:\.\d*)?|\.\d+))"
_EDIT_RE = re.compile(r"^\s*([a-z_]+)\s*=\s*" + _NUM + r"\s*(?:\.\.\s*" + _NUM + r")?\s*$")


def parse_edit(specs: list[str]) -> dict[str, tuple[float, float]]:
    """["age=-2..2", "gender=1"] -> {"age": (-2, 2), "gender": (1, 1)}."""
    out: dict[str, tuple[float, float]] = {}
    for spec in specs:
        m = _EDIT_RE.match(spec)
        try:
            a = float(m.group(2)) if m else None
            b = float(m.group(3)) if m and m.group(3) is not None else a
        except ValueError:
            a = b = None
        if m is None or a is None or b is None:
            raise UserError(f"cannot parse --edit {spec!r}: write NAME=A..B (e.g. age=-2..2) or NAME=S")
        name = m.group(1)
        if name in out:
            raise UserError(f"--edit names {name!r} twice")
        if max(abs(a), abs(b)) > MAX_EDIT_STRENGTH:
            raise UserError(
                f"--edit {spec!r}: strengths must be within [-{MAX_EDIT_STRENGTH:g}, {MAX_EDIT_STRENGTH:g}]"
            )
        out[name] = (a, b)
    return out


def gif_bytes(frames: list[np.ndarray], frame_ms: int, comment: bytes | None = None) -> bytes:
    """uint8 [H,W,3] frames -> an animated GIF that loops (Pillow's GIF writer), with `comment`
    (the provenance JSON) in its comment extension."""
    ims = [Image.fromarray(np.ascontiguousarray(f), mode="RGB") for f in frames]
    buf = io.BytesIO()
    extra = {"comment": comment} if comment else {}
    ims[0].save(
        buf,
        format="GIF",
        save_all=True,
        append_images=ims[1:],
        duration=int(frame_ms),
        loop=0,
        optimize=False,
        disposal=1,
        **extra,
    )
    return buf.getvalue()


def mixing_grid(
    G, row_seeds: list[int], col_seeds: list[int], crossover: int, psi: float, batch_size: int
) -> np.ndarray:
    """uint8 [R+1, C+1, H, W, 3]: [0, 0] blank, [0, 1+c] column faces, [1+r, 0] row faces,
    [1+r, 1+c] row face r's layers < crossover with column face c's layers >= crossover."""
    rows = seed_ws(G, row_seeds, psi)  # [R,L,D]
    cols = seed_ws(G, col_seeds, psi)  # [C,L,D]
    mixed = [mix_ws(rows, cols[c : c + 1], crossover) for c in range(len(col_seeds))]  # C x [R,L,D]
    imgs_r = synthesize(G, rows, batch_size)
    imgs_c = synthesize(G, cols, batch_size)
    h, w = imgs_r.shape[1:3]
    grid = np.zeros((len(row_seeds) + 1, len(col_seeds) + 1, h, w, 3), np.uint8)
    grid[0, 1:] = imgs_c
    grid[1:, 0] = imgs_r
    for c, ws in enumerate(mixed):
        grid[1:, 1 + c] = synthesize(G, ws, batch_size)
    return grid


def _tiles(cells: np.ndarray) -> np.ndarray:
    """uint8 [R,C,H,W,3] -> [R*C,H,W,3] in row order (for make_grid with cols=C)."""
    r, c = cells.shape[:2]
    return cells.reshape(r * c, *cells.shape[2:])


def run(args: argparse.Namespace, cfg, psi: float, out: str, fmt: str, mode: str) -> int:
    storage = Storage(cfg.storage)
    model = load_model(storage, args.model, cfg.storage.root, device=args.device)
    G = model.G
    gif = None
    control: dict[str, Any] = {"mode": mode}
    if mode == "mix":
        row_seeds, col_seeds = parse_seeds(args.mix[0], 64), parse_seeds(args.mix[1], 64)
        crossover = args.crossover if args.crossover is not None else G.num_ws // 2
        check_mixing(model.cfg.style_mixing_prob)
        control.update(rows=row_seeds, cols=col_seeds, crossover=int(crossover))
        cells = mixing_grid(G, row_seeds, col_seeds, crossover, psi, args.batch_size)
        image = make_grid(_tiles(cells), cols=cells.shape[1])
        what = (
            f"style-mixing grid {len(row_seeds)}x{len(col_seeds)} (crossover {crossover} of {G.num_ws} "
            f"w layers; top row: column faces, left column: row faces)"
        )
    else:
        steps = args.steps if args.steps is not None else (8 if mode == "interpolate" else 5)
        if not 2 <= steps <= 64:
            raise UserError("--steps must be between 2 and 64")
        ts = [i / (steps - 1) for i in range(steps)]
        if mode == "interpolate":
            a, b = args.interpolate
            ctls = [Control(interp_seed=b, t=t, space=args.space) for t in ts]
            seeds = [a]
            control.update(seed_b=int(b), space=args.space, steps=steps)
            what = f"interpolation {a} -> {b} in {args.space.upper()}, {steps} steps"
        else:
            edit = parse_edit(args.edit)
            seeds = parse_seeds(args.seeds, 64)
            if model.directions is None:
                raise ControlError(
                    model.directions_error
                    or (
                        f"model {model.version} has no attribute directions: run `facegen directions "
                        f"{args.model} --attribute-model URI` first"
                    )
                )
            ctls = [Control(edit={k: round(lo + (hi - lo) * t, 4) for k, (lo, hi) in edit.items()}) for t in ts]
            control.update(edit={k: [lo, hi] for k, (lo, hi) in edit.items()}, steps=steps)
            what = f"edit {', '.join(args.edit)} of {len(seeds)} face(s), {steps} steps"
        frames = [
            synthesize(G, control_ws(G, seeds, psi, None, ctl, model.directions), args.batch_size) for ctl in ctls
        ]  # steps x [S,H,W,3]
        cells = np.stack(frames, axis=1)  # [S, steps, H, W, 3]: one strip per seed
        image = make_grid(_tiles(cells), cols=steps)
    # provenance, as on every image facegen writes: synthetic, model, seeds, psi, the control
    seed_list = [*row_seeds, *col_seeds] if mode == "mix" else list(seeds)
    prov = provenance_record(
        model.version,
        output_id(model.version, model.digest, {**control, "seeds": seed_list, "psi": psi}),
        seed_list,
        psi,
        control,
    )
    if mode != "mix":
        gif_frames = [make_grid(f, cols=max(1, int(np.ceil(np.sqrt(len(f)))))) for f in frames]
        gif = args.gif or (out.rsplit(".", 1)[0] + ".gif")
        storage.write_bytes(gif, gif_bytes(gif_frames, args.frame_ms, gif_comment(prov)))
    storage.write_bytes(out, encode_image(image, fmt, provenance=prov))
    print(
        f"[facegen] wrote {out}" + (f" and {gif}" if gif else "") + f": {what} "
        f"({image.shape[1]}x{image.shape[0]}px, psi={psi}) from model {model.version} ({model.uri})"
    )
    return 0
