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


# pgBackRest's repository layout under `repo1-path=/<stack>` (pgbackrest/pgbackrest, release/2.45):
#   archive/<stanza>/archive.info(.copy)           src/info/infoArchive.h INFO_ARCHIVE_PATH_FILE(_COPY)
#   archive/<stanza>/<archive-id>/                 REGEX_ARCHIVE_DIR_DB_VERSION "^[0-9]+(\.[0-9]+)*-[0-9]+$"
#       <16 hex>/<24 hex>-<sha1>[.zst]             src/command/archive/common.h WAL_SEGMENT_DIR/FILE_REGEXP
#       <8 hex>.history                            WAL_TIMELINE_HISTORY_REGEXP (beside the segment dirs)
#   backup/<stanza>/backup.info(.copy)             src/info/infoBackup.h INFO_BACKUP_PATH_FILE(_COPY)
#   backup/<stanza>/backup.history/<year>/...      src/command/backup/common.h BACKUP_PATH_HISTORY
#   backup/<stanza>/<label>/backup.manifest(.copy), bundle/<n>, pg_data/...
#                                                  labels: src/command/backup/common.c backupLabelCreate,
#                                                  strftime "%Y%m%d-%H%M%S" + F|D|I: they start with the year.
# The info files are written at stanza-create and rewritten rarely; archive-push and backup read them
# first, so an expired (delete-marked) info file stops every archive-push and backup. S3 lifecycle
# filters match by key prefix only (plus tags/size): the expiring rules name the archive-id
# directories (they start with a digit 1-9, the PostgreSQL major version) and the backup-set
# directories (they start with "2", the year), never `archive.info`, `backup.info`, `backup.history`
# (all start with a letter) nor the verification manifests under `<stack>/verify/`.
# Not separable by prefix: a timeline's `.history` file sits beside its WAL directories, so it
# expires with them. That is safe by age: timeline N's history file is written when N begins, so
# when it expires every backup taken before N began (the only ones that need it) has expired too.
ARCHIVE_ID_FIRST = "123456789"
LABEL_FIRST = "2"


def expiring_prefixes(stack: str, stanza: str) -> list[str]:
    """Key prefixes whose current objects the lifecycle expires: WAL and backup sets, nothing else."""
    return ([f"{stack}/archive/{stanza}/{d}" for d in ARCHIVE_ID_FIRST]
            + [f"{stack}/backup/{stanza}/{d}" for d in LABEL_FIRST])


def lifecycle_rules(model: BackupStorage, stack: str, stanza: str) -> list[dict[str, Any]]:
    """The lifecycle, in the S3 API's shape (boto3's PutBucketLifecycleConfiguration):
    - one rule per expiring prefix: current versions expire after the retention (a delete marker;
      the data stays a noncurrent version for `noncurrent_days`, Object Lock permitting);
    - one rule over the stack's whole prefix: noncurrent versions (rewritten info files, expired
      WAL and sets) are deleted after `noncurrent_days`, incomplete multipart uploads aborted."""
    rules: list[dict[str, Any]] = [
        {"ID": f"expire-{prefix.split('/', 1)[1].replace('/', '-')}", "Status": "Enabled", "Filter": {"Prefix": prefix},
         "Expiration": {"Days": model.retention_days}}
        for prefix in expiring_prefixes(stack, stanza)]
    rules.append({"ID": "history", "Status": "Enabled", "Filter": {"Prefix": f"{stack}/"},
                  "NoncurrentVersionExpiration": {"NoncurrentDays": model.noncurrent_days},
                  "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": model.abort_multipart_days}})
    return rules


def rule_applies(rule: dict[str, Any], key: str, size: int, tags: dict[str, str] | None = None) -> bool:
    """Whether S3 applies `rule` to an object, as the S3 user guide ("Lifecycle configuration
    elements", Filter) defines it: a disabled rule never; a Filter with Prefix, Tag, ObjectSizeGreaterThan
    or ObjectSizeLessThan, or an And of them (all must hold); the legacy top-level Prefix."""
    if rule.get("Status") != "Enabled":
        return False
    tags = tags or {}
    filt = rule.get("Filter")
    if filt is None:
        return key.startswith(rule.get("Prefix", ""))
    conds = filt.get("And", filt)
    if not key.startswith(conds.get("Prefix", "")):
        return False
    wanted = conds.get("Tags", []) + ([conds["Tag"]] if "Tag" in conds else [])
    if any(tags.get(t["Key"]) != t["Value"] for t in wanted):
        return False
    if "ObjectSizeGreaterThan" in conds and not size > int(conds["ObjectSizeGreaterThan"]):
        return False
    return not ("ObjectSizeLessThan" in conds and not size < int(conds["ObjectSizeLessThan"]))


def expires_current(rules: list[dict[str, Any]], key: str, size: int, tags: dict[str, str] | None = None) -> bool:
    """Whether any rule expires the current version of this object."""
    return any("Expiration" in rule and rule_applies(rule, key, size, tags) for rule in rules)


def object_lock(model: BackupStorage) -> dict[str, Any]:
    """Governance mode: nobody without s3:BypassGovernanceRetention (the host never has it) can
    delete or overwrite a version before its retention ends."""
    return {"ObjectLockEnabled": "Enabled",
            "Rule": {"DefaultRetention": {"Mode": "GOVERNANCE", "Days": model.lock_days}}}
