"""`facegen quickstart`: the whole loop on the bundled sample of real faces, on CPU, in minutes.

prepare (Ray Data) -> train a few hundred images (Ray Train, tiny StyleGAN, progressive
4 -> 16) -> evaluate (FID/KID/precision-recall with the standard Inception) -> promote ->
serve (Ray Serve on localhost) -> generate (HTTP + a grid PNG) -> feedback (HTTP) -> retrain
(the approved face merged into a new dataset version, a candidate warm-started from the
serving model) -> promotion gate (FID of candidate vs serving) -> swap the running app's model
when the gate promotes -> done.

Everything lands below --root (default ./facegen-quickstart): new dataset versions, new runs
(quickstart-<time>, quickstart-retrain-<time>), registered model versions, feedback records.
Nothing already there is deleted. The samples are blurry 16x16 blobs: the point is the
plumbing; quality comes from real runs (configs/utkface-64.yaml on GPUs).
"""

from __future__ import annotations

import argparse
import base64
import datetime as _dt
import json
import secrets
import time
from importlib import resources
from pathlib import Path

from facegen_ray.commands._common import add_config_args, config_from_args
from facegen_ray.config import with_updates
from facegen_ray.data.feedback import iter_feedback
from facegen_ray.errors import UserError
from facegen_ray.registry import Registry
from facegen_ray.serve.admin_client import configured_token, reload_app
from facegen_ray.storage import Layout, Storage, join

# Imported where used, not here: ray, httpx and the data/train/metrics/serve/lifecycle modules each
# step uses: cli.py imports every command module to build the parser, which loads no numpy/torch/ray
# (tests/test_layers.py).


def _second_rater(url: str, image_id: str, local_address: str | None) -> bool:
    """Quickstart step 7's second rater: a session and an approval of `image_id`, from
    `local_address` (None: the default). False when that address cannot be bound here."""
    import httpx

    transport = httpx.HTTPTransport(local_address=local_address) if local_address else None
    try:
        with httpx.Client(base_url=url, timeout=60, transport=transport) as second:
            second.get("/session").raise_for_status()
            second.post("/feedback", json={"image_id": image_id, "approved": True}).raise_for_status()
    except httpx.ConnectError:
        if local_address is None:
            raise
        return False
    return True


def _step(n: int, total: int, what: str) -> float:
    print(f"\n[quickstart {n}/{total}] {what}", flush=True)
    return time.perf_counter()


def _done(t0: float, msg: str) -> None:
    print(f"[quickstart] {msg} ({time.perf_counter() - t0:.1f}s)", flush=True)


def _fid(metrics: dict | None) -> str:
    value = (metrics or {}).get("fid")
    return f"{value:.1f}" if isinstance(value, (int, float)) else "n/a"


def quickstart_config_path() -> Path:
    return Path(str(resources.files("facegen_ray") / "configs" / "quickstart.yaml"))


