"""Check recorded inputs against the installed provider SDKs' input-type metadata.

Plain mocks accept any key at any depth (`healthcheck={'testz': ...}` passes silently). Here every
input of every custom resource is walked against the `@pulumi.input_type` classes the SDK ships:
unknown keys, missing required keys and wrong scalar types fail, naming the resource and the key
path, so a typo fails in tests instead of at a user's `pulumi preview`.
"""

from __future__ import annotations

import collections.abc
import importlib
import json
import typing
from functools import cache
from typing import Any

from pulumi import _types as ptypes
from pulumi.output import Output

PACKAGES = {"docker": "pulumi_docker", "aws": "pulumi_aws", "random": "pulumi_random", "tls": "pulumi_tls",
            "command": "pulumi_command"}
UNRESOLVED = "<unresolved-output:"
# The wire form of a secret (pulumi/runtime/rpc.py: _special_sig_key, _special_secret_sig):
# {SECRET_SIG: SECRET_VALUE_SIG, "value": ...}.
SECRET_SIG = "4dabf18193072939515e22adb298388d"
SECRET_VALUE_SIG = "1b47061264138c4ac30d75fd1eb44270"
# What `str(output)` returns instead of a value (pulumi/output.py: Output.__str__, _OutputToStringError).
OUTPUT_STR = "Calling __str__ on an Output[T] is not supported"


@cache
def args_class(token: str) -> type | None:
    """`docker:index/container:Container` -> `pulumi_docker.ContainerArgs`; providers -> `ProviderArgs`."""
    if token.startswith("pulumi:providers:"):
        package = PACKAGES.get(token.rsplit(":", 1)[1])
        return importlib.import_module(package).ProviderArgs if package else None
    # When a nested input type already has the name `<Resource>Args` (pulumi-aws 7's Bucket has a
    # `versioning` input of type s3.BucketVersioningArgs), the SDK's codegen names the resource's own
    # args `<Resource>InitArgs` (pulumi_aws/s3/bucket_versioning.py).
    return _sdk_class(token, "InitArgs") or _sdk_class(token, "Args")


def resource_class(token: str) -> type | None:
    return _sdk_class(token, "")


@cache
def state_class(token: str) -> type | None:
    """`docker:index/network:Network` -> `pulumi_docker.network._NetworkState`: what `Network.get` takes."""
    cls = resource_class(token)
    if cls is None:
        return None
    return getattr(importlib.import_module(cls.__module__), f"_{token.rsplit(':', 1)[1]}State", None)


def _sdk_class(token: str, suffix: str) -> type | None:
    """`aws:ec2/instance:Instance` -> `pulumi_aws.ec2.Instance<suffix>`, None outside our packages."""
    pkg, module, name = token.split(":")
    if pkg not in PACKAGES:
        return None
    path = module.split("/")[0]
    mod = importlib.import_module(PACKAGES[pkg] if path == "index" else f"{PACKAGES[pkg]}.{path.replace('-', '_')}")
    return getattr(mod, f"{name}{suffix}", None)


@cache
def output_properties(token: str) -> dict[str, Any]:
    cls = resource_class(token)
    return dict(ptypes.resource_types(cls)) if cls else {}


def check_inputs(token: str, inputs: dict[str, Any], *, read: bool = False) -> list[str]:
    """Problems of a registration's inputs (`read`: of the state a `Resource.get` passes)."""
    cls = state_class(token) if read else args_class(token)
    if cls is None:
        return [f"no input-type metadata for {token}: add its package to ops/strict.py"] if ":" in token and \
            token.split(":")[0] not in ("pulumi", "my-saas-chat") else []
    problems: list[str] = []
    _check_object(cls, inputs, "", problems, provider=token.startswith("pulumi:providers:"))
    return problems


def is_secret(value: Any) -> bool:
    return isinstance(value, dict) and value.get(SECRET_SIG) == SECRET_VALUE_SIG and "value" in value


def secret(value: Any) -> dict[str, Any]:
    """`value` in the wire form of a secret, as the engine marks a secret output."""
    return value if is_secret(value) else {SECRET_SIG: SECRET_VALUE_SIG, "value": value}


def _unwrap_secret(value: Any) -> Any:
    while is_secret(value):
        value = value["value"]
    return value


def _check_object(cls: type, value: Any, path: str, problems: list[str], provider: bool = False) -> None:
    value = _unwrap_secret(value)
    if not isinstance(value, dict):
        problems.append(f"{path or '(inputs)'}: expected an object ({cls.__name__}), got {type(value).__name__}")
        return
    types, required = _metadata(cls)
    for wire in required:
        if wire not in value:
            problems.append(f"{_join(path, wire)}: required by {cls.__name__} but missing")
    for key, item in sorted(value.items()):
        if provider and key in ("version", "pluginDownloadURL"):
            continue
        if key not in types:
            near = ", ".join(sorted(types))
            problems.append(f"{_join(path, key)}: unknown key for {cls.__name__} (known: {near})")
            continue
        _check_value(types[key], item, _join(path, key), problems, provider)


