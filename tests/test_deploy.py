"""The deploy driver through the real Automation API, up to the process boundary.

A fake `pulumi` (tests/fake_pulumi/pulumi) on PATH answers what the SDK runs, records each
invocation and plays queued outcomes and engine events; verification runs against local HTTP stubs
that turn unhealthy on cue.
"""

from __future__ import annotations

import json
import os
import sys
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from ops import deploy
from tests.conftest import COUNTS, ROOT

FAKE = ROOT / "tests" / "fake_pulumi"
URN = "urn:pulumi:prod::my-saas-chat::"


@pytest.fixture
def fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("PATH", f"{FAKE}:{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_PULUMI_PYTHON", sys.executable)
    monkeypatch.setenv("FAKE_PULUMI_DIR", str(tmp_path))
    monkeypatch.setenv("PULUMI_SKIP_UPDATE_CHECK", "true")
    return tmp_path


def queue(fake: Path, **outcomes: list[dict[str, Any]]) -> None:
    (fake / "scenario.json").write_text(json.dumps(outcomes))


def calls(fake: Path) -> list[list[str]]:
    """What the SDK ran, without the --non-interactive it puts first on every command."""
    path = fake / "calls.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    return [[a for a in json.loads(line)["argv"] if a != "--non-interactive"] for line in lines]


def history(fake: Path, *tags: str) -> None:
    """Earlier successful releases, oldest first."""
    entries = [{"kind": "update", "startTime": "2026-11-20T10:00:00.000Z", "endTime": "2026-11-20T10:05:00.000Z",
                "message": f"release {t}", "environment": {"git.head": "abc1234def"}, "result": "succeeded",
                "version": i + 1, "config": {deploy.IMAGE_TAG_KEY: {"value": t, "secret": False}}}
               for i, t in enumerate(tags)]
    (fake / "state.json").write_text(json.dumps({"config": {}, "history": entries}))


@pytest.fixture
def endpoint() -> Iterator[tuple[str, dict[str, int]]]:
    """A stand-in for the public endpoint: answers `status["code"]` on every path."""
    status = {"code": 200, "hits": 0}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            status["hits"] += 1
            self.send_response(status["code"])
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}", status
    finally:
        server.shutdown()
        server.server_close()


def step(op: str, name: str, typ: str = "docker:index/container:Container", parent: str = "AppService::chat-service",
         diffs: list[str] | None = None) -> dict[str, Any]:
    urn = f"{URN}{typ}::{name}"
    state = {"type": typ, "urn": urn, "parent": f"{URN}my-saas-chat:service:{parent}"}
    return {"resourcePreEvent": {"metadata": {"op": op, "urn": urn, "type": typ, "provider": "", "old": state,
                                              "new": state, "diffs": diffs or [], "keys": diffs or []}}}


def test_preview_is_a_pull_request_comment(fake: Path) -> None:
    queue(fake, preview=[{"result": "succeeded", "changes": {"replace": 2, "same": 40}, "events": [
        step("create-replacement", "chat-service", diffs=["image"]), step("replace", "chat-service", diffs=["image"]),
        step("delete-replaced", "postgres", parent="Postgres::postgres", diffs=["labels"]),
        step("create-replacement", "postgres", parent="Postgres::postgres", diffs=["labels"]),
        step("same", "redis", parent="Redis::redis")]}])
    text = deploy.preview("prod")
    assert "2 to replace" in text and "same" not in text
    assert "- replace `Container` chat-service (create-first) because of `image`" in text
    assert "- replace `Container` postgres (delete-first) because of `labels`" in text
    assert [c[0] for c in calls(fake) if c[0] == "preview"] == ["preview"]
    queue(fake, preview=[{"result": "succeeded", "changes": {"same": 42}}])
    data = json.loads(deploy.preview("prod", as_json=True))
    assert data == {"stack": "prod", "changes": {}, "resources": []}


def test_a_verified_release_records_its_tag_and_commit(fake: Path, endpoint: tuple[str, dict[str, int]]) -> None:
    url, status = endpoint
    lines: list[str] = []
    assert deploy.up("prod", image_tag="2026.11.26-aaaaaaa", base_url=url, echo=lines.append, deadline=5) == deploy.OK
    invoked = calls(fake)
    assert ["config", "set", deploy.IMAGE_TAG_KEY, "--plaintext", "--stack", "prod", "--",
            "2026.11.26-aaaaaaa"] in invoked
    up = next(c for c in invoked if c[0] == "up")
    assert up[:3] == ["up", "--yes", "--skip-preview"]
    assert up[up.index("--message") + 1].startswith("release 2026.11.26-aaaaaaa @ ")
    assert [line.split(":")[0] for line in lines] == ["validate", "up 2026.11.26-aaaaaaa", "verify"]
    assert status["hits"] >= len(deploy.verification_urls(deploy.validate("prod"), url))
    [release] = deploy.releases("prod")
    assert (release.version, release.image_tag, release.result) == (1, "2026.11.26-aaaaaaa", "succeeded")


