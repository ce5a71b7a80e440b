"""A corpus of configuration mistakes a new user makes, and of valid values that must stay accepted.

Each invalid case must fail with exactly the file and key path the user has to edit, a message that
says why, and (unless noted) one line: one cause, one line. Each valid case must load. Cases are
grouped by class: a new field of an existing class belongs next to its kind.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from config import ConfigError, Environment, from_pulumi_runtime, load_environment, read_stack_file
from config.load import CATALOG_FILE, SHARED_FILE

ROOT = Path(__file__).resolve().parent.parent
BASES = {name: yaml.safe_load((ROOT / f"Pulumi.{name}.yaml").read_text())["config"] for name in ("prod", "local")}
CATALOG = yaml.safe_load(CATALOG_FILE.read_text())
SHARED = yaml.safe_load(SHARED_FILE.read_text())
P = "my-saas-chat:"
S, C, SH, L = "Pulumi.prod.yaml", "config/catalog.yaml", "config/shared.yaml", "Pulumi.local.yaml"

RSA = ("ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQCfZ0Y1fX3kQ0NmRVD25WS7cx4RQZW6ofyJAz6D3ZYuozb8I0ogSnA0NMl1klSveRJHllz1vs"
       "pe7gHn70GZTYDeZ7g/Zu0S4RhgunaZBrO2neEsFlDo9T/UCXZ3XgTVtL1lzwb1WyTHVfEcXqAT+vEbeP6gXxsEK+kxjbN+3xYhhsC0e6GkFg1BXxwgq"
       "HFzz7sEwh+/3huKmcb4VOA2NO5w4kbGfoZ+RASAmWnUrOd9BsNVaq00Mg2H3ZNbRfBW7UYIW3/lgc+wAy5z+NSUwpQCj/8pg/HNr2xCwM17rPusfv6p"
       "EJPW8cXn55+KYQIOpTatTgXm60rIWUoRW4WQcF+l rsa@x")
ECDSA = ("ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTYAAABBBDN8EjBqpm1LN/FkAc8WWMbUNWsowDFEVwPzS3KBoQ"
         "dVri7kzuA5fNkykQQXX72BeGJ1AUY5ojEdE0qJgXiJNms= ec@x")
DSA = "ssh-dss AAAAB3NzaC1kc3MAAACBAOpMJqffH+zMa3fGCcG47ZoPfydNxNjYCME7Hhy6oMyq+Xi1BFN3lvRcSkF8mpvqnhD2+eQAz1lFTrcxYvmGeC"
# The placeholder key these stack files carried before: 29 bytes where ed25519 has 32; EC2 refuses it.
TRUNCATED = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFh2b3F0cHJvZG9wZXJhdG9ya2V5MDAwMDAwMDAw ops@mysaaschat.app"


@dataclass
class Files:
    stack: dict[str, Any]
    catalog: dict[str, Any] = field(default_factory=lambda: copy.deepcopy(CATALOG))
    shared: dict[str, Any] = field(default_factory=lambda: copy.deepcopy(SHARED))
    # Text edits after dumping, for what a dict cannot hold (duplicate keys, anchors).
    edits: dict[str, Callable[[str], str]] = field(default_factory=dict)


Mut = Callable[[Files], None]


def _doc(files: Files, doc: str) -> dict[str, Any]:
    return {"stack": files.stack, "catalog": files.catalog, "shared": files.shared}[doc]


def _split(doc: str, path: str) -> list[str]:
    parts = path.split(".")
    if doc == "stack" and ":" not in parts[0]:
        parts[0] = P + parts[0]
    return parts


def put(doc: str, path: str, value: Any) -> Mut:
    """Set `path` in a file; stack paths are written without the `my-saas-chat:` namespace."""
    def apply(files: Files) -> None:
        *head, last = _split(doc, path)
        node = _doc(files, doc)
        for part in head:
            node = node.setdefault(part, {})
        node[last] = value
    return apply


def drop(doc: str, path: str) -> Mut:
    def apply(files: Files) -> None:
        *head, last = _split(doc, path)
        node = _doc(files, doc)
        for part in head:
            node = node[part]
        del node[last]
    return apply


def text(doc: str, edit: Callable[[str], str]) -> Mut:
    def apply(files: Files) -> None:
        files.edits[doc] = edit
    return apply


def bare(key: str, value: Any) -> Mut:
    """A stack key exactly as written, without adding the namespace."""
    def apply(files: Files) -> None:
        files.stack[key] = value
    return apply


def stack(path: str, value: Any) -> Mut:
    return put("stack", path, value)


def cat(path: str, value: Any) -> Mut:
    return put("catalog", path, value)


def shared(path: str, value: Any) -> Mut:
    return put("shared", path, value)


def both(*muts: Mut) -> Mut:
    def apply(files: Files) -> None:
        for mut in muts:
            mut(files)
    return apply


def local(*muts: Mut) -> Mut:
    """Start from the local stack instead of prod."""
    def apply(files: Files) -> None:
        files.stack.clear()
        files.stack.update(copy.deepcopy(BASES["local"]))
        for mut in muts:
            mut(files)
    apply.local = True  # type: ignore[attr-defined]
    return apply


def load(tmp_path: Path, mutate: Mut) -> Environment:
    files = Files(copy.deepcopy(BASES["prod"]))
    mutate(files)
    name = "local" if getattr(mutate, "local", False) else "prod"
    (tmp_path / "config").mkdir(exist_ok=True)
    paths = {"stack": tmp_path / f"Pulumi.{name}.yaml", "catalog": tmp_path / "config" / "catalog.yaml",
             "shared": tmp_path / "config" / "shared.yaml"}
    for doc, data in (("stack", {"config": files.stack}), ("catalog", files.catalog), ("shared", files.shared)):
        dumped = yaml.safe_dump(data, sort_keys=False, allow_unicode=True)
        paths[doc].write_text(files.edits.get(doc, lambda t: t)(dumped))
    try:
        stack_input = read_stack_file(paths["stack"], name)
        stack_input = type(stack_input)(stack_input.stack, stack_input.values, paths["stack"].name, stack_input.secret_paths)
        return load_environment(stack_input, catalog=paths["catalog"], shared=paths["shared"])
    except ConfigError as error:
        # Name files as a user sees them, relative to the project.
        raise ConfigError([type(p)(p.file.replace(f"{tmp_path}/", ""), p.path, p.message) for p in error.problems]) from None


# prod resolves its image from Debian's SSM parameter; cases about owners and name set those instead.
AMI_BY_NAME = stack("host.ami", {"owners": ["136693071363"], "name": "debian-12-amd64-20241004-1890"})

# (case, mutation, file, key path, part of the message, lines expected (None: at least that one))
Case = tuple[str, Mut, str, str, str] | tuple[str, Mut, str, str, str, int | None]
INVALID: list[Case] = [
    # Sizes: a value that rounds down (to 0: "no limit"), or falls outside what the consumer accepts.
    ("memory-Ki-rounds-to-zero", stack("services.chat-service.memory", "512Ki"), S, "services.chat-service.memory", "round down"),
    ("memory-zero", stack("services.chat-service.memory", "0Mi"), S, "services.chat-service.memory", "minimum of 6Mi"),
    ("memory-below-docker-minimum", stack("services.chat-service.memory", "5Mi"), S, "services.chat-service.memory", "6Mi"),
    ("memory-fraction-of-MiB", stack("services.chat-service.memory", "1536Ki"), S, "services.chat-service.memory",
     "whole number of MiB"),
    ("memory-decimal-unit", stack("services.chat-service.memory", "2G"), S, "services.chat-service.memory", "Ki, Mi or Gi"),
    ("memory-lowercase-unit", stack("services.chat-service.memory", "512mi"), S, "services.chat-service.memory", "Ki, Mi or Gi"),
    ("memory-bytes-number", stack("services.chat-service.memory", 536870912), S, "services.chat-service.memory", "not a size"),
    ("memory-decimal-fraction-of-byte", stack("services.chat-service.memory", "1.3Gi"), S, "services.chat-service.memory",
     "whole number of bytes"),
    ("memory-decimal-fraction-of-MiB", stack("services.chat-service.memory", "0.5Mi"), S, "services.chat-service.memory",
     "round down"),
    ("memory-negative", stack("services.chat-service.memory", "-1Gi"), S, "services.chat-service.memory", "not a size"),
    ("memory-null", stack("services.chat-service.memory", None), S, "services.chat-service.memory", "null"),
    ("memory-in-catalog", cat("services.frontend.memory", "3Ki"), C, "services.frontend.memory", "round down"),
    ("postgres-memory-zero", stack("postgres.memory", "0Gi"), S, "postgres.memory", "minimum"),
    ("shared-buffers-Ki", stack("postgres.shared_buffers", "512Ki"), S, "postgres.shared_buffers", "whole number of MiB"),
    ("effective-cache-zero", stack("postgres.effective_cache_size", "0Mi"), S, "postgres.effective_cache_size", "minimum"),
    ("redis-maxmemory-zero-is-unlimited", stack("redis.maxmemory", "0Mi"), S, "redis.maxmemory", "minimum"),
    ("redis-maxmemory-Ki", stack("redis.maxmemory", "100Ki"), S, "redis.maxmemory", "round down"),
    ("rabbitmq-memory-tiny", shared("rabbitmq.memory", "4Mi"), SH, "rabbitmq.memory", "6Mi"),
    ("root-volume-Mi", stack("host.root_volume", "500Mi"), S, "host.root_volume", "whole number of GiB"),
    ("data-volume-zero", stack("host.data_volume", "0Gi"), S, "host.data_volume", "minimum of 1Gi"),
    ("data-volume-above-gp3", stack("host.data_volume", "17Ti"), S, "host.data_volume", "16Ti"),
    ("data-volume-decimal", stack("host.data_volume", "200GB"), S, "host.data_volume", "Ki, Mi or Gi"),
    ("shared-buffers-above-memory", stack("postgres.shared_buffers", "8Gi"), S, "postgres.shared_buffers", "smaller"),
    # The edges: equal is refused too (Postgres needs memory beside its buffers, Redis beside its data).
    ("shared-buffers-equal-memory", stack("postgres.shared_buffers", "4Gi"), S, "postgres.shared_buffers", "smaller"),
    ("redis-maxmemory-equal-memory", stack("redis.maxmemory", "1Gi"), S, "redis.maxmemory", "headroom"),
    # Lowering the container below a shared setting blames the stack's change, not shared.yaml.
    ("memory-below-shared-maxmemory", both(stack("redis.memory", "256Mi"), drop("stack", "redis.maxmemory")),
     S, "redis.memory", "headroom"),

    # Durations, as Docker reads them (Go's time.ParseDuration, 1ms minimum, 0 = "default").
    ("interval-zero", stack("services.chat-service.healthcheck.interval", "0s"), S,
     "services.chat-service.healthcheck.interval", "zero"),
    ("interval-no-unit", stack("services.chat-service.healthcheck.interval", "10"), S,
     "services.chat-service.healthcheck.interval", "not a duration"),
    ("interval-incomplete-compound", stack("services.chat-service.healthcheck.interval", "1m30"), S,
     "services.chat-service.healthcheck.interval", "not a duration"),
    ("interval-days", stack("services.chat-service.healthcheck.interval", "1d"), S,
     "services.chat-service.healthcheck.interval", "not a duration"),
    ("interval-space", stack("services.chat-service.healthcheck.interval", "10 s"), S,
     "services.chat-service.healthcheck.interval", "not a duration"),
    ("interval-number", stack("services.chat-service.healthcheck.interval", 10), S,
     "services.chat-service.healthcheck.interval", "as a string"),
    ("timeout-below-1ms", stack("services.chat-service.healthcheck.timeout", "500us"), S,
     "services.chat-service.healthcheck.timeout", "1ms"),
    ("timeout-bare-zero", stack("services.chat-service.healthcheck.timeout", "0"), S,
     "services.chat-service.healthcheck.timeout", "zero"),
    ("start-period-negative", stack("services.chat-service.healthcheck.start_period", "-5s"), S,
     "services.chat-service.healthcheck.start_period", "not a duration"),
    ("duration-overflow", stack("services.chat-service.healthcheck.start_period", "3000000h"), S,
     "services.chat-service.healthcheck.start_period", "292 years"),
    # One bad default is one line in shared.yaml, not one per service.
    ("shared-default-interval", shared("defaults.healthcheck.interval", "ten"), SH, "defaults.healthcheck.interval",
     "not a duration"),

    # Availability zone and region.
    ("zone-in-another-region", stack("host.availability_zone", "us-east-1a"), S, "host.availability_zone",
     "not a zone of the stack's region eu-west-1"),
    ("zone-of-a-longer-region", stack("host.availability_zone", "eu-west-10a"), S, "host.availability_zone", "eu-west-1"),
    ("zone-id-not-name", stack("host.availability_zone", "euw1-az1"), S, "host.availability_zone", "zone ID"),
    ("zone-is-a-region", stack("host.availability_zone", "eu-west-1"), S, "host.availability_zone", "availability zone name"),
    ("region-missing", drop("stack", "aws:region"), S, "aws:region", "required for host.kind ec2"),
    ("region-malformed", stack("aws:region", "eu-west"), S, "aws:region", "not an AWS region"),
    ("region-is-a-zone", stack("aws:region", "eu-west-1a"), S, "aws:region", "not an AWS region"),

    # S3 bucket names S3 refuses.
    ("bucket-uppercase", stack("host.backup_bucket", "MySaaSChat-Backups"), S, "host.backup_bucket", "lowercase"),
    ("bucket-underscore", stack("host.backup_bucket", "my_backups"), S, "host.backup_bucket", "lowercase letters, digits"),
    ("bucket-too-short", stack("host.backup_bucket", "ab"), S, "host.backup_bucket", "3 to 63"),
    ("bucket-too-long", stack("host.backup_bucket", "b" * 64), S, "host.backup_bucket", "3 to 63"),
    ("bucket-ip-form", stack("host.backup_bucket", "192.168.5.4"), S, "host.backup_bucket", "IP address"),
    ("bucket-xn-prefix", stack("host.backup_bucket", "xn--backups"), S, "host.backup_bucket", "xn--"),
    ("bucket-sthree-prefix", stack("host.backup_bucket", "sthree-backups"), S, "host.backup_bucket", "sthree-"),
    ("bucket-s3alias-suffix", stack("host.backup_bucket", "backups-s3alias"), S, "host.backup_bucket", "-s3alias"),
    ("bucket-ol-s3-suffix", stack("host.backup_bucket", "backups--ol-s3"), S, "host.backup_bucket", "--ol-s3"),
    ("bucket-adjacent-dots", stack("host.backup_bucket", "my..backups"), S, "host.backup_bucket", "adjacent dots"),
    ("bucket-leading-hyphen", stack("host.backup_bucket", "-backups"), S, "host.backup_bucket", "beginning and ending"),
    ("bucket-arn", stack("host.backup_bucket", "arn:aws:s3:::mysaaschat-backups"), S, "host.backup_bucket", "ARN"),

    # Admin CIDRs: what a security group's cidr_blocks takes.
    ("cidr-ipv6", stack("host.admin_cidrs", ["2001:db8::/32"]), S, "host.admin_cidrs.0", "IPv4 CIDRs only"),
    ("cidr-ipv6-world", stack("host.admin_cidrs", ["::/0"]), S, "host.admin_cidrs.0", "IPv6"),
    ("cidr-bare-address", stack("host.admin_cidrs", ["203.0.113.5"]), S, "host.admin_cidrs.0", "203.0.113.5/32"),
    ("cidr-host-bits", stack("host.admin_cidrs", ["203.0.113.5/24"]), S, "host.admin_cidrs.0", "203.0.113.0/24"),
    ("cidr-world", stack("host.admin_cidrs", ["0.0.0.0/0"]), S, "host.admin_cidrs.0", "whole internet"),
    ("cidr-half-world", stack("host.admin_cidrs", ["0.0.0.0/1", "128.0.0.0/1"]), S, "host.admin_cidrs.1", "addresses", 2),
    ("cidr-slash-7", stack("host.admin_cidrs", ["10.0.0.0/7"]), S, "host.admin_cidrs.0", "33,554,432 addresses"),
    ("cidr-netmask-notation", stack("host.admin_cidrs", ["10.0.0.0/255.0.0.0"]), S, "host.admin_cidrs.0", "10.0.0.0/8"),
    ("cidr-second-item", stack("host.admin_cidrs", ["203.0.113.0/28", "bogus"]), S, "host.admin_cidrs.1", "not a CIDR"),
    ("cidr-duplicate", stack("host.admin_cidrs", ["203.0.113.0/28", "203.0.113.0/28"]), S, "host.admin_cidrs.1",
     "already listed"),
    ("cidr-not-a-list", stack("host.admin_cidrs", "203.0.113.0/28"), S, "host.admin_cidrs", "[item]"),
    ("cidr-empty-ec2", stack("host.admin_cidrs", []), S, "host.admin_cidrs", "required for host.kind ec2"),

    # Duplicate keys: YAML keeps the last one silently.
    ("duplicate-stack-key", text("stack", lambda t: t + "  my-saas-chat:domain: other.example\n"), S, "domain",
     "duplicate key"),
    ("duplicate-provider-key", text("stack", lambda t: t + "  aws:region: us-east-1\n"), S, "aws:region", "duplicate key"),
    ("duplicate-nested-key", text("stack", lambda t: t.replace("    kind: ec2\n", "    kind: ec2\n    kind: local\n")),
     S, "host.kind", "line"),
    ("duplicate-service", text("catalog", lambda t: t.replace("services:\n", "services:\n  frontend: {}\n", 1)),
     C, "services.frontend", "duplicate key"),
    ("duplicate-shared-env", text("shared", lambda t: t.replace("  LOG_LEVEL: info\n", "  LOG_LEVEL: info\n  LOG_LEVEL: warn\n")),
     SH, "env.LOG_LEVEL", "duplicate key"),

    ("duplicate-in-list-item", text("catalog", lambda t: t.replace("    - prefix: /api/chats\n", "    - prefix: /api/chats\n"
                                                                  "      prefix: /api/chat\n", 1)),
     C, "services.chat-service.routes.0.prefix", "duplicate key"),
    ("yaml-two-documents", text("stack", lambda t: t + "---\nconfig: {}\n"), S, "", "cannot be read"),
    ("yaml-syntax", text("stack", lambda t: t + "  my-saas-chat:env: {LOG_LEVEL: debug\n"), S, "", "line"),
    ("yaml-not-a-mapping", text("shared", lambda t: "- env\n- gateway\n"), SH, "", "must be a mapping"),

    # Stack keys outside the my-saas-chat: namespace, which the program would never see.
    ("no-namespace", bare("domain", "x.example.com"), S, "domain", "did you mean my-saas-chat:domain"),
    ("misspelt-namespace", stack("mysaaschat:image_tag", "2026.11.24-x"), S, "mysaaschat:image_tag",
     "did you mean my-saas-chat:image_tag"),
    ("stack-named-namespace", stack("my-saas-chat-prod:secrets_backend", "generated"), S,
     "my-saas-chat-prod:secrets_backend", "my-saas-chat:secrets_backend"),
    ("namespace-case", stack("My-Saas-Chat:domain", "x.example.com"), S, "My-Saas-Chat:domain", "my-saas-chat:domain"),
    ("aws-typo", stack("aws:regoin", "eu-west-1"), S, "aws:regoin", "did you mean aws:region"),
    ("project-key-under-aws", stack("aws:domain", "x.example.com"), S, "aws:domain", "did you mean my-saas-chat:domain"),
    ("docker-provider-key", stack("docker:host", "ssh://admin@host"), S, "docker:host", "ignored"),
    ("stack-name-as-setting", stack("stack", "production"), S, "stack", "stack's name"),
    ("typo-in-shared-default", shared("defaults.usr", "1001:1001"), SH, "defaults.usr", "did you mean user"),
    ("typo-in-healthcheck-override", stack("services.chat-service.healthcheck.intervl", "5s"), S,
     "services.chat-service.healthcheck.intervl", "did you mean interval"),
    ("dotted-flat-key", bare(P + "host.instance_type", "t3.large"), S, "host.instance_type", "nest it under my-saas-chat:host"),
    ("namespace-without-name", bare(P, "x"), S, P, "no key name"),

    # The file that supplied the value, never "(merged config)".
    ("catalog-service-without-kind", drop("catalog", "services.frontend.kind"), C, "services.frontend.kind", "required"),
    ("stack-without-domain", drop("stack", "domain"), S, "domain", "is required"),
    ("shared-default-user-root", shared("defaults.user", "0:0"), SH, "defaults.user", "root"),
    ("catalog-without-services", drop("catalog", "services"), C, "services", "is required"),
    ("shared-without-gateway", drop("shared", "gateway"), SH, "gateway", "is required"),
    ("shared-without-redis", drop("shared", "redis"), SH, "redis", "is required"),
    ("stack-without-host", drop("stack", "host"), S, "host", "is required"),
    ("shared-store-without-image", drop("shared", "postgres.image"), SH, "postgres.image", "is required"),
    ("bad-image-tag-once", stack("image_tag", "v1 .0"), S, "image_tag", "not a valid image tag"),
    ("stack-without-secrets", drop("stack", "secrets"), S, "secrets.app", "no Secrets Manager id", None),
    ("stack-override-unknown-key", stack("services.chat-service.replicas", 2), S, "services.chat-service.replicas",
     "unknown key"),
    ("stack-override-typo", stack("services.chat-service.memroy", "1Gi"), S, "services.chat-service.memroy",
     "did you mean memory"),
    ("catalog-unknown-key", cat("services.frontend.memroy", "1Gi"), C, "services.frontend.memroy", "did you mean memory"),

    # null where a mapping, list or value is expected.
    ("stack-services-null", stack("services", None), S, "services", "null"),
    ("stack-env-null", stack("env", None), S, "env", "null"),
    ("stack-host-null", stack("host", None), S, "host", "null"),
    ("stack-postgres-null", stack("postgres", None), S, "postgres", "null"),
    ("stack-secrets-null", stack("secrets", None), S, "secrets", "null"),
    ("stack-service-null", stack("services.chat-service", None), S, "services.chat-service", "null"),
    ("stack-service-env-null", stack("services.chat-service.env", None), S, "services.chat-service.env", "null"),
    ("stack-healthcheck-null", stack("services.chat-service.healthcheck", None), S, "services.chat-service.healthcheck", "null"),
    ("stack-env-value-null", stack("env.LOG_LEVEL", None), S, "env.LOG_LEVEL", "null"),
    ("stack-cidrs-null", stack("host.admin_cidrs", None), S, "host.admin_cidrs", "null"),
    ("stack-config-null", text("stack", lambda t: "config:\n"), S, "config", "null"),
    ("catalog-services-null", cat("services", None), C, "services", "null"),
    ("catalog-service-null", cat("services.frontend", None), C, "services.frontend", "null"),
    ("catalog-routes-null", cat("services.frontend.routes", None), C, "services.frontend.routes", "null"),
    ("shared-defaults-null", shared("defaults", None), SH, "defaults", "null"),
    ("shared-rate-limits-null", shared("gateway.rate_limits", None), SH, "gateway.rate_limits", "null"),

    # YAML's unquoted numbers and booleans where a string is expected, and the reverse.
    ("env-value-number", stack("env.RATE_LIMIT_MAX", 1000), S, "env.RATE_LIMIT_MAX", "quote it as written"),
    ("env-value-yes", stack("env.FEATURE_X", True), S, "env.FEATURE_X", "boolean"),
    ("image-tag-number", stack("image_tag", 20261124), S, "image_tag", "quote it as written"),
    ("ami-owner-number", both(AMI_BY_NAME, stack("host.ami.owners", [136693071363])), S, "host.ami.owners.0",
     "quote it as written"),
    ("user-sexagesimal", cat("services.frontend.user", 61061), C, "services.frontend.user", "quote it as written"),
    ("cpu-boolean", stack("services.chat-service.cpu", True), S, "services.chat-service.cpu", "boolean"),
    ("cpu-millicores", stack("services.chat-service.cpu", "500m"), S, "services.chat-service.cpu", "millicores"),
    ("cpu-infinite", stack("services.chat-service.cpu", float("inf")), S, "services.chat-service.cpu", "less than or equal"),
    ("cpu-below-docker", stack("services.chat-service.cpu", 0.001), S, "services.chat-service.cpu", "0.01"),
    # The Docker provider reads cpus back through nanoInt64ToDecimalString, which mangles these:
    # 10 -> "10.", 0.05 -> "0.1", 0.01 -> "0.0" (a replacement on every up).
    ("cpu-ten-reads-back-mangled", stack("services.chat-service.cpu", 10), S, "services.chat-service.cpu", "read back"),
    ("cpu-hundredths-read-back-mangled", stack("services.chat-service.cpu", 0.05), S, "services.chat-service.cpu",
     "read back"),
    ("cpu-docker-minimum-reads-back-as-zero", stack("services.chat-service.cpu", 0.01), S, "services.chat-service.cpu",
     "read back"),
    ("retries-boolean", stack("services.chat-service.healthcheck.retries", True), S,
     "services.chat-service.healthcheck.retries", "boolean"),
    ("seconds-with-unit", stack("services.chat-service.stop_grace_seconds", "30s"), S,
     "services.chat-service.stop_grace_seconds", "write 30, not 30s"),
    ("port-fraction", cat("services.frontend.port", 3000.5), C, "services.frontend.port", "whole number"),
    ("uses-not-a-list", cat("services.frontend.uses", "postgres"), C, "services.frontend.uses", "[item]"),
    ("host-kind-case", stack("host.kind", "EC2"), S, "host.kind", "'ec2' or 'local'"),
    ("port-text", cat("services.frontend.port", "http"), C, "services.frontend.port", "not a number"),
    ("port-above-65535", cat("services.frontend.port", 70000), C, "services.frontend.port", "65535"),

    # Redis accepts exactly its eight policies.
    ("redis-policy-underscore", stack("redis.maxmemory_policy", "allkeys_lru"), S, "redis.maxmemory_policy", "volatile-ttl"),
    ("redis-policy-short", stack("redis.maxmemory_policy", "lru"), S, "redis.maxmemory_policy", "allkeys-random"),

    # Image references, per Docker's reference grammar.
    ("repository-uppercase", cat("services.frontend.image.repository", "ghcr.io/my-saas-chat/Frontend"), C,
     "services.frontend.image.repository", "lowercase"),
    ("repository-scheme", cat("services.frontend.image.repository", "https://ghcr.io/x/frontend"), C,
     "services.frontend.image.repository", "no scheme"),
    ("repository-with-digest", cat("services.frontend.image.repository", "ghcr.io/x/frontend@sha256:" + "a" * 64), C,
     "services.frontend.image.repository", "`digest`"),
    ("repository-empty-component", cat("services.frontend.image.repository", "ghcr.io//frontend"), C,
     "services.frontend.image.repository", "not a Docker image repository"),
    ("tag-leading-hyphen", stack("services.chat-service.image", {"tag": "-rc1"}), S, "services.chat-service.image.tag",
     "not a valid image tag"),
    ("tag-too-long", stack("services.chat-service.image", {"tag": "v" * 129}), S, "services.chat-service.image.tag",
     "128"),
    ("tag-mutable", stack("services.chat-service.image", {"tag": "stable"}), S, "services.chat-service.image.tag", "mutable"),
    ("tag-latest-any-case", stack("services.chat-service.image", {"tag": "Latest"}), S, "services.chat-service.image.tag",
     "mutable"),
    ("digest-short", stack("services.chat-service.image", {"digest": "sha256:" + "a" * 63}), S,
     "services.chat-service.image.digest", "64"),
    ("digest-uppercase", stack("services.chat-service.image", {"digest": "sha256:" + "A" * 64}), S,
     "services.chat-service.image.digest", "lowercase"),

    # The public domain.
    ("domain-url", stack("domain", "https://mysaaschat.app"), S, "domain", "host name only"),
    ("domain-port", stack("domain", "mysaaschat.app:443"), S, "domain", "host name only"),
    ("domain-trailing-dot", stack("domain", "mysaaschat.app."), S, "domain", "ends with a dot"),
    ("domain-underscore", stack("domain", "my_chat.mysaaschat.app"), S, "domain", "not a valid domain name"),
    ("domain-leading-hyphen", stack("domain", "-chat.mysaaschat.app"), S, "domain", "hyphen"),
    ("domain-long-label", stack("domain", "a" * 64 + ".app"), S, "domain", "not a valid domain name"),
    ("domain-too-long", stack("domain", ".".join(["a" * 60] * 5) + ".app"), S, "domain", "253"),
    ("domain-ip", stack("domain", "203.0.113.5"), S, "domain", "IP address"),
    ("domain-single-label", stack("domain", "mysaaschat"), S, "domain", "single label"),
    ("domain-bad-a-label", stack("domain", "xn--zz.app"), S, "domain", "not a valid domain name"),

    # Environment variable names (POSIX), each named at its own key.
    ("env-name-digit", stack("env.1ST_VAR", "x"), S, "env.1ST_VAR", "not an environment variable name"),
    ("env-name-shared", shared("env.LOG-LEVEL", "info"), SH, "env.LOG-LEVEL", "not an environment variable name"),
    ("required-env-space", cat("services.frontend.required_env", ["NODE_ENV", "NODE ENV"]), C,
     "services.frontend.required_env.1", "not an environment variable name"),
    ("secret-var-name", cat("services.frontend.secrets.sentry-dsn", {"secret": "sentry", "key": "dsn"}), C,
     "services.frontend.secrets.sentry-dsn", "not an environment variable name"),

    # The EC2 host.
    ("instance-type-case", stack("host.instance_type", "M6i.xlarge"), S, "host.instance_type", "not an EC2 instance type"),
    ("instance-type-size", stack("host.instance_type", "m6i.huge"), S, "host.instance_type", "not an EC2 instance type"),
    ("instance-type-space", stack("host.instance_type", "m6i.xlarge "), S, "host.instance_type", "not an EC2 instance type"),
    ("cpu-above-vcpus", both(stack("host.instance_type", "t3.large"), stack("services.chat-service.cpu", 4)), S,
     "services.chat-service.cpu", "vCPUs"),
    ("cpu-just-above-vcpus", both(stack("host.instance_type", "t3.large"), stack("services.chat-service.cpu", 2.5)), S,
     "services.chat-service.cpu", "2.5 CPUs is more than the 2 vCPUs"),
    ("arm-ami-on-intel", stack("host.ami.architecture", "arm64"), S, "host.ami.architecture", "match the AMI"),
    ("intel-ami-on-graviton", stack("host.instance_type", "m7g.xlarge"), S, "host.ami.architecture", "match the AMI"),
    ("ami-owner-name", both(AMI_BY_NAME, stack("host.ami.owners", ["debian"])), S, "host.ami.owners.0", "12-digit"),
    ("registry-secret-without-id", drop("stack", "my-saas-chat:secrets.registry"), S, "secrets.registry",
     "referenced by registries.0.secret"),
    ("registry-address-with-scheme", stack("registries", [{"address": "https://ghcr.io", "secret": "registry"}]), S,
     "registries.0.address", "registry host"),
    ("ami-ssm-and-name", stack("host.ami.name", "debian-12-amd64-*"), S, "host.ami", "not both"),
    ("ami-owners-empty", both(AMI_BY_NAME, stack("host.ami.owners", [])), S, "host.ami.owners", "at least 1"),
    ("ec2-without-ami", drop("stack", "host.ami"), S, "host.ami", "required for host.kind ec2"),
    ("ssh-user-root", stack("host.ssh_user", "root"), S, "host.ssh_user", "disable_root"),
    ("ssh-user-uppercase", stack("host.ssh_user", "Admin"), S, "host.ssh_user", "not a Linux user name"),
    ("ssh-key-truncated", stack("host.ssh_public_key", TRUNCATED), S, "host.ssh_public_key", "truncated"),
    ("ssh-key-ecdsa", stack("host.ssh_public_key", ECDSA), S, "host.ssh_public_key", "does not import 'ecdsa-sha2-nistp256'"),
    ("ssh-key-dsa", stack("host.ssh_public_key", DSA), S, "host.ssh_public_key", "does not import 'ssh-dss'"),
    ("ssh-key-private", stack("host.ssh_public_key", "-----BEGIN OPENSSH PRIVATE KEY----- b3Blbn"), S,
     "host.ssh_public_key", "is a private key"),
    ("ssh-key-type-mismatch", stack("host.ssh_public_key", "ssh-rsa " + BASES["prod"][P + "host"]["ssh_public_key"].split()[1]),
     S, "host.ssh_public_key", "not a ssh-rsa key"),
    ("ssh-key-base64", stack("host.ssh_public_key", "ssh-ed25519 not*base64"), S, "host.ssh_public_key", "base64"),
    ("secure-domain-once", stack("domain", {"secure": "v1:abc"}), S, "domain", "only host.ssh_private_key"),
    ("secure-cidr-once", stack("host.admin_cidrs", [{"secure": "v1:abc"}]), S, "host.admin_cidrs.0", "only host.ssh_private_key"),
    ("private-key-plain", stack("host.ssh_private_key", "-----BEGIN OPENSSH PRIVATE KEY-----\nx\n"), S,
     "host.ssh_private_key", "--secret"),
    ("ssh-option-preset", stack("host.ssh_options", ["ServerAliveInterval=30"]), S, "host.ssh_options.0",
     "ssh keeps the first value"),
    ("ssh-option-value", stack("host.ssh_options", ["ControlMaster=always"]), S, "host.ssh_options.0", "autoask"),
    ("ssh-option-persist-time", stack("host.ssh_options", ["ControlPersist=1 minute"]), S, "host.ssh_options.0", "a time"),
    ("ssh-option-empty", stack("host.ssh_options", ["IdentityFile="]), S, "host.ssh_options.0", "expects a value"),
    ("ssh-option-twice", stack("host.ssh_options", ["ControlMaster=auto", "ControlMaster=no"]), S, "host.ssh_options",
     "twice"),
    ("docker-host-on-ec2", stack("host.docker_host", "unix:///var/run/docker.sock"), S, "host.docker_host", "local only"),

    # The local host.
    ("local-with-instance-type", local(stack("host.instance_type", "t3.large")), L, "host.instance_type", "ec2 only"),
    ("local-with-bucket", local(stack("host.backup_bucket", "mysaaschat-backups")), L, "host.backup_bucket", "ec2 only"),
    ("local-docker-host-path", local(stack("host.docker_host", "/var/run/docker.sock")), L, "host.docker_host",
     "not a Docker endpoint"),

    # Service shape.
    ("tmpfs-root", cat("services.frontend.tmpfs", ["/"]), C, "services.frontend.tmpfs.0", "mount point"),
    ("tmpfs-trailing-slash", cat("services.frontend.tmpfs", ["/tmp/"]), C, "services.frontend.tmpfs.0", "trailing slash"),
    ("tmpfs-proc", cat("services.frontend.tmpfs", ["/proc/x"]), C, "services.frontend.tmpfs.0", "/proc"),
    ("tmpfs-sys", cat("services.frontend.tmpfs", ["/tmp", "/sys/fs/x"]), C, "services.frontend.tmpfs.1", "/sys"),
    ("tmpfs-colon", cat("services.frontend.tmpfs", ["/tmp:size=1g"]), C, "services.frontend.tmpfs.0", "':'"),
    ("health-path-space", cat("services.frontend.health_path", "/health check"), C, "services.frontend.health_path",
     "not an HTTP path"),
    ("health-path-relative", cat("services.frontend.health_path", "health"), C, "services.frontend.health_path",
     "start with /"),
    ("user-without-gid", cat("services.frontend.user", "1001"), C, "services.frontend.user", "uid:gid"),
    ("user-out-of-range", cat("services.frontend.user", "99999999999:1"), C, "services.frontend.user", "range"),
    ("service-named-like-store", cat("services.redis", copy.deepcopy(CATALOG["services"]["email-worker"])
                                     | {"port": 3999}), C, "services", "data store"),
    ("service-name-form", cat("services.Chat_Service", copy.deepcopy(CATALOG["services"]["email-worker"]) | {"port": 3999}),
     C, "services.Chat_Service", "lowercase letters, digits and -"),
    ("route-dot-segment", cat("services.chat-service.routes", [{"prefix": "/api/../chats", "kind": "sse"}]), C,
     "services.chat-service.routes.0.prefix", "nginx"),
    ("route-double-slash", cat("services.chat-service.routes", [{"prefix": "/api//chats", "kind": "sse"}]), C,
     "services.chat-service.routes.0.prefix", "nginx"),
    ("rate-zone-name", shared("gateway.rate_limits.Strict Zone", {"per_second": 1, "burst": 1}), SH,
     "gateway.rate_limits.Strict Zone", "required form"),

    # Stores.
    ("postgres-template-db", stack("postgres.database", "template1"), S, "postgres.database", "template"),
    ("postgres-reserved-role", stack("postgres.user", "pg_app"), S, "postgres.user", "pg_"),
    ("postgres-long-identifier", stack("postgres.database", "d" * 64), S, "postgres.database", "required form"),
    ("rabbitmq-guest", stack("rabbitmq.user", "guest"), S, "rabbitmq.user", "loopback"),
    ("rabbitmq-vhost-space", stack("rabbitmq.vhost", "my vhost"), S, "rabbitmq.vhost", "required form"),

    # Secrets Manager names.
    ("secret-arn", stack("secrets.app", "arn:aws:secretsmanager:eu-west-1:123456789012:secret:prod/app"), S,
     "secrets.app", "ARN"),
    ("secret-name-space", stack("secrets.app", "prod/my app"), S, "secrets.app", "Secrets Manager secret name"),

    # Managed secrets and the backup bucket.
    ("generated-unreferenced", stack("generated_secrets", ["nosuch"]), S, "generated_secrets.0", "not referenced"),
    ("generated-registry", stack("generated_secrets", ["registry"]), S, "generated_secrets.0", "cannot be generated"),
    ("managed-unknown-key", cat("services.auth-service.secrets.JWT_SECRET", {"secret": "stores", "key": "x"}), C,
     "services.auth-service.secrets.JWT_SECRET", "there is no 'x'"),
    ("generated-always", both(cat("services.auth-service.secrets.JWT_SECRET", {"secret": "stores", "key": "redis_password"}),
                              stack("generated_secrets", ["stores"])), S, "generated_secrets.0", "always generated"),
    ("backup-lock-over-retention", stack("backup_storage", {"retention_days": 7, "lock_days": 30}), S,
     "backup_storage", "exceeds retention_days"),
    ("backup-replica-same-region", stack("backup_storage", {"replica_region": "eu-west-1"}), S,
     "backup_storage.replica_region", "stack's own region"),
    ("backup-storage-on-local", local(stack("backup_storage", {"retention_days": 7, "lock_days": 7})), L,
     "backup_storage", "host.backup_bucket"),
]

VALID: list[tuple[str, Mut, Callable[[Environment], object] | None]] = [
    ("idn-domain", stack("domain", "bücher-chat.example"), lambda e: e.domain == "xn--bcher-chat-9db.example"),
    ("idn-domain-german-sharp-s", stack("domain", "straße.example"), lambda e: e.domain == "xn--strae-oqa.example"),
    ("a-label-domain", stack("domain", "xn--bcher-kva.example"), lambda e: e.domain == "xn--bcher-kva.example"),
    ("uppercase-domain", stack("domain", "MySaaSChat.App"), lambda e: e.domain == "mysaaschat.app"),
    ("localhost-domain", local(stack("domain", "localhost")), lambda e: e.domain == "localhost"),
    *[(f"redis-policy-{p}", stack("redis.maxmemory_policy", p), lambda e, p=p: e.redis.maxmemory_policy == p)
      for p in ("noeviction", "allkeys-lru", "allkeys-lfu", "allkeys-random", "volatile-lru", "volatile-lfu",
                "volatile-random", "volatile-ttl")],
    *[(f"interval-{d}", stack("services.chat-service.healthcheck.interval", d),
       lambda e, d=d: e.services["chat-service"].healthcheck.interval == d)
      for d in ("1m30s", "500ms", "1.5s", "1m30s500ms", "1ms", ".5s", "90s", "2m", "1h")],
    *[(f"start-period-{d}", stack("services.chat-service.healthcheck.start_period", d),
       lambda e, d=d: e.services["chat-service"].healthcheck.start_period == d)
      for d in ("1h", "2h45m", "1h0m0s", "300000us", "10µs1ms")],
    ("start-period-zero", stack("services.chat-service.healthcheck.start_period", "0s"), None),
    ("start-period-bare-zero", stack("services.chat-service.healthcheck.start_period", "0"), None),
    ("memory-docker-minimum", stack("services.chat-service.memory", "6Mi"), lambda e: e.services["chat-service"].memory == 6 << 20),
    ("memory-whole-MiB-in-Ki", stack("services.chat-service.memory", "1048576Ki"), None),
    ("memory-odd-MiB", stack("services.chat-service.memory", "1536Mi"), None),
    ("data-volume-gp3-maximum", stack("host.data_volume", "16384Gi"), None),
    ("memory-decimal-Gi", stack("services.chat-service.memory", "1.5Gi"),
     lambda e: e.services["chat-service"].memory == 1536 << 20),
    ("sovereign-cloud-region", both(stack("aws:region", "eusc-de-east-1"), stack("host.availability_zone", "eusc-de-east-1a")),
     None),
    ("govcloud-region", both(stack("aws:region", "us-gov-west-1"), stack("host.availability_zone", "us-gov-west-1a")), None),
    ("ecr-repository", cat("services.frontend.image.repository", "123456789012.dkr.ecr.eu-west-1.amazonaws.com/frontend"),
     None),
    ("idn-top-level-domain", stack("domain", "чат.пример.рф"), lambda e: e.domain.startswith("xn--")),
    ("data-volume-Ti", stack("host.data_volume", "2Ti"), lambda e: e.host.data_volume == 2 << 40),
    ("root-volume-small", stack("host.root_volume", "8Gi"), None),
    ("instance-hyphen-family", both(stack("host.instance_type", "u-6tb1.56xlarge")), None),
    ("instance-flex", stack("host.instance_type", "c7i-flex.large"), None),
    ("instance-metal-size", stack("host.instance_type", "m7i.metal-24xl"), None),
    ("instance-graviton-arm", both(stack("host.instance_type", "t4g.large"), stack("host.ami.architecture", "arm64")), None),
    ("cpu-equal-vcpus", both(stack("host.instance_type", "t3.large"), stack("services.chat-service.cpu", 2)), None),
    ("cpu-smallest-that-reads-back", stack("services.chat-service.cpu", 0.1), None),
    ("cpu-two-decimals", stack("services.chat-service.cpu", 0.25), None),
    ("cpu-as-cli-string", stack("services.chat-service.cpu", "1.5"), lambda e: e.services["chat-service"].cpu == 1.5),
    ("max-connections-as-cli-string", stack("postgres.max_connections", "200"), lambda e: e.postgres.max_connections == 200),
    ("zone-c", stack("host.availability_zone", "eu-west-1c"), None),
    ("local-zone", both(stack("aws:region", "us-west-2"), stack("host.availability_zone", "us-west-2-lax-1a")), None),
    ("other-region", both(stack("aws:region", "ap-southeast-2"), stack("host.availability_zone", "ap-southeast-2b")), None),
    ("bucket-with-dots", stack("host.backup_bucket", "backups.mysaaschat.app"), None),
    ("bucket-3-chars", stack("host.backup_bucket", "abc"), None),
    ("bucket-63-chars", stack("host.backup_bucket", "b" * 63), None),
    ("cidr-single-address", stack("host.admin_cidrs", ["198.51.100.7/32"]), None),
    ("cidr-several", stack("host.admin_cidrs", ["10.0.0.0/8", "192.0.2.0/24", "198.51.100.7/32"]), None),
    ("env-name-lowercase", stack("env.http_proxy", "http://proxy:3128"), None),
    ("env-name-underscore", stack("env._INTERNAL", "1"), None),
    ("service-env-lowercase", stack("services.chat-service.env", {"no_proxy": "localhost"}), None),
    ("env-value-empty", stack("env.FEATURE_FLAGS", ""), None),
    ("repository-registry-port", cat("services.frontend.image.repository", "localhost:5000/team/frontend"), None),
    ("repository-docker-hub-short", cat("services.frontend.image.repository", "frontend"), None),
    ("repository-separators", cat("services.frontend.image.repository", "registry.example.com:5000/a/b__c.d-e"), None),
    ("digest-sha512", stack("services.chat-service.image", {"digest": "sha512:" + "0" * 128}), None),
    ("digest-only", stack("services.chat-service.image", {"digest": "sha256:" + "f" * 64}),
     lambda e: e.services["chat-service"].image.reference.endswith("@sha256:" + "f" * 64)),
    # The digest wins over the tag when both are set (docs/configuration.md).
    ("digest-and-tag", stack("services.chat-service.image", {"tag": "v1.2.3", "digest": "sha256:" + "e" * 64}),
     lambda e: e.services["chat-service"].image.reference == "ghcr.io/my-saas-chat/chat-service@sha256:" + "e" * 64),
    ("tag-with-separators", stack("services.chat-service.image", {"tag": "v1.2.3_rc-1"}), None),
    ("rabbitmq-default-vhost", stack("rabbitmq.vhost", "/"), None),
    ("aws-profile", stack("aws:profile", "ops"), None),
    ("aws-default-tags", stack("aws:defaultTags", {"tags": {"team": "chat"}}), None),
    ("pulumi-tags", stack("pulumi:tags", {"team": "chat"}), None),
    ("legacy-config-key-form", both(drop("stack", "domain"), stack("my-saas-chat:config:domain", "mysaaschat.app")), None),
    ("ssh-key-rsa", stack("host.ssh_public_key", RSA), None),
    ("ssh-key-without-comment", stack("host.ssh_public_key", " ".join(BASES["prod"][P + "host"]["ssh_public_key"].split()[:2])),
     None),
    ("private-key-secret", stack("host.ssh_private_key", {"secure": "v1:AAAA"}), None),
    ("tmpfs-nested", cat("services.frontend.tmpfs", ["/tmp", "/app/.next/cache", "/home/node/.npm"]), None),
    ("tmpfs-dev-shm", cat("services.frontend.tmpfs", ["/tmp", "/dev/shm"]), None),
    ("health-path-query", cat("services.frontend.health_path", "/healthz?full=1"), None),
    ("route-trailing-slash", cat("services.frontend.routes", [{"prefix": "/app/"}]), None),
    ("ssh-options-client-side", stack("host.ssh_options", ["IdentityFile=~/.ssh/ops", "IdentityFile=~/.ssh/ops2",
                                                         "IdentitiesOnly=yes", "ServerAliveCountMax=3", "ControlPersist=10m",
                                                         "Compression=no", "ConnectionAttempts=3"]), None),
    ("local-ssh-endpoint", local(stack("host.docker_host", "ssh://me@devbox")), None),
    ("local-tcp-endpoint", local(stack("host.docker_host", "tcp://127.0.0.1:2376")), None),
    ("yaml-merge-key", text("stack", lambda t: t.replace("config:\n", "x-limits: &limits {cpu: 1.0}\nconfig:\n", 1).replace(
        "    chat-service:\n", "    chat-service:\n      <<: *limits\n", 1)), None),
    ("generated-app", stack("generated_secrets", ["app"]), lambda env: env.managed_secrets()["app"]),
    ("managed-id-named", stack("secrets.stores", "prod/db/passwords"),
     lambda env: env.secret_id("stores") == "prod/db/passwords"),
    ("long-healthcheck", both(stack("services.chat-service.healthcheck", {"interval": "1m30s", "timeout": "10s",
                                                                          "start_period": "2m", "retries": 5}),
                              stack("services.chat-service.deploy_timeout_seconds", 600)), None),
]


@pytest.mark.parametrize("case", INVALID, ids=[c[0] for c in INVALID])
def test_invalid(tmp_path: Path, case: Case) -> None:
    name, mutate, file, path, why = case[:5]
    count = case[5] if len(case) > 5 else 1
    with pytest.raises(ConfigError) as raised:
        load(tmp_path, mutate)
    problems = raised.value.problems
    shown = "\n".join(str(p) for p in problems)
    assert not any("merged config" in p.file or p.file.startswith("/") for p in problems), shown
    hits = [p for p in problems if p.file == file and p.path == path]
    assert hits, f"{name}: no problem names {file}: {path}:\n{shown}"
    assert any(why in p.message for p in hits), f"{name}: {file}: {path} found but without {why!r}:\n{shown}"
    assert all("\n" not in p.message for p in problems), shown
    if count is not None:
        assert len(problems) == count, f"{name}: one cause, expected {count} line(s):\n{shown}"


@pytest.mark.parametrize("case", VALID, ids=[c[0] for c in VALID])
def test_valid(tmp_path: Path, case: tuple[str, Mut, Callable[[Environment], object] | None]) -> None:
    name, mutate, check = case
    env = load(tmp_path, mutate)
    assert check is None or check(env), name


def test_the_corpus_is_large_and_its_names_unique() -> None:
    assert len({c[0] for c in INVALID}) == len(INVALID) >= 150
    assert len({c[0] for c in VALID}) == len(VALID) >= 60


def _cli(monkeypatch: pytest.MonkeyPatch, config: dict[str, Any]) -> None:
    """The stack config as the Pulumi CLI hands it to the program (objects as JSON text)."""
    from pulumi.runtime import config as runtime_config

    monkeypatch.setenv("PULUMI_CONFIG", json.dumps({k: v if isinstance(v, str) else json.dumps(v) for k, v in config.items()}))
    monkeypatch.setenv("PULUMI_CONFIG_SECRET_KEYS", "[]")
    monkeypatch.setattr("pulumi.get_stack", lambda: "prod")
    runtime_config.set_all_config({}, [])


def test_the_program_refuses_a_key_outside_the_namespace_too(monkeypatch: pytest.MonkeyPatch) -> None:
    config = {k: v for k, v in BASES["prod"].items() if k != P + "image_tag"}
    _cli(monkeypatch, {**config, "mysaaschat:image_tag": "2026.11.24-3f9c2ab", "pulumi:tags": "{}"})
    with pytest.raises(ConfigError) as raised:
        load_environment(from_pulumi_runtime())
    assert "Pulumi.prod.yaml: mysaaschat:image_tag: namespace 'mysaaschat' is not read by this program; " \
           "did you mean my-saas-chat:image_tag?" in str(raised.value).splitlines()


def test_the_program_checks_the_zone_against_the_region_it_is_given(monkeypatch: pytest.MonkeyPatch) -> None:
    _cli(monkeypatch, {**BASES["prod"], "aws:region": "us-east-1"})
    with pytest.raises(ConfigError) as raised:
        load_environment(from_pulumi_runtime())
    assert [str(p) for p in raised.value.problems] == [
        "Pulumi.prod.yaml: host.availability_zone: eu-west-1a is not a zone of the stack's region us-east-1 (aws:region)"]

