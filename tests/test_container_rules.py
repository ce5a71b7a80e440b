"""The hardening module refuses replacement settings that would break its guarantees."""

from __future__ import annotations

from typing import Any

import pulumi
import pytest

from components.container import ContainerSpec, hardened_container


def spec(**overrides: Any) -> ContainerSpec:
    base: dict[str, Any] = dict(service="x", image=None, user="1:1", cpus=1.0, memory_bytes=1 << 28,
                                healthcheck=["CMD", "true"], health={}, networks=[])
    return ContainerSpec(**{**base, **overrides})


@pytest.mark.parametrize(("overrides", "message"), [
    ({"lifecycle": "stateless", "fixed_name": "x"}, "must not have a fixed name"),
    ({"lifecycle": "stateful"}, "needs a fixed name"),
    # Host ports are the edge's alone: two containers cannot hold one, and a service must be
    # replaceable start-first.
    ({"lifecycle": "stateless", "ports": {80: 8080}}, "only the edge container publishes host ports"),
    ({"lifecycle": "stateful", "fixed_name": "x", "hostname": "x", "ports": {5432: 5432}},
     "only the edge container publishes host ports"),
    ({"lifecycle": "edge", "ports": {443: 8443}}, "the edge container needs a fixed name"),
])
def test_replacement_guards(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        hardened_container("x", spec(**overrides), "test", pulumi.ResourceOptions())


def test_host_mounts_only_as_declared() -> None:
    """Host paths reach a container only as config/host_access.py declares them for that service."""
    from config.host_access import HOST_ACCESS, HostMount

    declared = HOST_ACCESS["node-exporter"].mounts[0]
    with pytest.raises(ValueError, match="host mounts must be declared"):
        hardened_container("x", spec(service="auth-service", host_mounts=[declared]), "test", pulumi.ResourceOptions())
    with pytest.raises(ValueError, match="host mounts must be declared"):
        hardened_container("x", spec(service="node-exporter", host_mounts=[HostMount("/etc", "/host/etc", "no")]),
                           "test", pulumi.ResourceOptions())


def test_a_bind_mount_through_mounts_is_checked_too() -> None:
    from components.container import Mount

    with pytest.raises(ValueError, match="host mounts must be declared"):
        hardened_container("x", spec(service="postgres", mounts=[Mount(None, "/etc", read_only=True, host_path="/etc")]),
                           "test", pulumi.ResourceOptions())
