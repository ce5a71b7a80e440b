"""The `local` stack's gateway on a real Docker 20.10 engine, replayed exactly as recorded.

The gateway container, its config volume and its never-started seed are replayed from what `ops
synth local` records (tests/engine/replay.py), with two departures only, both forced by the test
machine: the image (the nginx stand-in, tests/engine/images/nginx: Debian's nginx-light as uid 101)
and the host side of the published ports (the recorded 0.0.0.0:80 and 0.0.0.0:443 become free
ports on 127.0.0.1; the container side, 8080/8443, is as recorded). Behind it run the recorded
service containers on the stub image, under the generated names nginx.conf names. The self-signed
certificate is made from the recorded pulumi-tls inputs (the mocks only stand in for its output),
and the reload is the recorded `command:local:Command`, run against this engine.
"""

from __future__ import annotations

import http.client
import io
import json
import socket
import ssl
import tarfile
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import docker
import pytest

from render.nginx import CONF_DIR, health_routes
from tests.conftest import recording
from tests.engine.daemon import TEST_LABEL, Engine, clean
from tests.engine.replay import Replay, plain
from tests.engine.test_local_stack import NODE_CONNECT, _status

CONF = f"{CONF_DIR}/nginx.conf"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def stack(engine: Engine, engine_client: docker.DockerClient, engine_images: dict[str, str]) -> Iterator[Replay]:
    clean(engine_client)
    publish = {80: ("127.0.0.1", free_port()), 443: ("127.0.0.1", free_port())}
    replay = Replay(engine_client, recording("local"), engine_images, publish=publish, docker_host=engine.socket)
    try:
        replay.up()
        yield replay
    finally:
        clean(engine_client)


class Pinned(http.client.HTTPSConnection):
    """HTTPS to the published port on 127.0.0.1, verifying the certificate for the stack's domain (SNI too)."""

    def __init__(self, domain: str, port: int, context: ssl.SSLContext) -> None:
        super().__init__(domain, port, context=context, timeout=10)

    def connect(self) -> None:
        sock = socket.create_connection(("127.0.0.1", self.port), self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)  # type: ignore[attr-defined]


def tls_context(stack: Replay) -> ssl.SSLContext:
    code, cert = stack.exec("gateway", ["cat", f"{CONF_DIR}/tls/cert.pem"])
    assert code == 0 and "BEGIN CERTIFICATE" in cert and "MOCK" not in cert, cert[:200]
    context = ssl.create_default_context(cadata=cert)  # check_hostname stays on
    return context


def get(stack: Replay, path: str, context: ssl.SSLContext, request_id: str | None = None) -> tuple[int, bytes]:
    assert stack.publish is not None
    conn = Pinned(stack.recording.env.domain, stack.publish[443][1], context)
    try:
        conn.request("GET", path, headers={"X-Request-ID": request_id or uuid.uuid4().hex})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def access_log(stack: Replay) -> dict[str, dict[str, Any]]:
    """The gateway's JSON access log (its stdout), by request id."""
    out = stack.client.api.logs(stack.containers["gateway"].id, stdout=True, stderr=False).decode(errors="replace")
    lines = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    return {line["request_id"]: line for line in lines}


def apps_address(stack: Replay, name: str) -> str:
    networks = stack.inspect(name)["NetworkSettings"]["Networks"]
    return str(networks[f"mysaaschat-{stack.recording.stack}-apps"]["IPAddress"])


# --- it runs as recorded ------------------------------------------------------------------------

def test_the_gateway_turns_healthy_hardened_as_recorded(stack: Replay) -> None:
    live = stack.containers["gateway"]
    i = plain(live.reg.inputs)
    assert live.name == i["name"] == "mysaaschat-local-gateway"
    assert stack.healthy_after["gateway"] <= i["waitTimeout"]
    assert stack.inspect("gateway")["State"]["Health"]["Status"] == "healthy"
    assert stack.inspect("gateway-files")["State"]["Status"] == "created"  # the seed never runs
    # Every nginx process (master and workers) as 101:101, no capabilities, no new privileges.
    _, out = stack.exec("gateway", ["sh", "-c", "for p in /proc/[0-9]*; do grep -q nginx $p/comm 2>/dev/null "
                                                "&& cat $p/status && echo ===; done"])
    processes = [_status(part) for part in out.split("===") if part.strip()]
    assert len(processes) >= 2, out  # a master and at least one worker
    for proc in processes:
        assert proc["Uid"].split() == ["101"] * 4 and proc["Gid"].split() == ["101"] * 4, proc["Uid"]
        assert proc["NoNewPrivs"].strip() == "1" and int(proc["CapEff"], 16) == 0 and int(proc["CapBnd"], 16) == 0
    _, out = stack.exec("gateway", ["sh", "-c", "touch /probe 2>&1; touch /etc/mysaaschat-gateway/x 2>&1; "
                                                "stat -c '%u:%g %a' /etc/mysaaschat-gateway/nginx.conf"])
    assert out.count("Read-only file system") == 2 and out.splitlines()[-1] == "101:101 400", out


