"""The exact healthcheck commands the program emits, run against real servers on loopback.

Each must pass when the server is healthy and fail when it is down and when the password is
wrong. Service checks run with Node (what node:alpine images have) against a stub HTTP server.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TypeVar

import pytest
import yaml
from pydantic import BaseModel

from config.load import SHARED_FILE
from config.model import Postgres, RabbitMQ, Redis
from render.datastores import postgres_command, rabbitmq_conf, redis_conf
from tests.conftest import recording, require_tool, server_group, stop_group

T = TypeVar("T", bound=BaseModel)


def shared_spec(model: type[T], key: str) -> T:
    return model.model_validate(yaml.safe_load(SHARED_FILE.read_text())[key])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def emitted(name: str) -> list[str]:
    rec = recording("prod")
    container = next(r for r in rec.resources.values() if r.type == "docker:index/container:Container" and r.name == name)
    return list(container.inputs["healthcheck"]["tests"])


def run_check(test: list[str], env: dict[str, str]) -> int:
    kind, *argv = test
    cmd = ["sh", "-c", argv[0]] if kind == "CMD-SHELL" else argv
    return subprocess.run(cmd, env={**os.environ, **env}, capture_output=True, timeout=60).returncode


def secret_file(tmp: Path, name: str, value: str) -> str:
    path = tmp / name
    path.write_text(value)
    path.chmod(0o644)
    return str(path)


# --- PostgreSQL ---------------------------------------------------------------------------------

@pytest.fixture
def postgres(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    require_tool("psql")
    bindir = next(iter(sorted(Path("/usr/lib/postgresql").glob("*/bin"))), None)
    if bindir is None:
        require_tool("pg_ctl")  # fails in CI, skips elsewhere
        raise AssertionError("unreachable")
    port = free_port()
    # pytest's tmp dirs are root-only (0700); the postgres user needs its own reachable directory.
    base = Path(tempfile.mkdtemp(prefix="hc-pg-"))
    base.chmod(0o755)
    (base / "pw").write_text("correct-horse-battery")
    shutil.chown(base, "postgres")
    shutil.chown(base / "pw", "postgres")
    as_pg = ["runuser", "-u", "postgres", "--"]
    subprocess.run([*as_pg, str(bindir / "initdb"), "-D", str(base / "data"), "-U", "mysaaschat", "-A",
                    "scram-sha-256", f"--pwfile={base / 'pw'}"], check=True, capture_output=True)
    # The server runs with the program's own settings (shared_buffers, max_connections, ...).
    settings = " ".join(postgres_command(shared_spec(Postgres, "postgres"))[1:])
    subprocess.run([*as_pg, str(bindir / "pg_ctl"), "-D", str(base / "data"), "-w", "-l", str(base / "log"), "-o",
                    f"-p {port} -k {base} -c listen_addresses=127.0.0.1 {settings}", "start"], check=True, capture_output=True)
    try:
        yield port, base
    finally:
        subprocess.run([*as_pg, str(bindir / "pg_ctl"), "-D", str(base / "data"), "-m", "immediate", "stop"],
                       capture_output=True)
        shutil.rmtree(base, ignore_errors=True)


def test_postgres_healthcheck(postgres: tuple[int, Path], tmp_path: Path) -> None:
    port, base = postgres
    test = emitted("postgres")
    env = {"POSTGRES_USER": "mysaaschat", "POSTGRES_DB": "postgres", "PGPORT": str(port)}
    good = secret_file(tmp_path, "good", "correct-horse-battery")
    bad = secret_file(tmp_path, "bad", "wrong-password")
    assert run_check(test, {**env, "POSTGRES_PASSWORD_FILE": good}) == 0
    assert run_check(test, {**env, "POSTGRES_PASSWORD_FILE": bad}) != 0
    bindir = next(iter(sorted(Path("/usr/lib/postgresql").glob("*/bin"))))
    subprocess.run(["runuser", "-u", "postgres", "--", str(bindir / "pg_ctl"), "-D", str(base / "data"), "-w",
                    "-m", "fast", "stop"], check=True, capture_output=True)
    assert run_check(test, {**env, "POSTGRES_PASSWORD_FILE": good}) != 0


# --- Redis --------------------------------------------------------------------------------------

def test_redis_healthcheck(tmp_path: Path) -> None:
    server = require_tool("redis-server")
    require_tool("redis-cli")
    port = free_port()
    # The program's own redis.conf, moved to a free loopback port and a temporary directory.
    conf = redis_conf(shared_spec(Redis, "redis"), "s3cret-redis")
    for old, new in (("bind * -::*", "bind 127.0.0.1"), ("port 6379", f"port {port}"), ("dir /data", f"dir {tmp_path}")):
        conf = conf.replace(old, new)
    (tmp_path / "redis.conf").write_text(conf)
    with server_group([server, str(tmp_path / "redis.conf")], cwd=tmp_path) as proc:
        _wait_port(port)
        test = emitted("redis")
        env = {"REDIS_PORT": str(port)}
        assert run_check(test, {**env, "REDIS_PASSWORD_FILE": secret_file(tmp_path, "g", "s3cret-redis")}) == 0
        assert run_check(test, {**env, "REDIS_PASSWORD_FILE": secret_file(tmp_path, "b", "nope")}) != 0
        # The seed's check, for the record: it "passes" with the wrong password.
        seed = subprocess.run(["redis-cli", "-p", str(port), "--raw", "incr", "ping"], capture_output=True, text=True)
        assert seed.returncode == 0 and "NOAUTH" in seed.stdout + seed.stderr
        stop_group(proc)
    assert run_check(test, {**env, "REDIS_PASSWORD_FILE": secret_file(tmp_path, "g2", "s3cret-redis")}) != 0


def _wait_port(port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise AssertionError(f"nothing listens on {port}")


# --- Services (Node, no curl) -----------------------------------------------------------------

class _Stub(BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:
        code = 200 if self.path == "/health" and type(self).status == 200 else type(self).status
        self.send_response(code if self.path == "/health" else 404)
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args: object) -> None:
        pass


@pytest.mark.parametrize(("status", "expected_ok"), [(200, True), (500, False), (None, False)])
def test_service_healthcheck_with_node(status: int | None, expected_ok: bool) -> None:
    require_tool("node")
    test = emitted("auth-service")
    assert test[:2] == ["CMD", "node"], "service images have node, not curl"
    if status is None:
        port = free_port()  # nothing listens
        assert (run_check(test, {"PORT": str(port)}) == 0) is expected_ok
        return
    handler = type("Stub", (_Stub,), {"status": status})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        assert (run_check(test, {"PORT": str(server.server_address[1])}) == 0) is expected_ok
    finally:
        server.shutdown()


# --- RabbitMQ -----------------------------------------------------------------------------------

RABBIT_BIN = Path("/usr/lib/rabbitmq/bin")


def test_rabbitmq_healthcheck(tmp_path: Path) -> None:
    if not (RABBIT_BIN / "rabbitmq-server").exists():
        require_tool("rabbitmq-server")
    port, dist, epmd_port = free_port(), free_port(), free_port()
    spec = shared_spec(RabbitMQ, "rabbitmq")
    conf = tmp_path / "rabbitmq.conf"
    # The program's own rendered config, moved to free ports.
    conf.write_text(rabbitmq_conf(spec, "s3cret-rabbit").replace("= 5672", f"= {port}"))
    (tmp_path / "plugins").write_text("[].")
    env = {**os.environ, "PATH": f"{RABBIT_BIN}:{os.environ['PATH']}", "HOME": str(tmp_path),
           "RABBITMQ_NODENAME": f"hc{port}@localhost", "RABBITMQ_DIST_PORT": str(dist),
           "RABBITMQ_MNESIA_BASE": str(tmp_path / "mnesia"), "RABBITMQ_LOG_BASE": str(tmp_path / "log"),
           "RABBITMQ_CONFIG_FILE": str(conf), "RABBITMQ_ENABLED_PLUGINS_FILE": str(tmp_path / "plugins"),
           "RABBITMQ_PID_FILE": str(tmp_path / "pid"),
           # A crash dump lands in the test's directory, never in the working tree.
           "ERL_CRASH_DUMP": str(tmp_path / "erl_crash.dump"),
           # A port mapper of the test's own, stopped with it (the VM would start a daemon that outlives it).
           "ERL_EPMD_PORT": str(epmd_port)}
    test = emitted("rabbitmq")
    check_env = {k: env[k] for k in ("PATH", "HOME", "RABBITMQ_NODENAME", "ERL_EPMD_PORT")} | {"RABBITMQ_USER": spec.user}
    epmd = shutil.which("epmd") or "epmd"
    # rabbitmq-server is a script: beam.smp (and epmd) outlive a kill of its PID, so the whole
    # process group is stopped, whatever the outcome.
    with server_group([epmd, "-port", str(epmd_port)], cwd=tmp_path):
        _wait_port(epmd_port)
        with server_group(["rabbitmq-server"], env=env, cwd=tmp_path) as server:
            _wait_port(port, timeout=90)
            subprocess.run(["rabbitmqctl", "-q", "await_startup"], env=env, check=True, capture_output=True, timeout=90)
            assert run_check(test, {**check_env, "RABBITMQ_PASSWORD_FILE": secret_file(tmp_path, "g", "s3cret-rabbit")}) == 0
            assert run_check(test, {**check_env, "RABBITMQ_PASSWORD_FILE": secret_file(tmp_path, "b", "wrong")}) != 0
            subprocess.run(["rabbitmqctl", "-q", "stop"], env=env, capture_output=True, timeout=60)
            server.wait(60)
            assert run_check(test, {**check_env, "RABBITMQ_PASSWORD_FILE": secret_file(tmp_path, "g2", "s3cret-rabbit")}) != 0
