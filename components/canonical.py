"""Inputs in the form the providers read them back, so a second `up` with the same config plans nothing.

Pulumi diffs the provider's stored state (the Read form) against the new inputs. Where a provider
normalises a value on Read, an input in any other form is a diff on every `up`, and for a
ForceNew attribute a replacement: `cpus: "1"` is read back as `"1.0"`, a healthcheck `start_period`
of `"60s"` as `"1m0s"`, and the stores were restarted by every `up`. Each function below mirrors
the provider's own code; `READ_BACK` maps every resource type the program registers to the
attributes its provider normalises, and tests/test_canonical.py checks every recorded input of
every stack against it. Sources: kreuzwerker/terraform-provider-docker v4.5.0 (wrapped by
pulumi-docker 5.x), `internal/provider/` (below "TP").
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from decimal import ROUND_HALF_UP, Decimal
from fractions import Fraction
from typing import Any

_GO_UNITS = {"ns": 1, "us": 10**3, "µs": 10**3, "μs": 10**3, "ms": 10**6, "s": 10**9, "m": 60 * 10**9,
             "h": 3600 * 10**9}
_GO_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")


def parse_go_duration(text: str) -> int:
    """Go's time.ParseDuration (unsigned), in nanoseconds; the provider parses healthcheck
    durations with it (TP resource_docker_container_funcs.go, resourceDockerContainerCreate)."""
    if text == "0":
        return 0
    pos, total = 0, Fraction(0)
    for match in _GO_DURATION.finditer(text):
        if match.start() != pos:
            break
        total += Fraction(match.group(1)) * _GO_UNITS[match.group(2)]
        pos = match.end()
    if pos != len(text) or not text:
        raise ValueError(f"{text!r} is not a Go duration (like 10s, 1m30s, 500ms)")
    return int(total)


def _fmt_frac(value: int, precision: int) -> str:
    """Go's fmtFrac: the fraction digits of value / 10**precision, trailing zeros and dot dropped."""
    whole, frac = divmod(value, 10**precision)
    digits = str(frac).rjust(precision, "0").rstrip("0")
    return f"{whole}.{digits}" if digits else str(whole)


def go_duration(ns: int) -> str:
    """Go's time.Duration.String(): how the provider reads healthcheck durations back
    (TP resource_docker_container_funcs.go, resourceDockerContainerRead: `Interval.String()`)."""
    if ns == 0:
        return "0s"
    if ns < 10**9:  # sub-second: the largest unit that keeps an integer part
        for unit, size in (("ms", 10**6), ("µs", 10**3), ("ns", 1)):
            if ns >= size:
                return _fmt_frac(ns, len(str(size)) - 1) + unit if size > 1 else f"{ns}ns"
    seconds = _fmt_frac(ns % (60 * 10**9), 9) + "s"
    minutes, hours = ns // (60 * 10**9) % 60, ns // (3600 * 10**9)
    if hours:
        return f"{hours}h{minutes}m{seconds}"
    if minutes:
        return f"{minutes}m{seconds}"
    return seconds


def canonical_duration(text: str) -> str:
    return go_duration(parse_go_duration(text))


def nano_cpus_string(nano: int) -> str:
    """TP helpers.go nanoInt64ToDecimalString, the read-back form of `cpus`, bug for bug:

        rat := new(big.Rat).SetFrac64(nanoInt64, 1e9); str := rat.FloatString(9)
        if strings.Count(str, "0") == 9 { return rat.FloatString(1) }
        return strings.TrimRight(str, "0")

    `strings.Count` counts every "0" of the string, so 10 CPUs read back as "10." and 0.05 as
    "0.1" (FloatString rounds half away from zero): such values can never round-trip.
    """
    if nano == 0:
        return "0"
    rat = Fraction(nano, 10**9)

    def float_string(places: int) -> str:
        return str(Decimal(rat.numerator / Decimal(rat.denominator)).quantize(Decimal(1).scaleb(-places),
                                                                                 rounding=ROUND_HALF_UP))

    text = float_string(9)
    if text.count("0") == 9:
        return float_string(1)
    return text.rstrip("0")


