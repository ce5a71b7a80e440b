"""Pydantic models of the whole environment: catalog, shared settings and per-stack differences.

Field descriptions are the configuration reference: `python -m ops docs` renders them into
docs/configuration.md, and a test fails when that file is stale.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator

DataStore = Literal["postgres", "redis", "rabbitmq"]
RouteKind = Literal["http", "sse", "webhook"]

_SIZE = re.compile(r"^(\d+)(Ki|Mi|Gi)$")
_UNIT = {"Ki": 1024, "Mi": 1024**2, "Gi": 1024**3}
_NAME = r"^[a-z][a-z0-9-]{0,40}[a-z0-9]$"
_ENV_NAME = re.compile(r"^[A-Z][A-Z0-9_]*$")
_DURATION = r"^\d+(ms|s|m|h)$"
_SSH_OPTIONS = {"identityfile", "identitiesonly", "identityagent", "serveraliveinterval", "serveralivecountmax",
                "connecttimeout", "connectionattempts", "compression", "controlmaster", "controlpath", "controlpersist"}


def _parse_size(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, str):
        raise ValueError("expected a size string such as 512Mi or 2Gi")
    match = _SIZE.match(value.strip())
    if not match:
        raise ValueError(f"{value!r} is not a size: use a whole number with Ki, Mi or Gi (512Mi, 2Gi)")
    return int(match.group(1)) * _UNIT[match.group(2)]


Size = Annotated[int, BeforeValidator(_parse_size), Field(description="bytes, written as 512Mi or 2Gi")]
Duration = Annotated[str, Field(pattern=_DURATION)]


class Strict(BaseModel):
    """Every model forbids unknown keys: a typo is an error, never a silently ignored setting."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class ImageRef(Strict):
    repository: str = Field(description="Registry and repository, without tag (ghcr.io/org/app).")
    tag: str | None = Field(None, description="Immutable tag; `latest` is refused.")
    digest: str | None = Field(None, description="`sha256:<64 hex>`; wins over the tag when both are set.")

    @field_validator("repository")
    @classmethod
    def _no_tag_in_repository(cls, value: str) -> str:
        last = value.rsplit("/", 1)[-1]
        if ":" in last or "@" in last:
            raise ValueError("put the tag or digest in `tag`/`digest`, not in the repository")
        return value

    @field_validator("tag")
    @classmethod
    def _immutable_tag(cls, value: str | None) -> str | None:
        if value is not None and value.strip().lower() in {"", "latest", "stable", "main", "master"}:
            raise ValueError(f"tag {value!r} is mutable; pin a release tag or a digest")
        if value is not None and not re.match(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$", value):
            raise ValueError(f"{value!r} is not a valid image tag")
        return value

    @field_validator("digest")
    @classmethod
    def _digest_form(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^sha256:[0-9a-f]{64}$", value):
            raise ValueError("digest must be sha256: followed by 64 lowercase hex digits")
        return value

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
    prefix: str = Field(description="URL path prefix the gateway sends to this service.", pattern=r"^/[A-Za-z0-9/_.-]*$")
    kind: RouteKind = Field("http", description="`http`, `sse` (unbuffered, long-lived) or `webhook` (raw body).")
    rate_limit: str = Field("default", description="Name of a zone in `gateway.rate_limits`.")


class SecretRef(Strict):
    secret: str = Field(description="Logical secret name, mapped to a Secrets Manager id by the stack's `secrets`.")
    key: str = Field(description="Key inside the secret's JSON document.", min_length=1)


class Healthcheck(Strict):
    interval: Duration = "10s"
    timeout: Duration = "3s"
    retries: int = Field(3, ge=1, le=20)
    start_period: Duration = "30s"


class Service(Strict):
    kind: Literal["web", "worker"] = Field(description="`web` serves gateway routes; `worker` has none.")
    description: str = ""
    image: ImageRef
    port: int = Field(ge=1024, le=65535, description="Container port (unprivileged: containers run as non-root).")
    routes: list[Route] = Field(default_factory=list)
    health_path: str = Field(pattern=r"^/", description="HTTP path answering 200 when healthy.")
    required_env: list[str] = Field(default_factory=list, description="Variables the service refuses to start without.")
    env: dict[str, str] = Field(default_factory=dict, description="Overrides of shared variables, and service-only ones.")
    secrets: dict[str, SecretRef] = Field(default_factory=dict, description="Variable -> secret reference.")
    cpu: float = Field(gt=0, le=16, description="CPU limit in cores.")
    memory: Size = Field(description="Memory limit (512Mi, 2Gi).")
    uses: list[DataStore] = Field(default_factory=list, description="Data stores; their URLs are derived.")
    depends_on: list[str] = Field(default_factory=list, description="Services that must be healthy first.")
    egress: bool = Field(False, description="Needs the internet (Stripe, OpenAI, SMTP).")
    user: str = Field(pattern=r"^[1-9]\d*:[1-9]\d*$", description="uid:gid, never root.")
    tmpfs: list[str] = Field(default_factory=lambda: ["/tmp"], description="Writable paths on a read-only root.")
    stop_grace_seconds: int = Field(ge=1, le=600)
    deploy_timeout_seconds: int = Field(ge=10, le=1800, description="How long a new container may take to turn healthy.")
    healthcheck: Healthcheck

    @field_validator("required_env")
    @classmethod
    def _env_names(cls, names: list[str]) -> list[str]:
        bad = [n for n in names if not _ENV_NAME.match(n)]
        if bad:
            raise ValueError(f"not environment variable names: {', '.join(bad)}")
        return names

    @field_validator("env", "secrets")
    @classmethod
    def _env_keys(cls, values: dict[str, object]) -> dict[str, object]:
        bad = [n for n in values if not _ENV_NAME.match(n)]
        if bad:
            raise ValueError(f"not environment variable names: {', '.join(bad)}")
        return values

    @field_validator("tmpfs")
    @classmethod
    def _absolute(cls, paths: list[str]) -> list[str]:
        bad = [p for p in paths if not p.startswith("/")]
        if bad:
            raise ValueError(f"tmpfs paths must be absolute: {', '.join(bad)}")
        return paths


class Ami(Strict):
    owners: list[str] = Field(min_length=1, description="AMI owner account ids (Debian: 136693071363).")
    name: str = Field(description="Name filter, pinned to a release (debian-12-amd64-20241004-*).")
    architecture: Literal["x86_64", "arm64"] = "x86_64"


class Host(Strict):
    kind: Literal["ec2", "local"] = Field(description="`ec2` provisions a host; `local` uses this machine's Docker.")
    docker_host: str = Field("unix:///var/run/docker.sock", description="Docker endpoint for `local`.")
    instance_type: str | None = Field(None, pattern=r"^[a-z][a-z0-9]*\.[a-z0-9]+$")
    root_volume: Size | None = Field(None, description="Root EBS volume size.")
    data_volume: Size | None = Field(None, description="EBS volume for Docker's data (databases live here).")
    ami: Ami | None = None
    availability_zone: str | None = None
    admin_cidrs: list[str] = Field(default_factory=list, description="Who may reach SSH (22). Never 0.0.0.0/0.")
    ssh_user: str = "admin"
    ssh_options: list[str] = Field(
        default_factory=list, description="Extra `ssh -o Key=value` options for the Docker provider, from an allow-list "
        "(identity, keep-alive, connection sharing); host-key checking stays pinned.")
    ssh_public_key: str | None = Field(None, description="OpenSSH public key for the operator.")
    backup_bucket: str | None = Field(None, description="S3 bucket the host may write `<stack>/` backups into.")
    ssh_private_key: str | None = Field(
        None, description="Operator key for the engine-ready wait (a config secret); the SSH agent when unset.")

    @field_validator("admin_cidrs")
    @classmethod
    def _cidrs(cls, cidrs: list[str]) -> list[str]:
        for cidr in cidrs:
            try:
                net = ipaddress.ip_network(cidr, strict=True)
            except ValueError as exc:
                raise ValueError(f"{cidr!r} is not a CIDR: {exc}") from None
            if net.prefixlen == 0:
                raise ValueError(f"{cidr} opens SSH to the whole internet; list the admin networks instead")
        return cidrs

    @field_validator("ssh_options")
    @classmethod
    def _no_host_key_overrides(cls, options: list[str]) -> list[str]:
        for option in options:
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
        return options

    @model_validator(mode="after")
    def _ec2_complete(self) -> Host:
        if self.kind == "ec2":
            missing = [k for k in ("instance_type", "root_volume", "data_volume", "ami", "availability_zone", "ssh_public_key")
                       if getattr(self, k) is None]
            if not self.admin_cidrs:
                missing.append("admin_cidrs")
            if missing:
                raise ValueError(f"host.kind ec2 needs: {', '.join(missing)}")
        return self


class RateLimit(Strict):
    per_second: int = Field(ge=1, le=100000)
    burst: int = Field(ge=0, le=100000)


class Gateway(Strict):
    rate_limits: dict[str, RateLimit] = Field(description="Named nginx limit_req zones (per client address).")


_IDENT = r"^[a-z_][a-z0-9_]*$"


class DataStoreBase(Strict):
    image: ImageRef = Field(description="Pinned image (tag or digest) of the store.")
    cpu: float = Field(gt=0, le=16, description="CPU limit in cores.")
    memory: Size = Field(description="Container memory limit.")


class Postgres(DataStoreBase):
    database: str = Field(pattern=_IDENT)
    user: str = Field(pattern=_IDENT)
    shared_buffers: Size = Field(description="Must stay below `memory`.")
    effective_cache_size: Size
    max_connections: int = Field(ge=10, le=5000)


class Redis(DataStoreBase):
    maxmemory: Size = Field(description="Must leave headroom below `memory`.")
    maxmemory_policy: Literal["noeviction", "allkeys-lru", "volatile-lru", "allkeys-lfu", "volatile-lfu"]
    appendonly: bool = Field(description="Append-only file persistence.")


class RabbitMQ(DataStoreBase):
    user: str = Field(pattern=_IDENT)
    vhost: str = Field(pattern=r"^[a-z_][a-z0-9_-]*$")


class Environment(Strict):
    """One stack's whole environment, after the catalog, shared settings and stack file are merged."""

    stack: str
    domain: str = Field(max_length=253, pattern=r"^([a-z0-9-]{1,63}\.)+[a-z]{2,63}$", description="Public DNS name.")
    image_tag: str | None = Field(None, description="Release tag applied to every service image that has none.")
    host: Host
    secrets_backend: Literal["aws-secretsmanager", "generated"] = Field(
        "aws-secretsmanager", description="`generated` (local only) makes random values instead of reading AWS.")
    secrets: dict[str, str] = Field(default_factory=dict, description="Logical secret name -> Secrets Manager id.")
    env: dict[str, str] = Field(description="Shared variables for every service.")
    services: dict[Annotated[str, Field(pattern=_NAME)], Service]
    gateway: Gateway
    postgres: Postgres
    redis: Redis
    rabbitmq: RabbitMQ

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
