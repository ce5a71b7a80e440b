"""The registry-free stand-ins match the official images in everything the program relies on.

Each store is started the way `components/data.py` + `components/container.py` start it: the recipe's
user, env, command, tmpfs and healthcheck, a read-only root, all capabilities dropped,
no-new-privileges, an init, a data volume and a secrets volume whose files are uploaded before start
(owner from the recipe, mode 0400). Containers sit on an internal network the test creates; the test
process reaches them by their address on it, or through `docker exec`.
"""

from __future__ import annotations

import contextlib
import io
import json
import socket
import tarfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker
import docker.errors
import pytest
from docker.models.containers import Container
from docker.models.networks import Network

from components.data import RECIPES, Recipe
from config import Environment, load_environment, read_stack_file

pytestmark = pytest.mark.engine

ROOT = Path(__file__).resolve().parents[2]
TMPFS_OPTS = "rw,noexec,nosuid,size=64m"  # what hardened_container gives every tmpfs
PASSWORD = "Corr3ct-Horse-Battery"  # letters and digits and a dash, like the program's generated ones
STUB_USER = "1001:1001"


@pytest.fixture(scope="module")
def env() -> Environment:
    return load_environment(read_stack_file(ROOT / "Pulumi.local.yaml"))


@pytest.fixture(scope="module")
def network(engine_client: docker.DockerClient) -> Iterator[Network]:
    net = engine_client.networks.create(f"msc-images-{uuid.uuid4().hex[:8]}", driver="bridge", internal=True)
    net.reload()
    yield net
    net.reload()
    for c in net.containers:
        c.remove(force=True, v=False)
    net.remove()


@dataclass
class Started:
    container: Container
    ip: str
    volumes: list[str] = field(default_factory=list)

    def exec(self, cmd: Sequence[str] | str, env: Mapping[str, str] | None = None,
             user: str = "") -> tuple[int, str]:
        code, out = self.container.exec_run(list(cmd) if not isinstance(cmd, str) else ["sh", "-c", cmd],
                                            environment=dict(env or {}), user=user, demux=False)
        return code, (out or b"").decode(errors="replace")

    def logs(self) -> str:
        return self.container.logs().decode(errors="replace")


def _tar(files: Mapping[str, str], owner: str, mode: int = 0o400) -> bytes:
    uid, gid = (int(x) for x in owner.split(":"))
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, content in files.items():
            data = content.encode()
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.uid, info.gid, info.mtime = len(data), mode, uid, gid, int(time.time())
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


class Launcher:
    """Starts hardened containers like `hardened_container` does, and removes them and their volumes."""

    def __init__(self, client: docker.DockerClient, network: Network) -> None:
        self.client, self.network = client, network
        self.started: list[Started] = []

    def run(self, image: str, *, user: str, name: str = "", alias: str = "", env: Mapping[str, str] | None = None,
            command: Sequence[str] | None = None, tmpfs: Sequence[str] = ("/tmp",),
            volumes: Mapping[str, str] | None = None, secrets: Mapping[str, str] | None = None,
            healthcheck: Sequence[str] | None = None, hostname: str | None = None, mem_bytes: int | None = None,
            reuse_volumes: Mapping[str, str] | None = None) -> Started:
        suffix = uuid.uuid4().hex[:8]
        name = f"msc-images-{name or 'c'}-{suffix}"
        vols: dict[str, dict[str, str]] = {}
        created: list[str] = []
        for path, vol in (reuse_volumes or {}).items():
            vols[vol] = {"bind": path, "mode": "rw"}
        for path, label in (volumes or {}).items():
            vol = str(self.client.volumes.create(f"{name}-{label}").name)
            created.append(vol)
            vols[vol] = {"bind": path, "mode": "rw"}
        health: dict[str, Any] | None = None
        if healthcheck:
            health = {"test": list(healthcheck), "interval": 1_000_000_000, "timeout": 5_000_000_000,
                      "retries": 3, "start_period": 90_000_000_000}
        container = self.client.containers.create(
            image, command=list(command) if command else None, name=name, hostname=hostname, user=user,
            environment=dict(env or {}), read_only=True, tmpfs={p: TMPFS_OPTS for p in tmpfs},
            cap_drop=["ALL"], security_opt=["no-new-privileges:true"], init=True,
            mem_limit=mem_bytes, memswap_limit=mem_bytes, volumes=vols, healthcheck=health,
            network=self.network.name, detach=True,
        )
        if alias:
            # The program gives each container its service name as an alias on its networks.
            self.network.disconnect(container)
            self.network.connect(container, aliases=[alias])
        started = Started(container, "", created)
        self.started.append(started)
        if secrets:
            # Uploads land in the secrets volume: the read-only root refuses them anywhere else.
            assert container.put_archive("/run/secrets", _tar({Path(k).name: v for k, v in secrets.items()}, user))
        container.start()
        container.reload()
        started.ip = container.attrs["NetworkSettings"]["Networks"][self.network.name]["IPAddress"]
        return started

    def cleanup(self) -> None:
        for s in self.started:
            with contextlib.suppress(docker.errors.NotFound):
                s.container.remove(force=True, v=True)
        for s in self.started:
            for vol in s.volumes:
                with contextlib.suppress(docker.errors.NotFound):
                    self.client.volumes.get(vol).remove(force=True)


