"""Merge catalog, shared settings and one stack file into a validated `Environment`.

Every problem is collected (never first-error-only) and reported with the file that supplied the
offending value and its key path, e.g. `Pulumi.prod.yaml: services.chat-service.memory: ...`.
"""

from __future__ import annotations

import contextlib
import copy
import difflib
import functools
import importlib.util
import json
import os
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError

from config import checks
from config.model import PATTERN_HELP, Environment, Service
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
# Top-level settings that config/shared.yaml holds for every stack.
SHARED_KEYS = frozenset({"env", "gateway", "postgres", "redis", "rabbitmq", "monitoring"})

Path_ = tuple[str, ...]
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml when present: 1000-service catalogs
_MERGE_TAG = "tag:yaml.org,2002:merge"
# Provider namespaces whose settings this program never reads: it builds those providers itself.
IGNORED_NAMESPACES = {
    "docker": "the Docker provider is built from my-saas-chat:host (docker_host, or the EC2 host)",
    "command": "the program configures its remote commands itself",
    "tls": "the program configures its TLS keys itself",
    "random": "the random provider has no settings",
}


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
    """One stack's config: project keys without the `my-saas-chat:` prefix; keys of any other namespace
    (`aws:region`, a misspelt namespace, `:name` for none) under their full name, to be checked."""

    stack: str
    values: Mapping[str, Any]
    file: str
    secret_paths: frozenset[str] = frozenset()


class _Layers:
    """A deep merge that remembers which file, and which key path in it, supplied every node."""

    def __init__(self, fallback: Callable[[Path_], str]) -> None:
        self.data: dict[str, Any] = {}
        self.origin: dict[Path_, tuple[str, Path_]] = {}
        self._fallback = fallback  # the file to name for a path no file supplied (a missing key)

    def apply(self, overlay: Mapping[str, Any], file: str, at: Path_ = (), source: Path_ | None = None) -> None:
        """Merge `overlay` at `at`; `source` is where it sits in `file` (default: the same path)."""
        target = self.data
        for key in at:
            target = target.setdefault(key, {})
        self._merge(target, overlay, file, at, at if source is None else source)

    def _merge(self, target: dict[str, Any], overlay: Mapping[str, Any], file: str, at: Path_, source: Path_) -> None:
        for key, value in overlay.items():
            path, src = (*at, str(key)), (*source, str(key))
            if isinstance(value, Mapping) and isinstance(target.get(key), dict):
                self.origin.setdefault(path, (file, src))
                self._merge(target[key], value, file, path, src)
                continue
            if isinstance(target.get(key), dict):  # a whole subtree replaced: forget where its parts came from
                for stale in [p for p in self.origin if p[: len(path)] == path]:
                    del self.origin[stale]
            target[key] = copy.deepcopy(dict(value)) if isinstance(value, Mapping) else copy.deepcopy(value)
            self._mark(path, value, file, src)

    def _mark(self, path: Path_, value: Any, file: str, src: Path_) -> None:
        self.origin[path] = (file, src)
        if isinstance(value, Mapping):
            for key, child in value.items():
                self._mark((*path, str(key)), child, file, (*src, str(key)))

    def mark(self, path: Path_, file: str, src: Path_) -> None:
        self.origin[path] = (file, src)

    def where(self, path: Path_) -> tuple[str, str]:
        """The file that supplied `path` and the key path as written in that file."""
        path = tuple(p for p in path if p != "[key]")
        for end in range(len(path), 0, -1):
            if path[:end] in self.origin:
                file, src = self.origin[path[:end]]
                return file, ".".join((*src, *path[end:]))
        return self._fallback(path), ".".join(path)


def _duplicates(node: yaml.Node, path: Path_, seen: set[int]) -> Iterator[tuple[Path_, int, int]]:
    """Keys repeated in one mapping: YAML keeps the last silently, so a fix would vanish unseen."""
    if id(node) in seen:
        return
    seen.add(id(node))
    if isinstance(node, yaml.MappingNode):
        first: dict[tuple[str, str], int] = {}
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE_TAG:
                continue
            name = str(key_node.value) if isinstance(key_node, yaml.ScalarNode) else "?"
            if isinstance(key_node, yaml.ScalarNode):
                ident = (key_node.tag, key_node.value)
                if ident in first:
                    yield (*path, name), key_node.start_mark.line + 1, first[ident]
                else:
                    first[ident] = key_node.start_mark.line + 1
            yield from _duplicates(value_node, (*path, name), seen)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            yield from _duplicates(item, (*path, str(i)), seen)


