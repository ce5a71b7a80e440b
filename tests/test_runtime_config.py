"""The program reads its stack config the way the Pulumi CLI hands it over (environment variables)."""

from __future__ import annotations

import json

import pytest
import yaml
from pulumi.runtime import config as runtime_config

from config import from_pulumi_runtime, load_environment
from config.load import ConfigError
from tests.conftest import ROOT


def cli_environment(monkeypatch: pytest.MonkeyPatch, stack: str, secret_keys: list[str]) -> dict[str, str]:
    raw = yaml.safe_load((ROOT / f"Pulumi.{stack}.yaml").read_text())["config"]
    config = {k: v if isinstance(v, str) else json.dumps(v) for k, v in raw.items()}
    monkeypatch.setenv("PULUMI_CONFIG", json.dumps(config))
    monkeypatch.setenv("PULUMI_CONFIG_SECRET_KEYS", json.dumps(secret_keys))
    monkeypatch.setattr("pulumi.get_stack", lambda: stack)
    runtime_config.set_all_config({}, [])  # nothing left over from an in-process synth
    return config


def test_config_from_the_cli_environment_loads_like_the_stack_file(monkeypatch: pytest.MonkeyPatch) -> None:
    cli_environment(monkeypatch, "staging", [])
    stack_input = from_pulumi_runtime()
    assert stack_input.file == "Pulumi.staging.yaml"
    env = load_environment(stack_input)
    assert env.host.instance_type == "t3.large" and env.env["LOG_LEVEL"] == "debug"


def test_a_secret_outside_the_allowed_keys_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    cli_environment(monkeypatch, "staging", ["my-saas-chat:domain"])
    with pytest.raises(ConfigError) as raised:
        load_environment(from_pulumi_runtime())
    assert "Pulumi.staging.yaml: domain: only host.ssh_private_key may be a config secret" in str(raised.value)
