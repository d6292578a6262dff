"""The generator deployment: holds G_ema on its device and renders batches of requests.

    ModelState (serve/model_state.py) ──polled──► GeneratorDeployment (autoscaling, num_gpus/
    num_cpus from ServeConfig) ◄── handle.render.remote(RenderRequest) ── FacegenIngress
                               ◄── handle.render_many.remote([RenderRequest, ...]) (serve/hop.py)

Autoscaling counts images, not calls: record_autoscaling_stats reports the images queued or
rendering here, and serve/autoscale.py's policy divides them by target_ongoing_requests.

Continuous batching (serve/batcher.py): requests queue as they arrive; whenever the forward
thread is free, the next batch is everything waiting (up to ServeConfig.max_batch_size images,
whole requests), so one request's images always come from one model snapshot. A lone request
runs at once; under load the batch is the backlog. A request's latents are drawn when it
arrives, while the previous batch runs. Every forward (and render_version's, and CUDA-graph
capture) runs on the one forward thread.

Model swaps (no dropped requests): the replica loads the new generator in a thread while it
keeps serving, then swaps one reference; a batch takes its model snapshot when it starts, so
in-flight requests finish on the old model. The target comes from `user_config: {"model": ...}`
(`reconfigure`) or from the ModelState pointer (moved by the ingress's admin routes).
"""

import asyncio
import logging
import os
import time
from collections import OrderedDict, deque
from typing import Any

import torch
from ray import serve

from facegen_ray.config import ServeConfig, StorageConfig
from facegen_ray.config.serve import fake_forward_costs
from facegen_ray.errors import UserError
from facegen_ray.models.sampling import seeds_to_z
from facegen_ray.observability.metrics import serving_metrics
from facegen_ray.serve import generation as gen
from facegen_ray.serve.autoscale import IMAGES_IN_FLIGHT
from facegen_ray.serve.batch_plan import Job, capture_graphs, fake_images, plan_batch
from facegen_ray.serve.batcher import ContinuousBatcher
from facegen_ray.serve.control import render_controlled
from facegen_ray.serve.hop import KEEP_SIZES
from facegen_ray.serve.messages import RenderRequest, RenderResult, RenderTiming
from facegen_ray.storage import Storage

log = logging.getLogger("ray.serve")

GENERATOR_NAME = "GeneratorDeployment"
MAX_OTHER_MODELS = 2  # versions held besides the pointer's model (render_version: a comparison's two)


def _replica_id() -> str:
    try:
        return str(serve.get_replica_context().replica_id.unique_id)
    except Exception:  # noqa: BLE001 - outside Serve (unit use)
        return f"local-{os.getpid()}"


