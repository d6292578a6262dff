"""train/gloo.py: each train worker binds gloo to the interface that owns its node's IP."""

from __future__ import annotations

import pytest

from facegen_ray.train import gloo


def test_interface_for_ip_finds_loopback_and_nothing_for_a_foreign_address():
    assert gloo.interface_for_ip("127.0.0.1") == "lo"
    assert gloo.interface_for_ip("192.0.2.123") is None  # TEST-NET-1: on no interface here


def test_bind_sets_the_interface_of_the_node_ip(monkeypatch):
    # set, then delete: monkeypatch then restores the variable's absence after the test
    # (bind_to_node_ip writes os.environ itself; a leaked value breaks later gloo tests)
    monkeypatch.setenv(gloo.ENV, "placeholder")
    monkeypatch.delenv(gloo.ENV)
    monkeypatch.setattr(gloo, "interface_for_ip", lambda ip: {"10.1.2.3": "eth7"}.get(ip))
    assert gloo.bind_to_node_ip("10.1.2.3") == {"node_ip": "10.1.2.3", "interface": "eth7"}
    import os

    assert os.environ[gloo.ENV] == "eth7"


@pytest.mark.parametrize("preset,ip,expected", [("ib0", "10.1.2.3", "ib0"), (None, "127.0.0.1", None)])
def test_bind_keeps_a_users_choice_and_leaves_loopback_alone(monkeypatch, preset, ip, expected):
    # set, then delete: monkeypatch then restores the variable's absence after the test
    # (bind_to_node_ip writes os.environ itself; a leaked value breaks later gloo tests)
    monkeypatch.setenv(gloo.ENV, "placeholder")
    monkeypatch.delenv(gloo.ENV)
    if preset:
        monkeypatch.setenv(gloo.ENV, preset)
    assert gloo.bind_to_node_ip(ip)["interface"] == expected


def test_the_trainer_uses_the_node_address_backend():
    import inspect

    from facegen_ray.train import trainer

    assert isinstance(gloo.torch_config(), gloo.TorchConfig)
    assert gloo.torch_config().backend_cls is gloo._NodeAddressBackend
    assert "torch_config=torch_config()" in inspect.getsource(trainer.fit)
