"""Cross-field rules that a single field's validator cannot see, and the derived environment.

`derived_env` is the one place that decides which variables the program computes; the rules use it
to refuse a hand-typed copy, and the service component uses it to build each container's env.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from config.checks import is_graviton, max_vcpus, secret_looking

# Paths the gateway answers itself: its own health, the ACME challenge (and /.well-known generally),
# and Grafana (the monitoring half of the gateway issue). A route inside one would shadow it or be shadowed.
RESERVED_PREFIXES = ("/healthz", "/.well-known", "/grafana")

if TYPE_CHECKING:
    from config.model import Environment, SecretRef

MANAGED_SECRETS_NAMES = ("backup", "grafana", "stores")  # config.model.MANAGED_SECRETS (imported there at runtime)

STORE_URL_VARS = {"postgres": "DATABASE_URL", "redis": "REDIS_URL", "rabbitmq": "RABBITMQ_URL"}
ALWAYS_DERIVED = ("PORT", "SERVICE_NAME", "SENTRY_ENVIRONMENT", "FRONTEND_URL", "NEXT_PUBLIC_API_URL")
DERIVED_NAMES = frozenset((*ALWAYS_DERIVED, *STORE_URL_VARS.values()))


@dataclass(frozen=True)
class StoreUrl:
    """A connection string the data-store component computes (it embeds the store's password)."""

    store: Literal["postgres", "redis", "rabbitmq"]




def derived_env(env: Environment, name: str) -> dict[str, str | StoreUrl]:
    service = env.services[name]
    values: dict[str, str | StoreUrl] = {
        "PORT": str(service.port),
        "SERVICE_NAME": name,
        "SENTRY_ENVIRONMENT": env.stack,
        "FRONTEND_URL": f"https://{env.domain}",
        "NEXT_PUBLIC_API_URL": f"https://{env.domain}/api",
    }
    for store in service.uses:
        values[STORE_URL_VARS[store]] = StoreUrl(store)
    return values


def service_env(env: Environment, name: str) -> dict[str, str | SecretRef | StoreUrl]:
    """Every variable a service's container gets, by source: shared < override < secret < derived.

    The rules below guarantee the sources never overlap, so the order only documents intent.
    """
    service = env.services[name]
    merged: dict[str, str | SecretRef | StoreUrl] = {**env.env, **service.env}
    merged.update(service.secrets)
    merged.update(derived_env(env, name))
    return dict(sorted(merged.items()))


# Host settings that only an EC2 host reads, and only a local one.
EC2_ONLY = ("instance_type", "root_volume", "data_volume", "ami", "availability_zone", "admin_cidrs", "ssh_user",
            "ssh_options", "ssh_public_key", "backup_bucket", "ssh_private_key")
EC2_REQUIRED = ("instance_type", "root_volume", "data_volume", "ami", "availability_zone", "ssh_public_key", "admin_cidrs")


def check_environment(env: Environment, aws_region: str | None = None) -> list[tuple[tuple[str, ...], str]]:
    """Problems as (key paths, message): a rule about two values gives both paths, and the loader names
    the one that the most specific file supplied."""
    found: set[tuple[tuple[str, ...], str]] = set()
    for problem in (*_problems(env), *_host_problems(env, aws_region)):
        paths, message = problem[:-1], problem[-1]
        found.add((paths, message))
    return sorted(found)


def _host_problems(env: Environment, aws_region: str | None) -> Iterator[tuple[str, ...]]:
    host = env.host
    if host.kind == "local":
        for key in sorted(set(EC2_ONLY) & host.model_fields_set):
            yield f"host.{key}", "applies to host.kind ec2 only; remove it (a local host would silently ignore it)"
        return
    if "docker_host" in host.model_fields_set:
        yield "host.docker_host", "applies to host.kind local only; an EC2 host is reached over ssh"
    for key in EC2_REQUIRED:
        if not getattr(host, key):
            yield f"host.{key}", "is required for host.kind ec2"
    if host.backup_bucket and aws_region and env.backup_storage.replica_region == aws_region:
        yield "backup_storage.replica_region", f"is the stack's own region ({aws_region}); a replica must survive its loss"
    if aws_region is None:
        yield "aws:region", "is required for host.kind ec2 (aws:region: eu-west-1): the zone, ARNs and synth depend on it"
    elif aws_region and host.availability_zone and not (
            host.availability_zone.startswith(aws_region)
            and re.fullmatch(r"[a-z]|-[a-z0-9-]+", host.availability_zone[len(aws_region):])):
        yield "host.availability_zone", f"{host.availability_zone} is not a zone of the stack's region {aws_region} (aws:region)"
    seen: dict[str, int] = {}
    for i, cidr in enumerate(host.admin_cidrs):
        if cidr in seen:
            yield f"host.admin_cidrs.{i}", f"{cidr} is already listed (item {seen[cidr]}); AWS refuses duplicate rules"
        seen.setdefault(cidr, i)
    if host.instance_type:
        graviton = is_graviton(host.instance_type)
        arch = host.ami.architecture if host.ami else None
        if graviton is not None and arch is not None and graviton != (arch == "arm64"):
            yield ("host.ami.architecture", "host.instance_type",
                   f"{arch} does not run on {host.instance_type} ({'arm64' if graviton else 'x86_64'}); "
                   "match the AMI architecture to the instance type")
        vcpus = max_vcpus(host.instance_type)
        limits = [(f"services.{n}.cpu", s.cpu) for n, s in sorted(env.services.items())]
        limits += [(f"{k}.cpu", getattr(env, k).cpu) for k in ("postgres", "redis", "rabbitmq")]
        for path, cpu in limits:
            if vcpus is not None and cpu > vcpus:
                yield (path, "host.instance_type",
                       f"{cpu:g} CPUs is more than the {vcpus} vCPUs of {host.instance_type}; Docker refuses it")


def _problems(env: Environment) -> Iterator[tuple[str, ...]]:
    services = env.services
    seen_ports: dict[int, str] = {}
    seen_prefixes: dict[str, str] = {}
    for name, svc in sorted(services.items()):
        at = f"services.{name}"
        if svc.port in seen_ports:
            yield f"{at}.port", f"port {svc.port} is already used by {seen_ports[svc.port]}"
        seen_ports.setdefault(svc.port, name)
        for i, route in enumerate(svc.routes):
            if route.prefix in seen_prefixes:
                yield f"{at}.routes.{i}.prefix", f"{route.prefix} is already routed to {seen_prefixes[route.prefix]}"
            seen_prefixes.setdefault(route.prefix, name)
            reserved = next((r for r in RESERVED_PREFIXES if route.prefix.startswith(r)), None)
            if reserved:
                yield (f"{at}.routes.{i}.prefix", f"{route.prefix} collides with {reserved}, which the gateway "
                       "answers itself; choose another prefix")
            if route.rate_limit not in env.gateway.rate_limits:
                yield f"{at}.routes.{i}.rate_limit", f"no rate limit zone {route.rate_limit!r} in gateway.rate_limits"
        if svc.kind == "worker" and svc.routes:
            yield f"{at}.routes", "a worker has no gateway routes; make it kind: web"
        if svc.kind == "web" and not svc.routes:
            yield f"{at}.routes", "a web service needs at least one route (or kind: worker)"
        for i, dep in enumerate(svc.depends_on):
            if dep not in services:
                yield f"{at}.depends_on.{i}", f"no such service {dep!r}"
            elif dep == name:
                yield f"{at}.depends_on.{i}", "a service cannot depend on itself"
        if svc.stop_grace_seconds < MIN_STOP_GRACE_SECONDS:
            yield (f"{at}.stop_grace_seconds", f"{svc.stop_grace_seconds} s is shorter than the drain contract: a service "
                   f"keeps serving {DRAIN_DELAY_SECONDS} s after SIGTERM, then finishes its requests (README, "
                   f"Releasing); give at least {MIN_STOP_GRACE_SECONDS}")
        if svc.release and not svc.uses:
            yield (f"{at}.release", "a release command runs on the data network to migrate a data store, and "
                   "this service uses none (uses: [postgres]); remove it or add the store")
        yield from _env_problems(env, name)
    yield from _cycles(env)
    yield from _secret_problems(env)
    for var in sorted(filter(secret_looking, env.env)):
        yield f"env.{var}", PLAIN_SECRET
    yield from _tls_problems(env)
    yield from _monitoring_problems(env)
    for var in sorted(set(env.env) & DERIVED_NAMES):
        yield f"env.{var}", "is derived by the program; remove it"
    if env.postgres.shared_buffers >= env.postgres.memory:
        yield "postgres.shared_buffers", "postgres.memory", "postgres.shared_buffers must be smaller than postgres.memory"
    if env.redis.maxmemory >= env.redis.memory:
        yield "redis.maxmemory", "redis.memory", "redis.maxmemory must leave headroom below redis.memory (the container limit)"
    if "backup_storage" in env.model_fields_set and not env.host.backup_bucket:
        yield "backup_storage", "applies only with host.backup_bucket (an ec2 host's backup bucket); remove it"
    if env.host.kind == "ec2" and env.secrets_backend == "generated":
        yield "secrets_backend", "generated secrets are for host.kind local only; use aws-secretsmanager"


# The drain contract every service follows on SIGTERM (README, "Releasing"; the engine tests' stub
# implements it): keep serving this long, for whoever still routes to the old container (a retiring
# gateway worker just after `nginx -s reload`, a caller with the alias), then stop accepting and finish.
DRAIN_DELAY_SECONDS = 2
# Docker kills after stop_grace_seconds: the drain delay plus time for in-flight requests.
MIN_STOP_GRACE_SECONDS = DRAIN_DELAY_SECONDS + 3

PLAIN_SECRET = ("looks like a credential (policy container-secret-env): reference it from Secrets Manager in the "
                "service's `secrets:`, never a plain value")


def _env_problems(env: Environment, name: str) -> Iterator[tuple[str, ...]]:
    svc = env.services[name]
    at = f"services.{name}"
    derived = derived_env(env, name)
    for var, value in svc.env.items():
        if secret_looking(var):
            yield f"{at}.env.{var}", PLAIN_SECRET
        if var in DERIVED_NAMES:
            yield f"{at}.env.{var}", "is derived by the program; remove it"
        elif env.env.get(var) == value:
            yield f"{at}.env.{var}", "repeats the shared value from env; remove the override"
        if var in svc.secrets:
            yield f"{at}.env.{var}", "is also a secret reference; keep one"
    for var in svc.secrets:
        if var in DERIVED_NAMES:
            yield f"{at}.secrets.{var}", "is derived by the program; remove it"
        elif var in env.env:
            yield f"{at}.secrets.{var}", "is also a shared plain value in env; a secret must not have a plain default"
    available = set(env.env) | set(svc.env) | set(svc.secrets) | set(derived)
    for var in svc.required_env:
        if var in available:
            continue
        store = next((s for s, v in STORE_URL_VARS.items() if v == var), None)
        why = f" (derived only when the service uses {store})" if store else ""
        yield f"{at}.required_env", f"{var} is not provided by shared env, an override, a secret or the program{why}"


def _tls_problems(env: Environment) -> Iterator[tuple[str, ...]]:
    tls = env.tls
    if tls.mode == "secretsmanager" and not tls.secret:
        yield "tls.secret", "is required for tls.mode secretsmanager: the logical secret holding certificate and private_key"
    if tls.mode != "secretsmanager" and tls.secret:
        yield "tls.secret", f"applies to tls.mode secretsmanager only; tls.mode {tls.mode} would ignore it"
    if tls.mode == "letsencrypt":
        if not tls.email:
            yield "tls.email", "is required for tls.mode letsencrypt: the ACME account's contact e-mail"
        if env.host.kind != "ec2":
            yield "tls.mode", ("letsencrypt needs a host Let's Encrypt can reach at the domain on port 80 "
                               "(host.kind ec2); use selfsigned for a local engine")
        if tls.acme_staging and env.stack == "prod":
            yield "tls.acme_staging", "the staging CA's certificates are untrusted; prod uses Let's Encrypt's production CA"
    elif tls.email:
        yield "tls.email", f"applies to tls.mode letsencrypt only; tls.mode {tls.mode} would ignore it"
    if tls.mode != "letsencrypt" and tls.acme_staging:
        yield "tls.acme_staging", f"applies to tls.mode letsencrypt only; tls.mode {tls.mode} would ignore it"
    if tls.mode == "selfsigned" and env.host.kind == "ec2" and env.stack == "prod":
        yield "tls.mode", "a self-signed certificate is for staging and local; prod needs secretsmanager"


def _monitoring_problems(env: Environment) -> Iterator[tuple[str, ...]]:
    seen: dict[str, int] = {}
    for i, receiver in enumerate(env.monitoring.receivers):
        at = f"monitoring.receivers.{i}"
        if receiver.name in seen:
            yield f"{at}.name", f"{receiver.name} is already the name of receiver {seen[receiver.name]}"
        seen.setdefault(receiver.name, i)
        if receiver.url is None:
            yield f"{at}.url", (f"is required: the {receiver.kind} URL comes from Secrets Manager "
                                "({secret: <logical secret>, key: <key>}); an alert receiver without it delivers nothing")
        if receiver.kind == "slack" and not receiver.channel:
            yield f"{at}.channel", "is required for a slack receiver"
        if receiver.kind != "slack" and receiver.channel:
            yield f"{at}.channel", f"applies to slack receivers only; a {receiver.kind} receiver would ignore it"


def _secret_problems(env: Environment) -> Iterator[tuple[str, ...]]:
    used: dict[str, list[str]] = {}
    if env.tls.mode == "secretsmanager" and env.tls.secret:
        used.setdefault(env.tls.secret, []).append("tls.secret")
    for name, svc in env.services.items():
        for var, ref in svc.secrets.items():
            used.setdefault(ref.secret, []).append(f"services.{name}.secrets.{var}")
    for i, registry in enumerate(env.registries):
        used.setdefault(registry.secret, []).append(f"registries.{i}.secret")
    for i, receiver in enumerate(env.monitoring.receivers):
        if receiver.url:
            used.setdefault(receiver.url.secret, []).append(f"monitoring.receivers.{i}.url")
    managed = env.managed_secrets()
    for name, svc in env.services.items():
        for var, ref in svc.secrets.items():
            if ref.secret in MANAGED_SECRETS_NAMES and ref.key not in managed[ref.secret]:
                yield (f"services.{name}.secrets.{var}", f"{ref.secret} is generated by the program with the keys "
                       f"{', '.join(managed[ref.secret])}; there is no {ref.key!r}")
    for i, logical in enumerate(env.generated_secrets):
        refs = used.get(logical, [])
        if not refs:
            yield f"generated_secrets.{i}", f"{logical!r} is not referenced by any service; remove it"
        elif any(not r.startswith("services.") for r in refs):
            yield f"generated_secrets.{i}", (f"{logical!r} is referenced by {', '.join(sorted(refs))}: a certificate or "
                                             "registry credentials cannot be generated")
        elif logical in MANAGED_SECRETS_NAMES:
            yield f"generated_secrets.{i}", f"{logical!r} is always generated; remove it"
    if env.secrets_backend == "aws-secretsmanager":
        for logical, refs in sorted(used.items()):
            if logical not in env.secrets and logical not in managed:
                yield f"secrets.{logical}", f"no Secrets Manager id for {logical!r}, referenced by {', '.join(sorted(refs))}"
    for logical in sorted(set(env.secrets) - set(used) - set(managed)):
        yield f"secrets.{logical}", "is not referenced by any service; remove it"


def _cycles(env: Environment) -> Iterator[tuple[str, ...]]:
    state: dict[str, int] = {}

    def visit(name: str, trail: list[str]) -> Iterator[tuple[str, ...]]:
        state[name] = 1
        for dep in env.services[name].depends_on:
            if dep not in env.services or dep == name:
                continue
            if state.get(dep) == 1:
                cycle = [*trail[trail.index(dep):], dep] if dep in trail else [name, dep]
                yield f"services.{name}.depends_on", "dependency cycle: " + " -> ".join(cycle)
            elif dep not in state:
                yield from visit(dep, [*trail, dep])
        state[name] = 2

    for name in env.services:
        if name not in state:
            yield from visit(name, [name])
