"""How Ray Train runs the training loop: the train section."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from facegen_ray.config.base import _check_resolution, _is_pow2, _Section


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
    resource_wait_s: float = Field(
        default=600.0,
        ge=0,
        description="how long train/tune wait for the cluster (its autoscaler) to provide the workers' "
        "resources (e.g. a GPU node) before failing; 0: fail at once",
    )
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
        "so keep it fixed for a run you will resume (larger chunks cut the streamed epoch's data "
        "wait: docs/performance.md, the data path)",
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
