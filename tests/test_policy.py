"""The policy pack: every rule bites on a violating resource and spares a compliant one, both built
through the real SDK classes under the strict mocks; the pack registers exactly what
`python -m ops policy` applies; the engine's own analyzer code runs the rules as the runner does."""

from __future__ import annotations

import json
import runpy
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pulumi
import pulumi_aws as aws
import pulumi_docker as docker
import pulumi_policy
import pulumi_policy.policy as policy_sdk
import pytest
import yaml
from google.protobuf import struct_pb2
from pulumi.runtime.proto import analyzer_pb2
from pulumi_policy.deserialize import deserialize_properties as plain_deserialize

from config import ConfigError
from ops import policy as checker
from ops.runner import run_stack
from policy import rules
from tests.conftest import ROOT, recording
from tests.test_strict_mocks import run_monitor

HEX = "a" * 64


def provider() -> docker.Provider:
    return docker.Provider("p", host="unix:///var/run/docker.sock")


def container(name: str, p: docker.Provider, *, labels: dict[str, str] | None = None, **overrides: Any) -> docker.Container:
    """A container that passes every container rule; `overrides` break one."""
    kwargs: dict[str, Any] = dict(
        image=f"sha256:{HEX}", user="1001:1001", memory=256, memory_swap=256, read_only=True,
        capabilities=docker.ContainerCapabilitiesArgs(drops=["ALL"]), security_opts=["no-new-privileges:true"],
        log_driver="json-file", log_opts={"max-size": "10m", "max-file": "5"},
        healthcheck=docker.ContainerHealthcheckArgs(tests=["CMD", "true"]))
    kwargs.update(overrides)
    label_args = [docker.ContainerLabelArgs(label=k, value=v)
                  for k, v in sorted({"com.mysaaschat.service": name, **(labels or {})}.items())]
    return docker.Container(name, labels=label_args, opts=pulumi.ResourceOptions(provider=p), **kwargs)


PROTECT = pulumi.ResourceOptions(protect=True)


def bucket(name: str, *, skip: str = "", public: bool = False, protect: bool = True) -> aws.s3.Bucket:
    """A bucket with every companion the S3 rules ask for, less `skip`."""
    b = aws.s3.Bucket(name, bucket=f"mysaaschat-{name}", object_lock_enabled=skip != "lock-at-creation",
                      opts=pulumi.ResourceOptions(protect=protect))
    if skip not in ("lock", "lock-at-creation"):
        aws.s3.BucketObjectLockConfiguration(f"{name}-lock", bucket=b.id, rule=aws.s3.BucketObjectLockConfigurationRuleArgs(
            default_retention=aws.s3.BucketObjectLockConfigurationRuleDefaultRetentionArgs(mode="GOVERNANCE", days=30)))
    if skip != "encryption":
        aws.s3.BucketServerSideEncryptionConfiguration(f"{name}-sse", bucket=b.id, rules=[
            aws.s3.BucketServerSideEncryptionConfigurationRuleArgs(
                apply_server_side_encryption_by_default=aws.s3.BucketServerSideEncryptionConfigurationRuleApplyServerSideEncryptionByDefaultArgs(
                    sse_algorithm="aws:kms"))])
    if skip != "versioning":
        aws.s3.BucketVersioning(f"{name}-versioning", bucket=b.id, versioning_configuration=aws.s3.
                                BucketVersioningVersioningConfigurationArgs(status="Enabled"))
    aws.s3.BucketPublicAccessBlock(f"{name}-pab", bucket=b.id, block_public_acls=True, block_public_policy=not public,
                                   ignore_public_acls=True, restrict_public_buckets=not public)
    if skip != "tls":
        aws.s3.BucketPolicy(f"{name}-policy", bucket=b.id, policy=b.arn.apply(lambda arn: json.dumps({
            "Version": "2012-10-17", "Statement": [{
                "Effect": "Deny", "Principal": "*", "Action": "s3:*", "Resource": [arn, f"{arn}/*"],
                "Condition": {"Bool": {"aws:SecureTransport": "false"}}}]})))
    if skip != "lifecycle":
        aws.s3.BucketLifecycleConfiguration(f"{name}-lifecycle", bucket=b.id, rules=[
            aws.s3.BucketLifecycleConfigurationRuleArgs(
                id="expire", status="Enabled", filter=aws.s3.BucketLifecycleConfigurationRuleFilterArgs(prefix=""),
                expiration=aws.s3.BucketLifecycleConfigurationRuleExpirationArgs(days=35))])
    return b


