"""Fault injection for the crash tests, kept out of the training loop: one object the loop
calls at two points, which does nothing unless the run's config names a fault.

- `worker`: {"rank", "after_images", "marker"}: that rank exits (os._exit) once, after the
  first iteration past `after_images` that follows a committed checkpoint
  (tests/test_train.py: a killed worker is replaced and the run resumes).
- `checkpoint`: {"after_images", "marker", "pause_s"}: rank 0 pauses halfway through
  uploading a checkpoint (state.pt written, meta.json not yet), so a test can SIGKILL it
  there (tests/test_checkpoint_crash.py).

The marker file makes each fault fire once per run: the restarted workers see it and go on.
The trainer fills both from environment variables (FAULT_ENV, CHECKPOINT_FAULT_ENV below).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

FAULT_ENV = "FACEGEN_TRAIN_FAULT"  # test hook: "RANK:AFTER_IMAGES:MARKER_FILE"
CHECKPOINT_FAULT_ENV = "FACEGEN_CHECKPOINT_FAULT"  # test hook: "AFTER_IMAGES:MARKER_FILE"


@dataclass(frozen=True)
class FaultHooks:
    rank: int = 0
    worker: dict[str, Any] | None = None
    checkpoint: dict[str, Any] | None = None

    @classmethod
    def from_config(cls, config: dict[str, Any], rank: int) -> FaultHooks:
        """The loop's config keys "fault" and "checkpoint_fault" (None or absent: no fault)."""
        return cls(rank=rank, worker=config.get("fault") or None, checkpoint=config.get("checkpoint_fault") or None)

    def upload_pause(self, images_seen: int, dest: str) -> Callable[[str], None] | None:
        """The after-file callback for checkpoint.upload_checkpoint: None (no pause) unless the
        checkpoint fault is due on this rank."""
        f = self.checkpoint
        if not f or self.rank != 0 or images_seen < int(f["after_images"]) or os.path.exists(f["marker"]):
            return None

        def after_file(name: str) -> None:
            if name == "state.pt":  # meta.json not written yet: the folder is incomplete
                with open(f["marker"], "w") as fh:
                    fh.write(f"{os.getpid()} {dest}\n")
                print(f"[facegen] fault injection: checkpoint upload paused in {dest}", flush=True)
                time.sleep(float(f.get("pause_s", 600)))

        return after_file

    def after_iteration(self, images_seen: int, last_checkpoint: int) -> None:
        """Exit this worker when the worker fault is due (never returns then)."""
        f = self.worker
        if not f or self.rank != int(f["rank"]) or images_seen < int(f["after_images"]) or last_checkpoint <= 0:
            return
        if os.path.exists(f["marker"]):
            return
        import ray.train

        # die only once the last checkpoint is committed, so the test knows where the restarted
        # group must resume from (a crash before the commit would restart from the previous
        # checkpoint instead, which is also correct, just less checkable)
        ray.train.get_all_reported_checkpoints(consistency_mode=ray.train.CheckpointConsistencyMode.COMMITTED)
        with open(f["marker"], "w") as fh:
            fh.write(f"worker rank {self.rank} killed at {images_seen} images\n")
        print(f"[facegen] fault injection: rank {self.rank} exits at {images_seen} images", flush=True)
        os._exit(1)


def worker_fault_from_env() -> dict[str, Any] | None:
    """FAULT_ENV = "RANK:AFTER_IMAGES:MARKER_FILE" -> the `worker` fault, or None."""
    raw = os.environ.get(FAULT_ENV)
    if not raw:
        return None
    rank, after, marker = raw.split(":", 2)
    return {"rank": int(rank), "after_images": int(after), "marker": marker}


def checkpoint_fault_from_env() -> dict[str, Any] | None:
    """CHECKPOINT_FAULT_ENV = "AFTER_IMAGES:MARKER_FILE" -> the `checkpoint` fault, or None."""
    raw = os.environ.get(CHECKPOINT_FAULT_ENV)
    if not raw:
        return None
    after, marker = raw.split(":", 1)
    return {"after_images": int(after), "marker": marker}
