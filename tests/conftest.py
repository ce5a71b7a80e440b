"""Shared fixtures: stacks synthesized once per session under the strict mocks, and tool lookup."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ops.runner import Recording, run_stack  # noqa: E402

_CACHE: dict[str, Recording] = {}


def recording(stack: str) -> Recording:
    if stack not in _CACHE:
        _CACHE[stack] = run_stack(stack)
    return _CACHE[stack]


@pytest.fixture(params=["prod", "staging", "local"])
def rec(request: pytest.FixtureRequest) -> Recording:
    return recording(request.param)


def require_tool(name: str) -> str:
    """The path of a real tool. In CI (CI=true) a missing tool fails the test; it never skips."""
    path = shutil.which(name) or next((str(p) for p in (Path(sys.executable).parent / name,) if p.exists()), None)
    if path is None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{name} is not installed; .ci/run must install it")
        pytest.skip(f"{name} is not installed (CI installs it)")
    return path


def require_root(why: str) -> None:
    """Tests that need root: in CI (CI=true, run as root) not being root fails the test; it never skips."""
    if os.geteuid() != 0:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{why} (CI runs as root)")
        pytest.skip(why)


@contextlib.contextmanager
def server_group(argv: list[str], grace: float = 10, **kwargs: Any) -> Iterator[subprocess.Popen[bytes]]:
    """A real server in a process group of its own; the whole group is stopped on the way out,
    whatever happened: a wrapper script's children (RabbitMQ's beam.smp, epmd) never outlive the test."""
    kwargs.setdefault("stdout", subprocess.DEVNULL)
    kwargs.setdefault("stderr", subprocess.DEVNULL)
    proc = subprocess.Popen(argv, start_new_session=True, **kwargs)
    try:
        yield proc
    finally:
        stop_group(proc, grace)


def stop_group(proc: subprocess.Popen[bytes], grace: float = 10) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and _group_alive(proc.pid):
            proc.poll()
            time.sleep(0.05)
        if not _group_alive(proc.pid):
            break
    proc.wait(grace)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


# --- Hygiene: a test run leaves no file in the working tree ------------------------------------

_CACHES = ("__pycache__/", ".pytest_cache/", ".mypy_cache/", ".ruff_cache/")


def working_tree_files() -> set[str] | None:
    """Untracked and ignored paths of the working tree (None outside a git checkout)."""
    result = subprocess.run(["git", "status", "--porcelain", "--untracked-files=all", "--ignored"], cwd=ROOT,
                            capture_output=True, text=True)
    if result.returncode != 0:
        return None
    return {line[3:] for line in result.stdout.splitlines()
            if line[:2] in ("??", "!!") and not any(c in line or line.endswith(c[:-1]) for c in _CACHES)}


def pytest_sessionstart(session: pytest.Session) -> None:
    if not hasattr(session.config, "workerinput"):  # the xdist controller, or a plain run
        session.config.stash[_BEFORE] = working_tree_files()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    before = session.config.stash.get(_BEFORE, None)
    after = working_tree_files() if before is not None else None
    if before is None or after is None:
        return
    new = sorted(after - before)
    if new:
        sys.stderr.write("the test run left files in the working tree:\n" + "".join(f"  {p}\n" for p in new))
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


_BEFORE = pytest.StashKey[set[str] | None]()


# --- Counts: the zero-downtime and rollback tests report their request counts in the test output ---

COUNTS = "counts"  # a test calls record_property(COUNTS, {...}); xdist carries it to the controller


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    lines = [f"{report.nodeid}: {value}"
             for reports in terminalreporter.stats.values() for report in reports
             if getattr(report, "when", None) == "call"
             for name, value in getattr(report, "user_properties", []) if name == COUNTS]
    if lines:
        terminalreporter.write_sep("-", "request counts")
        for line in sorted(lines):
            terminalreporter.write_line(line)


# --- a local AWS (moto over real HTTP), for the tests of the operator's AWS commands ----------------

@pytest.fixture(scope="module")
def aws(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """One moto server per test module; the environment that points boto3 at it."""
    from tests.moto_server import aws_env, moto_server

    with moto_server(tmp_path_factory.mktemp("moto")) as url:
        yield aws_env(url)


@pytest.fixture
def client(aws: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Any:
    """A Secrets Manager client on that server, which starts each test empty."""
    import boto3

    from tests.moto_server import UNSET

    for k, v in aws.items():
        monkeypatch.setenv(k, v)
    for k in UNSET:
        monkeypatch.delenv(k, raising=False)
    sm = boto3.client("secretsmanager", region_name="eu-west-1")
    for page in sm.get_paginator("list_secrets").paginate():
        for s in page["SecretList"]:
            sm.delete_secret(SecretId=s["ARN"], ForceDeleteWithoutRecovery=True)
    return sm
