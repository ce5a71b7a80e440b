"""Secrets Manager as the one source: `SecretStore.value(SecretRef(secret, key))` -> a Pulumi secret Output.

Two kinds of secrets, one API:

- **referenced** (the business owns them: Stripe, OpenAI, SMTP, Sentry, the registry token, the TLS
  pair): one JSON document per logical secret, written by people, read once per `up`;
- **managed** (the environment owns them: store passwords, Grafana's admin password, the backup
  passphrase, and the catalog secrets a stack lists in `generated_secrets`, e.g. the JWT keys):
  generated with `pulumi_random`, written by the program to a Secrets Manager secret it manages
  (encrypted with a customer-managed KMS key that rotates yearly, a 30-day recovery window,
  `protect`ed), and read back from Secrets Manager like a referenced one, so a version written by
  `python -m ops secrets rotate` reaches the containers at the next `up`.

With `generated` (the local stack only) every value is a `RandomPassword` and nothing touches AWS.
Every value stays a secret Output end to end.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass

import pulumi
import pulumi_aws as aws
import pulumi_random as random

from config import Environment
from config.model import SecretRef

# Days Secrets Manager keeps a deleted managed secret before it is gone (7 to 30; 30 is the most).
RECOVERY_WINDOW_DAYS = 30
# A label of our own on the version the program writes. Secrets Manager deprecates (and may delete) a
# version that has no staging label left; after two rotations the program's version would have none,
# the provider would find it gone at refresh (terraform-provider-aws secretsmanager/secret_version.go,
# resourceSecretVersionRead: not found -> removed from state) and the next `up` would write the
# original value back as AWSCURRENT, undoing the rotations. With this label it is never deprecated.
GENERATED_STAGE = "MYSAASCHAT_GENERATED"


# The stores' passwords keep the length they were generated with (a new length replaces the password).
_LENGTHS = {"stores": 32}


@dataclass
class SecretStoreArgs:
    env: Environment


class SecretStore(pulumi.ComponentResource):
    key: aws.kms.Key | None = None

    def __init__(self, name: str, args: SecretStoreArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("my-saas-chat:secrets:SecretStore", name, None, opts)
        self._name, self._env = name, args.env
        self._documents: dict[str, pulumi.Output[dict[str, str]]] = {}
        self._generated: dict[tuple[str, str], pulumi.Output[str]] = {}
        self._values: dict[tuple[str, str], pulumi.Output[str]] = {}
        self._managed = args.env.managed_secrets()
        self.secrets: dict[str, aws.secretsmanager.Secret] = {}
        if args.env.secrets_backend == "aws-secretsmanager":
            self._write_managed()
        refs = args.env.secret_refs()
        for ref in refs:
            self.value(ref)
        self.register_outputs({"referenced": sorted({ref.secret for ref in refs} - set(self._managed)),
                               "managed": {logical: secret.name for logical, secret in self.secrets.items()}})

    def value(self, ref: SecretRef) -> pulumi.Output[str]:
        """The value of one key of one logical secret, always a secret Output."""
        if (ref.secret, ref.key) not in self._values:
            if ref.secret in self._managed and ref.key not in self._managed[ref.secret]:
                raise ValueError(f"managed secret {ref.secret!r} has no key {ref.key!r} "
                                 f"(it has: {', '.join(self._managed[ref.secret])})")
            self._values[(ref.secret, ref.key)] = self._lookup(ref)
        return self._values[(ref.secret, ref.key)]

    def _password(self, logical: str, key: str) -> pulumi.Output[str]:
        if (logical, key) not in self._generated:
            # The stores' passwords were made inside each store's component before Secrets Manager
            # held them; the alias keeps that state (and the running stores' passwords) on `local`.
            store = key.removesuffix("_password") if logical == "stores" else ""
            aliases = [pulumi.Alias(name=f"{store}-password", parent=_store_urn(store))] if store else None
            name = f"{store}-password" if store else f"{self._name}-{logical}-{key}"
            password = random.RandomPassword(name, length=_LENGTHS.get(logical, 40) if key != "passphrase" else 64, special=False,
                                             opts=pulumi.ResourceOptions(parent=self, aliases=aliases))
            self._generated[(logical, key)] = password.result
        return self._generated[(logical, key)]

    def _write_managed(self) -> None:
        env = self._env
        tags = {"Project": "my-saas-chat", "Stack": env.stack}
        self.key = aws.kms.Key(
            f"{self._name}-key", description=f"my-saas-chat {env.stack}: the secrets the program manages",
            enable_key_rotation=True, deletion_window_in_days=30, tags=tags,
            opts=pulumi.ResourceOptions(parent=self, protect=True))
        for logical, keys in self._managed.items():
            secret = aws.secretsmanager.Secret(
                f"{self._name}-{logical}", name=env.secret_id(logical), kms_key_id=self.key.arn,
                description=f"my-saas-chat {env.stack}: {logical} (generated by the program; rotate with "
                            "python -m ops secrets rotate)",
                recovery_window_in_days=RECOVERY_WINDOW_DAYS, tags={**tags, "ManagedBy": "pulumi"},
                opts=pulumi.ResourceOptions(parent=self, protect=True))
            values: dict[str, pulumi.Input[str]] = {key: self._password(logical, key) for key in keys}
            document: pulumi.Output[str] = pulumi.Output.secret(pulumi.Output.json_dumps(values))
            version = aws.secretsmanager.SecretVersion(
                f"{self._name}-{logical}-initial", secret_id=secret.arn,
                secret_string=document, version_stages=["AWSCURRENT", GENERATED_STAGE],
                opts=pulumi.ResourceOptions(
                    parent=self,
                    # A rotation moves AWSCURRENT to its new version; the program must not move it back.
                    ignore_changes=["versionStages"]))
            self.secrets[logical] = secret
            # Read back like any referenced secret, once this version exists: a rotated value wins.
            read = aws.secretsmanager.get_secret_version_output(
                secret_id=version.secret_id, opts=pulumi.InvokeOutputOptions(parent=self, depends_on=[version]))
            self._documents[logical] = read.secret_string.apply(functools.partial(_document, env.secret_id(logical)))

    def _lookup(self, ref: SecretRef) -> pulumi.Output[str]:
        if self._env.secrets_backend == "generated":
            return pulumi.Output.secret(self._password(ref.secret, ref.key))
        secret_id = self._env.secret_id(ref.secret)
        if ref.secret not in self._documents:
            version = aws.secretsmanager.get_secret_version_output(
                secret_id=secret_id, opts=pulumi.InvokeOutputOptions(parent=self))
            self._documents[ref.secret] = version.secret_string.apply(functools.partial(_document, secret_id))
        value = self._documents[ref.secret].apply(functools.partial(_key, secret_id, key=ref.key))
        return pulumi.Output.secret(value)


def _store_urn(store: str) -> str:
    kind = {"postgres": "Postgres", "redis": "Redis", "rabbitmq": "RabbitMQ"}[store]
    return f"urn:pulumi:{pulumi.get_stack()}::{pulumi.get_project()}::my-saas-chat:data:{kind}::{store}"


def _document(secret_id: str, text: str) -> dict[str, str]:
    try:
        doc = json.loads(text)
    except (TypeError, json.JSONDecodeError):
        raise ValueError(f"secret {secret_id} is not a JSON object of key -> value") from None
    if not isinstance(doc, dict):
        raise ValueError(f"secret {secret_id} is not a JSON object of key -> value")
    return doc


def _key(secret_id: str, doc: dict[str, str], key: str) -> str:
    if key not in doc:
        raise ValueError(f"secret {secret_id} has no key {key!r} (it has: {', '.join(sorted(doc)) or 'none'})")
    return str(doc[key])