def _read_yaml(path: Path, shown: Callable[[Path_], str] = ".".join) -> dict[str, Any]:
    """A YAML mapping; duplicate keys are refused, each named by key path and line."""
    file = _display(path)
    try:
        loader = _LOADER(path.read_text())
        try:
            node = loader.get_single_node()
            duplicates = list(_duplicates(node, (), set())) if node is not None else []
            data = loader.construct_document(node) if node is not None else None
        finally:
            loader.dispose()
    except (OSError, yaml.YAMLError) as exc:
        text = " ".join(re.sub(r'\s*in "<unicode string>",', " at", str(exc)).split())  # the file is named already
        raise ConfigError([Problem(file, "", f"cannot be read: {text}")]) from None
    if duplicates:
        raise ConfigError([Problem(file, shown(p), f"duplicate key on line {line} (first on line {was}); YAML would "
                                   "silently keep only the last: remove one") for p, line, was in duplicates])
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError([Problem(file, "", "must be a mapping")])
    return data


def _stack_key_path(path: Path_) -> str:
    """A stack file path as problems name it: `config.my-saas-chat:host.ami` is `host.ami`."""
    if len(path) >= 2 and path[0] == "config":
        namespace, _, name = path[1].partition(":")
        head = name if namespace == PROJECT and name else path[1]
        return ".".join((head, *path[2:]))
    return ".".join(path)


def _display(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(ROOT_DIR))
    except ValueError:
        return str(path)


def read_stack_file(path: Path, stack: str | None = None) -> StackInput:
    """Read `Pulumi.<stack>.yaml` the way the Pulumi CLI would, without decrypting `secure:` values.

    Keys of other namespaces (`aws:region`, or a key whose namespace is missing or misspelt) are kept
    under their full name, so that `load_environment` can check them with everything else.
    """
    raw = _read_yaml(path, _stack_key_path)
    file = _display(path)
    if "config" in raw and not isinstance(raw["config"], dict):
        raise ConfigError([Problem(file, "config", "must be a mapping of namespaced keys (my-saas-chat:domain: ...)"
                                   if raw["config"] is not None else "is empty (null): give the stack's settings or remove it")])
    values: dict[str, Any] = {}
    secrets: set[str] = set()
    for key, value in (raw.get("config") or {}).items():
        name = _project_key(str(key))
        if name is None:
            values[_foreign(str(key))] = _strip_secure(value, str(key), set())
        else:
            values[name] = _strip_secure(value, name, secrets)
    return StackInput(stack or path.name.split(".")[1], values, file, frozenset(secrets))


def _project_key(key: str) -> str | None:
    """The name of a `my-saas-chat:` key (also in the CLI's legacy `my-saas-chat:config:name` form), else None."""
    namespace, sep, name = key.partition(":")
    if namespace != PROJECT or not sep or not name:
        return None
    return name.removeprefix("config:") or None


def _foreign(key: str) -> str:
    # A key without a namespace is kept as ":key" so that it cannot be mistaken for a project key.
    return key if ":" in key else f":{key}"


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
        if isinstance(value, str) and value[:1] in "{[":
            with contextlib.suppress(json.JSONDecodeError):
                value = json.loads(value)
        name = _project_key(key)
        if name is None:
            values[_foreign(key)] = value
            continue
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


def _null(what: str) -> str:
    return f"is empty (null); give {what}"


