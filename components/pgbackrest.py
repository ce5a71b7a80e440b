"""Continuous PostgreSQL backups with pgBackRest: what the Postgres store needs, and the scheduler.

On when the stack has `host.backup_bucket` (prod, staging); `local` has no repository. Why a store
image and not a sidecar: PostgreSQL runs `archive_command` itself, inside its own container, as its
own user, for every WAL segment; only a tool present in that container can archive synchronously
(the segment is recycled once the command succeeds, so success must mean "in S3"). A sidecar would
need a second copy step through a shared volume (success before the object is in S3, a second
queue to watch). So the store image is the pinned official image plus Alpine's pgBackRest
(images/postgres-pgbackrest/Dockerfile), built on the host's engine, and the scheduler is a second
container of the same image, hardened like every other one (uid 70, read-only root, no
capabilities), that shares the data volume read-only and the server's socket directory.

The passphrase and the store password reach pgBackRest and libpq as files in the store's secrets
volume (0400, uid 70), never in argv or the environment. S3 credentials are the instance role's:
containers cannot reach the metadata service (IMDSv2 hop limit 1), so a host timer (cloud-init,
render/cloud_init.py) writes the role's temporary credentials into a root-owned directory that both
containers mount read-only, and every pgBackRest call includes it (`--config-include-path`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import pulumi
import pulumi_docker as docker

from components.container import ContainerSpec, Mount, hardened_container
from config import Environment
from config.model import Postgres
from render import pgbackrest as pbr
from render.contracts import TEXTFILE_HOST_DIR
from render.datastores import SECRETS_DIR

PROJECT_ROOT = Path(__file__).resolve().parent.parent
# Relative to the project, never absolute: the context is a ForceNew input of the image
# (kreuzwerker resource_docker_image.go, build.context), so an absolute path would rebuild and replace
# the store image whenever `pulumi up` runs from another checkout (CI, a laptop). The provider resolves
# it against its own working directory (docker/cli build.GetContextFromLocalDir -> filepath.Abs), which
# the engine sets to the program's directory (pulumi/pulumi sdk/go/common/resource/plugin/plugin.go
# ExecPlugin: `cmd.Dir = pwd`).
CONTEXT_PATH = "images/postgres-pgbackrest"
CONTEXT = PROJECT_ROOT / CONTEXT_PATH
CREDENTIALS_HOST_DIR = "/var/lib/mysaaschat/pgbackrest-credentials"
CONF = f"{SECRETS_DIR}/pgbackrest.conf"
PGPASS = f"{SECRETS_DIR}/pgpass"
SCHEDULER = f"{SECRETS_DIR}/backup-scheduler.sh"
METRICS_SQL = f"{SECRETS_DIR}/backup-metrics.sql"
TEXTFILE_MOUNT = "/textfile"
SOCKET_DIR = "/var/run/postgresql"


def enabled(env: Environment) -> bool:
    return env.host.backup_bucket is not None


def runtime(spec: Postgres) -> pbr.Runtime:
    """Where pgBackRest finds things inside the store image (components/data.py postgres_recipe)."""
    return pbr.Runtime(pg_path="/var/lib/postgresql/data/pgdata", socket_path=SOCKET_DIR, port=5432,
                       user=spec.user, database=spec.database, conf=CONF, include_path="/run/pgbackrest-credentials",
                       work="/tmp/pgbackrest")


def region() -> str:
    value = pulumi.Config("aws").get("region")
    if not value:
        raise ValueError("backups need the stack's aws:region (the bucket's region)")
    return value


def files(env: Environment, password: str, passphrase: str) -> dict[str, str]:
    """Files for the store's secrets volume (written by its seed): the config with the passphrase,
    libpq's password file for the scheduler's connections, the scheduler and its metrics query."""
    spec, bucket = env.postgres, env.host.backup_bucket
    assert bucket is not None
    run = runtime(spec)
    return {
        CONF: pbr.pgbackrest_conf(stack=env.stack, bucket=bucket, region=region(), backup=spec.backup,
                                  passphrase=passphrase, runtime=run),
        PGPASS: f"*:*:*:{spec.user}:{password.replace(chr(92), chr(92) * 2).replace(':', chr(92) + ':')}\n",
        SCHEDULER: pbr.scheduler_script(spec.backup, run, metrics_sql_path=METRICS_SQL, textfile_dir=TEXTFILE_MOUNT),
        METRICS_SQL: pbr.metrics_sql(),
    }


def file_names() -> list[str]:
    return sorted((CONF, PGPASS, SCHEDULER, METRICS_SQL))


def store_image(env: Environment, opts: pulumi.ResourceOptions) -> docker.RemoteImage:
    """The official image plus pgBackRest, built by the host's engine.

    The provider tars the context directory where `pulumi` runs and builds on the daemon it talks to
    (kreuzwerker/terraform-provider-docker v4.5.0 resource_docker_image_funcs.go:
    resourceDockerImageCreate -> buildImage -> prepareBuildContext, `client.ImageBuild`), then
    finds the image by `name`, which the build tags.
    """
    spec = env.postgres
    base = spec.image.reference
    tag = spec.image.tag or (spec.image.digest or "")[len("sha256:"):][:12]
    dockerfile = (CONTEXT / "Dockerfile").read_bytes()
    return docker.RemoteImage(
        "postgres-image", name=pbr.image_name(tag, spec.backup), keep_locally=True,
        build=docker.RemoteImageBuildArgs(context=CONTEXT_PATH, build_args=pbr.image_build_args(base, spec.backup),
                                          labels={"com.mysaaschat.base-image": base}),
        # A changed Dockerfile rebuilds even when the name stays.
        triggers={"dockerfile-sha256": hashlib.sha256(dockerfile).hexdigest()},
        opts=opts)


def postgres_args(env: Environment) -> list[str]:
    return pbr.settings_args(pbr.postgres_settings(env.postgres.backup, runtime(env.postgres)))


@dataclass
class PostgresBackupArgs:
    env: Environment
    image: docker.RemoteImage
    data_volume: pulumi.Input[str]
    secrets_volume: pulumi.Input[str]
    socket_volume: pulumi.Input[str]
    network: pulumi.Input[str]
    store: docker.Container
    docker_opts: pulumi.ResourceOptions


class PostgresBackup(pulumi.ComponentResource):
    """The scheduler: full and differential backups at the model's times, metrics every 30 s."""

    def __init__(self, name: str, args: PostgresBackupArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("my-saas-chat:pgbackrest:PostgresBackup", name, None, opts)
        env, backup = args.env, args.env.postgres.backup
        docker_opts = pulumi.ResourceOptions.merge(args.docker_opts, pulumi.ResourceOptions(
            parent=self, depends_on=[args.store]))
        self.container = hardened_container(
            "postgres-backup",
            ContainerSpec(
                service="postgres-backup", image=args.image, user="70:70", cpus=0.5, memory_bytes=256 * 1024 * 1024,
                # Healthy while the metrics file is fresh: the loop runs and reaches the server.
                healthcheck=["CMD-SHELL", f'test $(( $(date +%s) - $(stat -c %Y {TEXTFILE_MOUNT}/pgbackrest.prom) )) -lt 180'],
                health={"interval": "30s", "timeout": "5s", "retries": 3, "start_period": "120s"},
                networks=[args.network],
                envs=[f"PGPASSFILE={PGPASS}", "HOME=/tmp"],
                command=["sh", SCHEDULER],
                mounts=[Mount(args.data_volume, "/var/lib/postgresql/data", read_only=True),
                        Mount(args.secrets_volume, SECRETS_DIR, read_only=True),
                        Mount(args.socket_volume, SOCKET_DIR),
                        Mount(None, "/run/pgbackrest-credentials", read_only=True, host_path=CREDENTIALS_HOST_DIR),
                        Mount(None, TEXTFILE_MOUNT, host_path=TEXTFILE_HOST_DIR)],
                labels={"com.mysaaschat.backup-of": "postgres",
                        "com.mysaaschat.backup-schedule": pbr.schedule_text(backup)},
                stop_grace_seconds=60,
            ),
            env.stack,
            docker_opts,
        )
        self.register_outputs({"container": self.container.name, "schedule": pbr.schedule_text(backup)})
