"""The backup bucket: where the host's backups go, and where a compromised host cannot destroy them.

`host.backup_bucket` (ec2 stacks) is created here with versioning, SSE-KMS under a customer-managed
key with an S3 bucket key, every public access block, a TLS-only policy that also denies the host's
role every delete, lifecycle retention from `backup_storage`, Object Lock in governance mode, and
replication to `<bucket>-replica` in `backup_storage.replica_region`. Everything durable is
`protect`ed. The host's role may read, write and list its stack's prefix, never delete.

pulumi-aws 7: the `aws.s3.Bucket*V2` classes are deprecated; the bucket is `aws.s3.Bucket` and each
setting is its own resource. Object Lock can only be switched on when the bucket is created
(`object_lock_enabled` on `aws.s3.Bucket`: "Changing this forces a new resource"; AWS S3 user guide,
"Configuring S3 Object Lock": "you can enable Object Lock when creating a bucket"); the retention
rule is then `aws.s3.BucketObjectLockConfiguration`. The replica's region is the v7 per-resource
`region` argument (terraform-provider-aws v6 "enhanced region support": one provider, any region),
so no second provider is configured.
"""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_aws as aws

from components.host import Host
from config import Environment
from render import backup_storage as r
from render.pgbackrest import STANZA

TOKEN = "my-saas-chat:backup:BackupStorage"


@dataclass
class BackupStorageArgs:
    env: Environment
    host: Host


