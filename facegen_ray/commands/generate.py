"""`facegen generate MODEL --seeds 0-15 [--truncation 0.7] --out grid.png`: a grid of faces.

MODEL is a model directory URI or a registry version (serving / latest / vN). Seeds: "0-15",
"1,5,9" or a mix ("0-3,10"); each seed always gives the same face for the same model and psi
(constant noise). The grid is written through storage, so --out may be an s3:// URI.
"""

from __future__ import annotations

import argparse

from facegen_ray.commands._common import add_config_args, config_from_args
from facegen_ray.errors import UserError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("generate", help="render a grid of faces for a list of seeds",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", metavar="MODEL", help="model directory URI or registry version")
    p.add_argument("--seeds", default="0-15", help='seeds, e.g. "0-15" or "1,5,9" (default 0-15)')
    p.add_argument("--truncation", "-t", type=float, default=None, help="truncation psi in [0,1] (default serve.default_truncation)")
    p.add_argument("--out", "-o", required=True, help="output image (.png or .jpg), local path or s3://")
    p.add_argument("--cols", type=int, default=None, help="grid columns (default: square)")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument("--batch-size", type=int, default=16, help="images per forward pass")
    add_config_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from facegen_ray.serve.generation import encode_image, generate, load_model, make_grid, parse_seeds
    from facegen_ray.storage import Storage

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
    seeds = parse_seeds(args.seeds)
    storage = Storage(cfg.storage)
    model = load_model(storage, args.model, cfg.storage.root, device=args.device)
    images = generate(model.G, seeds, psi, None, args.device, args.batch_size)  # uint8 [N,H,W,3]
    grid = make_grid(images, cols=args.cols)
    from facegen_ray.provenance import grid_id, provenance_record

    prov = provenance_record(model.version, grid_id(model.version, model.digest, seeds, psi), seeds, psi)
    storage.write_bytes(out, encode_image(grid, fmt, provenance=prov))
    print(f"[facegen] wrote {out}: {len(seeds)} faces ({images.shape[1]}px, psi={psi}) "
          f"from model {model.version} ({model.uri})")
    return 0
