"""A second `up` with unchanged config plans nothing: every input is already in its read-back form.

The normalisation functions are checked against the outputs of the Go code they mirror (values
from the providers' own tests and Go's documented formats); then every recorded input of every
resource in every stack is checked against `components.canonical.READ_BACK`.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from components.canonical import (
    READ_BACK,
    canonical_cpus,
    canonical_duration,
    go_duration,
    nano_cpus_string,
    parse_go_duration,
)
from ops.runner import Recording
from ops.strict import SECRET_SIG
from render.cloud_init import DAEMON_JSON


@pytest.mark.parametrize(("nano", "text"), [
    # kreuzwerker/terraform-provider-docker v4.5.0 internal/provider/helpers_test.go
    (10**9, "1.0"), (1_500_000_000, "1.5"), (2 * 10**9, "2.0"), (2_250_000_000, "2.25"),
    (500_000_000, "0.5"), (250_000_000, "0.25"),
    # the bugs of strings.Count(str, "0") == 9 and FloatString's rounding
    (10 * 10**9, "10."), (20 * 10**9, "20."), (50_000_000, "0.1"), (10_000_000, "0.0"),
])
def test_cpus_read_back_like_the_provider(nano: int, text: str) -> None:
    assert nano_cpus_string(nano) == text


@pytest.mark.parametrize("cpus", [10, 20, 0.05, 0.01, 1e-10])
def test_cpus_that_cannot_round_trip_are_refused(cpus: float) -> None:
    with pytest.raises(ValueError, match=r"read back|nano-CPUs"):
        canonical_cpus(cpus)


@pytest.mark.parametrize(("cpus", "text"), [(1, "1.0"), (1.0, "1.0"), (0.5, "0.5"), (2.25, "2.25"), (0.123, "0.123"),
                                            (12, "12.0")])
def test_cpus_are_emitted_in_read_back_form(cpus: float, text: str) -> None:
    assert canonical_cpus(cpus) == text


@pytest.mark.parametrize(("text", "canonical"), [
    # Go's time.Duration.String()
    ("10s", "10s"), ("60s", "1m0s"), ("90s", "1m30s"), ("1m30s", "1m30s"), ("2m", "2m0s"), ("500ms", "500ms"),
    ("1500ms", "1.5s"), ("1h", "1h0m0s"), ("3600s", "1h0m0s"), ("0s", "0s"), ("1.5s", "1.5s"), ("100us", "100µs"),
    ("1h2m3.5s", "1h2m3.5s"), ("7ns", "7ns"),
])
def test_durations_read_back_like_go(text: str, canonical: str) -> None:
    assert canonical_duration(text) == canonical
    assert go_duration(parse_go_duration(canonical)) == canonical


@pytest.mark.parametrize("text", ["", "10", "1m30", "-5s", "5 s", "1d"])
def test_invalid_durations_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_go_duration(text)


def _leaves(value: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(value, dict) and SECRET_SIG in value:
        yield from _leaves(value.get("value"), path)
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _leaves(item, f"{path}.{key}" if path else key)
    elif isinstance(value, list):
        for item in value:
            yield from _leaves(item, f"{path}[]")
    else:
        yield path, value


def test_every_recorded_input_is_in_its_read_back_form(rec: Recording) -> None:
    problems = []
    for reg in rec.resources.values():
        if not reg.custom:
            continue
        if reg.type not in READ_BACK:
            problems.append(f"{reg.type}: not in components/canonical.py READ_BACK (say how its provider reads it back)")
            continue
        table = READ_BACK[reg.type]
        for path, value in _leaves(reg.inputs):
            if path in table and table[path](value) != value:
                problems.append(f"{reg.name}: {path}: {value!r} is read back as {table[path](value)!r}")
    assert not problems, "\n".join(problems)


def test_container_limits_and_logs_read_back_unchanged(rec: Recording) -> None:
    """memory_swap unset reads back as 2x memory (moby daemon_unix.go adaptContainerSettings), and the
    daemon merges daemon.json's log-opts into a container's (moby daemon/logs.go mergeAndVerifyLogConfig);
    log_opts is ForceNew, so a container must already carry the daemon's values."""
    daemon_opts = DAEMON_JSON["log-opts"]
    assert isinstance(daemon_opts, dict)
    for reg in rec.resources.values():
        if reg.type != "docker:index/container:Container" or reg.inputs.get("start") is False:
            continue
        i = reg.inputs
        assert "memory" in i and i.get("memorySwap") == i["memory"], reg.name
        assert i.get("logDriver") == DAEMON_JSON["log-driver"], reg.name
        assert {k: i["logOpts"].get(k) for k in daemon_opts} == daemon_opts, reg.name

