"""The local cluster's state and the commands that build it (pure: no root needed to build a plan).

Names: bridge <name>-br with <subnet>.254 (the root namespace's side); host i = netns <name>-h<i>,
veth <name>-v<i> on the bridge with eth0 inside at <subnet>.<i+1>. See facegen_ray.cluster.local.
"""

from __future__ import annotations

import ipaddress
import json
import os
import shlex
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

from facegen_ray.errors import UserError

REPO = str(Path(__file__).resolve().parents[2])
STATE_DIR = "/run/facegen-cluster"
RAY_PORT, DASHBOARD_PORT, S3_PORT = 6379, 8265, 9000
BUCKET = "facegen"
CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "facegen",
    "AWS_SECRET_ACCESS_KEY": "facegen-secret",
    "AWS_DEFAULT_REGION": "us-east-1",
}


class ClusterError(UserError):
    """The local cluster cannot be built or used (not root, tools missing, subnet taken...)."""


@dataclass
class Host:
    index: int
    ns: str
    ip: str
    veth: str  # the root namespace's end (on the bridge); the host's end is eth0
    anchor_pid: int = 0
    alive: bool = True


@dataclass
class ClusterState:
    name: str
    subnet: str
    bridge: str
    bridge_ip: str
    state_file: str
    venv: str
    cpus_per_host: float = 2.0
    head_cpus: float = 0.0
    object_store_bytes: int = 300_000_000
    with_ray: bool = True
    s3_pid: int = 0
    hosts: list[Host] = field(default_factory=list)

    @property
    def head(self) -> Host:
        return self.hosts[0]

    @property
    def s3_endpoint(self) -> str:
        return f"http://{self.bridge_ip}:{S3_PORT}"

    @property
    def log_dir(self) -> str:
        return os.path.splitext(self.state_file)[0] + ".d"

    def host(self, index: int) -> Host:
        for h in self.hosts:
            if h.index == index:
                return h
        raise ClusterError(f"no host {index} in cluster {self.name!r} (hosts: {[h.index for h in self.hosts]})")

    def save(self) -> None:
        os.makedirs(os.path.dirname(self.state_file), exist_ok=True)
        tmp = self.state_file + ".tmp"
        with open(tmp, "w") as f:
            json.dump(asdict(self), f, indent=2)
        os.replace(tmp, self.state_file)

    @classmethod
    def load(cls, state_file: str) -> ClusterState:
        try:
            with open(state_file) as f:
                raw = json.load(f)
        except FileNotFoundError:
            raise ClusterError(f"no local cluster state at {state_file}: run `facegen cluster up` first") from None
        raw["hosts"] = [Host(**h) for h in raw["hosts"]]
        return cls(**raw)


def default_state_file(name: str) -> str:
    return os.environ.get("FACEGEN_CLUSTER_STATE") or f"{STATE_DIR}/{name}.json"


def new_state(name: str, subnet: str, state_file: str, **kw) -> ClusterState:
    if not name.replace("-", "").isalnum() or len(name) > 8:
        raise ClusterError(f"cluster name {name!r}: use up to 8 letters/digits (it prefixes interface names)")
    net = ipaddress.ip_network(subnet, strict=True)
    if net.version != 4 or net.prefixlen != 24 or not net.is_private:
        raise ClusterError(f"subnet {subnet}: use a private IPv4 /24 such as 10.213.0.0/24")
    return ClusterState(
        name=name,
        subnet=str(net),
        bridge=f"{name}-br",
        bridge_ip=str(net.network_address + 254),
        state_file=state_file,
        venv=sys.prefix,
        **kw,
    )


def add_host_record(state: ClusterState) -> Host:
    i = max((h.index for h in state.hosts), default=-1) + 1
    if i > 200:
        raise ClusterError("at most 200 hosts per cluster")
    net = ipaddress.ip_network(state.subnet)
    host = Host(index=i, ns=f"{state.name}-h{i}", ip=str(net.network_address + i + 1), veth=f"{state.name}-v{i}")
    state.hosts.append(host)
    return host


# ---------------------------------------------------------------- command plans (pure; tested without root)


