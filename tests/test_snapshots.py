"""Golden synth output of every stack, so an infrastructure change shows as a reviewable diff.

Refresh after an intended change:  python -m ops synth --all --out tests/snapshots
"""

from __future__ import annotations

import filecmp
import json
import subprocess
import sys
from pathlib import Path

import pytest

from ops import synth
from ops.runner import Recording
from tests.conftest import ROOT, recording

SNAPSHOTS = ROOT / "tests" / "snapshots"


@pytest.mark.parametrize("stack", ["prod", "staging", "local"])
def test_synth_matches_the_committed_snapshot(tmp_path: Path, stack: str) -> None:
    synth.write(recording(stack), tmp_path / stack)
    diff = filecmp.dircmp(tmp_path / stack, SNAPSHOTS / stack)
    problems: list[str] = []

    def walk(d: filecmp.dircmp, prefix: str) -> None:
        problems.extend(f"{prefix}{n}: differs" for n in d.diff_files)
        problems.extend(f"{prefix}{n}: only in new synth" for n in d.left_only)
        problems.extend(f"{prefix}{n}: only in snapshot" for n in d.right_only)
        for name, sub in d.subdirs.items():
            walk(sub, f"{prefix}{name}/")

    walk(diff, "")
    assert not problems, "snapshot out of date (python -m ops synth --all --out tests/snapshots):\n" + "\n".join(problems)


def test_no_secret_reaches_synth_output(tmp_path: Path) -> None:
    rec = recording("prod")
    synth.write(rec, tmp_path / "prod")
    text = "".join(p.read_text() for p in (tmp_path / "prod").rglob("*") if p.is_file())
    leaked = [v for v in rec.secret_values if len(v) >= 8 and v in text]
    assert not leaked
    assert "[secret]" in text


def test_cli_synth_is_byte_identical_and_honours_the_secrets_file(tmp_path: Path) -> None:
    secrets = {sid: json.dumps({"jwt_secret": "j" * 40, "jwt_refresh_secret": "r" * 40, "encryption_key": "e" * 32,
                                "secret_key": "sk_live_abcdefgh", "webhook_secret": "whsec_abcdefgh",
                                "api_key": "sk-openai-abcdefgh", "dsn": "https://k@sentry.example/1",
                                "url": "smtp://user:pass@smtp.example:587",
                                "username": "deploy-bot", "password": "ghp_" + "t" * 36,
                                "alert_webhook_url": "https://hooks.example/a",
                                "passphrase": "backup-passphrase-" + "p" * 24})
               for sid in recording("staging").env.secrets.values()}
    (tmp_path / "s.json").write_text(json.dumps(secrets))
    cmd = [sys.executable, "-m", "ops", "synth", "staging", "--secrets-file", str(tmp_path / "s.json"), "--out"]
    for out in ("a", "b"):
        subprocess.run([*cmd, str(tmp_path / out)], cwd=ROOT, check=True, capture_output=True)
    assert not filecmp.dircmp(tmp_path / "a", tmp_path / "b").diff_files
    text = (tmp_path / "a" / "resources.json").read_text()
    assert "sk_live_abcdefgh" not in text and '"envs": "[secret]"' in text
    # The environment is reviewed in the summary, from the model: names and sources, never values.
    assert "`STRIPE_SECRET_KEY` (secret stripe.secret_key)" in (tmp_path / "a" / "summary.md").read_text()


def test_cli_refuses_invalid_config_with_exit_2_and_writes_nothing(tmp_path: Path) -> None:
    stack = ROOT / "Pulumi.broken-test.yaml"
    stack.write_text((ROOT / "Pulumi.staging.yaml").read_text().replace("t3.large", "huge"))
    try:
        result = subprocess.run([sys.executable, "-m", "ops", "synth", "broken-test", "--out", str(tmp_path / "o")],
                                cwd=ROOT, capture_output=True, text=True)
    finally:
        stack.unlink()
    assert result.returncode == 2
    assert "Pulumi.broken-test.yaml: host.instance_type" in result.stderr
    assert not (tmp_path / "o").exists()


def test_docs_are_generated_from_the_models() -> None:
    from ops import docs

    assert docs.PATH.read_text() == docs.render(), "stale: python -m ops docs"


