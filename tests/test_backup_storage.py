"""The backup bucket: what the program registers (read back from the recording) and what its documents
do on a real moto server over HTTP.

What moto proves here: the settings S3 accepts and returns as given (versioning, SSE-KMS with a bucket
key, public access block, lifecycle, Object Lock, the bucket policy text), that governance-mode Object
Lock refuses to delete a locked version, and, with moto's IAM enforcement on, that the host's identity
policy writes and reads its stack's prefix only and can delete nothing. What moto does not evaluate,
and is checked by reading the documents instead: bucket policies (the TLS-only deny, the deny of the
host's deletes), IAM conditions (the ListBucket prefix condition), KMS grants, and replication.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError

from config.model import BackupStorage
from ops.runner import Recording
from policy import rules as policy_rules
from render import backup_storage as r
from tests.conftest import recording
from tests.moto_server import UNSET, aws_env, moto_server


def by_name(rec: Recording, name: str, kind: str = "") -> Any:
    return next(reg for reg in rec.resources.values() if reg.name == name and reg.type.startswith(kind))


@pytest.mark.parametrize("stack", ["prod", "staging"])
def test_the_bucket_and_its_settings_are_registered_and_protected(stack: str) -> None:
    rec = recording(stack)
    env = rec.env
    name = env.host.backup_bucket
    model = env.backup_storage
    bucket = by_name(rec, "backup-bucket")
    assert bucket.inputs["bucket"] == name and bucket.inputs["objectLockEnabled"] is True
    s3_and_kms = [reg for reg in rec.resources.values() if reg.type.startswith(("aws:s3/", "aws:kms/"))
                  and reg.parent.endswith("backup:BackupStorage::backup")]
    assert len(s3_and_kms) == 2 * 8 + 1  # bucket, key and six settings, twice; the replication config
    assert all(reg.protect for reg in s3_and_kms), [reg.name for reg in s3_and_kms if not reg.protect]
    assert by_name(rec, "backup-versioning").inputs["versioningConfiguration"] == {"status": "Enabled"}
    [sse] = by_name(rec, "backup-encryption").inputs["rules"]
    assert sse["bucketKeyEnabled"] is True and sse["applyServerSideEncryptionByDefault"]["sseAlgorithm"] == "aws:kms"
    key = by_name(rec, "backup-key")
    assert key.protect and key.inputs["enableKeyRotation"] is True
    assert key.urn in by_name(rec, "backup-encryption").property_dependencies["rules"]
    block = by_name(rec, "backup-public-access").inputs
    assert all(block[f] is True for f in policy_rules.PUBLIC_ACCESS_FLAGS)
    *expiring, history = by_name(rec, "backup-lifecycle").inputs["rules"]
    # Current versions expire only under the WAL and backup-set directories (tests/test_backup_lifecycle_live.py
    # proves which keys pgBackRest writes there); history and multipart clean-up cover the stack's prefix.
    assert [rule["filter"]["prefix"] for rule in expiring] == r.expiring_prefixes(stack, "main")
    assert all(rule["expiration"] == {"days": model.retention_days} for rule in expiring)
    assert not any("noncurrentVersionExpiration" in rule for rule in expiring)
    assert history["filter"] == {"prefix": f"{stack}/"} and "expiration" not in history
    assert history["noncurrentVersionExpiration"] == {"noncurrentDays": model.noncurrent_days}
    assert history["abortIncompleteMultipartUpload"] == {"daysAfterInitiation": model.abort_multipart_days}
    lock = by_name(rec, "backup-object-lock").inputs["rule"]["defaultRetention"]
    assert lock == {"mode": "GOVERNANCE", "days": model.lock_days}
    if stack == "prod":
        assert model.retention_days == 30
    # The replica: another region, versioned, encrypted with a key of its own region, not given deletes.
    replica = by_name(rec, "backup-replica-bucket")
    assert replica.inputs["bucket"] == f"{name}-replica" and replica.inputs["region"] == model.replica_region
    assert by_name(rec, "backup-replica-versioning").inputs["region"] == model.replica_region
    [rep] = by_name(rec, "backup-replication", "aws:s3/").inputs["rules"]
    assert rep["deleteMarkerReplication"] == {"status": "Disabled"}
    assert rep["destination"]["bucket"] == f"arn:aws:s3:::{name}-replica"
    assert rep["destination"]["encryptionConfiguration"]["replicaKmsKeyId"].startswith(
        f"arn:aws:kms:{model.replica_region}:")
    role = by_name(rec, "backup-replication-role")
    assert json.loads(role.inputs["assumeRolePolicy"])["Statement"][0]["Principal"] == {"Service": "s3.amazonaws.com"}


def test_the_bucket_policy_is_tls_only_and_denies_the_host_every_delete() -> None:
    rec = recording("prod")
    policy = by_name(rec, "backup-policy").inputs["policy"]
    assert policy_rules._denies_plain_http(policy)
    statements = json.loads(policy)["Statement"]
    host_role = by_name(rec, "host-role")
    deny = next(s for s in statements if s["Sid"] == "DenyHostDestruction")
    assert deny["Effect"] == "Deny" and deny["Principal"]["AWS"].endswith(host_role.name)
    assert {"s3:DeleteObject", "s3:DeleteObjectVersion", "s3:BypassGovernanceRetention"} <= set(deny["Action"])
    assert host_role.urn in by_name(rec, "backup-policy").property_dependencies["policy"]


def test_local_has_no_bucket() -> None:
    assert not [reg for reg in recording("local").resources.values() if reg.type.startswith(("aws:s3", "aws:kms"))]


def test_the_model_refuses_a_lock_longer_than_the_retention() -> None:
    with pytest.raises(ValueError, match=r"lock_days .* exceeds retention_days"):
        BackupStorage.model_validate({"retention_days": 7, "lock_days": 30})


# --- on moto -------------------------------------------------------------------------------------

def _clients(env: dict[str, str], monkeypatch: pytest.MonkeyPatch, **credentials: str) -> tuple[Any, Any, Any]:
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    for k in UNSET:
        monkeypatch.delenv(k, raising=False)
    session = boto3.session.Session(region_name="eu-west-1", **credentials)
    return session.client("s3"), session.client("kms"), session.client("iam")


@pytest.fixture
def moto(tmp_path: Path) -> Iterator[dict[str, str]]:
    with moto_server(tmp_path) as url:
        yield aws_env(url)


MODEL = BackupStorage.model_validate({"retention_days": 30, "noncurrent_days": 7, "lock_days": 30})


def test_s3_takes_the_rendered_settings_and_governance_lock_holds(moto: dict[str, str],
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    s3, kms, _ = _clients(moto, monkeypatch)
    bucket = "mysaaschat-backups"
    s3.create_bucket(Bucket=bucket, ObjectLockEnabledForBucket=True,
                     CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    key_arn = kms.create_key(Description="backups")["KeyMetadata"]["Arn"]
    s3.put_bucket_encryption(Bucket=bucket, ServerSideEncryptionConfiguration={"Rules": [{
        "ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "aws:kms", "KMSMasterKeyID": key_arn},
        "BucketKeyEnabled": True}]})
    s3.put_public_access_block(Bucket=bucket, PublicAccessBlockConfiguration={
        "BlockPublicAcls": True, "IgnorePublicAcls": True, "BlockPublicPolicy": True, "RestrictPublicBuckets": True})
    policy = r.bucket_policy(f"arn:aws:s3:::{bucket}", "arn:aws:iam::123456789012:role/host-role")
    s3.put_bucket_policy(Bucket=bucket, Policy=policy)
    s3.put_bucket_lifecycle_configuration(Bucket=bucket,
                                          LifecycleConfiguration={"Rules": r.lifecycle_rules(MODEL, "prod", "main")})
    s3.put_object_lock_configuration(Bucket=bucket, ObjectLockConfiguration=r.object_lock(MODEL))

    assert json.loads(s3.get_bucket_policy(Bucket=bucket)["Policy"]) == json.loads(policy)
    assert s3.get_bucket_policy_status(Bucket=bucket)["PolicyStatus"]["IsPublic"] is False
    *expiring, history = s3.get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"]
    assert len(expiring) == 10 and all(rule["Expiration"] == {"Days": 30} for rule in expiring)
    assert history["NoncurrentVersionExpiration"]["NoncurrentDays"] == 7
    assert history["AbortIncompleteMultipartUpload"] == {"DaysAfterInitiation": 1}
    lock = s3.get_object_lock_configuration(Bucket=bucket)["ObjectLockConfiguration"]
    assert lock["ObjectLockEnabled"] == "Enabled"
    assert lock["Rule"]["DefaultRetention"]["Mode"] == "GOVERNANCE" and lock["Rule"]["DefaultRetention"]["Days"] == 30
    [sse] = s3.get_bucket_encryption(Bucket=bucket)["ServerSideEncryptionConfiguration"]["Rules"]
    assert sse["BucketKeyEnabled"] is True

    # moto evaluates a bucket policy on object writes (s3/responses.py, "A bucket can deny all actions"),
    # but without request context: a statement with a Condition counts as a Deny whatever the
    # transport (iam/access_control.py IAMPolicyStatement.is_action_permitted). So this plain-HTTP
    # write is refused as the policy says, yet the same write over TLS would be refused by moto too:
    # the TLS condition itself is proven by reading the document (test above), not by moto.
    with pytest.raises(ClientError, match="403"):
        s3.put_object(Bucket=bucket, Key="prod/base.tar", Body=b"backup")
    s3.delete_bucket_policy(Bucket=bucket)
    put = s3.put_object(Bucket=bucket, Key="prod/base.tar", Body=b"backup")
    assert put["ServerSideEncryption"] == "aws:kms"
    head = s3.head_object(Bucket=bucket, Key="prod/base.tar")
    assert head["ObjectLockMode"] == "GOVERNANCE"
    with pytest.raises(ClientError, match="AccessDenied"):
        s3.delete_object(Bucket=bucket, Key="prod/base.tar", VersionId=put["VersionId"])
    # Only with s3:BypassGovernanceRetention (which the host never gets) can a version be removed early.
    s3.delete_object(Bucket=bucket, Key="prod/base.tar", VersionId=put["VersionId"], BypassGovernanceRetention=True)


def test_the_host_policy_writes_its_prefix_and_deletes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bucket = "mysaaschat-backups"
    statements = r.host_statements(bucket, "prod", "arn:aws:kms:eu-west-1:123456789012:key/k")
    # moto enforces IAM identity policies after its first N requests: exactly the set-up below.
    with moto_server(tmp_path, {"INITIAL_NO_AUTH_ACTION_COUNT": "4"}) as url:
        env = aws_env(url)
        s3, _, iam = _clients(env, monkeypatch)
        iam.create_user(UserName="host")
        iam.put_user_policy(UserName="host", PolicyName="backups", PolicyDocument=r.policy_json(statements))
        key = iam.create_access_key(UserName="host")["AccessKey"]
        s3.create_bucket(Bucket=bucket, ObjectLockEnabledForBucket=True,
                         CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
        host, _, _ = _clients(env, monkeypatch, aws_access_key_id=key["AccessKeyId"],
                              aws_secret_access_key=key["SecretAccessKey"])
        put = host.put_object(Bucket=bucket, Key="prod/archive/000000010000000000000001", Body=b"wal")
        assert host.get_object(Bucket=bucket, Key="prod/archive/000000010000000000000001")["Body"].read() == b"wal"
        for attempt in (
            lambda: host.put_object(Bucket=bucket, Key="staging/other-stack", Body=b"x"),
            lambda: host.put_object(Bucket=bucket, Key="top-level", Body=b"x"),
            lambda: host.delete_object(Bucket=bucket, Key="prod/archive/000000010000000000000001"),
            lambda: host.delete_object(Bucket=bucket, Key="prod/archive/000000010000000000000001",
                                       VersionId=put["VersionId"]),
            lambda: host.delete_bucket_policy(Bucket=bucket),
            lambda: host.put_bucket_lifecycle_configuration(
                Bucket=bucket, LifecycleConfiguration={"Rules": r.lifecycle_rules(MODEL, "prod", "main")}),
        ):
            with pytest.raises(ClientError, match="AccessDenied"):
                attempt()
        # The refused delete changed nothing: the object is still there.
        assert host.get_object(Bucket=bucket, Key="prod/archive/000000010000000000000001")["Body"].read() == b"wal"