@pytest.fixture
def launcher(engine_client: docker.DockerClient, network: Network) -> Iterator[Launcher]:
    launch = Launcher(engine_client, network)
    yield launch
    launch.cleanup()


def wait_for(predicate: Callable[[], bool], timeout: float, what: str, diag: Callable[[], str] = lambda: "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.25)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}\n{diag()}")


def health_status(s: Started) -> str:
    s.container.reload()
    return str(s.container.attrs["State"].get("Health", {}).get("Status", ""))


def wait_healthy(s: Started, timeout: float = 120) -> None:
    def healthy() -> bool:
        status = health_status(s)
        if status == "unhealthy" or s.container.status == "exited":
            raise AssertionError(f"{s.container.name} is {status or s.container.status}\n{s.logs()[-4000:]}\n"
                                 f"{json.dumps(s.container.attrs['State'].get('Health'), indent=1)[-2000:]}")
        return status == "healthy"
    wait_for(healthy, timeout, f"{s.container.name} healthy", lambda: s.logs()[-4000:])


def assert_hardened(s: Started, uid: int) -> None:
    """Every process of the container runs as `uid`, with no capabilities and no_new_privs, on a read-only root."""
    host = s.container.attrs["HostConfig"]
    assert host["ReadonlyRootfs"] and host["CapDrop"] == ["ALL"] and host["Init"]
    assert "no-new-privileges:true" in host["SecurityOpt"]
    code, out = s.exec("for p in /proc/[0-9]*; do grep -hE '^(Uid|CapEff|NoNewPrivs):' $p/status 2>/dev/null; done")
    assert code == 0, out
    fields: dict[str, set[str]] = {}
    for line in out.splitlines():
        key, _, value = line.partition(":")
        fields.setdefault(key, set()).add(value.split()[0])
    assert fields == {"Uid": {str(uid)}, "CapEff": {"0000000000000000"}, "NoNewPrivs": {"1"}}, fields
    code, out = s.exec("touch /probe-write")
    assert code != 0 and "Read-only file system" in out, out


def start_store(launcher: Launcher, images: Mapping[str, str], env: Environment, kind: str,
                reuse: Mapping[str, str] | None = None, password: str = PASSWORD) -> tuple[Started, Recipe]:
    """A store started exactly as the program's recipe describes it (components/data.py)."""
    recipe = RECIPES[kind](env)
    files = recipe.files(password)
    data_volumes = None if reuse else {recipe.data_path: "data", "/run/secrets": "secrets"}
    s = launcher.run(images[kind], name=kind, alias=kind, user=recipe.user, env=recipe.envs, command=recipe.command,
                     tmpfs=recipe.tmpfs, volumes=data_volumes, reuse_volumes=reuse, secrets=None if reuse else files,
                     healthcheck=recipe.healthcheck, mem_bytes=recipe.memory)
    return s, recipe


def volumes_of(s: Started) -> dict[str, str]:
    s.container.reload()
    return {m["Destination"]: m["Name"] for m in s.container.attrs["Mounts"] if m["Type"] == "volume"}


