"""The generator deployment: holds G_ema on its device and renders batches of requests.

    ModelState (serve/model_state.py) ──polled──► GeneratorDeployment (autoscaling, num_gpus/
    num_cpus from ServeConfig) ◄── handle.render.remote(request item) ── FacegenIngress

@serve.batch: requests are the batch items (batch_size_fn = images per request), so one
request's images always come from one model snapshot; forward passes hold at most
ServeConfig.max_batch_size images.

Model swaps (no dropped requests): the replica loads the new generator in a thread while it
keeps serving, then swaps one reference; a batch takes its model snapshot when it starts, so
in-flight requests finish on the old model. The target comes from `user_config: {"model": ...}`
(`reconfigure`) or from the ModelState pointer (moved by the ingress's admin routes).
"""

import asyncio
import logging
import os
import time
from collections import OrderedDict
from typing import Any

import torch
from ray import serve

from facegen_ray.config import ServeConfig, StorageConfig
from facegen_ray.errors import UserError
from facegen_ray.models import encode_attributes
from facegen_ray.models.sampling import GraphedSynthesis
from facegen_ray.observability.metrics import serving_metrics
from facegen_ray.serve import generation as gen
from facegen_ray.serve.control import control_of, render_controlled
from facegen_ray.serve.schemas import MAX_IMAGES_PER_REQUEST
from facegen_ray.storage import Storage

log = logging.getLogger("ray.serve")

GENERATOR_NAME = "GeneratorDeployment"
MAX_OTHER_MODELS = 2  # versions held besides the pointer's model (render_version: a comparison's two)


def _images_in(items: list[dict[str, Any]]) -> int:
    return sum(len(it["seeds"]) for it in items)


def batch_wait_for(in_flight: int, wait_s: float, adaptive: bool) -> float:
    """The batch wait for a request that arrives with `in_flight` requests in the replica (itself
    included): none when it is alone and the wait is adaptive, else the configured one."""
    return float(wait_s) if (in_flight > 1 or not adaptive) else 0.0


def _replica_id() -> str:
    try:
        return str(serve.get_replica_context().replica_id.unique_id)
    except Exception:  # noqa: BLE001 - outside Serve (unit use)
        return f"local-{os.getpid()}"