def sample_path() -> Path:
    return Path(str(resources.files("facegen_ray") / "sample_data" / "utkface-sample.zip"))


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "quickstart",
        help="run prepare -> train -> evaluate -> serve -> generate -> feedback on the bundled sample",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--num-gen", type=int, default=64, help="generated images for the FID/KID/PR step (default 64)")
    p.add_argument("--port", type=int, default=8000, help="HTTP port for the Serve step (default 8000)")
    p.add_argument(
        "--out", default=None, help="where to write the sample grid PNG (default <root>/quickstart-grid.png)"
    )
    add_config_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import httpx

    total = 9
    t_start = time.perf_counter()
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    # the bundled tiny CPU config unless --config names another; --root/--set apply on top
    args.config = args.config or str(quickstart_config_path())
    cfg = config_from_args(
        args,
        {
            "storage.root": args.root or "./facegen-quickstart",
            "train.run_name": f"quickstart-{stamp}",
            "serve.port": args.port,
        },
    )
    storage = Storage(cfg.storage)
    layout = Layout(cfg.storage.root)
    storage.check_writable(cfg.storage.root)
    dataset = layout.dataset("faces")
    cfg = with_updates(cfg, {"train.dataset": dataset})
    print(f"[quickstart] storage root: {layout.root}", flush=True)

    # 1. prepare ------------------------------------------------------------------------
    from facegen_ray.data.pipeline import prepare, summary

    t0 = _step(
        1,
        total,
        f"prepare: {sample_path().name} -> {dataset} at {cfg.data.resolution}x{cfg.data.resolution} (Ray Data)",
    )
    prep = prepare(cfg, [str(sample_path())], dataset, storage=storage)
    _done(t0, summary(prep))

    # 2. train --------------------------------------------------------------------------
    from facegen_ray.train.trainer import train

    t0 = _step(
        2,
        total,
        f"train: run {cfg.train.run_name}, {cfg.train.total_images} images, "
        f"{cfg.train.start_resolution}->{cfg.model.resolution} px, loss {cfg.loss.name} (Ray Train)",
    )
    outcome = train(cfg, storage)
    if not outcome.model_uri:
        raise UserError("training finished without exporting a model (no checkpoint was written)")
    _done(
        t0,
        f"trained {outcome.images_seen} images; model {outcome.version} at {outcome.model_uri}; "
        f"samples in {join(outcome.run_uri, 'samples')}",
    )

    # 3. evaluate -----------------------------------------------------------------------
    from facegen_ray.metrics.evaluate import evaluate_model

    t0 = _step(3, total, f"evaluate: FID/KID/precision-recall, {args.num_gen} generated vs the prepared reals")
    ev_cfg = with_updates(
        cfg, {"eval.num_gen": args.num_gen, "eval.kid_subset_size": min(cfg.eval.kid_subset_size, args.num_gen)}
    ).eval
    metrics = evaluate_model(storage, outcome.model_uri, dataset, ev_cfg, metrics=["fid", "kid", "pr"])
    keys = ("fid", "kid", "precision", "recall", "num_gen", "num_real")
    print(json.dumps({k: metrics.get(k) for k in keys}, default=str), flush=True)
    _done(t0, "evaluated (a few hundred images of a few-second run: expect a large FID)")

    # 4. promote ------------------------------------------------------------------------
    t0 = _step(4, total, f"promote: registry version {outcome.version} -> serving")
    reg = Registry(storage, cfg.storage.root)
    reg.set_metrics(outcome.version, {k: metrics.get(k) for k in ("fid", "num_gen", "num_real") if k in metrics})
    reg.promote(outcome.version)
    _done(t0, f"serving version is now {reg.serving()}")

    # 5. serve --------------------------------------------------------------------------
    import ray
    from ray import serve

    from facegen_ray.serve.app import APP_NAME, build_app, http_timeouts

    t0 = _step(5, total, f"serve: Ray Serve app on http://127.0.0.1:{cfg.serve.port}/")
    serve.start(http_options={"host": "127.0.0.1", "port": cfg.serve.port, **http_timeouts(cfg.serve)})
    # one replica; no CPU reservations, so the retrain step's Ray Train worker and Ray Data
    # tasks can be scheduled next to the running app on a 2-core machine. A fresh admin token
    # (unless FACEGEN_ADMIN_TOKEN is set) lets step 9 swap the model through /admin/reload.
    admin = configured_token(cfg) or secrets.token_hex(16)
    app_args = {
        "model": "serving",
        "root": cfg.storage.root,
        "config": args.config,
        "min_replicas": 1,
        "max_replicas": 1,
        "num_cpus": 0,
        "ingress_num_cpus": 0,
        "admin_token": admin,
    }
    serve.run(build_app(app_args), name=APP_NAME, route_prefix="/")
    url = f"http://127.0.0.1:{cfg.serve.port}"
    try:
        with httpx.Client(base_url=url, timeout=60) as client:
            health = client.get("/healthz").json()
            _done(t0, f"healthz: {health}")

            # 6. generate -------------------------------------------------------------------
            t0 = _step(6, total, "generate: POST /generate (4 faces) and a 4x4 grid")
            r = client.post("/generate", json={"seed": 0, "num_images": 4, "truncation": 0.7, "format": "png"})
            r.raise_for_status()
            body = r.json()
            out_dir = Path(layout.root) if "://" not in layout.root else Path(".")
            for img in body["images"]:
                (out_dir / f"quickstart-seed{img['seed']}.png").write_bytes(base64.b64decode(img["data"]))
            from facegen_ray.serve.generation import encode_image, generate, load_model, make_grid

            loaded = load_model(storage, outcome.model_uri, cfg.storage.root)
            grid = make_grid(generate(loaded.G, list(range(16)), 0.7))
            grid_path = Path(args.out) if args.out else out_dir / "quickstart-grid.png"
            grid_path.write_bytes(encode_image(grid, "png"))
            _done(
                t0,
                f"{len(body['images'])} images from model {body['model_version']} "
                f"(ids {', '.join(i['image_id'][:12] for i in body['images'])}); grid: {grid_path}",
            )

            # 7. feedback -------------------------------------------------------------------
            t0 = _step(7, total, "feedback: two raters approve the first face, reject the second (POST /feedback)")
            ids = [i["image_id"] for i in body["images"]]
            client.get("/session").raise_for_status()  # a rater session cookie: feedback needs one
            a = client.post(
                "/feedback", json={"image_id": ids[0], "approved": True, "rating": 5, "comment": "quickstart"}
            )
            b = client.post("/feedback", json={"image_id": ids[1], "approved": False, "rating": 2})
            bad = client.post("/feedback", json={"image_id": "0" * 32, "approved": True})
            # retrain.min_approvals: 2 raters on 2 networks (serve/source.py); the second rater
            # connects from another loopback /24, where the system allows binding one
            one_network = not _second_rater(url, ids[0], "127.1.0.1") and _second_rater(url, ids[0], None)
            for resp in (a, b):
                resp.raise_for_status()

            stored = list(iter_feedback(storage, cfg.storage.root))
            _done(
                t0,
                f"feedback ids {a.json()['feedback_id']}, {b.json()['feedback_id']} (unknown image -> "
                f"{bad.status_code}); {len(stored)} feedback records in {layout.feedback()}",
            )

            # 8. retrain + gate -------------------------------------------------------------
            from facegen_ray.lifecycle.retrain import retrain

            t0 = _step(
                8,
                total,
                f"retrain: approved feedback -> new dataset version -> candidate warm-started "
                f"from {outcome.version} ({cfg.retrain.images} images, Ray Train) -> promotion gate",
            )
            # the demo's raters are seconds old: no new-rater quarantine here (it stays on by default)
            updates = {"gate.num_gen": cfg.gate.num_gen or args.num_gen, "retrain.quarantine_new_rater_minutes": 0}
            if one_network:  # both raters came from 127.0.0.1: one source, which min_approvals 2 refuses
                updates["retrain.min_approvals"] = 1
            rcfg = with_updates(cfg, updates)
            out = retrain(rcfg, storage=storage, run_name=f"quickstart-retrain-{stamp}")
            _done(
                t0,
                f"candidate {out['candidate']}: {out['decision']} (FID {_fid(out['candidate_metrics'])} vs "
                f"serving {_fid(out['serving_metrics'])}, tolerance {rcfg.gate.fid_tolerance:+.0%}); "
                f"registry serving: {out['serving']}",
            )

            # 9. swap -----------------------------------------------------------------------
            if out["decision"] == "promoted":
                t0 = _step(
                    9, total, f"swap: POST /admin/reload -> the running app serves {out['candidate']} (no restart)"
                )
                body = reload_app(url, out["candidate"], admin, timeout=300)
                after = client.post("/generate", json={"seed": 0, "num_images": 1, "truncation": 0.7}).json()
                _done(
                    t0,
                    f"/healthz: {client.get('/healthz').json()['model_version']}; "
                    f"generate answered by {after['model_version']} ({body.get('replicas')} replica(s))",
                )
            else:
                t0 = _step(9, total, f"swap: none, the gate kept {out['serving']} (the running app is unchanged)")
                _done(
                    t0,
                    f"/healthz: {client.get('/healthz').json()['model_version']}; "
                    f"`facegen gate {out['candidate']} --tolerance 0.5` re-runs the gate with more slack",
                )
    finally:
        serve.shutdown()
        ray.shutdown()

    print(
        f"\n[quickstart] done in {time.perf_counter() - t_start:.0f}s. Next: `facegen serve serving --root {layout.root}` "
        f"and open http://127.0.0.1:{cfg.serve.port}/ to rate faces.",
        flush=True,
    )
    return 0
