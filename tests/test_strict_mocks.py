"""The strict mocks must catch what plain mocks let through."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pulumi
import pulumi_docker as docker
import pytest

from ops.mocks import StrictMocks, StrictMonitor
from ops.runner import run_program
from ops.strict import check_inputs


def run_monitor(program: Any, stall_seconds: float = 60, timeout: float = 60) -> StrictMonitor:
    """Run a tiny program under the strict mocks; a run that hangs fails the test instead."""
    monitor = StrictMonitor(StrictMocks("test", "eu-west-1", {}))
    failure: list[BaseException] = []

    def target() -> None:
        asyncio.set_event_loop(asyncio.new_event_loop())
        try:
            run_program(monitor.strict, monitor, program, stack="test", stall_seconds=stall_seconds)
        except BaseException as exc:  # reported below, in the test's thread
            failure.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        pytest.fail(f"the program hung for {timeout:g} s without a word")
    if failure:
        raise failure[0]
    return monitor


def run(program: Any) -> StrictMocks:
    return run_monitor(program).strict


def local_provider() -> docker.Provider:
    return docker.Provider("p", host="unix:///var/run/docker.sock")


def test_misspelled_nested_key_fails() -> None:
    def program() -> None:
        provider = docker.Provider("p", host="unix:///var/run/docker.sock")
        docker.Container("c", image="sha256:abc", healthcheck={"testz": ["CMD", "true"]},  # type: ignore[call-overload]
                         opts=pulumi.ResourceOptions(provider=provider))
    violations = run(program).violations
    assert any("'c'" in v and "healthcheck.testz: unknown key" in v for v in violations), violations


def test_unresolved_output_fails() -> None:
    def program() -> None:
        provider = docker.Provider("p", host="unix:///var/run/docker.sock")
        image = docker.RemoteImage("i", name="nginx:1.27.2", opts=pulumi.ResourceOptions(provider=provider))
        # `platform` is an output the mocks never answer: plain mocks would drop this input silently.
        docker.Container("c", image=image.image_id, envs=[image.platform.apply(lambda p: f"PLATFORM={p}")],
                         opts=pulumi.ResourceOptions(provider=provider))
    violations = run(program).violations
    assert any("'c'" in v and "envs[0]" in v and "RemoteImage.platform" in v for v in violations), violations


@pytest.mark.parametrize(("inputs", "expected"), [
    ({"image": 3}, "image: expected a string"),
    ({"image": "x", "memory": "512"}, "memory: expected an integer"),
    ({"image": "x", "readOnly": "yes"}, "readOnly: expected a boolean"),
    ({"image": "x", "uploads": [{"file": "/a", "contnet": "b"}]}, "uploads[0].contnet: unknown key"),
    ({"image": "x", "labels": {"a": "b"}}, "labels: expected a list"),
    ({}, "image: required"),
])
def test_scalar_and_shape_checks(inputs: dict[str, Any], expected: str) -> None:
    problems = check_inputs("docker:index/container:Container", inputs)
    assert any(expected in p for p in problems), problems


def test_valid_inputs_pass() -> None:
    assert check_inputs("docker:index/container:Container",
                        {"image": "x", "memory": 512.0, "healthcheck": {"tests": ["CMD", "true"], "retries": 3.0}}) == []


def test_two_resources_with_one_urn_fail() -> None:
    def program() -> None:
        provider = local_provider()
        for _ in range(2):
            docker.Network("data", name="d", opts=pulumi.ResourceOptions(provider=provider))
    violations = run(program).violations
    assert any("'data'" in v and "Duplicate resource URN 'urn:pulumi:test::my-saas-chat::pulumi:pulumi:Stack$"
               "docker:index/network:Network::data'" in v for v in violations), violations


def test_a_read_and_a_registration_with_one_urn_fail() -> None:
    def program() -> None:
        provider = local_provider()
        docker.Network("data", name="d", opts=pulumi.ResourceOptions(provider=provider))
        docker.Network.get("data", "net-123", opts=pulumi.ResourceOptions(provider=provider))
    violations = run(program).violations
    assert any("'data' (read)" in v and "Duplicate resource URN" in v for v in violations), violations


def test_a_registration_after_a_read_with_one_urn_fails() -> None:
    def program() -> None:
        provider = local_provider()
        docker.Network.get("data", "net-123", opts=pulumi.ResourceOptions(provider=provider))
        docker.Network("data", name="d", opts=pulumi.ResourceOptions(provider=provider))
    monitor = run_monitor(program)
    assert [r.name for r in monitor.reads.values()] == ["data"]  # the read came first
    assert any("'data'" in v and "(read)" not in v and "Duplicate resource URN" in v
               for v in monitor.strict.violations), monitor.strict.violations


def test_reads_are_recorded_and_checked() -> None:
    def program() -> None:
        provider = local_provider()
        existing = docker.Network.get("existing", "net-123", opts=pulumi.ResourceOptions(provider=provider))
        docker.Network.get("typo", "net-456", driver=3, opts=pulumi.ResourceOptions(provider=provider))  # type: ignore[arg-type]
        docker.Container("c", image="sha256:abc", network_mode=existing.id, opts=pulumi.ResourceOptions(provider=provider))
    monitor = run_monitor(program)
    reads = {r.name: r for r in monitor.reads.values()}
    assert sorted(reads) == ["existing", "typo"] and reads["existing"].read_id == "net-123"
    assert reads["existing"].provider.endswith("pulumi:providers:docker::p")
    assert not any(r.name in reads for r in monitor.registrations.values())
    container = next(r for r in monitor.registrations.values() if r.name == "c")
    assert container.inputs["networkMode"] == "net-123"  # the read's id, as the engine answers it
    assert any("'typo' (read)" in v and "driver: expected a string" in v for v in monitor.strict.violations), \
        monitor.strict.violations


def test_reads_are_written_by_synth() -> None:
    from ops import synth
    from ops.runner import Recording

    def program() -> None:
        docker.Network.get("existing", "net-123", opts=pulumi.ResourceOptions(provider=local_provider()))
    monitor = run_monitor(program)
    rec = Recording("test", None, monitor.registrations, [], {}, set(), monitor.reads)  # type: ignore[arg-type]
    document = synth.resource_document(rec, synth.Redactor())
    assert [(r["name"], r["id"], r["type"]) for r in document["reads"]] == [
        ("existing", "net-123", "docker:index/network:Network")]
    assert all(r["name"] != "existing" for r in document["resources"])


def test_an_output_formatted_into_a_string_fails() -> None:
    def program() -> None:
        provider = local_provider()
        image = docker.RemoteImage("i", name="nginx:1.27.2", opts=pulumi.ResourceOptions(provider=provider))
        docker.Container("c", image=image.image_id, envs=[f"DIGEST={image.repo_digest}"],
                         opts=pulumi.ResourceOptions(provider=provider))
        pulumi.export("digest", f"{image.repo_digest}")
    violations = run(program).violations
    assert any("'c'" in v and "envs[0]: an Output was formatted into a string" in v for v in violations), violations
    assert any(v.startswith("stack output digest: an Output was formatted") for v in violations), violations


def test_a_name_built_from_an_output_formatted_into_a_string_fails() -> None:
    def program() -> None:
        provider = local_provider()
        image = docker.RemoteImage("i", name="nginx:1.27.2", opts=pulumi.ResourceOptions(provider=provider))
        docker.Network(f"net-{image.repo_digest}", opts=pulumi.ResourceOptions(provider=provider))
    violations = run(program).violations
    assert any(v.startswith("docker:index/network:Network (name 'net-Calling __str__") and "formatted into a string"
               in v for v in violations), violations


def test_a_resource_created_inside_apply_fails() -> None:
    def program() -> None:
        provider = local_provider()
        image = docker.RemoteImage("i", name="nginx:1.27.2", opts=pulumi.ResourceOptions(provider=provider))
        image.repo_digest.apply(lambda digest: docker.Network(
            "late", name=digest.replace("@", "-"), opts=pulumi.ResourceOptions(provider=provider)))
    violations = run(program).violations
    assert any(v.startswith("docker:index/network:Network 'late': created inside an Output.apply callback")
               for v in violations), violations
    assert not any("'i'" in v for v in violations), violations


def test_a_depends_on_cycle_fails_naming_its_resources() -> None:
    def program() -> None:
        provider = local_provider()
        later: asyncio.Future[pulumi.Resource] = asyncio.get_running_loop().create_future()
        a = docker.Network("a", name="a", opts=pulumi.ResourceOptions(
            provider=provider, depends_on=[pulumi.Output.from_input(later)]))  # type: ignore[list-item]
        b = docker.Network("b", name="b", opts=pulumi.ResourceOptions(provider=provider, depends_on=[a]))
        later.set_result(b)
    violations = run_monitor(program, timeout=30).strict.violations
    assert any("depends_on cycle: docker:index/network:Network 'a' -> docker:index/network:Network 'b' -> "
               "docker:index/network:Network 'a'" in v for v in violations), violations


def test_a_failure_beside_a_violation_is_reported_too() -> None:
    def program() -> None:
        docker.Container("c", image="sha256:abc", healthcheck={"testz": ["CMD", "true"]},  # type: ignore[call-overload]
                         opts=pulumi.ResourceOptions(provider=local_provider()))
        raise ValueError("boom")
    violations = run(program).violations
    assert any("healthcheck.testz" in v for v in violations) and "the program failed: ValueError: boom" in violations


def test_a_cycle_through_an_input_is_stopped_naming_what_never_registered() -> None:
    def program() -> None:
        provider = local_provider()
        later: asyncio.Future[pulumi.Resource] = asyncio.get_running_loop().create_future()
        a = docker.Network("a", name="a", opts=pulumi.ResourceOptions(
            provider=provider, depends_on=[pulumi.Output.from_input(later)]))  # type: ignore[list-item]
        b = docker.Network("b", name=a.name, opts=pulumi.ResourceOptions(provider=provider))  # waits for a's outputs
        later.set_result(b)
    violations = run_monitor(program, stall_seconds=1, timeout=30).strict.violations
    assert any("made no progress for 1 s" in v and "never registered: docker:index/network:Network 'a', "
               "docker:index/network:Network 'b'" in v for v in violations), violations


def test_a_wait_that_never_ends_is_stopped_naming_what_never_registered() -> None:
    def program() -> None:
        never: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        name: pulumi.Output[str] = pulumi.Output.from_input(never)  # type: ignore[arg-type]
        docker.Network("stuck", name=name, opts=pulumi.ResourceOptions(provider=local_provider()))
    violations = run_monitor(program, stall_seconds=1, timeout=30).strict.violations
    assert any("made no progress for 1 s" in v and "docker:index/network:Network 'stuck'" in v for v in violations), \
        violations


def test_provider_configuration_is_type_checked() -> None:
    def program() -> None:
        docker.Provider("p", host="unix:///var/run/docker.sock", ssh_opts=["-o", 3],  # type: ignore[list-item]
                        registry_auth=[{"address": "r", "passwrod": "x"}])  # type: ignore[list-item]
    violations = run(program).violations
    assert any("pulumi:providers:docker 'p': sshOpts[1]: expected a string" in v for v in violations), violations
    assert any("'p': registryAuth[0].passwrod: unknown key" in v for v in violations), violations


@pytest.mark.parametrize(("inputs", "expected"), [
    ({"host": "x", "sshOpts": "-o StrictHostKeyChecking=no"}, "sshOpts: expected a list, JSON-encoded"),
    ({"host": "x", "disableDockerDaemonCheck": '"yes"'}, "disableDockerDaemonCheck: expected a boolean"),
    ({"host": 3}, "host: expected a string"),
])
def test_provider_scalar_checks(inputs: dict[str, Any], expected: str) -> None:
    assert any(expected in p for p in check_inputs("pulumi:providers:docker", inputs)), check_inputs(
        "pulumi:providers:docker", inputs)


def test_valid_provider_configuration_passes() -> None:
    assert check_inputs("pulumi:providers:docker", {
        "host": "ssh://admin@198.51.100.1", "sshOpts": '["-o", "StrictHostKeyChecking=yes"]',
        "disableDockerDaemonCheck": "true", "version": "4.5.0"}) == []
