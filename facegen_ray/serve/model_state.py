"""The model pointer: one ModelState replica says which model every generator replica should
hold (epoch, generation, target uri/label) and keeps each replica's last report.

Generator replicas (serve/replica.py) poll `current()` every ServeConfig.model_poll_interval_s;
the ingress's admin routes (serve/ingress.py) move the target with `set_target` and wait on
`replicas()`. If this replica restarts, the pointer falls back to the user_config model.
"""

import time
import uuid
from typing import Any

from ray import serve

from facegen_ray.serve.singletons import on_head_node

STATE_NAME = "ModelState"


@serve.deployment(
    name=STATE_NAME,
    num_replicas=1,
    ray_actor_options=on_head_node(),  # serve/singletons.py: a worker host's loss cannot take it
    max_ongoing_requests=1000,
    logging_config={"enable_access_log": False},  # polled every second by every replica
)
class ModelState:
    """Which model the generator replicas should hold, and what each replica last reported.

    generation increases by one whenever the target changes; epoch changes if this replica is
    restarted, so replicas never confuse generations of two instances."""

    def __init__(self) -> None:
        self.epoch = uuid.uuid4().hex[:12]
        self.generation = 0
        self.target: dict[str, str] | None = None  # {"ref", "uri", "label", "source"}
        self.user_config_ref: str | None = None
        self.reports: dict[str, dict[str, Any]] = {}

    def current(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "generation": self.generation, "target": self.target}

    def _set(self, ref: str, uri: str, label: str, source: str) -> dict[str, Any]:
        if self.target is None or (self.target["uri"], self.target["label"]) != (uri, label):
            self.generation += 1
            self.target = {"ref": ref, "uri": uri, "label": label, "source": source}
        return self.current()

    def from_user_config(self, ref: str, uri: str, label: str) -> dict[str, Any]:
        """A replica saw user_config {"model": ref}: a change of the user_config moves the
        target; the same user_config again (a new replica starting) leaves it alone."""
        if ref != self.user_config_ref or self.target is None:
            self.user_config_ref = ref
            return self._set(ref, uri, label, "user_config")
        return self.current()

    def set_target(self, ref: str, uri: str, label: str) -> dict[str, Any]:
        return self._set(ref, uri, label, "admin")

    def report(self, replica: str, status: dict[str, Any]) -> None:
        self.reports[replica] = {**status, "replica": replica, "time": time.time()}

    def replicas(self, max_age_s: float) -> list[dict[str, Any]]:
        now = time.time()
        self.reports = {k: v for k, v in self.reports.items() if now - v["time"] <= max(max_age_s, 60.0)}
        return [v for v in self.reports.values() if now - v["time"] <= max_age_s]
