"""Continuous backups for real: PostgreSQL 15 and pgBackRest from Debian, the configuration and server
settings the program renders (render/pgbackrest.py, prod's model), and a moto S3 over TLS, all on
free loopback ports under one temporary directory, stopped by PID whatever happens.

Proves: a restore to a time T brings back exactly what was committed before T (unicode, bytea,
NULLs, large TOASTed rows, sequences, views); a corrupted or truncated backup object is refused and
the target directory does not stay behind; a wrong passphrase, a bucket the credentials may not
write and an unreachable endpoint are each one clear error with nothing written; the restore never
touches the live data directory; the metrics query reads what the repository holds.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pwd
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ops import backup as ob
from ops import pglab
from render import pgbackrest as pbr
from render.contracts import BACKUP_ARCHIVE_LAG, BACKUP_ARCHIVE_LAST_SUCCESS, BACKUP_LAST_SUCCESS
from tests.conftest import recording, require_tool

BUCKET = "mysaaschat-backups"
PASSPHRASE = "correct horse battery staple 0123456789"


@dataclasses.dataclass
class Lab:
    root: Path
    s3: pglab.S3Server
    live: pglab.Cluster
    runtime: pbr.Runtime

    def conf(self, name: str, **overrides: object) -> pbr.Runtime:
        """Another pgbackrest.conf for the same server (wrong passphrase, other endpoint, ...)."""
        args: dict[str, object] = dict(stack="prod", bucket=BUCKET, region=pglab.S3_REGION,
                                       backup=recording("prod").env.postgres.backup, passphrase=PASSPHRASE,
                                       runtime=self.runtime, endpoint=self.s3.endpoint())
        args.update(overrides)
        path = self.root / f"{name}.conf"
        path.write_text(pbr.pgbackrest_conf(**args))  # type: ignore[arg-type]
        path.chmod(0o600)
        pglab.give_to_postgres(path)
        return dataclasses.replace(self.runtime, conf=str(path))


def _tools() -> None:
    for tool in ("pgbackrest", "openssl", "runuser"):
        require_tool(tool)
    if not (pglab.PGBIN / "initdb").exists():
        require_tool("initdb-15")  # fails in CI, skips elsewhere: PostgreSQL 15 is not installed


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    _tools()
    if os.geteuid() != 0:
        pytest.skip("the servers run as the postgres user: run as root (CI does)")
    root = pglab.lab_root("backup-live-")
    s3 = pglab.S3Server(root / "s3")
    live = pglab.Cluster(root / "pg" / "live", root / "sock")
    try:
        s3.start()
        s3.client().create_bucket(Bucket=BUCKET)
        backup = recording("prod").env.postgres.backup
        runtime = pglab.start_backed_up(root, live, s3, stack="prod", bucket=BUCKET, backup=backup, passphrase=PASSPHRASE)
        live.sql("postgres", "CREATE DATABASE app")
        ob.backup_now(runtime, "full")
        yield Lab(root, s3, live, runtime)
    finally:
        for cluster_dir in sorted((root / "pg").glob("*")):
            pglab.Cluster(cluster_dir, root / "sock").stop()
        s3.stop()
        pglab.remove(root)


def wait_archived(cluster: pglab.Cluster, timeout: float = 60) -> None:
    """Close the current WAL segment and wait until archive_command has stored it."""
    segment = cluster.sql("postgres", "SELECT pg_walfile_name(pg_switch_wal())")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cluster.sql("postgres", f"SELECT coalesce(last_archived_wal, '') >= '{segment}' FROM pg_stat_archiver") == "t":
            return
        time.sleep(0.2)
    raise AssertionError(f"WAL segment {segment} was not archived within {timeout}s")


BEFORE = r"""
CREATE SEQUENCE ticket;
CREATE TABLE messages (id serial PRIMARY KEY, body text, lang text, sent timestamptz DEFAULT clock_timestamp());
CREATE TABLE blobs (id int PRIMARY KEY, data bytea, note text);
CREATE TABLE big (id int PRIMARY KEY, payload text);
CREATE VIEW per_lang AS SELECT coalesce(lang, '?') AS lang, count(*) AS n FROM messages GROUP BY 1;
INSERT INTO messages (body, lang) VALUES ('héllo wörld', 'de'), ('日本語のメッセージ', 'ja'), ('emoji 🎉🚀 and ZWJ 👩‍💻', NULL),
  ('', 'en'), (NULL, NULL), (E'tab\tnewline\nquote''', 'en');
