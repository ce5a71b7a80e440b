"""PostgreSQL, Redis and RabbitMQ: stateful containers whose data outlives every `up` and `destroy`.

Each store gets a protected, retained named volume, a fixed container name and stop-first
replacement (never two engines on one volume), a fixed host name, sits only on the internal data
network, and hands services a derived connection string. Passwords and configs are files in a
small per-store volume, written there by a never-started seed container (`volume_seed`: Docker
refuses every upload into a read-only container); the store mounts that volume read-only.
"""

from __future__ import annotations

import hashlib
import json
import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from urllib.parse import quote

import pulumi
import pulumi_docker as docker

from components import pgbackrest
from components.container import ContainerSpec, Mount, Upload, hardened_container, volume_seed
from components.host import Host
from components.secrets import SecretStore
from config import Environment
from config.model import SecretRef
from render import datastores as r


@dataclass
class Recipe:
    """What differs between the stores; everything else is shared below."""

    kind: str
    user: str
    port: int
    data_path: str
    image: str
    cpus: float
    memory: int
    healthcheck: list[str]
    envs: dict[str, str]
    command: list[str] | None = None
    tmpfs: tuple[str, ...] = ("/tmp",)
    shm_size: int | None = None
    files: Callable[[str], dict[str, str]] = field(default=lambda pw: {})
    url: Callable[[str, str], str] = field(default=lambda pw, service: "")


