"""`facegen feedback review [--out FILE]` and `facegen feedback expire [--dry-run]`: the
feedback store, for a person and for cron.

review: lists every image that passes the approval rule and the quarantine now
(data/feedback_brakes.py) with its approvals, rejections and stored PNG, and the per-rater
breakdown. With --out, writes the list as a review file: delete the entries that must not be
trained on and run `facegen retrain --set retrain.review=FILE`; the merge then takes only the ids
left in it.

expire: deletes the generated images no feedback names and the comparison pairs nobody voted on
once older than feedback.retention_days (default 30; null keeps everything), see
data/feedback_retention.py. Feedback records, votes and what they refer to are kept, so it can
run at any time, also while the app serves and before or after `facegen retrain` (which does
not run it). Prints a summary line, then ONE JSON object on the last line. Exit codes: 0 done
(also when retention is off), 2 bad input (e.g. --days 0 or --set feedback.retention_days=-1).
"""

from __future__ import annotations

import argparse
import json

from facegen_ray.commands._common import add_config_args, config_from_args, option_updates
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
    e = fsub.add_parser(
        "expire",
        help="delete images without feedback and pairs without a vote, once past feedback.retention_days",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    e.add_argument("--dry-run", action="store_true", help="delete nothing; report what would be deleted")
    e.add_argument("--days", type=float, default=None, help="retention in days (same as --set feedback.retention_days)")
    add_config_args(e)
    e.set_defaults(func=run_expire)


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


def run_expire(args: argparse.Namespace) -> int:
    from facegen_ray.data.feedback_retention import expire_feedback

    cfg = config_from_args(args, option_updates(args, {"days": "feedback.retention_days"}))
    days = cfg.feedback.retention_days
    if days is None:
        print("[facegen] feedback.retention_days is null: retention is off, nothing expires")
        print(json.dumps({"retention_days": None, "dry_run": bool(args.dry_run)}))
        return 0
    report = expire_feedback(Storage(cfg.storage), cfg.storage.root, days, dry_run=args.dry_run)
    print(f"[facegen] feedback retention ({days:g} days): {report.summary()}")
    print(json.dumps(report.to_dict(), sort_keys=True))
    return 0
