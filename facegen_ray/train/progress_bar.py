"""The driver's training progress bar (`facegen train` in a terminal): rank 0's reports reach a
small Ray actor through a Ray Train callback, and the driver polls it to draw images seen out
of train.total_images with resolution, fade-in, losses and images/s. Off outside a terminal.
"""

from __future__ import annotations

import contextlib
from typing import Any

from facegen_ray.config import FacegenConfig


class _ProgressBoard:
    """A Ray actor holding rank 0's latest training report, for the driver's progress bar."""

    def __init__(self):
        self.latest: dict[str, Any] | None = None

    def put(self, point: dict[str, Any]) -> None:
        self.latest = point

    def get(self) -> dict[str, Any] | None:
        return self.latest


PROGRESS_KEYS = ("images_seen", "stage", "resolution", "alpha", "d_loss", "g_loss", "img_per_s")


def _progress_callback(board):
    """A Ray Train callback (it runs in the Train controller) sending rank 0's reports to the board."""
    from ray.train import UserCallback

    class ProgressForward(UserCallback):
        def after_report(self, run_context, metrics, checkpoint):
            rank0 = metrics[0] if metrics else {}
            if "images_seen" in rank0:
                board.put.remote({k: rank0[k] for k in PROGRESS_KEYS if k in rank0})

    return ProgressForward()


def progress_postfix(point: dict[str, Any]) -> str:
    """The bar's text after the count: `32x32 α=0.45 D 0.612 G 1.104 85 img/s`."""
    parts = []
    if "resolution" in point:
        parts.append(f"{int(point['resolution'])}x{int(point['resolution'])}")
    if "alpha" in point:
        parts.append(f"α={float(point['alpha']):.2f}")
    if "d_loss" in point and "g_loss" in point:
        parts.append(f"D {float(point['d_loss']):.3f} G {float(point['g_loss']):.3f}")
    if "img_per_s" in point:
        parts.append(f"{float(point['img_per_s']):.0f} img/s")
    return " ".join(parts)


def training_bar(cfg: FacegenConfig):
    """(Ray Train callbacks to add, context manager drawing the bar) for this driver: images
    seen out of train.total_images, updated from rank 0's reports (every
    train.log_every_images). In a terminal only; elsewhere ([], a no-op context)."""
    from facegen_ray import progress

    if not progress.enabled():
        return [], contextlib.nullcontext()
    import ray

    board = ray.remote(num_cpus=0)(_ProgressBoard).remote()

    def poll():
        point = ray.get(board.get.remote(), timeout=10)
        return (int(point["images_seen"]), progress_postfix(point)) if point else None

    return [_progress_callback(board)], progress.PolledBar(
        poll, cfg.train.total_images, f"train {cfg.train.run_name}", unit="img"
    )