@cache
def _metadata(cls: type) -> tuple[dict[str, Any], list[str]]:
    names = ptypes.input_type_py_to_pulumi_names(cls)
    required = sorted(names.get(k, k) for k in ptypes._required_property_names(cls))
    return dict(ptypes.input_type_types(cls)), required


def _check_value(hint: Any, value: Any, path: str, problems: list[str], provider: bool) -> None:
    value = _unwrap_secret(value)
    if value is None:
        return
    hint = _strip_input(hint)
    origin = typing.get_origin(hint)
    if isinstance(value, str) and value.startswith(UNRESOLVED):
        return  # reported once by the scan for unresolved outputs
    if provider:
        # Provider configuration that is not a string arrives JSON-encoded (the SDKs apply
        # `pulumi.runtime.to_json` to it); the provider decodes it, so check what it decodes.
        if hint is str or hint is Any or not isinstance(value, str):
            provider = False
        else:
            try:
                value = _unwrap_secret(json.loads(value))
            except json.JSONDecodeError:
                problems.append(f"{path}: expected {_describe(hint)}, JSON-encoded (provider configuration), "
                                f"got {value!r}")
                return
            if value is None:
                return
            provider = False
    if origin in (list, collections.abc.Sequence):
        if not isinstance(value, list):
            problems.append(f"{path}: expected a list, got {type(value).__name__}")
            return
        for i, item in enumerate(value):
            _check_value(typing.get_args(hint)[0], item, f"{path}[{i}]", problems, provider)
    elif origin in (dict, collections.abc.Mapping):
        if not isinstance(value, dict):
            problems.append(f"{path}: expected a mapping, got {type(value).__name__}")
            return
        for key, item in value.items():
            _check_value(typing.get_args(hint)[1], item, f"{path}.{key}", problems, provider)
    elif isinstance(hint, type) and ptypes.is_input_type(hint):
        _check_object(hint, value, path, problems, provider)
    elif hint is str and not isinstance(value, str):
        problems.append(f"{path}: expected a string, got {type(value).__name__} {value!r}")
    elif hint is bool and not isinstance(value, bool):
        problems.append(f"{path}: expected a boolean, got {type(value).__name__} {value!r}")
    elif hint is int and (isinstance(value, bool) or not isinstance(value, (int, float)) or float(value) != int(value)):
        problems.append(f"{path}: expected an integer, got {type(value).__name__} {value!r}")
    elif hint is float and (isinstance(value, bool) or not isinstance(value, (int, float))):
        problems.append(f"{path}: expected a number, got {type(value).__name__} {value!r}")


def _describe(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin in (list, collections.abc.Sequence):
        return "a list"
    if origin in (dict, collections.abc.Mapping) or (isinstance(hint, type) and ptypes.is_input_type(hint)):
        return "an object"
    return {bool: "a boolean", int: "an integer", float: "a number"}.get(hint, str(hint))


def _strip_input(hint: Any) -> Any:
    """`Input[T]` is `Union[T, Awaitable[T], Output[T]]` (plus Optional): keep T."""
    while typing.get_origin(hint) is typing.Union:
        members = [a for a in typing.get_args(hint) if a is not type(None)
                   and typing.get_origin(a) is not collections.abc.Awaitable and typing.get_origin(a) is not Output
                   and a is not Output and not (isinstance(a, type) and issubclass(a, dict) and a is not dict)]
        members = [m for m in members if not _is_typed_dict(m)]
        if len(members) != 1:
            return members[0] if members else Any
        hint = members[0]
    return hint


def _is_typed_dict(hint: Any) -> bool:
    return isinstance(hint, type) and hasattr(hint, "__total__") and hasattr(hint, "__annotations__")


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def find_unresolved(value: Any, path: str = "") -> list[str]:
    """Paths whose value came from an Output the mocks never resolved, or from `str(output)`."""
    value = _unwrap_secret(value)
    if isinstance(value, str):
        if UNRESOLVED in value:
            source = value[value.index(UNRESOLVED) + len(UNRESOLVED):].split(">", 1)[0]
            return [f"{path}: built from an Output the mocks never resolved ({source})"]
        if OUTPUT_STR in value:
            return [f"{path or '(value)'}: an Output was formatted into a string (str(), f-string or format()): "
                    "the engine gets Pulumi's warning text instead of the value; use .apply or Output.format"]
        return []
    if isinstance(value, dict):
        return [p for k, v in sorted(value.items()) for p in find_unresolved(v, _join(path, k))]
    if isinstance(value, list):
        return [p for i, v in enumerate(value) for p in find_unresolved(v, f"{path}[{i}]")]
    return []
