"""A failing test leaves no process behind: servers run in a process group that is stopped whole."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from tests.conftest import server_group


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_a_servers_children_are_stopped_when_the_test_fails(tmp_path: Path) -> None:
    # Like rabbitmq-server: a wrapper script whose real server is a child that ignores SIGTERM.
    script = "trap '' TERM; sh -c \"trap '' TERM; echo \\$\\$ > child; exec sleep 300\" & wait"
    with pytest.raises(RuntimeError), server_group(["sh", "-c", script], grace=1, cwd=tmp_path) as proc:
        deadline = time.monotonic() + 10
        while not (tmp_path / "child").exists() or not (tmp_path / "child").read_text().strip():
            assert time.monotonic() < deadline
            time.sleep(0.05)
        raise RuntimeError("the test failed")
    child = int((tmp_path / "child").read_text())
    assert proc.poll() is not None
    deadline = time.monotonic() + 5
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(child)
