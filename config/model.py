"""Pydantic models of the whole environment: catalog, shared settings and per-stack differences.

Field descriptions are the configuration reference: `python -m ops docs` renders them into
docs/configuration.md, and a test fails when that file is stale.
"""

from __future__ import annotations

import re
from functools import partial
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator

from components.canonical import canonical_cpus
from config import checks
from config.checks import GiB, MiB

DataStore = Literal["postgres", "redis", "rabbitmq"]
RouteKind = Literal["http", "sse", "webhook"]
# Every policy Redis 7 accepts for maxmemory-policy (redis.conf, MAXMEMORY POLICY; redis-server 7.0.15
# starts with each of these and refuses allkeys_lru or lru).
RedisPolicy = Literal["noeviction", "allkeys-lru", "allkeys-lfu", "allkeys-random",
                      "volatile-lru", "volatile-lfu", "volatile-random", "volatile-ttl"]

_NAME = r"^[a-z][a-z0-9-]{0,40}[a-z0-9]$"
# Postgres truncates identifiers beyond 63 bytes (NAMEDATALEN - 1).
_IDENT = r"^[a-z_][a-z0-9_]{0,62}$"
_SSH_OPTIONS = {"identityfile", "identitiesonly", "identityagent", "serveraliveinterval", "serveralivecountmax",
                "connecttimeout", "connectionattempts", "compression", "controlmaster", "controlpath", "controlpersist"}
# Options components/host.py passes before the configured ones; "for each parameter, the first obtained
# value will be used" (ssh_config(5)), so configuring one of these would change nothing.
_SSH_PRESET = {"serveraliveinterval": "ServerAliveInterval=15", "connecttimeout": "ConnectTimeout=20"}
_SSH_TIME = r"\d+|(\d+[smhdwSMHDW])+"
_SSH_VALUES = {
    "identitiesonly": (r"yes|no", "yes or no"), "compression": (r"yes|no", "yes or no"),
    "serveralivecountmax": (r"\d+", "a number"), "connectionattempts": (r"[1-9]\d*", "a number"),
    "controlmaster": (r"yes|no|ask|auto|autoask", "yes, no, ask, auto or autoask"),
    "controlpersist": (rf"yes|no|{_SSH_TIME}", "yes, no or a time (60, 60s, 10m)"),
}
# Store containers answer on the data network under these aliases; a service of the same name would
# share the alias and receive some of the stores' connections.
RESERVED_SERVICE_NAMES = frozenset({"postgres", "redis", "rabbitmq"})


def _no_bool(value: object) -> object:
    # pydantic's lax mode reads true as 1; a boolean where a number belongs is always a mistake.
    if isinstance(value, bool):
        raise ValueError(f"{str(value).lower()} is a boolean; give a number")
    return value


def _size(unit: int, minimum: int, maximum: int | None, consumer: str) -> BeforeValidator:
    return BeforeValidator(partial(checks.size_in, unit=unit, minimum=minimum, maximum=maximum, consumer=consumer))


def _check(fn: object) -> AfterValidator:
    return AfterValidator(fn)  # type: ignore[arg-type]


def _docker_cpus(value: float) -> float:
    # moby refuses NanoCPUs below 0.01 ("Range of CPUs is from 0.01 to N"); measured on dockerd 20.10,
    # --cpus 0.001 is created but cannot start (the kernel refuses a 100us CFS quota).
    if value < 0.01:
        raise ValueError(f"{value:g} is below the 0.01 CPUs that Docker accepts")
    # The provider reads cpus back through nanoInt64ToDecimalString, which mangles some values
    # (10 -> "10.", 0.05 -> "0.1"): those would replace the container on every up.
    canonical_cpus(value)
    return value


Int = Annotated[int, BeforeValidator(_no_bool)]
Cpu = Annotated[float, BeforeValidator(_no_bool), Field(gt=0, le=256, allow_inf_nan=False), AfterValidator(_docker_cpus)]
# Docker takes a container's memory limit in whole MiB (components/container.py) and refuses less than 6 MiB
# ("Minimum memory limit allowed is 6MB", measured on dockerd 20.10); 0 would mean "no limit".
MemorySize = Annotated[int, _size(MiB, 6 * MiB, None, "Docker's memory limit"),
                       Field(description="bytes, written as 512Mi or 2Gi")]
