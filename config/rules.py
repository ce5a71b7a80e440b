"""Cross-field rules that a single field's validator cannot see, and the derived environment.

`derived_env` is the one place that decides which variables the program computes; the rules use it
to refuse a hand-typed copy, and the service component uses it to build each container's env.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from config.model import Environment, SecretRef

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


def check_environment(env: Environment) -> list[tuple[str, str]]:
    return sorted(set(_problems(env)))


def _problems(env: Environment) -> Iterator[tuple[str, str]]:
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
        yield from _env_problems(env, name)
    yield from _cycles(env)
    yield from _secret_problems(env)
    for var in sorted(set(env.env) & DERIVED_NAMES):
        yield f"env.{var}", "is derived by the program; remove it"
    if env.postgres.shared_buffers >= env.postgres.memory:
        yield "postgres.shared_buffers", "must be smaller than postgres.memory"
    if env.redis.maxmemory >= env.redis.memory:
        yield "redis.maxmemory", "must leave headroom below redis.memory (the container limit)"
    if env.host.kind == "ec2" and env.secrets_backend == "generated":
        yield "secrets_backend", "generated secrets are for host.kind local only; use aws-secretsmanager"


def _env_problems(env: Environment, name: str) -> Iterator[tuple[str, str]]:
    svc = env.services[name]
    at = f"services.{name}"
    derived = derived_env(env, name)
    for var, value in svc.env.items():
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


def _secret_problems(env: Environment) -> Iterator[tuple[str, str]]:
    used: dict[str, list[str]] = {}
    for name, svc in env.services.items():
        for var, ref in svc.secrets.items():
            used.setdefault(ref.secret, []).append(f"services.{name}.secrets.{var}")
    if env.secrets_backend == "aws-secretsmanager":
        for logical, refs in sorted(used.items()):
            if logical not in env.secrets:
                yield f"secrets.{logical}", f"no Secrets Manager id for {logical!r}, referenced by {', '.join(sorted(refs))}"
    for logical in sorted(set(env.secrets) - set(used)):
        yield f"secrets.{logical}", "is not referenced by any service; remove it"


def _cycles(env: Environment) -> Iterator[tuple[str, str]]:
    state: dict[str, int] = {}

    def visit(name: str, trail: list[str]) -> Iterator[tuple[str, str]]:
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
