"""`python -m ops env audit|migrate PATH`: from a tree of `.env*` files to the one model.

`audit` reports every key: where it is defined, whether the values agree, whether it looks secret
(never printing a secret's value). `migrate` turns the tree's plain values into the stack file's
shared `env` and per-service overrides (only what differs from config/shared.yaml), and puts the
secret values into Secrets Manager, writing only references. It is a dry run unless `--write`.

Files are parsed with python-dotenv's own parser (quotes, `export`, multi-line values, comments).
Where a file sits says whom it configures, as in the seed's tree: the root `.env` and
`backend/.env` are shared; `backend/api-gateway/`, `backend/services/<name>/` and `frontend/` are
that service's. `.env.template`, `.env.example` and `.env.sample` document names, not values: they
are listed, never compared or migrated. `.env.<variant>` (development, production, ...) is compared
only with files of the same variant.
"""

from __future__ import annotations

import io
import json
import math
import os
import re
import tempfile
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import yaml
from dotenv.parser import parse_stream

from config.checks import secret_looking
from config.rules import DERIVED_NAMES

SKIP_DIRS = frozenset({"node_modules", ".git"})
TEMPLATES = frozenset({"template", "example", "sample"})
# What the program derives or owns for the stores: a copy in a .env file is dropped, never migrated.
STORE_PARTS = frozenset({"REDIS_HOST", "REDIS_PORT", "REDIS_DB", "REDIS_PASSWORD", "POSTGRES_PASSWORD",
                         "RABBITMQ_PASSWORD", "DATABASE_PASSWORD"})
# Bits per character above which a long value is taken for a key or token whatever its name.
ENTROPY_BITS = 3.5
ENTROPY_MIN_LENGTH = 20
_URL_CREDENTIALS = re.compile(r"^[a-z][a-z0-9+.-]*://[^/@\s:]*:[^/@\s]+@", re.IGNORECASE)


class EnvError(Exception):
    """Bad input: the message names the file (and line) or the stack; exit code 2."""


@dataclass(frozen=True)
class Definition:
    key: str
    file: str  # relative to the scanned root, POSIX form
    line: int
    value: str
    service: str | None  # None: shared
    variant: str  # "" for .env, "development" for .env.development, "template" for templates


@dataclass
class KeyReport:
    key: str
    definitions: list[Definition] = field(default_factory=list)

    @property
    def secret(self) -> bool:
        return secret_looking(self.key) or any(looks_secret(d.value) for d in self.definitions)

    def conflicts(self) -> list[list[Definition]]:
        """Per variant, the definitions when shared files disagree, or a service's file disagrees with
        a shared one (which one wins then depends on load order). Services that differ among
        themselves (PORT) do not conflict: each has its own. Templates never conflict."""
        found = []
        for variant in sorted({d.variant for d in self.definitions} - {"template"}):
            same = [d for d in self.definitions if d.variant == variant]
            shared = {d.value for d in same if d.service is None}
            if len(shared) > 1 or (shared and any(d.value not in shared for d in same)):
                found.append(same)
        return found


def shannon_bits(value: str) -> float:
    counts = Counter(value)
    return -sum(n / len(value) * math.log2(n / len(value)) for n in counts.values()) if value else 0.0


def looks_secret(value: str) -> bool:
    """A URL with a password in it, or a long high-entropy string (a key, a token)."""
    if _URL_CREDENTIALS.match(value):
        return True
    return len(value) >= ENTROPY_MIN_LENGTH and " " not in value and "://" not in value \
        and shannon_bits(value) >= ENTROPY_BITS


def owner(relative: PurePosixPath) -> str | None:
    """The service a file configures, by where it sits in the seed's layout; None for shared files."""
    parts = relative.parts[:-1]
    if parts in ((), ("backend",)):
        return None
    if parts == ("backend", "api-gateway"):
        return "api-gateway"
    if len(parts) == 3 and parts[:2] == ("backend", "services"):
        return parts[2]
    if parts == ("frontend",):
        return "frontend"
    return "/".join(parts)  # anything else: its own unit, named by its directory