def bridge_commands(state: ClusterState) -> list[list[str]]:
    return [
        ["ip", "link", "add", state.bridge, "type", "bridge"],
        ["ip", "addr", "add", f"{state.bridge_ip}/24", "dev", state.bridge],
        ["ip", "link", "set", state.bridge, "up"],
    ]


def host_net_commands(state: ClusterState, host: Host) -> list[list[str]]:
    return [
        ["ip", "netns", "add", host.ns],
        ["ip", "link", "add", host.veth, "type", "veth", "peer", "name", "eth0", "netns", host.ns],
        ["ip", "link", "set", host.veth, "master", state.bridge],
        ["ip", "link", "set", host.veth, "up"],
        ["ip", "-n", host.ns, "link", "set", "lo", "up"],
        ["ip", "-n", host.ns, "addr", "add", f"{host.ip}/24", "dev", "eth0"],
        ["ip", "-n", host.ns, "link", "set", "eth0", "up"],
    ]


def anchor_script(state: ClusterState) -> str:
    """What the anchor runs in its private mount namespace before it sleeps: private /tmp,
    /dev/shm and HOME; paths this process needs that live under /tmp (a venv there) bound back
    in; the checkout read-only."""
    keep = [p for p in {state.venv} if p == "/tmp" or p.startswith("/tmp/")]
    hold = os.path.join(state.log_dir, "hold")
    lines = ["set -e"]
    for k, p in enumerate(keep):  # park them outside /tmp before the tmpfs hides them
        lines += [f"mkdir -p {hold}/{k}", f"mount --bind {shlex.quote(p)} {hold}/{k}"]
    lines += [
        "mount -t tmpfs -o mode=1777 tmpfs /tmp",
        "mount -t tmpfs -o mode=1777 tmpfs /dev/shm",
        "mkdir -p /tmp/home",
    ]
    for k, p in enumerate(keep):
        lines += [f"mkdir -p {shlex.quote(p)}", f"mount --bind {hold}/{k} {shlex.quote(p)}"]
    q = shlex.quote(REPO)
    lines += [f"mount --bind {q} {q}", f"mount -o remount,bind,ro {q}", "echo ready", "exec sleep infinity"]
    return "\n".join(lines)


def anchor_command(state: ClusterState, host: Host) -> list[str]:
    return [
        "ip",
        "netns",
        "exec",
        host.ns,
        "unshare",
        "--mount",
        "--propagation",
        "private",
        "sh",
        "-c",
        anchor_script(state),
    ]


def host_env(state: ClusterState) -> dict[str, str]:
    """A host's own environment: its tools, private HOME, the S3 endpoint and credentials."""
    return {
        "PATH": f"{state.venv}/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "HOME": "/tmp/home",
        "TMPDIR": "/tmp",
        "LANG": "C.UTF-8",
        "RAY_USAGE_STATS_ENABLED": "0",
        "AWS_ENDPOINT_URL": state.s3_endpoint,
        "FACEGEN_S3_ENDPOINT_URL": state.s3_endpoint,
        **CREDENTIALS,
    }


def in_host(state: ClusterState, host: Host, argv: list[str], extra_env: dict[str, str] | None = None) -> list[str]:
    """argv as run on `host`: in its anchor's mount and network namespaces, clean environment."""
    env = [f"{k}={v}" for k, v in {**host_env(state), **(extra_env or {})}.items()]
    target = ["nsenter", "--target", str(host.anchor_pid), "--mount", "--net", "--"]
    return target + ["env", "-i", "-C", REPO, *env, *argv]


def ray_start_argv(state: ClusterState, host: Host) -> list[str]:
    common = [
        "--node-ip-address",
        host.ip,
        "--object-store-memory",
        str(state.object_store_bytes),
        "--disable-usage-stats",
    ]
    if host.index == state.head.index:
        head = ["ray", "start", "--head", "--port", str(RAY_PORT), "--dashboard-host", host.ip]
        return head + ["--dashboard-port", str(DASHBOARD_PORT), "--num-cpus", str(int(state.head_cpus)), *common]
    return [
        "ray",
        "start",
        "--address",
        f"{state.head.ip}:{RAY_PORT}",
        "--num-cpus",
        str(int(state.cpus_per_host)),
        *common,
    ]
