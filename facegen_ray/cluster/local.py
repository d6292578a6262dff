"""A multi-host Ray cluster on one Linux machine: each "host" is a network namespace.

    up(N)        bridge <name>-br with <subnet>.254 (the root namespace's side); per host i:
                 netns <name>-h<i>, a veth pair (<name>-v<i> on the bridge, eth0 inside) with
                 <subnet>.<i+1>, lo up; an anchor process (`sleep infinity`) in a private mount
                 namespace with its own tmpfs on /tmp and /dev/shm, HOME=/tmp/home and the checkout
                 bind-mounted read-only (like a container image); host 0 runs `ray start --head`,
                 the others `ray start --address <head>:6379`; a moto S3 server on the bridge
                 address is the only storage the hosts share.
    run_on(i)    a command on host i joins the anchor's namespaces (nsenter --mount --net) with a
                 clean environment (the host's own: S3 endpoint and credentials, nothing else).
    kill_host    SIGKILL every process of a host (`ip netns pids`), then remove the namespace.
    partition    the host's link down for S seconds, then up again.
    down         every process, namespace and link the state file names, by PID.

State (namespaces, PIDs, addresses) lives in a JSON file (default /run/facegen-cluster/<name>.json).
Needs root and iproute2/util-linux; checked before anything is changed.
"""

from __future__ import annotations

import ipaddress
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from facegen_ray.cluster.plan import (  # noqa: F401  (re-exported: the one module users and tests import)
    BUCKET,
    CREDENTIALS,
    DASHBOARD_PORT,
    RAY_PORT,
    REPO,
    S3_PORT,
    ClusterError,
    ClusterState,
    Host,
    add_host_record,
    anchor_command,
    anchor_script,
    bridge_commands,
    default_state_file,
    host_env,
    host_net_commands,
    in_host,
    new_state,
    ray_start_argv,
)

# ---------------------------------------------------------------- running the plans


def check_prerequisites() -> None:
    """Root and the tools; a clear error (exit 2) before anything is changed."""
    if os.geteuid() != 0:
        raise ClusterError("`facegen cluster` needs root (network namespaces, veth links, mounts): run it with sudo")
    missing = [t for t in ("ip", "unshare", "nsenter") if shutil.which(t) is None]
    if missing:
        raise ClusterError(f"`facegen cluster` needs {', '.join(missing)} (iproute2, util-linux) on PATH")