def test_secure_config_values_become_redacted_placeholders(tmp_path: Path) -> None:
    import yaml

    from ops.runner import run_stack

    doc = yaml.safe_load((ROOT / "Pulumi.prod.yaml").read_text())
    doc["config"]["my-saas-chat:host"]["ssh_private_key"] = {"secure": "v1:c2VjcmV0IHRoYXQgY2Fubm90IGJlIGRlY3J5cHRlZA=="}
    path = tmp_path / "Pulumi.prod.yaml"
    path.write_text(yaml.safe_dump(doc))
    rec = run_stack("prod", path=path)
    wait = next(r for r in rec.resources.values() if r.type == "command:remote:Command")
    assert "secure-config-placeholder:host.ssh_private_key" in json.dumps(wait.inputs)
    synth.write(rec, tmp_path / "out")
    text = (tmp_path / "out" / "resources.json").read_text()
    assert "secure-config-placeholder" not in text and "v1:c2Vj" not in text


def test_an_image_change_replaces_only_that_service_start_first(tmp_path: Path) -> None:
    import yaml

    from ops.runner import run_stack

    doc = yaml.safe_load((ROOT / "Pulumi.prod.yaml").read_text())
    doc["config"]["my-saas-chat:services"]["chat-service"]["image"] = {"tag": "2026.11.26-0a1b2c3"}
    path = tmp_path / "Pulumi.prod.yaml"
    path.write_text(yaml.safe_dump(doc))
    before, after = recording("prod"), run_stack("prod", path=path)
    def inputs(rec: Recording, urn: str) -> str:
        return json.dumps(rec.resources[urn].inputs, sort_keys=True)

    changed = sorted(u.rsplit("::", 1)[1] for u in before.resources if inputs(before, u) != inputs(after, u))
    assert changed == ["chat-service", "chat-service-image", "chat-service-release"]
    # The release command (migrations) is replaced, so it runs again, in the new image: its trigger
    # is the image digest, and `triggers` replaces a command on change.
    urn = next(u for u in before.resources if u.endswith("::chat-service-release"))
    assert before.resources[urn].inputs["triggers"] != after.resources[urn].inputs["triggers"]
    assert "triggers[*]" in after.resources[urn].replace_on_changes
    container = next(r for r in after.resources.values() if r.name == "chat-service" and r.custom)
    # The container's image id changes, which Docker can only apply by replacement. Without
    # deleteBeforeReplace Pulumi creates the new one first; wait=True holds `up` until it is
    # healthy; only then is the old one deleted. A fixed name would make the create collide.
    assert not container.delete_before_replace and "name" not in container.inputs and container.inputs["wait"] is True
    assert container.dependencies == before.resources[container.urn].dependencies


def test_cli_refuses_an_incomplete_secrets_file_with_exit_2(tmp_path: Path) -> None:
    (tmp_path / "s.json").write_text(json.dumps({"staging/my-saas-chat/stripe": {"secret_key": "x"}}))
    result = subprocess.run([sys.executable, "-m", "ops", "synth", "staging", "--secrets-file", str(tmp_path / "s.json"),
                             "--out", str(tmp_path / "o")], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 2
    assert "staging/my-saas-chat/stripe.webhook_secret: missing" in result.stderr
    assert "staging/my-saas-chat/openai: missing" in result.stderr
    # staging generates `app` (generated_secrets): the program writes it, a secrets file need not hold it.
    assert "staging/my-saas-chat/app" not in result.stderr
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("stack", ["prod", "staging", "local"])
def test_no_input_depends_on_where_the_checkout_lives(tmp_path: Path, stack: str) -> None:
    # An absolute path of this checkout in an input (a build context, a file source) would make every
    # `up` from another directory (CI, a laptop) a change, and the snapshots differ per machine.
    synth.write(recording(stack), tmp_path / stack)
    leaks = [str(path.relative_to(tmp_path)) for path in (tmp_path / stack).rglob("*")
             if path.is_file() and str(ROOT) in path.read_text(errors="replace")]
    assert not leaks, f"{ROOT} appears in: {', '.join(leaks)}"