def iam_policy(name: str, action: str, resource: str) -> aws.iam.Policy:
    return aws.iam.Policy(name, policy=json.dumps({"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": [action], "Resource": [resource]}]}))


def instance(name: str, tokens: str, encrypted: bool = True) -> aws.ec2.Instance:
    return aws.ec2.Instance(name, ami="ami-0123456789abcdef0", instance_type="t3.small",
                     metadata_options=aws.ec2.InstanceMetadataOptionsArgs(http_tokens=tokens),
                     root_block_device=aws.ec2.InstanceRootBlockDeviceArgs(encrypted=encrypted))


def ssh_group(name: str, cidrs: list[str]) -> aws.ec2.SecurityGroup:
    return aws.ec2.SecurityGroup(name, ingress=[aws.ec2.SecurityGroupIngressArgs(
        protocol="tcp", from_port=22, to_port=22, cidr_blocks=cidrs)])


def socket_volume() -> list[docker.ContainerVolumeArgs]:
    return [docker.ContainerVolumeArgs(host_path="/var/run/docker.sock", container_path="/var/run/docker.sock")]


def seed(name: str, p: docker.Provider) -> docker.Container:
    """As components/container.py volume_seed makes it: never started, no network, writable root."""
    return docker.Container(name, image=f"sha256:{HEX}", start=False, must_run=False, read_only=False, network_mode="none",
                     restart="no", capabilities=docker.ContainerCapabilitiesArgs(drops=["ALL"]),
                     security_opts=["no-new-privileges:true"],
                     labels=[docker.ContainerLabelArgs(label="com.mysaaschat.lifecycle", value="seed")],
                     opts=pulumi.ResourceOptions(provider=p))


def stateful(name: str, p: docker.Provider, volume: docker.Volume) -> docker.Container:
    return container(name, p, labels={"com.mysaaschat.lifecycle": "stateful"},
                     volumes=[docker.ContainerVolumeArgs(volume_name=volume.name, container_path="/data")])


def _containers(**cases: dict[str, Any]) -> Callable[[], object]:
    """A program with one container per case: name -> overrides."""
    def program() -> None:
        p = provider()
        for name, overrides in cases.items():
            container(name, p, **overrides)
    return program


def _program(body: Callable[[docker.Provider], object]) -> Callable[[], object]:
    return lambda: body(provider())


def _stateful_volumes(p: docker.Provider) -> None:
    for name, protect in (("ok", True), ("bad", False)):
        volume = docker.Volume(f"{name}-data", name=f"{name}-data", opts=pulumi.ResourceOptions(provider=p, protect=protect))
        stateful(f"{name}-store", p, volume)


def _scrape(p: docker.Provider) -> None:
    container("ok", p, labels={"com.mysaaschat.kind": "web"})
    container("bad", p, labels={"com.mysaaschat.kind": "web"})
    container("monitoring", p, labels={"com.mysaaschat.scrapes": "ok"})


def _backup(p: docker.Provider) -> None:
    for name in ("ok", "bad"):
        volume = docker.Volume(f"{name}-data", name=f"{name}-data", opts=pulumi.ResourceOptions(provider=p, protect=True))
        stateful(name, p, volume)
    container("backup", p, labels={"com.mysaaschat.backup-of": "ok"})


def _ports(p: docker.Provider) -> None:
    # The compliant publisher is the gateway, known by its service label (container() sets it from the name).
    container("gateway", p, ports=[docker.ContainerPortArgs(internal=8080, external=443),
                                   docker.ContainerPortArgs(internal=8081, external=80)])
    container("bad", p, ports=[docker.ContainerPortArgs(internal=3000, external=3000)])
    container("bad-gw-port", p, labels={"com.mysaaschat.service": "gateway"},
              ports=[docker.ContainerPortArgs(internal=8443, external=8443)])


def _images(p: docker.Provider) -> None:
    container("ok", p)
    container("ok-tagged", p, image="docker.io/library/postgres:15.10-alpine3.20")
    container("bad", p, image="ghcr.io/my-saas-chat/chat-service:latest")
    docker.RemoteImage("ok-image", name="ghcr.io/my-saas-chat/chat-service:2026.11.24-3f9c2ab",
                       opts=pulumi.ResourceOptions(provider=p))
    docker.RemoteImage("bad-image", name="docker.io/library/redis:alpine", opts=pulumi.ResourceOptions(provider=p))