class BackupStorage(pulumi.ComponentResource):
    bucket: aws.s3.Bucket | None = None
    key: aws.kms.Key | None = None

    def __init__(self, name: str, args: BackupStorageArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__(TOKEN, name, None, opts)
        env = args.env
        if env.host.kind == "ec2" and env.host.backup_bucket:
            self._build(name, env, args.host, env.host.backup_bucket)
        self.register_outputs({"bucket": self.bucket.bucket if self.bucket else None})

    def _child(self, **kwargs: object) -> pulumi.ResourceOptions:
        return pulumi.ResourceOptions(parent=self, **kwargs)  # type: ignore[arg-type]

    def _bucket(self, name: str, env: Environment, bucket_name: str, region: str | None,
                host_role_arn: pulumi.Output[str] | None) -> tuple[aws.s3.Bucket, aws.kms.Key, aws.s3.BucketVersioning]:
        """One hardened bucket (the primary or its replica): same settings, same rules."""
        model = env.backup_storage
        tags = {"Project": "my-saas-chat", "Stack": env.stack, "Purpose": "backup"}
        key = aws.kms.Key(f"{name}-key", region=region, description=f"my-saas-chat {env.stack}: backups in {bucket_name}",
                          enable_key_rotation=True, deletion_window_in_days=30, tags=tags,
                          opts=self._child(protect=True))
        bucket = aws.s3.Bucket(f"{name}-bucket", region=region, bucket=bucket_name, object_lock_enabled=True, tags=tags,
                               opts=self._child(protect=True))
        versioning = aws.s3.BucketVersioning(
            f"{name}-versioning", region=region, bucket=bucket.id,
            versioning_configuration=aws.s3.BucketVersioningVersioningConfigurationArgs(status="Enabled"),
            opts=self._child(protect=True))
        aws.s3.BucketServerSideEncryptionConfiguration(
            f"{name}-encryption", region=region, bucket=bucket.id,
            rules=[aws.s3.BucketServerSideEncryptionConfigurationRuleArgs(
                apply_server_side_encryption_by_default=aws.s3.
                BucketServerSideEncryptionConfigurationRuleApplyServerSideEncryptionByDefaultArgs(
                    sse_algorithm="aws:kms", kms_master_key_id=key.arn),
                # One data key per bucket instead of a KMS call per object (cost, KMS request rate).
                bucket_key_enabled=True)],
            opts=self._child(protect=True))
        public = aws.s3.BucketPublicAccessBlock(
            f"{name}-public-access", region=region, bucket=bucket.id, block_public_acls=True, block_public_policy=True,
            ignore_public_acls=True, restrict_public_buckets=True, opts=self._child(protect=True))
        aws.s3.BucketPolicy(
            f"{name}-policy", region=region, bucket=bucket.id,
            policy=pulumi.Output.all(bucket.arn, host_role_arn).apply(lambda v: r.bucket_policy(v[0], v[1])),
            # S3 refuses a policy while the public access block is being set up concurrently.
            opts=self._child(protect=True, depends_on=[public]))
        rules = r.lifecycle_rules(model, env.stack, STANZA)
        aws.s3.BucketLifecycleConfiguration(
            f"{name}-lifecycle", region=region, bucket=bucket.id,
            rules=[aws.s3.BucketLifecycleConfigurationRuleArgs(
                id=rule["ID"], status=rule["Status"],
                filter=aws.s3.BucketLifecycleConfigurationRuleFilterArgs(prefix=rule["Filter"]["Prefix"]),
                expiration=aws.s3.BucketLifecycleConfigurationRuleExpirationArgs(days=rule["Expiration"]["Days"])
                if "Expiration" in rule else None,
                noncurrent_version_expiration=aws.s3.BucketLifecycleConfigurationRuleNoncurrentVersionExpirationArgs(
                    noncurrent_days=rule["NoncurrentVersionExpiration"]["NoncurrentDays"])
                if "NoncurrentVersionExpiration" in rule else None,
                abort_incomplete_multipart_upload=aws.s3.
                BucketLifecycleConfigurationRuleAbortIncompleteMultipartUploadArgs(
                    days_after_initiation=rule["AbortIncompleteMultipartUpload"]["DaysAfterInitiation"])
                if "AbortIncompleteMultipartUpload" in rule else None)
                for rule in rules],
            # S3 applies a lifecycle configuration to a versioned bucket's versions only once
            # versioning is on (terraform-provider-aws docs for this resource recommend depends_on).
            opts=self._child(protect=True, depends_on=[versioning]))
        lock = r.object_lock(model)
        aws.s3.BucketObjectLockConfiguration(
            f"{name}-object-lock", region=region, bucket=bucket.id, object_lock_enabled=lock["ObjectLockEnabled"],
            rule=aws.s3.BucketObjectLockConfigurationRuleArgs(
                default_retention=aws.s3.BucketObjectLockConfigurationRuleDefaultRetentionArgs(
                    mode=lock["Rule"]["DefaultRetention"]["Mode"], days=lock["Rule"]["DefaultRetention"]["Days"])),
            opts=self._child(protect=True, depends_on=[versioning]))
        return bucket, key, versioning

    def _build(self, name: str, env: Environment, host: Host, bucket_name: str) -> None:
        role_arn = host.role.arn if host.role is not None else None
        self.bucket, self.key, versioning = self._bucket(name, env, bucket_name, None, role_arn)
        replica, replica_key, replica_versioning = self._bucket(
            f"{name}-replica", env, f"{bucket_name}-replica", env.backup_storage.replica_region, None)
        tags = {"Project": "my-saas-chat", "Stack": env.stack}
        role = aws.iam.Role(f"{name}-replication-role", assume_role_policy=r.assume_role_policy("s3.amazonaws.com"),
                            tags=tags, opts=self._child())
        policy = aws.iam.RolePolicy(
            f"{name}-replication", role=role.id, name="replicate-backups",
            policy=pulumi.Output.all(self.bucket.arn, replica.arn, self.key.arn, replica_key.arn).apply(
                lambda v: r.policy_json(r.replication_statements(v[0], v[1], v[2], v[3]))),
            opts=self._child())
        aws.s3.BucketReplicationConfig(
            f"{name}-replication", bucket=self.bucket.id, role=role.arn,
            rules=[aws.s3.BucketReplicationConfigRuleArgs(
                id="replica", status="Enabled", priority=1,
                filter=aws.s3.BucketReplicationConfigRuleFilterArgs(prefix=""),
                # A delete marker written at the source is not carried over: the replica keeps history.
                delete_marker_replication=aws.s3.BucketReplicationConfigRuleDeleteMarkerReplicationArgs(
                    status="Disabled"),
                source_selection_criteria=aws.s3.BucketReplicationConfigRuleSourceSelectionCriteriaArgs(
                    sse_kms_encrypted_objects=aws.s3.
                    BucketReplicationConfigRuleSourceSelectionCriteriaSseKmsEncryptedObjectsArgs(status="Enabled")),
                destination=aws.s3.BucketReplicationConfigRuleDestinationArgs(
                    bucket=replica.arn, storage_class="STANDARD_IA",
                    encryption_configuration=aws.s3.BucketReplicationConfigRuleDestinationEncryptionConfigurationArgs(
                        replica_kms_key_id=replica_key.arn)))],
            # Replication needs versioning on both sides first (S3 refuses the configuration otherwise).
            opts=self._child(protect=True, depends_on=[versioning, replica_versioning, policy]))
        if host.role is not None:
            aws.iam.RolePolicy(
                f"{name}-host-access", role=host.role.id, name="backups",
                policy=self.key.arn.apply(lambda key: r.policy_json(r.host_statements(bucket_name, env.stack, key))),
                opts=self._child())
