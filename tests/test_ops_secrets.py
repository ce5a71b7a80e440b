"""`python -m ops secrets check|rotate` against a real moto server over HTTP, and the managed secrets in synth."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import pytest

from config.model import MANAGED_SECRETS
from ops import secrets as sm
from ops.strict import is_secret
from tests.conftest import ROOT, recording
from tests.moto_server import UNSET


def cli(aws: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in UNSET}
    return subprocess.run([sys.executable, "-m", "ops", *args], cwd=ROOT, env={**env, **aws},
                          capture_output=True, text=True, timeout=120)


def store_everything(client: Any, stack: str, *, skip: tuple[str, str] | None = None,
                     skip_secret: str | None = None) -> dict[str, dict[str, str]]:
    env = sm.environment(stack)
    written = {}
    for secret_id, (_logical, keys, _managed) in sm.expected(env).items():
        if secret_id == skip_secret:
            continue
        doc = {k: f"VALUE-{secret_id}-{k}-Zq8x" for k in keys if (secret_id, k) != skip}
        client.create_secret(Name=secret_id, SecretString=json.dumps(doc))
        written[secret_id] = doc
    return written


def test_check_lists_every_id_and_key_and_fails_on_a_missing_one(aws: dict[str, str], client: Any) -> None:
    written = store_everything(client, "prod", skip=("prod/my-saas-chat/stripe", "webhook_secret"),
                               skip_secret="prod/my-saas-chat/grafana")
    done = cli(aws, "secrets", "check", "--stack", "prod")
    assert done.returncode == 1, done.stderr
    lines = done.stdout.splitlines()
    assert "MISSING prod/my-saas-chat/stripe webhook_secret (referenced): missing key" in lines
    assert "MISSING prod/my-saas-chat/grafana admin_password (managed): missing secret" in lines
    assert "ok      prod/my-saas-chat/stores postgres_password (managed)" in lines
    assert "ok      prod/my-saas-chat/openai api_key (referenced)" in lines
    assert lines[-1] == f"prod: {len(lines) - 1} keys, 2 missing"
    assert not any(v in done.stdout + done.stderr for doc in written.values() for v in doc.values())


def test_check_passes_when_everything_exists(aws: dict[str, str], client: Any) -> None:
    store_everything(client, "staging")
    done = cli(aws, "secrets", "check", "--stack", "staging")
    assert done.returncode == 0, done.stdout + done.stderr
    # staging generates its JWT keys: `app` is managed there.
    assert "ok      staging/my-saas-chat/app jwt_secret (managed)" in done.stdout.splitlines()


def test_rotate_writes_a_new_version_and_names_what_the_next_up_replaces(aws: dict[str, str], client: Any) -> None:
    written = store_everything(client, "prod")
    before = written["prod/my-saas-chat/stores"]
    done = cli(aws, "secrets", "rotate", "stores", "--key", "redis_password", "--stack", "prod")
    assert done.returncode == 0, done.stderr
    after = json.loads(client.get_secret_value(SecretId="prod/my-saas-chat/stores")["SecretString"])
    previous = json.loads(client.get_secret_value(SecretId="prod/my-saas-chat/stores",
                                                  VersionStage="AWSPREVIOUS")["SecretString"])
    assert previous == before
    assert after["redis_password"] != before["redis_password"] and len(after["redis_password"]) == 32
    assert {k: v for k, v in after.items() if k != "redis_password"} == \
        {k: v for k, v in before.items() if k != "redis_password"}
    users = sorted(n for n, s in recording("prod").env.services.items() if "redis" in s.uses)
    assert f"the next `up` replaces: {', '.join(sorted(['redis', *users]))}" in done.stdout
    assert after["redis_password"] not in done.stdout and before["redis_password"] not in done.stdout
    assert "warning" not in done.stdout


def test_rotating_a_store_that_keeps_its_password_in_its_data_warns(aws: dict[str, str], client: Any) -> None:
    store_everything(client, "prod")
    done = cli(aws, "secrets", "rotate", "stores", "--key", "postgres_password", "--stack", "prod")
    assert done.returncode == 0, done.stderr
    assert "warning: postgres (ALTER ROLE" in done.stdout


@pytest.mark.parametrize(("args", "message"), [
    (("stripe",), "is not a secret the program manages"),
    (("backup",), "encrypts the existing repository"),
    (("stores", "--key", "nope"), "has no key 'nope'"),
])
def test_rotate_refuses(aws: dict[str, str], client: Any, args: tuple[str, ...], message: str) -> None:
    store_everything(client, "prod")
    before = {s["Name"]: client.get_secret_value(SecretId=s["ARN"])["VersionId"]
              for s in client.list_secrets()["SecretList"]}
    done = cli(aws, "secrets", "rotate", *args, "--stack", "prod")
    assert done.returncode == 2 and message in done.stderr, done.stderr
    assert before == {s["Name"]: client.get_secret_value(SecretId=s["ARN"])["VersionId"]
                      for s in client.list_secrets()["SecretList"]}


def test_rotate_before_the_first_up_and_unknown_stack(aws: dict[str, str], client: Any) -> None:
    done = cli(aws, "secrets", "rotate", "stores", "--stack", "prod")
    assert done.returncode == 1 and "cannot read prod/my-saas-chat/stores: ResourceNotFoundException" in done.stderr
    done = cli(aws, "secrets", "check", "--stack", "nosuch")
    assert done.returncode == 2 and "no stack file Pulumi.nosuch.yaml" in done.stderr


# --- the program's side: managed secrets are written by it, read back, and secret end to end ---

def _registrations(stack: str, type_: str) -> list[Any]:
    return [r for r in recording(stack).resources.values() if r.type == type_]


@pytest.mark.parametrize("stack", ["prod", "staging"])
def test_every_managed_secret_is_written_encrypted_protected_and_secret(stack: str) -> None:
    env = recording(stack).env
    secrets = {r.inputs["name"]: r for r in _registrations(stack, "aws:secretsmanager/secret:Secret")}
    assert sorted(secrets) == sorted(env.secret_id(s) for s in env.managed_secrets())
    assert set(MANAGED_SECRETS) <= set(env.managed_secrets())
    (key,) = [r for r in _registrations(stack, "aws:kms/key:Key") if r.name == "secrets-key"]
    assert key.protect and key.inputs["enableKeyRotation"] is True
    for secret in secrets.values():
        assert secret.protect and secret.inputs["recoveryWindowInDays"] == 30
        assert key.urn in secret.property_dependencies["kmsKeyId"]
    for version in _registrations(stack, "aws:secretsmanager/secretVersion:SecretVersion"):
        assert is_secret(version.inputs["secretString"]), version.name
        assert "versionStages" in version.ignore_changes


def test_stores_read_their_password_back_from_secrets_manager() -> None:
    rec = recording("prod")
    reads = [i for i in rec.invokes if i.token.endswith(":getSecretVersion")
             and "prod/my-saas-chat/stores" in json.dumps(i.args)]
    assert reads, "the store passwords are not read back from Secrets Manager"
    assert not [r for r in rec.resources.values() if r.type.startswith("random:") and "data:" in r.parent]


def test_local_needs_no_aws() -> None:
    rec = recording("local")
    assert not [r for r in rec.resources.values() if r.type.startswith("aws:")]
    assert not [i for i in rec.invokes if i.token.startswith("aws:")]


def test_a_rotated_version_reaches_the_store_and_its_users_at_the_next_up(monkeypatch: pytest.MonkeyPatch) -> None:
    """What Secrets Manager answers at `up` is what the containers get: a version written by
    `ops secrets rotate` (here: the mocked read answers a rotated document) replaces the store
    and every service whose URL carries the password, and nothing else."""
    from ops.mocks import StrictMocks
    from ops.runner import run_stack
    from ops.strict import secret
    from tests.test_promises import container, password

    before = recording("prod")
    original = StrictMocks.call

    def rotated(self: StrictMocks, args: Any) -> dict[str, Any]:
        answer = original(self, args)
        if args.token.endswith(":getSecretVersion") and "prod/my-saas-chat/stores" in str(args.args["secretId"]):
            doc = json.loads(answer["secretString"]["value"])
            answer["secretString"] = secret(json.dumps({**doc, "redis_password": "RotatedRedisPassword0123456789"}))
        return answer

    monkeypatch.setattr(StrictMocks, "call", rotated)
    after = run_stack("prod")
    assert password(after, "redis") == "RotatedRedisPassword0123456789"
    assert password(after, "postgres") == password(before, "postgres")
    changed = sorted(name for name in ["postgres", "redis", "rabbitmq", *before.env.services]
                     if container(before, name).inputs != container(after, name).inputs)
    assert changed == before.env.consumers("stores", "redis_password")
