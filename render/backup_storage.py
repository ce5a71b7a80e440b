"""The backup bucket's policy documents and lifecycle, as pure functions of the model and of ARNs.

Policies are emitted compact with sorted keys and "Version" first: the form terraform-provider-aws
stores them in (s3/bucket_policy.go and iam/role_policy.go, `verify.LegacyPolicyNormalize` /
`structure.NormalizeJsonString`), so a second `up` sees no diff.
"""

from __future__ import annotations

import json
from typing import Any

from config.model import BackupStorage

# Never allowed to the host, whatever else it is granted later: an explicit Deny wins over any Allow.
HOST_DENIED = ["s3:BypassGovernanceRetention", "s3:DeleteBucket", "s3:DeleteBucketPolicy", "s3:DeleteObject",
               "s3:DeleteObjectVersion", "s3:PutBucketObjectLockConfiguration", "s3:PutBucketPolicy",
               "s3:PutBucketVersioning", "s3:PutLifecycleConfiguration", "s3:PutObjectRetention"]
# What the host's backups need under its prefix: write, read back (restore, pgBackRest reads its
# own info files) and list. No delete: retention is the lifecycle's job.
HOST_OBJECT_ACTIONS = ["s3:GetObject", "s3:PutObject"]


def policy_json(statements: list[dict[str, Any]]) -> str:
    return '{"Version":"2012-10-17","Statement":' + json.dumps(statements, sort_keys=True, separators=(",", ":")) + "}"


def bucket_policy(bucket_arn: str, host_role_arn: str | None) -> str:
    """TLS only for everyone; and the host's role may never delete, bypass the lock or loosen the bucket."""
    statements: list[dict[str, Any]] = [{
        "Sid": "DenyInsecureTransport", "Effect": "Deny", "Principal": "*", "Action": "s3:*",
        "Resource": [bucket_arn, f"{bucket_arn}/*"], "Condition": {"Bool": {"aws:SecureTransport": "false"}}}]
    if host_role_arn:
        statements.append({"Sid": "DenyHostDestruction", "Effect": "Deny", "Principal": {"AWS": host_role_arn},
                           "Action": HOST_DENIED, "Resource": [bucket_arn, f"{bucket_arn}/*"]})
    return policy_json(statements)


def host_statements(bucket: str, stack: str, key_arn: str) -> list[dict[str, Any]]:
    """The host's identity policy: its stack's prefix only, no delete, and the bucket key for SSE-KMS."""
    return [
        {"Effect": "Allow", "Action": HOST_OBJECT_ACTIONS, "Resource": [f"arn:aws:s3:::{bucket}/{stack}/*"]},
        {"Effect": "Allow", "Action": ["s3:ListBucket"], "Resource": [f"arn:aws:s3:::{bucket}"],
         "Condition": {"StringLike": {"s3:prefix": [f"{stack}/*"]}}},
        # SSE-KMS: S3 asks KMS for a data key on the writer's behalf (GenerateDataKey), and to
        # decrypt it for reads and multipart uploads (Decrypt).
        {"Effect": "Allow", "Action": ["kms:Decrypt", "kms:GenerateDataKey"], "Resource": [key_arn]},
    ]


def replication_statements(source_arn: str, replica_arn: str, source_key_arn: str,
                           replica_key_arn: str) -> list[dict[str, Any]]:
    """What S3 replication needs (AWS S3 user guide, "Setting up permissions for live replication"),
    object lock retention included; deletes are not replicated."""
    return [
        {"Effect": "Allow", "Action": ["s3:GetReplicationConfiguration", "s3:ListBucket"], "Resource": [source_arn]},
        {"Effect": "Allow", "Action": ["s3:GetObjectLegalHold", "s3:GetObjectRetention", "s3:GetObjectVersionAcl",
                                       "s3:GetObjectVersionForReplication", "s3:GetObjectVersionTagging"],
         "Resource": [f"{source_arn}/*"]},
        {"Effect": "Allow", "Action": ["s3:ReplicateObject", "s3:ReplicateTags"], "Resource": [f"{replica_arn}/*"]},
        {"Effect": "Allow", "Action": ["kms:Decrypt"], "Resource": [source_key_arn]},
        {"Effect": "Allow", "Action": ["kms:Encrypt", "kms:GenerateDataKey"], "Resource": [replica_key_arn]},
    ]


def assume_role_policy(service: str) -> str:
    # iam/role.go stores `structure.NormalizeJsonString`: compact, every key sorted.
    return json.dumps({"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": "sts:AssumeRole", "Principal": {"Service": service}}]},
        sort_keys=True, separators=(",", ":"))


def lifecycle_rule(model: BackupStorage) -> dict[str, Any]:
    """One rule over the whole bucket, in the S3 API's shape (boto3's PutBucketLifecycleConfiguration):
    current versions expire after the retention, noncurrent ones are deleted after `noncurrent_days`,
    incomplete multipart uploads are aborted."""
    return {"ID": "retention", "Status": "Enabled", "Filter": {"Prefix": ""},
            "Expiration": {"Days": model.retention_days},
            "NoncurrentVersionExpiration": {"NoncurrentDays": model.noncurrent_days},
            "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": model.abort_multipart_days}}


def object_lock(model: BackupStorage) -> dict[str, Any]:
    """Governance mode: nobody without s3:BypassGovernanceRetention (the host never has it) can
    delete or overwrite a version before its retention ends."""
    return {"ObjectLockEnabled": "Enabled",
            "Rule": {"DefaultRetention": {"Mode": "GOVERNANCE", "Days": model.lock_days}}}
