"""HTTP request and response bodies of the Serve app (pydantic v2). Unknown fields are rejected
(422) so a typo never silently changes what is generated or stored; numbers must be finite.
The response models only document the API (the OpenAPI schema that the schema-fuzzing test
checks answers against); the ingress builds its answers itself."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, model_validator

from facegen_ray.data.feedback import ID_RE
from facegen_ray.models.latent import MAX_EDIT_STRENGTH
from facegen_ray.serve.generation import MAX_SEED

MAX_IMAGES_PER_REQUEST = 16
MAX_CROSSOVER = 63  # the schema's bound; the model's num_ws - 1 is checked by the replica
MAX_COMMENT_CHARS = 2000


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class Attributes(_Body):
    """Requested attributes of a conditional model (UTKFace coding; null = any)."""

    age: Annotated[int, Field(ge=0, le=130, description="years")] | None = None
    gender: Annotated[int, Field(ge=0, le=1, description="0 male, 1 female")] | None = None
    race: Annotated[int, Field(ge=0, le=4, description="0 white, 1 black, 2 asian, 3 indian, 4 other")] | None = None


class Mix(_Body):
    """Style mixing: w layers >= crossover come from the face of `seed` (its fine styles); the
    requested face keeps layers < crossover (its coarse styles). 1 <= crossover <= num_ws - 1
    (num_ws: /healthz), checked against the serving model."""

    seed: Annotated[int, Field(ge=0, le=MAX_SEED)]
    crossover: Annotated[int, Field(ge=1, le=MAX_CROSSOVER)]


class Interpolate(_Body):
    """The requested face moved a fraction t of the way to the face of seed_b (W: linear, Z: slerp)."""

    seed_b: Annotated[int, Field(ge=0, le=MAX_SEED)]
    t: Annotated[float, Field(ge=0, le=1)]
    space: Literal["w", "z"] = "w"


EditStrengths = Annotated[
    dict[
        Annotated[str, Field(pattern=r"^[a-z_]{1,32}$")],
        Annotated[float, Field(ge=-MAX_EDIT_STRENGTH, le=MAX_EDIT_STRENGTH)],
    ],
    Field(
        max_length=16,
        description="attribute direction -> strength in units of its margin_scale (/healthz lists "
        "the model's directions)",
    ),
]


class GenerateRequest(_Body):
    """POST /generate. Seeds seed..seed+num_images-1; a random seed when absent. mix and
    interpolate are exclusive; edit combines with either (applied last)."""

    seed: Annotated[int, Field(ge=0, le=MAX_SEED)] | None = None
    num_images: Annotated[int, Field(ge=1, le=MAX_IMAGES_PER_REQUEST)] = 1
    truncation: Annotated[float, Field(ge=0, le=1)] | None = None
    attributes: Attributes | None = None
    format: Literal["png", "jpeg"] = "png"
    mix: Mix | None = None
    interpolate: Interpolate | None = None
    edit: EditStrengths | None = None

    @model_validator(mode="after")
    def _seed_range(self) -> GenerateRequest:
        if self.seed is not None and self.seed + self.num_images - 1 > MAX_SEED:
            raise ValueError(f"seed + num_images - 1 must be <= {MAX_SEED}")
        if self.mix is not None and self.interpolate is not None:
            raise ValueError(
                "mix and interpolate cannot be combined in one request; send one of them (edit combines with either)"
            )
        return self

    def controls(self) -> dict[str, Any]:
        """The request item's control keys (None when absent)."""
        return {
            "mix": self.mix.model_dump() if self.mix else None,
            "interpolate": self.interpolate.model_dump() if self.interpolate else None,
            "edit": dict(self.edit) if self.edit else None,
        }


class GenerateQuery(_Body):
    """GET /generate query string: one image."""

    seed: Annotated[int, Field(ge=0, le=MAX_SEED)] | None = None
    truncation: Annotated[float, Field(ge=0, le=1)] | None = None
    format: Literal["png", "jpeg"] = "png"
    age: Annotated[int, Field(ge=0, le=130)] | None = None
    gender: Annotated[int, Field(ge=0, le=1)] | None = None
    race: Annotated[int, Field(ge=0, le=4)] | None = None

    def attributes(self) -> Attributes | None:
        if self.age is None and self.gender is None and self.race is None:
            return None
        return Attributes(age=self.age, gender=self.gender, race=self.race)