# Postgres and Redis settings rendered as whole MB; 0 means "unlimited" to Redis' maxmemory.
MiBSize = Annotated[int, _size(MiB, MiB, None, "the store's setting (in MB)"), Field(description="bytes, written as 256Mi or 1Gi")]
# EBS gp3 volumes: whole GiB, 1 to 16384 (EBS user guide, volume types; components/host.py divides by GiB).
VolumeSize = Annotated[int, _size(GiB, GiB, 16384 * GiB, "an EBS gp3 volume"), Field(description="bytes, whole Gi (30Gi)")]
Interval = Annotated[str, BeforeValidator(partial(checks.docker_health_duration, zero=False)),
                     Field(description="Go duration (10s, 1m30s, 500ms), > 0")]
StartPeriod = Annotated[str, BeforeValidator(partial(checks.docker_health_duration, zero=True)),
                        Field(description="Go duration (30s, 1m30s), >= 0")]
EnvName = Annotated[str, _check(checks.env_name)]
_KEY_NAME = r"^[a-z][a-z0-9_-]*$"
_VHOST = r"^(/|[A-Za-z0-9_][A-Za-z0-9_.-]{0,254})$"
_STACK = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$"
LogicalSecret = Annotated[str, Field(pattern=_KEY_NAME)]


def _ssh_option(option: str) -> str:
    key = option.split("=", 1)[0].strip().lower()
    if "=" not in option or not key.isalpha():
        raise ValueError(f"{option!r} is not an ssh option of the form Key=value")
    if key in {"stricthostkeychecking", "userknownhostsfile", "knownhostscommand", "globalknownhostsfile",
               "hostkeyalgorithms", "hostkeyalias"}:
        raise ValueError(f"{option!r} would change host-key verification, which is pinned to the host's key")
    if key not in _SSH_OPTIONS:
        # Routing options (Port, ProxyJump, ...) would also have to reach the engine-ready wait,
        # which connects on its own; only client-side options are accepted.
        raise ValueError(f"{option!r} is not allowed; allowed: {', '.join(sorted(_SSH_OPTIONS))}")
    if key in _SSH_PRESET:
        # ssh keeps the first value it is given, and the program passes its own first.
        raise ValueError(f"{option!r} would be ignored: the program already passes {_SSH_PRESET[key]} "
                         "and ssh keeps the first value")
    value = option.split("=", 1)[1].strip()
    form = _SSH_VALUES.get(key)
    if not value or (form is not None and not re.fullmatch(form[0], value, re.IGNORECASE)):
        raise ValueError(f"{option!r}: ssh expects {form[1] if form else 'a value'}")
    return option


# What each pattern means, for messages a user can act on.
PATTERN_HELP = {
    _NAME: "lowercase letters, digits and -, 2 to 42 characters, starting with a letter",
    _IDENT: "lowercase letters, digits and _, not starting with a digit, at most 63 characters",
    _KEY_NAME: "lowercase letters, digits, _ and -, starting with a letter",
    _VHOST: "/ or letters, digits, _ . and -",
    _STACK: "letters, digits, _ . and -",
}


