"""`facegen cluster` (facegen_ray.cluster.local): the command plan it builds (no root needed), its
refusals, and (as root, with `ip netns`) a 1-host cluster without Ray brought up and torn down."""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid

import pytest

from facegen_ray.cli import main as cli_main
from facegen_ray.cluster import local


def _state(tmp_path, venv="/work/venv"):
    state = local.new_state("fgx", "10.213.7.0/24", str(tmp_path / "fgx.json"))
    state.venv = venv
    for _ in range(3):
        local.add_host_record(state)
    return state


def test_plan_names_addresses_and_isolation(tmp_path):
    state = _state(tmp_path)
    assert state.bridge == "fgx-br" and state.bridge_ip == "10.213.7.254"
    assert [(h.ns, h.ip, h.veth) for h in state.hosts] == [
        ("fgx-h0", "10.213.7.1", "fgx-v0"),
        ("fgx-h1", "10.213.7.2", "fgx-v1"),
        ("fgx-h2", "10.213.7.3", "fgx-v2"),
    ]
    net = local.host_net_commands(state, state.hosts[1])
    assert ["ip", "link", "add", "fgx-v1", "type", "veth", "peer", "name", "eth0", "netns", "fgx-h1"] in net
    assert ["ip", "link", "set", "fgx-v1", "master", "fgx-br"] in net
    assert ["ip", "-n", "fgx-h1", "link", "set", "lo", "up"] in net
    assert ["ip", "-n", "fgx-h1", "addr", "add", "10.213.7.2/24", "dev", "eth0"] in net
    # private /tmp, /dev/shm and HOME; the checkout read-only; nothing under /tmp to bind back
    script = local.anchor_script(state)
    assert "mount -t tmpfs -o mode=1777 tmpfs /tmp" in script and "tmpfs /dev/shm" in script
    assert f"mount -o remount,bind,ro {local.REPO}" in script
    assert "/work/venv" not in script and script.rstrip().endswith("exec sleep infinity")
    anchor = local.anchor_command(state, state.hosts[2])
    assert anchor[:8] == ["ip", "netns", "exec", "fgx-h2", "unshare", "--mount", "--propagation", "private"]
    # commands join the anchor's namespaces with the host's own (clean) environment
    state.hosts[1].anchor_pid = 4242
    argv = local.in_host(state, state.hosts[1], ["ray", "status"])
    assert argv[:6] == ["nsenter", "--target", "4242", "--mount", "--net", "--"]
    assert argv[6:10] == ["env", "-i", "-C", local.REPO]
    assert "HOME=/tmp/home" in argv and "AWS_ENDPOINT_URL=http://10.213.7.254:9000" in argv
    assert argv[-2:] == ["ray", "status"]
    head = local.ray_start_argv(state, state.hosts[0])
    assert head[:3] == ["ray", "start", "--head"] and head[head.index("--num-cpus") + 1] == "0"
    assert head[head.index("--dashboard-host") + 1] == "10.213.7.1"
    worker = local.ray_start_argv(state, state.hosts[2])
    assert worker[worker.index("--address") + 1] == "10.213.7.1:6379"
    assert worker[worker.index("--node-ip-address") + 1] == "10.213.7.3"


def test_venv_under_tmp_is_bound_back(tmp_path):
    script = local.anchor_script(_state(tmp_path, venv="/tmp/env/venv"))
    hide = script.index("mount -t tmpfs -o mode=1777 tmpfs /tmp")
    assert script.index("mount --bind /tmp/env/venv") < hide  # parked before the tmpfs hides it
    assert script.index("mkdir -p /tmp/env/venv") > hide  # and bound back after


@pytest.mark.parametrize("name,subnet", [("a b", "10.213.0.0/24"), ("fg", "8.8.8.0/24"), ("fg", "10.213.0.0/16")])
def test_bad_name_or_subnet_refused(tmp_path, name, subnet):
    with pytest.raises(local.ClusterError):
        local.new_state(name, subnet, str(tmp_path / "s.json"))


def test_not_root_is_a_clear_error(monkeypatch, capsys):
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert cli_main(["cluster", "up", "--hosts", "1", "--no-ray"]) == 2
    assert "needs root" in capsys.readouterr().err


def test_no_state_is_a_clear_error(tmp_path, capsys):
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("needs root and iproute2 (the prerequisites are checked first)")
    assert cli_main(["cluster", "down", "--state", str(tmp_path / "none.json")]) == 2
    assert "run `facegen cluster up` first" in capsys.readouterr().err


def _netns_ok() -> str | None:
    if os.geteuid() != 0:
        return "not root: network namespaces need root"
    if not shutil.which("ip") or subprocess.run(["ip", "netns", "list"], capture_output=True).returncode != 0:
        return "`ip netns` is missing"
    return None


def test_one_host_up_and_down_without_ray(tmp_path):
    if reason := _netns_ok():
        pytest.skip(reason)
    name = "t" + uuid.uuid4().hex[:5]
    state = local.new_state(name, f"10.213.{100 + os.getpid() % 100}.0/24", str(tmp_path / "c.json"), with_ray=False)
    local.up(1, state, with_s3=False)
    try:
        host = state.hosts[0]
        assert local.netns_pids(host.ns) == [host.anchor_pid]
        out = local.run_on(
            state,
            0,
            ["sh", "-c", "echo $HOME; ls -A /tmp; touch " + local.REPO + "/x || echo ro"],
            capture_output=True,
            text=True,
        )
        home, tmp, *rest = out.stdout.split("\n")
        assert (home, tmp) == ("/tmp/home", "home") and "ro" in rest  # private /tmp, read-only checkout
        assert local.ClusterState.load(state.state_file).hosts[0].anchor_pid == host.anchor_pid
    finally:
        local.down(state)
    assert name + "-h0" not in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert subprocess.run(["ip", "link", "show", state.bridge], capture_output=True).returncode != 0
    assert not os.path.exists(state.state_file)
    with pytest.raises(ProcessLookupError):
        os.kill(host.anchor_pid, 0)
