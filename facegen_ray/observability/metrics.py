"""Prometheus metrics for serving and training, recorded with `ray.util.metrics`.

Every Ray node runs a metrics agent that exposes what the processes on that node record, in
Prometheus text format, on the node's metrics export port (`ray start --metrics-export-port=8080`
on our clusters; `ray.nodes()[i]["MetricsExportPort"]` otherwise). Ray prefixes every name
with `ray_` and OpenTelemetry adds `_total` to counters, so the metric defined here as
`facegen_serve_requests` is scraped as `ray_facegen_serve_requests_total`; a histogram
`facegen_serve_request_seconds` as `ray_facegen_serve_request_seconds_{bucket,sum,count}`.
`MetricSpec.series()` gives the exported names; the dashboards use only those (a test checks).
Histogram `_sum`s are approximate: Ray records each observation at its bucket's midpoint, so a
mean computed as _sum/_count is a bucket-resolution estimate; `_count` and `_bucket` are exact.
Ray adds the labels SessionName, NodeAddress, WorkerId, Component and Version to every series:
the dashboards aggregate them away with `sum by (...)`.

The metric objects are created lazily, once per process, by `serving_metrics()` /
`training_metrics()` (nothing is registered at import). Recording never raises: a failure is
logged once per metric and otherwise ignored, so metrics cannot break a request or a step.

Gauges are kept alive: Ray 2.60's agent drops a gauge series that its process has not set
again within two report intervals (2 x metrics_report_interval_ms, 20 s by default), so a value
set once (the served model version, training progress between progress points) would vanish
from Prometheus. MetricSet re-sets the last value of every live gauge series every
min(GAUGE_REFRESH_S, report interval) from a daemon thread (started with the first gauge); `forget` ends a series
(e.g. the previous model version after a swap), and a series ends by itself ~20 s after its
process exits.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

# Imported where used, not here: ray: metrics are created inside Ray processes; this module imports
# without Ray.

log = logging.getLogger(__name__)

GAUGE_REFRESH_S = 5.0  # at most; never longer than one Ray report interval (the TTL is two)
EXPORT_PREFIX = "ray_"  # what Ray's Prometheus exporter puts in front of every application metric

Kind = Literal["counter", "gauge", "histogram"]

LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
BATCH_IMAGES_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
BATCH_REQUESTS_BUCKETS = (1, 2, 4, 8, 16, 32)

# feedback outcomes (tag "outcome" of facegen_serve_feedback), by HTTP status of POST /feedback
FEEDBACK_OUTCOMES = {201: None, 200: "duplicate", 404: "not_found", 413: "too_large", 422: "invalid"}


@dataclass(frozen=True)
class MetricSpec:
    """One metric: its name as defined (without Ray's prefix), kind, help text and tag keys."""

    name: str
    kind: Kind
    description: str
    tag_keys: tuple[str, ...] = ()
    boundaries: tuple[float, ...] = ()  # histogram bucket upper bounds

    @property
    def exported(self) -> str:
        """The base name on Ray's Prometheus endpoint (counters get OpenTelemetry's `_total`)."""
        base = EXPORT_PREFIX + self.name
        if self.kind == "counter" and not base.endswith("_total"):
            base += "_total"
        return base

    def series(self) -> tuple[str, ...]:
        """Every sample name this metric appears under when scraped."""
        if self.kind == "histogram":
            return tuple(self.exported + s for s in ("_bucket", "_sum", "_count"))
        return (self.exported,)


SERVING_SPECS: tuple[MetricSpec, ...] = (
    MetricSpec(
        "facegen_serve_requests",
        "counter",
        "HTTP requests answered by the facegen ingress, by route template, method and status code",
        ("route", "method", "status"),
    ),
    MetricSpec(
        "facegen_serve_request_seconds",
        "histogram",
        "time from request start to the last response byte at the ingress (seconds)",
        ("route", "method"),
        LATENCY_BUCKETS_S,
    ),
    MetricSpec(
        "facegen_serve_images_generated", "counter", "images rendered by generator replicas", ("model_version",)
    ),
    MetricSpec(
        "facegen_serve_batch_images",
        "histogram",
        "images per generator batch (one forward of the continuous batcher)",
        ("model_version",),
        BATCH_IMAGES_BUCKETS,
    ),
    MetricSpec(
        "facegen_serve_batch_requests",
        "histogram",
        "requests per generator batch",
        ("model_version",),
        BATCH_REQUESTS_BUCKETS,
    ),
    MetricSpec(
        "facegen_serve_batch_seconds",
        "histogram",
        "generator forward time of one batch (seconds)",
        ("model_version",),
        LATENCY_BUCKETS_S,
    ),
    MetricSpec(
        "facegen_serve_feedback",
        "counter",
        "POST /feedback by outcome: approved, rejected, duplicate, not_found (404), invalid (422), "
        "too_large (413), error",
        ("outcome",),
    ),
    MetricSpec(
        "facegen_serve_model_info",
        "gauge",
        "1 for the model version a generator replica serves (a replaced version reads 0 until "
        "its series expires, ~20 s)",
        ("model_version",),
    ),
    MetricSpec(
        "facegen_serve_model_reloads",
        "counter",
        "model loads in generator replicas (initial load and swaps) by outcome: loaded, failed",
        ("outcome",),
    ),
)

TRAINING_SPECS: tuple[MetricSpec, ...] = (
    MetricSpec("facegen_train_images_seen", "gauge", "real images shown to D so far (all workers)", ("run", "rank")),
    MetricSpec(
        "facegen_train_images_per_second",
        "gauge",
        "training throughput since the previous progress point (images/s, all workers)",
        ("run", "rank"),
    ),
    MetricSpec(
        "facegen_train_data_wait_ratio",
        "gauge",
        "share of wall time the worker waited for its next batch since the previous progress point",
        ("run", "rank"),
    ),
    MetricSpec("facegen_train_stage", "gauge", "progressive-growing stage (resolution 4*2**stage)", ("run", "rank")),
    MetricSpec("facegen_train_resolution", "gauge", "current training resolution (px)", ("run", "rank")),
    MetricSpec(
        "facegen_train_alpha", "gauge", "fade-in alpha of the newest block (1 = fully faded in)", ("run", "rank")
    ),
    MetricSpec(
        "facegen_train_loss",
        "gauge",
        "mean loss since the previous progress point, network G or D",
        ("run", "rank", "network"),
    ),
    MetricSpec("facegen_train_checkpoints", "counter", "checkpoints reported to Ray Train", ("run", "rank")),
    MetricSpec("facegen_train_fid", "gauge", "FID of G_ema at the periodic evaluation points", ("run", "rank")),
)


def all_specs() -> tuple[MetricSpec, ...]:
    return SERVING_SPECS + TRAINING_SPECS


def exported_series() -> set[str]:
    """Every sample name the code can export (what dashboards may query)."""
    return {s for spec in all_specs() for s in spec.series()}


class MetricSet:
    """The Ray metric objects for some specs, each created on first use in this process.

    inc/set/observe take tags as keyword arguments (values are turned into strings) and never
    raise: the first failure of each metric is logged as a warning, later ones at debug level.
    Gauge values are re-set every `refresh_s` until `forget` (see the module docstring)."""

    def __init__(self, specs: tuple[MetricSpec, ...], refresh_s: float | None = None) -> None:
        self.specs = {s.name: s for s in specs}
        self.refresh_s = refresh_s  # None: min(GAUGE_REFRESH_S, Ray's report interval)
        self._objects: dict[str, Any] = {}
        self._warned: set[str] = set()
        self._lock = threading.Lock()
        self._live: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}  # (gauge, tags) -> last value
        self._refresher: threading.Thread | None = None

    def _metric(self, name: str):
        with self._lock:
            m = self._objects.get(name)
            if m is None:
                from ray.util import metrics as rm

                spec = self.specs[name]
                if spec.kind == "counter":
                    m = rm.Counter(spec.name, description=spec.description, tag_keys=spec.tag_keys)
                elif spec.kind == "gauge":
                    m = rm.Gauge(spec.name, description=spec.description, tag_keys=spec.tag_keys)
                else:
                    m = rm.Histogram(
                        spec.name,
                        description=spec.description,
                        boundaries=list(spec.boundaries),
                        tag_keys=spec.tag_keys,
                    )
                self._objects[name] = m
            return m

    @staticmethod
    def _series_key(name: str, tags: Mapping[str, Any]) -> tuple[str, tuple[tuple[str, str], ...]]:
        return name, tuple(sorted((k, str(v)) for k, v in tags.items()))

    def _keep_alive(self, name: str, tags: Mapping[str, Any], value: float) -> None:
        key = self._series_key(name, tags)
        with self._lock:
            self._live[key] = float(value)
            if self._refresher is None:
                self._refresher = threading.Thread(
                    target=self._refresh_loop, name="facegen-metrics-refresh", daemon=True
                )
                self._refresher.start()

    def _refresh_period(self) -> float:
        if self.refresh_s is not None:
            return float(self.refresh_s)
        try:
            import ray

            interval_s = max(ray._config.metrics_report_interval_ms(), 1000) / 1000.0
        except Exception:  # noqa: BLE001 - private API moved: keep the default
            interval_s = GAUGE_REFRESH_S
        return min(GAUGE_REFRESH_S, interval_s)

    def _refresh_loop(self) -> None:
        period = self._refresh_period()
        while True:
            time.sleep(period)
            with self._lock:
                live = list(self._live.items())
            for key, value in live:
                with self._lock:
                    if key not in self._live:  # forgotten meanwhile
                        continue
                self._record("set", key[0], value, dict(key[1]))

    def forget(self, name: str, **tags: Any) -> None:
        """Stop refreshing the gauge series (name, tags): it leaves Prometheus within ~20 s."""
        key = self._series_key(name, tags)
        with self._lock:
            self._live.pop(key, None)

    def _record(self, op: str, name: str, value: float, tags: Mapping[str, Any]) -> bool:
        try:
            metric = self._metric(name)
            str_tags = {k: str(v) for k, v in tags.items()}
            getattr(metric, op)(float(value), tags=str_tags)
            return True
        except Exception as e:  # noqa: BLE001 - metrics must never break the caller
            level = logging.DEBUG if name in self._warned else logging.WARNING
            self._warned.add(name)
            log.log(level, "recording metric %s failed (ignored): %s", name, e)
            return False

    def inc(self, name: str, value: float = 1.0, **tags: Any) -> None:
        if value > 0:
            self._record("inc", name, value, tags)

    def set(self, name: str, value: float, **tags: Any) -> None:
        if not self._record("set", name, value, tags):
            return
        try:
            self._keep_alive(name, tags, value)
        except Exception as e:  # noqa: BLE001 - e.g. no threads left; the value was still recorded once
            log.debug("gauge refresh for %s not started: %s", name, e)

    def observe(self, name: str, value: float, **tags: Any) -> None:
        self._record("observe", name, value, tags)


