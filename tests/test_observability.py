"""Observability: metric definitions, the Grafana dashboards (their PromQL refers only to what
the code exports), `facegen dashboards push/export` against a local Grafana API double, and a
real scrape of this node's Ray metrics endpoint after traffic through the Serve app.

No Grafana server can run here: the push is tested against GrafanaDouble below, which
implements the handful of Grafana HTTP API endpoints grafana-client calls (/api/health,
/api/folders, /api/dashboards/db, /api/dashboards/uid/<uid>) with bearer-token checks.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from conftest import start_session
from test_serve import MAX_BODY, app, client  # noqa: F401 - the Serve app fixture (module-scoped here)

from facegen_ray.cli import main as cli_main
from facegen_ray.observability import grafana
from facegen_ray.observability.metrics import (
    SERVING_SPECS,
    TRAINING_SPECS,
    MetricSet,
    MetricSpec,
    all_specs,
    exported_series,
    node_metrics_endpoints,
)

REPO = Path(__file__).resolve().parents[1]
TOKEN = "glsa_test-token-0123"


# ----------------------------------------------------------------------------- metric definitions
def test_metric_specs_and_exported_names():
    names = [s.name for s in all_specs()]
    assert len(names) == len(set(names))
    assert all(re.fullmatch(r"facegen_(serve|train)_[a-z_]+", n) for n in names)
    assert {s.name for s in SERVING_SPECS}.isdisjoint({s.name for s in TRAINING_SPECS})
    c = MetricSpec("facegen_serve_requests", "counter", "d")
    assert c.exported == "ray_facegen_serve_requests_total" and c.series() == ("ray_facegen_serve_requests_total",)
    h = MetricSpec("facegen_serve_batch_seconds", "histogram", "d", (), (0.1, 1.0))
    assert h.series() == tuple(f"ray_facegen_serve_batch_seconds_{s}" for s in ("bucket", "sum", "count"))
    assert MetricSpec("facegen_train_alpha", "gauge", "d").series() == ("ray_facegen_train_alpha",)
    for s in all_specs():
        assert s.kind != "histogram" or list(s.boundaries) == sorted(s.boundaries)


def test_recording_errors_are_swallowed_and_logged(caplog):
    ms = MetricSet((MetricSpec("facegen_serve_test_only", "counter", "d", ("route",)),))
    with caplog.at_level(logging.WARNING, logger="facegen_ray.observability.metrics"):
        ms.inc("facegen_serve_test_only", 1)  # tag "route" missing -> ValueError inside Ray, swallowed
        ms.inc("facegen_serve_test_only", 1)
        ms.set("facegen_serve_no_such_metric", 1.0)  # undefined name: swallowed too
    warnings = [r for r in caplog.records if "facegen_serve_test_only" in r.getMessage()]
    assert len(warnings) == 1  # logged once per metric, not per call
    assert any("facegen_serve_no_such_metric" in r.getMessage() for r in caplog.records)


# ----------------------------------------------------------------------------- dashboards (static)
_BY = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")
_MATCHERS = re.compile(r"(ray_[A-Za-z0-9_:]+)\{([^}]*)\}")
_SPEC_OF = {series: spec for spec in all_specs() for series in spec.series()}


def test_dashboards_query_only_metrics_the_code_defines():
    exported = exported_series()
    used: set[str] = set()
    for name, dash in grafana.load_dashboards().items():
        queries = grafana.panel_queries(dash)
        assert len(queries) >= 8, name
        assert dash["uid"] == f"facegen-{name}" and dash["id"] is None
        for title, expr in queries:
            metrics = grafana.metric_names_in(expr)
            assert metrics, (name, title, expr)
            unknown = metrics - exported
            assert not unknown, f"{name}/{title}: {sorted(unknown)} not defined in observability/metrics.py"
            used |= metrics
            labels_ok = {"le"} | {k for m in metrics for k in _SPEC_OF[m].tag_keys}
            for group in _BY.findall(expr):  # aggregation labels exist on the metrics
                for label in filter(None, (x.strip() for x in group.split(","))):
                    assert label in labels_ok, (name, title, label)
            for metric, matchers in _MATCHERS.findall(expr):  # label matchers too
                for label in re.findall(r"([A-Za-z_]\w*)\s*(?:=~|!~|!=|=)", matchers):
                    assert label in _SPEC_OF[metric].tag_keys, (name, title, label)
            if "histogram_quantile" in expr:
                assert "_bucket[" in expr and re.search(r"by \(le\b", expr), expr
        for panel in grafana.iter_panels(dash):
            for t in panel.get("targets", []):
                assert t["datasource"]["uid"] == "${datasource}"
    # every metric the code records is on a dashboard
    for spec in all_specs():
        assert set(spec.series()) & used, f"{spec.name} is on no dashboard"


def test_metric_names_in_skips_label_values_and_functions():
    expr = 'histogram_quantile(0.9, sum by (le) (rate(ray_facegen_serve_request_seconds_bucket{route="ray_fake"}[5m])))'
    assert grafana.metric_names_in(expr) == {"ray_facegen_serve_request_seconds_bucket"}


def test_export_writes_the_packaged_files(tmp_path, capsys):
    dest = tmp_path / "out"
    assert cli_main(["dashboards", "export", str(dest)]) == 0
    printed = capsys.readouterr().out.split()
    assert sorted(Path(p).name for p in printed) == ["serving.json", "training.json"]
    for name in grafana.DASHBOARD_NAMES:
        packaged = json.loads((REPO / "facegen_ray" / "observability" / "dashboards" / f"{name}.json").read_text())
        assert json.loads((dest / f"{name}.json").read_text()) == packaged


# ----------------------------------------------------------------------------- Grafana API double
class GrafanaDouble:
    """A local stand-in for the Grafana HTTP API endpoints `facegen dashboards push` uses.

    Checks `Authorization: Bearer <token>` on everything but /api/health (401 otherwise),
    keeps folders and dashboards in memory (dashboards upserted by uid with versions, 412 on
    an existing uid without overwrite), and records every request."""

    def __init__(self, token: str) -> None:
        self.token = token
        self.folders: list[dict] = []
        self.dashboards: dict[str, dict] = {}  # uid -> {"dashboard", "folderUid", "version"}
        self.requests: list[dict] = []
        self.lock = threading.Lock()
        double = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass  # keep the test output free of the double's access log

            def _send(self, code: int, obj) -> None:
                data = json.dumps(obj).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _handle(self, method: str) -> None:
                n = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(n)) if n else None
                with double.lock:
                    double.requests.append(
                        {"method": method, "path": self.path, "body": body, "auth": self.headers.get("Authorization")}
                    )
                    code, obj = double.route(method, self.path, body, self.headers.get("Authorization"))
                self._send(code, obj)

            def do_GET(self):
                self._handle("GET")

            def do_POST(self):
                self._handle("POST")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def route(self, method: str, path: str, body, auth: str | None) -> tuple[int, object]:
        path = path.split("?", 1)[0]
        if method == "GET" and path == "/api/health":
            return 200, {"commit": "test", "database": "ok", "version": "11.3.0"}
        if auth != f"Bearer {self.token}":
            return 401, {"message": "invalid API key"}
        if path == "/api/folders" and method == "GET":
            return 200, [{"id": f["id"], "uid": f["uid"], "title": f["title"]} for f in self.folders]
        if path == "/api/folders" and method == "POST":
            if any(f["title"] == body["title"] for f in self.folders):
                return 409, {"message": "a folder with the same name already exists"}
            f = {
                "id": len(self.folders) + 1,
                "uid": body.get("uid") or f"fld{len(self.folders) + 1}",
                "title": body["title"],
            }
            self.folders.append(f)
            return 200, {**f, "url": f"/dashboards/f/{f['uid']}/"}
        if path == "/api/dashboards/db" and method == "POST":
            dash = body["dashboard"]
            if body.get("folderUid") not in {f["uid"] for f in self.folders}:
                return 400, {"message": "folder not found"}
            uid = dash["uid"]
            old = self.dashboards.get(uid)
            if old is not None and not body.get("overwrite"):
                return 412, {"message": "The dashboard has been changed by someone else", "status": "version-mismatch"}
            version = (old["version"] + 1) if old else 1
            self.dashboards[uid] = {"dashboard": dash, "folderUid": body["folderUid"], "version": version}
            slug = re.sub(r"[^a-z0-9]+", "-", dash["title"].lower()).strip("-")
            return 200, {
                "id": list(self.dashboards).index(uid) + 1,
                "uid": uid,
                "url": f"/d/{uid}/{slug}",
                "status": "success",
                "version": version,
                "slug": slug,
            }
        m = re.fullmatch(r"/api/dashboards/uid/([^/]+)", path)
        if m and method == "GET" and m.group(1) in self.dashboards:
            d = self.dashboards[m.group(1)]
            return 200, {
                "dashboard": {**d["dashboard"], "version": d["version"]},
                "meta": {"folderUid": d["folderUid"]},
            }
        return 404, {"message": "Not found"}

    def __enter__(self) -> GrafanaDouble:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def grafana_double():
    with GrafanaDouble(TOKEN) as g:
        yield g


def test_push_creates_folder_once_and_overwrites(grafana_double, monkeypatch, capsys, tmp_path):
    g = grafana_double
    monkeypatch.setenv("FACEGEN_TEST_GRAFANA_TOKEN", TOKEN)
    argv = [
        "dashboards",
        "push",
        "--grafana-url",
        g.url,
        "--token",
        "FACEGEN_TEST_GRAFANA_TOKEN",
        "--folder",
        "facegen-obs",
    ]
    assert cli_main(argv) == 0
    out = capsys.readouterr().out
    assert f"{g.url}/d/facegen-serving/" in out and f"{g.url}/d/facegen-training/" in out
    assert TOKEN not in out
    assert [f["title"] for f in g.folders] == ["facegen-obs"]
    folder_uid = g.folders[0]["uid"]
    for name in grafana.DASHBOARD_NAMES:
        stored = g.dashboards[f"facegen-{name}"]
        assert stored["folderUid"] == folder_uid and stored["version"] == 1
        assert stored["dashboard"] == grafana.load_dashboard(name)  # exactly the packaged JSON
    posts = [r for r in g.requests if r["path"] == "/api/dashboards/db"]
    assert len(posts) == 2 and all(p["body"]["overwrite"] is True for p in posts)
    assert all(r["auth"] == f"Bearer {TOKEN}" for r in g.requests if r["path"] != "/api/health")

    # again, with the token from a file: same folder (not created twice), dashboards overwritten
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    argv[argv.index("FACEGEN_TEST_GRAFANA_TOKEN")] = str(token_file)
    assert cli_main(argv) == 0
    assert "version 2" in capsys.readouterr().out
    assert len(g.folders) == 1
    assert sum(1 for r in g.requests if r["method"] == "POST" and r["path"] == "/api/folders") == 1
    assert {uid: d["version"] for uid, d in g.dashboards.items()} == {"facegen-serving": 2, "facegen-training": 2}
    back = httpx.get(
        f"{g.url}/api/dashboards/uid/facegen-training", headers={"Authorization": f"Bearer {TOKEN}"}
    ).json()
    assert (
        back["meta"]["folderUid"] == folder_uid
        and back["dashboard"]["panels"] == grafana.load_dashboard("training")["panels"]
    )


def test_push_errors_exit_2_with_a_clear_message(grafana_double, monkeypatch, capsys, tmp_path):
    g = grafana_double
    monkeypatch.setenv("FACEGEN_TEST_GRAFANA_TOKEN", "wrong-token")
    rc = cli_main(["dashboards", "push", "--grafana-url", g.url, "--token", "FACEGEN_TEST_GRAFANA_TOKEN"])
    err = capsys.readouterr().err
    assert rc == 2 and "401" in err and "--token" in err and "wrong-token" not in err
    assert not g.folders and not g.dashboards

    monkeypatch.delenv("GRAFANA_TOKEN", raising=False)
    rc = cli_main(["dashboards", "push", "--grafana-url", g.url])  # no credentials at all
    assert rc == 2 and "401" in capsys.readouterr().err

    rc = cli_main(["dashboards", "push", "--grafana-url", g.url, "--token", "NO_SUCH_VAR_FOR_FACEGEN"])
    assert rc == 2 and "NO_SUCH_VAR_FOR_FACEGEN is not set" in capsys.readouterr().err
    rc = cli_main(["dashboards", "push", "--grafana-url", g.url, "--token", "glsa abc/def"])
    assert rc == 2 and "neither a file nor an environment variable" in capsys.readouterr().err

    # nothing listening
    with ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler) as s:
        dead = f"http://127.0.0.1:{s.server_address[1]}"
    monkeypatch.setenv("FACEGEN_TEST_GRAFANA_TOKEN", TOKEN)
    rc = cli_main(
        ["dashboards", "push", "--grafana-url", dead, "--token", "FACEGEN_TEST_GRAFANA_TOKEN", "--timeout", "3"]
    )
    assert rc == 2 and f"cannot reach Grafana at {dead}" in capsys.readouterr().err
    rc = cli_main(["dashboards", "push", "--grafana-url", "grafana:3000"])
    assert rc == 2 and "http(s)://" in capsys.readouterr().err


def test_basic_auth_from_url_is_not_printed(grafana_double, monkeypatch, capsys):
    monkeypatch.delenv("GRAFANA_TOKEN", raising=False)
    url = grafana_double.url.replace("http://", "http://admin:secret-pw@")
    assert cli_main(["dashboards", "push", "--grafana-url", url]) == 2  # the double only takes the token
    err = capsys.readouterr().err
    assert "secret-pw" not in err and grafana_double.url in err
    assert any((r["auth"] or "").startswith("Basic ") for r in grafana_double.requests)


# ----------------------------------------------------------------------------- real export via Ray
def _scrape(endpoint: str) -> list:
    """All samples on a Ray node's Prometheus endpoint: [(name, labels, value)]."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(endpoint, timeout=10) as r:
        text = r.read().decode()
    return [(s.name, s.labels, s.value) for fam in text_string_to_metric_families(text) for s in fam.samples]


