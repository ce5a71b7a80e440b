"""Every rule of the policy pack, as plain functions over what the engine sends a policy pack.

The same `Rule`s run in two places: in Pulumi (`pulumi preview --policy-pack policy`, where
`policy/__main__.py` hands `policies()` to `PolicyPack`) and without the CLI (`python -m ops policy
STACK`, where `ops/policy.py` feeds the strict-mock recording of the stack to the very same
`pulumi_policy` objects). Constructing `PolicyPack` starts a server and never returns: only the
pack's `__main__.py` does that, so this module stays importable.

What a validator sees is what the engine sends: the resource's inputs, camelCase as on the wire
(`memorySwap`, `securityOpts`), wrapped in pulumi-policy's unknown-checking proxies (Mappings and
Sequences, not dicts and lists). The engine sends secrets marked (pulumi/pulumi
sdk/go/common/resource/plugin/analyzer_plugin.go: `MarshalProperties(..., KeepSecrets: true)`), but
pulumi-policy 1.21's `Analyze` unwraps them into plain values (`deserialize_properties(...)`,
`proxy_secrets=False`), which would make "a secret-looking variable holds a secret" unverifiable.
`preserve_secretness()`, called by the pack's `__main__.py`, swaps in `engine_properties`: the same
plain values, except that a string the engine marked secret is a `SecretStr` (still a `str`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pulumi_policy import (
    EnforcementLevel,
    Policy,
    ReportViolation,
    ResourceValidationArgs,
    ResourceValidationPolicy,
    StackValidationArgs,
    StackValidationPolicy,
)
from pulumi_policy.proxy import UnknownValueError

from config.checks import MUTABLE_TAGS, secret_looking
from config.host_access import HOST_ACCESS

MANDATORY = EnforcementLevel.MANDATORY
ADVISORY = EnforcementLevel.ADVISORY
PACK = "my-saas-chat"

# The wire form of special values (pulumi/runtime/rpc.py; pulumi_policy/deserialize.py).
SIG_KEY = "4dabf18193072939515e22adb298388d"
SECRET_SIG = "1b47061264138c4ac30d75fd1eb44270"

CONTAINER = "docker:index/container:Container"
REMOTE_IMAGE = "docker:index/remoteImage:RemoteImage"
VOLUME = "docker:index/volume:Volume"
EBS_VOLUME = "aws:ebs/volume:Volume"
INSTANCE = "aws:ec2/instance:Instance"
LAUNCH_TEMPLATE = "aws:ec2/launchTemplate:LaunchTemplate"
SECURITY_GROUP = "aws:ec2/securityGroup:SecurityGroup"
SG_RULE = "aws:ec2/securityGroupRule:SecurityGroupRule"
SG_INGRESS_RULE = "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule"
KMS_KEY = "aws:kms/key:Key"
BUCKETS = frozenset({"aws:s3/bucket:Bucket", "aws:s3/bucketV2:BucketV2"})
S3_ENCRYPTION = "aws:s3/bucketServerSideEncryptionConfiguration:BucketServerSideEncryptionConfiguration"
S3_VERSIONING = "aws:s3/bucketVersioning:BucketVersioning"
S3_PUBLIC_ACCESS_BLOCK = "aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock"
S3_POLICY = "aws:s3/bucketPolicy:BucketPolicy"
S3_LIFECYCLE = "aws:s3/bucketLifecycleConfiguration:BucketLifecycleConfiguration"
S3_OBJECT_LOCK = "aws:s3/bucketObjectLockConfiguration:BucketObjectLockConfiguration"
IAM_POLICIES = frozenset({"aws:iam/policy:Policy", "aws:iam/rolePolicy:RolePolicy", "aws:iam/userPolicy:UserPolicy",
                          "aws:iam/groupPolicy:GroupPolicy"})

LABEL = "com.mysaaschat."
# Capabilities a container may add back after dropping ALL, each with the reason it is needed.
ALLOWED_CAPABILITIES: dict[str, str] = {
    "NET_BIND_SERVICE": "the gateway binds 80 and 443 as a non-root user",
}
# Containers (by their com.mysaaschat.service label) that may mount the Docker socket, with why. None today.
DOCKER_SOCKET_EXCEPTIONS: dict[str, str] = {}
DOCKER_SOCKETS = ("/var/run/docker.sock", "/run/docker.sock")
GATEWAY = "gateway"
GATEWAY_PORTS = frozenset({80, 443})
class SecretStr(str):
    """A string value the engine marked secret (it came from a secret Output)."""

    __slots__ = ()


def engine_properties(wire: Any, secret: bool = False) -> Any:
    """Wire properties (`json_format.MessageToDict` of what the engine sends) as a validator sees them:
    plain values, secrets unwrapped, every string inside a secret a `SecretStr`."""
    if isinstance(wire, Mapping):
        sig = wire.get(SIG_KEY)
        if sig == SECRET_SIG:
            return engine_properties(wire["value"], True)
        if sig is not None:  # an asset or archive: pulumi-policy's own decoding
            from pulumi_policy.deserialize import _deserialize_property
            return _deserialize_property(dict(wire))
        return {key: engine_properties(value, secret) for key, value in wire.items()}
    if isinstance(wire, list):
        return [engine_properties(item, secret) for item in wire]
    if secret and isinstance(wire, str):
        return SecretStr(wire)
    return wire


def preserve_secretness() -> None:
    """Make pulumi-policy's `Analyze`/`AnalyzeStack` decode properties with `engine_properties`.

    pulumi-policy 1.21 `policy.py` calls the module-level `deserialize_properties(props)` for the
    resource, its provider and every resource of the stack; remediation (`proxy_secrets=True`) is
    left as it is. tests/test_policy.py drives the real servicer to prove the effect.
    """
    import pulumi_policy.policy as sdk

    original = getattr(sdk.deserialize_properties, "__wrapped__", sdk.deserialize_properties)

    def deserialize_properties(props: dict[str, Any], proxy_secrets: bool = False) -> Any:
        if proxy_secrets:
            return original(props, proxy_secrets)
        return engine_properties(props)

    deserialize_properties.__wrapped__ = original  # type: ignore[attr-defined]
    sdk.deserialize_properties = deserialize_properties


# ---------------------------------------------------------------------------------------------
# What a check sees


@dataclass
class Res:
    """One resource as a check sees it (from `ResourceValidationArgs` or a stack's `PolicyResource`)."""

    type: str
    urn: str
    name: str
    props: Mapping[str, Any]
    protect: bool = False
    dependencies: list[str] = field(default_factory=list)
    property_dependencies: dict[str, list[str]] = field(default_factory=dict)

    def get(self, key: str, default: Any = None) -> Any:
        return self.props.get(key, default)


def _seq(value: Any) -> list[Any]:
    """A list-valued property (or a single value) as a list; strings are not sequences here."""
    if value is None:
        return []
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        return [value]
    return list(value)


def _map(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def labels(res: Res) -> dict[str, str]:
    """Docker labels (`[{label, value}]`) or AWS tags (`{key: value}`), those known so far.

    At preview a label computed from an image digest or a generated password is unknown, and
    reading it raises pulumi-policy's UnknownValueError: one unknown label must not stop every
    rule that reads the others, so it is left out.
    """
    found: dict[str, str] = {}
    try:
        items = _seq(res.get("labels"))
    except UnknownValueError:
        items = []
    for i in range(len(items)):
        try:
            lbl = _map(items[i])
            found[str(lbl.get("label"))] = str(lbl.get("value"))
        except UnknownValueError:
            continue
    try:
        tags = _map(res.get("tags"))
    except UnknownValueError:
        tags = {}
    for key in tags:
        try:
            found[str(key)] = str(tags[key])
        except UnknownValueError:
            continue
    return found


def never_runs(res: Res) -> bool:
    """The declared exception for runtime rules: a seed container (components/container.py
    `volume_seed`) is created, never started, and has no network; its writable root is the point."""
    return (labels(res).get(LABEL + "lifecycle") == "seed" and res.get("start") is False
            and res.get("networkMode") == "none")


def service_of(res: Res) -> str:
    return labels(res).get(LABEL + "service", res.name)


# ---------------------------------------------------------------------------------------------
# Container rules


def container_non_root(res: Res) -> Iterator[str]:
    if res.type != CONTAINER or never_runs(res):
        return
    user = str(res.get("user") or "")
    if not user:
        yield "no `user`: the container runs as the image's default user, often root"
        return
    uid, _, gid = user.partition(":")
    if uid in ("0", "root") or gid in ("0", "root"):
        yield f"user {user!r} is root (uid or gid 0)"


def container_memory(res: Res) -> Iterator[str]:
    if res.type != CONTAINER or never_runs(res):
        return
    memory, swap = res.get("memory"), res.get("memorySwap")
    if not memory or float(memory) <= 0:
        yield "no memory limit: one leaking container can take the whole host"
    elif swap is None or float(swap) != float(memory):
        yield f"memorySwap {swap} differs from memory {memory}: the container swaps instead of failing loudly"


def container_healthcheck(res: Res) -> Iterator[str]:
    if res.type != CONTAINER or never_runs(res):
        return
    tests = _seq(_map(res.get("healthcheck")).get("tests"))
    if not tests or tests[0] not in ("CMD", "CMD-SHELL"):
        yield "no healthcheck (tests must start with CMD or CMD-SHELL): `up` cannot wait for health"


def container_not_privileged(res: Res) -> Iterator[str]:
    if res.type == CONTAINER and res.get("privileged") is True:
        yield "privileged: the container has every capability and every device of the host"


def container_no_host_namespaces(res: Res) -> Iterator[str]:
    if res.type != CONTAINER:
        return
    for key in ("networkMode", "pidMode", "ipcMode", "usernsMode"):
        if str(res.get(key) or "") == "host":
            yield f"{key} is host: the container shares the host's namespace"


def container_capabilities(res: Res) -> Iterator[str]:
    if res.type != CONTAINER:
        return
    caps = _map(res.get("capabilities"))
    drops = {str(c).upper().removeprefix("CAP_") for c in _seq(caps.get("drops"))}
    if "ALL" not in drops:
        yield "capabilities.drops does not include ALL"
    for cap in sorted({str(c).upper().removeprefix("CAP_") for c in _seq(caps.get("adds"))}):
        if cap not in ALLOWED_CAPABILITIES:
            yield f"adds capability {cap}, which is not in the allow-list ({', '.join(sorted(ALLOWED_CAPABILITIES))})"


def container_docker_socket(res: Res) -> Iterator[str]:
    if res.type != CONTAINER or service_of(res) in DOCKER_SOCKET_EXCEPTIONS:
        return
    paths = [_map(v).get("hostPath") for v in _seq(res.get("volumes"))]
    paths += [_map(m).get("source") for m in _seq(res.get("mounts")) if _map(m).get("type") in (None, "bind")]
    for path in paths:
        if path and str(path).rstrip("/") in DOCKER_SOCKETS:
            yield f"mounts the Docker socket ({path}): root on the host for whoever controls the container"


def container_host_mounts(res: Res) -> Iterator[str]:
    """A host path in a container only as config/host_access.py declares it for that service: same
    host path, same container path, read-only. Nothing else of the host is mounted anywhere."""
    if res.type != CONTAINER:
        return
    declared = HOST_ACCESS.get(service_of(res))
    allowed = {(m.host_path, m.container_path, m.read_only) for m in declared.mounts} if declared else set()
    binds = [(_map(v).get("hostPath"), _map(v).get("containerPath"), _map(v).get("readOnly") is True)
             for v in _seq(res.get("volumes")) if _map(v).get("hostPath")]
    binds += [(_map(m).get("source"), _map(m).get("target"), _map(m).get("readOnly") is True)
              for m in _seq(res.get("mounts")) if _map(m).get("type") in (None, "bind")]
    for host_path, container_path, read_only in binds:
        if (host_path, container_path, read_only) not in allowed:
            yield (f"mounts the host's {host_path} at {container_path}{'' if read_only else ' writable'}, which "
                   f"config/host_access.py does not declare for {service_of(res)}")


def container_no_new_privileges(res: Res) -> Iterator[str]:
    if res.type != CONTAINER:
        return
    opts = {str(o).replace("=", ":") for o in _seq(res.get("securityOpts"))}
    if not opts & {"no-new-privileges", "no-new-privileges:true"}:
        yield "securityOpts lacks no-new-privileges:true: setuid binaries can raise privileges"


def container_read_only_root(res: Res) -> Iterator[str]:
    if res.type == CONTAINER and not never_runs(res) and res.get("readOnly") is not True:
        yield "the root filesystem is writable"


_HEX64 = re.compile(r"sha256:[0-9a-f]{64}")


def image_problem(ref: str) -> str | None:
    """None when `ref` is pinned: an image id or digest, or an immutable release tag."""
    if _HEX64.fullmatch(ref) or re.search(r"@sha256:[0-9a-f]{64}$", ref):
        return None
    last = ref.rsplit("/", 1)[-1]
    tag = last.split(":", 1)[1] if ":" in last else ""
    if tag.strip().lower() in MUTABLE_TAGS:
        return f"image {ref!r} has {'the mutable tag ' + repr(tag) if tag else 'no tag'}"
    if not re.search(r"\d+\.\d+|[0-9a-f]{7,}", tag):
        return f"image {ref!r}: tag {tag!r} is no release version (digits.digits) or commit, so it may move"
    return None


def image_pinned(res: Res) -> Iterator[str]:
    key = {CONTAINER: "image", REMOTE_IMAGE: "name"}.get(res.type)
    if key is None:
        return
    problem = image_problem(str(res.get(key) or ""))
    if problem:
        yield problem


def container_log_rotation(res: Res) -> Iterator[str]:
    if res.type != CONTAINER or never_runs(res):
        return
    driver = str(res.get("logDriver") or "json-file")
    opts = _map(res.get("logOpts"))
    if driver in ("json-file", "local") and not opts.get("max-size"):
        yield f"log driver {driver} without max-size: logs grow until the disk is full"
    elif driver == "json-file" and not opts.get("max-file"):
        yield "log driver json-file without max-file: rotated logs are never removed"


def container_secret_env(res: Res) -> Iterator[str]:
    if res.type != CONTAINER:
        return
    for entry in _seq(res.get("envs")):
        name = str(entry).split("=", 1)[0]
        if secret_looking(name) and not isinstance(entry, SecretStr):
            yield f"environment variable {name} looks like a credential but its value is plain text"


def ports_gateway_only(res: Res) -> Iterator[str]:
    if res.type != CONTAINER:
        return
    ports = [_map(p) for p in _seq(res.get("ports"))]
    if not ports:
        return
    if service_of(res) != GATEWAY:
        yield f"publishes host ports {sorted(str(p.get('external', p.get('internal'))) for p in ports)}; only the gateway may"
        return
    for port in ports:
        external = port.get("external")
        if external is None or int(float(external)) not in GATEWAY_PORTS:
            yield f"publishes host port {external if external is not None else '(random)'}; the gateway publishes 80 and 443 only"


# ---------------------------------------------------------------------------------------------
# Protection, EC2, IAM


def protect_durable(res: Res) -> Iterator[str]:
    if (res.type in (EBS_VOLUME, KMS_KEY) or res.type in BUCKETS) and not res.protect:
        yield f"{res.type.rsplit(':', 1)[1]} holds data or keys that cannot be recreated, but is not protected"


def ec2_imdsv2(res: Res) -> Iterator[str]:
    if res.type in (INSTANCE, LAUNCH_TEMPLATE) and _map(res.get("metadataOptions")).get("httpTokens") != "required":
        yield "metadataOptions.httpTokens is not required: IMDSv1 lets any SSRF read the role's credentials"


def ec2_encrypted_volumes(res: Res) -> Iterator[str]:
    if res.type == EBS_VOLUME and res.get("encrypted") is not True:
        yield "the EBS volume is not encrypted"
    if res.type == INSTANCE:
        if _map(res.get("rootBlockDevice")).get("encrypted") is not True:
            yield "rootBlockDevice.encrypted is not true"
        for i, device in enumerate(_seq(res.get("ebsBlockDevices"))):
            if _map(device).get("encrypted") is not True:
                yield f"ebsBlockDevices[{i}].encrypted is not true"


_WORLD = ("0.0.0.0/0", "::/0")


def _covers_ssh(protocol: Any, from_port: Any, to_port: Any) -> bool:
    if str(protocol).lower() in ("-1", "all"):
        return True
    if str(protocol).lower() not in ("tcp", "6"):
        return False
    try:
        return int(float(from_port)) <= 22 <= int(float(to_port))
    except (TypeError, ValueError):
        return False


def ec2_no_world_ssh(res: Res) -> Iterator[str]:
    rules: list[tuple[Any, Any, Any, list[Any]]] = []
    if res.type == SECURITY_GROUP:
        for r in map(_map, _seq(res.get("ingress"))):
            rules.append((r.get("protocol"), r.get("fromPort"), r.get("toPort"),
                          _seq(r.get("cidrBlocks")) + _seq(r.get("ipv6CidrBlocks"))))
    elif res.type == SG_RULE and res.get("type") == "ingress":
        rules.append((res.get("protocol"), res.get("fromPort"), res.get("toPort"),
                      _seq(res.get("cidrBlocks")) + _seq(res.get("ipv6CidrBlocks"))))
    elif res.type == SG_INGRESS_RULE:
        rules.append((res.get("ipProtocol"), res.get("fromPort"), res.get("toPort"),
                      [res.get("cidrIpv4"), res.get("cidrIpv6")]))
    for protocol, low, high, cidrs in rules:
        world = sorted({str(c) for c in cidrs if str(c) in _WORLD})
        if world and _covers_ssh(protocol, low, high):
            yield f"SSH (22) is open to {', '.join(world)}"


def _statements(res: Res) -> Iterator[Mapping[str, Any]]:
    documents = [res.get("policy")] if res.type in IAM_POLICIES else []
    if res.type == "aws:iam/role:Role":
        documents += [_map(p).get("policy") for p in _seq(res.get("inlinePolicies"))]
    for doc in documents:
        if not doc:
            continue
        try:
            parsed = json.loads(doc) if isinstance(doc, str) else doc
        except json.JSONDecodeError:
            continue
        for st in _seq(_map(parsed).get("Statement")):
            if isinstance(st, Mapping) and st.get("Effect", "Allow") == "Allow":
                yield st


def _wildcard(action: str) -> bool:
    return action == "*" or action.endswith(":*")


def iam_no_wildcard_action(res: Res) -> Iterator[str]:
    for st in _statements(res):
        if "NotAction" in st:
            yield "an Allow statement uses NotAction: everything except a list is allowed"
        for action in map(str, _seq(st.get("Action"))):
            if _wildcard(action):
                yield f"an Allow statement grants the action {action!r}"


_READ_VERBS = ("Get", "List", "Describe", "Head", "BatchGet", "Query", "Scan", "Select")


def _writes(action: str) -> bool:
    verb = action.split(":", 1)[-1]
    return _wildcard(action) or not verb.startswith(_READ_VERBS)


def iam_no_wildcard_resource_write(res: Res) -> Iterator[str]:
    for st in _statements(res):
        if "*" in map(str, _seq(st.get("Resource"))):
            writes = sorted(a for a in map(str, _seq(st.get("Action"))) if _writes(a))
            if writes or "NotAction" in st:
                yield f"an Allow statement grants write actions {writes or ['NotAction']} on every resource (\"*\")"


# ---------------------------------------------------------------------------------------------
# Stack rules: they see every resource with its dependencies


def _containers(resources: Sequence[Res]) -> list[Res]:
    return [r for r in resources if r.type == CONTAINER and not never_runs(r)]


def protect_data_volumes(resources: Sequence[Res]) -> Iterator[tuple[str, str]]:
    volumes = {str(v.get("name")): v for v in resources if v.type == VOLUME}
    for c in _containers(resources):
        if labels(c).get(LABEL + "lifecycle") != "stateful":
            continue
        for mount in map(_map, _seq(c.get("volumes"))):
            volume = volumes.get(str(mount.get("volumeName")))
            if volume is not None and mount.get("readOnly") is not True and not volume.protect:
                yield volume.urn, f"volume {volume.get('name')} holds {service_of(c)}'s data but is not protected"


def _companions(resources: Sequence[Res], bucket: Res, kind: str) -> list[Res]:
    """The bucket's configuration resources of one type: those whose `bucket` input came from it."""
    return [r for r in resources if r.type == kind and (bucket.urn in r.property_dependencies.get("bucket", [])
                                                        or r.get("bucket") in (bucket.get("bucket"), bucket.name))]


def _buckets(resources: Sequence[Res]) -> list[Res]:
    return [r for r in resources if r.type in BUCKETS]


def s3_encryption(resources: Sequence[Res]) -> Iterator[tuple[str, str]]:
    for bucket in _buckets(resources):
        algorithms = {str(_map(_map(rule).get("applyServerSideEncryptionByDefault")).get("sseAlgorithm"))
                      for c in _companions(resources, bucket, S3_ENCRYPTION) for rule in _seq(c.get("rules"))}
        if not algorithms & {"aws:kms", "aws:kms:dsse", "AES256"}:
            yield bucket.urn, "no BucketServerSideEncryptionConfiguration with aws:kms or AES256"


def s3_versioning(resources: Sequence[Res]) -> Iterator[tuple[str, str]]:
    for bucket in _buckets(resources):
        if not any(_map(c.get("versioningConfiguration")).get("status") == "Enabled"
                   for c in _companions(resources, bucket, S3_VERSIONING)):
            yield bucket.urn, "no BucketVersioning with status Enabled"


PUBLIC_ACCESS_FLAGS = ("blockPublicAcls", "blockPublicPolicy", "ignorePublicAcls", "restrictPublicBuckets")


def s3_public_access_block(resources: Sequence[Res]) -> Iterator[tuple[str, str]]:
    for bucket in _buckets(resources):
        if str(bucket.get("acl") or "") in ("public-read", "public-read-write", "authenticated-read"):
            yield bucket.urn, f"canned ACL {bucket.get('acl')} makes the bucket readable by others"
        blocks = _companions(resources, bucket, S3_PUBLIC_ACCESS_BLOCK)
        missing = sorted({f for f in PUBLIC_ACCESS_FLAGS if not any(b.get(f) is True for b in blocks)})
        if missing:
            yield bucket.urn, f"public access is not blocked: {', '.join(missing)} not true"


def _denies_plain_http(policy: Any) -> bool:
    try:
        doc = json.loads(policy) if isinstance(policy, str) else policy
    except json.JSONDecodeError:
        return False
    for st in _seq(_map(doc).get("Statement")):
        st = _map(st)
        condition = _map(_map(st.get("Condition")).get("Bool"))
        if st.get("Effect") == "Deny" and str(condition.get("aws:SecureTransport")).lower() == "false":
            return True
    return False


def s3_tls_only(resources: Sequence[Res]) -> Iterator[tuple[str, str]]:
    for bucket in _buckets(resources):
        if not any(_denies_plain_http(c.get("policy")) for c in _companions(resources, bucket, S3_POLICY)):
            yield bucket.urn, "no BucketPolicy denying requests without TLS (aws:SecureTransport false)"


def is_backup_bucket(bucket: Res) -> bool:
    text = " ".join(str(bucket.get(k) or "") for k in ("bucket", "bucketPrefix")) + " " + bucket.name
    return "backup" in text.lower() or labels(bucket).get("Purpose", "").lower() == "backup"


def s3_backup_lifecycle(resources: Sequence[Res]) -> Iterator[tuple[str, str]]:
    for bucket in filter(is_backup_bucket, _buckets(resources)):
        if not any(_map(rule).get("status") == "Enabled" for c in _companions(resources, bucket, S3_LIFECYCLE)
                   for rule in _seq(c.get("rules"))):
            yield bucket.urn, "backup bucket without an enabled lifecycle rule: backups are kept (and paid) forever"


def s3_backup_object_lock(resources: Sequence[Res]) -> Iterator[tuple[str, str]]:
    for bucket in filter(is_backup_bucket, _buckets(resources)):
        if bucket.get("objectLockEnabled") is not True:
            yield bucket.urn, "backup bucket created without Object Lock (it can only be enabled at creation)"
            continue
        modes = {str(_map(_map(c.get("rule")).get("defaultRetention")).get("mode"))
                 for c in _companions(resources, bucket, S3_OBJECT_LOCK)}
        if not modes & {"GOVERNANCE", "COMPLIANCE"}:
            yield bucket.urn, "backup bucket without a default Object Lock retention: a writer could delete history"


def routed_services(resources: Sequence[Res]) -> list[Res]:
    """Service containers the gateway routes to: `com.mysaaschat.kind: web` (workers have no routes)."""
    return [c for c in _containers(resources) if labels(c).get(LABEL + "kind") == "web"]


def routed_service_healthcheck(resources: Sequence[Res]) -> Iterator[tuple[str, str]]:
    for c in routed_services(resources):
        for message in container_healthcheck(c):
            yield c.urn, f"routed service {service_of(c)}: {message}"


def _declared(resources: Sequence[Res], label: str) -> set[str]:
    return {name.strip() for r in resources for name in labels(r).get(LABEL + label, "").split(",") if name.strip()}


def routed_service_scrape_target(resources: Sequence[Res]) -> Iterator[tuple[str, str]]:
    scraped = _declared(resources, "scrapes")
    for c in routed_services(resources):
        if service_of(c) not in scraped:
            yield c.urn, f"routed service {service_of(c)} is no scrape target of any monitoring resource"


def store_backup(resources: Sequence[Res]) -> Iterator[tuple[str, str]]:
    backed_up = _declared(resources, "backup-of")
    for c in _containers(resources):
        if labels(c).get(LABEL + "lifecycle") == "stateful" and service_of(c) not in backed_up:
            yield c.urn, f"store {service_of(c)} has no backup"


# ---------------------------------------------------------------------------------------------
# The rules, and the pulumi-policy objects built from them


ResourceCheck = Callable[[Res], Iterable[str]]
StackCheck = Callable[[Sequence[Res]], Iterable[tuple[str, str]]]


@dataclass(frozen=True)
class Rule:
    name: str
    level: EnforcementLevel
    description: str
    fix: str
    resource: ResourceCheck | None = None
    stack: StackCheck | None = None


def _advisory_until(what: str) -> str:
    return f" ADVISORY until {what} exist (no such resource yet), then MANDATORY."


RULES: tuple[Rule, ...] = (
    Rule("container-non-root", MANDATORY, "Containers run as a non-root uid and gid.",
         "set ContainerSpec.user (the model's `user`) to a numeric uid:gid other than 0", container_non_root),
    Rule("container-memory-limit", MANDATORY, "Containers have a memory limit, and swap equal to it.",
         "set memory and memory_swap to the same MiB (components/container.py does)", container_memory),
    Rule("container-healthcheck", MANDATORY, "Containers have a CMD or CMD-SHELL healthcheck.",
         "give the container a healthcheck (ContainerSpec.healthcheck)", container_healthcheck),
    Rule("container-not-privileged", MANDATORY, "No container is privileged.",
         "remove privileged=True; add the one capability needed from the allow-list instead", container_not_privileged),
    Rule("container-no-host-namespaces", MANDATORY, "No container uses the host's network, PID, IPC or user namespace.",
         "remove network_mode/pid_mode/ipc_mode/userns_mode host; join a Docker network", container_no_host_namespaces),
    Rule("container-capabilities", MANDATORY,
         "Containers drop ALL capabilities and add back only allow-listed ones (policy/rules.py ALLOWED_CAPABILITIES, "
         "each with its reason).",
         "drops=['ALL']; add a capability only after adding it with its reason to ALLOWED_CAPABILITIES",
         container_capabilities),
    Rule("container-no-docker-socket", MANDATORY,
         "No container mounts the Docker socket, except declared exceptions (DOCKER_SOCKET_EXCEPTIONS, none today).",
         "remove the docker.sock mount, or declare the exception with its reason", container_docker_socket),
    Rule("container-host-mounts", MANDATORY,
         "Host paths are mounted only where config/host_access.py declares them (node-exporter, cAdvisor), "
         "read-only, each with its reason.",
         "remove the bind mount, or declare it with its reason in config/host_access.py", container_host_mounts),
    Rule("container-no-new-privileges", MANDATORY, "Containers set no-new-privileges.",
         "security_opts=['no-new-privileges:true']", container_no_new_privileges),
    Rule("container-read-only-root", ADVISORY,
         "Containers have a read-only root filesystem (never-started seed containers are a declared exception).",
         "read_only=True, with tmpfs or volumes for the paths the process writes", container_read_only_root),
    Rule("image-pinned", MANDATORY, "Images are pinned by digest or an immutable release tag.",
         "pin `image` to a digest (sha256:...) or a release tag such as 1.2.3 or 2026.11.24-3f9c2ab", image_pinned),
    Rule("container-log-rotation", MANDATORY, "Container logs are rotated (json-file/local need max-size and max-file).",
         "log_driver='json-file', log_opts={'max-size': '10m', 'max-file': '5'}", container_log_rotation),
    Rule("container-secret-env", MANDATORY,
         "An environment variable whose name looks like a credential (PASSWORD, SECRET, TOKEN, KEY, DSN, ...) holds a "
         "secret Output, never plain text (names ending _FILE or _PATH point at a file and are exempt).",
         "move the value to Secrets Manager and reference it in the catalog's `secrets:` (a secret Output)",
         container_secret_env),
    Rule("ports-gateway-only", MANDATORY, "Only the gateway publishes host ports, and only 80 and 443.",
         "remove `ports`; traffic reaches services through the gateway on the apps network", ports_gateway_only),
    Rule("protect-durable-resources", MANDATORY,
         "EBS volumes (the data volume), S3 buckets (backups, state) and KMS keys are protected.",
         "opts=ResourceOptions(protect=True, retain_on_delete=True)", protect_durable),
    Rule("protect-stateful-volumes", MANDATORY, "Docker volumes a store writes its data to are protected.",
         "opts=ResourceOptions(protect=True, retain_on_delete=True) on the volume", stack=protect_data_volumes),
    Rule("s3-encryption", MANDATORY, "Every S3 bucket has default encryption (aws:kms or AES256).",
         "add an aws.s3.BucketServerSideEncryptionConfiguration for the bucket", stack=s3_encryption),
    Rule("s3-versioning", MANDATORY, "Every S3 bucket has versioning enabled.",
         "add an aws.s3.BucketVersioning with status Enabled", stack=s3_versioning),
    Rule("s3-public-access-block", MANDATORY, "Every S3 bucket blocks all public access (all four flags) and has no public ACL.",
         "add an aws.s3.BucketPublicAccessBlock with all four flags true; remove public ACLs", stack=s3_public_access_block),
    Rule("s3-tls-only", MANDATORY, "Every S3 bucket's policy denies requests without TLS.",
         "add an aws.s3.BucketPolicy with a Deny statement on Condition Bool aws:SecureTransport false",
         stack=s3_tls_only),
    Rule("s3-backup-lifecycle", MANDATORY, "Backup buckets expire old backups with a lifecycle rule.",
         "add an aws.s3.BucketLifecycleConfiguration with an Enabled expiration rule", stack=s3_backup_lifecycle),
    Rule("s3-backup-object-lock", MANDATORY, "Backup buckets have Object Lock with a default retention "
         "(governance or compliance), so whoever writes backups cannot destroy them.",
         "object_lock_enabled=True on the aws.s3.Bucket and an aws.s3.BucketObjectLockConfiguration with "
         "default_retention", stack=s3_backup_object_lock),
    Rule("ec2-imdsv2", MANDATORY, "EC2 instances and launch templates require IMDSv2 tokens.",
         "metadata_options=InstanceMetadataOptionsArgs(http_tokens='required')", ec2_imdsv2),
    Rule("ec2-encrypted-volumes", MANDATORY, "EBS volumes and instance block devices are encrypted.",
         "encrypted=True on the volume and the block devices", ec2_encrypted_volumes),
    Rule("ec2-no-world-ssh", MANDATORY, "SSH (22) is never open to 0.0.0.0/0 or ::/0.",
         "list the admin networks in host.admin_cidrs", ec2_no_world_ssh),
    Rule("iam-no-wildcard-action", MANDATORY, "IAM policies allow no `*` or `service:*` action, and no NotAction.",
         "list the exact actions needed", iam_no_wildcard_action),
    Rule("iam-no-wildcard-resource-write", MANDATORY, "IAM policies grant no write action on resource `*`.",
         "scope Resource to the ARNs written (as render/backup_storage.py host_statements does)",
         iam_no_wildcard_resource_write),
    Rule("routed-service-healthcheck", MANDATORY, "Every routed service (com.mysaaschat.kind: web) has a healthcheck.",
         "give the service a healthcheck: the gateway and `up` rely on it", stack=routed_service_healthcheck),
    Rule("routed-service-scrape-target", MANDATORY,
         "Every routed service is a scrape target of monitoring (a resource labelled com.mysaaschat.scrapes listing it).",
         "list the service in the monitoring component's com.mysaaschat.scrapes label", stack=routed_service_scrape_target),
    Rule("store-backup", ADVISORY,
         "Every store has a backup (a resource labelled or tagged com.mysaaschat.backup-of listing it)."
         + _advisory_until("backup resources"),
         "back the store up and label the backup resource com.mysaaschat.backup-of=<store>", stack=store_backup),
)


def rule(name: str) -> Rule:
    return next(r for r in RULES if r.name == name)


def message(rule_: Rule, problem: str) -> str:
    return f"{problem}. Fix: {rule_.fix}"


def _resource_validator(rule_: Rule) -> Callable[[ResourceValidationArgs, ReportViolation], None]:
    check = rule_.resource
    assert check is not None

    def validate(args: ResourceValidationArgs, report_violation: ReportViolation) -> None:
        res = Res(args.resource_type, args.urn, args.name, args.props, bool(args.opts.protect))
        for problem in check(res):
            report_violation(message(rule_, problem), None)

    return validate


def _stack_validator(rule_: Rule) -> Callable[[StackValidationArgs, ReportViolation], None]:
    check = rule_.stack
    assert check is not None

    def validate(args: StackValidationArgs, report_violation: ReportViolation) -> None:
        resources = [Res(r.resource_type, r.urn, r.name, r.props, bool(r.opts.protect),
                         [d.urn for d in r.dependencies],
                         {k: [d.urn for d in v] for k, v in r.property_dependencies.items()}) for r in args.resources]
        for urn, problem in check(resources):
            report_violation(message(rule_, problem), urn)

    return validate


def policies() -> list[Policy]:
    """The pack's policies, one per rule, in RULES order."""
    built: list[Policy] = []
    for r in RULES:
        if r.resource is not None:
            built.append(ResourceValidationPolicy(name=r.name, description=r.description, enforcement_level=r.level,
                                                  validate=_resource_validator(r), remediation_steps=r.fix))
        else:
            built.append(StackValidationPolicy(name=r.name, description=r.description, enforcement_level=r.level,
                                               validate=_stack_validator(r), remediation_steps=r.fix))
    return built