class ServingMetrics(MetricSet):
    """What the Serve ingress and generator replicas record."""

    def __init__(self) -> None:
        super().__init__(SERVING_SPECS)

    def request(self, route: str, method: str, status: int, seconds: float) -> None:
        self.inc("facegen_serve_requests", route=route, method=method, status=status)
        self.observe("facegen_serve_request_seconds", seconds, route=route, method=method)

    def feedback(self, status: int, approved: bool | None) -> None:
        """One POST /feedback answered with `status`; approved is the request's verdict (when parsed)."""
        if status == 201:
            outcome = "approved" if approved else "rejected"
        else:
            outcome = FEEDBACK_OUTCOMES.get(status) or "error"
        self.inc("facegen_serve_feedback", outcome=outcome)

    def batch(self, model_version: str, images: int, requests: int, seconds: float) -> None:
        """One generator batch: `images` rendered for `requests` requests in `seconds`."""
        self.inc("facegen_serve_images_generated", images, model_version=model_version)
        self.observe("facegen_serve_batch_images", images, model_version=model_version)
        self.observe("facegen_serve_batch_requests", requests, model_version=model_version)
        self.observe("facegen_serve_batch_seconds", seconds, model_version=model_version)

    def model_loaded(self, version: str, previous: str | None) -> None:
        """A replica swapped `previous` (None on its first load) for `version`."""
        if previous is not None and previous != version:
            self.forget("facegen_serve_model_info", model_version=previous)
            self._record("set", "facegen_serve_model_info", 0, {"model_version": previous})  # 0 until it expires
        self.set("facegen_serve_model_info", 1, model_version=version)
        self.inc("facegen_serve_model_reloads", outcome="loaded")

    def model_load_failed(self) -> None:
        self.inc("facegen_serve_model_reloads", outcome="failed")


