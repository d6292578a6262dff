"""`facegen attributes train --data URI --out URI`: train the small attribute classifier
(age bucket, gender, race) on a dataset's labelled images; it tags unlabelled images in
`facegen prepare --attribute-model URI` and measures the demographic mix in `facegen evaluate
--metrics diversity --attribute-model URI`. Prints its held-out accuracy per head as JSON.
"""

from __future__ import annotations

import argparse
import json

from facegen_ray.commands._common import add_action_parsers, add_config_args, config_from_args
from facegen_ray.errors import UserError
from facegen_ray.storage import Storage

# Imported where used, not here: data.attributes, models.attributes (numpy, torch): cli.py imports
# every command module to build the parser, which loads no numpy/torch/ray (tests/test_layers.py).


def register(sub: argparse._SubParsersAction) -> None:
    asub = add_action_parsers(
        sub, "attributes", "attribute classifier (age bucket, gender, race) for tagging and diversity", __doc__
    )
    t = asub.add_parser("train", help="train on the labelled images of a dataset and save to --out")
    t.add_argument("--data", required=True, metavar="URI", help="dataset URI (DEST of prepare, or DEST/v<N>)")
    t.add_argument("--out", required=True, metavar="URI", help="folder to write attributes.pt + attributes.json")
    t.add_argument("--epochs", type=int, default=10)
    t.add_argument("--resolution", type=int, default=32, help="classifier input size (images are resized)")
    t.add_argument("--batch-size", type=int, default=64)
    t.add_argument("--lr", type=float, default=2e-3)
    t.add_argument("--width", type=int, default=32, help="channels of the first conv")
    add_config_args(t)
    t.set_defaults(func=run_train)


def run_train(args: argparse.Namespace) -> int:
    from facegen_ray.data.attributes import read_labelled
    from facegen_ray.models.attributes import save_classifier, train_attribute_classifier

    if args.epochs < 1 or args.resolution < 4 or args.batch_size < 2 or args.width < 1:
        raise UserError("--epochs >= 1, --resolution >= 4, --batch-size >= 2 and --width >= 1 are required")
    cfg = config_from_args(args)
    storage = Storage(cfg.storage)
    data = read_labelled(storage, args.data, cfg.model.age_buckets)
    model, meta = train_attribute_classifier(
        data,
        cfg.model.age_buckets,
        resolution=args.resolution,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        width=args.width,
        seed=cfg.data.seed,
    )
    meta["data"] = args.data
    save_classifier(storage, args.out, model, meta)
    print(json.dumps({"out": args.out, **meta}))
    return 0
