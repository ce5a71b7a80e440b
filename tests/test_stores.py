"""The stores' rendered configs loaded by the real servers, and the derived URLs used by real clients.

Each server runs the files the program seeds (moved to a free loopback port and a temporary
directory) in its own process group, which is stopped whole, whatever the test's outcome.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit, urlunsplit

import pytest

from ops.runner import Recording
from tests.conftest import recording, require_tool, server_group
from tests.test_healthchecks import _wait_port, free_port
from tests.test_promises import container, env_of, password, seeded


def _local(url: str, port: int, drop_query: bool = False) -> str:
    """The derived URL, pointed at the test server instead of the store's alias."""
    parts = urlsplit(url)
    netloc = parts.netloc.rsplit("@", 1)[0] + f"@127.0.0.1:{port}"
    return urlunsplit((parts.scheme, netloc, parts.path, "" if drop_query else parts.query, ""))


def _user_of(rec: Recording, store: str) -> str:
    return next(n for n, s in sorted(rec.env.services.items()) if store in s.uses)


# --- Redis --------------------------------------------------------------------------------------

@pytest.fixture
def redis(tmp_path: Path) -> Iterator[tuple[Recording, int]]:
    server = require_tool("redis-server")
    require_tool("redis-cli")
    rec, port = recording("prod"), free_port()
    conf = seeded(rec, "redis")["/run/secrets/redis.conf"]
    for old, new in (("bind * -::*", "bind 127.0.0.1"), ("port 6379", f"port {port}"), ("dir /data", f"dir {tmp_path}")):
        assert old in conf
        conf = conf.replace(old, new)
    (tmp_path / "redis.conf").write_text(conf)
    with server_group([server, str(tmp_path / "redis.conf")], cwd=tmp_path):
        _wait_port(port)
        yield rec, port


def _cli(*args: str) -> str:
    result = subprocess.run(["redis-cli", "--no-auth-warning", *args], capture_output=True, text=True, timeout=30)
    return (result.stdout + result.stderr).strip()


def test_redis_loads_the_rendered_config_and_the_derived_url_logs_in(redis: tuple[Recording, int]) -> None:
    rec, port = redis
    spec = rec.env.redis
    url = urlsplit(_local(env_of(rec, _user_of(rec, "redis"))["REDIS_URL"], port))
    # `redis://:password@host/db`: the default user, as node-redis and ioredis read it (redis-cli 7.0
    # would send an empty user name, so the parts are passed to it one by one).
    assert url.scheme == "redis" and not url.username
    login = ["-h", str(url.hostname), "-p", str(url.port), "-a", unquote(url.password or ""), "-n", url.path[1:]]
    assert _cli(*login, "PING") == "PONG"
    memory = dict(line.split(":", 1) for line in _cli(*login, "INFO", "memory").splitlines() if ":" in line)
    assert int(memory["maxmemory"]) == spec.maxmemory and memory["maxmemory_policy"] == spec.maxmemory_policy
    persistence = _cli(*login, "INFO", "persistence")
    assert f"aof_enabled:{int(spec.appendonly)}" in persistence
    # Nobody reconfigures or debugs it at runtime, even with the password.
    assert "unknown command" in _cli(*login, "CONFIG", "GET", "dir").lower()
    assert "unknown command" in _cli(*login, "DEBUG", "SLEEP", "0").lower()
    # Without the password, or with another, nothing.
    assert "NOAUTH" in _cli("-p", str(port), "PING")
    assert "PONG" not in _cli(*login[:5], "wrong", "PING")


# --- PostgreSQL ---------------------------------------------------------------------------------

@pytest.fixture
def postgres() -> Iterator[tuple[Recording, int, Path]]:
    require_tool("psql")
    bindir = next(iter(sorted(Path("/usr/lib/postgresql").glob("*/bin"))), None)
    if bindir is None:
        require_tool("pg_ctl")
        raise AssertionError("unreachable")
    rec, port = recording("prod"), free_port()
    i = container(rec, "postgres").inputs
    env = dict(e.split("=", 1) for e in i["envs"])
    base = Path(tempfile.mkdtemp(prefix="store-pg-"))
    base.chmod(0o755)
    (base / "pw").write_text(password(rec, "postgres"))
    shutil.chown(base, "postgres")
    shutil.chown(base / "pw", "postgres")
    as_pg = ["runuser", "-u", "postgres", "--"]
    pg_ctl = [*as_pg, str(bindir / "pg_ctl"), "-D", str(base / "data")]
    try:
        # What the image's entrypoint runs: initdb with POSTGRES_INITDB_ARGS, then the container's command.
        subprocess.run([*as_pg, str(bindir / "initdb"), "-D", str(base / "data"), "-U", env["POSTGRES_USER"],
                        f"--pwfile={base / 'pw'}", *env["POSTGRES_INITDB_ARGS"].split()], check=True, capture_output=True)
        settings = shlex.join(i["command"][1:])  # pg_ctl -o goes through a shell; archive_command has spaces
        subprocess.run([*pg_ctl, "-w", "-l", str(base / "log"), "-o",
                        f"-p {port} -k {base} -c listen_addresses=127.0.0.1 {settings}", "start"],
                       check=True, capture_output=True)
        subprocess.run(["psql", "-w", "-h", "127.0.0.1", "-p", str(port), "-U", env["POSTGRES_USER"], "-d", "postgres",
                        "-c", f'CREATE DATABASE "{env["POSTGRES_DB"]}"'], check=True, capture_output=True,
                       env={"PGPASSWORD": password(rec, "postgres"), "PATH": "/usr/bin:/bin"})
        yield rec, port, base
    finally:
        subprocess.run([*pg_ctl, "-m", "immediate", "stop"], capture_output=True)
        shutil.rmtree(base, ignore_errors=True)


def _psql(url_or_args: list[str], sql: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["psql", "-w", *url_or_args, "-Atc", sql], capture_output=True, text=True, timeout=30,
                          env={"PATH": "/usr/bin:/bin"})


def test_the_derived_database_url_logs_in_and_the_settings_are_in_force(postgres: tuple[Recording, int, Path]) -> None:
    rec, port, base = postgres
    spec = rec.env.postgres
    name = _user_of(rec, "postgres")
    full = env_of(rec, name)["DATABASE_URL"]
    url = _local(full, port, drop_query=True)  # `schema` is Prisma's parameter, not libpq's
    result = _psql([url], "SELECT current_user, current_database(); SHOW max_connections; "
                          "SELECT pg_size_bytes(current_setting('shared_buffers')); SHOW password_encryption")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [f"{spec.user}|{spec.database}", str(spec.max_connections),
                                     str(spec.shared_buffers), "scram-sha-256"]
    # The schema Prisma will create for this service is a valid, unquoted identifier of its own.
    schema = re.search(r"[?&]schema=([^&]+)", full).group(1)  # type: ignore[union-attr]
    assert _psql([url], f"CREATE SCHEMA {schema}; SELECT current_schemas(false)").returncode == 0
    # A wrong password is refused, and so is the local socket without one (the healthcheck proves it).
    # The URL carries the password percent-encoded (whatever characters it has).
    wrong = url.replace(f":{quote(password(rec, 'postgres'), safe='')}@", ":wrong-password@")
    assert wrong != url
    assert _psql([wrong], "SELECT 1").returncode != 0
    assert _psql(["-h", str(base), "-p", str(port), "-U", spec.user, "-d", spec.database], "SELECT 1").returncode != 0
