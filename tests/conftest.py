"""Shared fixtures: stacks synthesized once per session under the strict mocks, and tool lookup."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

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
