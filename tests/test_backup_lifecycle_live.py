"""The bucket lifecycle against what pgBackRest really writes.

Real pgBackRest 2.45 and PostgreSQL 15 (Debian), the configuration the program renders, and a moto S3
over TLS whose bucket is set up like the real one: versioning, Object Lock with the rendered
governance default retention, and the rendered lifecycle rules. pgBackRest runs stanza-create, a full
and a diff backup and archives WAL; then every object key in the bucket is listed and the rules'
filters are evaluated as S3 does (render/backup_storage.py rule_applies):
- every info file (archive.info, backup.info and their .copy, backup.history) is outside every rule
  that expires current versions: an expired info file stops every archive-push;
- every WAL segment and every backup-set file is inside one.
The same run proves the Object Lock side: moto refuses a PUT to a bucket with a default retention
unless it carries Content-MD5 (or an SDK checksum) (moto/s3/responses.py _key_response_put,
MissingUploadObjectWithObjectLockHeaders), as S3 does; pgBackRest sends Content-MD5 on every request
with a body (pgbackrest src/storage/s3/storage.c storageS3RequestAsync), and its info-file rewrites
become new versions. Then `ops backup list` flags backups whose set the lifecycle has expired.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from config.model import BackupStorage
from ops import backup as ob
from ops import pglab
from render import backup_storage as r
from render import pgbackrest as pbr
from tests.conftest import recording, require_tool

BUCKET = "mysaaschat-lifecycle"
STACK = "prod"
PASSPHRASE = "lifecycle passphrase 0123456789abcdef"
MODEL = BackupStorage.model_validate({"retention_days": 30, "noncurrent_days": 7, "lock_days": 30})
RULES = r.lifecycle_rules(MODEL, STACK, pbr.STANZA)

# The repository layout, from pgBackRest's own patterns (release/2.45):
# src/info/infoArchive.h, src/info/infoBackup.h (info files), src/command/archive/common.h
# (WAL_SEGMENT_DIR_REGEXP, WAL_SEGMENT_FILE_REGEXP, WAL_TIMELINE_HISTORY_REGEXP), src/info/infoArchive.h
# REGEX_ARCHIVE_DIR_DB_VERSION, src/command/backup/common.c (labels), BACKUP_PATH_HISTORY.
_P = rf"{STACK}/(archive|backup)/{pbr.STANZA}"
ARCHIVE_ID = r"[0-9]+(\.[0-9]+)*-[0-9]+"
LABEL = r"[0-9]{8}-[0-9]{6}F(_[0-9]{8}-[0-9]{6}[DI])?"
KINDS = {
    "info": rf"{STACK}/(archive/{pbr.STANZA}/archive\.info|backup/{pbr.STANZA}/backup\.info)(\.copy)?",
    "history": rf"{STACK}/backup/{pbr.STANZA}/backup\.history/.+",
    "wal": rf"{STACK}/archive/{pbr.STANZA}/{ARCHIVE_ID}/[0-9A-F]{{16}}/[0-9A-F]{{24}}(-[0-9a-f]{{40}}(\.[a-z0-9]+)?"
           r"|\.[0-9A-F]{8}\.backup)",  # the backup-label history file pushed at backup stop
    "timeline": rf"{STACK}/archive/{pbr.STANZA}/{ARCHIVE_ID}/[0-9A-F]{{8}}\.history",
    "set": rf"{STACK}/backup/{pbr.STANZA}/{LABEL}/.+",
    "verify": rf"{STACK}/verify/.+\.json",
}
KEEP = ("info", "history", "verify")
EXPIRE = ("wal", "set")


def kind_of(key: str) -> str:
    found = [kind for kind, pattern in KINDS.items() if re.fullmatch(pattern, key)]
    assert len(found) == 1, f"{key}: not exactly one kind of pgBackRest object ({found})"
    return found[0]


@dataclass
class Lab:
    root: Path
    s3: pglab.S3Server
    live: pglab.Cluster
    runtime: pbr.Runtime
    labels: list[str]


def _tools() -> None:
    for tool in ("pgbackrest", "openssl", "runuser"):
        require_tool(tool)
    if not (pglab.PGBIN / "initdb").exists():
        require_tool("initdb-15")


def wait_archived(cluster: pglab.Cluster, timeout: float = 60) -> str:
    segment = cluster.sql("postgres", "SELECT pg_walfile_name(pg_switch_wal())")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cluster.sql("postgres", f"SELECT coalesce(last_archived_wal, '') >= '{segment}' FROM pg_stat_archiver") == "t":
            return segment
        time.sleep(0.2)
    raise AssertionError(f"WAL segment {segment} was not archived within {timeout}s")


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    _tools()
    if os.geteuid() != 0:
        pytest.skip("the servers run as the postgres user: run as root (CI does)")
    root = pglab.lab_root("backup-lifecycle-")
    s3 = pglab.S3Server(root / "s3")
    live = pglab.Cluster(root / "pg" / "live", root / "sock")
    try:
        s3.start()
        client = s3.client()
        client.create_bucket(Bucket=BUCKET, ObjectLockEnabledForBucket=True)
        client.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
        client.put_object_lock_configuration(Bucket=BUCKET, ObjectLockConfiguration=r.object_lock(MODEL))
        client.put_bucket_lifecycle_configuration(Bucket=BUCKET, LifecycleConfiguration={"Rules": RULES})
        backup = recording(STACK).env.postgres.backup
        runtime = pglab.start_backed_up(root, live, s3, stack=STACK, bucket=BUCKET, backup=backup, passphrase=PASSPHRASE)
        live.sql("postgres", "CREATE TABLE t (id int, body text); INSERT INTO t SELECT g, md5(g::text) "
                             "FROM generate_series(1, 20000) g")
        full = ob.backup_now(runtime, "full")
        live.sql("postgres", "INSERT INTO t SELECT g, repeat('x', 500) FROM generate_series(1, 20000) g")
        wait_archived(live)
        diff = ob.backup_now(runtime, "diff")
        live.sql("postgres", "UPDATE t SET body = 'after the diff' WHERE id < 100")
        wait_archived(live)
        yield Lab(root, s3, live, runtime, [full, diff])
    finally:
        live.stop()
        s3.stop()
        pglab.remove(root)


def _objects(client: Any) -> dict[str, int]:
    found: dict[str, int] = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET):
        found.update({o["Key"]: int(o["Size"]) for o in page.get("Contents", [])})
    return found


def test_the_lifecycle_expires_wal_and_backup_sets_and_never_an_info_file(lab: Lab) -> None:
    client = lab.s3.client()
    # The manifest `ops backup run` writes beside the repository: kept too.
    client.put_object(Bucket=BUCKET, Key=ob.manifest_key(STACK, lab.labels[0]), Body=b"{}")
    objects = _objects(client)
    by_kind: dict[str, list[str]] = {}
    for key in objects:
        by_kind.setdefault(kind_of(key), []).append(key)
    for key, size in sorted(objects.items()):  # the evidence, with -s
        print(f"{kind_of(key):9} {'expires' if r.expires_current(RULES, key, size) else 'kept'} {key}")
    # Not vacuous: pgBackRest wrote every kind the rules must tell apart.
    assert {"info", "wal", "set", "verify"} <= set(by_kind), sorted(by_kind)
    assert len(by_kind["info"]) == 4
    assert {k.split("/")[3] for k in by_kind["set"]} == set(lab.labels)
    assert any(k.endswith("/backup.manifest") for k in by_kind["set"])
    for kind in KEEP:
        for key in by_kind.get(kind, []):
            assert not r.expires_current(RULES, key, objects[key]), f"{key} ({kind}) would expire"
    for kind in EXPIRE:
        for key in by_kind[kind]:
            assert r.expires_current(RULES, key, objects[key]), f"{key} ({kind}) would never expire"
    # The rule the program had before this fix (one rule over the whole bucket) expired the info files.
    old = {"ID": "retention", "Status": "Enabled", "Filter": {"Prefix": ""}, "Expiration": {"Days": 30}}
    assert all(r.expires_current([old], key, objects[key]) for key in by_kind["info"])
    # Every object, not only the expiring ones, is under the rule that ends old versions and uploads.
    history_rule = next(rule for rule in RULES if "NoncurrentVersionExpiration" in rule)
    assert all(r.rule_applies(history_rule, key, size) for key, size in objects.items())


def test_object_lock_takes_pgbackrests_writes_and_info_rewrites_are_new_versions(lab: Lab) -> None:
    client = lab.s3.client()
    key = f"{STACK}/backup/{pbr.STANZA}/backup.info"
    versions = [v for v in client.list_object_versions(Bucket=BUCKET, Prefix=key)["Versions"] if v["Key"] == key]
    # stanza-create, then each backup rewrote it: one locked version per PUT.
    assert len(versions) >= 3, versions
    head = client.head_object(Bucket=BUCKET, Key=key, VersionId=versions[-1]["VersionId"])
    assert head["ObjectLockMode"] == "GOVERNANCE"
    # The lock is what moto enforces on every PUT: without Content-MD5 the write is refused.
    import botocore.exceptions

    raw = lab.s3.client()

    def strip_checksums(request: Any, **_: Any) -> None:
        for header in [h for h in request.headers if h.lower() == "content-md5" or h.lower().startswith(
                ("x-amz-sdk-checksum", "x-amz-checksum"))]:
            del request.headers[header]

    raw.meta.events.register("before-sign.s3.PutObject", strip_checksums)
    with pytest.raises(botocore.exceptions.ClientError, match=r"Content-MD5|InvalidRequest"):
        raw.put_object(Bucket=BUCKET, Key=f"{STACK}/probe", Body=b"no checksum")


def _cli_list(lab: Lab, monkeypatch: pytest.MonkeyPatch) -> tuple[int, str]:
    from typer.testing import CliRunner

    from ops.cli import app

    for key, value in {"AWS_ENDPOINT_URL": lab.s3.url, "AWS_CA_BUNDLE": str(lab.s3.ca_file),
                       "AWS_ACCESS_KEY_ID": pglab.S3_KEY, "AWS_SECRET_ACCESS_KEY": pglab.S3_SECRET,
                       "AWS_DEFAULT_REGION": pglab.S3_REGION}.items():
        monkeypatch.setenv(key, value)
    result = CliRunner().invoke(app, ["backup", "list", "--json", "--bucket", BUCKET, "--stack", STACK,
                                      "--conf", lab.runtime.conf, "--include", lab.runtime.include_path,
                                      "--pg-data", str(lab.live.data), "--socket", str(lab.live.sock),
                                      "--port", str(lab.live.port)])
    return result.exit_code, result.output


def test_list_flags_backups_whose_files_the_lifecycle_expired(lab: Lab, monkeypatch: pytest.MonkeyPatch) -> None:
    full, diff = lab.labels
    code, out = _cli_list(lab, monkeypatch)
    assert code == 0, out
    listed = json.loads(out)
    assert [(b["label"], b["expired"]) for b in listed["backups"]] == [(full, False), (diff, False)]
    assert listed["earliest"] is not None
    # What the lifecycle does when the diff set's age passes the retention: a delete marker on each
    # current object of the set (a versioned bucket keeps the data as a noncurrent version).
    client = lab.s3.client()
    for key in [k for k in _objects(client) if k.startswith(f"{STACK}/backup/{pbr.STANZA}/{diff}/")]:
        client.delete_object(Bucket=BUCKET, Key=key)
    code, out = _cli_list(lab, monkeypatch)
    assert code == 0, out
    listed = json.loads(out)
    # backup.info still lists both; only the diff is flagged, and the window still starts at the full.
    assert [(b["label"], b["expired"]) for b in listed["backups"]] == [(full, False), (diff, True)]
    assert listed["earliest"] is not None and listed["latest_backup"] == listed["earliest"]
    # The full set expires too: the diff depended on it anyway; nothing is restorable.
    for key in [k for k in _objects(client) if k.startswith(f"{STACK}/backup/{pbr.STANZA}/{full}/")]:
        client.delete_object(Bucket=BUCKET, Key=key)
    code, out = _cli_list(lab, monkeypatch)
    listed = json.loads(out)
    assert [(b["label"], b["expired"]) for b in listed["backups"]] == [(full, True), (diff, True)]
    assert listed["earliest"] is None


def test_an_expired_info_file_stops_archive_push_which_is_why_the_rules_spare_them(lab: Lab) -> None:
    """The defect the scoped rules fix, shown on the real tools: delete-mark archive.info and its copy
    (what the old whole-bucket rule did after 30 days) and the next WAL segment is not archived."""
    client = lab.s3.client()
    failed_before = int(lab.live.sql("postgres", "SELECT failed_count FROM pg_stat_archiver"))
    for name in ("archive.info", "archive.info.copy"):
        client.delete_object(Bucket=BUCKET, Key=f"{STACK}/archive/{pbr.STANZA}/{name}")
    lab.live.sql("postgres", "SELECT pg_switch_wal()")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if int(lab.live.sql("postgres", "SELECT failed_count FROM pg_stat_archiver")) > failed_before:
            break
        time.sleep(0.5)
    else:
        raise AssertionError("archive-push kept working without archive.info")
