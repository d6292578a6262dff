"""A real Prometheus server (Debian's `prometheus` package) scrapes this test session's Ray node
with the scrape job of cluster/prometheus.yaml, while the Serve app answers requests and a short
training run reports progress. Then, through Prometheus' HTTP API:

  - `ray_facegen_serve_requests_total` and `ray_facegen_train_images_seen` read back with the
    values the requests and the run produced;
  - every PromQL expression of the Grafana dashboards (facegen_ray/observability/dashboards/*.json)
    evaluates without error over the test's time range, and returns a series whenever every
    metric selector in it has data (the rest are listed: e.g. the 5xx ratio without any 5xx);
  - the training dashboard's `run` variable (label_values(ray_facegen_train_images_seen, run))
    lists the run.

The job is used as written except for its discovery file: cluster/prometheus.yaml reads the file
the Ray head's dashboard writes (/tmp/ray/prom_metrics_service_discovery.json, which on a shared
machine belongs to whichever Ray session started last); here the same kind of file names this
session's node. Skipped when no `prometheus` binary is installed (apt-get install prometheus).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from pathlib import Path

import httpx
import pytest
import yaml
from conftest import start_session
from test_serve import app, client  # noqa: F401 - the Serve app fixture (module-scoped here)

from facegen_ray.cli import main as cli_main
from facegen_ray.observability.metrics import node_metrics_endpoints

REPO = Path(__file__).resolve().parents[1]
DASHBOARDS = REPO / "facegen_ray" / "observability" / "dashboards"
PROMETHEUS = shutil.which("prometheus")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(PROMETHEUS is None, reason="no prometheus binary (Debian: apt-get install -y prometheus)"),
]


def _duration_s(text: str) -> float:
    """A Prometheus duration like 10s / 1m / 1h as seconds."""
    m = re.fullmatch(r"(\d+)(ms|s|m|h)", text)
    assert m, text
    return int(m.group(1)) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[m.group(2)]


@pytest.fixture(scope="module")
def prometheus(ray_session, tmp_path_factory):
    """Prometheus with cluster/prometheus.yaml's `ray` job, its discovery file naming this node."""
    from conftest import free_port

    tmp = tmp_path_factory.mktemp("prometheus")
    doc = yaml.safe_load((REPO / "cluster" / "prometheus.yaml").read_text())
    (job,) = [j for j in doc["scrape_configs"] if j["job_name"] == "ray"]
    targets = [ep.split("//", 1)[1].split("/", 1)[0] for ep in node_metrics_endpoints()]
    assert targets, "no Ray node reports a metrics export port"
    sd = tmp / "ray_service_discovery.json"  # the format Ray's head writes: [{"labels", "targets"}]
    sd.write_text(json.dumps([{"labels": {"job": "ray"}, "targets": targets}]))
    job["file_sd_configs"][0]["files"] = [str(sd)]
    cfg = tmp / "prometheus.yaml"
    cfg.write_text(yaml.safe_dump(doc))
    port = free_port()
    log = open(tmp / "prometheus.log", "wb")
    proc = subprocess.Popen(
        [
            PROMETHEUS,
            f"--config.file={cfg}",
            f"--storage.tsdb.path={tmp / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:
            try:
                if httpx.get(f"{url}/-/ready", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None and time.time() < deadline, (tmp / "prometheus.log").read_text()[-3000:]
            time.sleep(0.5)
        yield {
            "url": url,
            "scrape_s": _duration_s(doc["global"]["scrape_interval"]),
            "targets": targets,
            "started": time.time(),
        }
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def _api(prom: dict, path: str, **params) -> dict:
    r = httpx.get(f"{prom['url']}/api/v1/{path}", params=params, timeout=60)
    body = r.json()
    assert r.status_code == 200 and body["status"] == "success", (path, params, r.status_code, body)
    return body["data"]


def _range(prom: dict, query: str, start: float) -> list[dict]:
    step = max(1, int(prom["scrape_s"]))
    return _api(prom, "query_range", query=query, start=start, end=time.time(), step=f"{step}s")["result"]


def _wait_for(prom: dict, query: str, start: float, ok, timeout: float = 180) -> list[dict]:
    deadline = time.time() + timeout
    while True:
        res = _range(prom, query, start)
        if ok(res) or time.time() > deadline:
            return res
        time.sleep(prom["scrape_s"])


def _dashboard_queries() -> list[tuple[str, str, str]]:
    out = []
    for f in sorted(DASHBOARDS.glob("*.json")):
        for panel in json.loads(f.read_text())["panels"]:
            for t in panel.get("targets", []):
                if t.get("expr"):
                    out.append((f.stem, panel.get("title", "?"), t["expr"]))
    return out


SELECTOR = re.compile(r"\b(ray_facegen_[a-z_]+)(\{[^}]*\})?")


def test_prometheus_scrapes_serving_and_training_and_dashboards_evaluate(prometheus, app, client, sample_zip, tmp_path):  # noqa: F811
    prom = prometheus
    t0 = prom["started"]
    # ---- serving traffic: 3 POST /generate, feedback (201, duplicate 200, 404, 422)
    ids = []
    for seed in (1, 2, 3):
        r = client.post("/generate", json={"seed": seed, "num_images": 2})
        assert r.status_code == 200
        ids += [im["image_id"] for im in r.json()["images"]]
    start_session(client)  # feedback needs a rater session
    assert (
        client.post(
            "/feedback", json={"image_id": ids[0], "approved": True}, headers={"Idempotency-Key": "prom-1"}
        ).status_code
        == 201
    )
    assert (
        client.post(
            "/feedback", json={"image_id": ids[0], "approved": True}, headers={"Idempotency-Key": "prom-1"}
        ).status_code
        == 200
    )
    assert client.post("/feedback", json={"image_id": "0" * 32, "approved": True}).status_code == 404
    assert client.post("/feedback", json={"image_id": ids[1], "approved": "maybe"}).status_code == 422

    # ---- a short 2-worker training run (gauges per rank while it runs)
    from conftest import tiny_model_dict

    from facegen_ray.config import FacegenConfig
    from facegen_ray.storage import Layout
    from facegen_ray.train.trainer import train

    root = str(tmp_path / "root")
    assert (
        cli_main(["prepare", str(sample_zip), Layout(root).dataset("faces"), "--resolution", "8", "--limit", "48"]) == 0
    )
    cfg = FacegenConfig.model_validate(
        {
            "storage": {"root": root},
            "model": tiny_model_dict(8),
            "loss": {"name": "nonsaturating", "r1_gamma": 1.0, "r1_interval": 4},
            "train": {
                "run_name": "prom-run",
                "num_workers": 2,
                "start_resolution": 4,
                "stabilize_images": 160,
                "fade_images": 160,
                "total_images": 640,
                "batch_size": {4: 16, 8: 16},
                "checkpoint_every_images": 320,
                "log_every_images": 32,
                "shuffle_buffer": 16,
                "max_failures": 0,
                "seed": 3,
                "amp": False,
            },
        }
    )
    out = train(cfg, export=False)
    assert out.images_seen == 640

    # ---- Prometheus scraped this node with the `ray` job
    health = _api(prom, "targets")["activeTargets"]
    assert {t["scrapeUrl"].split("//", 1)[1].split("/", 1)[0] for t in health} == set(prom["targets"]), health
    assert all(t["labels"]["job"] == "ray" for t in health), health
    up = _range(prom, 'up{job="ray"}', t0)
    assert up and any(v == "1" for s in up for _, v in s["values"]), up  # scrapes succeeded

    # ---- the two named metrics, read back through Prometheus
    req = _wait_for(
        prom,
        'sum by (route, method, status) (ray_facegen_serve_requests_total{route="/generate"})',
        t0,
        lambda res: any(
            s["metric"] == {"route": "/generate", "method": "POST", "status": "200"} and float(s["values"][-1][1]) >= 3
            for s in res
        ),
    )
    post200 = [s for s in req if s["metric"] == {"route": "/generate", "method": "POST", "status": "200"}]
    assert post200 and float(post200[0]["values"][-1][1]) >= 3, req
    seen = _wait_for(
        prom,
        'max by (rank) (ray_facegen_train_images_seen{run="prom-run"})',
        t0,
        lambda res: {s["metric"].get("rank") for s in res} == {"0", "1"},
    )
    assert {s["metric"].get("rank") for s in seen} == {"0", "1"}, seen
    values = {float(v) for s in seen for _, v in s["values"]}
    assert values and all(0 < v <= 640 and v % 32 == 0 for v in values), values  # progress points: every 32 images
    assert "prom-run" in _api(prom, "label/run/values", **{"match[]": "ray_facegen_train_images_seen"})

    # ---- every dashboard expression: valid PromQL; a series wherever its selectors have data
    scrape = prom["scrape_s"]
    subst = {"$__rate_interval": f"{int(4 * scrape)}s", "$__range": f"{int(time.time() - t0) + 60}s", "$run": ".*"}
    queries = _dashboard_queries()
    assert len(queries) >= 20
    evaluated, empty_without_data, problems = [], [], []
    for board, title, expr in queries:
        q = expr
        for k, v in subst.items():
            q = q.replace(k, v)
        assert "$" not in q, (board, title, q)
        res = _range(prom, q, t0)  # a syntax error fails in _api
        selectors_with_data = all(_range(prom, m.group(0), t0) for m in SELECTOR.finditer(q))
        if res:
            evaluated.append((board, title))
        elif selectors_with_data:
            problems.append((board, title, q))
        else:
            empty_without_data.append((board, title, q))
    print(
        f"dashboard queries with series: {len(evaluated)}; without data for a selector: "
        + "; ".join(f"{b}/{t}: {q}" for b, t, q in empty_without_data)
    )
    assert not problems, f"queries that return nothing although their metrics have data: {problems}"
    # the data this test produced covers most panels (what is left: 5xx, FID, reload failures, ...)
    assert len(evaluated) >= len(queries) - 6, empty_without_data