def variant_of(name: str) -> str:
    rest = name[len(".env"):].lstrip(".")
    return "template" if rest in TEMPLATES else rest


def env_files(root: Path) -> list[Path]:
    if not root.is_dir():
        raise EnvError(f"{root}: not a directory")
    found = []
    for directory, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS)
        found += [Path(directory) / f for f in files if f == ".env" or f.startswith(".env.")]
    return sorted(found)


def parse_file(path: Path, root: Path) -> list[Definition]:
    relative = PurePosixPath(path.relative_to(root).as_posix())
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise EnvError(f"{relative}: not UTF-8 text ({error.reason} at byte {error.start})") from None
    except OSError as error:
        raise EnvError(f"{relative}: cannot be read: {error.strerror}") from None
    definitions = []
    for binding in parse_stream(io.StringIO(text)):
        if binding.error:
            first = binding.original.string.splitlines()[0] if binding.original.string else ""
            raise EnvError(f"{relative}:{binding.original.line}: cannot parse {first[:40]!r} (expected KEY=value)")
        if binding.key is None:
            continue  # a comment or a blank line
        definitions.append(Definition(binding.key, str(relative), binding.original.line, binding.value or "",
                                      owner(relative), variant_of(path.name)))
    return definitions


def scan(root: Path) -> dict[str, KeyReport]:
    reports: dict[str, KeyReport] = {}
    for path in env_files(root):
        for d in parse_file(path, root):
            reports.setdefault(d.key, KeyReport(d.key)).definitions.append(d)
    return dict(sorted(reports.items()))


def audit(root: Path) -> tuple[list[str], bool]:
    """The report's lines and whether a conflict was found. Secret values are never printed: each
    distinct value of a key is named (value A, value B, ...) so agreement stays visible."""
    reports = scan(root)
    lines, conflict = [], False
    for key, report in reports.items():
        conflicts = report.conflicts()
        conflict = conflict or bool(conflicts)
        labels = {v: chr(ord("A") + i) for i, v in enumerate(dict.fromkeys(d.value for d in report.definitions))}
        live = [d for d in report.definitions if d.variant != "template"]
        state = ("CONFLICT" if conflicts else "once" if len(live) <= 1 else
                 "agree" if len({(d.variant, d.value) for d in live}) == len({d.variant for d in live}) else "per service")
        lines.append(f"{key}  [{'secret' if report.secret else 'plain'}, {state}]")
        for d in report.definitions:
            shown = "********" if report.secret else json.dumps(d.value)
            lines.append(f"    {d.file}:{d.line}  value {labels[d.value]}  {shown}")
    files = env_files(root)
    lines.append(f"{len(files)} files, {len(reports)} keys, "
                 f"{sum(bool(r.conflicts()) for r in reports.values())} in conflict, "
                 f"{sum(r.secret for r in reports.values())} secret")
    return lines, conflict


# ---------------------------------------------------------------------------------------------
# migrate


@dataclass
class Plan:
    shared_env: dict[str, str] = field(default_factory=dict)  # the stack's `env` overrides
    service_env: dict[str, dict[str, str]] = field(default_factory=dict)
    secrets: dict[str, dict[str, str]] = field(default_factory=dict)  # secret id -> key -> value
    secret_ids: dict[str, str] = field(default_factory=dict)  # logical -> id, added to the stack's `secrets:`
    notes: list[str] = field(default_factory=list)

    def describe(self) -> list[str]:
        lines = [f"stack env: {k}={json.dumps(v)}" for k, v in sorted(self.shared_env.items())]
        lines += [f"services.{s}.env: {k}={json.dumps(v)}" for s, env in sorted(self.service_env.items())
                  for k, v in sorted(env.items())]
        lines += [f"secret {sid}: {', '.join(sorted(doc))} (values not shown)" for sid, doc in sorted(self.secrets.items())]
        return lines + self.notes