def _total(samples: list, name: str, **labels: str) -> float:
    return sum(v for n, lab, v in samples if n == name and all(lab.get(k) == val for k, val in labels.items()))


def test_metrics_are_exported_on_the_node_endpoint(app, client, ray_session):  # noqa: F811 - pytest fixtures
    ray = ray_session

    # a training worker's progress point, recorded in a Ray worker process like the train loop's
    @ray.remote(num_cpus=0)
    def train_progress():
        from facegen_ray.observability.metrics import training_metrics

        m = training_metrics()
        m.progress(
            "obs-test",
            1,
            {
                "images_seen": 4096,
                "img_per_s": 123.5,
                "stage": 2,
                "resolution": 16,
                "alpha": 0.25,
                "d_loss": 0.7,
                "g_loss": 1.3,
            },
        )
        m.checkpoint("obs-test", 1)
        return True

    assert ray.get(train_progress.remote())

    made = client.post("/generate", json={"seed": 5, "num_images": 3, "truncation": 0.5})
    assert made.status_code == 200
    ids = [im["image_id"] for im in made.json()["images"]]
    assert client.post("/generate", json={"seed": 40, "num_images": 2}).status_code == 200
    assert client.get("/generate", params={"seed": 9}).status_code == 200
    assert client.get("/no-such-route").status_code == 404
    start_session(client)  # feedback needs a rater session
    fb = [
        (
            client.post("/feedback", json={"image_id": ids[0], "approved": True}, headers={"Idempotency-Key": "obs-1"}),
            201,
        ),
        (
            client.post("/feedback", json={"image_id": ids[0], "approved": True}, headers={"Idempotency-Key": "obs-1"}),
            200,
        ),
        (client.post("/feedback", json={"image_id": ids[1], "approved": False}), 201),
        (client.post("/feedback", json={"image_id": "0" * 32, "approved": True}), 404),
        (client.post("/feedback", json={"image_id": ids[2], "approved": "maybe"}), 422),
        (
            client.post(
                "/feedback", content=b"{" + b" " * (MAX_BODY + 10) + b"}", headers={"content-type": "application/json"}
            ),
            413,
        ),
    ]
    assert [r.status_code for r, _ in fb] == [code for _, code in fb]

    endpoints = node_metrics_endpoints()
    assert endpoints, "no Ray node reports a MetricsExportPort"
    node = ray._private.worker.global_worker.node  # the one local node: the same endpoint
    assert f":{node.metrics_export_port}/metrics" in endpoints[0]

    def checks(s: list) -> dict[str, bool]:
        req = "ray_facegen_serve_requests_total"
        fbm = "ray_facegen_serve_feedback_total"
        return {
            "POST /generate 200": _total(s, req, route="/generate", method="POST", status="200") >= 2,
            "GET /generate 200": _total(s, req, route="/generate", method="GET", status="200") >= 1,
            "unmatched route": _total(s, req, route="other", status="404") >= 1,
            "POST /feedback 201": _total(s, req, route="/feedback", method="POST", status="201") >= 2,
            "latency count": _total(s, "ray_facegen_serve_request_seconds_count", route="/generate") >= 3,
            "latency +Inf bucket": _total(s, "ray_facegen_serve_request_seconds_bucket", route="/generate", le="+Inf")
            >= 3,
            "latency sum > 0": _total(s, "ray_facegen_serve_request_seconds_sum", route="/generate") > 0,
            **{
                f"feedback {o}": _total(s, fbm, outcome=o) >= 1
                for o in ("approved", "rejected", "duplicate", "not_found", "invalid", "too_large")
            },
            "images generated": _total(s, "ray_facegen_serve_images_generated_total", model_version="v1") >= 6,
            # (histogram _sum is approximate in Ray: observations are recorded at bucket midpoints)
            "batch images": _total(s, "ray_facegen_serve_batch_images_count", model_version="v1") >= 1
            and _total(s, "ray_facegen_serve_batch_images_bucket", model_version="v1", le="+Inf")
            == _total(s, "ray_facegen_serve_batch_images_count", model_version="v1"),
            "batch count": _total(s, "ray_facegen_serve_batch_seconds_count", model_version="v1") >= 1,
            "batch requests": _total(s, "ray_facegen_serve_batch_requests_count", model_version="v1") >= 1,
            "model info": _total(s, "ray_facegen_serve_model_info", model_version="v1") >= 1,
            "model reloads": _total(s, "ray_facegen_serve_model_reloads_total", outcome="loaded") >= 1,
            "train images seen": _total(s, "ray_facegen_train_images_seen", run="obs-test", rank="1") == 4096,
            "train img/s": _total(s, "ray_facegen_train_images_per_second", run="obs-test", rank="1") == 123.5,
            "train alpha": _total(s, "ray_facegen_train_alpha", run="obs-test") == 0.25,
            "train stage": _total(s, "ray_facegen_train_stage", run="obs-test") == 2,
            "train loss G": _total(s, "ray_facegen_train_loss", run="obs-test", network="G") == pytest.approx(1.3),
            "train loss D": _total(s, "ray_facegen_train_loss", run="obs-test", network="D") == pytest.approx(0.7),
            "train checkpoints": _total(s, "ray_facegen_train_checkpoints_total", run="obs-test", rank="1") >= 1,
        }

    deadline = time.time() + 90  # Ray's agents export on a ~5-10 s cycle
    while True:
        samples = []
        for ep in endpoints:
            samples += _scrape(ep)
        state = checks(samples)
        if all(state.values()) or time.time() > deadline:
            break
        time.sleep(2)
    missing = [k for k, ok in state.items() if not ok]
    facegen = sorted({n for n, _, _ in samples if n.startswith("ray_facegen_")})
    assert not missing, f"not (yet) exported: {missing}; facegen samples seen: {facegen}"
    # every series the code can export and these calls exercised is among those the dashboards may use
    assert set(facegen) <= exported_series()
    # Ray adds its own identity labels to our series
    one = next(lab for n, lab, _ in samples if n == "ray_facegen_serve_requests_total")
    assert {"SessionName", "NodeAddress", "WorkerId"} <= set(one)