class Strict(BaseModel):
    """Every model forbids unknown keys: a typo is an error, never a silently ignored setting."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class ImageRef(Strict):
    repository: Annotated[str, _check(checks.image_repository)] = Field(
        description="Registry and repository, without tag (ghcr.io/org/app).")
    tag: Annotated[str, _check(checks.image_tag)] | None = Field(None, description="Immutable tag; `latest` is refused.")
    digest: Annotated[str, _check(checks.image_digest)] | None = Field(
        None, description="`sha256:<64 hex>`; wins over the tag when both are set.")

    @model_validator(mode="after")
    def _pinned(self) -> ImageRef:
        if self.tag is None and self.digest is None:
            raise ValueError("image has neither tag nor digest; set `image_tag` for the stack or pin this image")
        return self

    @property
    def reference(self) -> str:
        """What the host pulls: the digest when known (immutable), else the tag."""
        return f"{self.repository}@{self.digest}" if self.digest else f"{self.repository}:{self.tag}"


class Route(Strict):
    prefix: Annotated[str, _check(checks.route_prefix)] = Field(description="URL path prefix the gateway sends to this service.")
    kind: RouteKind = Field("http", description="`http`, `sse` (unbuffered, long-lived) or `webhook` (raw body).")
    rate_limit: str = Field("default", description="Name of a zone in `gateway.rate_limits`.")


class SecretRef(Strict):
    secret: LogicalSecret = Field(description="Logical secret name, mapped to a Secrets Manager id by the stack's `secrets`.")
    key: str = Field(description="Key inside the secret's JSON document.", min_length=1)


class RegistryAuth(Strict):
    """Credentials the Docker provider pulls private images with (its `registry_auth`)."""

    address: Annotated[str, _check(checks.registry_host)] = Field(description="Registry host, as in image names (ghcr.io).")
    secret: LogicalSecret = Field(description="Logical secret whose JSON document has `username` and `password` (a token).")


class Healthcheck(Strict):
    """Docker healthcheck timings: Go durations (500ms, 10s, 1m30s, 1h)."""

    interval: Interval = "10s"
    timeout: Interval = "3s"
    retries: Int = Field(3, ge=1, le=20)
    start_period: StartPeriod = "30s"


class Metrics(Strict):
    """Where a service serves Prometheus metrics (the monitoring scrapes it on the apps network)."""

    path: Annotated[str, _check(checks.http_path)] = Field("/metrics", description="HTTP path of the metrics.")
    port: Int | None = Field(None, ge=1024, le=65535, description="Container port; the service's `port` when unset.")


def _release_arg(value: str) -> str:
    if not value.strip():
        raise ValueError("an empty argument; give the command as a list of words: [npx, prisma, migrate, deploy]")
    if "\n" in value or "\x00" in value:
        raise ValueError("an argument may not contain a newline or NUL")
    return value


def _release_command(value: list[str]) -> list[str]:
    if not value:
        raise ValueError("an empty command; give it as a list of words: [npx, prisma, migrate, deploy], or remove release")
    return value


class Release(Strict):
    """A one-shot release-phase command (database migrations): it runs in the service's NEW image, on the
    data network, with the service's environment and secrets, once per image, before the new containers
    start; a non-zero exit fails the update and the old version keeps serving."""

    command: Annotated[list[Annotated[str, AfterValidator(_release_arg)]], AfterValidator(_release_command)] = Field(
        description="The command, exec form (a list of words, no shell): [npx, prisma, migrate, deploy].")


class Service(Strict):
    kind: Literal["web", "worker"] = Field(description="`web` serves gateway routes; `worker` has none.")
    description: str = ""
    image: ImageRef
    port: Int = Field(ge=1024, le=65535, description="Container port (unprivileged: containers run as non-root).")
    routes: list[Route] = Field(default_factory=list)
    health_path: Annotated[str, _check(checks.http_path)] = Field(description="HTTP path answering 200 when healthy.")
    required_env: list[EnvName] = Field(default_factory=list, description="Variables the service refuses to start without.")
    env: dict[EnvName, str] = Field(default_factory=dict, description="Overrides of shared variables, and service-only ones.")
    secrets: dict[EnvName, SecretRef] = Field(default_factory=dict, description="Variable -> secret reference.")
    cpu: Cpu = Field(description="CPU limit in cores (0.01 or more; at most the host's vCPUs).")
    memory: MemorySize = Field(description="Memory limit (512Mi, 2Gi): whole Mi, at least 6Mi (Docker).")
    uses: list[DataStore] = Field(default_factory=list, description="Data stores; their URLs are derived.")
    depends_on: list[str] = Field(default_factory=list, description="Services that must be healthy first.")
    egress: bool = Field(False, description="Needs the internet (Stripe, OpenAI, SMTP).")
    user: Annotated[str, _check(checks.uid_gid)] = Field(description="uid:gid, never root.")
    tmpfs: list[Annotated[str, _check(checks.container_path)]] = Field(
        default_factory=lambda: ["/tmp"], description="Writable paths on a read-only root.")
    stop_grace_seconds: Int = Field(ge=1, le=600)
    deploy_timeout_seconds: Int = Field(ge=10, le=1800, description="How long a new container may take to turn healthy.")
    healthcheck: Healthcheck
    metrics: Metrics | None = Field(None, description="Prometheus metrics endpoint, when the service has one.")
    release: Release | None = Field(None, description="A release-phase command (migrations) run before the new containers start.")

    @property
    def needs_egress(self) -> bool:
        """Derived: a service that reports to Sentry calls the internet as surely as one that
        calls Stripe, so a SENTRY_DSN puts it on the egress network too."""
        return self.egress or "SENTRY_DSN" in self.secrets or "SENTRY_DSN" in self.env


class Ami(Strict):
    ssm_parameter: Annotated[str, _check(checks.ssm_ami_parameter)] | None = Field(
        None, description="Public SSM parameter holding the AMI id, as Debian publishes them "
        "(/aws/service/debian/release/bookworm/latest/amd64). Or give `owners` and `name`.")
    owners: list[Annotated[str, _check(checks.aws_owner)]] | None = Field(
        None, min_length=1, description="AMI owner account ids (Debian: 136693071363), with `name`.")
    name: str | None = Field(None, min_length=1, description="Name filter (debian-12-amd64-*), or an exact name to pin "
                             "one image: a pin is also found once AWS deprecates the image, two years after it was made.")
    architecture: Literal["x86_64", "arm64"] = "x86_64"

    @model_validator(mode="after")
    def _one_source(self) -> Ami:
        if self.ssm_parameter and {"name", "owners"} & self.model_fields_set:
            raise ValueError("give either ssm_parameter or owners and name, not both")
        if not self.ssm_parameter and not (self.name and self.owners):
            raise ValueError("give ssm_parameter, or owners and name")
        return self

    @property
    def include_deprecated(self) -> bool:
        """A pinned name (no wildcard) must still resolve after AWS deprecates the image: filtered
        DescribeImages hides deprecated AMIs unless IncludeDeprecated is set."""
        return bool(self.name) and "*" not in (self.name or "") and "?" not in (self.name or "")


class Host(Strict):
    kind: Literal["ec2", "local"] = Field(description="`ec2` provisions a host; `local` uses this machine's Docker.")
    docker_host: Annotated[str, _check(checks.docker_endpoint)] = Field(
        "unix:///var/run/docker.sock", description="Docker endpoint for `local`.")
    instance_type: Annotated[str, _check(checks.instance_type)] | None = Field(None, description="EC2 instance type (t3.large).")
    root_volume: VolumeSize | None = Field(None, description="Root EBS volume size (gp3: whole Gi, 1Gi to 16384Gi).")
    data_volume: VolumeSize | None = Field(
        None, description="EBS volume for Docker's data (databases live here; gp3: whole Gi, 1Gi to 16384Gi).")
    ami: Ami | None = None
    availability_zone: Annotated[str, _check(checks.availability_zone)] | None = Field(
        None, description="Zone name in the stack's `aws:region` (eu-west-1a).")
    admin_cidrs: list[Annotated[str, _check(checks.admin_cidr)]] = Field(
        default_factory=list, description="Who may reach SSH (22): IPv4 networks. Never 0.0.0.0/0.")
    ssh_user: Annotated[str, _check(checks.linux_user)] = "admin"
    ssh_options: list[Annotated[str, _check(_ssh_option)]] = Field(
        default_factory=list, description="Extra `ssh -o Key=value` options for the Docker provider, from an allow-list "
        "(identity, keep-alive, connection sharing); host-key checking stays pinned.")
    ssh_public_key: Annotated[str, _check(checks.ssh_public_key)] | None = Field(
        None, description="OpenSSH public key for the operator (ssh-ed25519 or ssh-rsa: what EC2 imports).")
    backup_bucket: Annotated[str, _check(checks.s3_bucket)] | None = Field(
        None, description="S3 bucket the host may write `<stack>/` backups into.")
    ssh_private_key: str | None = Field(
        None, description="Operator key for the engine-ready wait (a config secret); the SSH agent when unset.")

    @field_validator("ssh_options")
    @classmethod
    def _once_each(cls, options: list[str]) -> list[str]:
        keys = [o.split("=", 1)[0].strip().lower() for o in options]
        repeated = sorted({k for k in keys if keys.count(k) > 1 and k != "identityfile"})  # IdentityFile adds up
        if repeated:
            raise ValueError(f"{repeated[0]} is given twice; ssh would silently use the first")
        return options


class RateLimit(Strict):
    per_second: Int = Field(ge=1, le=100000)
    burst: Int = Field(ge=0, le=100000)


class Gateway(Strict):
    """The nginx gateway: the one container that publishes host ports (80 and 443)."""

    image: ImageRef = Field(description="An nginx image that runs as non-root and listens on 8080/8443 "
                            "(nginxinc/nginx-unprivileged).")
    user: Annotated[str, _check(checks.uid_gid)] = Field("101:101", description="uid:gid nginx runs as (the image's).")
    cpu: Cpu = Field(description="CPU limit in cores.")
    memory: MemorySize = Field(description="Container memory limit.")
    rate_limits: dict[Annotated[str, Field(pattern=_KEY_NAME)], RateLimit] = Field(
        description="Named nginx limit_req zones (per client address).")
    max_body: MiBSize = Field(description="Largest request body (client_max_body_size), whole Mi; larger gets 413.")
    webhook_max_body: MiBSize = Field(description="Largest webhook body (Stripe sends well under 1Mi).")
    hsts_max_age_seconds: Int = Field(31536000, ge=0, le=63072000, description="Strict-Transport-Security max-age.")
    sse_read_timeout_seconds: Int = Field(3600, ge=3600, le=86400, description="How long an SSE stream may stay "
                                          "silent (proxy_read_timeout); at least an hour.")


class Certbot(Strict):
    """The certbot companion of `tls.mode: letsencrypt`: issues and renews the gateway's certificate."""

    image: ImageRef = Field(default_factory=lambda: ImageRef.model_validate(
        {"repository": "docker.io/certbot/certbot", "tag": "v3.0.1"}),
                            description="Pinned certbot image.")
    cpu: Cpu = Field(0.1, description="CPU limit in cores.")
    memory: MemorySize = Field(128 * MiB, description="Container memory limit.")
    check_every_hours: Int = Field(12, ge=1, le=24, description="How often certbot checks whether the certificate "
                                   "is due (it renews 30 days before expiry); Let's Encrypt suggests twice a day.")


