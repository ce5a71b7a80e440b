"""Merge catalog, shared settings and one stack file into a validated `Environment`.

Every problem is collected (never first-error-only) and reported with the file that supplied the
offending value and its key path, e.g. `Pulumi.prod.yaml: services.chat-service.memory: ...`.
"""

from __future__ import annotations

import contextlib
import copy
import difflib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError

from config.model import Environment
from config.rules import check_environment

PROJECT = "my-saas-chat"
CONFIG_DIR = Path(__file__).resolve().parent
ROOT_DIR = CONFIG_DIR.parent
CATALOG_FILE = CONFIG_DIR / "catalog.yaml"
SHARED_FILE = CONFIG_DIR / "shared.yaml"

# What a stack file may change about a catalog service: sizes, pins and overrides, never its shape.
STACK_SERVICE_KEYS = frozenset({"image", "cpu", "memory", "env", "deploy_timeout_seconds", "stop_grace_seconds", "healthcheck"})
# The only config values that may be `pulumi config set --secret`; application secrets live in
# Secrets Manager and are referenced from the catalog.
SECRET_CONFIG_KEYS = frozenset({"host.ssh_private_key"})
SECRET_PLACEHOLDER = "secure-config-placeholder"

Path_ = tuple[str, ...]
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml when present: 1000-service catalogs


@dataclass(frozen=True, order=True)
class Problem:
    file: str
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}: {self.path or '(top level)'}: {self.message}"


class ConfigError(Exception):
    """Raised with every problem found; nothing may be registered when this is raised."""

    def __init__(self, problems: list[Problem]):
        self.problems = sorted(set(problems))
        super().__init__("\n".join(str(p) for p in self.problems))


@dataclass(frozen=True)
class StackInput:
    """One stack's project config, keys without the `my-saas-chat:` prefix."""

    stack: str
    values: Mapping[str, Any]
    file: str
    secret_paths: frozenset[str] = frozenset()


class _Layers:
    """A deep merge that remembers which file supplied every node."""

    def __init__(self) -> None:
        self.data: dict[str, Any] = {}
        self.origin: dict[Path_, str] = {}

    def apply(self, overlay: Mapping[str, Any], file: str, at: Path_ = ()) -> None:
        target = self.data
        for key in at:
            target = target.setdefault(key, {})
        self._merge(target, overlay, file, at)

    def _merge(self, target: dict[str, Any], overlay: Mapping[str, Any], file: str, at: Path_) -> None:
        for key, value in overlay.items():
            path = (*at, str(key))
            if isinstance(value, Mapping) and isinstance(target.get(key), dict):
                self.origin.setdefault(path, file)
                self._merge(target[key], value, file, path)
                continue
            if isinstance(target.get(key), dict):  # a whole subtree replaced: forget where its parts came from
                for stale in [p for p in self.origin if p[: len(path)] == path]:
                    del self.origin[stale]
            target[key] = copy.deepcopy(dict(value)) if isinstance(value, Mapping) else copy.deepcopy(value)
            self._mark(path, value, file)

    def _mark(self, path: Path_, value: Any, file: str) -> None:
        self.origin[path] = file
        if isinstance(value, Mapping):
            for key, child in value.items():
                self._mark((*path, str(key)), child, file)

    def file_of(self, path: Path_) -> str:
        for end in range(len(path), 0, -1):
            if path[:end] in self.origin:
                return self.origin[path[:end]]
        return "(merged config)"


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.load(path.read_text(), Loader=_LOADER) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError([Problem(_display(path), "", f"cannot be read: {exc}")]) from None
    if not isinstance(data, dict):
        raise ConfigError([Problem(_display(path), "", "must be a mapping")])
    return data


def _display(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(ROOT_DIR))
    except ValueError:
        return str(path)


