"""`python -m ops secrets check|rotate`: the stack's Secrets Manager documents, seen from the operator's side.

boto3 with the operator's credentials; `AWS_ENDPOINT_URL` (honoured by boto3 itself) points it at
another endpoint (the tests use a moto server). No value is ever printed.
"""

from __future__ import annotations

import json
import secrets as random_source
import string
from dataclasses import dataclass
from typing import Any

from config import Environment, load_environment, read_stack_file
from config.model import MANAGED_SECRETS

# What `rotate` generates: what pulumi_random makes for the program (letters and digits, no special
# characters: the values go into URLs and config files).
ALPHABET = string.ascii_letters + string.digits
# Stores that keep the password in their data directory: the new container's password file alone
# does not change the password the store checks (the images apply it at first initialisation only).
PASSWORD_IN_DATA = {"postgres_password": "postgres (ALTER ROLE ... PASSWORD in psql first)",
                    "rabbitmq_password": "rabbitmq (rabbitmqctl change_password first)",
                    # Grafana applies GF_SECURITY_ADMIN_PASSWORD when it creates its database only.
                    "admin_password": "grafana (grafana cli admin reset-admin-password first)"}


class SecretsError(Exception):
    """A refused request: the message says what and why; exit code 2 (input) or 1 (AWS)."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Check:
    secret_id: str
    key: str
    managed: bool
    status: str  # "ok", "missing secret", "missing key", "not JSON", "denied: ..."

    @property
    def ok(self) -> bool:
        return self.status == "ok"


def environment(stack: str) -> Environment:
    from ops import runner

    path = runner.stack_file(stack)
    if not path.exists():
        raise SecretsError(f"no stack file {path.name} (stacks: {', '.join(runner.stacks())})", 2)
    return load_environment(read_stack_file(path, stack))


def expected(env: Environment) -> dict[str, tuple[str, tuple[str, ...], bool]]:
    """Secret id -> (logical name, keys, managed) for every document the stack reads or writes."""
    keys: dict[str, set[str]] = {}
    for ref in env.secret_refs():
        keys.setdefault(ref.secret, set()).add(ref.key)
    managed = env.managed_secrets()
    for logical, names in managed.items():
        keys.setdefault(logical, set()).update(names)
    return {env.secret_id(logical): (logical, tuple(sorted(k)), logical in managed)
            for logical, k in sorted(keys.items())}


def _client(env: Environment, region: str | None) -> Any:
    import boto3

    return boto3.client("secretsmanager", region_name=region or "us-east-1")


def _error_code(error: Exception) -> str:
    response = getattr(error, "response", None) or {}
    return str(response.get("Error", {}).get("Code", type(error).__name__))


def check(env: Environment, region: str | None, client: Any = None) -> list[Check]:
    """Every referenced id and key, and whether it exists. Reads values (to see the keys), prints none."""
    if env.secrets_backend == "generated":
        raise SecretsError(f"stack {env.stack} uses secrets_backend generated: nothing is stored in Secrets Manager", 2)
    client = client or _client(env, region)
    found: list[Check] = []
    for secret_id, (_logical, keys, managed) in expected(env).items():
        try:
            text = client.get_secret_value(SecretId=secret_id).get("SecretString")
        except Exception as error:  # botocore's ClientError, or a connection error
            code = _error_code(error)
            status = "missing secret" if code == "ResourceNotFoundException" else f"error: {code}"
            found.extend(Check(secret_id, key, managed, status) for key in keys)
            continue
        try:
            doc = json.loads(text or "")
        except json.JSONDecodeError:
            doc = None
        if not isinstance(doc, dict):
            found.extend(Check(secret_id, key, managed, "not a JSON object") for key in keys)
            continue
        found.extend(Check(secret_id, key, managed, "ok" if key in doc else "missing key") for key in keys)
    return found


@dataclass(frozen=True)
class Rotation:
    secret_id: str
    keys: tuple[str, ...]
    version_id: str
    replaced: list[str]
    warnings: list[str]


def rotate(env: Environment, name: str, region: str | None, *, key: str | None = None, length: int = 32,
           client: Any = None) -> Rotation:
    """Write a new version of a managed secret (new random values for one key or all) and say which
    containers the next `up` replaces. Referenced secrets belong to the business: refused."""
    if env.secrets_backend == "generated":
        raise SecretsError(f"stack {env.stack} uses secrets_backend generated: its values live in Pulumi state; "
                           "replace the RandomPassword instead (pulumi up --replace <urn>)", 2)
    managed = env.managed_secrets()
    if name not in managed:
        owned = ", ".join(sorted(managed))
        raise SecretsError(f"{name!r} is not a secret the program manages (managed: {owned}); a referenced secret "
                           "belongs to its owner: write its new version where it is issued", 2)
    if key is not None and key not in managed[name]:
        raise SecretsError(f"managed secret {name!r} has no key {key!r} (it has: {', '.join(managed[name])})", 2)
    client = client or _client(env, region)
    secret_id = env.secret_id(name)
    try:
        current = json.loads(client.get_secret_value(SecretId=secret_id)["SecretString"])
    except Exception as error:
        raise SecretsError(f"cannot read {secret_id}: {_error_code(error)} (has the stack had its first up?)") from None
    keys = (key,) if key else managed[name]
    if name == "backup" and "passphrase" in keys:
        # pgBackRest encrypts the repository with it: a new one makes every existing backup unreadable.
        raise SecretsError("the backup passphrase encrypts the existing repository; rotating it needs a new "
                           "stanza (a new repository), not a new secret version", 2)
    document = {**current, **{k: "".join(random_source.choice(ALPHABET) for _ in range(length)) for k in keys}}
    try:
        answer = client.put_secret_value(SecretId=secret_id, SecretString=json.dumps(document, sort_keys=True))
    except Exception as error:
        raise SecretsError(f"cannot write {secret_id}: {_error_code(error)}") from None
    replaced = sorted({c for k in keys for c in env.consumers(name, k)})
    warnings = [f"{PASSWORD_IN_DATA[k]}: it keeps the password in its data, a new file alone does not change it"
                for k in keys if k in PASSWORD_IN_DATA]
    return Rotation(secret_id, keys, str(answer.get("VersionId", "")), replaced, warnings)


def managed_names() -> list[str]:
    return sorted(MANAGED_SECRETS)