def _load(stack_input: StackInput, catalog: Path, shared: Path) -> Environment:
    problems: list[Problem] = []
    catalog_data, shared_data = _read_yaml(catalog), _read_yaml(shared)
    catalog_file, shared_file, stack_file = _display(catalog), _display(shared), stack_input.file
    # A missing key is named in the file where it belongs: services in the catalog, settings shared by
    # every stack in shared.yaml, the rest (domain, host, secrets, ...) in the stack file.
    home = {"services": catalog_file, **dict.fromkeys(SHARED_KEYS, shared_file)}
    layers = _Layers(lambda path: home.get(path[0], stack_file) if path else stack_file)
    rank = {shared_file: 1, catalog_file: 2, stack_file: 3}

    defaults = shared_data.pop("defaults", {})
    defaults_broken = not isinstance(defaults, Mapping)
    if defaults_broken:
        problems.append(Problem(shared_file, "defaults", _null("settings for every service") if defaults is None
                                else "must be a mapping of settings for every service"))
        defaults = {}
    raw_services = catalog_data.get("services")
    services: Mapping[str, Any] = raw_services if isinstance(raw_services, Mapping) else {}
    services_broken = not isinstance(raw_services, Mapping)
    if services_broken:
        problems.append(Problem(catalog_file, "services", "is required: the mapping of service name to settings"
                                if "services" not in catalog_data else
                                _null("the mapping of service name to settings") if raw_services is None else
                                "must be a mapping of service name to settings"))
    layers.mark(("services",), catalog_file, ("services",))
    for name, spec in services.items():
        if not isinstance(spec, Mapping):
            problems.append(Problem(catalog_file, f"services.{name}", _null("the service's settings") if spec is None
                                    else "must be a mapping of the service's settings"))
            continue
        layers.apply(defaults, shared_file, ("services", str(name)), ("defaults",))
        layers.apply(spec, catalog_file, ("services", str(name)))
        layers.mark(("services", str(name)), catalog_file, ("services", str(name)))
    extra = {k: v for k, v in catalog_data.items() if k != "services"}
    layers.apply(extra, catalog_file)
    layers.apply(shared_data, shared_file)

    stack_values = {k: v for k, v in stack_input.values.items() if ":" not in k and "." not in k}
    for key in sorted(k for k in stack_input.values if ":" not in k and "." in k):
        # Pulumi keeps `my-saas-chat:host.kind` as one flat key; it never reaches host.kind.
        head = key.split(".")[0]
        problems.append(Problem(stack_file, key, f"is one flat key, not a path: nest it under my-saas-chat:{head} "
                                "(pulumi config set --path writes it so)"))
    foreign = {k: v for k, v in stack_input.values.items() if ":" in k}
    problems.extend(Problem(stack_file, key.lstrip(":"), message) for key, message in _namespace_problems(foreign))
    region = foreign.get("aws:region")
    if "aws:region" in foreign and (not isinstance(region, str) or any(p.path == "aws:region" for p in problems)):
        region = ""  # set but malformed: reported once, not again as missing or through the zone

    refused_secrets: list[str] = []
    for secret in stack_input.secret_paths:
        if not any(secret == k or secret.startswith(k + ".") or k.startswith(secret + ".") for k in SECRET_CONFIG_KEYS):
            refused_secrets.append(secret)
            problems.append(Problem(stack_file, secret, "only host.ssh_private_key may be a config secret; keep "
                                    "application secrets in Secrets Manager and reference them in config/catalog.yaml"))
    problems.extend(_private_key_problems(stack_values, stack_input, stack_file))
    stack_services = stack_values.pop("services", {})
    if not isinstance(stack_services, Mapping):
        problems.append(Problem(stack_file, "services", _null("overrides per service, or remove the key")
                                if stack_services is None
                                else "must be a mapping of service name to overrides"))
        stack_services = {}
    for name, override in stack_services.items():
        if services_broken:
            break  # overrides of services the catalog does not list: the catalog is what to fix
        if name not in services:
            hint = difflib.get_close_matches(str(name), [str(n) for n in services], 1)
            problems.append(Problem(stack_file, f"services.{name}", "no such service in config/catalog.yaml"
                                    + (f" (did you mean {hint[0]}?)" if hint else "")))
            continue
        if not isinstance(override, Mapping):
            problems.append(Problem(stack_file, f"services.{name}", _null("overrides, or remove the key") if override is None
                                    else "must be a mapping of overrides"))
            continue
        if not isinstance(services[name], Mapping):
            continue  # the catalog entry is reported
        service_fields = sorted(Service.model_fields)
        for key in sorted(set(override) - STACK_SERVICE_KEYS):
            allowed = f"a stack may override only {', '.join(sorted(STACK_SERVICE_KEYS))}"
            if key in service_fields:
                message = f"is a catalog fact (config/catalog.yaml); {allowed}"
            else:
                hint = difflib.get_close_matches(str(key), service_fields, 1)
                message = "unknown key" + (f" (did you mean {hint[0]}?)" if hint else "") + f"; {allowed}"
            problems.append(Problem(stack_file, f"services.{name}.{key}", message))
        layers.apply({k: v for k, v in override.items() if k in STACK_SERVICE_KEYS}, stack_file, ("services", name))
    for file, data in ((catalog_file, extra), (shared_file, shared_data), (stack_file, stack_values)):
        if "stack" in data:  # it would be overwritten below without a word
            problems.append(Problem(file, "stack", "is the stack's name, taken from the stack file's name; remove it"))
    layers.apply({k: v for k, v in stack_values.items() if k != "stack"}, stack_file)
    layers.apply({"stack": stack_input.stack}, stack_file)

    image_tag = stack_values.get("image_tag")
    for name in layers.data.get("services", {}):
        image = layers.data["services"][name].get("image")
        if isinstance(image, dict) and image.get("tag") is None and image.get("digest") is None and image_tag is not None:
            layers.apply({"tag": image_tag}, stack_file, ("services", name, "image"))
            # A bad image_tag is one mistake in one place, not one per service.
            layers.mark(("services", name, "image", "tag"), stack_file, ("image_tag",))

    try:
        env = Environment.model_validate(layers.data)
    except ValidationError as exc:
        for error in exc.errors():
            loc = tuple(str(p) for p in error["loc"])
            if services_broken and loc[:1] == ("services",):
                continue  # already reported where the catalog's services should be
            if defaults_broken and loc[:1] == ("services",) and error["type"] == "missing":
                continue  # what the shared defaults would give: the broken defaults are the one problem
            where = layers.where(loc)
            if error["type"] == "missing" and loc[0] in SHARED_KEYS and loc[0] not in shared_data:
                # The section itself is missing from shared.yaml; a stack's partial override does not make it whole.
                where, error = (shared_file, loc[0]), {**error, "loc": loc[:1]}
            if where[0] == stack_file and any(where[1] == s or where[1].startswith(s + ".") for s in refused_secrets):
                continue  # the encrypted placeholder is not the value: the refused secret is the one problem
            message = _message(error, loc)
            if message.startswith("is empty (null)") and where[0] == stack_file:
                message += ", or remove the key"
            problems.append(Problem(*where, message))
        raise ConfigError(problems) from None

    for paths, message in check_environment(env, aws_region=region):
        # A rule about two values names the one from the most specific file (the stack's change, usually).
        chosen = max(paths, key=lambda p: rank.get(layers.where(tuple(p.split(".")))[0], 0))
        problems.append(Problem(*layers.where(tuple(chosen.split("."))), message))
    if problems:
        raise ConfigError(problems)
    return env


