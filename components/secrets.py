"""Application secrets by reference: `SecretRef(secret, key)` -> a Pulumi secret Output.

With `aws-secretsmanager` each logical secret is one JSON document in Secrets Manager, read once
per `up`; the value never touches config files or git. With `generated` (the local stack only) a
random value stands in, so a laptop needs no AWS account.
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


@dataclass
class SecretStoreArgs:
    env: Environment


class SecretStore(pulumi.ComponentResource):
    def __init__(self, name: str, args: SecretStoreArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("my-saas-chat:secrets:SecretStore", name, None, opts)
        self._name, self._env = name, args.env
        self._documents: dict[str, pulumi.Output[dict[str, str]]] = {}
        self._generated: dict[tuple[str, str], pulumi.Output[str]] = {}
        self._values: dict[tuple[str, str], pulumi.Output[str]] = {}
        refs = args.env.secret_refs()
        for ref in refs:
            self.value(ref)
        self.register_outputs({"secrets": sorted({ref.secret for ref in refs})})

    def value(self, ref: SecretRef) -> pulumi.Output[str]:
        if (ref.secret, ref.key) not in self._values:
            self._values[(ref.secret, ref.key)] = self._lookup(ref)
        return self._values[(ref.secret, ref.key)]

    def _lookup(self, ref: SecretRef) -> pulumi.Output[str]:
        if self._env.secrets_backend == "generated":
            if (ref.secret, ref.key) not in self._generated:
                password = random.RandomPassword(f"{self._name}-{ref.secret}-{ref.key}", length=40, special=False,
                                                 opts=pulumi.ResourceOptions(parent=self))
                self._generated[(ref.secret, ref.key)] = password.result
            return pulumi.Output.secret(self._generated[(ref.secret, ref.key)])
        secret_id = self._env.secrets[ref.secret]
        if ref.secret not in self._documents:
            version = aws.secretsmanager.get_secret_version_output(
                secret_id=secret_id, opts=pulumi.InvokeOutputOptions(parent=self))
            self._documents[ref.secret] = version.secret_string.apply(functools.partial(_document, secret_id))
        value = self._documents[ref.secret].apply(functools.partial(_key, secret_id, key=ref.key))
        return pulumi.Output.secret(value)


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