@serve.deployment(name=GENERATOR_NAME)
class GeneratorDeployment:
    """Holds G_ema on its device and renders batches of requests.

    Item (one HTTP request): {"seeds": [int], "truncation": float, "attributes": dict | None,
    "mix"?, "interpolate"?, "edit"? (see serve/control.py: such requests get their own ws and
    share one synthesis pass per batch; plain requests render exactly as before)}.
    Result: {"ok": True, "model": LoadedModel.describe(), "images": uint8 [k,H,W,3],
    "conditions": [[a,g,r]] | None} or {"ok": False, "status": 422, "error": message}.
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
        self._in_flight = 0  # requests in render() now (adaptive batch wait)
        self._set_batching(self.cfg.max_batch_size, self.cfg.batch_wait_timeout_s)

    # ---- batching parameters
    def _set_batching(self, max_batch_size: int, wait_s: float) -> None:
        self.forward_batch = int(max_batch_size)
        # the queue gathers whole requests; a single request may hold up to 16 images
        self.render_batch.set_max_batch_size(max(int(max_batch_size), MAX_IMAGES_PER_REQUEST))
        self.batch_wait_s = float(wait_s)
        self.render_batch.set_batch_wait_timeout_s(self.batch_wait_s)

    def _sync(self) -> tuple[asyncio.Lock, asyncio.Event]:
        if self._lock is None:
            self._lock, self._ready = asyncio.Lock(), asyncio.Event()
        return self._lock, self._ready  # type: ignore[return-value]

    # ---- model management
    async def reconfigure(self, user_config: dict[str, Any]) -> None:
        """user_config: {"model": URI or version, "max_batch_size"?: int, "batch_wait_timeout_s"?: float}."""
        if (
            not isinstance(user_config, dict)
            or not isinstance(user_config.get("model"), str)
            or not user_config["model"]
        ):
            raise ValueError('GeneratorDeployment user_config needs {"model": "<model dir URI or registry version>"}')
        unknown = set(user_config) - {"model", "max_batch_size", "batch_wait_timeout_s"}
        if unknown:
            raise ValueError(f"unknown GeneratorDeployment user_config keys: {sorted(unknown)}")
        if "max_batch_size" in user_config or "batch_wait_timeout_s" in user_config:
            self._set_batching(
                int(user_config.get("max_batch_size", self.forward_batch)),
                float(user_config.get("batch_wait_timeout_s", self.render_batch.get_batch_wait_timeout_s())),
            )
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
            if self.cfg.cuda_graphs and model.device == "cuda":
                model.synthesis = GraphedSynthesis(model.G.synthesis, model.device)  # captured on first use
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

    async def render(self, item: dict[str, Any]) -> dict[str, Any]:
        """One request through the batcher; an ok result carries "timing": {"replica_s": arrival
        to result here, "forward_s": its batch's generator pass} (the ingress's Server-Timing)."""
        await self._wait_ready()
        t0 = time.perf_counter()
        # Adaptive batch wait: a request that finds no other one in this replica (queued or being
        # rendered) starts its batch at once instead of waiting batch_wait_timeout_s for company
        # that is not coming; with others in flight the batcher waits as configured. The batcher
        # reads the timeout when it takes a batch's first request, i.e. after this line.
        self._in_flight += 1
        try:
            self.render_batch.set_batch_wait_timeout_s(
                batch_wait_for(self._in_flight, self.batch_wait_s, self.cfg.adaptive_batch_wait)
            )
            res = await self.render_batch(item)
        finally:
            self._in_flight -= 1
        if res.get("ok"):
            res = {**res, "timing": {"replica_s": time.perf_counter() - t0, "forward_s": res.get("forward_s", 0.0)}}
            res.pop("forward_s", None)
        return res

    async def render_version(self, item: dict[str, Any]) -> dict[str, Any]:
        """Render with a given model instead of the pointer's: item {"model": {"uri", "label"},
        "seeds", "truncation"} (the /compare pairs, data/comparison.py). The held model when it
        is that one, else one loaded here and kept (at most MAX_OTHER_MODELS, least recently
        used dropped). Not batched: a pair is one person's click. Conditional models render
        with unknown attributes. Answers what render() answers."""
        await self._wait_ready()
        wanted = (str(item["model"]["uri"]), str(item["model"]["label"]))
        try:
            model = self.model if self.loaded_target == wanted and self.model is not None else await self._other(wanted)
        except Exception as e:  # noqa: BLE001 - report to the ingress, keep the replica alive
            log.error("replica %s: loading model %s for a comparison failed: %s", self.replica, wanted[0], e)
            return {"ok": False, "status": 500, "error": f"could not load model {wanted[1] or wanted[0]}: {e}"}
        seeds = [int(s) for s in item["seeds"]]
        c = None
        if model.conditional:
            import torch

            c = torch.full((len(seeds), 3), -1, dtype=torch.long)  # [N,3] unknown age/gender/race
        try:
            images = await asyncio.to_thread(
                gen.generate, model.G, seeds, float(item["truncation"]), c, model.device, self.forward_batch
            )
        except Exception as e:  # noqa: BLE001
            log.exception("replica %s: generation with %s failed", self.replica, model.version)
            return {"ok": False, "status": 500, "error": f"generation failed: {e}"}
        return {
            "ok": True,
            "model": model.describe(),
            "images": images,
            "conditions": [[-1, -1, -1]] * len(seeds) if model.conditional else None,
        }

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

    @serve.batch(max_batch_size=MAX_IMAGES_PER_REQUEST, batch_wait_timeout_s=0.01, batch_size_fn=_images_in)
    async def render_batch(self, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        model = self.model  # snapshot: the whole batch uses one model even if a swap lands now
        assert model is not None
        results: list[dict[str, Any] | None] = [None] * len(items)
        seeds: list[int] = []
        psis: list[float] = []
        conds: list[list[int]] = []
        owners: list[int] = []
        controlled: list[tuple[int, Any]] = []  # (item index, its controls): rendered by serve/control.py
        for i, it in enumerate(items):
            attrs = it.get("attributes")
            cond = None
            if attrs is not None:
                if not model.conditional:
                    results[i] = {
                        "ok": False,
                        "status": 422,
                        "error": (
                            f"model {model.version} is unconditional: it cannot generate by attributes; "
                            "omit 'attributes' (or serve a model trained with model.conditional=true)"
                        ),
                    }
                    continue
            if model.conditional:
                a = attrs or {}
                try:
                    cond = encode_attributes(a.get("age"), a.get("gender"), a.get("race"), model.cfg)[0].tolist()
                except UserError as e:
                    results[i] = {"ok": False, "status": 422, "error": str(e)}
                    continue
            try:
                ctl = control_of(it)
            except UserError as e:
                results[i] = {"ok": False, "status": 422, "error": str(e)}
                continue
            if ctl is not None:
                controlled.append((i, (cond, ctl)))
                results[i] = {"pending": True}  # filled below; the plain rows skip it
                continue
            for s in it["seeds"]:
                seeds.append(int(s))
                psis.append(float(it["truncation"]))
                conds.append(cond if cond is not None else [-1, -1, -1])
                owners.append(i)
        if seeds:
            c = torch.tensor(conds, dtype=torch.long) if model.conditional else None  # [N,3]
            try:
                t_batch = time.perf_counter()
                images = await asyncio.to_thread(
                    gen.generate, model.G, seeds, psis, c, model.device, self.forward_batch, model.synthesis
                )  # uint8 [N,H,W,3]
                forward_s = time.perf_counter() - t_batch
                serving_metrics().batch(model.version, len(seeds), len(set(owners)), forward_s)
            except Exception as e:  # noqa: BLE001 - report per request, keep the replica alive
                log.exception("replica %s: generation failed", self.replica)
                images, err = None, f"generation failed: {e}"
            pos = 0
            for i in range(len(items)):
                if results[i] is not None:  # refused, or a request with controls
                    continue
                k = len(items[i]["seeds"])
                if images is None:
                    results[i] = {"ok": False, "status": 500, "error": err}
                else:
                    results[i] = {
                        "ok": True,
                        "model": model.describe(),
                        "images": images[pos : pos + k],
                        "conditions": [conds[pos + j] for j in range(k)] if model.conditional else None,
                        "forward_s": forward_s,
                    }
                pos += k
        if controlled:
            await self._render_controlled(model, items, controlled, results)
        return results  # type: ignore[return-value]

    async def _render_controlled(
        self,
        model: gen.LoadedModel,
        items: list[dict[str, Any]],
        controlled: list[tuple[int, Any]],
        results: list[dict[str, Any] | None],
    ) -> None:
        """Requests with mix / interpolate / edit: their own ws, one synthesis pass for all of them."""
        jobs = [(list(items[i]["seeds"]), float(items[i]["truncation"]), cond, ctl) for i, (cond, ctl) in controlled]
        forward_s = 0.0
        try:
            t_batch = time.perf_counter()
            out = await asyncio.to_thread(render_controlled, model, jobs, self.forward_batch)
            forward_s = time.perf_counter() - t_batch
            n = sum(len(j[0]) for j, o in zip(jobs, out) if not isinstance(o, Exception))
            if n:
                serving_metrics().batch(model.version, n, len(jobs), forward_s)
        except Exception as e:  # noqa: BLE001 - report per request, keep the replica alive
            log.exception("replica %s: controlled generation failed", self.replica)
            out = [RuntimeError(f"generation failed: {e}")] * len(jobs)
        for (i, (cond, _)), o in zip(controlled, out):
            if isinstance(o, UserError):
                results[i] = {"ok": False, "status": 422, "error": str(o)}
            elif isinstance(o, Exception):
                results[i] = {"ok": False, "status": 500, "error": str(o)}
            else:
                results[i] = {
                    "ok": True,
                    "model": model.describe(),
                    "images": o,
                    "conditions": [cond] * len(o) if model.conditional else None,
                    "forward_s": forward_s,
                }