class TrainingMetrics(MetricSet):
    """What the Ray Train workers record at their progress/report points."""

    def __init__(self) -> None:
        super().__init__(TRAINING_SPECS)

    def progress(self, run: str, rank: int, entry: Mapping[str, Any]) -> None:
        """entry: the loop's progress record (images_seen, img_per_s, stage, resolution, alpha,
        d_loss, g_loss and, at eval points, fid)."""
        tags = {"run": run, "rank": rank}
        for name, key in (
            ("facegen_train_images_seen", "images_seen"),
            ("facegen_train_images_per_second", "img_per_s"),
            ("facegen_train_stage", "stage"),
            ("facegen_train_resolution", "resolution"),
            ("facegen_train_alpha", "alpha"),
            ("facegen_train_fid", "fid"),
            ("facegen_train_data_wait_ratio", "data_wait"),
        ):
            if entry.get(key) is not None:
                self.set(name, entry[key], **tags)
        for network, key in (("G", "g_loss"), ("D", "d_loss")):
            if entry.get(key) is not None:
                self.set("facegen_train_loss", entry[key], network=network, **tags)

    def checkpoint(self, run: str, rank: int) -> None:
        self.inc("facegen_train_checkpoints", run=run, rank=rank)


@functools.cache
def serving_metrics() -> ServingMetrics:
    """This process's serving metrics (created on first call)."""
    return ServingMetrics()


@functools.cache
def training_metrics() -> TrainingMetrics:
    """This process's training metrics (created on first call)."""
    return TrainingMetrics()


def node_metrics_endpoints() -> list[str]:
    """`http://HOST:PORT/metrics` of every alive node of the Ray cluster this process is connected
    to (from ray.nodes(): NodeManagerAddress + MetricsExportPort)."""
    import ray

    out = []
    for n in ray.nodes():
        if n.get("Alive") and n.get("MetricsExportPort"):
            out.append(f"http://{n['NodeManagerAddress']}:{n['MetricsExportPort']}/metrics")
    return out
