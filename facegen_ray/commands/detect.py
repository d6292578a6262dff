"""`facegen detect IMAGE...`: is this image one of ours? Reads the provenance metadata (PNG
text chunk / JPEG EXIF written by facegen) and looks for the invisible watermark; one line per
image, or one JSON object per line with --json. Exit 0 whether or not anything was found.

The watermark reads only with the key it was written with (FACEGEN_WATERMARK_KEY, default the
built-in one). Not finding anything does NOT show an image is real: metadata is easily
stripped and the mark does not survive every edit (see docs/responsible-use.md).
"""

from __future__ import annotations

import argparse
import json

from facegen_ray.commands._common import add_config_args, config_from_args
from facegen_ray.errors import UserError
from facegen_ray.storage import Storage

# Imported where used, not here: provenance (numpy, PIL): cli.py imports every command module to
# build the parser, which loads no numpy/torch/ray (tests/test_layers.py).


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "detect",
        help="read provenance metadata and the invisible watermark of images",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files (local paths or storage URIs)")
    p.add_argument("--json", action="store_true", help="one JSON object per image instead of a line of text")
    add_config_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from facegen_ray.provenance import inspect, summary_line

    cfg = config_from_args(args)
    storage = Storage(cfg.storage)
    for path in args.images:
        try:
            data = storage.read_bytes(path)
        except (OSError, FileNotFoundError) as e:
            raise UserError(f"cannot read {path}: {e}") from None
        try:
            rep = inspect(data)
        except Exception as e:  # noqa: BLE001 - Pillow raises many kinds for non-images
            rep = {"error": f"not a readable image: {e}"}
        if args.json:
            print(json.dumps({"path": path, **rep}, default=str), flush=True)
        else:
            print(f"{path}: error: {rep['error']}" if "error" in rep else summary_line(path, rep), flush=True)
    return 0