class Tls(Strict):
    """Where the gateway's certificate comes from."""

    mode: Literal["secretsmanager", "selfsigned", "letsencrypt"] = Field(
        description="`secretsmanager` (PEM pair in a secret), `selfsigned` (generated by Pulumi; staging, local) "
        "or `letsencrypt` (a certbot companion on the HTTP-01 webroot challenge; `ec2` hosts only).")
    secret: LogicalSecret | None = Field(
        None, description="`secretsmanager`: logical secret whose JSON document has `certificate` and `private_key` (PEM).")
    email: Annotated[str, _check(checks.email)] | None = Field(None, description="`letsencrypt`: the ACME account contact.")
    validity_days: Int = Field(90, ge=1, le=825, description="`selfsigned`: certificate lifetime.")
    acme_staging: bool = Field(False, description="`letsencrypt`: Let's Encrypt's staging CA (untrusted "
                               "certificates, generous rate limits), for stacks other than prod.")
    certbot: Certbot = Field(default_factory=lambda: Certbot.model_validate({}),
                             description="`letsencrypt`: the certbot companion.")


# Prometheus durations ("[0-9]+(ms|s|m|h|d|w|y)" units, concatenated: 1h30m); prometheus/common model.ParseDuration.
PromDuration = Annotated[str, BeforeValidator(checks.prometheus_duration),
                         Field(description="Prometheus duration (30s, 5m, 1h30m, 30d), > 0")]