def _s3(skip: str, **kwargs: Any) -> Callable[[], object]:
    def program() -> None:
        bucket("ok-backups")
        bucket("bad-backups", skip=skip, **kwargs)
    return program


# rule -> (program, names of the resources it must flag); every other resource must pass the rule.
CASES: dict[str, tuple[Callable[[], object], set[str]]] = {
    "container-non-root": (_containers(ok={}, bad={"user": "0:0"}, bad_nouser={"user": None}), {"bad", "bad_nouser"}),
    "container-memory-limit": (_containers(ok={}, bad={"memory_swap": 512}, bad_none={"memory": None}), {"bad", "bad_none"}),
    "container-healthcheck": (_containers(ok={}, bad={"healthcheck": None}), {"bad"}),
    "container-not-privileged": (_containers(ok={}, bad={"privileged": True}), {"bad"}),
    "container-no-host-namespaces": (_containers(ok={}, bad={"network_mode": "host"}, bad_pid={"pid_mode": "host"},
                                                 bad_ipc={"ipc_mode": "host"}), {"bad", "bad_pid", "bad_ipc"}),
    "container-capabilities": (_containers(
        ok={}, ok_bind={"capabilities": docker.ContainerCapabilitiesArgs(drops=["ALL"], adds=["NET_BIND_SERVICE"])},
        bad={"capabilities": docker.ContainerCapabilitiesArgs(drops=["ALL"], adds=["SYS_ADMIN"])},
        bad_nodrop={"capabilities": None}), {"bad", "bad_nodrop"}),
    "container-no-docker-socket": (_containers(ok={}, bad={"volumes": socket_volume()}), {"bad"}),
    "container-no-new-privileges": (_containers(ok={}, bad={"security_opts": ["seccomp=unconfined"]}), {"bad"}),
    "container-read-only-root": (_program(lambda p: (container("ok", p), seed("ok-seed", p),
                                                     container("bad", p, read_only=False))), {"bad"}),
    "image-pinned": (_program(_images), {"bad", "bad-image"}),
    "container-log-rotation": (_containers(ok={}, bad={"log_opts": {"max-size": "10m"}},
                                           bad_driver={"log_driver": None, "log_opts": None}), {"bad", "bad_driver"}),
    "container-secret-env": (_program(lambda p: (
        container("ok", p, envs=pulumi.Output.secret(["JWT_SECRET=from-secrets-manager", "NODE_ENV=production"])),
        container("ok_file", p, envs=["POSTGRES_PASSWORD_FILE=/run/mysaaschat/postgres-password", "PORT=3000"]),
        container("bad", p, envs=["JWT_SECRET=hunter2hunter2", "NODE_ENV=production"]))), {"bad"}),
    "ports-gateway-only": (_program(_ports), {"bad", "bad-gw-port"}),
    "protect-durable-resources": (lambda: (
        aws.ebs.Volume("ok", availability_zone="eu-west-1a", size=10, encrypted=True, opts=PROTECT),
        aws.kms.Key("ok-key", opts=PROTECT),
        aws.ebs.Volume("bad", availability_zone="eu-west-1a", size=10, encrypted=True),
        aws.kms.Key("bad-key"), bucket("bad-bucket", protect=False)), {"bad", "bad-key", "bad-bucket"}),
    "protect-stateful-volumes": (_program(_stateful_volumes), {"bad-data"}),
    "s3-encryption": (_s3("encryption"), {"bad-backups"}),
    "s3-versioning": (_s3("versioning"), {"bad-backups"}),
    "s3-public-access-block": (_s3("", public=True), {"bad-backups"}),
    "s3-tls-only": (_s3("tls"), {"bad-backups"}),
    "s3-backup-lifecycle": (_s3("lifecycle"), {"bad-backups"}),
    "s3-backup-object-lock": (lambda: (_s3("lock")(), bucket("nolock-backups", skip="lock-at-creation")),
                              {"bad-backups", "nolock-backups"}),
    "ec2-imdsv2": (lambda: (instance("ok", "required"), instance("bad", "optional")), {"bad"}),
    "ec2-encrypted-volumes": (lambda: (
        instance("ok", "required"), instance("bad", "required", encrypted=False),
        aws.ebs.Volume("ok-volume", availability_zone="eu-west-1a", size=10, encrypted=True, opts=PROTECT),
        aws.ebs.Volume("bad-volume", availability_zone="eu-west-1a", size=10, opts=PROTECT)), {"bad", "bad-volume"}),
    "ec2-no-world-ssh": (lambda: (
        ssh_group("ok", ["203.0.113.0/28"]), ssh_group("bad", ["0.0.0.0/0"]),
        aws.vpc.SecurityGroupIngressRule("bad-v6", security_group_id="sg-1", ip_protocol="tcp", from_port=22,
                                         to_port=22, cidr_ipv6="::/0"),
        aws.vpc.SecurityGroupIngressRule("ok-https", security_group_id="sg-1", ip_protocol="tcp", from_port=443,
                                         to_port=443, cidr_ipv4="0.0.0.0/0")), {"bad", "bad-v6"}),
    "iam-no-wildcard-action": (lambda: (iam_policy("ok", "s3:PutObject", "arn:aws:s3:::b/prod/*"),
                                        iam_policy("bad", "s3:*", "arn:aws:s3:::b/prod/*")), {"bad"}),
    "iam-no-wildcard-resource-write": (lambda: (iam_policy("ok", "s3:PutObject", "arn:aws:s3:::b/prod/*"),
                                                iam_policy("ok-read", "ec2:DescribeInstances", "*"),
                                                iam_policy("bad", "s3:PutObject", "*")), {"bad"}),
    "routed-service-healthcheck": (_program(lambda p: (
        container("ok", p, labels={"com.mysaaschat.kind": "web"}),
        container("bad", p, labels={"com.mysaaschat.kind": "web"}, healthcheck=None))), {"bad"}),
    "routed-service-scrape-target": (_program(_scrape), {"bad"}),
    # node-exporter's declared mounts pass; the same path writable, an undeclared one, or the declared
    # path in another container do not.
    "container-host-mounts": (_program(lambda p: (
        container("ok", p, labels={"com.mysaaschat.service": "node-exporter"}, volumes=[
            docker.ContainerVolumeArgs(host_path="/proc", container_path="/host/proc", read_only=True)]),
        container("bad", p, labels={"com.mysaaschat.service": "node-exporter"}, volumes=[
            docker.ContainerVolumeArgs(host_path="/proc", container_path="/host/proc")]),
        container("bad-etc", p, labels={"com.mysaaschat.service": "node-exporter"}, volumes=[
            docker.ContainerVolumeArgs(host_path="/etc", container_path="/host/etc", read_only=True)]),
        container("bad-other", p, labels={"com.mysaaschat.service": "auth-service"}, volumes=[
            docker.ContainerVolumeArgs(host_path="/proc", container_path="/host/proc", read_only=True)]))),
        {"bad", "bad-etc", "bad-other"}),
    "store-backup": (_program(_backup), {"bad"}),
}