def test_a_release_that_fails_verification_is_rolled_back(fake: Path, endpoint: tuple[str, dict[str, int]],
                                                           record_property: Callable[[str, object], None]) -> None:
    url, status = endpoint
    history(fake, "2026.11.20-0000001", "2026.11.24-3f9c2ab")
    status["code"] = 503
    lines: list[str] = []
    code = deploy.up("prod", image_tag="2026.11.26-bbbbbbb", base_url=url, echo=lines.append, deadline=1.5)
    ups = [c for c in calls(fake) if c[0] == "up"]
    counts = json.dumps({"verification_requests": status["hits"], "answered": status["code"], "ups": len(ups),
                         "exit_code": code, "phases": [line.split(":")[0] for line in lines]})
    record_property(COUNTS, counts)
    assert code == deploy.VERIFY_FAILED, counts
    assert status["hits"] >= len(deploy.verification_urls(deploy.validate("prod"), url)), counts
    assert len(ups) == 2, counts
    assert ups[1][ups[1].index("--message") + 1].startswith("rollback to 2026.11.24-3f9c2ab")
    sets = [c[-1] for c in calls(fake) if c[:2] == ["config", "set"]]
    assert sets == ["2026.11.26-bbbbbbb", "2026.11.24-3f9c2ab"]
    assert any(line.startswith("verify failed") and "/healthz: 503" in line for line in lines)


def test_a_failed_release_with_nothing_earlier_is_not_rolled_back(fake: Path, endpoint: tuple[str, dict[str, int]]) -> None:
    url, status = endpoint
    status["code"] = 502
    assert deploy.up("prod", image_tag="2026.11.26-ccccccc", base_url=url, echo=lambda _: None,
                     deadline=1) == deploy.VERIFY_FAILED
    assert len([c for c in calls(fake) if c[0] == "up"]) == 1


@pytest.mark.parametrize(("outcome", "code", "message"), [
    ("locked", deploy.LOCKED, "locked by another update"),
    ("failed", deploy.ENGINE_FAILED, "error: update failed"),
    ("not-logged-in", deploy.NO_LOGIN, "pulumi login"),
])
def test_engine_failures_end_with_one_line_and_their_exit_code(fake: Path, outcome: str, code: int, message: str) -> None:
    queue(fake, up=[{"result": outcome}])
    with pytest.raises(deploy.DeployError) as error:
        deploy.up("prod", image_tag="2026.11.26-ddddddd", echo=lambda _: None, deadline=1)
    assert error.value.code == code and message in str(error.value) and "\n" not in str(error.value)


def test_a_failed_migration_reports_its_exit_code_and_last_log_lines_and_is_rolled_back(
        fake: Path, endpoint: tuple[str, dict[str, int]]) -> None:
    """The engine reports the release command's failure as a diagnostic on its resource (the text
    pulumi-command returns, components/container.py release_script); the driver keeps it below its
    one line. No verification (the old containers never stopped serving), but the failed tag does
    not stay the stack's desired state: an update back to the previous good release follows."""
    url, status = endpoint
    history(fake, "2026.11.24-3f9c2ab")
    urn = f"{URN}my-saas-chat:service:AppService$command:remote:Command::billing-service-release"
    message = ("exit status 3: running \"log=$(mktemp) ...\":\nrelease command of billing-service (npx prisma migrate "
               "deploy) failed with exit code 3; last 20 log lines:\nmigration 0030_step applied\n"
               "Error: P3018 migration 0031_add_index failed to apply\n")
    queue(fake, up=[{"result": "failed", "events": [
        step("create-replacement", "billing-service-release", typ="command:remote:Command",
             parent="AppService::billing-service", diffs=["triggers"]),
        {"diagnosticEvent": {"urn": urn, "message": message, "color": "never", "severity": "error"}},
        {"diagnosticEvent": {"message": "update failed", "color": "never", "severity": "error"}}]}])
    with pytest.raises(deploy.DeployError) as error:
        deploy.up("prod", image_tag="2026.11.26-eeeeeee", base_url=url, echo=lambda _: None, deadline=1)
    text = str(error.value)
    assert error.value.code == deploy.ENGINE_FAILED
    lines = text.splitlines()
    assert lines[0].startswith("stack prod: ") and lines[0].endswith("error: update failed")
    assert lines[1] == '  billing-service-release: exit status 3: running "log=$(mktemp) ...":'
    assert "    release command of billing-service (npx prisma migrate deploy) failed with exit code 3; " \
           "last 20 log lines:" in lines
    assert lines[-2] == "    Error: P3018 migration 0031_add_index failed to apply"
    assert lines[-1] == "rolled back to 2026.11.24-3f9c2ab (release 1)"
    ups = [c for c in calls(fake) if c[0] == "up"]
    assert status["hits"] == 0 and len(ups) == 2
    assert ups[1][ups[1].index("--message") + 1] == \
        "rollback to 2026.11.24-3f9c2ab (release 1) after 2026.11.26-eeeeeee failed to update"
    assert [c[-1] for c in calls(fake) if c[:2] == ["config", "set"]] == ["2026.11.26-eeeeeee", "2026.11.24-3f9c2ab"]