class FeedbackRequest(_Body):
    """POST /feedback. image_id is 32 lowercase hex chars (what /generate returned)."""

    image_id: Annotated[str, Field(pattern=ID_RE.pattern)]
    approved: StrictBool
    rating: Annotated[int, Field(ge=1, le=5, strict=True)] | None = None
    comment: Annotated[str, Field(max_length=MAX_COMMENT_CHARS)] | None = None


class ReloadRequest(_Body):
    """POST /admin/reload: a model directory URI or registry version (or serving/latest)."""

    model: Annotated[str, Field(min_length=1, max_length=1024)]


class PromoteRequest(_Body):
    """POST /admin/promote: a registry version to make the serving model (then reload)."""

    version: Annotated[str, Field(min_length=1, max_length=64)]


class CompareVoteRequest(_Body):
    """POST /compare: the vote on a pair that POST /compare/pairs served: which face looks more
    photorealistic ("left" / "right"), or "cant_tell"."""

    pair_id: Annotated[str, Field(pattern=ID_RE.pattern)]
    choice: Literal["left", "right", "cant_tell"]


class CompareStartRequest(_Body):
    """POST /admin/compare/start: compare a registered candidate version with a baseline
    version (default: the registry's serving version)."""

    candidate: Annotated[str, Field(min_length=1, max_length=64)]
    baseline: Annotated[str, Field(min_length=1, max_length=64)] | None = None


class CompareStopRequest(_Body):
    """POST /admin/compare/stop: stop the running comparison ({} or its id, to be sure)."""

    comparison_id: Annotated[str, Field(pattern=ID_RE.pattern)] | None = None


# ----------------------------------------------------------------------------- responses
class ErrorItem(BaseModel):
    """One problem with a request (a 422 for a body that fails the schema)."""

    type: str
    loc: list[str | int]
    msg: str
    ctx: dict[str, Any] | None = None


class ErrorResponse(BaseModel):
    """Every 4xx/5xx answer: a message, or a list of problems for a body that fails the schema."""

    detail: str | list[ErrorItem]


class HealthResponse(BaseModel):
    status: Literal["ok", "unavailable"]
    model_version: str | None
    model_uri: str | None = None
    conditional: bool | None = None
    resolution: int | None = None
    num_ws: int | None = None
    style_mixing: bool | None = None  # False: the model was trained without style mixing; "mix" answers 422
    directions: list[str] | None = None
    max_edit_strength: float | None = None
    error: str | None = None


class GeneratedImage(BaseModel):
    image_id: Annotated[str, Field(pattern=ID_RE.pattern)]
    seed: Annotated[int, Field(ge=0, le=MAX_SEED)]
    data: Annotated[str, Field(description="base64 of the PNG or JPEG bytes")]


class GenerateResponse(BaseModel):
    model_version: str
    truncation: float
    format: Literal["png", "jpeg"]
    images: Annotated[list[GeneratedImage], Field(min_length=1, max_length=MAX_IMAGES_PER_REQUEST)]


class FeedbackResponse(BaseModel):
    feedback_id: Annotated[str, Field(pattern=ID_RE.pattern)]
    created: bool


class ReloadResponse(BaseModel):
    model_version: str
    model_uri: str
    generation: int
    replicas: int
    promoted: str | None = None


class PairImage(BaseModel):
    data: Annotated[str, Field(description="base64 of the PNG (provenance names no model: the comparison is blind)")]


class ComparePairResponse(BaseModel):
    """A pair to vote on: two faces, which model drew which is not told."""

    pair_id: Annotated[str, Field(pattern=ID_RE.pattern)]
    expires: str
    left: PairImage
    right: PairImage


class CompareVoteResponse(BaseModel):
    vote_id: Annotated[str, Field(pattern=ID_RE.pattern)]
    pair_id: Annotated[str, Field(pattern=ID_RE.pattern)]
    choice: Literal["left", "right", "cant_tell"]
    created: bool


class ComparisonInfo(BaseModel):
    """A comparison and its votes so far (admin routes only: it names the versions)."""

    comparison_id: Annotated[str, Field(pattern=ID_RE.pattern)]
    baseline: str
    candidate: str
    started: str
    stopped: str | None
    votes: int
    wins: int
    losses: int
    cant_tell: int


class CompareStatusResponse(BaseModel):
    active: ComparisonInfo | None
    comparisons: list[ComparisonInfo]


class SessionResponse(BaseModel):
    rater: str  # "s-<session id>" or "h-<digest of the proxy's user header>"
    since: float | None  # unix seconds the session was issued (None: a proxy identity)
    new: bool  # True: this response set a new session cookie