def parse_cpus(text: str) -> int:
    """docker/cli opts.ParseCPUs, which the provider uses for `cpus`: NanoCPUs, exact or an error."""
    nano = Fraction(text) * 10**9
    if nano.denominator != 1:
        raise ValueError(f"cpus {text!r} is not a whole number of nano-CPUs")
    return int(nano)


def canonical_cpus(cpus: float | str) -> str:
    """The `cpus` input that reads back unchanged; an error for a value that cannot round-trip."""
    nano = parse_cpus(str(cpus))
    text = nano_cpus_string(nano)
    # "10." would parse back, but only by a leniency of Go's big.Rat we have not verified: refused too.
    if text.endswith(".") or parse_cpus(text) != nano:
        raise ValueError(f"cpus {cpus} would be read back by the Docker provider as {text!r} and replace the container "
                         "on every up; use a value with at most one decimal place below 10, or a whole number not a "
                         "multiple of 10")
    return text


# type -> attribute path (wire names; "[]" for list items) -> the read-back form of a value.
# An attribute not listed is stored as sent (Read never rewrites it); each entry cites why.
Normaliser = Callable[[Any], Any]
READ_BACK: dict[str, dict[str, Normaliser]] = {
    "docker:index/container:Container": {
        # TP funcs.go Read: `d.Set("cpus", nanoInt64ToDecimalString(container.HostConfig.NanoCPUs))`.
        "cpus": lambda v: nano_cpus_string(parse_cpus(str(v))),
        # TP funcs.go Read: healthcheck interval/timeout/start_period/start_interval via Duration.String().
        "healthcheck.interval": canonical_duration,
        "healthcheck.timeout": canonical_duration,
        "healthcheck.startPeriod": canonical_duration,
        "healthcheck.startInterval": canonical_duration,
        # TP funcs.go Read: `d.Set("name", strings.TrimLeft(container.Name, "/"))`.
        "name": lambda v: str(v).lstrip("/"),
    },
    # TP resource_docker_network_funcs.go Read sets name, labels, driver, internal as the daemon
    # stores them: verbatim for what we send ("bridge", a bool, our labels).
    "docker:index/network:Network": {},
    # TP resource_docker_volume.go Read: name, labels, driver "local": verbatim.
    "docker:index/volume:Volume": {},
    # TP resource_docker_image.go: `name` is kept as configured; image_id/repo_digest are outputs.
    "docker:index/remoteImage:RemoteImage": {},
    # pulumi-docker provider config is not diffed against a Read.
    "pulumi:providers:docker": {},
    # The rest: hashicorp/terraform-provider-aws v6 (wrapped by pulumi-aws 7; "ta" below is its
    # internal/service/), terraform-provider-random v3, terraform-provider-tls v4 and
    # pulumi-command v1.2: each attribute the program sets is stored as sent unless listed.
    "aws:ec2/securityGroup:SecurityGroup": {
        # ta ec2/vpc_security_group.go: `StateFunc: protocolStateFunc` -> protocolForValue.
        "ingress[].protocol": lambda v: _aws_protocol(str(v)),
        "egress[].protocol": lambda v: _aws_protocol(str(v)),
    },
    "aws:ec2/networkInterface:NetworkInterface": {},
    "aws:ec2/eip:Eip": {},
    "aws:ebs/volume:Volume": {},  # type "gp3", size, encrypted, tags: verbatim (ec2/ebs_volume.go Read)
    "aws:ec2/keyPair:KeyPair": {
        # ta ec2/ec2_key_pair.go: public_key `StateFunc: strings.TrimSpace`.
        "publicKey": lambda v: str(v).strip(),
    },
    "aws:iam/role:Role": {
        # ta iam/role.go: assume_role_policy `StateFunc: structure.NormalizeJsonString`.
        "assumeRolePolicy": lambda v: json.dumps(json.loads(v), sort_keys=True, separators=(",", ":")),
    },
    "aws:iam/rolePolicy:RolePolicy": {
        # ta iam/role_policy.go: policy `StateFunc: verify.LegacyPolicyNormalize` (Version first).
        "policy": lambda v: _legacy_policy(str(v)),
    },
    "aws:iam/instanceProfile:InstanceProfile": {},
    # ta kms/key.go Read: description, rotation flag, window and tags as AWS returns them (verbatim);
    # the key policy is left to AWS's default (not set, so not diffed).
    "aws:kms/key:Key": {},
    # ta secretsmanager/secret.go Read: name, kms_key_id (the ARN we pass), description, tags verbatim;
    # recovery_window_in_days is not read back (kept from config).
    "aws:secretsmanager/secret:Secret": {},
    # ta secretsmanager/secret_version.go resourceSecretVersionRead (findSecretVersionByTwoPartKey):
    # secret_string as stored; version_stages is ignore_changes (a rotation moves AWSCURRENT).
    "aws:secretsmanager/secretVersion:SecretVersion": {},
    # ta s3/bucket.go, bucket_versioning.go, bucket_server_side_encryption_configuration.go,
    # bucket_public_access_block.go, bucket_lifecycle_configuration.go,
    # bucket_object_lock_configuration.go, bucket_replication_configuration.go: the API's own
    # values, which are what the program sends (Enabled, aws:kms, GOVERNANCE, day counts, ARNs).
    "aws:s3/bucket:Bucket": {},
    "aws:s3/bucketVersioning:BucketVersioning": {},
    "aws:s3/bucketServerSideEncryptionConfiguration:BucketServerSideEncryptionConfiguration": {},
    "aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock": {},
    "aws:s3/bucketLifecycleConfiguration:BucketLifecycleConfiguration": {},
    "aws:s3/bucketObjectLockConfiguration:BucketObjectLockConfiguration": {},
    "aws:s3/bucketReplicationConfig:BucketReplicationConfig": {},
    # ta s3/bucket_policy.go: policy normalised like IAM policies (compact, sorted, Version first).
    "aws:s3/bucketPolicy:BucketPolicy": {"policy": lambda v: _legacy_policy(str(v))},
    # userData is ignore_changes (and clear text in v6); the rest verbatim (ec2/ec2_instance.go Read).
    "aws:ec2/instance:Instance": {},
    "aws:ec2/volumeAttachment:VolumeAttachment": {},  # Read sets nothing: state = inputs
    # terraform-provider-tls resource_private_key.go: algorithm stored as given.
    "tls:index/privateKey:PrivateKey": {},
    # terraform-provider-tls resource_self_signed_cert.go (common_cert.go): allowed_uses, dns_names,
    # subject, validity and early-renewal hours and private_key_pem are stored as given (the key
    # PEM is our PrivateKey's own output, already in the provider's form).
    "tls:index/selfSignedCert:SelfSignedCert": {},
    # terraform-provider-random resource_password.go: length/special stored as given (defaults added
    # for what we do not set, which is not diffed).
    "random:index/randomPassword:RandomPassword": {},
    # pulumi-command remote/commandController.go: outputs = inputs (plus inferred connection defaults,
    # so the program states `port`).
    "command:remote:Command": {},
    # pulumi-command local/commandController.go: the same, and nothing to infer (no connection).
    "command:local:Command": {},
}


def _aws_protocol(value: str) -> str:
    value = value.lower()
    return {"all": "-1", "6": "tcp", "17": "udp", "1": "icmp", "58": "icmpv6"}.get(value, value)


def _legacy_policy(text: str) -> str:
    document = json.loads(text)
    rest = {k: v for k, v in document.items() if k != "Version"}
    body = json.dumps(rest, sort_keys=True, separators=(",", ":"))
    return ('{"Version":' + json.dumps(document["Version"]) + "," + body[1:]) if "Version" in document else body