def postgres_recipe(env: Environment) -> Recipe:
    spec = env.postgres
    pw_file = f"{r.SECRETS_DIR}/postgres-password"
    return Recipe(
        kind="postgres", user="70:70", port=5432, data_path="/var/lib/postgresql/data",
        image=spec.image.reference, cpus=spec.cpu, memory=spec.memory, healthcheck=r.POSTGRES_HEALTHCHECK,
        command=r.postgres_command(spec), tmpfs=("/tmp", "/var/run/postgresql"),
        # Parallel queries allocate dynamic shared memory in /dev/shm; Docker's 64 MiB default makes
        # them fail with "could not resize shared memory segment". A quarter of the container's memory.
        shm_size=max(64 * 1024 * 1024, spec.memory // 4 // (1024 * 1024) * 1024 * 1024),
        envs={"POSTGRES_USER": spec.user, "POSTGRES_DB": spec.database, "POSTGRES_PASSWORD_FILE": pw_file,
              "PGDATA": "/var/lib/postgresql/data/pgdata",
              # Password auth on loopback and the socket too, so the healthcheck proves the password.
              "POSTGRES_INITDB_ARGS": "--auth-host=scram-sha-256 --auth-local=scram-sha-256"},
        files=lambda pw: {pw_file: pw},
        # One database, one Prisma schema per service: migrations of one service cannot touch another's tables.
        url=lambda pw, service: (f"postgresql://{spec.user}:{quote(pw, safe='')}@postgres:5432/{spec.database}"
                                 f"?schema={service.replace('-', '_')}"),
    )


def redis_recipe(env: Environment) -> Recipe:
    spec = env.redis
    pw_file, conf_file = f"{r.SECRETS_DIR}/redis-password", f"{r.SECRETS_DIR}/redis.conf"
    return Recipe(
        kind="redis", user="999:1000", port=6379, data_path="/data", image=spec.image.reference,
        cpus=spec.cpu, memory=spec.memory, healthcheck=r.REDIS_HEALTHCHECK,
        command=["redis-server", conf_file], envs={"REDIS_PASSWORD_FILE": pw_file},
        files=lambda pw: {pw_file: pw, conf_file: r.redis_conf(spec, pw)},
        url=lambda pw, service: f"redis://:{quote(pw, safe='')}@redis:6379/0",
    )


def rabbitmq_recipe(env: Environment) -> Recipe:
    spec = env.rabbitmq
    pw_file, conf_file = f"{r.SECRETS_DIR}/rabbitmq-password", f"{r.SECRETS_DIR}/rabbitmq.conf"
    return Recipe(
        kind="rabbitmq", user="100:101", port=5672, data_path="/var/lib/rabbitmq", image=spec.image.reference,
        cpus=spec.cpu, memory=spec.memory, healthcheck=r.RABBITMQ_HEALTHCHECK,
        envs={"RABBITMQ_CONFIG_FILE": conf_file, "RABBITMQ_USER": spec.user, "RABBITMQ_PASSWORD_FILE": pw_file},
        files=lambda pw: {pw_file: pw, conf_file: r.rabbitmq_conf(spec, pw)},
        url=lambda pw, service: f"amqp://{spec.user}:{quote(pw, safe='')}@rabbitmq:5672/{quote(spec.vhost, safe='')}",
    )


# First start of an empty Postgres runs initdb before listening: give it a minute.
STORE_HEALTH: dict[str, str | int] = {"interval": "10s", "timeout": "5s", "retries": 5, "start_period": "60s"}

# A fixed-name volume cannot exist twice: a replacement must delete the old one first (create-first
# would fail with "volume name already in use"). The data volumes are protected, so the engine
# refuses to replace them at all.
FIXED_NAME = pulumi.ResourceOptions(delete_before_replace=True)

TOKENS = {"postgres": "my-saas-chat:data:Postgres", "redis": "my-saas-chat:data:Redis",
          "rabbitmq": "my-saas-chat:data:RabbitMQ"}
RECIPES = {"postgres": postgres_recipe, "redis": redis_recipe, "rabbitmq": rabbitmq_recipe}


@dataclass
class DataStoreArgs:
    env: Environment
    host: Host
    network: pulumi.Input[str]
    secrets: SecretStore  # the store's password: `stores.<kind>_password`, managed in Secrets Manager


class DataStore(pulumi.ComponentResource):
    container: docker.Container

    def __init__(self, kind: str, args: DataStoreArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__(TOKENS[kind], kind, None, opts)
        env, recipe = args.env, RECIPES[kind](args.env)
        self._recipe = recipe
        docker_opts = args.host.docker_opts(self)
        keep = pulumi.ResourceOptions(protect=True, retain_on_delete=True)
        # Generated by the program and kept in Secrets Manager (components/secrets.py); never on a command line.
        self.password = args.secrets.value(SecretRef(secret="stores", key=f"{kind}_password"))
        backups = kind == "postgres" and pgbackrest.enabled(env)
        if backups:  # the official image plus pgBackRest (components/pgbackrest.py says why)
            image = pgbackrest.store_image(env, docker_opts)
        else:
            image = docker.RemoteImage(f"{kind}-image", name=recipe.image, keep_locally=True, opts=docker_opts)
        data = docker.Volume(f"{kind}-data", name=f"mysaaschat-{env.stack}-{kind}-data",
                             labels=[docker.VolumeLabelArgs(label="com.mysaaschat.stack", value=env.stack)],
                             opts=pulumi.ResourceOptions.merge(pulumi.ResourceOptions.merge(docker_opts, keep), FIXED_NAME))
        secrets = docker.Volume(f"{kind}-secrets", name=f"mysaaschat-{env.stack}-{kind}-secrets",
                                opts=pulumi.ResourceOptions.merge(docker_opts, FIXED_NAME))
        files: pulumi.Output[dict[str, str]] = pulumi.Output.secret(self.password.apply(recipe.files))  # type: ignore[arg-type]
        names = sorted(recipe.files(""))
        # After `ops backup restore --volume` the store runs on the restored volume (ops/backup_host.py
        # created and checked it; it is not a resource of the program, so nothing here can delete it),
        # while the original volume stays registered above: protected and retained, never deleted.
        live: pulumi.Input[str] = (env.postgres.data_volume or data.name) if kind == "postgres" else data.name
        mounts = [Mount(live, recipe.data_path), Mount(secrets.name, r.SECRETS_DIR, read_only=True)]
        networks, tmpfs, command = [args.network], recipe.tmpfs, recipe.command
        if backups:
            # The repository passphrase: a secret the program generates and manages (config MANAGED_SECRETS).
            passphrase = args.secrets.value(SecretRef(secret="backup", key="passphrase"))
            files = pulumi.Output.secret(pulumi.Output.all(files, self.password, passphrase).apply(
                lambda a: {**a[0], **pgbackrest.files(env, a[1], a[2])}))
            names = sorted({*names, *pgbackrest.file_names()})
            # The socket directory is shared with the scheduler (pgBackRest reaches Postgres only by
            # socket); the egress-only backup network reaches S3 (archive_command runs here).
            # Protected like every volume a store writes (policy protect-stateful-volumes); it holds
            # only the socket and its lock file, so keeping it costs nothing.
            socket_volume = docker.Volume(
                f"{kind}-run", name=f"mysaaschat-{env.stack}-{kind}-run",
                opts=pulumi.ResourceOptions.merge(pulumi.ResourceOptions.merge(docker_opts, keep), FIXED_NAME))
            backup_network = docker.Network(
                f"{kind}-backup-net", name=f"mysaaschat-{env.stack}-backup", driver="bridge", internal=False,
                opts=pulumi.ResourceOptions.merge(docker_opts, FIXED_NAME))
            tmpfs = tuple(t for t in tmpfs if t != pgbackrest.SOCKET_DIR)
            mounts += [Mount(socket_volume.name, pgbackrest.SOCKET_DIR),
                       Mount(None, "/run/pgbackrest-credentials", read_only=True, host_path=pgbackrest.CREDENTIALS_HOST_DIR)]
            networks = [args.network, backup_network.name]
            command = [*(command or []), *pgbackrest.postgres_args(env)]
        uploads: Sequence[Upload] = [
            Upload(path=path, owner=recipe.user, content=pulumi.Output.secret(files.apply(operator.itemgetter(path))))
            # The file names do not depend on the password; the list must exist before it resolves.
            for path in names
        ]
        seed = volume_seed(f"{kind}-files", image=image, volume=secrets.name, mount=r.SECRETS_DIR, uploads=uploads,
                           stack=env.stack, opts=docker_opts)
        self.container = hardened_container(
            kind,
            ContainerSpec(
                service=kind, image=image, user=recipe.user, cpus=recipe.cpus, memory_bytes=recipe.memory,
                healthcheck=recipe.healthcheck, health=STORE_HEALTH, networks=networks,
                envs=[f"{k}={v}" for k, v in sorted(recipe.envs.items())], command=command,
                tmpfs=tmpfs, lifecycle="stateful", hostname=kind, shm_size_bytes=recipe.shm_size,
                fixed_name=f"mysaaschat-{env.stack}-{kind}", stop_grace_seconds=60, deploy_timeout_seconds=300,
                mounts=mounts,
                # Labels force replacement: a changed password or config restarts the store on the
                # new files (a running Redis or RabbitMQ never rereads them).
                labels={"com.mysaaschat.files-sha256": files.apply(_digest)},
            ),
            env.stack,
            pulumi.ResourceOptions.merge(docker_opts, pulumi.ResourceOptions(depends_on=[seed])),
        )
        if backups:
            self.backup = pgbackrest.PostgresBackup("postgres-backup", pgbackrest.PostgresBackupArgs(
                env=env, image=image, data_volume=live, secrets_volume=secrets.name,
                socket_volume=socket_volume.name, network=backup_network.name, store=self.container,
                docker_opts=docker_opts), pulumi.ResourceOptions(parent=self))
        self.register_outputs({"container": self.container.name})

    def url_for(self, service: str) -> pulumi.Output[str]:
        return pulumi.Output.secret(self.password.apply(lambda pw: self._recipe.url(pw, service)))


def _digest(files: dict[str, str]) -> str:
    return hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()