def test_every_rule_has_a_case() -> None:
    assert set(CASES) == {r.name for r in rules.RULES}


@pytest.mark.parametrize("name", sorted(CASES))
def test_rule_flags_the_violating_resource_and_spares_the_compliant_one(name: str) -> None:
    program, expected = CASES[name]
    monitor = run_monitor(program)
    assert monitor.strict.violations == []  # real SDK classes, inputs the provider accepts
    rule = rules.rule(name)
    violations = [v for v in checker.evaluate(monitor.registrations.values()) if v.rule == name]
    flagged = {v.urn.rsplit("::", 1)[1] for v in violations}
    assert flagged == expected, [v.render() for v in violations]
    assert all(v.level == rule.level and v.message.endswith(f"Fix: {rule.fix}") for v in violations)


def test_levels() -> None:
    advisory = {r.name for r in rules.RULES if r.level == pulumi_policy.EnforcementLevel.ADVISORY}
    assert advisory == {"container-read-only-root", "store-backup"}
    assert "ADVISORY until" in rules.rule("store-backup").description


@pytest.mark.parametrize("stack", ["prod", "staging", "local"])
def test_every_stack_passes_every_mandatory_rule(stack: str) -> None:
    from tests.conftest import recording

    violations = checker.evaluate(recording(stack).resources.values())
    assert [v.render() for v in violations if v.mandatory] == []
    # Until backups exist, the advisory stack rule flags every store; monitoring scrapes every routed service.
    assert {v.rule for v in violations} == {"store-backup"}


class _Capture:
    packs: list[dict[str, Any]] = []

    def __init__(self, **kwargs: Any) -> None:
        _Capture.packs.append(kwargs)


