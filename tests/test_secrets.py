"""Synth never prints a secret, in any form: redaction follows secretness, not known values as text."""

from __future__ import annotations

import base64
import itertools
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus

import pulumi
import pulumi_docker as docker
import pulumi_random as random
import pulumi_tls as tls
import pytest

from ops import synth
from ops.mocks import StrictMocks
from ops.runner import Recording, placeholder_documents, run_stack
from ops.strict import is_secret
from tests.conftest import ROOT
from tests.test_strict_mocks import local_provider, run_monitor

# Every length the old text matching got wrong (under 4 characters it printed them as is), and
# characters that URL, JSON and base64 encodings all change. None of them occurs in synth output
# by chance, so finding one, in any form, is a leak.
SECRETS = ["\u00a7", "\u00b5\u00b6", "\u2603\u2713\u2602", "Zq8#x/Q%", "K9&v+x=L/m" * 4, 'p@ss/w:rd%"\\']


def forms(secret: str) -> dict[str, str]:
    raw = secret.encode()
    return {"raw": secret, "quote": quote(secret), "quote safe=''": quote(secret, safe=""),
            "quote_plus": quote_plus(secret), "json": json.dumps(secret), "json inner": json.dumps(secret)[1:-1],
            "json, not ascii": json.dumps(secret, ensure_ascii=False)[1:-1],
            # Provider config travels as JSON text (registryAuth): a value inside is encoded twice.
            "json in json": json.dumps(json.dumps(secret))[2:-2],
            "json in json, not ascii": json.dumps(json.dumps(secret, ensure_ascii=False), ensure_ascii=False)[2:-2],
            "base64": base64.b64encode(raw).decode(), "base64 unpadded": base64.b64encode(raw).decode().rstrip("="),
            "urlsafe base64": base64.urlsafe_b64encode(raw).decode().rstrip("=")}


def leaks(outputs: dict[str, str], secrets: list[str]) -> list[str]:
    return [f"{name}: secret #{SECRETS.index(s) if s in SECRETS else '?'} as {form}"
            for s in secrets for form, text in forms(s).items() for name, out in outputs.items() if text in out]