def test_gauges_are_refreshed_until_forgotten(monkeypatch):
    """Ray drops a gauge series not set again within ~2 report intervals: MetricSet re-sets
    live gauges from a thread until they are forgotten (checked on the recorded calls)."""
    calls = []

    class FakeGauge:
        def set(self, value, tags):
            calls.append((value, dict(tags)))

    ms = MetricSet((MetricSpec("facegen_train_alpha", "gauge", "d", ("run",)),), refresh_s=0.05)
    ms._objects["facegen_train_alpha"] = FakeGauge()
    ms.set("facegen_train_alpha", 0.5, run="a")
    ms.set("facegen_train_alpha", 0.75, run="b")
    deadline = time.time() + 10
    while time.time() < deadline and sum(1 for v, t in calls if t == {"run": "a"}) < 3:
        time.sleep(0.05)
    assert sum(1 for v, t in calls if t == {"run": "a"} and v == 0.5) >= 3
    ms.forget("facegen_train_alpha", run="a")
    time.sleep(0.2)
    n_a = sum(1 for _, t in calls if t == {"run": "a"})
    n_b = sum(1 for _, t in calls if t == {"run": "b"})
    time.sleep(0.3)
    assert sum(1 for _, t in calls if t == {"run": "a"}) == n_a  # forgotten: no more sets
    assert sum(1 for _, t in calls if t == {"run": "b"}) > n_b  # still live
    assert all(v == 0.75 for v, t in calls if t == {"run": "b"})