def _sh(argv: list[str], check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise ClusterError(f"`{shlex.join(argv)}` failed ({proc.returncode}): {proc.stderr.strip()[-800:]}")
    return proc


def check_subnet_free(state: ClusterState) -> None:
    net = ipaddress.ip_network(state.subnet)
    for link in json.loads(_sh(["ip", "-j", "addr"]).stdout or "[]"):
        for a in link.get("addr_info", []):
            if a.get("family") == "inet" and ipaddress.ip_address(a["local"]) in net:
                raise ClusterError(f"subnet {state.subnet} is in use ({a['local']} on {link['ifname']}): pick --subnet")
        if link.get("ifname") == state.bridge:
            raise ClusterError(
                f"link {state.bridge} exists: another cluster named {state.name!r}? (`facegen cluster down`)"
            )
    if _sh(["ip", "netns", "list"]).stdout.find(f"{state.name}-h") >= 0:
        raise ClusterError(f"network namespaces {state.name}-h* exist: run `facegen cluster down` first")


def netns_pids(ns: str) -> list[int]:
    proc = _sh(["ip", "netns", "pids", ns], check=False)
    return [int(p) for p in proc.stdout.split()] if proc.returncode == 0 else []


def _wait_port(ip: str, port: int, timeout: float) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            socket.create_connection((ip, port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.3)
    raise ClusterError(f"nothing listens on {ip}:{port} after {timeout:.0f}s")


def run_on(state: ClusterState, index: int, argv: list[str], timeout: float | None = None, **kw):
    """Run argv on host `index` (blocking); returns the CompletedProcess."""
    host = state.host(index)
    if not host.alive:
        raise ClusterError(f"host {index} is dead (killed); `facegen cluster add-host` makes a new one")
    return subprocess.run(in_host(state, host, argv), timeout=timeout, **kw)


def start_host(state: ClusterState, host: Host) -> None:
    """Namespace, link, anchor and (with_ray) the Ray node of one host."""
    for argv in host_net_commands(state, host):
        _sh(argv)
    os.makedirs(state.log_dir, exist_ok=True)
    log = open(os.path.join(state.log_dir, f"{host.ns}.anchor.log"), "w")
    proc = subprocess.Popen(anchor_command(state, host), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    host.anchor_pid = proc.pid
    state.save()
    end = time.monotonic() + 20
    while "ready" not in Path(log.name).read_text():
        if proc.poll() is not None or time.monotonic() > end:
            raise ClusterError(f"host {host.index}: anchor failed: {Path(log.name).read_text()[-800:]}")
        time.sleep(0.1)
    if state.with_ray:
        out = run_on(state, host.index, ray_start_argv(state, host), timeout=180, capture_output=True, text=True)
        Path(state.log_dir, f"{host.ns}.ray-start.log").write_text(out.stdout + out.stderr)
        if out.returncode != 0:
            raise ClusterError(f"host {host.index}: ray start failed: {(out.stdout + out.stderr)[-1200:]}")


def start_s3(state: ClusterState) -> None:
    log = open(os.path.join(state.log_dir, "s3.log"), "w")
    argv = [os.path.join(state.venv, "bin", "moto_server"), "-H", state.bridge_ip, "-p", str(S3_PORT)]
    state.s3_pid = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True).pid
    state.save()
    _wait_port(state.bridge_ip, S3_PORT, 30)
    import boto3

    s3 = boto3.client("s3", endpoint_url=state.s3_endpoint, region_name="us-east-1", **_boto_credentials())
    s3.create_bucket(Bucket=BUCKET)


def _boto_credentials() -> dict[str, str]:
    return {
        "aws_access_key_id": CREDENTIALS["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
    }


def up(hosts: int, state: ClusterState, with_s3: bool = True) -> ClusterState:
    """Build the cluster; on any failure, tear down what was made and re-raise."""
    check_prerequisites()
    if hosts < 1:
        raise ClusterError("--hosts must be at least 1")
    if os.path.exists(state.state_file):
        raise ClusterError(f"{state.state_file} exists: a cluster {state.name!r} is up (`facegen cluster down` first)")
    check_subnet_free(state)
    state.save()
    os.makedirs(state.log_dir, exist_ok=True)
    try:
        for argv in bridge_commands(state):
            _sh(argv)
        if with_s3:
            start_s3(state)
        for _ in range(hosts):
            start_host(state, add_host_record(state))
            state.save()
    except BaseException:
        down(state)
        raise
    return state


def add_host(state: ClusterState) -> Host:
    check_prerequisites()
    host = add_host_record(state)
    state.save()
    start_host(state, host)
    state.save()
    return host


def _kill_ns(ns: str) -> int:
    """SIGKILL every process in namespace `ns` until none is left; returns how many."""
    killed: set[int] = set()
    for _ in range(50):
        pids = netns_pids(ns)
        if not pids:
            break
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
                killed.add(pid)
            except ProcessLookupError:
                pass
        time.sleep(0.1)
    for pid in killed:  # reap the ones this process started (an anchor), not to leave zombies
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
    return len(killed)


def kill_host(state: ClusterState, index: int) -> int:
    """A host dies: SIGKILL all its processes, then its namespace and link go."""
    check_prerequisites()
    host = state.host(index)
    n = _kill_ns(host.ns)
    _sh(["ip", "netns", "del", host.ns], check=False)
    _sh(["ip", "link", "del", host.veth], check=False)
    host.alive = False
    state.save()
    return n


def partition(state: ClusterState, index: int, seconds: float) -> None:
    """Cut host `index` off the network (its link on the bridge down) for `seconds`."""
    check_prerequisites()
    host = state.host(index)
    _sh(["ip", "link", "set", host.veth, "down"])
    try:
        time.sleep(seconds)
    finally:
        _sh(["ip", "link", "set", host.veth, "up"])


def _is_ours(pid: int, needle: str) -> bool:
    try:
        return needle in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return False


def down(state: ClusterState) -> None:
    """Every process, namespace and link this cluster made (by PID/name from the state), and the state file."""
    for host in state.hosts:
        _kill_ns(host.ns)
        _sh(["ip", "netns", "del", host.ns], check=False)
        _sh(["ip", "link", "del", host.veth], check=False)
    if state.s3_pid and _is_ours(state.s3_pid, "moto_server"):
        os.kill(state.s3_pid, signal.SIGKILL)
    _sh(["ip", "link", "del", state.bridge], check=False)
    shutil.rmtree(state.log_dir, ignore_errors=True)
    for p in (state.state_file, state.state_file + ".tmp"):
        if os.path.exists(p):
            os.remove(p)


def status(state: ClusterState) -> list[dict]:
    rows = []
    for h in state.hosts:
        pids = netns_pids(h.ns) if h.alive else []
        rows.append({"host": h.index, "ns": h.ns, "ip": h.ip, "alive": h.alive and bool(pids), "processes": len(pids)})
    return rows


def summary(state: ClusterState) -> str:
    head = state.head.ip
    if not state.with_ray:
        return f"{len(state.hosts)} host(s) {', '.join(h.ip for h in state.hosts)} (no Ray, no S3); state: {state.state_file}"
    env = " ".join(f"{k}={v}" for k, v in CREDENTIALS.items())
    return "\n".join(
        [
            f"head: {head}:{RAY_PORT} (dashboard http://{head}:{DASHBOARD_PORT})",
            f"S3:   {state.s3_endpoint} bucket s3://{BUCKET} ({env})",
            f"submit: ray job submit --address http://{head}:{DASHBOARD_PORT} -- facegen train --root s3://{BUCKET}/demo ...",
            f"state: {state.state_file}",
        ]
    )
