"""`facegen feedback review [--out FILE]`: the images the next retrain would merge, for a person.

Lists every image that passes the approval rule and the quarantine now (data/feedback_brakes.py)
with its approvals, rejections and stored PNG, and the per-rater breakdown. With --out, writes
the list as a review file: delete the entries that must not be trained on and run
`facegen retrain --set retrain.review=FILE`; the merge then takes only the ids left in it.
"""

from __future__ import annotations

import argparse
import json

from facegen_ray.commands._common import add_config_args, config_from_args
from facegen_ray.storage import Storage


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "feedback",
        help="review approved feedback before a retrain merges it",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    fsub = p.add_subparsers(dest="feedback_command", metavar="SUBCOMMAND", required=True)
    r = fsub.add_parser("review", help="list the images the next merge would take", description=__doc__)
    r.add_argument("--out", default=None, help="write the review file here (local path or URI)")
    add_config_args(r)
    r.set_defaults(func=run_review)


def run_review(args: argparse.Namespace) -> int:
    from facegen_ray.data.feedback_review import review_list

    cfg = config_from_args(args)
    storage = Storage(cfg.storage)
    doc = review_list(storage, cfg.storage.root, cfg.retrain)
    for img in doc["images"]:
        print(f"{img['image_id']}  +{img['approvals']} -{img['rejections']}  {img['image_uri']}")
    raters = doc["raters"]
    print(
        f"[facegen] {len(doc['images'])} image(s) would be merged (before the cap); {raters.get('raters', 0)} "
        f"rater(s), {raters.get('held_back_raters', 0)} held back; skipped: {json.dumps(doc['skipped'])}"
    )
    if args.out:
        storage.write_bytes(args.out, (json.dumps(doc, indent=1, sort_keys=True) + "\n").encode("utf-8"))
        print(f"[facegen] review file: {args.out} (edit image_ids, then --set retrain.review={args.out})")
    return 0
