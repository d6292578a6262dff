"""What is trained: the model and loss sections."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from facegen_ray.config.base import _check_resolution, _Section


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