@pytest.fixture
def chosen_passwords(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every RandomPassword the program makes answers one of SECRETS, in turn."""
    values = itertools.cycle(SECRETS)
    monkeypatch.setattr(StrictMocks, "random_password", lambda self, name, length, h: next(values))
    yield


def secrets_file(stack: str) -> dict[str, str]:
    """Every Secrets Manager document the stack reads, every key one of SECRETS, in turn."""
    values = itertools.cycle(SECRETS)
    # The model only: `recording()` here would run (and cache, for every later test) the program
    # under the chosen passwords of the calling test.
    from config import load_environment, read_stack_file
    from ops.runner import stack_file

    env = load_environment(read_stack_file(stack_file(stack), stack))
    return {sid: json.dumps({key: next(values) for key in json.loads(doc)})
            for sid, doc in placeholder_documents(env).items()}


def reached(rec: Recording, secret: str) -> bool:
    """The secret is in what the program registered (unredacted wire inputs): the check is not vacuous."""
    text = json.dumps([r.inputs for r in rec.resources.values()], ensure_ascii=False)
    return any(form in text for form in forms(secret).values())


@pytest.mark.parametrize("stack", ["prod", "staging", "local"])
def test_secretness_alone_keeps_every_secret_out_of_synth(stack: str, chosen_passwords: None,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    # The managed secrets (store passwords, staging's generated JWT keys) go from RandomPassword into
    # a SecretVersion and back through Secrets Manager: chosen_passwords puts SECRETS on that path too.
    rec = run_stack(stack, secrets=secrets_file(stack) if stack != "local" else None)
    assert all(reached(rec, s) for s in SECRETS), [s for s in SECRETS if not reached(rec, s)]
    # Without the last-defence scan for known values: secretness alone must be enough.
    monkeypatch.setattr(synth, "check_no_leak", lambda outputs, values: None)
    outputs = synth.render(rec)
    assert not leaks(outputs, SECRETS)
    assert "[secret]" in outputs["resources.json"]
    assert all(content == "[secret]" for name, content in outputs.items()
               if name.startswith("files/") and "password" in name)


def test_the_secrets_file_never_reaches_cli_synth_output(tmp_path: Path) -> None:
    (tmp_path / "s.json").write_text(json.dumps(secrets_file("prod")))
    subprocess.run([sys.executable, "-m", "ops", "synth", "prod", "--secrets-file", str(tmp_path / "s.json"),
                    "--out", str(tmp_path / "out")], cwd=ROOT, check=True, capture_output=True)
    outputs = {str(p.relative_to(tmp_path)): p.read_text() for p in (tmp_path / "out").rglob("*") if p.is_file()}
    assert not leaks(outputs, SECRETS)


def test_outputs_the_provider_marks_secret_come_back_secret() -> None:
    def program() -> None:
        provider = local_provider()
        password = random.RandomPassword("pw", length=8)
        key = tls.PrivateKey("key", algorithm="ED25519")
        docker.Container("c", image="sha256:abc", opts=pulumi.ResourceOptions(provider=provider), envs=[
            password.result.apply(lambda p: f"PASSWORD={p}"), password.length.apply(lambda n: f"LENGTH={n}"),
            key.private_key_openssh.apply(lambda k: k.strip()), key.public_key_openssh])
    monitor = run_monitor(program)
    envs = next(r for r in monitor.registrations.values() if r.name == "c").inputs["envs"]
    assert [is_secret(e) for e in envs] == [True, False, True, False], envs
    password = next(r for r in monitor.registrations.values() if r.name == "pw")
    assert password.secret_outputs == ["bcryptHash", "result"]


def test_an_input_echoed_into_a_secret_output_is_not_taken_for_a_generated_secret() -> None:
    def program() -> None:
        docker.Network("n", name="public-network-name", opts=pulumi.ResourceOptions(
            provider=local_provider(), additional_secret_outputs=["name"]))
    monitor = run_monitor(program)
    # The output is secret (the engine marks it so), but the value came in as a plain input that the
    # program shows anyway: the last-defence scan must not call that a leak.
    assert "public-network-name" not in monitor.strict.secret_values
    assert next(r for r in monitor.registrations.values() if r.name == "n").secret_outputs == ["name"]


def test_a_secret_invoke_argument_is_recorded_secret() -> None:
    import pulumi_aws as aws

    def program() -> None:
        aws.secretsmanager.get_secret_version_output(secret_id=pulumi.Output.secret("prod/my-saas-chat/app"))
    monitor = run_monitor(program)
    invoke = next(i for i in monitor.strict.invokes if i.token.endswith(":getSecretVersion"))
    assert is_secret(invoke.args["secretId"]), invoke.args


def test_a_secret_unwrapped_by_the_program_fails_synth() -> None:
    def program() -> None:
        password = random.RandomPassword("pw", length=24)
        docker.Container("c", image="sha256:abc", opts=pulumi.ResourceOptions(provider=local_provider()),
                         envs=[pulumi.Output.unsecret(password.result).apply(lambda p: f"PASSWORD={p}")])
    monitor = run_monitor(program)
    rec = Recording("test", None, monitor.registrations, [], {}, monitor.strict.secret_values)  # type: ignore[arg-type]
    document = json.dumps(synth.resource_document(rec, synth.Redactor()))
    with pytest.raises(synth.SecretLeakError, match=r"resources\.json: a secret value appears outside a secret"):
        synth.check_no_leak({"resources.json": document}, rec.secret_values)


def test_redaction_is_whole_and_by_the_marker() -> None:
    wrapped: dict[str, Any] = {"4dabf18193072939515e22adb298388d": "1b47061264138c4ac30d75fd1eb44270",
                               "value": ["A=1", "B=x"]}
    assert synth.Redactor().tree({"envs": wrapped, "n": 2.0, "plain": "x"}) == {"envs": "[secret]", "n": 2, "plain": "x"}
