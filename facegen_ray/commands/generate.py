"""`facegen generate MODEL --seeds 0-15 [--truncation 0.7] --out grid.png`: a grid of faces.

MODEL is a model directory URI or a registry version (serving / latest / vN). Seeds: "0-15",
"1,5,9" or a mix ("0-3,10"); each seed always gives the same face for the same model and psi
(constant noise). The grid is written through storage, so --out may be an s3:// URI.

Control (one mode at a time; see models/latent.py):
  --mix ROW_SEEDS COL_SEEDS [--crossover K]   style-mixing grid: cell (r, c) has row face r's
      styles for w layers [0, K) (coarse) and column face c's for [K, num_ws) (fine); the top
      row shows the column faces, the left column the row faces (StyleGAN's figure 3).
  --interpolate SEED_A SEED_B --steps N [--space w|z]   N faces from A to B (W: linear, Z:
      slerp) as a strip (--out) and an animated GIF (--gif, default: --out with .gif).
  --edit NAME=A..B [--edit NAME=S ...] --steps N   for every --seeds face, N steps of the
      attribute edit from A to B (strengths in units of the direction's margin_scale, |s| <= 5;
      a single value is held): a strip per seed (--out) and a GIF of the steps (--gif).
      Needs MODEL/directions.json (`facegen directions`).
"""

from __future__ import annotations

import argparse

from facegen_ray.commands._common import add_config_args, config_from_args
from facegen_ray.errors import UserError
from facegen_ray.storage import Storage

# Imported where used, not here: serve.generation, commands._control (torch), provenance (numpy):
# cli.py imports every command module to build the parser, which loads no numpy/torch/ray
# (tests/test_layers.py).


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "generate",
        help="render a grid of faces for a list of seeds",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("model", metavar="MODEL", help="model directory URI or registry version")
    p.add_argument("--seeds", default="0-15", help='seeds, e.g. "0-15" or "1,5,9" (default 0-15)')
    p.add_argument(
        "--truncation",
        "-t",
        type=float,
        default=None,
        help="truncation psi in [0,1] (default serve.default_truncation)",
    )
    p.add_argument("--out", "-o", required=True, help="output image (.png or .jpg), local path or s3://")
    p.add_argument("--cols", type=int, default=None, help="grid columns (default: square)")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument("--batch-size", type=int, default=16, help="images per forward pass")
    p.add_argument(
        "--mix",
        nargs=2,
        metavar=("ROW_SEEDS", "COL_SEEDS"),
        default=None,
        help="style-mixing grid: row faces' coarse styles x column faces' fine styles",
    )
    p.add_argument(
        "--crossover",
        type=int,
        default=None,
        help="first w layer taken from the column face (1..num_ws-1; default num_ws/2)",
    )
    p.add_argument(
        "--interpolate",
        nargs=2,
        type=int,
        metavar=("SEED_A", "SEED_B"),
        default=None,
        help="interpolate from SEED_A to SEED_B (strip + GIF)",
    )
    p.add_argument("--space", choices=("w", "z"), default="w", help="interpolation space: w (linear) or z (slerp)")
    p.add_argument(
        "--edit",
        action="append",
        default=None,
        metavar="NAME=A..B",
        help="attribute edit, e.g. age=-2..2 or gender=1 (repeatable); needs directions.json",
    )
    p.add_argument("--steps", type=int, default=None, help="frames of --interpolate / --edit (default 8 / 5)")
    p.add_argument("--gif", default=None, help="animated GIF of --interpolate / --edit (default: --out with .gif)")
    p.add_argument("--frame-ms", type=int, default=120, help="GIF frame duration in ms")
    add_config_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from facegen_ray.serve.generation import encode_image, generate, load_model, make_grid, parse_seeds

    cfg = config_from_args(args)
    psi = cfg.serve.default_truncation if args.truncation is None else args.truncation
    if not 0.0 <= psi <= 1.0:
        raise UserError(f"--truncation must be between 0 and 1, got {psi}")
    if args.cols is not None and args.cols < 1:
        raise UserError("--cols must be >= 1")
    if args.batch_size < 1:
        raise UserError("--batch-size must be >= 1")
    out = args.out
    ext = out.rsplit(".", 1)[-1].lower() if "." in out.rsplit("/", 1)[-1] else ""
    fmt = {"png": "png", "jpg": "jpeg", "jpeg": "jpeg"}.get(ext)
    if fmt is None:
        raise UserError(f"--out must end in .png, .jpg or .jpeg, got {out!r}")
    modes = [m for m in ("mix", "interpolate", "edit") if getattr(args, m)]
    if len(modes) > 1:
        raise UserError(f"--{modes[0]} and --{modes[1]} cannot be combined; use one control per run")
    if args.crossover is not None and not args.mix:
        raise UserError("--crossover goes with --mix ROW_SEEDS COL_SEEDS")
    if modes:
        from facegen_ray.commands import _control

        return _control.run(args, cfg, psi, out, fmt, modes[0])
    seeds = parse_seeds(args.seeds)
    storage = Storage(cfg.storage)
    model = load_model(storage, args.model, cfg.storage.root, device=args.device)
    images = generate(model.G, seeds, psi, None, args.device, args.batch_size)  # uint8 [N,H,W,3]
    grid = make_grid(images, cols=args.cols)
    from facegen_ray.provenance import grid_id, provenance_record

    prov = provenance_record(model.version, grid_id(model.version, model.digest, seeds, psi), seeds, psi)
    storage.write_bytes(out, encode_image(grid, fmt, provenance=prov))
    print(
        f"[facegen] wrote {out}: {len(seeds)} faces ({images.shape[1]}px, psi={psi}) "
        f"from model {model.version} ({model.uri})"
    )
    return 0