def plan(root: Path, stack_config: Mapping[str, Any], stack: str, *, variant: str = "") -> Plan:
    """What `migrate` would write, from the tree and the current model (catalog, shared.yaml, stack)."""
    from config.load import CATALOG_FILE, SHARED_FILE

    catalog = yaml.safe_load(CATALOG_FILE.read_text())["services"]
    shared = yaml.safe_load(SHARED_FILE.read_text()).get("env", {})
    prefix = "my-saas-chat:"
    stack_env = dict(stack_config.get(f"{prefix}env") or {})
    stack_secrets = dict(stack_config.get(f"{prefix}secrets") or {})
    generated = set(stack_config.get(f"{prefix}generated_secrets") or [])
    backend = stack_config.get(f"{prefix}secrets_backend", "aws-secretsmanager")
    refs = {var: (ref["secret"], ref["key"]) for svc in catalog.values() for var, ref in (svc.get("secrets") or {}).items()}
    result = Plan()
    reports = scan(root)
    for key, report in reports.items():
        defs = [d for d in report.definitions if d.variant == variant]
        if not defs:
            continue
        if key in DERIVED_NAMES or key in STORE_PARTS:
            result.notes.append(f"dropped {key}: the program derives it (or owns the store's password)")
            continue
        if report.secret:
            _plan_secret(result, key, defs, refs, stack, stack_secrets, generated, backend)
            continue
        shared_defs = [d for d in defs if d.service is None]
        if len({d.value for d in shared_defs}) > 1:
            where = ", ".join(f"{d.file}:{d.line}" for d in shared_defs)
            raise EnvError(f"{key}: the shared files disagree ({where}); make them agree first (see ops env audit)")
        current = stack_env.get(key, shared.get(key))
        if shared_defs and shared_defs[0].value != current:
            result.shared_env[key] = shared_defs[0].value
            current = shared_defs[0].value
        stack_services = stack_config.get(f"{prefix}services") or {}
        for d in defs:
            if d.service is None:
                continue
            if d.service not in catalog:
                result.notes.append(f"skipped {d.file}:{d.line} {key}: {d.service} is not a service of the catalog")
                continue
            # What the service gets today: the stack's override, else the catalog's, else the shared value.
            baseline = ((stack_services.get(d.service) or {}).get("env") or {}).get(
                key, (catalog[d.service].get("env") or {}).get(key, current))
            if d.value != baseline:
                result.service_env.setdefault(d.service, {})[key] = d.value
            else:
                result.notes.append(f"dropped {d.file}:{d.line} {key}: repeats the shared value")
    return result


def _plan_secret(result: Plan, key: str, defs: list[Definition], refs: Mapping[str, tuple[str, str]], stack: str,
                 stack_secrets: Mapping[str, str], generated: set[str], backend: str) -> None:
    values = {d.value for d in defs}
    if len(values) > 1:
        where = ", ".join(f"{d.file}:{d.line}" for d in defs)
        raise EnvError(f"{key}: secret with different values in {where}; one secret has one value")
    logical, doc_key = refs.get(key, ("app", key.lower()))
    if key not in refs:
        result.notes.append(f"{key}: no service of config/catalog.yaml references it; stored as app.{doc_key}, "
                            "add it to the services' `secrets:` that need it")
    if logical in generated or logical in ("stores", "grafana", "backup"):
        result.notes.append(f"skipped {key}: {logical} is generated by the program for this stack")
        return
    if backend == "generated":
        result.notes.append(f"skipped {key}: the stack uses generated secrets (no Secrets Manager)")
        return
    secret_id = stack_secrets.get(logical) or f"{stack}/my-saas-chat/{logical}"
    if logical not in stack_secrets:
        result.secret_ids[logical] = secret_id
    result.secrets.setdefault(secret_id, {})[doc_key] = values.pop()