Ratio = Annotated[float, BeforeValidator(_no_bool), Field(gt=0, lt=1, allow_inf_nan=False)]


class MonitoringContainer(Strict):
    image: ImageRef = Field(description="Pinned image.")
    cpu: Cpu = Field(description="CPU limit in cores.")
    memory: MemorySize = Field(description="Container memory limit.")


class AlertThresholds(Strict):
    """When an alert fires. Every alert is tested with promtool on a series that crosses it and one that does not."""

    down_for: PromDuration = Field("2m", description="How long a target may be unreachable (`up == 0`).")
    error_ratio: Ratio = Field(0.05, description="Share of a service's answers that are 5xx, over 5 minutes.")
    latency_p95_seconds: Annotated[float, BeforeValidator(_no_bool), Field(gt=0, le=600)] = Field(
        1.0, description="95th percentile of a service's request duration, over 5 minutes.")
    disk_full_hours: Int = Field(4, ge=1, le=720, description="Fire when a filesystem is predicted full within this "
                                 "many hours (predict_linear over the last 6 hours).")
    restarts: Int = Field(3, ge=1, le=100, description="Container starts within 15 minutes that count as restarting.")
    memory_ratio: Ratio = Field(0.9, description="Working set over the container's memory limit.")
    postgres_connections_ratio: Ratio = Field(0.8, description="Connections over the model's postgres.max_connections.")
    certificate_days: Int = Field(14, ge=1, le=365, description="Days before the gateway certificate expires.")
    backup_max_age_hours: Int = Field(26, ge=1, le=24 * 35, description="Age of the newest successful backup.")


class Receiver(Strict):
    """Where Alertmanager sends alerts; the URL is a secret (Secrets Manager), never a config value."""

    name: str = Field(pattern=_KEY_NAME, description="Receiver name.")
    kind: Literal["webhook", "slack"] = Field(description="`webhook` (POSTs Alertmanager's JSON) or `slack`.")
    url: SecretRef | None = Field(None, description="Secret holding the webhook or Slack URL (required).")
    channel: str | None = Field(None, description="`slack`: the channel (#alerts).")
    send_resolved: bool = True


