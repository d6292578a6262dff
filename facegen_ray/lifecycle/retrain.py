"""The feedback loop's driver: base shards + approved feedback -> a warm-started candidate ->
the promotion gate. What `facegen retrain` runs.

    1. the serving model (registry) and where to warm-start from: the checkpoint of its run
       that it was exported from (runs/<run>/checkpoint-<images_seen>, checked against the
       model's weights by digest), else its model directory (G/G_ema only, D fresh);
    2. feedback merge (data/feedback_merge.py) -> a new version of the base dataset
       (NoApprovedFeedback -> exit 2 and nothing written, unless --allow-empty);
    3. a new Ray Train run `<retrain.run_prefix>-<serving version>-<UTC time>` with the serving
       run's own model/loss/train settings (runs/<run>/run.json; the model section always from
       the model directory), --set train.*/loss.* overrides on top, and: train.dataset = the
       merged version, train.start_resolution = model.resolution (every step at the final
       stage, alpha 1), train.init_from = step 1's source, train.total_images = the source's
       images_seen + retrain.images (counters continue, so EMA/regulariser phases carry on);
       exported and registered as a candidate version;
    4. the gate (lifecycle/gate.py): candidate vs serving on the same eval, promote on pass.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from facegen_ray.config import FacegenConfig, with_updates
from facegen_ray.data.feedback_merge import NoApprovedFeedback, merge_feedback, summary
from facegen_ray.data.shards import _split_version, read_manifest
from facegen_ray.errors import UserError
from facegen_ray.lifecycle.gate import run_gate
from facegen_ray.registry import Registry
from facegen_ray.storage import Layout, Storage, join, normalize
from facegen_ray.train.trainer import train

# Imported where used, not here: models.export, train.distributed, train.checkpoint (torch): only
# choosing the warm start reads weights.

log = logging.getLogger(__name__)

RUN_FILE = "run.json"  # train.trainer.RUN_FILE


@dataclass
class WarmStartSource:
    """The serving model and the weights a retrain run starts from."""

    version: str
    model_uri: str
    model_doc: dict[str, Any]  # its model.json
    run: str | None
    images_seen: int
    init_from: str  # checkpoint dir or model dir URI
    kind: str  # "checkpoint" | "model"
    note: str  # why this source (printed)

    @property
    def metadata(self) -> dict[str, Any]:
        return dict(self.model_doc.get("metadata") or {})


def _g_ema_digest(storage: Storage, model_uri: str) -> str:
    from facegen_ray.models.export import load_model_dir
    from facegen_ray.train.distributed import module_digest

    G, _, _ = load_model_dir(storage, model_uri)
    return module_digest(G)


def serving_source(storage: Storage, root: str) -> WarmStartSource:
    """Resolve the serving version and pick its warm-start source (see the module docstring).
    UserError when nothing is serving or its model directory is gone."""
    from facegen_ray.models.export import MODEL_FILE
    from facegen_ray.train.checkpoint import META_FILE, STATE_FILE

    reg = Registry(storage, root)
    version = reg.serving()
    if not version:
        raise UserError(
            "no model is serving: train one and promote it first (`facegen train`, then "
            "`facegen promote VERSION`); retrain fine-tunes the serving model"
        )
    model_uri = reg.get(version)["uri"]
    try:
        doc = storage.read_json(join(model_uri, MODEL_FILE))
    except FileNotFoundError:
        raise UserError(
            f"serving model {version}'s directory {model_uri} has no {MODEL_FILE}: it is gone or "
            f"incomplete; promote another version"
        ) from None
    meta = doc.get("metadata") or {}
    run = meta.get("run")
    images = int(meta.get("images_seen") or 0)
    if run:
        ckpt = join(Layout(root).run(run), f"checkpoint-{images:012d}")
        if storage.exists(join(ckpt, STATE_FILE)) and storage.exists(join(ckpt, META_FILE)):
            saved = storage.read_json(join(ckpt, META_FILE)).get("g_ema_digest")
            if saved and saved == _g_ema_digest(storage, model_uri):
                return WarmStartSource(
                    version,
                    model_uri,
                    doc,
                    run,
                    images,
                    ckpt,
                    "checkpoint",
                    f"checkpoint of run {run} at {images} images (G, D, G_ema, optimisers)",
                )
            note = f"checkpoint {ckpt} does not hold {version}'s weights"
        else:
            note = f"run {run} no longer has its checkpoint at {images} images"
    else:
        note = f"{version} names no training run"
    return WarmStartSource(
        version,
        model_uri,
        doc,
        run,
        images,
        model_uri,
        "model",
        f"{note}: starting G/G_ema from the model directory, D from scratch",
    )


def base_dataset(storage: Storage, cfg: FacegenConfig, source: WarmStartSource, dataset: str | None = None) -> str:
    """The dataset to merge into: --dataset / retrain.dataset, else the dataset folder the
    serving model was trained on (its latest version), else <root>/datasets/faces."""
    uri = dataset or cfg.retrain.dataset
    if uri:
        return normalize(uri)
    trained_on = source.metadata.get("dataset")
    if trained_on:
        return _split_version(normalize(trained_on))[0]
    return Layout(cfg.storage.root).dataset("faces")


def check_overrides(overrides: Mapping[str, Any] | None) -> None:
    """UserError for --set model.*: the candidate keeps the serving model's architecture (its
    weights are the starting point). Checked before anything is written."""
    if any(key.startswith("model.") for key in (overrides or {})):
        raise UserError("retrain keeps the serving model's architecture: drop the --set model.* options")


def retrain_config(
    storage: Storage,
    cfg: FacegenConfig,
    source: WarmStartSource,
    train_data: str,
    run_name: str,
    overrides: Mapping[str, Any] | None = None,
) -> FacegenConfig:
    """The candidate run's config (see the module docstring, step 3). overrides: the command's
    --set, parsed (dotted key -> value); the train.* and loss.* ones apply."""
    sections: dict[str, Any] = {}
    if source.run:
        run_file = join(Layout(cfg.storage.root).run(source.run), RUN_FILE)
        if storage.exists(run_file):
            prev = storage.read_json(run_file).get("config") or {}
            sections = {section: prev[section] for section in ("loss", "train") if section in prev}
    sections["model"] = source.model_doc["model"]
    check_overrides(overrides)
    mine = {k: v for k, v in (overrides or {}).items() if k.split(".")[0] in ("train", "loss")}
    fixed = {
        "train.run_name": run_name,
        "train.dataset": train_data,
        "train.start_resolution": int(source.model_doc["model"]["resolution"]),
        "train.total_images": source.images_seen + int(cfg.retrain.images),
        "train.init_from": source.init_from,
        "train.export": True,
    }
    return with_updates(cfg, sections, mine, fixed)


def _run_name(storage: Storage, cfg: FacegenConfig, serving: str, name: str | None) -> str:
    if name:
        return name
    base = f"{cfg.retrain.run_prefix}-{serving}-{_dt.datetime.now(_dt.UTC).strftime('%Y%m%d-%H%M%S')}"
    layout, out, k = Layout(cfg.storage.root), base, 1
    while storage.exists(layout.run(out)):
        k += 1
        out = f"{base}-{k}"
    return out


def retrain(
    cfg: FacegenConfig,
    *,
    storage: Storage | None = None,
    overrides: Mapping[str, Any] | None = None,
    dataset: str | None = None,
    run_name: str | None = None,
    allow_empty: bool = False,
    merge_only: bool = False,
    gate: bool = True,
    data: str | None = None,
    progress: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Steps 1-4 of the module docstring; returns the JSON-able summary the CLI prints.
    Raises UserError (exit 2) for a missing serving model / base dataset, or no approved
    feedback without allow_empty; nothing is written in those cases."""
    check_overrides(overrides)
    storage = storage or Storage(cfg.storage)
    source = serving_source(storage, cfg.storage.root)
    progress(
        f"[facegen] serving model {source.version} ({source.model_uri}, {source.images_seen} images); "
        f"warm start: {source.note}"
    )
    stage = source.metadata.get("stage")
    max_stage = int(source.model_doc["model"]["resolution"]).bit_length() - 3
    if stage is not None and int(stage) != max_stage:
        progress(
            f"[facegen] note: {source.version} stopped growing at stage {stage}; the candidate trains at the "
            f"model's full {source.model_doc['model']['resolution']} px"
        )
    base = base_dataset(storage, cfg, source, dataset)
    base_manifest = read_manifest(storage, base)  # UserError when missing
    out: dict[str, Any] = {"serving_before": source.version, "base_dataset": base_manifest["path"]}

    try:
        merged = merge_feedback(cfg, base, storage=storage)
        progress(f"[facegen] {summary(merged)}")
        raters = merged.manifest["feedback"].get("raters") or {}
        progress(
            f"[facegen] feedback raters: {raters.get('raters', 0)} counted, the busiest approved "
            f"{raters.get('top_rater_share', 0):.0%} of the merged images; {raters.get('held_back_raters', 0)} "
            f"held back ({raters.get('held_back_opinions', 0)} opinions, quarantine)"
        )
        train_data = merged.version_uri
        out["dataset"] = {
            "uri": merged.version_uri,
            "version": merged.manifest["version"],
            "base_version": merged.base_version,
            "merged": merged.merged,
            "rows": merged.manifest["num_images"],
            "skipped": merged.skipped,
            "feedback_ids": merged.manifest["feedback"]["feedback_ids"],
            "raters": raters,
        }
    except NoApprovedFeedback as e:
        if not allow_empty or merge_only:
            raise
        progress(f"[facegen] {e}")
        progress(f"[facegen] --allow-empty: retraining on {base_manifest['path']} without feedback")
        train_data = base_manifest["path"]
        out["dataset"] = {
            "uri": train_data,
            "version": base_manifest["version"],
            "base_version": base_manifest["version"],
            "merged": 0,
            "rows": base_manifest["num_images"],
            "skipped": e.skipped,
            "feedback_ids": [],
        }
    if merge_only:
        return out

    name = _run_name(storage, cfg, source.version, run_name)
    rcfg = retrain_config(storage, cfg, source, train_data, name, overrides)
    progress(
        f"[facegen] training candidate: run {name}, {cfg.retrain.images} images from {source.images_seen} "
        f"at {rcfg.model.resolution} px on {train_data} (Ray Train, {rcfg.train.num_workers} worker(s))"
    )
    outcome = train(rcfg, storage, export=True)
    if not outcome.version:
        raise RuntimeError(f"retrain run {name} finished without exporting a model")
    reg = Registry(storage, cfg.storage.root)
    reg.set_metrics(
        outcome.version,
        {
            "retrain": {
                "from_version": source.version,
                "init_from": source.init_from,
                "warm_start": source.kind,
                "dataset": train_data,
                "dataset_version": out["dataset"]["version"],
                "feedback_merged": out["dataset"]["merged"],
                "run": name,
                "images_seen": outcome.images_seen,
            }
        },
    )
    progress(f"[facegen] candidate {outcome.version} registered ({outcome.model_uri}; {outcome.images_seen} images)")
    out.update(
        {
            "run": name,
            "init_from": source.init_from,
            "warm_start": source.kind,
            "images_seen": outcome.images_seen,
            "candidate": outcome.version,
            "candidate_uri": outcome.model_uri,
        }
    )
    if not gate:
        out.update({"decision": None, "serving": reg.serving()})
        return out

    result = run_gate(cfg, outcome.version, storage=storage, data=data, progress=progress)
    for line in result.reasons:
        progress(f"[facegen] gate: {line}")
    progress(f"[facegen] gate: {result.decision} (serving: {result.serving_after}; report {result.report_uri})")
    out.update(
        {
            "decision": result.decision,
            "reasons": result.reasons,
            "candidate_metrics": result.candidate_metrics,
            "serving_metrics": result.serving_metrics,
            "gate_report": result.report_uri,
            "serving": result.serving_after,
            "human": result.human,
            "notes": result.notes,
        }
    )
    return out


def dumps(obj: dict[str, Any]) -> str:
    """The one JSON line the CLI prints."""
    return json.dumps(obj, default=str, sort_keys=True)


__all__ = ["WarmStartSource", "serving_source", "base_dataset", "check_overrides", "retrain_config", "retrain", "dumps"]