def test_only_the_gateway_publishes_ports(stack: Replay) -> None:
    assert stack.publish is not None
    published = {name: stack.inspect(name)["HostConfig"].get("PortBindings") or {} for name in stack.running()}
    assert {name for name, ports in published.items() if ports} == {"gateway"}
    assert published["gateway"] == {
        "8080/tcp": [{"HostIp": "127.0.0.1", "HostPort": str(stack.publish[80][1])}],
        "8443/tcp": [{"HostIp": "127.0.0.1", "HostPort": str(stack.publish[443][1])}]}


# --- it serves --------------------------------------------------------------------------------

def test_every_route_and_health_path_reaches_its_service_on_the_published_https_port(stack: Replay) -> None:
    """Each route's request is answered through the gateway by that service's container (the
    gateway's access log names the upstream address: the container's address on `apps`)."""
    env, context = stack.recording.env, tls_context(stack)
    sent: dict[str, tuple[str, str]] = {}  # request id -> (service, path)
    for svc, spec in env.services.items():
        for route in spec.routes:
            # The stub answers 200 on any path ending in /health, so every route can be probed.
            path = route.prefix.rstrip("/") + "/health"
            rid = uuid.uuid4().hex
            status, body = get(stack, path, context, rid)
            assert status == 200, (svc, path, status, body[:200])
            sent[rid] = (svc, path)
    for svc, path in health_routes(env).items():
        rid = uuid.uuid4().hex
        status, body = get(stack, path, context, rid)
        assert status == 200 and json.loads(body)["status"] == "ok", (svc, path, status, body[:200])
        sent[rid] = (svc, path)
    time.sleep(0.5)  # the access log reaches the engine
    logged = access_log(stack)
    for rid, (svc, path) in sent.items():
        line = logged[rid]
        assert line["upstream"] == f"{apps_address(stack, svc)}:{env.services[svc].port}", (svc, path, line)
        assert line["status"] == "200" and line["upstream_status"] == "200", line
    status, _ = get(stack, "/healthz", context)
    assert status == 200


def test_tls_works_with_the_recorded_self_signed_certificate(stack: Replay) -> None:
    context = tls_context(stack)
    assert stack.publish is not None
    conn = Pinned(stack.recording.env.domain, stack.publish[443][1], context)
    conn.connect()
    try:
        tls_sock = conn.sock
        assert isinstance(tls_sock, ssl.SSLSocket)
        assert tls_sock.version() in ("TLSv1.2", "TLSv1.3")
        peer: dict[str, Any] = dict(tls_sock.getpeercert() or {})
        names = [value for kind, value in peer.get("subjectAltName", ()) if kind == "DNS"]
        assert names == [stack.recording.env.domain]
    finally:
        conn.close()
    # The name is checked: the same certificate for another name is refused.
    wrong = Pinned("not-" + stack.recording.env.domain, stack.publish[443][1], context)
    with pytest.raises(ssl.SSLCertVerificationError):
        wrong.connect()
    wrong.close()


def test_http_redirects_to_https_except_the_acme_path(stack: Replay) -> None:
    assert stack.publish is not None
    conn = http.client.HTTPConnection("127.0.0.1", stack.publish[80][1], timeout=10)
    try:
        conn.request("GET", "/api/auth/login?x=1", headers={"Host": stack.recording.env.domain})
        response = conn.getresponse()
        response.read()
        assert response.status == 301
        assert response.getheader("Location") == f"https://{stack.recording.env.domain}/api/auth/login?x=1"
        conn.request("GET", "/.well-known/acme-challenge/missing", headers={"Host": stack.recording.env.domain})
        response = conn.getresponse()
        response.read()
        assert response.status == 404  # served from the challenge root, not redirected
    finally:
        conn.close()


# --- reloads --------------------------------------------------------------------------------------

def write_conf(stack: Replay, text: str) -> None:
    """What a replaced seed does: a one-file tar into the config volume through the never-started
    seed container, which mounts it read-write (the gateway mounts it read-only)."""
    info = tarfile.TarInfo(CONF.lstrip("/"))
    data = text.encode()
    info.size, info.mode, info.uid, info.gid = len(data), 0o400, 101, 101
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        tar.addfile(info, io.BytesIO(data))
    assert stack.client.api.put_archive(stack.containers["gateway-files"].id, "/", buf.getvalue())