@functools.cache
def _aws_settings() -> frozenset[str]:
    """The aws provider's settings, read from the installed SDK (its config module lists them)."""
    spec = importlib.util.find_spec("pulumi_aws")
    if spec is None or not spec.submodule_search_locations:
        return frozenset()
    source = Path(next(iter(spec.submodule_search_locations))) / "config" / "vars.py"
    try:
        text = source.read_text()
    except OSError:
        return frozenset()
    return frozenset(re.findall(r"__config__\.get(?:_bool|_int|_float|_object)?\('([^']+)'\)", text))


def _namespace_problems(foreign: Mapping[str, Any]) -> Iterator[tuple[str, str]]:
    """Stack keys outside `my-saas-chat:` that the program would silently never see."""
    fields = sorted(Environment.model_fields)
    aws_settings = _aws_settings()
    for key in sorted(foreign):
        namespace, _, name = key.partition(":")
        if namespace == PROJECT:
            yield key, "has no key name after my-saas-chat:"
            continue
        top = name.split(".")[0]
        close = [top] if top in fields else difflib.get_close_matches(top, fields, 1)
        ours = f"did you mean {PROJECT}:{close[0]}?" if close else f"this program reads only {PROJECT}: keys"
        if namespace == "":
            yield key, f"has no namespace, so the program never sees it; {ours}"
        elif namespace == "pulumi":
            continue
        elif namespace == "aws":
            if aws_settings and name not in aws_settings:
                near = difflib.get_close_matches(name, sorted(aws_settings), 1)
                yield key, ("is not a setting of the aws provider; " + (f"did you mean {PROJECT}:{close[0]}?" if close
                            else f"did you mean aws:{near[0]}?" if near else "see the provider's configuration"))
            elif name == "region":
                value = foreign[key]
                try:
                    checks.aws_region(value if isinstance(value, str) else repr(value))
                except ValueError as exc:
                    yield key, str(exc)
        elif namespace in IGNORED_NAMESPACES:
            yield key, f"is ignored: {IGNORED_NAMESPACES[namespace]}"
        else:
            yield key, f"namespace {namespace!r} is not read by this program; {ours}"


