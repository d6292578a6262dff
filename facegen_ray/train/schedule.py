"""Progressive-growing schedule: which stage, fade-in alpha, resolution and batch size apply
after a given number of real images has been shown to the discriminator.

A pure function of (images_seen, config) so every worker, a resumed run and the tests agree
on it without talking to each other:

    stage s0 = log2(start_resolution) - 2:   stabilize_images at alpha = 1
    every later stage s:                     fade_images with alpha ramping 0 -> 1,
                                             then stabilize_images at alpha = 1
    the last stage (model.resolution):       stabilizes until total_images

Batch sizes are global (TrainConfig.batch_size per resolution) and are split evenly across
workers; the per-worker batch is `global // num_workers` (at least 1), so the effective global
batch is `worker_batch * num_workers`.
"""

from __future__ import annotations

from dataclasses import dataclass

from facegen_ray.config import ModelConfig, TrainConfig


def stage_of_resolution(res: int) -> int:
    """4 -> 0, 8 -> 1, 16 -> 2, ..."""
    return res.bit_length() - 3


def resolution_of_stage(stage: int) -> int:
    """0 -> 4, 1 -> 8, 2 -> 16, ..."""
    return 4 * 2**stage


@dataclass(frozen=True)
class StageSpan:
    """Image-count boundaries of one stage: [start, fade_end) fades in, [fade_end, end) is stable."""

    stage: int
    start: int
    fade_end: int
    end: int | None  # None for the last stage (runs until total_images)


@dataclass(frozen=True)
class SchedulePoint:
    """Everything the training step needs to know at one moment of the schedule."""

    images_seen: int
    stage: int
    alpha: float  # 1.0 when no block is fading in
    resolution: int
    global_batch: int  # effective: worker_batch * num_workers
    worker_batch: int
    lr_scale: float
    fading: bool
    done: bool  # images_seen >= total_images

    @property
    def kimg(self) -> float:
        return self.images_seen / 1000.0


class ProgressiveSchedule:
    """Stage/alpha/batch as a function of images seen; see the module docstring."""

    def __init__(self, train: TrainConfig, model: ModelConfig, num_workers: int | None = None):
        if train.start_resolution > model.resolution:
            raise ValueError(
                f"train.start_resolution ({train.start_resolution}) exceeds model.resolution ({model.resolution})"
            )
        self.train = train
        self.model = model
        self.num_workers = int(num_workers or train.num_workers)
        self.first_stage = stage_of_resolution(train.start_resolution)
        self.last_stage = model.num_stages - 1
        self.total_images = int(train.total_images)
        spans: list[StageSpan] = []
        pos = 0
        for s in range(self.first_stage, self.last_stage + 1):
            fade = 0 if s == self.first_stage else int(train.fade_images)
            end = None if s == self.last_stage else pos + fade + int(train.stabilize_images)
            spans.append(StageSpan(stage=s, start=pos, fade_end=pos + fade, end=end))
            if end is not None:
                pos = end
        self.spans = spans

    def span(self, stage: int) -> StageSpan:
        for sp in self.spans:
            if sp.stage == stage:
                return sp
        raise KeyError(f"stage {stage} is not part of this schedule ({self.first_stage}..{self.last_stage})")

    def batch_sizes(self, resolution: int) -> tuple[int, int]:
        """(worker batch, effective global batch) at a resolution."""
        worker = max(1, self.train.batch_for(resolution) // self.num_workers)
        return worker, worker * self.num_workers

    def at(self, images_seen: int) -> SchedulePoint:
        """The schedule point for the next step, given the images already shown."""
        if images_seen < 0:
            raise ValueError(f"images_seen must be >= 0, got {images_seen}")
        span = self.spans[-1]
        for sp in self.spans:
            if sp.end is None or images_seen < sp.end:
                span = sp
                break
        fade_len = span.fade_end - span.start
        if fade_len > 0 and images_seen < span.fade_end:
            alpha = (images_seen - span.start) / fade_len
            fading = True
        else:
            alpha = 1.0
            fading = False
        res = resolution_of_stage(span.stage)
        worker, global_batch = self.batch_sizes(res)
        return SchedulePoint(
            images_seen=images_seen,
            stage=span.stage,
            alpha=float(min(max(alpha, 0.0), 1.0)),
            resolution=res,
            global_batch=global_batch,
            worker_batch=worker,
            lr_scale=float(self.train.lr_scale.get(res, 1.0)),
            fading=fading,
            done=images_seen >= self.total_images,
        )

    def describe(self) -> list[dict]:
        """Human-readable plan (one dict per stage) for logs and the run folder."""
        out = []
        for sp in self.spans:
            res = resolution_of_stage(sp.stage)
            worker, global_batch = self.batch_sizes(res)
            out.append(
                {
                    "stage": sp.stage,
                    "resolution": res,
                    "start_images": sp.start,
                    "fade_end_images": sp.fade_end,
                    "end_images": sp.end if sp.end is not None else self.total_images,
                    "global_batch": global_batch,
                    "worker_batch": worker,
                    "lr_scale": float(self.train.lr_scale.get(res, 1.0)),
                }
            )
        return out