def run_once(client: docker.DockerClient, image: str, script: str, user: str = "") -> str:
    """Output of a throwaway container (no network) running `sh -c script`; its anonymous volumes go with it."""
    container = client.containers.create(image, ["sh", "-c", script], entrypoint=[], user=user, network_mode="none")
    try:
        container.start()
        container.wait(timeout=60)
        return bytes(container.logs(stdout=True, stderr=True)).decode()
    finally:
        container.remove(force=True, v=True)


# --- the images as built ---------------------------------------------------------------------------

IDENTITIES = {
    "postgres": ("postgres", "uid=70(postgres) gid=70(postgres)"),
    "redis": ("redis", "uid=999(redis) gid=1000(redis)"),
    "rabbitmq": ("rabbitmq", "uid=100(rabbitmq) gid=101(rabbitmq)"),
    "stub": ("app", "uid=1001(app) gid=1001(app)"),
}


@pytest.mark.parametrize("kind", sorted(IDENTITIES))
def test_users_have_the_official_ids(engine_client: docker.DockerClient, engine_images: dict[str, str], kind: str) -> None:
    user, expected = IDENTITIES[kind]
    assert run_once(engine_client, engine_images[kind], f"id {user}").startswith(expected)


TOOLS = {
    "postgres": ["postgres", "psql", "initdb", "pg_ctl", "docker-entrypoint.sh"],
    "redis": ["redis-server", "redis-cli", "docker-entrypoint.sh"],
    "rabbitmq": ["rabbitmq-server", "rabbitmq-diagnostics", "rabbitmqctl", "docker-entrypoint.sh"],
    "stub": ["node"],
}


@pytest.mark.parametrize("kind", sorted(TOOLS))
def test_the_tools_the_healthchecks_call_are_on_path(engine_client: docker.DockerClient,
                                                      engine_images: dict[str, str], kind: str) -> None:
    out = run_once(engine_client, engine_images[kind], "for t in " + " ".join(TOOLS[kind]) + "; do command -v $t; done")
    assert len(out.split()) == len(TOOLS[kind]), out
    if kind == "postgres":
        # The real binaries, not Debian's perl wrapper in /usr/bin (it wants a cluster registry).
        assert "/usr/lib/postgresql/15/bin/psql" in out


PATHS = {
    # path -> "uid:gid mode" as the official images ship them (a fresh named volume copies this up).
    "postgres": {"/var/lib/postgresql/data": "70:70 1777", "/var/run/postgresql": "70:70 3777"},
    "redis": {"/data": "999:1000 755"},
    "rabbitmq": {"/var/lib/rabbitmq": "100:101 1777", "/etc/rabbitmq/conf.d": "100:101 1777"},
}


@pytest.mark.parametrize("kind", sorted(PATHS))
def test_data_paths_exist_with_the_official_owner(engine_client: docker.DockerClient,
                                                  engine_images: dict[str, str], kind: str) -> None:
    for path, expected in PATHS[kind].items():
        assert run_once(engine_client, engine_images[kind], f"stat -c '%u:%g %a' {path}").strip() == expected, path
    config = engine_client.images.get(engine_images[kind]).attrs["Config"]
    assert config["Entrypoint"] == ["docker-entrypoint.sh"]
    volume = {"postgres": "/var/lib/postgresql/data", "redis": "/data", "rabbitmq": "/var/lib/rabbitmq"}[kind]
    assert volume in (config.get("Volumes") or {})


def test_rabbitmq_image_has_no_baked_erlang_cookie(engine_client: docker.DockerClient,
                                                   engine_images: dict[str, str]) -> None:
    # Debian's postinst writes one; every container built from the image would share it.
    assert run_once(engine_client, engine_images["rabbitmq"], "ls -A /var/lib/rabbitmq").strip() == ""


# --- the stores, started the way the program starts them -------------------------------------------

def psql(s: Started, password: str, host: str = "127.0.0.1", sql: str = "SELECT current_user") -> tuple[int, str]:
    return s.exec(["psql", "-w", "-h", host, "-U", "mysaaschat", "-d", "mysaaschat", "-Atc", sql],
                  env={"PGPASSWORD": password})


