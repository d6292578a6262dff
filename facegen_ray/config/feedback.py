"""The feedback store's retention: the feedback section."""

from __future__ import annotations

import math

from pydantic import Field, field_validator

from facegen_ray.config.base import _Section

MAX_RETENTION_DAYS = 36_500  # a hundred years: beyond that, say null (and dates stay representable)


class FeedbackConfig(_Section):
    """`facegen feedback expire` (data/feedback_retention.py): generated images nobody gave
    feedback on, and comparison pairs nobody voted on, are deleted once older than
    retention_days. Feedback records, votes, and the images and pairs they refer to are kept."""

    retention_days: float | None = Field(
        default=30.0,
        description="days an image without feedback (or a pair without a vote) is kept; null: keep everything forever",
    )

    @field_validator("retention_days", mode="before")
    @classmethod
    def _days(cls, v: object) -> object:
        if v is None:
            return v
        if isinstance(v, bool) or not isinstance(v, int | float):
            raise ValueError(f"expected a number of days or null, got {v!r}")
        if not math.isfinite(v) or not 0 < v <= MAX_RETENTION_DAYS:
            raise ValueError(
                f"must be more than 0 and at most {MAX_RETENTION_DAYS} (days), got {v!r}; "
                "to keep every image and pair forever, set it to null (0 is refused: it would not say which)"
            )
        return v
