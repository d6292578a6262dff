"""Feedback -> retrain -> promotion gate: the retrain and gate sections."""

from __future__ import annotations

from pydantic import Field, model_validator

from facegen_ray.config.base import _Section


class RetrainConfig(_Section):
    """`facegen retrain`: base dataset + approved feedback images -> a candidate model.

    An image is merged when it has >= min_approvals approvals and strictly more approvals than
    rejections (the rule of data.feedback.approved_images), and, if set, a mean rating >= min_rating."""

    dataset: str | None = Field(default=None, description="base dataset URI; default: the serving model's dataset")
    min_approvals: int = Field(
        default=2, ge=1, description="distinct sources (networks, serve/source.py) that approve an image"
    )
    min_rating: float | None = Field(default=None, ge=1, le=5, description="skip images rated lower on average")
    feedback_weight: float = Field(default=1.0, gt=0, description="'weight' column of merged feedback rows")
    feedback_repeats: int = Field(default=1, ge=1, le=100, description="rows written per merged image (oversampling)")
    images: int = Field(default=100_000, ge=1, description="images the candidate trains beyond the serving model")
    max_feedback_images: int = Field(default=500, ge=1, description="cap on feedback images one retrain merges")
    max_feedback_share: float = Field(
        default=0.05, gt=0, le=1, description="cap on merged feedback images as a share of the base dataset's images"
    )
    max_feedback_images_per_source: int = Field(
        default=25, ge=1, description="merged images one approving source (network) may back per retrain"
    )
    quarantine_new_rater_minutes: float = Field(
        default=60.0,
        ge=0,
        description="approvals from a rater known for less than this (at approval time) are held back",
    )
    quarantine_approvals_per_hour: int = Field(
        default=60, ge=1, description="a rater with more approvals than this in any hour is held back entirely"
    )
    review: str | None = Field(
        default=None,
        description="reviewed list (`facegen feedback review --out`): only image ids in it are merged; None: no review",
    )
    run_prefix: str = Field(default="retrain", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,40}$")


class GateConfig(_Section):
    """Promotion gate: candidate vs serving model, same seeds, same reals, same Inception.

    Promote iff candidate FID <= serving FID * (1 + fid_tolerance) and every margin that is set
    holds (KID mean not higher by more than kid_margin; precision / recall not lower by more
    than their margins). With min_human_win_rate set, people's /compare votes (candidate vs the
    serving model) must also agree: see data/comparison.py (fewer than min_votes -> "pending").
    Conditional models are also measured for CFID (and attribute accuracy with attribute_model),
    gated only when cfid_tolerance / attr_acc_margin is set."""

    fid_tolerance: float = Field(default=0.0, ge=-1, description="relative slack on FID (-1: never promote)")
    kid_margin: float | None = Field(default=None, ge=0)
    precision_margin: float | None = Field(default=None, ge=0)
    recall_margin: float | None = Field(default=None, ge=0)
    num_gen: int | None = Field(default=None, ge=2, description="generated images per model; default eval.num_gen")
    num_real: int | None = Field(default=None, ge=2, description="reals; default eval.num_real")
    data: str | None = Field(
        default=None,
        description="reference dataset; default: the real (prepared) version behind the candidate's training data",
    )
    require_promotion: bool = Field(default=False, description="exit 1 when the gate rejects the candidate")
    use_ray: bool = Field(default=False, description="extract features with Ray actors instead of in-process")
    max_copy_rate: float | None = Field(
        default=None,
        ge=0,
        le=1,
        description="refuse promotion when the candidate's "
        "memorisation copy rate is above this (needs a held-out split); None: not checked",
    )
    min_human_win_rate: float | None = Field(
        default=None,
        ge=0,
        le=1,
        description="human rule (pairwise /compare "
        "votes): promote only when the lower end of the Wilson interval of the "
        "candidate's win rate is >= this; None: votes are not required",
    )
    min_votes: int | None = Field(
        default=None,
        ge=1,
        description="votes the human rule needs before it decides (fewer: "
        "'pending'); default 30 when min_human_win_rate is set",
    )
    human_confidence: float = Field(default=0.95, gt=0.5, lt=1, description="confidence level of that Wilson interval")
    cfid_tolerance: float | None = Field(
        default=None,
        ge=-1,
        description="conditional models: also require candidate "
        "CFID <= serving CFID * (1 + this); None: CFID is shown, not a rule",
    )
    attribute_model: str | None = Field(
        default=None,
        description="attribute classifier folder: conditional models "
        "are also measured for attribute accuracy (attr_acc)",
    )
    attr_acc_margin: float | None = Field(
        default=None,
        ge=0,
        le=1,
        description="also require candidate attribute "
        "accuracy >= serving's - this (needs attribute_model); None: shown, not a rule",
    )

    @model_validator(mode="after")
    def _human_rule(self) -> GateConfig:
        if self.min_votes is not None and self.min_human_win_rate is None:
            raise ValueError(
                "gate.min_votes applies to the human rule only: set gate.min_human_win_rate too "
                "(e.g. 0.4), or leave both unset"
            )
        if self.attr_acc_margin is not None and not self.attribute_model:
            raise ValueError(
                "gate.attr_acc_margin needs gate.attribute_model (an attribute classifier folder, "
                "from `facegen attributes train`)"
            )
        return self