def test_postgres_runs_hardened_with_the_password_file(launcher: Launcher, engine_images: dict[str, str],
                                                       env: Environment) -> None:
    s, recipe = start_store(launcher, engine_images, env, "postgres")
    wait_healthy(s)  # the program's own healthcheck, reading $POSTGRES_PASSWORD_FILE
    assert s.exec("id")[1].startswith("uid=70(postgres) gid=70(postgres)")
    assert_hardened(s, 70)
    code, out = s.exec("stat -c '%u:%g %a' /var/lib/postgresql/data/pgdata; ls -A /var/run/postgresql")
    assert code == 0 and out.splitlines()[0] == "70:70 700" and ".s.PGSQL.5432" in out, out
    # The *_FILE convention: the password from the file is the one that works; a wrong one is refused,
    # over TCP on loopback, on the container's own address (listen_addresses='*' + host rule) and on the socket.
    for host in ("127.0.0.1", s.ip, "/var/run/postgresql"):
        code, out = psql(s, PASSWORD, host)
        assert (code, out.strip()) == (0, "mysaaschat"), (host, out)
        code, out = psql(s, "wrong-password", host)
        assert code != 0 and "password authentication failed" in out, (host, out)
    # The program's command reached the server (`postgres -c shared_buffers=... -c ...`).
    assert psql(s, PASSWORD, sql="SHOW shared_buffers")[1].strip() == f"{env.postgres.shared_buffers // 2**20}MB"
    assert psql(s, PASSWORD, sql="SHOW password_encryption")[1].strip() == "scram-sha-256"
    # The healthcheck itself fails on a wrong password (it reads the file named by the variable).
    assert s.exec("echo wrong-password > /tmp/wrong")[0] == 0
    bad = s.exec(recipe.healthcheck[1], env={"POSTGRES_PASSWORD_FILE": "/tmp/wrong"})
    assert bad[0] != 0
    assert "PostgreSQL init process complete" in s.logs()
    psql(s, PASSWORD, sql="CREATE TABLE kept (v int); INSERT INTO kept VALUES (42)")

    # Same volumes, new container (the program's stop-first replacement): no second initdb, data kept.
    volumes = volumes_of(s)
    s.container.stop(timeout=60)
    assert s.container.wait(timeout=5)["StatusCode"] == 0
    s.container.remove()
    s2, _ = start_store(launcher, engine_images, env, "postgres", reuse=volumes)
    wait_healthy(s2)
    assert "Skipping initialization" in s2.logs()
    assert psql(s2, PASSWORD, sql="SELECT v FROM kept")[1].strip() == "42"


def test_redis_runs_hardened_with_the_programs_config(launcher: Launcher, engine_images: dict[str, str],
                                                     env: Environment) -> None:
    s, recipe = start_store(launcher, engine_images, env, "redis")
    wait_healthy(s)
    assert s.exec("id")[1].startswith("uid=999(redis) gid=1000(redis)")
    assert_hardened(s, 999)
    auth = {"REDISCLI_AUTH": PASSWORD}
    assert s.exec(["redis-cli", "--no-auth-warning", "-h", s.ip, "set", "k", "v"], env=auth)[1].strip() == "OK"
    code, out = s.exec(["redis-cli", "--no-auth-warning", "-e", "-h", "127.0.0.1", "ping"],
                       env={"REDISCLI_AUTH": "wrong-password"})
    assert code != 0, out
    # The program's config file took effect: persistence in /data, CONFIG renamed away.
    assert s.exec(["redis-cli", "--no-auth-warning", "-e", "config", "get", "dir"], env=auth)[0] != 0
    appendonly = "yes" if env.redis.appendonly else "no"
    info = s.exec(["redis-cli", "--no-auth-warning", "info", "persistence"], env=auth)[1]
    assert f"aof_enabled:{int(appendonly == 'yes')}" in info
    if env.redis.appendonly:
        wait_for(lambda: s.exec("ls /data/appendonlydir")[0] == 0, 10, "the append-only file in /data")
        assert s.exec("stat -c '%u:%g' /data/appendonlydir")[1].strip() == "999:1000"
    bad = s.exec(recipe.healthcheck[1], env={"REDIS_PASSWORD_FILE": "/dev/null"})
    assert bad[0] != 0