def read_stack_file(path: Path, stack: str | None = None) -> StackInput:
    """Read `Pulumi.<stack>.yaml` the way the Pulumi CLI would, without decrypting `secure:` values."""
    raw = _read_yaml(path)
    config = raw.get("config") or {}
    file = _display(path)
    if not isinstance(config, dict):
        raise ConfigError([Problem(file, "config", "must be a mapping")])
    values: dict[str, Any] = {}
    secrets: set[str] = set()
    for key, value in config.items():
        namespace, _, name = str(key).partition(":")
        if namespace != PROJECT:
            continue  # provider settings such as aws:region belong to their providers
        values[name] = _strip_secure(value, name, secrets)
    return StackInput(stack or path.name.split(".")[1], values, file, frozenset(secrets))


def _strip_secure(value: Any, path: str, secrets: set[str]) -> Any:
    if isinstance(value, dict):
        if set(value) == {"secure"}:
            secrets.add(path)
            return f"{SECRET_PLACEHOLDER}:{path}"
        return {k: _strip_secure(v, f"{path}.{k}", secrets) for k, v in value.items()}
    if isinstance(value, list):
        return [_strip_secure(v, f"{path}.{i}", secrets) for i, v in enumerate(value)]
    return value


def from_pulumi_runtime() -> StackInput:
    """The stack config as the Pulumi engine hands it to the program (objects arrive as JSON text)."""
    import pulumi
    from pulumi.runtime import config as runtime_config

    # The CLI's language host passes PULUMI_CONFIG(_SECRET_KEYS); the Automation API sets them directly.
    raw = {**runtime_config.get_config_env(), **runtime_config.CONFIG.get()}
    env_secret_keys = set(runtime_config.get_config_secret_keys_env())
    values: dict[str, Any] = {}
    secrets = set()
    for key, value in raw.items():
        namespace, _, name = key.partition(":")
        if namespace != PROJECT:
            continue
        if isinstance(value, str) and value[:1] in "{[":
            with contextlib.suppress(json.JSONDecodeError):
                value = json.loads(value)
        values[name] = value
        if runtime_config.is_config_secret(key) or key in env_secret_keys:
            secrets.add(name)
    stack = pulumi.get_stack()
    return StackInput(stack, values, f"Pulumi.{stack}.yaml", frozenset(secrets))


def load_environment(stack_input: StackInput, catalog: Path | None = None, shared: Path = SHARED_FILE) -> Environment:
    # MY_SAAS_CHAT_CATALOG swaps in another catalog (benchmarks use synthetic ones of 1000 services).
    catalog = catalog or Path(os.environ.get("MY_SAAS_CHAT_CATALOG", CATALOG_FILE))
    # synth validates before it runs the program, which loads the same config again: the model is
    # immutable, so the second load reuses the first while no input changed.
    key = (stack_input.stack, stack_input.file, json.dumps(stack_input.values, sort_keys=True, default=str),
           tuple(sorted(stack_input.secret_paths)), *(_stamp(p) for p in (catalog, shared)))
    if key not in _LOADED:
        _LOADED.clear()
        _LOADED[key] = _load(stack_input, catalog, shared)
    return _LOADED[key]


_LOADED: dict[tuple[object, ...], Environment] = {}


def _stamp(path: Path) -> tuple[str, int, int]:
    try:
        stat = path.stat()
    except OSError:
        return (str(path), 0, 0)
    return (str(path), stat.st_mtime_ns, stat.st_size)