def load_pack(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Start the pack as the engine does: its Python host runs `python -u -m pulumi.policy
    <engine address> <pack directory>` in the pack's virtualenv (pulumi/pulumi
    sdk/python/dist/pulumi-analyzer-policy-python), and `pulumi.policy` runs the directory's
    `__main__.py` with `runpy.run_path`. `PolicyPack` is replaced so it hands back the policies
    instead of serving them."""
    _Capture.packs = []
    monkeypatch.setattr(pulumi_policy, "PolicyPack", _Capture)
    monkeypatch.setattr(policy_sdk, "deserialize_properties", policy_sdk.deserialize_properties)  # restored after
    monkeypatch.chdir(ROOT / "policy")
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p != str(ROOT)])
    monkeypatch.setattr(sys, "argv", ["pulumi.policy", "127.0.0.1:0", str(ROOT / "policy")])
    for module in [m for m in sys.modules if m == "policy" or m.startswith("policy.")]:
        monkeypatch.delitem(sys.modules, module)
    with pytest.raises(SystemExit) as exit_:
        runpy.run_module("pulumi.policy", run_name="__main__", alter_sys=True)
    assert exit_.value.code == 0, "the pack failed to load (the error is logged above)"
    [pack] = _Capture.packs
    return pack


def test_the_pack_registers_exactly_the_rules_the_runner_applies(monkeypatch: pytest.MonkeyPatch) -> None:
    pack = load_pack(monkeypatch)
    assert pack["name"] == "my-saas-chat"
    assert pack["enforcement_level"] == pulumi_policy.EnforcementLevel.MANDATORY
    registered = [(p.name, p.enforcement_level, type(p).__name__) for p in pack["policies"]]
    applied = [(r.name, r.level, "StackValidationPolicy" if r.stack else "ResourceValidationPolicy") for r in rules.RULES]
    assert registered == applied
    assert [name for name, _, _ in registered] == checker.rules_applied()
    config = yaml.safe_load((ROOT / "policy" / "PulumiPolicy.yaml").read_text())
    assert config["runtime"]["name"] == "python" and config["runtime"]["options"]["virtualenv"] == "../venv"


def _servicer(policies: list[Any]) -> Any:
    return policy_sdk._PolicyAnalyzerServicer("my-saas-chat", "1.0.0", policies, pulumi_policy.EnforcementLevel.MANDATORY)


def _analyze(servicer: Any, reg: Any) -> list[str]:
    """What the engine does per resource: Analyze with the wire properties, secrets marked."""
    props = struct_pb2.Struct()
    props.update(reg.inputs)
    request = analyzer_pb2.AnalyzeRequest(urn=reg.urn, type=reg.type, name=reg.name, properties=props,
                                          options=analyzer_pb2.AnalyzerResourceOptions(protect=reg.protect))
    return [d.policyName for d in servicer.Analyze(request, None).diagnostics]


def test_the_engine_path_sees_what_the_runner_sees(monkeypatch: pytest.MonkeyPatch) -> None:
    """pulumi-policy's own Analyze, fed the recorded wire inputs of prod, agrees with the runner:
    secret env values stay recognisable (the pack's preserve_secretness), a plain one is flagged."""
    from tests.conftest import recording

    pack = load_pack(monkeypatch)
    servicer = _servicer(pack["policies"])
    rec = recording("prod")
    chat = next(r for r in rec.resources.values() if r.type == rules.CONTAINER and r.name == "chat-service")
    assert _analyze(servicer, chat) == []
    for reg in rec.resources.values():
        if reg.custom:
            assert _analyze(servicer, reg) == [], reg.urn

    def program() -> None:
        container("bad", provider(), envs=["JWT_SECRET=hunter2hunter2"], user="0:0")
    [bad] = [r for r in run_monitor(program).registrations.values() if r.type == rules.CONTAINER]
    assert sorted(_analyze(servicer, bad)) == ["container-non-root", "container-secret-env"]

    # Without the pack's fix, pulumi-policy hands validators secrets as plain strings.
    monkeypatch.setattr(policy_sdk, "deserialize_properties", plain_deserialize)
    assert "container-secret-env" in _analyze(_servicer(rules.policies()), chat)


def _stack_file(tmp_path: Path, stack: str, edit: Callable[[dict[str, Any]], None]) -> Path:
    doc = yaml.safe_load((ROOT / f"Pulumi.{stack}.yaml").read_text())
    edit(doc["config"])
    path = tmp_path / f"Pulumi.{stack}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def test_a_root_service_fails_the_model_naming_it(tmp_path: Path) -> None:
    from config.load import CATALOG_FILE

    catalog = yaml.safe_load(CATALOG_FILE.read_text())
    catalog["services"]["chat-service"]["user"] = "0:0"
    path = tmp_path / "catalog.yaml"
    path.write_text(yaml.safe_dump(catalog))
    with pytest.raises(ConfigError, match=r"chat-service\.user"):
        run_stack("prod", catalog=path)


def test_ssh_opened_to_the_world_fails_the_model_naming_it(tmp_path: Path) -> None:
    def edit(config: dict[str, Any]) -> None:
        config["my-saas-chat:host"]["admin_cidrs"] = ["0.0.0.0/0"]
    with pytest.raises(ConfigError, match=r"host\.admin_cidrs\.0: 0\.0\.0\.0/0 opens SSH"):
        run_stack("prod", path=_stack_file(tmp_path, "prod", edit))


def test_a_plain_credential_in_env_fails_the_model_naming_it(tmp_path: Path) -> None:
    """A service's `envs` is one secret Output as soon as one variable is, so the policy cannot see a
    plain value beside secret ones: the model refuses credential-looking names in `env` instead."""
    def edit(config: dict[str, Any]) -> None:
        config.setdefault("my-saas-chat:env", {})["SOME_API_TOKEN"] = "plain-value-123"
    with pytest.raises(ConfigError, match=r"env\.SOME_API_TOKEN: looks like a credential"):
        run_stack("staging", path=_stack_file(tmp_path, "staging", edit))
    assert rules.secret_looking("SOME_API_TOKEN") and not rules.secret_looking("POSTGRES_PASSWORD_FILE")


def test_the_command_prints_each_violation_and_fails_on_a_mandatory_one(monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from ops.cli import app

    result = CliRunner().invoke(app, ["policy", "prod"])
    assert result.exit_code == 0, result.output
    resources = len(recording("prod").resources)
    assert f"prod: {resources} resources, {len(rules.RULES)} rules: 0 mandatory, 4 advisory violations" in result.output
    # Postgres is backed up (its scheduler carries com.mysaaschat.backup-of=postgres); Redis is not yet.
    assert "ADVISORY store-backup: urn:pulumi:prod::my-saas-chat::my-saas-chat:data:Redis$" in result.output
    assert "ADVISORY store-backup: urn:pulumi:prod::my-saas-chat::my-saas-chat:data:Postgres$" not in result.output

    real = checker.evaluate

    def with_root(registrations: Any) -> list[checker.Violation]:  # a service given user 0:0 past the model
        regs = list(registrations)
        chat = next(r for r in regs if r.name == "chat-service" and r.type == rules.CONTAINER)
        chat.inputs = {**chat.inputs, "user": "0:0"}
        return real(regs)
    monkeypatch.setattr(checker, "evaluate", with_root)
    result = CliRunner().invoke(app, ["policy", "staging"])
    assert result.exit_code == 1
    assert ("MANDATORY container-non-root: urn:pulumi:staging::my-saas-chat::my-saas-chat:service:AppService$"
            "docker:index/container:Container::chat-service\n  user '0:0' is root (uid or gid 0)\n"
            f"  fix: {rules.rule('container-non-root').fix}") in result.output
    assert "1 mandatory" in result.output


def test_at_preview_an_unknown_label_does_not_stop_the_other_rules(monkeypatch: pytest.MonkeyPatch) -> None:
    """On a first preview the image id and the digest label are unknown (the engine sends its
    unknown sentinel); every rule that does not need them still runs."""
    from pulumi_policy.proxy import UNKNOWN_STRING_VALUE

    from tests.conftest import recording

    pack = load_pack(monkeypatch)
    servicer = _servicer(pack["policies"])
    chat = next(r for r in recording("prod").resources.values() if r.type == rules.CONTAINER and r.name == "chat-service")

    def at_preview(**changes: Any) -> Any:
        labels = [{**lbl, "value": UNKNOWN_STRING_VALUE} if lbl["label"] == "com.mysaaschat.image-digest" else lbl
                  for lbl in chat.inputs["labels"]]
        return type(chat)(**{**chat.__dict__, "inputs": {**chat.inputs, "image": UNKNOWN_STRING_VALUE, "labels": labels,
                                                          **changes}})

    assert _analyze(servicer, at_preview()) == ["image-pinned"]  # "can't run during preview", advisory
    assert sorted(_analyze(servicer, at_preview(user="0:0", readOnly=False))) == [
        "container-non-root", "container-read-only-root", "image-pinned"]
