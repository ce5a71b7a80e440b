"""Configuration files and healthcheck commands of the data stores, as pure functions of the model.

Healthchecks read credentials from the files the container already has ($..._FILE variables hold
paths, never secrets), so no password appears in a container's command line or inspect output.
Each check must *fail* when the password is wrong: tests run these exact commands against real
servers (the seed's `redis-cli --raw incr ping` printed NOAUTH and exited 0, so it never failed).
"""

from __future__ import annotations

from config.model import Postgres, RabbitMQ, Redis

SECRETS_DIR = "/run/secrets"


def _mb(size: int) -> str:
    return f"{size // (1024 * 1024)}MB"


def postgres_command(spec: Postgres) -> list[str]:
    return [
        "postgres",
        "-c", f"shared_buffers={_mb(spec.shared_buffers)}",
        "-c", f"effective_cache_size={_mb(spec.effective_cache_size)}",
        "-c", f"max_connections={spec.max_connections}",
        "-c", "password_encryption=scram-sha-256",
    ]


POSTGRES_HEALTHCHECK = [
    "CMD-SHELL",
    'PGPASSWORD="$(cat "$POSTGRES_PASSWORD_FILE")" psql -w -h 127.0.0.1 -p "${PGPORT:-5432}" '
    '-U "$POSTGRES_USER" -d "$POSTGRES_DB" -Atc "SELECT 1" >/dev/null',
]


def redis_conf(spec: Redis, password: str) -> str:
    return "\n".join([
        "bind * -::*",
        "port 6379",
        "dir /data",
        f"requirepass {password}",
        f"appendonly {'yes' if spec.appendonly else 'no'}",
        "appendfsync everysec",
        f"maxmemory {spec.maxmemory // (1024 * 1024)}mb",
        f"maxmemory-policy {spec.maxmemory_policy}",
        # Nobody should be able to reconfigure persistence or dump files at runtime.
        'rename-command CONFIG ""',
        'rename-command DEBUG ""',
        "",
    ])


REDIS_HEALTHCHECK = [
    "CMD-SHELL",
    'REDISCLI_AUTH="$(cat "$REDIS_PASSWORD_FILE")" redis-cli --no-auth-warning -h 127.0.0.1 '
    '-p "${REDIS_PORT:-6379}" ping | grep -qx PONG',
]


def rabbitmq_conf(spec: RabbitMQ, password: str) -> str:
    return "\n".join([
        "listeners.tcp.default = 5672",
        f"default_user = {spec.user}",
        f"default_pass = {password}",
        f"default_vhost = {spec.vhost}",
        "default_user_tags.administrator = false",
        "loopback_users.guest = true",
        f"vm_memory_high_watermark.absolute = {spec.memory * 7 // 10 // (1024 * 1024)}MiB",
        # The root filesystem is read-only: log to the console only.
        "log.console = true",
        "log.file = false",
        "",
    ])


RABBITMQ_HEALTHCHECK = [
    "CMD-SHELL",
    'rabbitmq-diagnostics -q check_running >/dev/null && '
    'rabbitmqctl -q authenticate_user "$RABBITMQ_USER" "$(cat "$RABBITMQ_PASSWORD_FILE")" >/dev/null',
]
