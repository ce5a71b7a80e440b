"""Invalid configurations: each must fail with the file and key path that a user has to fix."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from config import ConfigError, load_environment, read_stack_file
from config.load import CATALOG_FILE

ROOT = Path(__file__).resolve().parent.parent
PROD = yaml.safe_load((ROOT / "Pulumi.prod.yaml").read_text())
CATALOG = yaml.safe_load(CATALOG_FILE.read_text())
K = "my-saas-chat:"
Mut = Callable[[dict[str, Any], dict[str, Any]], object]


def stack(key: str, value: Any) -> Mut:
    def apply(cfg: dict[str, Any], _: dict[str, Any]) -> None:
        cfg[K + key] = value
    return apply


def stack_in(path: str, value: Any) -> Mut:
    def apply(cfg: dict[str, Any], _: dict[str, Any]) -> None:
        head, *rest = path.split(".")
        node = cfg.setdefault(K + head, {})
        for part in rest[:-1]:
            node = node.setdefault(part, {})
        node[rest[-1]] = value
    return apply


def catalog_in(path: str, value: Any) -> Mut:
    def apply(_: dict[str, Any], cat: dict[str, Any]) -> None:
        parts = path.split(".")
        node = cat
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return apply


def both(*mutations: Mut) -> Mut:
    def apply(cfg: dict[str, Any], cat: dict[str, Any]) -> None:
        for mutate in mutations:
            mutate(cfg, cat)
    return apply


def drop(key: str) -> Mut:
    def apply(cfg: dict[str, Any], _: dict[str, Any]) -> None:
        del cfg[K + key]
    return apply


def drop_in(path: str) -> Mut:
    def apply(cfg: dict[str, Any], _: dict[str, Any]) -> None:
        head, *rest = path.split(".")
        node = cfg[K + head]
        for part in rest[:-1]:
            node = node[part]
        del node[rest[-1]]
    return apply


S, C, SH = "Pulumi.prod.yaml", "config/catalog.yaml", "config/shared.yaml"
CASES: list[tuple[str, Mut, str, str]] = [
    ("memory-unit", stack_in("services.chat-service.memory", "2GB"), f"{S}: services.chat-service.memory", "Ki, Mi or Gi"),
    ("memory-number", stack_in("services.chat-service.memory", 2048), f"{S}: services.chat-service.memory", "size"),
    ("cpu-zero", stack_in("services.chat-service.cpu", 0), f"{S}: services.chat-service.cpu", "greater than 0"),
    ("cpu-text", stack_in("services.auth-service.cpu", "lots"), f"{S}: services.auth-service.cpu", "number"),
    ("unknown-service", stack_in("services.chat-servise.memory", "1Gi"), f"{S}: services.chat-servise",
     "did you mean chat-service"),
    ("catalog-fact-in-stack", stack_in("services.chat-service.port", 4000), f"{S}: services.chat-service.port",
     "catalog fact"),
    ("typo-in-service-override", stack_in("services.chat-service.memroy", "1Gi"), f"{S}: services.chat-service.memroy",
     "did you mean memory"),
    ("latest-tag", stack("image_tag", "latest"), f"{S}: image_tag", "mutable"),
    ("bad-digest", stack_in("services.billing-service.image", {"digest": "sha256:xyz"}),
     f"{S}: services.billing-service.image.digest", "64"),
    ("no-tag", drop("image_tag"), f"{C}: services.frontend.image", "neither tag nor digest"),
    ("tag-in-repository", catalog_in("services.frontend.image", {"repository": "ghcr.io/x/frontend:1.0"}),
     f"{C}: services.frontend.image.repository", "tag"),
    ("unknown-top-level", stack("domian", "x.example.com"), f"{S}: domian", "did you mean domain"),
    ("bad-domain", stack("domain", "Not A Domain"), f"{S}: domain", "not a valid domain name"),
    ("ssh-world", stack_in("host.admin_cidrs", ["0.0.0.0/0"]), f"{S}: host.admin_cidrs", "whole internet"),
    ("bad-cidr", stack_in("host.admin_cidrs", ["10.0.0.300/24"]), f"{S}: host.admin_cidrs", "not a CIDR"),
    ("host-bits-cidr", stack_in("host.admin_cidrs", ["203.0.113.5/24"]), f"{S}: host.admin_cidrs", "host bits"),
    ("host-kind", stack_in("host.kind", "k8s"), f"{S}: host.kind", "'ec2' or 'local'"),
    ("ec2-incomplete", drop_in("host.instance_type"), f"{S}: host", "instance_type"),
    ("bad-instance-type", stack_in("host.instance_type", "huge"), f"{S}: host.instance_type", "not an EC2 instance type"),
    ("nested-typo", stack_in("host.ami.nmae", "debian-*"), f"{S}: host.ami.nmae", "did you mean name"),
    ("root-volume", stack_in("host.root_volume", "30G"), f"{S}: host.root_volume", "Ki, Mi or Gi"),
    ("secret-unmapped", drop_in("secrets.stripe"), f"{S}: secrets.stripe",
     "services.billing-service.secrets.STRIPE_SECRET_KEY"),
    ("secret-unused", stack_in("secrets.unused", "prod/x"), f"{S}: secrets.unused", "not referenced"),
    ("derived-shared", stack_in("env.DATABASE_URL", "postgres://x"), f"{S}: env.DATABASE_URL", "derived"),
    ("derived-override", stack_in("services.auth-service.env", {"PORT": "9999"}), f"{S}: services.auth-service.env.PORT",
     "derived"),
    ("override-equals-shared", stack_in("services.auth-service.env", {"LOG_LEVEL": "info"}),
     f"{S}: services.auth-service.env.LOG_LEVEL", "repeats the shared value"),
    ("env-name", stack_in("services.auth-service.env", {"log-level": "debug"}), f"{S}: services.auth-service.env.log-level",
     "not an environment variable name"),
    ("duplicate-port", catalog_in("services.billing-service.port", 3003), f"{C}: services.chat-service.port",
     "already used by billing-service"),
    ("duplicate-route", catalog_in("services.analytics-service.routes", [{"prefix": "/api/chats"}]),
     f"{C}: services.chat-service.routes.0.prefix", "already routed to analytics-service"),
    ("route-kind", catalog_in("services.chat-service.routes", [{"prefix": "/api/chats", "kind": "websocket"}]),
     f"{C}: services.chat-service.routes.0.kind", "'http', 'sse' or 'webhook'"),
    ("route-prefix", catalog_in("services.chat-service.routes", [{"prefix": "api/chats"}]),
     f"{C}: services.chat-service.routes.0.prefix", "not a URL path prefix"),
    ("rate-zone", catalog_in("services.chat-service.routes", [{"prefix": "/api/chats", "rate_limit": "strict"}]),
     f"{C}: services.chat-service.routes.0.rate_limit", "no rate limit zone"),
    ("depends-unknown", catalog_in("services.frontend.depends_on", ["api-gatway"]), f"{C}: services.frontend.depends_on.0",
     "no such service"),
    ("depends-self", catalog_in("services.frontend.depends_on", ["frontend"]), f"{C}: services.frontend.depends_on.0",
     "itself"),
    ("depends-cycle", lambda cfg, cat: [cat["services"][a].update(depends_on=[b])
                                        for a, b in (("frontend", "api-gateway"), ("api-gateway", "frontend"))] and None,
     "services.", "dependency cycle: "),
    ("required-unsatisfied", catalog_in("services.email-worker.required_env", ["SMTP_URL", "DATABASE_URL"]),
     f"{C}: services.email-worker.required_env", "uses postgres"),
    ("worker-with-route", catalog_in("services.email-worker.routes", [{"prefix": "/api/email"}]),
     f"{C}: services.email-worker.routes", "worker"),
    ("web-without-route", catalog_in("services.analytics-service.routes", []), f"{C}: services.analytics-service.routes",
     "at least one route"),
    ("root-user", catalog_in("services.frontend.user", "0:0"), f"{C}: services.frontend.user", "runs as root"),
    ("privileged-port", catalog_in("services.frontend.port", 80), f"{C}: services.frontend.port", "1024"),
    ("tmpfs-relative", catalog_in("services.frontend.tmpfs", ["tmp"]), f"{C}: services.frontend.tmpfs", "absolute"),
    ("uses-unknown-store", catalog_in("services.frontend.uses", ["mongodb"]), f"{C}: services.frontend.uses.0",
     "'postgres', 'redis' or 'rabbitmq'"),
    ("secret-and-env", stack_in("services.billing-service.env", {"STRIPE_SECRET_KEY": "sk_live_x"}),
     f"{S}: services.billing-service.env.STRIPE_SECRET_KEY", "also a secret"),
    ("shared-buffers", stack_in("postgres.shared_buffers", "8Gi"), f"{S}: postgres.shared_buffers", "smaller than postgres.memory"),
    ("redis-maxmemory", stack_in("redis.maxmemory", "2Gi"), f"{S}: redis.maxmemory", "headroom"),
    ("redis-policy", stack_in("redis.maxmemory_policy", "lru"), f"{S}: redis.maxmemory_policy", "allkeys-lru"),
    ("generated-on-ec2", stack("secrets_backend", "generated"), f"{S}: secrets_backend", "local only"),
    ("healthcheck-retries", stack_in("services.chat-service.healthcheck.retries", 0),
     f"{S}: services.chat-service.healthcheck.retries", "greater than or equal to 1"),
    ("healthcheck-interval", stack_in("services.chat-service.healthcheck.interval", "ten"),
     f"{S}: services.chat-service.healthcheck.interval", "not a duration"),
    ("secure-outside-allowed", stack("domain", {"secure": "v1:abc"}), f"{S}: domain", "only host.ssh_private_key"),
    ("ssh-no-strict", stack_in("host.ssh_options", ["StrictHostKeyChecking=no"]), f"{S}: host.ssh_options",
     "host-key verification"),
    ("ssh-option-form", stack_in("host.ssh_options", ["-J bastion"]), f"{S}: host.ssh_options", "Key=value"),
    ("ssh-option-routing", stack_in("host.ssh_options", ["ProxyJump=bastion"]), f"{S}: host.ssh_options", "allowed:"),
    ("services-not-mapping", stack("services", ["chat-service"]), f"{S}: services", "mapping"),
    # The gateway answers these paths itself.
    ("release-empty", catalog_in("services.auth-service.release", {"command": []}),
     f"{C}: services.auth-service.release.command", "an empty command"),
    ("release-blank-word", catalog_in("services.auth-service.release", {"command": ["npx", " "]}),
     f"{C}: services.auth-service.release.command.1", "empty argument"),
    ("release-shell-string", catalog_in("services.auth-service.release", {"command": "npx prisma migrate deploy"}),
     f"{C}: services.auth-service.release.command", "list"),
    ("release-typo", catalog_in("services.auth-service.release", {"comand": ["npx"]}),
     f"{C}: services.auth-service.release.comand", "did you mean command"),
    ("release-without-store", catalog_in("services.frontend.release", {"command": ["npx", "prisma", "migrate"]}),
     f"{C}: services.frontend.release", "uses none"),
    ("release-null", catalog_in("services.auth-service.release", {"command": None}),
     f"{C}: services.auth-service.release.command", "list"),
    ("stop-grace-below-drain", stack_in("services.auth-service.stop_grace_seconds", 3),
     f"{S}: services.auth-service.stop_grace_seconds", "drain contract"),
    ("route-grafana", catalog_in("services.analytics-service.routes", [{"prefix": "/grafana"}]),
     f"{C}: services.analytics-service.routes.0.prefix", "collides with /grafana"),
    ("route-healthz", catalog_in("services.analytics-service.routes", [{"prefix": "/healthz/deep"}]),
     f"{C}: services.analytics-service.routes.0.prefix", "collides with /healthz"),
    ("route-well-known", catalog_in("services.frontend.routes", [{"prefix": "/"}, {"prefix": "/.well-known/x"}]),
     f"{C}: services.frontend.routes.1.prefix", "collides with /.well-known"),
    ("tls-mode", stack_in("tls.mode", "acme"), f"{S}: tls.mode", "'secretsmanager', 'selfsigned' or 'letsencrypt'"),
    ("tls-letsencrypt-no-email", stack("tls", {"mode": "letsencrypt"}), f"{S}: tls.email", "contact e-mail"),
    ("tls-letsencrypt-local", both(stack("host", {"kind": "local", "docker_host": "unix:///var/run/docker.sock"}),
                                   stack("tls", {"mode": "letsencrypt", "email": "ops@mysaaschat.app"})),
     f"{S}: tls.mode", "host.kind ec2"),
    ("tls-acme-staging-prod", stack("tls", {"mode": "letsencrypt", "email": "ops@mysaaschat.app", "acme_staging": True}),
     f"{S}: tls.acme_staging", "untrusted"),
    ("tls-acme-staging-elsewhere", stack_in("tls.acme_staging", True), f"{S}: tls.acme_staging",
     "letsencrypt only"),
    ("tls-bad-email", stack("tls", {"mode": "letsencrypt", "email": "ops at example"}), f"{S}: tls.email",
     "not an e-mail address"),
    ("tls-secret-missing", stack("tls", {"mode": "secretsmanager"}), f"{S}: tls.secret", "is required"),
    ("tls-secret-unmapped", drop_in("secrets.tls"), f"{S}: secrets.tls", "tls.secret"),
    ("tls-missing", drop("tls"), f"{S}: tls", "required"),
    ("gateway-body", stack_in("gateway.max_body", "10MB"), f"{S}: gateway.max_body", "Ki, Mi or Gi"),
    # Monitoring: an alert receiver needs its URL from Secrets Manager, and that secret must be mapped.
    ("receiver-without-secret", stack_in("monitoring.receivers", [{"name": "ops", "kind": "webhook"}]),
     f"{S}: monitoring.receivers.0.url", "is required"),
    ("receiver-secret-unmapped", stack_in("monitoring.receivers", [
        {"name": "ops", "kind": "webhook", "url": {"secret": "pager", "key": "url"}}]),
     f"{S}: secrets.pager", "monitoring.receivers.0.url"),
    ("receiver-slack-channel", stack_in("monitoring.receivers", [
        {"name": "ops", "kind": "slack", "url": {"secret": "monitoring", "key": "slack_url"}}]),
     f"{S}: monitoring.receivers.0.channel", "is required"),
    ("retention-duration", stack_in("monitoring.retention", "30 days"), f"{S}: monitoring.retention",
     "not a Prometheus duration"),
    ("monitoring-secret-unmapped", drop_in("secrets.monitoring"), f"{S}: secrets.monitoring",
     "monitoring.receivers.0.url"),
]


def load(tmp_path: Path, mutate: Mut) -> None:
    cfg, cat = copy.deepcopy(PROD["config"]), copy.deepcopy(CATALOG)
    mutate(cfg, cat)
    stack_file = tmp_path / "Pulumi.prod.yaml"
    stack_file.write_text(yaml.safe_dump({"config": cfg}))
    catalog = tmp_path / "catalog.yaml"
    catalog.write_text(yaml.safe_dump(cat))
    stack_input = read_stack_file(stack_file, "prod")
    # Name files as a user sees them, relative to the project.
    stack_input = type(stack_input)(stack_input.stack, stack_input.values, "Pulumi.prod.yaml", stack_input.secret_paths)
    load_environment(stack_input, catalog=catalog)


def test_there_are_at_least_30_distinct_cases() -> None:
    assert len({c[0] for c in CASES}) == len(CASES) >= 30


@pytest.mark.parametrize(("case", "mutate", "where", "why"), CASES, ids=[c[0] for c in CASES])
def test_invalid_config_names_file_and_key_path(tmp_path: Path, case: str, mutate: Mut, where: str, why: str) -> None:
    with pytest.raises(ConfigError) as raised:
        load(tmp_path, mutate)
    text = str(raised.value).replace("catalog.yaml", "config/catalog.yaml").replace("config/config/", "config/")
    lines = [line for line in text.splitlines() if where in line]
    assert lines, f"no problem names {where!r}:\n{text}"
    assert any(why in line for line in lines), f"{where} found but without {why!r}:\n{text}"


def test_all_problems_are_reported_at_once(tmp_path: Path) -> None:
    def many(cfg: dict[str, Any], cat: dict[str, Any]) -> None:
        stack_in("services.chat-service.memory", "2GB")(cfg, cat)
        stack_in("host.admin_cidrs", ["0.0.0.0/0"])(cfg, cat)
        stack("domian", "x")(cfg, cat)
    with pytest.raises(ConfigError) as raised:
        load(tmp_path, many)
    assert len(raised.value.problems) == 3, raised.value


def test_the_stacks_here_are_valid() -> None:
    for name in ("prod", "staging", "local"):
        env = load_environment(read_stack_file(ROOT / f"Pulumi.{name}.yaml"))
        assert env.stack == name