class Monitoring(Strict):
    """Prometheus, Alertmanager, Grafana and the exporters; nothing of it is published on a host port."""

    retention: PromDuration = Field(description="How long Prometheus keeps samples (`--storage.tsdb.retention.time`).")
    scrape_interval: PromDuration = "15s"
    evaluation_interval: PromDuration = "15s"
    alerts: AlertThresholds = Field(default_factory=AlertThresholds)  # type: ignore[arg-type]
    receivers: list[Receiver] = Field(min_length=1, description="Alert destinations; every alert goes to each.")
    prometheus: MonitoringContainer
    alertmanager: MonitoringContainer
    grafana: MonitoringContainer
    node_exporter: MonitoringContainer
    cadvisor: MonitoringContainer
    postgres_exporter: MonitoringContainer
    redis_exporter: MonitoringContainer
    nginx_exporter: MonitoringContainer
    blackbox_exporter: MonitoringContainer = Field(description="Probes the gateway's HTTPS listener: the served "
                                                   "certificate's expiry and whether it verifies.")
class BackupStorage(Strict):
    """The S3 bucket backups go to (`host.backup_bucket`, ec2 hosts), replicated to a second region.

    Retention is S3's job (lifecycle), not the host's: the host's role may write but never delete.
    """

    retention_days: Int = Field(30, ge=1, le=3650, description="Days a backup object stays current before "
                                "the lifecycle expires it.")
    noncurrent_days: Int = Field(7, ge=1, le=3650, description="Days an overwritten or expired version is kept "
                                 "before the lifecycle deletes it for good.")
    lock_days: Int = Field(30, ge=1, le=3650, description="Object Lock (governance mode) default retention: no "
                           "version can be deleted or overwritten for this long, by the host or anyone without "
                           "s3:BypassGovernanceRetention. At most `retention_days`.")
    abort_multipart_days: Int = Field(1, ge=1, le=30, description="Incomplete multipart uploads are aborted "
                                      "(and stop costing) after this many days.")
    replica_region: Annotated[str, _check(checks.aws_region)] = Field(
        "eu-central-1", description="Region of the replica bucket (`<bucket>-replica`); never the stack's own.")

    @model_validator(mode="after")
    def _lock_within_retention(self) -> BackupStorage:
        if self.lock_days > self.retention_days:
            raise ValueError(f"lock_days ({self.lock_days}) exceeds retention_days ({self.retention_days}): "
                             "the lifecycle could never expire a locked backup")
        return self


# Secrets the environment owns: generated by the program (pulumi_random) and written to secrets it
# manages in Secrets Manager; logical name -> keys of its JSON document. A stack adds the logical
# secrets of the catalog it generates itself (`generated_secrets`, e.g. the JWT keys of `app`).
MANAGED_SECRETS: dict[str, tuple[str, ...]] = {
    "stores": ("postgres_password", "rabbitmq_password", "redis_password"),
    "grafana": ("admin_password",),
    "backup": ("passphrase",),
}


class DataStoreBase(Strict):
    image: ImageRef = Field(description="Pinned image (tag or digest) of the store.")
    cpu: Cpu = Field(description="CPU limit in cores.")
    memory: MemorySize = Field(description="Container memory limit (whole Mi, at least 6Mi).")


_WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


class BackupSchedule(Strict):
    """When a scheduled pgBackRest backup of one type runs (UTC)."""

    days: list[Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]] = Field(
        min_length=1, description="Weekdays it runs on (mon..sun).")
    at: str = Field(pattern=r"^([01][0-9]|2[0-3]):[0-5][0-9]$", description="Time of day, HH:MM in UTC.")

    @field_validator("days")
    @classmethod
    def _once_each(cls, days: list[str]) -> list[str]:
        if len(set(days)) != len(days):
            raise ValueError("a weekday is listed twice")
        return sorted(days, key=_WEEKDAYS.index)