def test_a_failed_update_with_nothing_earlier_leaves_one_line(fake: Path) -> None:
    queue(fake, up=[{"result": "failed"}])
    with pytest.raises(deploy.DeployError) as error:
        deploy.up("prod", image_tag="2026.11.26-fffffff", echo=lambda _: None, deadline=1)
    assert error.value.code == deploy.ENGINE_FAILED and "rolled back" not in str(error.value)
    assert len([c for c in calls(fake) if c[0] == "up"]) == 1


@pytest.mark.parametrize("tag", ["latest", "LATEST", "main", " "])
def test_a_mutable_tag_is_refused_before_any_engine_call(fake: Path, tag: str) -> None:
    with pytest.raises(deploy.DeployError) as error:
        deploy.up("prod", image_tag=tag)
    assert error.value.code == deploy.REFUSED and calls(fake) == []


def test_invalid_config_is_refused_before_any_engine_call(fake: Path) -> None:
    with pytest.raises(deploy.DeployError) as error:
        deploy.up("prod", image_tag="bad tag!")
    assert error.value.code == deploy.REFUSED and "image_tag" in str(error.value) and calls(fake) == []


def test_rollback_to_an_unknown_release_lists_the_releases(fake: Path) -> None:
    history(fake, "2026.11.20-0000001", "2026.11.24-3f9c2ab")
    with pytest.raises(deploy.DeployError) as error:
        deploy.rollback("prod", to=7)
    assert error.value.code == deploy.REFUSED
    assert "1 (2026.11.20-0000001, succeeded)" in str(error.value) and "2 (2026.11.24-3f9c2ab" in str(error.value)


def test_rollback_goes_to_the_previous_good_release(fake: Path, endpoint: tuple[str, dict[str, int]]) -> None:
    url, _ = endpoint
    history(fake, "2026.11.20-0000001", "2026.11.24-3f9c2ab")
    assert deploy.rollback("prod", base_url=url, echo=lambda _: None, deadline=3) == deploy.OK
    assert [c[-1] for c in calls(fake) if c[:2] == ["config", "set"]] == ["2026.11.20-0000001"]


def test_drift_is_reported_and_exits_non_zero(fake: Path) -> None:
    queue(fake, preview=[{"result": "succeeded", "changes": {"update": 1, "same": 9},
                          "events": [step("update", "redis", parent="Redis::redis", diffs=["restart"])]}])
    lines: list[str] = []
    assert deploy.drift("prod", echo=lines.append) == deploy.DRIFT
    assert lines[0] == "prod: drift: 1 update" and "update" in lines[1] and "redis" in lines[1]
    assert [c[0] for c in calls(fake) if c[0] in ("refresh", "preview")] == ["refresh", "preview"]
    queue(fake, preview=[{"result": "succeeded", "changes": {"same": 10}}])
    assert deploy.drift("prod", echo=lambda _: None) == deploy.OK


def test_destroying_prod_needs_confirmation(fake: Path) -> None:
    with pytest.raises(deploy.DeployError) as error:
        deploy.destroy("prod")
    assert error.value.code == deploy.REFUSED and calls(fake) == []
    assert deploy.destroy("prod", confirm_prod=True, echo=lambda _: None) == deploy.OK
    assert any(c[0] == "destroy" for c in calls(fake))


def test_ctrl_c_cancels_the_update(fake: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupted(self: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(deploy.auto.Stack, "up", interrupted)
    lines: list[str] = []
    assert deploy.up("prod", image_tag="2026.11.26-eeeeeee", echo=lines.append) == deploy.CANCELLED
    assert [c[0] for c in calls(fake) if c[0] == "cancel"] == ["cancel"]


def test_verification_targets_the_gateway_and_every_routed_service() -> None:
    env = deploy.validate("prod")
    urls = deploy.verification_urls(env, "https://example.test")
    assert urls[0] == "https://example.test/healthz"
    # One gateway-owned path per routed service (render/nginx.py health_routes, which the renderer
    # serves): frontend's "/" + "/api/health" and api-gateway's "/api" + "/health" were one URL.
    routed = {f"https://example.test/healthz/{name}" for name, s in env.services.items() if s.routes}
    assert set(urls) == {"https://example.test/healthz"} | routed and len(urls) == len(routed) + 1
    assert deploy.verification_deadline(env) == max(s.deploy_timeout_seconds for s in env.services.values())


def test_the_cli_exits_with_the_documented_code_and_one_line(fake: Path) -> None:
    from typer.testing import CliRunner

    from ops.cli import app

    result = CliRunner().invoke(app, ["deploy", "up", "prod", "--image-tag", "latest"])
    assert result.exit_code == deploy.REFUSED
    assert "mutable" in result.output and len(result.output.strip().splitlines()) == 1
    result = CliRunner().invoke(app, ["deploy", "destroy", "prod"])
    assert result.exit_code == deploy.REFUSED and "--confirm-prod" in result.output
    history(fake, "2026.11.20-0000001")
    result = CliRunner().invoke(app, ["deploy", "releases", "prod", "--json"])
    assert result.exit_code == 0 and json.loads(result.output)[0]["image_tag"] == "2026.11.20-0000001"