def test_the_recorded_reload_takes_a_good_config_and_refuses_a_bad_one(stack: Replay) -> None:
    context = tls_context(stack)
    recorded = next(u["content"] for u in plain(stack.containers["gateway-files"].reg.inputs)["uploads"]
                    if u["file"] == CONF)
    master = stack.exec("gateway", ["cat", "/tmp/nginx.pid"])[1].strip()
    anchor = "        ssl_session_tickets off;\n"  # in the HTTPS server only
    assert recorded.count(anchor) == 1
    good = recorded.replace(anchor, anchor + "        location = /reload-probe {\n            return 200 'v2';\n        }\n")
    assert get(stack, "/reload-probe", context)[0] == 404  # before: the frontend's stub knows no such page

    # Requests from several clients, each on a new connection, throughout both reloads.
    failures: list[str] = []
    answered = [0]
    stop = threading.Event()

    def load() -> None:
        while not stop.is_set():
            try:
                # The webhook route: exempt from the per-client limit, which would answer 429 here.
                status, _ = get(stack, "/api/billing/webhooks/stripe/health", context)
                if status != 200:
                    failures.append(str(status))
                answered[0] += 1
            except (OSError, http.client.HTTPException) as error:
                failures.append(repr(error))

    clients = [threading.Thread(target=load) for _ in range(4)]
    for client in clients:
        client.start()
    try:
        time.sleep(1)
        write_conf(stack, good)
        done = stack.run_command("gateway-reload")
        assert done.returncode == 0, done.stderr
        deadline = time.monotonic() + 10
        while get(stack, "/reload-probe", context) != (200, b"v2"):
            assert time.monotonic() < deadline, "the reloaded config was never served"
            time.sleep(0.2)

        # A config nginx refuses (limit_req_zone inside server{}, the seed's mistake) never reaches it.
        bad = good.replace("        location = /reload-probe {",
                           "        limit_req_zone $binary_remote_addr zone=late:1m rate=1r/s;\n"
                           "        location = /reload-probe {", 1)
        write_conf(stack, bad)
        refused = stack.run_command("gateway-reload")
        assert refused.returncode != 0
        assert '"limit_req_zone" directive is not allowed here' in refused.stdout + refused.stderr, refused
        time.sleep(1)
        assert get(stack, "/reload-probe", context) == (200, b"v2")  # the last good one keeps serving
        time.sleep(1)
    finally:
        stop.set()
        for client in clients:
            client.join(30)
        write_conf(stack, recorded)
        stack.run_command("gateway-reload")
    assert not failures and answered[0] > 50, (failures[:5], answered[0])
    assert stack.exec("gateway", ["cat", "/tmp/nginx.pid"])[1].strip() == master  # reloaded, never restarted
    assert stack.inspect("gateway")["RestartCount"] == 0


# --- who reaches what ----------------------------------------------------------------------------

def test_a_service_is_reachable_only_through_the_gateway(stack: Replay, engine_client: docker.DockerClient,
                                                         engine_images: dict[str, str]) -> None:
    """From the edge network (the side the internet arrives on), a client reaches the gateway's
    8080 and neither a service's name nor its address on `apps`; on the host, no port of a
    service is published."""
    env = stack.recording.env
    svc = "auth-service"
    port = env.services[svc].port
    edge = f"mysaaschat-{stack.recording.stack}-edge"
    gateway_edge = stack.inspect("gateway")["NetworkSettings"]["Networks"][edge]["IPAddress"]
    target = apps_address(stack, svc)
    outsider = engine_client.containers.run(
        engine_images["stub"], detach=True, network=edge, labels={TEST_LABEL: "outsider"}, user="1001:1001",
        entrypoint=["sleep", "300"])
    try:
        def connect(host: str, to: int) -> str:
            result = engine_client.api.exec_create(outsider.id, ["node", "-e", NODE_CONNECT, host, str(to), "2000"])
            return engine_client.api.exec_start(result["Id"]).decode().strip()

        assert connect(gateway_edge, 8080) == "open"  # positive control: the edge reaches the gateway
        assert connect("gateway", 8080) == "open"
        assert connect(target, port) == "timeout"  # dropped by the engine's isolation rules
        assert connect(svc, port) in ("ENOTFOUND", "EAI_AGAIN", "timeout")
        assert connect(stack.containers[svc].name, port) in ("ENOTFOUND", "EAI_AGAIN", "timeout")
    finally:
        outsider.remove(force=True)
    # On the host: the service's port is published nowhere (the gateway's ports are, as a control).
    assert stack.publish is not None

    def host_connects(to: int) -> bool:
        try:
            socket.create_connection(("127.0.0.1", to), timeout=2).close()
            return True
        except OSError:
            return False

    assert host_connects(stack.publish[443][1]) and host_connects(stack.publish[80][1])
    assert not host_connects(port)

