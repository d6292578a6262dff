"""`facegen directions MODEL --attribute-model URI [--num-samples 2000]`: fit attribute
directions in W and store them with the model (MODEL/directions.json).

Samples w for seeds seed..seed+N-1, renders the faces, labels them with the attribute classifier
(`facegen attributes train`), fits one linear boundary per attribute (age: ridge regression on
the predicted age; gender; race one-vs-rest: logistic regression), orthonormalises them
(Gram-Schmidt, age first) and writes directions.json into the model directory (registry
versions resolve to their directory). Prints one JSON object: the file, the directions with
their held-out fit figures and unit (margin_scale), the classifier's own held-out accuracy, and
the attributes skipped. A running app picks the directions up on its next model (re)load.
"""

from __future__ import annotations

import argparse
import json

from facegen_ray.commands._common import add_config_args, config_from_args
from facegen_ray.errors import UserError
from facegen_ray.storage import Storage

# Imported where used, not here: models.attributes, models.directions, serve.generation (torch):
# cli.py imports every command module to build the parser, which loads no numpy/torch/ray
# (tests/test_layers.py).


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "directions",
        help="fit attribute directions in W (age, gender, race) for edits",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("model", metavar="MODEL", help="model directory URI or registry version")
    p.add_argument(
        "--attribute-model",
        required=True,
        metavar="URI",
        help="attribute classifier folder written by `facegen attributes train`",
    )
    p.add_argument("--num-samples", type=int, default=2000, help="faces to sample and label (default 2000)")
    p.add_argument("--seed", type=int, default=0, help="first seed of the sample (default 0)")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument("--batch-size", type=int, default=64, help="images per forward pass")
    add_config_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from facegen_ray.models.attributes import load_tagger
    from facegen_ray.models.directions import boundaries, directions_doc, sample_and_label, save_directions
    from facegen_ray.serve.generation import load_model

    if args.num_samples < 20:
        raise UserError("--num-samples must be >= 20 (a boundary needs faces on both sides and a held-out fifth)")
    if args.batch_size < 1 or args.seed < 0:
        raise UserError("--batch-size must be >= 1 and --seed >= 0")
    cfg = config_from_args(args)
    storage = Storage(cfg.storage)
    model = load_model(storage, args.model, cfg.storage.root, device=args.device)
    tagger = load_tagger(storage, args.attribute_model)
    W, labels = sample_and_label(model.G, tagger, args.num_samples, args.seed, args.batch_size)
    fits, skipped = boundaries(W, labels, labels.get("age"), seed=args.seed)
    if not fits:
        raise UserError(f"no direction could be fitted ({skipped}); sample more faces with --num-samples")
    classifier = {"uri": args.attribute_model, "held_out": tagger.meta.get("held_out")}
    doc = directions_doc(
        W,
        fits,
        skipped,
        weights_sha256=model.digest,
        classifier=classifier,
        num_samples=args.num_samples,
        seed=args.seed,
    )
    uri = save_directions(storage, model.uri, doc)
    print(
        json.dumps(
            {
                "directions_file": uri,
                "model_version": model.version,
                "num_samples": args.num_samples,
                "directions": {
                    n: {k: d[k] for k in ("kind", "positive", "margin_scale", "fit", "num_samples")}
                    for n, d in doc["directions"].items()
                },
                "classifier_held_out": classifier["held_out"],
                "skipped": skipped,
            }
        )
    )
    return 0