def _load(stack_input: StackInput, catalog: Path, shared: Path) -> Environment:
    problems: list[Problem] = []
    catalog_data, shared_data = _read_yaml(catalog), _read_yaml(shared)
    catalog_file, shared_file, stack_file = _display(catalog), _display(shared), stack_input.file
    layers = _Layers()

    defaults = shared_data.pop("defaults", {}) or {}
    services = catalog_data.get("services") or {}
    for name, spec in services.items():
        layers.apply(defaults, shared_file, ("services", name))
        layers.apply(spec or {}, catalog_file, ("services", name))
    extra = {k: v for k, v in catalog_data.items() if k != "services"}
    layers.apply(extra, catalog_file)
    layers.apply(shared_data, shared_file)

    stack_values = dict(stack_input.values)
    for secret in stack_input.secret_paths:
        if not any(secret == k or secret.startswith(k + ".") or k.startswith(secret + ".") for k in SECRET_CONFIG_KEYS):
            problems.append(Problem(stack_file, secret, "only host.ssh_private_key may be a config secret; keep "
                                    "application secrets in Secrets Manager and reference them in config/catalog.yaml"))
    stack_services = stack_values.pop("services", None) or {}
    if not isinstance(stack_services, Mapping):
        problems.append(Problem(stack_file, "services", "must be a mapping of service name to overrides"))
        stack_services = {}
    for name, override in stack_services.items():
        if name not in services:
            hint = difflib.get_close_matches(str(name), list(services), 1)
            problems.append(Problem(stack_file, f"services.{name}", "no such service in config/catalog.yaml"
                                    + (f" (did you mean {hint[0]}?)" if hint else "")))
            continue
        if not isinstance(override, Mapping):
            problems.append(Problem(stack_file, f"services.{name}", "must be a mapping of overrides"))
            continue
        for key in sorted(set(override) - STACK_SERVICE_KEYS):
            problems.append(Problem(stack_file, f"services.{name}.{key}", "is a catalog fact (config/catalog.yaml); "
                                    f"a stack may override only {', '.join(sorted(STACK_SERVICE_KEYS))}"))
        layers.apply({k: v for k, v in override.items() if k in STACK_SERVICE_KEYS}, stack_file, ("services", name))
    layers.apply(stack_values, stack_file)
    layers.apply({"stack": stack_input.stack}, stack_file)

    image_tag = stack_values.get("image_tag")
    for name in services:
        image = layers.data["services"][name].get("image")
        if isinstance(image, dict) and image.get("tag") is None and image.get("digest") is None and image_tag is not None:
            layers.apply({"tag": image_tag}, stack_file, ("services", name, "image"))

    try:
        env = Environment.model_validate(layers.data)
    except ValidationError as exc:
        for error in exc.errors():
            loc = tuple(str(p) for p in error["loc"])
            problems.append(Problem(layers.file_of(loc), _dotted(loc), _message(error, loc)))
        raise ConfigError(problems) from None

    for path, message in check_environment(env):
        problems.append(Problem(layers.file_of(tuple(path.split("."))), path, message))
    if problems:
        raise ConfigError(problems)
    return env


def _dotted(loc: Path_) -> str:
    return ".".join(p for p in loc if p != "[key]")


def _message(error: Any, loc: Path_) -> str:
    kind, msg = error["type"], error["msg"]
    if kind == "extra_forbidden":
        fields = _fields_at(loc[:-1])
        hint = difflib.get_close_matches(loc[-1], fields, 1)
        return "unknown key" + (f" (did you mean {hint[0]}?)" if hint else f"; allowed: {', '.join(fields)}" if fields else "")
    if kind == "missing":
        return "is required"
    return str(msg).removeprefix("Value error, ")


def _fields_at(loc: Path_) -> list[str]:
    """The field names of the model at `loc`, for "did you mean" hints."""
    model: Any = Environment
    for part in loc:
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            origin = get_origin(model)
            if origin is dict:
                model = get_args(model)[1]
                continue
            return []
        field = model.model_fields.get(part)
        if field is None:
            return []
        model = _unwrap(field.annotation)
    if isinstance(model, type) and issubclass(model, BaseModel):
        return sorted(model.model_fields)
    return []


def _unwrap(annotation: Any) -> Any:
    args = [a for a in get_args(annotation) if a is not type(None)]
    if get_origin(annotation) is dict:
        return annotation
    if len(args) == 1 and not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
        return args[0]
    return annotation