INSERT INTO blobs VALUES (1, '\x00ff00deadbeef'::bytea, NULL), (2, ''::bytea, 'empty'), (3, NULL, 'null'),
  (4, decode(repeat('00ff', 5000), 'hex'), 'zeros and ones');
INSERT INTO big SELECT g, (SELECT string_agg(md5(g::text || i::text), '') FROM generate_series(1, 40000) i)
  FROM generate_series(1, 3) g;
SELECT nextval('ticket') FROM generate_series(1, 5);
"""

AFTER = r"""
INSERT INTO messages (body, lang) VALUES ('after T: must not come back', 'en');
UPDATE blobs SET data = '\x01'::bytea WHERE id = 1;
DELETE FROM big WHERE id = 2;
INSERT INTO big VALUES (9, repeat('x', 100000));
SELECT nextval('ticket') FROM generate_series(1, 100);
"""


def test_restore_to_a_time_brings_back_exactly_what_was_committed_before_it(lab: Lab, tmp_path: Path) -> None:
    live = lab.live
    live.sql("app", BEFORE)
    at_t = pglab.table_checksums(live, "app")
    view_at_t = live.sql("app", "SELECT * FROM per_lang ORDER BY 1")
    ticket_at_t = int(live.sql("app", "SELECT last_value FROM ticket"))
    time.sleep(1.1)
    target_time = live.sql("postgres", "SELECT now()::text")
    time.sleep(1.1)
    live.sql("app", AFTER)
    after = pglab.table_checksums(live, "app")
    assert after != at_t and len(at_t) == 3
    wait_archived(live)
    live_pid = (live.data / "postmaster.pid").read_text()

    restored_dir = lab.root / "pg" / "restored-t"
    ob.restore_into(lab.runtime, restored_dir, time=target_time)
    restored = ob.start_restored(restored_dir, lab.root / "sock")
    try:
        assert pglab.table_checksums(restored, "app") == at_t
        assert restored.sql("app", "SELECT * FROM per_lang ORDER BY 1") == view_at_t
        assert restored.sql("app", "SELECT count(*) FROM messages WHERE body LIKE 'after T%'") == "0"
        assert restored.sql("app", "SELECT body FROM messages WHERE lang = 'ja'") == "日本語のメッセージ"
        assert restored.sql("app", "SELECT encode(data, 'hex') FROM blobs WHERE id = 1") == "00ff00deadbeef"
        assert restored.sql("app", "SELECT count(*) FROM blobs WHERE data IS NULL") == "1"
        assert restored.sql("app", "SELECT min(length(payload)) FROM big") == str(40000 * 32)
        # Sequences are WAL-logged up to 32 values ahead: after a restore they may skip, never repeat.
        assert int(restored.sql("app", "SELECT nextval('ticket')")) > ticket_at_t
        # A restored copy does not archive into the live stanza (a second timeline would be pushed there).
        assert restored.sql("postgres", "SHOW archive_mode") == "off"
    finally:
        restored.stop()
    # The live server never noticed: same postmaster, its rows after T still there.
    assert (live.data / "postmaster.pid").read_text() == live_pid
    assert pglab.table_checksums(live, "app") == after


def test_restore_refuses_the_live_directory_and_anything_not_empty(lab: Lab) -> None:
    before = sorted(p.name for p in lab.live.data.iterdir())
    for target in (lab.live.data, lab.live.data / "pg_wal" / "restore-here", lab.live.data.parent):
        with pytest.raises(ob.BackupError, match="live data directory"):
            ob.restore_into(lab.runtime, target, latest=True)
    busy = lab.root / "pg" / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("mine")
    with pytest.raises(ob.BackupError, match="not empty"):
        ob.restore_into(lab.runtime, busy, latest=True)
    assert (busy / "keep.txt").read_text() == "mine"
    assert sorted(p.name for p in lab.live.data.iterdir()) == before
    assert not (lab.live.data / "pg_wal" / "restore-here").exists()


def _largest_bundle(lab: Lab) -> str:
    client = lab.s3.client()
    label = ob.repository(lab.runtime)["backup"][-1]["label"]
    objects = client.list_objects_v2(Bucket=BUCKET, Prefix=f"prod/backup/{pbr.STANZA}/{label}/bundle/")["Contents"]
    return str(max(objects, key=lambda o: o["Size"])["Key"])


@pytest.mark.parametrize("damage", ["corrupted", "truncated"])
def test_a_damaged_backup_object_is_refused_and_leaves_no_target(lab: Lab, damage: str) -> None:
    client = lab.s3.client()
    key = _largest_bundle(lab)
    original = client.get_object(Bucket=BUCKET, Key=key)["Body"].read()
    if damage == "corrupted":
        middle = len(original) // 2
        broken = original[:middle] + bytes(b ^ 0x5A for b in original[middle:middle + 64]) + original[middle + 64:]
    else:
        broken = original[: len(original) // 2]
    client.put_object(Bucket=BUCKET, Key=key, Body=broken)
    target = lab.root / "pg" / f"restored-{damage}"
    try:
        with pytest.raises(ob.BackupError) as refused:
            ob.restore_into(lab.runtime, target, latest=True)
        assert not target.exists(), "a failed restore must not leave a startable-looking directory"
        assert "pgBackRest" in str(refused.value) or "[" in str(refused.value)
    finally:
        client.put_object(Bucket=BUCKET, Key=key, Body=original)


def test_a_wrong_passphrase_is_one_clear_error_and_nothing_is_written(lab: Lab) -> None:
    wrong = lab.conf("wrong-passphrase", passphrase="not the passphrase at all, sorry")
    target = lab.root / "pg" / "restored-wrong-passphrase"
    with pytest.raises(ob.BackupError, match="wrong passphrase"):
        ob.restore_into(wrong, target, latest=True)
    assert not target.exists()
    with pytest.raises(ob.BackupError, match="wrong passphrase"):
        ob.backup_now(wrong, "diff")


def test_an_unreachable_endpoint_is_one_clear_error_within_the_io_timeout(lab: Lab) -> None:
    nowhere = lab.conf("unreachable", endpoint=pbr.Endpoint("localhost", pglab.free_port(), str(lab.s3.ca_file)),
                       io_timeout_seconds=2)
    target = lab.root / "pg" / "restored-unreachable"
    started = time.monotonic()
    with pytest.raises(ob.BackupError, match=r"unreachable|did not answer"):
        ob.restore_into(nowhere, target, latest=True)
    assert time.monotonic() - started < 60
    assert not target.exists()


def test_a_bucket_the_credentials_may_not_write_is_refused_and_stays_empty(lab: Lab) -> None:
    import boto3

    # A second moto with IAM enforced: the first four calls (bucket, user, key, policy) are free.
    with pglab.S3Server(lab.root / "s3-iam", env={"INITIAL_NO_AUTH_ACTION_COUNT": "4"}) as locked:
        locked.client().create_bucket(Bucket=BUCKET)
        iam = boto3.client("iam", endpoint_url=locked.url, aws_access_key_id=pglab.S3_KEY,
                           aws_secret_access_key=pglab.S3_SECRET, region_name=pglab.S3_REGION,
                           verify=str(locked.ca_file))
        iam.create_user(UserName="reader")
        key = iam.create_access_key(UserName="reader")["AccessKey"]
        iam.put_user_policy(UserName="reader", PolicyName="read-only", PolicyDocument=json.dumps({
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": ["s3:GetObject", "s3:ListBucket"], "Resource": "*"}]}))
        include = lab.root / "reader-credentials"
        include.mkdir()
        (include / "credentials.conf").write_text(pbr.credentials_conf(key["AccessKeyId"], key["SecretAccessKey"]))
        pglab.give_to_postgres(include)
        reader = dataclasses.replace(lab.conf("reader", endpoint=locked.endpoint(), io_timeout_seconds=5),
                                     include_path=str(include))
        with pytest.raises(ob.BackupError, match=r"refuses these credentials|AccessDenied|403"):
            ob.backup_now(reader, "full")
        reader_s3 = locked.client(key["AccessKeyId"], key["SecretAccessKey"])
        assert reader_s3.list_objects_v2(Bucket=BUCKET).get("KeyCount", 0) == 0


def test_the_metrics_query_reads_the_repository_and_the_archiver(lab: Lab) -> None:
    info = pglab.pgbackrest(lab.runtime, "info", "--output=json").stdout
    sql = lab.root / "metrics.sql"
    sql.write_text(pbr.metrics_sql())
    pglab.give_to_postgres(sql)
    out = pglab.run([*lab.live.psql_argv("postgres"), "-v", f"info={info}", "-f", str(sql)]).stdout
    samples = {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in out.splitlines()
               if line and not line.startswith("#")}
    stop = max(b["timestamp"]["stop"] for b in json.loads(info)[0]["backup"] if b["type"] == "full")
    assert samples[f'{BACKUP_LAST_SUCCESS}{{stanza="main",type="full"}}'] == stop
    assert samples[f'{BACKUP_ARCHIVE_LAST_SUCCESS}{{stanza="main"}}'] > time.time() - 3600
    assert samples[f'{BACKUP_ARCHIVE_LAG}{{stanza="main"}}'] >= 0
    # promtool judges the text format when it is installed (the monitoring tests install it).
    promtool = subprocess.run(["sh", "-c", "command -v promtool"], capture_output=True, text=True).stdout.strip()
    if promtool:
        check = subprocess.run([promtool, "check", "metrics"], input=out, capture_output=True, text=True)
        assert check.returncode == 0, check.stdout + check.stderr


def test_the_rendered_scheduler_is_valid_sh_and_fires_on_the_model_slots() -> None:
    backup = recording("prod").env.postgres.backup
    script = pbr.scheduler_script(backup, pbr.Runtime(), metrics_sql_path="/run/secrets/backup-metrics.sql",
                                  textfile_dir="/textfile")
    check = subprocess.run(["sh", "-n"], input=script, capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    assert "sun-01:00" in script and "mon-01:00" in script
    assert " --config=/run/secrets/pgbackrest.conf " in script
    # The manifest the scheduler records is the one `ops backup run` records (one renderer).
    assert pbr.manifest_sql().rstrip() in script and "annotate --set=" in script


# --- The operator CLI, end to end on this machine (`python -m ops backup ... `) -------------------

def _cli(lab: Lab, monkeypatch: pytest.MonkeyPatch, *args: str) -> tuple[int, str]:
    from typer.testing import CliRunner

    from ops.cli import app

    # boto3 (the manifests) finds the local S3 the way an operator points it elsewhere.
    for key, value in {"AWS_ENDPOINT_URL": lab.s3.url, "AWS_CA_BUNDLE": str(lab.s3.ca_file),
                       "AWS_ACCESS_KEY_ID": pglab.S3_KEY, "AWS_SECRET_ACCESS_KEY": pglab.S3_SECRET,
                       "AWS_DEFAULT_REGION": pglab.S3_REGION}.items():
        monkeypatch.setenv(key, value)
    where = ["--stack", "prod", "--conf", lab.runtime.conf, "--include", lab.runtime.include_path,
             "--pg-data", str(lab.live.data), "--socket", str(lab.live.sock), "--port", str(lab.live.port)]
    result = CliRunner().invoke(app, ["backup", *args, *where])
    return result.exit_code, result.output


def test_cli_run_records_a_manifest_and_verify_catches_a_mismatch(lab: Lab, monkeypatch: pytest.MonkeyPatch) -> None:
    live = lab.live
    code, out = _cli(lab, monkeypatch, "run", "--type", "diff", "--database", "app", "--bucket", BUCKET)
    assert code == 0, out
    label = ob.repository(lab.runtime)["backup"][-1]["label"]
    assert label in out and label.endswith("D")
    code, out = _cli(lab, monkeypatch, "list", "--json", "--bucket", BUCKET)
    assert code == 0, out
    listed = json.loads(out)
    assert listed["backups"][-1]["label"] == label and listed["earliest"]
    assert not any(b["expired"] for b in listed["backups"])
    live.sql("app", "INSERT INTO messages (body) VALUES ('after the manifest')")
    code, out = _cli(lab, monkeypatch, "verify", "--bucket", BUCKET)
    assert code == 0, out
    assert f"backup {label}: verified" in out and "ok   pg_amcheck" in out and "public.messages: rows and checksum" in out
    # What the backup recorded no longer matches: verify says which table, and fails.
    client = lab.s3.client()
    key = ob.manifest_key("prod", label)
    original = client.get_object(Bucket=BUCKET, Key=key)["Body"].read()
    manifest = json.loads(original)
    manifest["tables"]["public.blobs"][0] += 1
    client.put_object(Bucket=BUCKET, Key=key, Body=json.dumps(manifest).encode())
    try:
        code, out = _cli(lab, monkeypatch, "verify", "--bucket", BUCKET)
        assert code == 1, out
        assert "FAIL public.blobs: rows and checksum" in out and "MISMATCH" in out
    finally:
        client.put_object(Bucket=BUCKET, Key=key, Body=original)
    # The latest backup recorded nothing (neither annotation nor object): verify says so and fails; it
    # does not quietly drill an older backup instead.
    newest = ob.backup_now(lab.runtime, "incr")
    code, out = _cli(lab, monkeypatch, "verify", "--bucket", BUCKET)
    assert code == 3, out
    assert f"the latest backup {newest} recorded no verification manifest" in " ".join(out.split())


def test_cli_restore_refuses_without_yes_and_changes_nothing(lab: Lab, monkeypatch: pytest.MonkeyPatch) -> None:
    before = sorted(p.name for p in (lab.root / "pg").iterdir())
    code, out = _cli(lab, monkeypatch, "restore", "--latest")
    assert code == 2 and "refusing without --yes" in out
    code, out = _cli(lab, monkeypatch, "restore", "--yes")
    assert code == 2 and "--time T or --latest" in out
    assert sorted(p.name for p in (lab.root / "pg").iterdir()) == before


def test_cli_restore_switches_the_store_only_after_the_copy_checks_and_keeps_the_old(
        lab: Lab, monkeypatch: pytest.MonkeyPatch) -> None:
    live = lab.live
    live.sql("app", "INSERT INTO messages (body, lang) VALUES ('just before the restore', 'en')")
    wait_archived(live)
    state = pglab.table_checksums(live, "app")
    old_inode = live.data.stat().st_ino
    code, out = _cli(lab, monkeypatch, "restore", "--latest", "--yes")
    assert code == 0, out
    kept = sorted((lab.root / "pg").glob("live.before-*"))
    assert len(kept) == 1 and kept[0].stat().st_ino == old_inode and str(kept[0]) in out.replace("\n", "")
    assert live.data.stat().st_ino != old_inode
    assert pglab.table_checksums(live, "app") == state
    # The switched store archives again (the restore ran with archiving off).
    assert live.sql("postgres", "SHOW archive_mode") == "on"


def test_the_rendered_scheduler_takes_the_scheduled_backup_and_writes_the_metrics_atomically(
        lab: Lab, monkeypatch: pytest.MonkeyPatch) -> None:
    """The scheduler loop itself (render/pgbackrest.py scheduler_script) against the lab: a diff
    backup scheduled for this minute runs and carries its verification manifest as an annotation,
    the metrics file appears with the contract's names, and `ops backup verify` drills that backup
    (and fails once the annotation says something the backup does not hold)."""
    import datetime as dt

    from config.model import BackupSchedule

    now = dt.datetime.now(dt.UTC)
    if now.second > 45:  # the slot must still be this minute when the loop first looks
        time.sleep(61 - now.second)
        now = dt.datetime.now(dt.UTC)
    day = now.strftime("%a").lower()
    other = next(d for d in ("mon", "tue", "wed", "thu", "fri", "sat", "sun") if d != day)
    model = recording("prod").env.postgres.backup.model_copy(update={
        "diff": BackupSchedule.model_validate({"days": [day], "at": now.strftime("%H:%M")}),
        "full": BackupSchedule.model_validate({"days": [other], "at": now.strftime("%H:%M")})})
    textfile = lab.root / "textfile"
    textfile.mkdir()
    sql = lab.root / "scheduler-metrics.sql"
    sql.write_text(pbr.metrics_sql())
    script = lab.root / "scheduler.sh"
    # The store's database is the app's (components/pgbackrest.py runtime: spec.database).
    script.write_text(pbr.scheduler_script(model, dataclasses.replace(lab.runtime, database="app"),
                                           metrics_sql_path=str(sql), textfile_dir=str(textfile), interval_seconds=2))
    pglab.give_to_postgres(textfile, sql, script)
    before = {b["label"] for b in ob.repository(lab.runtime)["backup"]}
    proc = subprocess.Popen(pglab.as_postgres(["sh", str(script)]), start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "PATH": f"{pglab.PGBIN}:{os.environ['PATH']}"})
    try:
        deadline = time.monotonic() + 120
        new: list[dict[str, object]] = []
        while time.monotonic() < deadline and not new:
            new = [b for b in ob.repository(lab.runtime)["backup"] if b["label"] not in before]
            time.sleep(1)
        assert [b["type"] for b in new] == ["diff"], new
        stop = int(new[0]["timestamp"]["stop"])  # type: ignore[index, call-overload]
        expected = f'{BACKUP_LAST_SUCCESS}{{stanza="main",type="diff"}} {stop}'
        while time.monotonic() < deadline:
            prom = textfile / "pgbackrest.prom"
            if prom.exists() and expected in prom.read_text():
                break
            time.sleep(0.5)
        text = (textfile / "pgbackrest.prom").read_text()
        assert expected in text
        assert BACKUP_ARCHIVE_LAST_SUCCESS in text and BACKUP_ARCHIVE_LAG in text
        # Only the file and, mid-write, its temporary sibling (renamed over it): never a half file under the name.
        assert all(p.name.startswith(".pgbackrest.prom.") for p in textfile.iterdir() if p.name != "pgbackrest.prom")
        label = str(new[0]["label"])
        annotation: dict[str, str] = {}
        while time.monotonic() < deadline and pbr.MANIFEST_ANNOTATION not in annotation:
            backup = next(b for b in ob.repository(lab.runtime)["backup"] if b["label"] == label)
            annotation = backup.get("annotation") or {}
            time.sleep(0.5)
        recorded = json.loads(annotation[pbr.MANIFEST_ANNOTATION])
        assert recorded["restore_point"] == label and recorded["database"] == "app"
        assert {"public.messages", "public.blobs", "public.big"} <= set(recorded["tables"])
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(10)
    lab.live.sql("app", "INSERT INTO messages (body) VALUES ('after the scheduled backup')")
    code, out = _cli(lab, monkeypatch, "verify", "--bucket", BUCKET)
    assert code == 0, out
    assert f"backup {label}: verified" in out and "ok   public.messages: rows and checksum" in out
    # A manifest that disagrees with the backup (the count of one table off by one): verify fails.
    recorded["tables"]["public.messages"][0] += 1
    pglab.pgbackrest(lab.runtime, "annotate", f"--set={label}",
                     f"--annotation={pbr.MANIFEST_ANNOTATION}={json.dumps(recorded, separators=(',', ':'))}")
    code, out = _cli(lab, monkeypatch, "verify", "--bucket", BUCKET)
    assert code == 1, out
    assert "FAIL public.messages: rows and checksum" in out and "MISMATCH" in out


def test_the_laptop_drill_restores_to_t_and_keeps_a_startable_directory(tmp_path: Path,
                                                                        capsys: pytest.CaptureFixture[str]) -> None:
    """`python -m bench.backup_drill --sql FILE --keep DIR --json`, end to end (its own S3 and cluster)."""
    _tools()
    if os.geteuid() != 0:
        pytest.skip("the servers run as the postgres user: run as root (CI does)")
    from bench import backup_drill

    sql = tmp_path / "load.sql"
    sql.write_text("CREATE TABLE people (id serial PRIMARY KEY, name text, photo bytea);\n"
                   "INSERT INTO people (name, photo) VALUES ('Zoë', '\\x00ff'), ('李', NULL), (NULL, '\\x');\n"
                   "CREATE TABLE events AS SELECT g AS id, md5(g::text) AS body FROM generate_series(1, 5000) g;\n")
    keep = pglab.lab_root("drill-keep-") / "restored"
    try:
        assert backup_drill.main(["--sql", str(sql), "--keep", str(keep), "--json"]) == 0
        result = json.loads(capsys.readouterr().out)
        assert result["checksums_equal"] is True and result["tables"] == 3 and not result["mismatched_tables"]
        assert 0 < result["rpo_seconds"] <= result["archive_timeout_seconds"] + 15
        assert result["backup_seconds"] > 0 and result["restore_seconds"] > 0
        assert 0 < result["peak_rss_mb"]["backup"] < 150
        # Stopped, owned by postgres, startable on any port.
        assert not (keep / "postmaster.pid").exists()
        if os.geteuid() == 0:
            assert keep.stat().st_uid == pwd.getpwnam("postgres").pw_uid
        cluster = pglab.Cluster(keep, keep.parent / "sock", log=keep.parent / "sock" / "log")
        (keep.parent / "sock").mkdir()
        pglab.give_to_postgres(keep.parent / "sock")
        cluster.start()
        try:
            assert cluster.sql("drill", "SELECT count(*) FROM drill_rows") == "1000"
            assert cluster.sql("drill", "SELECT name FROM people WHERE id = 1") == "Zoë"
        finally:
            cluster.stop()
    finally:
        pglab.remove(keep.parent)
