"""The human review list of the feedback merge: `facegen feedback review` writes the images the
next merge would take (after the quarantine, before the cap) with who approved them; a person
removes what should not be trained on and points retrain.review at the file. With
retrain.review set, the merge takes only image ids listed in it.

File (JSON, local path or storage URI): {"image_ids": [...], "images": [{image_id, approvals,
rejections, raters, image_uri, model_version, control}], "created": iso}. Only "image_ids" is read
back.
"""

from __future__ import annotations

import datetime as _dt
from typing import Any

from facegen_ray.data.feedback_brakes import read_review
from facegen_ray.storage import Storage


def review_list(storage: Storage, root: str, rcfg) -> dict[str, Any]:
    """The review document for the images the merge would select now (brakes applied, no review)."""
    from facegen_ray.data.feedback_brakes import Brakes
    from facegen_ray.data.feedback_merge import select_feedback

    report: dict[str, Any] = {}
    brakes = Brakes(rcfg.quarantine_new_rater_minutes, rcfg.quarantine_approvals_per_hour, None)
    items, skipped = select_feedback(storage, root, rcfg.min_approvals, rcfg.min_rating, brakes, report)
    images = [
        {
            "image_id": it.image_id,
            "approvals": it.approvals,
            "rejections": it.rejections,
            "image_uri": it.image_uri,
            "model_version": it.record.get("model_version"),
            "control": it.record.get("control"),
        }
        for it in items
    ]
    return {
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "image_ids": [i["image_id"] for i in images],
        "images": images,
        "skipped": {k: v for k, v in skipped.items() if v},
        "raters": report,
    }


__all__ = ["read_review", "review_list"]