def test_rabbitmq_runs_hardened_with_the_programs_config(launcher: Launcher, engine_images: dict[str, str],
                                                         env: Environment) -> None:
    s, recipe = start_store(launcher, engine_images, env, "rabbitmq")
    wait_healthy(s, timeout=150)
    assert s.exec("id")[1].startswith("uid=100(rabbitmq) gid=101(rabbitmq)")
    assert_hardened(s, 100)
    hostname = s.exec("hostname")[1].strip()
    # The node name follows the hostname (rabbit@<hostname>), and its state lives in the volume.
    code, out = s.exec(["rabbitmqctl", "-q", "eval", "node()."])
    assert (code, out.strip()) == (0, f"rabbit@{hostname}"), out
    assert s.exec(f"test -d /var/lib/rabbitmq/mnesia/rabbit@{hostname} && test -s /var/lib/rabbitmq/.erlang.cookie")[0] == 0
    # RABBITMQ_CONFIG_FILE was honoured: the user and vhost of the program's config exist.
    code, out = s.exec(["rabbitmqctl", "-q", "list_vhosts"])
    assert code == 0 and env.rabbitmq.vhost in out.split(), out
    code, out = s.exec(["rabbitmqctl", "-q", "authenticate_user", env.rabbitmq.user, "wrong-password"])
    assert code != 0, out
    # Debian's /usr/sbin wrappers work too, because uid 100 is the rabbitmq user.
    code, out = s.exec(["/usr/sbin/rabbitmqctl", "-q", "authenticate_user", env.rabbitmq.user, PASSWORD])
    assert code == 0, out
    bad = s.exec(recipe.healthcheck[1], env={"RABBITMQ_PASSWORD_FILE": "/dev/null"})
    assert bad[0] != 0
    # The AMQP listener answers on the container's address (protocol header in, connection.start out).
    with socket.create_connection((s.ip, 5672), timeout=5) as sock:
        sock.sendall(b"AMQP\x00\x00\x09\x01")
        assert sock.recv(7)[:1] == b"\x01"  # a method frame


# --- the stub service -------------------------------------------------------------------------------

def http(ip: str, path: str, method: str = "GET", timeout: float = 10, port: int = 3000) -> tuple[int, str, dict[str, str]]:
    req = urllib.request.Request(f"http://{ip}:{port}{path}", method=method)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read().decode(), dict(resp.headers)
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode(), dict(err.headers)


def start_stub(launcher: Launcher, images: Mapping[str, str], alias: str = "stub", **env: str) -> Started:
    s = launcher.run(images["stub"], name="stub", alias=alias, user=STUB_USER,
                     env={"PORT": "3000", "STUB_VERSION": "v1", **env})
    wait_for(lambda: s.container.reload() or "listening" in s.logs(), 20, "the stub to listen", s.logs)
    return s


def test_stub_endpoints(launcher: Launcher, engine_images: dict[str, str]) -> None:
    s = start_stub(launcher, engine_images, STUB_SSE_MS="50")
    assert s.exec("id")[1].startswith("uid=1001(app) gid=1001(app)")
    assert_hardened(s, 1001)
    assert http(s.ip, "/health")[:2] == (200, json.dumps({"status": "ok", "version": "v1"}, separators=(",", ":")))
    code, body, _ = http(s.ip, "/version")
    assert code == 200 and json.loads(body) == {"version": "v1", "hostname": s.exec("hostname")[1].strip()}
    started = time.monotonic()
    assert http(s.ip, "/slow?ms=700")[0] == 200
    assert 0.7 <= time.monotonic() - started < 5
    # SSE: ids count up, data carries the version.
    with urllib.request.urlopen(f"http://{s.ip}:3000/sse", timeout=10) as resp:
        assert resp.headers["content-type"] == "text/event-stream"
        lines = [resp.readline().decode().strip() for _ in range(6)]
    assert lines[0] == "id: 1" and lines[3] == "id: 2", lines
    assert json.loads(lines[1].removeprefix("data: "))["version"] == "v1"
    # Metrics in Prometheus text format.
    code, body, headers = http(s.ip, "/metrics")
    assert code == 200 and headers["content-type"].startswith("text/plain; version=0.0.4")
    assert 'stub_http_requests_total{method="GET",path="/health",code="200"} 1' in body
    assert "# TYPE stub_http_in_flight_requests gauge" in body and "stub_http_in_flight_requests 1" in body
    # The health switch, and the program's own node healthcheck against it.
    from components.container import node_http_healthcheck
    check = node_http_healthcheck("/health")[1:]
    assert s.exec(check)[0] == 0
    assert http(s.ip, "/health/fail", method="POST")[0] == 200
    assert http(s.ip, "/health")[0] == 503
    assert s.exec(check)[0] != 0


