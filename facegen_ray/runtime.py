"""Connecting to Ray: the one place the CLI commands start or join a Ray instance."""

from __future__ import annotations

import os

import facegen_ray

# Imported where used, not here: ray: in ensure_ray(), so that importing this module does not load
# Ray.


def ensure_ray() -> None:
    """Join RAY_ADDRESS if set (`ray job submit`, a user's cluster); else start an embedded
    local Ray — always a fresh one (address="local"), never another process's instance.

    When facegen_ray runs from a source checkout (not pip-installed), workers need the checkout
    on their path; with `ray job submit --working-dir .` Ray ships it instead. No-op if Ray is
    already initialised in this process.
    """
    import ray

    if ray.is_initialized():
        return

    src = os.path.dirname(os.path.dirname(os.path.abspath(facegen_ray.__file__)))
    address = os.environ.get("RAY_ADDRESS")
    runtime_env = None
    if "site-packages" not in src and not address:
        path = os.pathsep.join(p for p in (src, os.environ.get("PYTHONPATH")) if p)
        runtime_env = {"env_vars": {"PYTHONPATH": path}}
    if address:
        ray.init(address=address, log_to_driver=True, runtime_env=runtime_env)
        return
    # an embedded instance on this machine: no dashboard (its processes compete for the cores
    # of a small machine), and one logical CPU more than the cores so that Ray Data's read
    # tasks can run while the train workers hold every core (see train.trainer.worker_resources)
    # Ray starts its workers at nice 15 (RAY_worker_niceness) so that its own processes stay
    # responsive on a busy node; on a machine facegen has to itself that hands the cores to
    # Ray's daemons before the training step, so workers run at normal priority here
    os.environ.setdefault("RAY_worker_niceness", "0")
    ray.init(
        address="local", log_to_driver=True, runtime_env=runtime_env, include_dashboard=False, num_cpus=local_cpus() + 1
    )


def local_cpus() -> int:
    """Cores this process may use (affinity-aware)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def embedded() -> bool:
    """True when facegen starts its own Ray on this machine (no RAY_ADDRESS to join)."""
    return not os.environ.get("RAY_ADDRESS")


SHARED_FS_ENV = "FACEGEN_SHARED_FS"  # "1": every node mounts the same local paths (NFS, one host)


def alive_nodes() -> int:
    """Alive nodes of the Ray cluster this process is connected to (1 when not connected)."""
    import ray

    if not ray.is_initialized():
        return 1
    return sum(1 for n in ray.nodes() if n.get("Alive"))


def require_shared(paths: dict[str, str | None]) -> None:
    """UserError when a local path that Ray tasks or actors on other nodes would open is used on a
    multi-node cluster: each node would resolve it on its own disk (files missing, or written
    where nobody reads them). paths: what it is (e.g. "storage.root") -> URI or path; None skipped.

    A local path passes on a single-node cluster, or with FACEGEN_SHARED_FS=1 (every node mounts
    the same path, e.g. NFS)."""
    from facegen_ray.errors import UserError
    from facegen_ray.storage import is_remote, normalize

    local = {k: normalize(v) for k, v in paths.items() if v and not is_remote(normalize(v))}
    if not local or os.environ.get(SHARED_FS_ENV) == "1":
        return
    nodes = alive_nodes()
    if nodes <= 1:
        return
    named = "; ".join(f"{k} = {v}" for k, v in local.items())
    raise UserError(
        f"{named}: a local path, but this Ray cluster has {nodes} nodes and they share no disk "
        f"(each node would read or write its own copy). Use storage every node reaches, e.g. "
        f"s3://BUCKET/PREFIX (with storage.endpoint_url for a non-AWS S3), or set {SHARED_FS_ENV}=1 "
        f"if every node mounts this same path"
    )