def _private_key_problems(values: Mapping[str, Any], stack_input: StackInput, file: str) -> Iterator[Problem]:
    host = values.get("host")
    key = host.get("ssh_private_key") if isinstance(host, Mapping) else None
    if not isinstance(key, str):
        return
    if not ({"host", "host.ssh_private_key"} & stack_input.secret_paths):
        yield Problem(file, "host.ssh_private_key", "is in plain text; set it with `pulumi config set --secret --path "
                      "host.ssh_private_key < KEYFILE` so the stack file holds it encrypted")
    elif not key.startswith(SECRET_PLACEHOLDER) and not re.search(r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----", key):
        yield Problem(file, "host.ssh_private_key", "is not a private key in PEM or OpenSSH form (-----BEGIN ... PRIVATE KEY-----)")


_KIND = {bool: "the boolean", int: "the number", float: "the number"}


def _message(error: Any, loc: Path_) -> str:
    kind, msg, value = error["type"], error["msg"], error.get("input")
    if kind == "extra_forbidden":
        fields = _fields_at(loc[:-1])
        hint = difflib.get_close_matches(loc[-1], fields, 1)
        return "unknown key" + (f" (did you mean {hint[0]}?)" if hint else f"; allowed: {', '.join(fields)}" if fields else "")
    if kind == "missing":
        return "is required"
    if value is None and kind.endswith("_type"):
        what = {"dict_type": "a mapping", "model_type": "a mapping", "model_attributes_type": "a mapping",
                "list_type": "a list"}.get(kind, "a value")
        return _null(what)
    if kind == "string_type" and type(value) in _KIND:
        # YAML turned the unquoted text into a value (1.10 -> 1.1, yes -> true, 1001:1001 -> 61061):
        # the original text is gone, so ask for it quoted.
        return (f"YAML read the unquoted value as {_KIND[type(value)]} {json.dumps(value)}, not a string; "
                "quote it as written (\"1.10\", \"yes\", \"1001:1001\")")
    if kind in {"dict_type", "model_type", "model_attributes_type"}:
        return f"must be a mapping, not {type(value).__name__} {value!r}"
    if kind == "list_type":
        one = " (write [item] for one item)" if isinstance(value, str) else ""
        return f"must be a list, not {type(value).__name__} {value!r}{one}"
    if kind in {"int_parsing", "float_parsing", "int_type", "float_type"} and loc[-1].endswith("_seconds"):
        return f"{value!r} is not a number of seconds (write 30, not 30s)"
    if kind in {"int_parsing", "float_parsing", "int_type", "float_type"}:
        return f"{value!r} is not a number" + (" (give cores as a number: 0.5, not Kubernetes millicores)"
                                               if isinstance(value, str) and value.endswith("m") and value[:-1].isdigit() else "")
    if kind == "int_from_float":
        return f"{value!r} is not a whole number"
    if kind == "string_pattern_mismatch":
        pattern = error.get("ctx", {}).get("pattern", "")
        return f"{value!r} does not have the required form: {PATTERN_HELP.get(pattern, pattern)}"
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