@serve.deployment(name=GENERATOR_NAME)
class GeneratorDeployment:
    """Holds G_ema on its device and renders batches of requests.

    Request: serve/messages.RenderRequest (one HTTP request; with controls -- mix / interpolate
    / edit -- it gets its own ws and shares one synthesis pass per batch, see serve/control.py).
    Answer: serve/messages.RenderResult (ok with the model, uint8 images [k,H,W,3], condition
    codes and timing; or status 422/500 and the error).
    """

    def __init__(self, state, root: str, storage: dict, serve_cfg: dict) -> None:
        self.cfg = ServeConfig.model_validate(serve_cfg)
        self.storage = Storage(StorageConfig.model_validate(storage))
        self.root = root
        self.state = state
        self.device = gen.choose_device(self.cfg.num_gpus)
        if self.device == "cpu" and self.cfg.num_cpus >= 1:
            torch.set_num_threads(max(1, int(self.cfg.num_cpus)))
        self.model: gen.LoadedModel | None = None
        self.loaded_key: tuple[str, int] | None = None
        self.loaded_target: tuple[str, str] | None = None
        self.failed: dict[str, Any] | None = None
        self.user_ref: str | None = None
        self.replica = _replica_id()
        self._lock: asyncio.Lock | None = None
        self._ready: asyncio.Event | None = None
        self._poller: asyncio.Task | None = None
        self._loading: asyncio.Task | None = None
        self._others: OrderedDict[tuple[str, str], gen.LoadedModel] = OrderedDict()  # render_version's, LRU
        self._others_lock: asyncio.Lock | None = None
        self.fake_ms = fake_forward_costs(self.cfg.fake_forward_ms) if self.cfg.fake_forward_ms else None
        self.forward_batch = int(self.cfg.max_batch_size)
        self.calls: deque[int] = deque(maxlen=KEEP_SIZES)  # requests per handle call, the last ones
        self.calls_total = 0
        self.batcher: ContinuousBatcher[Job, RenderResult] = ContinuousBatcher(
            self._forward, max_batch_size=self.forward_batch, size_of=lambda req: req.images, prepare=self._prepare
        )

    def _sync(self) -> tuple[asyncio.Lock, asyncio.Event]:
        if self._lock is None:
            self._lock, self._ready = asyncio.Lock(), asyncio.Event()
        return self._lock, self._ready  # type: ignore[return-value]

    # ---- model management
    async def reconfigure(self, user_config: dict[str, Any]) -> None:
        """user_config: {"model": URI or version, "max_batch_size"?: int (images per forward pass)}."""
        if (
            not isinstance(user_config, dict)
            or not isinstance(user_config.get("model"), str)
            or not user_config["model"]
        ):
            raise ValueError('GeneratorDeployment user_config needs {"model": "<model dir URI or registry version>"}')
        unknown = set(user_config) - {"model", "max_batch_size"}
        if unknown:
            raise ValueError(f"unknown GeneratorDeployment user_config keys: {sorted(unknown)} (model, max_batch_size)")
        if "max_batch_size" in user_config:
            self.batcher.set_max_batch_size(int(user_config["max_batch_size"]))
            self.forward_batch = int(user_config["max_batch_size"])
        ref = user_config["model"]
        self.user_ref = ref
        uri, label = await asyncio.to_thread(gen.resolve_model, self.storage, ref, self.root)
        cur = await self.state.from_user_config.remote(ref, uri, label)
        await self._load(cur, raise_errors=True)
        self._ensure_poller()

    async def _load(self, cur: dict[str, Any], raise_errors: bool = False) -> None:
        """Load the pointer's target (if not held yet) and swap it in."""
        lock, ready = self._sync()
        async with lock:
            key = (cur["epoch"], int(cur["generation"]))
            target = cur["target"]
            if target is None or key == self.loaded_key:
                return
            wanted = (target["uri"], target["label"])
            if self.model is not None and self.loaded_target == wanted:
                self.loaded_key = key  # the same model under a new generation number
                return
            t0 = time.time()
            try:
                model = await asyncio.to_thread(
                    gen.load_model,
                    self.storage,
                    target["uri"],
                    self.root,
                    self.device,
                    resolved=(target["uri"], target["label"]),
                )
            except Exception as e:  # noqa: BLE001 - keep serving the old model, report the failure
                self.failed = {"epoch": key[0], "generation": key[1], "error": str(e)}
                serving_metrics().model_load_failed()
                log.error("replica %s: loading model %s failed: %s", self.replica, target["uri"], e)
                if raise_errors:
                    raise
                return
            if self.cfg.cuda_graphs and model.device == "cuda" and self.fake_ms is None:
                # every bucket captured before the swap, between batches of the old model
                model.synthesis = await self.batcher.run_on_forward_thread(capture_graphs, model)
            previous = self.model.version if self.model is not None else None
            self.model = model  # the swap: batches already running keep their snapshot
            serving_metrics().model_loaded(model.version, previous)
            self.loaded_key = key
            self.loaded_target = wanted
            self.failed = None
            ready.set()
            log.info(
                "replica %s: serving model %s (%s) after %.1fs",
                self.replica,
                model.version,
                model.uri,
                time.time() - t0,
            )
        await self._report()

    def _ensure_poller(self) -> None:
        if self._poller is None or self._poller.done():
            self._poller = asyncio.get_running_loop().create_task(self._poll_loop())

    async def _report(self) -> None:
        key = self.loaded_key
        await self.state.report.remote(
            self.replica,
            {
                "epoch": key[0] if key else None,
                "generation": key[1] if key else None,
                "model_version": self.model.version if self.model else None,
                "loading": bool(self._loading and not self._loading.done()),
                "failed": self.failed,
            },
        )

    async def _poll_loop(self) -> None:
        while True:
            try:
                cur = await self.state.current.remote()
                if cur["target"] is None and self.user_ref is not None:  # the pointer restarted empty
                    uri, label = await asyncio.to_thread(gen.resolve_model, self.storage, self.user_ref, self.root)
                    cur = await self.state.from_user_config.remote(self.user_ref, uri, label)
                key = (cur["epoch"], int(cur["generation"]))
                failed_here = self.failed and (self.failed["epoch"], self.failed["generation"]) == key
                if key != self.loaded_key and not failed_here and (self._loading is None or self._loading.done()):
                    self._loading = asyncio.get_running_loop().create_task(self._load(cur))
                await self._report()
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - the poller must survive transient errors
                log.warning("replica %s: model pointer poll failed: %s", self.replica, e)
            await asyncio.sleep(self.cfg.model_poll_interval_s)

    async def check_health(self) -> None:
        self._ensure_poller()

    async def _wait_ready(self) -> gen.LoadedModel:
        _, ready = self._sync()
        self._ensure_poller()
        if self.model is None:
            await asyncio.wait_for(ready.wait(), timeout=self.cfg.reload_timeout_s)
        assert self.model is not None
        return self.model

    # ---- requests
    async def info(self) -> dict[str, Any]:
        model = await self._wait_ready()
        return {
            **model.describe(),
            "replica": self.replica,
            "generation": self.loaded_key[1] if self.loaded_key else None,
        }

    def _prepare(self, req: RenderRequest) -> Job:
        """On arrival (the event loop, while a batch runs): a plain request's latents."""
        model = self.model
        if model is None or req.control or self.fake_ms is not None:
            return Job(req)
        return Job(req, seeds_to_z(req.seeds, model.G.z_dim))

    async def render(self, req: RenderRequest) -> RenderResult:
        """One request through the continuous batcher; an ok result carries its timing
        (replica_s: arrival to result here, forward_s: its batch's generator pass), which the
        ingress turns into Server-Timing."""
        self.calls.append(1)
        self.calls_total += 1
        return await self._render_one(req)

    async def _render_one(self, req: RenderRequest) -> RenderResult:
        await self._wait_ready()
        t0 = time.perf_counter()
        res = await self.batcher.submit(req)
        if res.ok:
            forward_s = res.timing.forward_s if res.timing else 0.0
            res = res.timed(RenderTiming(time.perf_counter() - t0, forward_s))
        return res

    async def render_many(self, reqs: list[RenderRequest]) -> list[RenderResult]:
        """An ingress micro-batch (serve/hop.py): every request through the batcher as if it had
        come alone, answered in one reply (one object for all their images, not one per request)."""
        self.calls.append(len(reqs))
        self.calls_total += 1
        return list(await asyncio.gather(*(self._render_one(r) for r in reqs)))

    async def record_autoscaling_stats(self) -> dict[str, float]:
        """Serve's custom autoscaling metric (serve/autoscale.py): the images queued or rendering
        here. A micro-batched call counts once among Serve's ongoing requests, its images do not."""
        return {IMAGES_IN_FLIGHT: float(self.batcher.images_in_flight())}

    async def batch_stats(self) -> dict[str, Any]:
        """What the batcher did (benchmarks, operators): batches and images so far, the images
        of the last (up to 10,000) batches, the requests waiting now, and the requests per call
        of the last calls (1 for render, the micro-batch for render_many)."""
        st = self.batcher.stats
        return {
            "replica": self.replica,
            "batches": st.batches,
            "images": st.images,
            "sizes": list(st.sizes),
            "queued": self.batcher.queued(),
            "calls": self.calls_total,
            "call_sizes": list(self.calls),
        }

    async def render_version(self, req: RenderRequest) -> RenderResult:
        """Render with a given model instead of the pointer's: req.model (the /compare pairs,
        data/comparison.py). The held model when it is that one, else one loaded here and kept
        (at most MAX_OTHER_MODELS, least recently used dropped). Not batched (a pair is one
        person's click) but run on the forward thread between batches. Conditional models
        render with unknown attributes. Answers what render() answers."""
        await self._wait_ready()
        if req.model is None:
            return RenderResult.failure(422, "render_version needs the model to render with")
        wanted = (str(req.model.uri), str(req.model.label))
        try:
            model = self.model if self.loaded_target == wanted and self.model is not None else await self._other(wanted)
        except Exception as e:  # noqa: BLE001 - report to the ingress, keep the replica alive
            log.error("replica %s: loading model %s for a comparison failed: %s", self.replica, wanted[0], e)
            return RenderResult.failure(500, f"could not load model {wanted[1] or wanted[0]}: {e}")
        seeds = list(req.seeds)
        c = torch.full((len(seeds), 3), -1, dtype=torch.long) if model.conditional else None  # [N,3] unknown
        try:
            images = await self.batcher.run_on_forward_thread(
                gen.generate, model.G, seeds, req.truncation, c, model.device, self.forward_batch
            )
        except Exception as e:  # noqa: BLE001
            log.exception("replica %s: generation with %s failed", self.replica, model.version)
            return RenderResult.failure(500, f"generation failed: {e}")
        return RenderResult.success(
            model.describe(), images, [[-1, -1, -1]] * len(seeds) if model.conditional else None
        )

    async def _other(self, wanted: tuple[str, str]) -> gen.LoadedModel:
        if self._others_lock is None:
            self._others_lock = asyncio.Lock()
        async with self._others_lock:
            model = self._others.pop(wanted, None)
            if model is None:
                model = await asyncio.to_thread(
                    gen.load_model, self.storage, wanted[0], self.root, self.device, resolved=wanted
                )
                log.info("replica %s: loaded %s (%s) for comparisons", self.replica, model.version, model.uri)
            self._others[wanted] = model
            while len(self._others) > MAX_OTHER_MODELS:
                self._others.popitem(last=False)
            return model

    # ---- the forward thread
    def _forward(self, jobs: list[Job]) -> list[RenderResult]:
        """One batch (on the forward thread): plain requests in one generator pass, requests
        with controls in one synthesis pass, refusals answered without rendering."""
        model = self.model  # snapshot: the whole batch uses one model even if a swap lands now
        assert model is not None
        plan = plan_batch(model, jobs)
        if plan.plain:
            self._render_plain(model, jobs, plan.plain, plan.seeds, plan.psis, plan.conds, plan.zs, plan.results)
        if plan.controlled:
            self._render_controlled(model, jobs, plan.controlled, plan.results)
        return plan.results  # type: ignore[return-value]

    def _render_plain(self, model, jobs, plain, seeds, psis, conds, zs, results) -> None:
        describe = model.describe()
        t_batch = time.perf_counter()
        try:
            if self.fake_ms is not None:  # serve.fake_forward_ms: benchmarks and tests
                time.sleep((self.fake_ms[0] + self.fake_ms[1] * len(seeds)) / 1000)
                images = fake_images(seeds, model.resolution)
            else:
                z = torch.cat(
                    [z if z is not None else seeds_to_z(jobs[i].req.seeds, model.G.z_dim) for i, z in zip(plain, zs)]
                )
                c = torch.tensor(conds, dtype=torch.long) if model.conditional else None  # [N,3]
                images = gen.generate(
                    model.G, seeds, psis, c, model.device, self.forward_batch, model.synthesis, z=z
                )  # uint8 [N,H,W,3]
        except Exception as e:  # noqa: BLE001 - report per request, keep the replica alive
            log.exception("replica %s: generation failed", self.replica)
            for i in plain:
                results[i] = RenderResult.failure(500, f"generation failed: {e}")
            return
        forward_s = time.perf_counter() - t_batch
        serving_metrics().batch(model.version, len(seeds), len(plain), forward_s)
        timing = RenderTiming(0.0, forward_s)
        pos = 0
        for i in plain:
            k = jobs[i].req.images
            results[i] = RenderResult.success(
                describe, images[pos : pos + k], conds[pos : pos + k] if model.conditional else None, timing
            )
            pos += k

    def _render_controlled(
        self, model: gen.LoadedModel, jobs: list[Job], controlled: list[tuple[int, Any]], results: list
    ) -> None:
        """Requests with mix / interpolate / edit: their own ws, one synthesis pass for all of them."""
        work = [(list(jobs[i].req.seeds), jobs[i].req.truncation, cond, ctl) for i, (cond, ctl) in controlled]
        forward_s = 0.0
        try:
            t_batch = time.perf_counter()
            out = render_controlled(model, work, self.forward_batch)
            forward_s = time.perf_counter() - t_batch
            n = sum(len(w[0]) for w, o in zip(work, out) if not isinstance(o, Exception))
            if n:
                serving_metrics().batch(model.version, n, len(work), forward_s)
        except Exception as e:  # noqa: BLE001 - report per request, keep the replica alive
            log.exception("replica %s: controlled generation failed", self.replica)
            out = [RuntimeError(f"generation failed: {e}")] * len(work)
        describe = model.describe()
        for (i, (cond, _)), o in zip(controlled, out):
            if isinstance(o, UserError):
                results[i] = RenderResult.failure(422, str(o))
            elif isinstance(o, Exception):
                results[i] = RenderResult.failure(500, str(o))
            else:
                results[i] = RenderResult.success(
                    describe, o, [cond] * len(o) if model.conditional else None, RenderTiming(0.0, forward_s)
                )