def test_stub_probe_tells_reachable_from_unreachable(launcher: Launcher, engine_images: dict[str, str]) -> None:
    a = start_stub(launcher, engine_images, alias="stub-a")
    start_stub(launcher, engine_images, alias="stub-b")
    code, body, _ = http(a.ip, "/probe?host=stub-b&port=3000")
    assert code == 200 and json.loads(body)["ok"] is True, body
    assert http(a.ip, "/probe?host=stub-b&port=3999")[0] == 502  # refused
    started = time.monotonic()
    assert http(a.ip, "/probe?host=192.0.2.1&port=80")[0] == 502  # TEST-NET-1: no route / timeout
    assert time.monotonic() - started < 4
    assert http(a.ip, "/probe?host=stub-b")[0] == 400


def test_stub_health_and_start_delay_from_env(launcher: Launcher, engine_images: dict[str, str]) -> None:
    failing = start_stub(launcher, engine_images, alias="failing", STUB_HEALTH="fail")
    assert http(failing.ip, "/health")[0] == 503
    slow = start_stub(launcher, engine_images, alias="slow", STUB_START_DELAY_MS="1500")
    assert http(slow.ip, "/health")[0] == 503
    wait_for(lambda: http(slow.ip, "/health")[0] == 200, 10, "the slow starter to turn healthy")


def test_stub_drains_in_flight_requests_on_sigterm(launcher: Launcher, engine_images: dict[str, str]) -> None:
    """The drain contract (README, "Releasing"): on SIGTERM, SSE streams end at once with `retry:`,
    health turns 503, and it keeps accepting and serving (Connection: close) for the drain delay;
    then no new connection, the in-flight request finishes, exit 0."""
    s = start_stub(launcher, engine_images, STUB_SSE_MS="100")
    results: dict[str, Any] = {}

    def slow() -> None:
        results["slow"] = http(s.ip, "/slow?ms=4000", timeout=15)

    def sse() -> None:
        with urllib.request.urlopen(f"http://{s.ip}:3000/sse", timeout=15) as resp:
            results["sse"] = resp.read().decode()  # returns only when the server ends the stream

    threads = [threading.Thread(target=slow), threading.Thread(target=sse)]
    for t in threads:
        t.start()
    wait_for(lambda: "stub_http_in_flight_requests 3" in http(s.ip, "/metrics")[1], 5, "two requests in flight")
    s.container.kill(signal="SIGTERM")  # what `docker stop` sends first; the init forwards it to node
    sigterm = time.monotonic()
    threads[1].join(timeout=5)
    assert not threads[1].is_alive()  # the stream ended at once
    assert "retry: 250" in results["sse"], results["sse"][-300:]
    assert results["sse"].rstrip().endswith('data: {"reason":"SIGTERM","version":"v1"}'), results["sse"][-300:]
    time.sleep(max(0.0, sigterm + 0.5 - time.monotonic()))
    # The drain delay: still served, with Connection: close; health says it is going.
    code, body, headers = http(s.ip, "/version")
    assert code == 200 and {k.lower(): v for k, v in headers.items()}.get("connection") == "close", headers
    assert http(s.ip, "/health")[0] == 503
    time.sleep(max(0.0, sigterm + 2.5 - time.monotonic()))
    # After it: no new connections, but the slow request is still being served.
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((s.ip, 3000), timeout=2).close()
    assert threads[0].is_alive()
    assert s.container.wait(timeout=15)["StatusCode"] == 0  # it exits by itself, 0, once drained
    threads[0].join(timeout=15)
    code, body, _ = results["slow"]
    assert code == 200 and json.loads(body)["slept_ms"] == 4000
    logs = s.logs()
    assert "SIGTERM: draining; 2 in-flight request(s), 1 SSE stream(s); accepting for 2000 ms" in logs, logs
    assert "exiting 0" in logs