def apply_to_stack(config: dict[str, Any], result: Plan) -> dict[str, Any]:
    """The stack file's `config` with the plan merged in; every other key kept as it was."""
    prefix = "my-saas-chat:"
    merged = dict(config)
    if result.shared_env:
        merged[f"{prefix}env"] = {**(config.get(f"{prefix}env") or {}), **result.shared_env}
    if result.service_env:
        services = {k: dict(v) for k, v in (config.get(f"{prefix}services") or {}).items()}
        for name, env in result.service_env.items():
            entry = services.setdefault(name, {})
            entry["env"] = {**(entry.get("env") or {}), **env}
        merged[f"{prefix}services"] = services
    if result.secret_ids:
        merged[f"{prefix}secrets"] = {**(config.get(f"{prefix}secrets") or {}), **result.secret_ids}
    return merged


def read_stack(path: Path) -> dict[str, Any]:
    if not path.exists():
        stacks = sorted(p.name.split(".")[1] for p in path.parent.glob("Pulumi.*.yaml"))
        raise EnvError(f"no stack file {path.name} in {path.parent} (stacks: {', '.join(stacks)})")
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict) or not isinstance(data.get("config", {}), dict):
        raise EnvError(f"{path.name}: not a Pulumi stack file (no `config:` mapping)")
    return data


def validate(stack: str, path: Path, document: dict[str, Any]) -> None:
    """The migrated stack file must load into the model: checked on a copy before anything is written."""
    from config import ConfigError, load_environment, read_stack_file

    with tempfile.TemporaryDirectory(prefix="env-migrate-") as scratch:
        candidate = Path(scratch) / path.name
        candidate.write_text(yaml.safe_dump(document, sort_keys=False, allow_unicode=True))
        try:
            load_environment(read_stack_file(candidate, stack))
        except ConfigError as error:
            raise EnvError(f"the migrated {path.name} would be invalid:\n{error}") from None


def store_secrets(secrets: Mapping[str, Mapping[str, str]], region: str, client: Any = None) -> list[str]:
    """Merge each document into its secret (created when missing). Raises on the first failure."""
    import boto3

    client = client or boto3.client("secretsmanager", region_name=region)
    stored = []
    for secret_id, values in sorted(secrets.items()):
        try:
            current = json.loads(client.get_secret_value(SecretId=secret_id)["SecretString"])
            exists = True
        except client.exceptions.ResourceNotFoundException:
            current, exists = {}, False
        document = json.dumps({**current, **values}, sort_keys=True)
        if exists:
            client.put_secret_value(SecretId=secret_id, SecretString=document)
        else:
            client.create_secret(Name=secret_id, SecretString=document,
                                 Description="my-saas-chat: written by python -m ops env migrate")
        stored.append(secret_id)
    return stored


def write_atomically(path: Path, document: dict[str, Any]) -> None:
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as out:
            out.write(yaml.safe_dump(document, sort_keys=False, allow_unicode=True, width=120))
        os.chmod(temporary, path.stat().st_mode & 0o777)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def migrate(root: Path, stack: str, stack_path: Path, *, write: bool, variant: str = "",
            client: Any = None) -> Iterator[str]:
    """Dry run: the plan. `write`: validate, store the secrets, then write the stack file atomically;
    if storing fails, the stack file is not written."""
    document = read_stack(stack_path)
    config = dict(document.get("config") or {})
    result = plan(root, config, stack, variant=variant)
    new_document = {**document, "config": apply_to_stack(config, result)}
    validate(stack, stack_path, new_document)
    yield from result.describe()
    if not write:
        yield "dry run: nothing written (pass --write)"
        return
    region = str(config.get("aws:region") or "us-east-1")
    try:
        stored = store_secrets(result.secrets, region, client)
    except Exception as error:
        code = getattr(error, "response", {}).get("Error", {}).get("Code", type(error).__name__)
        raise EnvError(f"storing a secret failed ({code}); {stack_path.name} was not written") from None
    yield from (f"stored {sid}" for sid in stored)
    if new_document != document:
        write_atomically(stack_path, new_document)
        yield f"wrote {stack_path.name}"
    else:
        yield f"{stack_path.name} unchanged"