class PostgresBackup(Strict):
    """Continuous backups with pgBackRest (on when `host.backup_bucket` is set): WAL archived to S3 as it
    fills and at least every `archive_timeout_seconds`, scheduled full and differential backups."""

    archive_timeout_seconds: Int = Field(
        30, ge=5, le=60, description="Postgres `archive_timeout`: a segment with commits is closed and archived at "
        "least this often. The RPO is this plus the upload (~1 s), so 30 keeps the 60 s promise with margin; "
        "at most 60.")
    full: BackupSchedule = Field(
        default_factory=lambda: BackupSchedule(days=["sun"], at="01:00"), description="Full backups.")
    diff: BackupSchedule = Field(
        default_factory=lambda: BackupSchedule(days=["mon", "tue", "wed", "thu", "fri", "sat"], at="01:00"),
        description="Differential backups (changes since the last full).")
    retention_days: Int = Field(
        14, ge=1, le=3650, description="Full backups (and the WAL they need) are kept this many days "
        "(`repo1-retention-full-type=time`).")
    retention_diff: Int = Field(7, ge=1, le=9999999, description="Differential backups kept per full backup set.")
    process_max: Int = Field(2, ge=1, le=64, description="pgBackRest `process-max`: parallel compression/transfer "
                             "processes of a backup or restore.")
    pgbackrest_version: str = Field(
        "2.51-r0", pattern=r"^\d+\.\d+(\.\d+)?-r\d+$",
        description="The Alpine `pgbackrest` package version pinned into the store image (alpine3.20 community: "
        "2.51-r0; it must match the base image's Alpine branch).")

    @field_validator("pgbackrest_version")
    @classmethod
    def _sends_content_md5(cls, value: str) -> str:
        # The bucket has an Object Lock default retention: S3 refuses a PUT without Content-MD5 (or an
        # SDK checksum). pgBackRest sends Content-MD5 on every request with a body
        # (src/storage/s3/storage.c storageS3RequestAsync) in every release but 2.55.0, which sent it
        # only "when required" and broke archive-push on Object-Lock buckets (pgbackrest/pgbackrest#2613;
        # reverted in 2.55.1, #2615).
        if value.split("-")[0] in ("2.55", "2.55.0"):
            raise ValueError("pgBackRest 2.55.0 omits Content-MD5, which S3 requires for writes into the "
                             "Object-Lock backup bucket (pgbackrest#2613); pin 2.51 or 2.55.1 and later")
        return value

    @model_validator(mode="after")
    def _not_same_minute(self) -> PostgresBackup:
        clash = sorted(set(self.full.days) & set(self.diff.days), key=_WEEKDAYS.index)
        if clash and self.full.at == self.diff.at:
            raise ValueError(f"full and diff are both scheduled on {clash[0]} at {self.full.at}; pick one")
        return self


class Postgres(DataStoreBase):
    backup: PostgresBackup = Field(default_factory=lambda: PostgresBackup.model_validate({}),
                                   description="Continuous backups (pgBackRest).")
    database: str = Field(pattern=_IDENT)
    user: str = Field(pattern=_IDENT)
    shared_buffers: MiBSize = Field(description="Must stay below `memory`.")
    effective_cache_size: MiBSize
    max_connections: Int = Field(ge=10, le=5000)
    data_volume: str | None = Field(
        None, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]+$",
        description="Docker volume the store runs on. Default: the program's own `mysaaschat-<stack>-postgres-data`. "
                    "`ops backup restore --volume` writes the restored, checked volume here; the default volume "
                    "stays (protected, never deleted by the program).")

    @field_validator("database")
    @classmethod
    def _not_template(cls, value: str) -> str:
        if value in {"template0", "template1"}:
            raise ValueError(f"{value} is a Postgres template database; name the application's database")
        return value

    @field_validator("user")
    @classmethod
    def _not_reserved_role(cls, value: str) -> str:
        if value.startswith("pg_"):
            raise ValueError(f"{value}: Postgres reserves role names starting with pg_")
        return value


class Redis(DataStoreBase):
    maxmemory: MiBSize = Field(description="Must leave headroom below `memory`.")
    maxmemory_policy: RedisPolicy
    appendonly: bool = Field(description="Append-only file persistence.")


class RabbitMQ(DataStoreBase):
    user: str = Field(pattern=_IDENT)
    vhost: str = Field(pattern=_VHOST, description="Virtual host (`/` or a name).")

    @field_validator("user")
    @classmethod
    def _not_guest(cls, value: str) -> str:
        if value == "guest":
            raise ValueError("guest may log in from localhost only (loopback_users); services could not connect")
        return value


