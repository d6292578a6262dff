"""`facegen prepare SOURCE [SOURCE ...] DEST --resolution R`: raw faces -> dataset shards.

SOURCE: a folder (recursive), a .zip (local or s3://) or an s3:// prefix of jpg/png/webp
images; give several to prepare them into one version (e.g. the two UTKFace zips). DEST: a
dataset URI (local folder or s3://...), e.g. <root>/datasets/faces. Each run writes the next
version DEST/v<N> and then points DEST/manifest.json at it; nothing stored before is touched.
Unreadable, too small or duplicate images are counted in the manifest, never fatal; so are the
quality filter's rejects (low_resolution, near_constant, blurry: thresholds data.max_upscale,
data.min_contrast, data.min_sharpness; 0 turns a rule off). --report PATH writes an HTML page
with contact sheets of those rejects and the demographic mix before and after the filter.
"""

from __future__ import annotations

import argparse
import json

from facegen_ray.commands._common import add_config_args, config_from_args, option_updates
from facegen_ray.errors import UserError

# Imported where used, not here: data.pipeline (numpy, pyarrow, PIL): cli.py imports every command
# module to build the parser, which loads no numpy/torch/ray (tests/test_layers.py).


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "prepare",
        help="decode, validate, crop, resize, tag and dedupe face images into Parquet shards (Ray Data)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("sources", nargs="+", metavar="SOURCE", help="folder, .zip or s3:// prefix of images (repeatable)")
    p.add_argument("dest", metavar="DEST", help="dataset URI to write, e.g. ./facegen-data/datasets/faces")
    p.add_argument(
        "--resolution",
        "-r",
        type=int,
        default=None,
        help="output size R (power of two, 4-1024); same as --set data.resolution=R",
    )
    p.add_argument(
        "--limit",
        type=int,
        default=None,
        help="use a random subset of N image files (seeded by data.seed); same as --set data.limit=N",
    )
    p.add_argument(
        "--balance",
        choices=["none", "reweight", "resample"],
        default=None,
        help="even out race x gender groups: row weights (reweight) or oversampling (resample)",
    )
    p.add_argument(
        "--attribute-model",
        default=None,
        metavar="URI",
        help="attribute classifier (facegen_ray.models.attributes) to tag images without file-name labels",
    )
    p.add_argument(
        "--holdout-fraction",
        type=float,
        default=None,
        metavar="F",
        help="keep this fraction of faces (chosen by content hash) out of training, in a held-out split "
        "for the memorisation report (default data.holdout_fraction = 0)",
    )
    p.add_argument(
        "--report",
        default=None,
        metavar="PATH",
        help="write an HTML report of the quality filter to PATH (contact sheets of the rejected images "
        "per reason, the demographic mix before/after, disproportionately removed groups) and the "
        "contact sheets as PATH with the suffix .png",
    )
    p.add_argument("--json", action="store_true", help="also print the manifest as one JSON line")
    add_config_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from facegen_ray.data.pipeline import prepare, quality_line, summary

    sources, dest = list(args.sources), args.dest
    if not sources:
        raise UserError("prepare needs SOURCE and DEST (e.g. facegen prepare faces.zip ./facegen-data/datasets/faces)")
    updates = option_updates(
        args,
        {
            "resolution": "data.resolution",
            "limit": "data.limit",
            "balance": "data.balance",
            "holdout_fraction": "data.holdout_fraction",
        },
    )
    cfg = config_from_args(args, updates)
    result = prepare(cfg, sources, dest, attribute_model=args.attribute_model, report=args.report)
    print(f"[facegen] {summary(result)}")
    print(f"[facegen] {quality_line(result.manifest)}")
    if result.report_uri:
        print(f"[facegen] report: {result.report_uri}")
    print(f"[facegen] manifest: {result.manifest_uri} (version {result.manifest['version']}, {result.elapsed_s:.1f}s)")
    if args.json:
        print(json.dumps(result.manifest, sort_keys=True, default=str))
    return 0
