"""gloo binds to the node's own address, not to what the hostname resolves to.

gloo (torch.distributed's CPU backend) picks the address each rank listens on from
gethostname(); where that resolves to loopback (Debian/Ubuntu's `127.0.1.1 <hostname>` line, a
container, a network namespace) every rank advertises 127.x and the full mesh between hosts fails
("Gloo connectFullMesh failed ... remote=[127.0.0.1]"). torch reads GLOO_SOCKET_IFNAME when the
process group is created, so before Ray Train creates it, each worker sets it to the interface
that owns the node IP Ray reports for that worker's node (ray.util.get_node_ip_address), unless
the user set it. `torch_config()` is the TorchConfig that does this (given to the TorchTrainer).
"""

from __future__ import annotations

import ipaddress
import os
import socket

import ray
from ray.train.torch import TorchConfig
from ray.train.torch.config import _TorchBackend

ENV = "GLOO_SOCKET_IFNAME"


def interface_for_ip(ip: str) -> str | None:
    """The name of the network interface that holds IPv4/IPv6 address `ip` on this machine."""
    import psutil  # a Ray dependency

    want = ipaddress.ip_address(ip)
    for name, addrs in psutil.net_if_addrs().items():
        for a in addrs:
            if a.family in (socket.AF_INET, socket.AF_INET6):
                try:
                    if ipaddress.ip_address(a.address.split("%")[0]) == want:
                        return name
                except ValueError:
                    continue
    return None


def bind_to_node_ip(node_ip: str | None = None) -> dict[str, str | None]:
    """Set GLOO_SOCKET_IFNAME in this process to the interface of the node's IP (kept when the
    user set it; left unset when the node IP is loopback or on no interface: gloo's default is
    then right or nothing better is known). Returns {"node_ip", "interface"} for the log."""
    node_ip = node_ip or ray.util.get_node_ip_address()
    iface = os.environ.get(ENV) or None
    if iface is None and not ipaddress.ip_address(node_ip).is_loopback:
        iface = interface_for_ip(node_ip)
        if iface:
            os.environ[ENV] = iface
    return {"node_ip": node_ip, "interface": iface}


class _NodeAddressBackend(_TorchBackend):
    def on_start(self, worker_group, backend_config) -> None:
        worker_group.execute(bind_to_node_ip)  # before the process group exists
        super().on_start(worker_group, backend_config)


class NodeAddressTorchConfig(TorchConfig):
    """Ray Train's TorchConfig whose backend binds gloo to each node's address first."""

    @property
    def backend_cls(self):
        return _NodeAddressBackend


def torch_config() -> TorchConfig:
    return NodeAddressTorchConfig()