@pytest.mark.slow
def test_training_run_exports_progress_per_rank(ray_session, sample_zip, tmp_path):
    """A real 2-worker `train()` run: its workers' progress gauges and the checkpoint counter
    appear on the node endpoint while it runs (scraped in a thread; gauges leave ~20 s after
    the workers exit, so they are collected during the run)."""
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
                "run_name": "obs-run",
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
    seen: dict[tuple, float] = {}
    stop = threading.Event()

    def scrape_loop():
        endpoints = node_metrics_endpoints()
        while not stop.is_set():
            for ep in endpoints:
                try:
                    for name, labels, value in _scrape(ep):
                        if name.startswith("ray_facegen_train_") and labels.get("run") == "obs-run":
                            seen[(name, labels.get("rank"), labels.get("network"))] = value
                except OSError:
                    pass  # a node's exporter not up yet: scraped again in 2 s
            stop.wait(2)

    t = threading.Thread(target=scrape_loop, daemon=True)
    t.start()
    try:
        out = train(cfg, export=False)
    finally:
        time.sleep(3)
        stop.set()
        t.join(timeout=30)
    assert out.images_seen == 640
    for rank in ("0", "1"):
        for name in ("images_seen", "images_per_second", "stage", "resolution", "alpha"):
            assert (f"ray_facegen_train_{name}", rank, None) in seen, (name, rank, sorted(seen))
        assert {("ray_facegen_train_loss", rank, "G"), ("ray_facegen_train_loss", rank, "D")} <= set(seen)
    assert seen[("ray_facegen_train_checkpoints_total", "0", None)] >= 1
    assert ("ray_facegen_train_checkpoints_total", "1", None) not in seen  # rank 0 counts checkpoints
    assert 0 < seen[("ray_facegen_train_images_seen", "0", None)] <= 640
