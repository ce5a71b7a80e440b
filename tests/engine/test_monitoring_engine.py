"""How Prometheus reaches dockerd's metrics, and how an operator's SSH tunnel reaches Prometheus, on
the real engine (Debian's docker.io 20.10.24).

The engine runs with `metrics-addr` on its default bridge's address (tests/engine/daemon.py, as
render/cloud_init.py configures the host). components/monitoring.py puts Prometheus on the internal
`monitoring` network with `host.docker.internal` mapped to `host-gateway`.
"""

from __future__ import annotations

import os
import socket
import time

import docker
import pytest

from render.monitoring import DOCKER_HOST_ALIAS, DOCKERD_METRICS_PORT
from tests.engine.daemon import METRICS_ADDR, TEST_LABEL, clean

FETCH = ("const r=require('http').get({host:process.argv[1],port:+process.argv[2],path:'/metrics',timeout:3000},"
         "s=>{let b='';s.on('data',d=>b+=d);s.on('end',()=>{console.log(b.includes("
         "'engine_daemon_container_states_containers')?'METRICS':'OTHER');process.exit(0)})});"
         "r.on('timeout',()=>{console.log('TIMEOUT');process.exit(0)});r.on('error',e=>{console.log('ERROR '+e.code);"
         "process.exit(0)})")


def fetch_from(client: docker.DockerClient, image: str, network: str, mapped: bool = True) -> str:
    output = client.containers.run(
        image, ["node", "-e", FETCH, DOCKER_HOST_ALIAS, str(DOCKERD_METRICS_PORT)], network=network,
        extra_hosts={DOCKER_HOST_ALIAS: "host-gateway"} if mapped else None, labels={TEST_LABEL: "metrics-probe"},
        user="1001:1001", remove=True, stdout=True, stderr=True)
    return bytes(output).decode().strip()


def test_dockerd_metrics_reach_an_internal_network_through_host_gateway(engine_client: docker.DockerClient,
                                                                         engine_images: dict[str, str]) -> None:
    """A container on an internal network still reaches the host's own addresses (Docker 20.10's
    isolation rules filter forwarded traffic, not traffic to the host): Prometheus needs no other network
    for dockerd's metrics. The name comes only from the `host-gateway` mapping."""
    if os.environ.get("MSC_ENGINE_HOST"):
        pytest.skip("an external engine (MSC_ENGINE_HOST) runs without this test's metrics-addr")
    assert METRICS_ADDR.endswith(f":{DOCKERD_METRICS_PORT}")
    clean(engine_client)
    internal = engine_client.networks.create("mysaaschat-test-monitoring", driver="bridge", internal=True,
                                             labels={TEST_LABEL: "net"})
    try:
        assert fetch_from(engine_client, engine_images["stub"], internal.name) == "METRICS"
        assert fetch_from(engine_client, engine_images["stub"], internal.name, mapped=False) != "METRICS"
    finally:
        clean(engine_client)


def test_the_host_reaches_a_container_on_an_internal_network(engine_client: docker.DockerClient,
                                                            engine_images: dict[str, str]) -> None:
    """What the README's SSH tunnel relies on: from the host, Prometheus' address on the internal
    `monitoring` network answers (no published port needed)."""
    clean(engine_client)
    internal = engine_client.networks.create("mysaaschat-test-monitoring", driver="bridge", internal=True,
                                             labels={TEST_LABEL: "net"})
    try:
        target = engine_client.containers.run(engine_images["stub"], detach=True, network=internal.name,
                                              environment={"PORT": "8080"}, labels={TEST_LABEL: "target"},
                                              user="1001:1001")
        target.reload()
        ip = target.attrs["NetworkSettings"]["Networks"][internal.name]["IPAddress"]
        deadline = time.monotonic() + 30
        while True:
            try:
                with socket.create_connection((ip, 8080), timeout=1):
                    break
            except OSError:
                assert time.monotonic() < deadline, f"{ip}:8080 on the internal network never answered the host"
                time.sleep(0.5)
    finally:
        clean(engine_client)