class Environment(Strict):
    """One stack's whole environment, after the catalog, shared settings and stack file are merged."""

    stack: str = Field(pattern=_STACK)
    domain: Annotated[str, _check(checks.domain)] = Field(
        description="Public DNS name; an internationalized name is used in its ASCII (xn--) form.")
    image_tag: Annotated[str, _check(checks.image_tag)] | None = Field(
        None, description="Release tag applied to every service image that has none.")
    host: Host
    secrets_backend: Literal["aws-secretsmanager", "generated"] = Field(
        "aws-secretsmanager", description="`generated` (local only) makes random values instead of reading AWS.")
    secrets: dict[LogicalSecret, Annotated[str, _check(checks.secret_id)]] = Field(
        default_factory=dict, description="Logical secret name -> Secrets Manager secret name. Secrets the "
        "program manages (stores, grafana, backup, `generated_secrets`) default to `<stack>/my-saas-chat/<name>`.")
    generated_secrets: list[LogicalSecret] = Field(
        default_factory=list, description="Logical secrets of the catalog (e.g. `app`: the JWT signing keys) the "
        "program generates and manages instead of reading a document the business writes.")
    env: dict[EnvName, str] = Field(description="Shared variables for every service.")
    registries: list[RegistryAuth] = Field(
        default_factory=list, description="Private registries the service images come from, with their credentials.")
    services: dict[Annotated[str, Field(pattern=_NAME)], Service] = Field(min_length=1)
    gateway: Gateway
    tls: Tls = Field(description="The gateway's certificate, per stack.")
    postgres: Postgres
    redis: Redis
    rabbitmq: RabbitMQ
    monitoring: Monitoring = Field(description="Prometheus, Alertmanager, Grafana and the exporters.")
    backup_storage: BackupStorage = Field(default_factory=lambda: BackupStorage.model_validate({}),
                                          description="Backup bucket settings (used when `host.backup_bucket` is set).")

    @field_validator("services")
    @classmethod
    def _not_store_names(cls, services: dict[str, Service]) -> dict[str, Service]:
        clash = sorted(RESERVED_SERVICE_NAMES & set(services))
        if clash:
            raise ValueError(f"service name {clash[0]!r} is the network alias of a data store; rename the service")
        return services

    def secret_refs(self) -> list[SecretRef]:
        """Every secret value the environment reads: the services' and the registries' credentials."""
        refs = {(r.secret, r.key) for svc in self.services.values() for r in svc.secrets.values()}
        refs |= {(reg.secret, key) for reg in self.registries for key in ("username", "password")}
        if self.tls.mode == "secretsmanager" and self.tls.secret:
            refs |= {(self.tls.secret, key) for key in ("certificate", "private_key")}
        refs |= {(r.url.secret, r.url.key) for r in self.monitoring.receivers if r.url}
        return [SecretRef(secret=secret, key=key) for secret, key in sorted(refs)]

    def managed_secrets(self) -> dict[str, tuple[str, ...]]:
        """Logical secret -> keys, for every secret the program generates and writes: the environment's
        own (MANAGED_SECRETS) and the catalog's that the stack generates (keys: what services reference)."""
        managed = dict(MANAGED_SECRETS)
        for logical in self.generated_secrets:
            managed[logical] = tuple(sorted({r.key for svc in self.services.values() for r in svc.secrets.values()
                                             if r.secret == logical}))
        return dict(sorted(managed.items()))

    def secret_id(self, logical: str) -> str:
        """The Secrets Manager name of a logical secret: the stack's `secrets:` entry, else (managed
        secrets only) `<stack>/my-saas-chat/<logical>`."""
        return self.secrets.get(logical) or f"{self.stack}/my-saas-chat/{logical}"

    def consumers(self, logical: str, key: str | None = None) -> list[str]:
        """Containers whose configuration carries a value of this secret (one key, or any): what the
        next `up` replaces after it changes (`ops secrets rotate`). Derived from the model: services'
        references, the stores' passwords (the store's files and every derived URL), TLS, registries."""
        def hit(ref_secret: str, ref_key: str) -> bool:
            return ref_secret == logical and key in (None, ref_key)

        found = {name for name, svc in self.services.items() for r in svc.secrets.values() if hit(r.secret, r.key)}
        if logical == "stores":
            for store in ("postgres", "redis", "rabbitmq"):
                if hit("stores", f"{store}_password"):
                    found.add(store)
                    found.update(name for name, svc in self.services.items() if store in svc.uses)
        if hit("grafana", "admin_password"):
            found.add("grafana")
        if hit("backup", "passphrase"):
            found.add("postgres")  # the repository passphrase is configured beside the store's pgBackRest
        if self.tls.mode == "secretsmanager" and self.tls.secret == logical:
            found.add("gateway")
        return sorted(found)

    def service_order(self) -> list[str]:
        """Services with every dependency before its dependents (cycles are refused by the rules)."""
        order: list[str] = []

        def visit(name: str) -> None:
            if name not in order:
                for dep in self.services[name].depends_on:
                    visit(dep)
                order.append(name)

        for name in sorted(self.services):
            visit(name)
        return order
