"""Feedback under load and a crash: benchmarks/serve_load.py's `feedback` mode.

The slow test runs the benchmark as its own process (its own Ray, Serve app and loopback port):
300 posts from 8 clients, the ingress replica (the process writing the feedback store)
SIGKILLed when 30% are answered, clients retrying failed posts with the same Idempotency-Key.
It then checks the store itself through FeedbackStore, independently of the benchmark's own
verification. The fast tests show that verification catches lost, duplicated and torn records.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from facegen_ray.data.feedback import FeedbackStore, feedback_id, iter_feedback
from facegen_ray.serve.generation import encode_image
from facegen_ray.storage import Storage

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "benchmarks" / "serve_load.py"


def _bench():
    spec = importlib.util.spec_from_file_location("serve_load_bench", BENCH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _store_with_posts(root: str, n: int = 12):
    """A feedback store holding n posts made as the benchmark makes them, all acknowledged."""
    bench = _bench()
    storage = Storage()
    store = FeedbackStore(storage, root)
    png = encode_image(np.zeros((4, 4, 3), dtype=np.uint8), "png")
    image_ids = [f"{i:032x}" for i in range(1, 4)]
    for iid in image_ids:
        store.record_image(iid, png, {"seed": 0, "model_version": "t"})
    posts = bench.make_posts(n, image_ids, "load-test")
    for p in posts:
        b = p["body"]
        res = store.add_feedback(p["image_id"], b["approved"], b["rating"], b["comment"], p["key"])
        p["final"], p["ids"], p["statuses"] = 201, [res.feedback_id], [201]
    return bench, store, posts


def test_verify_store_passes_a_clean_store(tmp_path):
    bench, _, posts = _store_with_posts(str(tmp_path))
    out = bench.verify_store(str(tmp_path), posts, "load-test")
    assert out == {
        "records_on_disk": 12,
        "lost": 0,
        "duplicates": 0,
        "half_written": 0,
        "temp_files_left": 0,
        "unacknowledged_records": 0,
        "id_mismatches": 0,
    }


def test_verify_store_counts_lost_duplicate_torn_and_mismatched(tmp_path):
    bench, store, posts = _store_with_posts(str(tmp_path))
    storage = store.storage
    # lost: an acknowledged record is gone
    os.unlink(store.feedback_uri(posts[0]["ids"][0]))
    # duplicate: the same post stored a second time under another key
    b = posts[1]["body"]
    store.add_feedback(posts[1]["image_id"], b["approved"], b["rating"], b["comment"], "another-key")
    # half-written: a record cut short
    torn = store.feedback_uri(posts[2]["ids"][0])
    data = storage.read_bytes(torn)
    with open(torn, "wb") as f:
        f.write(data[: len(data) // 2])
    # a client told a different id than sha256(image|key) for its key
    posts[3]["ids"].append("f" * 32)
    # a temp file of an interrupted write
    Path(store.records_dir, "ab", "x.json.tmp-123").parent.mkdir(parents=True, exist_ok=True)
    Path(store.records_dir, "ab", "x.json.tmp-123").write_bytes(b"{")
    out = bench.verify_store(str(tmp_path), posts, "load-test")
    assert out["half_written"] == 1 and out["temp_files_left"] == 1 and out["id_mismatches"] == 1
    assert out["duplicates"] == 1 and out["unacknowledged_records"] == 1  # the second copy was never acknowledged
    assert out["lost"] == 2  # posts[0] (gone) and posts[2] (torn, so unreadable)


@pytest.mark.slow
def test_feedback_posts_survive_a_killed_ingress_replica(tmp_path):
    root, ledger = tmp_path / "root", tmp_path / "ledger.jsonl"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    r = subprocess.run(
        [
            sys.executable,
            str(BENCH),
            "feedback",
            "--posts",
            "300",
            "--clients",
            "8",
            "--images",
            "16",
            "--kill-at",
            "0.3",
            "--replay",
            "100",
            "--root",
            str(root),
            "--ledger",
            str(ledger),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        env=env,
        timeout=1800,
    )
    lines = [line for line in r.stdout.splitlines() if line.startswith("{")]
    assert lines, f"no JSON line (rc {r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-5000:]}"
    res = json.loads(lines[-1])
    assert r.returncode == 0, res
    kill = res["kill"]
    assert kill and "error" not in kill and kill["pid_after"] != kill["pid_before"], kill
    assert res["requests"] == 300 and res["accepted"] == 300 and res["rejected"] == 0, res
    assert res["lost"] == 0 and res["duplicates"] == 0 and res["half_written"] == 0, res
    assert res["id_mismatches"] == 0 and res["replayed"] == 100 and res["replay_mismatches"] == 0, res
    assert res["retried"] >= 1, "the kill hit no request in flight"

    # the store, read with the project's own reader, against what every client was told
    storage = Storage()
    store = FeedbackStore(storage, str(root))
    posts = [json.loads(line) for line in ledger.read_text().splitlines()]
    assert len(posts) == 300
    for p in posts:
        assert p["final"] in (200, 201), p
        fid = feedback_id(p["image_id"], f"{res['rater']}|{p['key']}")  # the load's one rater
        assert set(p["ids"]) == {fid}, p  # every answer for this key: the same id
        rec = store.get_feedback(fid)
        assert rec is not None and all(rec[k] == v for k, v in p["body"].items()), (p, rec)
    tag = posts[0]["tag"]
    mine = [rec for rec in iter_feedback(storage, str(root)) if rec["comment"].startswith(tag)]
    assert len(mine) == 300 and len({rec["comment"] for rec in mine}) == 300  # one record per post
    final_names = re.compile(r"^[0-9a-f]{32}\.json$")
    for uri in storage.find(store.records_dir):
        if final_names.match(uri.rsplit("/", 1)[-1]):
            json.loads(storage.read_text(uri))  # every record object parses: none half-written
