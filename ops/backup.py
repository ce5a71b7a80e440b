"""`python -m ops backup ...`: list, run, restore and verify pgBackRest backups.

The operations run pgBackRest where the data is. `Target` says where that is: `local` (this
machine: the tests, the drill, an operator on the host itself) runs the commands directly, as the
`postgres` user when we are root. Every operation checks the repository first (`info --output=json`
reports a wrong passphrase, an unreachable endpoint or a denied bucket as a status, exit 0), so each
failure is one clear sentence and nothing is started half-way.

Restore never writes into an existing directory: it restores into a NEW, empty one (refusing the
live data directory and anything non-empty), removes what it wrote if pgBackRest fails, starts
Postgres there on another port with archiving off (a restored copy must not push a new timeline
into the live stanza), checks it, and only then reports it ready to switch to.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from ops import pglab
from render import pgbackrest as pbr


class BackupError(Exception):
    """A backup operation refused or failed; the message says why, for the operator."""


_CAUSES = (
    ("FormatError", "the repository cannot be decrypted: wrong passphrase (repo1-cipher-pass), or backup.info is corrupt"),
    ("CryptoError", "the repository cannot be decrypted: wrong passphrase (repo1-cipher-pass)"),
    ("AccessDenied", "the S3 bucket refuses these credentials (AccessDenied): check the role's policy for the stack prefix"),
    ("[403]", "the S3 bucket refuses these credentials (403): check the role's policy for the stack prefix"),
    ("InvalidAccessKeyId", "the S3 credentials are unknown (InvalidAccessKeyId)"),
    ("NoSuchBucket", "the S3 bucket does not exist"),
    ("HostConnectError", "the S3 endpoint is unreachable (connection refused or timed out)"),
    ("unable to connect", "the S3 endpoint is unreachable (connection refused or timed out)"),
    ("timeout", "the S3 endpoint did not answer in time"),
    ("missing stanza path", "the repository has no stanza yet: no backup was ever taken"),
)


def explain(text: str) -> str:
    """One operator sentence for a pgBackRest failure, with its own words after it."""
    first = next((why for needle, why in _CAUSES if needle in text), "pgBackRest failed")
    detail = " ".join(line.strip() for line in text.strip().splitlines()[:3] if line.strip())
    return f"{first} [{detail[:300]}]"


def repository(runtime: pbr.Runtime) -> dict[str, Any]:
    """The stanza's `info` document, or BackupError when the repository cannot be read."""
    result = pglab.pgbackrest(runtime, "info", "--output=json", check=False, timeout=300)
    if result.returncode != 0:
        raise BackupError(explain(result.stderr + result.stdout))
    try:
        stanzas = json.loads(result.stdout, strict=False)  # pgBackRest quotes undecryptable bytes raw
    except json.JSONDecodeError as error:
        raise BackupError(f"pgBackRest info printed no JSON: {result.stdout[:200]!r}") from error
    stanza = next((s for s in stanzas if s.get("name") == pbr.STANZA), None)
    if stanza is None:
        raise BackupError(f"the repository has no stanza {pbr.STANZA!r}")
    status = stanza.get("status", {})
    if status.get("code", 0) not in (0, 2):  # 2: "no valid backups" is still a readable repository
        raise BackupError(explain(_messages(stanza)))
    return dict(stanza)


def _messages(stanza: dict[str, Any]) -> str:
    """The repository's own error text first (the stanza's status says only "other")."""
    repos = [str(r.get("status", {}).get("message", "")) for r in stanza.get("repo", [])]
    return "\n".join([*repos, str(stanza.get("status", {}).get("message", ""))])


@dataclass(frozen=True)
class Window:
    """What can be restored: the backups, and the time range their archived WAL covers. `expired`:
    labels backup.info still lists whose files the bucket lifecycle has removed (not restorable)."""

    backups: list[dict[str, Any]]
    earliest: dt.datetime | None
    latest: dt.datetime | None
    expired: frozenset[str] = frozenset()

    def rows(self) -> list[tuple[str, str, str, str]]:
        return [(b["label"], b["type"], _ts(b["timestamp"]["start"]), _ts(b["timestamp"]["stop"])) for b in self.backups]


def _ts(epoch: int) -> str:
    return dt.datetime.fromtimestamp(epoch, dt.UTC).isoformat(timespec="seconds")


def backup_manifest_key(stack: str, label: str) -> str:
    """Where pgBackRest keeps a backup set's manifest (repo1-path=/<stack>; pgbackrest src/info/manifest.h
    BACKUP_MANIFEST_FILE under the set's directory, src/command/backup/common.h backupFileRepoPathP)."""
    return f"{stack}/backup/{pbr.STANZA}/{label}/backup.manifest"


def expired_backups(backups: list[dict[str, Any]], *, bucket: str, stack: str) -> frozenset[str]:
    """Backups backup.info lists whose set the lifecycle has expired, and those that depend on one.

    pgBackRest runs with `expire-auto=n` (the host may not delete): the bucket lifecycle expires
    the set's objects (a delete marker on a versioned bucket) while backup.info keeps listing it.
    A set is gone when its `backup.manifest` is (restore reads it first); a diff or incr backup is
    unusable when any set it references (`reference` in `info --output=json`, pgbackrest
    src/command/info/info.c BACKUP_KEY_REFERENCE) is gone."""
    from botocore.exceptions import ClientError

    client = s3_client()
    try:  # HEAD on an object of a missing bucket is a 404 too: it must not read as "expired"
        client.head_bucket(Bucket=bucket)
    except ClientError as error:
        raise BackupError(f"cannot read the backup bucket s3://{bucket}: {error}") from error
    gone: set[str] = set()
    for backup in backups:
        label = str(backup["label"])
        try:
            client.head_object(Bucket=bucket, Key=backup_manifest_key(stack, label))
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                gone.add(label)
            else:
                raise BackupError(f"cannot check backup {label} in s3://{bucket}: {error}") from error
    return frozenset(str(b["label"]) for b in backups
                     if str(b["label"]) in gone or any(str(ref) in gone for ref in (b.get("reference") or [])))


def window(runtime: pbr.Runtime, *, bucket: str | None = None, stack: str | None = None) -> Window:
    """Backups and the recoverable window: from the oldest restorable backup's end (its consistency
    point) to the newest archived WAL (its time is read from the archive's last segment: pgBackRest's
    info gives segment names, so the upper bound is the last backup's stop or, with a running server,
    `pg_stat_archiver.last_archived_time`, whichever is later). With `bucket`, backups whose files
    the lifecycle has expired are flagged and left out of the window."""
    stanza = repository(runtime)
    backups = [b for b in stanza.get("backup", []) if not b.get("error")]
    expired = expired_backups(backups, bucket=bucket, stack=stack or "") if bucket and backups else frozenset()
    usable = [b for b in backups if str(b["label"]) not in expired]
    if not usable:
        return Window(backups, None, None, expired)
    earliest = dt.datetime.fromtimestamp(min(b["timestamp"]["stop"] for b in usable), dt.UTC)
    latest = dt.datetime.fromtimestamp(max(b["timestamp"]["stop"] for b in usable), dt.UTC)
    return Window(backups, earliest, latest, expired)


def backup_now(runtime: pbr.Runtime, kind: str = "full") -> str:
    """A backup now; returns its label."""
    if kind not in ("full", "diff", "incr"):
        raise BackupError(f"unknown backup type {kind!r}: full, diff or incr")
    repository(runtime) if _stanza_exists(runtime) else _stanza_create(runtime)
    result = pglab.pgbackrest(runtime, f"--type={kind}", "backup", check=False, timeout=24 * 3600)
    if result.returncode != 0:
        raise BackupError(explain(result.stderr + result.stdout))
    return str(repository(runtime)["backup"][-1]["label"])


def _stanza_exists(runtime: pbr.Runtime) -> bool:
    result = pglab.pgbackrest(runtime, "info", "--output=json", check=False, timeout=300)
    if result.returncode != 0:
        raise BackupError(explain(result.stderr + result.stdout))
    stanzas = json.loads(result.stdout or "[]", strict=False)
    code = next((s.get("status", {}).get("code") for s in stanzas if s.get("name") == pbr.STANZA), 1)
    if code not in (0, 1, 2):
        raise BackupError(explain(_messages(next(s for s in stanzas if s.get("name") == pbr.STANZA))))
    return code in (0, 2)


def _stanza_create(runtime: pbr.Runtime) -> None:
    result = pglab.pgbackrest(runtime, "stanza-create", check=False, timeout=300)
    if result.returncode != 0:
        raise BackupError(explain(result.stderr + result.stdout))


@dataclass
class Restored:
    data: Path
    cluster: pglab.Cluster
    checks: dict[str, Any] = field(default_factory=dict)


def restore_into(runtime: pbr.Runtime, target: Path, *, time: str | None = None, latest: bool = False,
                 live: Path | None = None) -> None:
    """Restore the stanza into `target`, a directory that must not exist or be empty.

    Refuses the live data directory; on any pgBackRest failure removes what it wrote (the directory
    is ours: it was empty or absent), so nothing half-restored is left to start by mistake.
    """
    if (time is None) == (not latest):
        raise BackupError("say what to restore: --time T or --latest")
    live_path = Path(live or runtime.pg_path).resolve()
    target = target.absolute()
    if target.resolve() == live_path or live_path in target.resolve().parents or target.resolve() in live_path.parents:
        raise BackupError(f"{target} is (or contains, or is inside) the live data directory {live_path}; "
                          "restore into a new directory")
    if target.exists() and any(target.iterdir()):
        raise BackupError(f"{target} is not empty; restore only ever writes into a new directory")
    stanza = repository(runtime)  # a wrong passphrase or endpoint stops here, before any file is written
    if not [b for b in stanza.get("backup", []) if not b.get("error")]:
        raise BackupError("the repository holds no backup to restore")
    created = not target.exists()
    target.mkdir(mode=0o700, parents=True, exist_ok=True)
    pglab.give_to_postgres(target)
    args = [f"--pg1-path={target}", "--archive-mode=off"]
    args += (["--type=time", f"--target={time}", "--target-action=promote"] if time else ["--type=default"])
    result = pglab.pgbackrest(runtime, *args, "restore", check=False, timeout=24 * 3600)
    if result.returncode != 0:
        if created:
            shutil.rmtree(target, ignore_errors=True)
        else:
            for child in target.iterdir():
                shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()
        raise BackupError(explain(result.stderr + result.stdout))


def start_restored(target: Path, sock: Path, port: int | None = None) -> pglab.Cluster:
    """Start Postgres on a restored directory (another port, socket only) and wait for promotion."""
    cluster = pglab.Cluster(target, sock, port=port or pglab.free_port())
    sock.mkdir(parents=True, exist_ok=True)
    pglab.give_to_postgres(sock)
    cluster.start()
    cluster.wait_promoted()
    return cluster


# --- Verification manifests ------------------------------------------------------------------------
# At backup time (`run`) the tables' row counts and checksums are recorded together with a named
# restore point, under SHARE locks (writes to those tables wait, reads do not), so the state the
# checksums describe is exactly the state at the restore point. `verify` restores to that point in
# a scratch instance and compares. `run` stores the manifest as an object beside the repository,
# s3://<bucket>/<stack>/verify/<label>.json; the scheduler (no S3 client in the store image) as the
# backup's own `verify` annotation. Both record it with render/pgbackrest.py manifest_sql.

def live_cluster(runtime: pbr.Runtime) -> pglab.Cluster:
    return pglab.Cluster(Path(runtime.pg_path), Path(runtime.socket_path), port=runtime.port)


def record_manifest(runtime: pbr.Runtime, database: str, label: str) -> dict[str, Any]:
    """The verification manifest, recorded by the same SQL the scheduler runs after its backups
    (render/pgbackrest.py manifest_sql): one renderer, one definition of what verify compares."""
    cluster = live_cluster(runtime)
    argv = [*cluster.psql_argv(database), "-v", f"label={label}"]
    result = pglab.run(argv, input=pbr.manifest_sql(), check=False, timeout=24 * 3600)
    if result.returncode != 0:
        raise BackupError(f"recording the verification manifest failed: {result.stderr.strip()[-500:]}")
    recorded = json.loads(result.stdout.strip().splitlines()[-1])
    return {"label": label, **recorded, "recorded_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")}


def annotated_manifest(backup: dict[str, Any]) -> dict[str, Any] | None:
    """The manifest a scheduled backup carries as its `verify` annotation (render/pgbackrest.py
    MANIFEST_ANNOTATION; `info --output=json` prints every backup's annotations), or None."""
    text = (backup.get("annotation") or {}).get(pbr.MANIFEST_ANNOTATION)
    if text is None:
        return None
    try:
        manifest = json.loads(text)
        if not isinstance(manifest, dict) or not {"restore_point", "database", "tables"} <= manifest.keys():
            raise ValueError("missing restore_point, database or tables")
    except ValueError as error:
        raise BackupError(f"backup {backup['label']}: its {pbr.MANIFEST_ANNOTATION!r} annotation is not a "
                          f"verification manifest ({error})") from error
    return {"label": str(backup["label"]), **manifest}


def s3_client() -> Any:
    """boto3 honours AWS_ENDPOINT_URL (a local S3) and AWS_CA_BUNDLE (its certificate authority)."""
    import boto3

    return boto3.client("s3")


def manifest_key(stack: str, label: str) -> str:
    return f"{stack}/verify/{label}.json"


def put_manifest(bucket: str, stack: str, manifest: dict[str, Any]) -> None:
    body = json.dumps(manifest, indent=2, sort_keys=True).encode()
    s3_client().put_object(Bucket=bucket, Key=manifest_key(stack, manifest["label"]), Body=body,
                           ContentType="application/json")


def get_manifest(bucket: str, stack: str, label: str) -> dict[str, Any] | None:
    from botocore.exceptions import ClientError

    try:
        body = s3_client().get_object(Bucket=bucket, Key=manifest_key(stack, label))["Body"].read()
    except ClientError as error:
        if error.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
            return None
        raise BackupError(f"cannot read the verification manifest: {error}") from error
    return dict(json.loads(body))


@dataclass
class Report:
    label: str
    checks: list[tuple[str, bool, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(ok for _, ok, _ in self.checks)

    def add(self, name: str, ok: bool, detail: str = "") -> None:
        self.checks.append((name, ok, detail))


def verify(runtime: pbr.Runtime, *, bucket: str, stack: str, scratch: Path) -> Report:
    """Restore the latest backup (to its recorded restore point) into a scratch instance and check it:
    pg_amcheck over every database, then each table's row count and checksum against the manifest."""
    stanza = repository(runtime)
    backups = [b for b in stanza.get("backup", []) if not b.get("error")]
    if not backups:
        raise BackupError("the repository holds no backup to verify")
    # The newest backup, and what it recorded: a scheduled backup carries its manifest as an annotation
    # (render/pgbackrest.py scheduler_script), one taken by `ops backup run` as an S3 object.
    label = str(backups[-1]["label"])
    manifest = annotated_manifest(backups[-1])
    where = f"annotation {pbr.MANIFEST_ANNOTATION!r}"
    if manifest is None:
        manifest, where = get_manifest(bucket, stack, label), manifest_key(stack, label)
    if manifest is None:
        raise BackupError(f"the latest backup {label} recorded no verification manifest (no "
                          f"{pbr.MANIFEST_ANNOTATION!r} annotation, no s3://{bucket}/{manifest_key(stack, label)}): "
                          "nothing to compare a restore with; take one with `ops backup run` or wait for the "
                          "next scheduled backup")
    report = Report(label)
    report.add("manifest recorded at backup time", True, where)
    target = scratch / "data"
    restore_args = [f"--set={label}", "--type=name", f"--target={manifest['restore_point']}",
                    "--target-action=promote"]
    _restore_raw(runtime, target, restore_args)
    cluster = start_restored(target, scratch / "sock")
    try:
        amcheck = pglab.run(pglab.as_postgres([str(pglab.PGBIN / "pg_amcheck"), "-h", str(cluster.sock), "-p",
                                               str(cluster.port), "-U", "postgres", "--all", "--install-missing",
                                               "--heapallindexed"]), check=False, timeout=24 * 3600)
        report.add("pg_amcheck --all --heapallindexed", amcheck.returncode == 0,
                   (amcheck.stdout + amcheck.stderr).strip()[-500:])
        got = pglab.table_checksums(cluster, manifest["database"])
        want = {t: (int(c), d) for t, (c, d) in manifest["tables"].items()}
        for table in sorted(set(want) | set(got)):
            ok = want.get(table) == got.get(table)
            detail = "" if ok else f"recorded {want.get(table)}, restored {got.get(table)}"
            report.add(f"{table}: rows and checksum", ok, detail)
    finally:
        cluster.stop()
    return report


def _restore_raw(runtime: pbr.Runtime, target: Path, args: list[str]) -> None:
    if target.exists() and any(target.iterdir()):
        raise BackupError(f"{target} is not empty")
    target.mkdir(mode=0o700, parents=True, exist_ok=True)
    pglab.give_to_postgres(target.parent, target)
    result = pglab.pgbackrest(runtime, f"--pg1-path={target}", "--archive-mode=off", *args, "restore", check=False,
                              timeout=24 * 3600)
    if result.returncode != 0:
        shutil.rmtree(target, ignore_errors=True)
        raise BackupError(explain(result.stderr + result.stdout))


def switch(live: Path, restored: Path, *, stamp: str) -> Path:
    """Put `restored` where the live data directory was; the old one is kept beside it, renamed.
    Both must be stopped. Returns where the old directory now is."""
    kept = live.with_name(f"{live.name}.before-{stamp}")
    if kept.exists():
        raise BackupError(f"{kept} exists already")
    live.rename(kept)
    restored.rename(live)
    return kept


# --- The CLI (`python -m ops backup ...`, wired in ops/cli.py) ------------------------------------
# Where pgBackRest runs: here (`local`), on the machine that holds the data directory and the
# pgbackrest.conf (the tests, the drill, an operator on the host). Exit codes: 0 done, 1 a check
# failed (verify), 2 refused (no --yes, bad arguments), 3 pgBackRest or the repository failed.

import typer  # noqa: E402

backup_app = typer.Typer(no_args_is_help=True, help="Continuous PostgreSQL backups with pgBackRest: list, run, "
                         "restore, verify.")

StackOpt = typer.Option(..., "--stack", help="Stack name (its repository path is /<stack>).")
ConfOpt = typer.Option("/run/secrets/pgbackrest.conf", "--conf", help="pgbackrest.conf the program rendered.")
IncludeOpt = typer.Option("/run/pgbackrest-credentials", "--include", help="Directory with the S3 credentials file.")
DataOpt = typer.Option("/var/lib/postgresql/data/pgdata", "--pg-data", help="The live data directory.")
SocketOpt = typer.Option("/var/run/postgresql", "--socket", help="The live server's socket directory.")
PortOpt = typer.Option(5432, "--port", help="The live server's port.")
UserOpt = typer.Option("postgres", "--db-user", help="Superuser pgBackRest and the checks connect as.")
ScratchOpt = typer.Option(None, "--scratch", help="Scratch directory (default: a temporary one).")
ExpectOpt = typer.Option([], "--expect-rows", help="With --volume: DB:SCHEMA.TABLE=ROWS the restored copy must hold "
                         "(repeatable).")


def _runtime(conf: Path, include: Path, pg_data: Path, socket: Path, port: int, user: str) -> pbr.Runtime:
    return pbr.Runtime(pg_path=str(pg_data.absolute()), socket_path=str(socket), port=port, user=user,
                       database="postgres", conf=str(conf.absolute()), include_path=str(include.absolute()),
                       work=str(conf.absolute().parent / "pgbackrest-work"))


def _bucket(stack: str, bucket: str | None) -> str:
    if bucket:
        return bucket
    from ops.runner import run_stack

    found = run_stack(stack).env.host.backup_bucket
    if not found:
        typer.echo(f"stack {stack} has no host.backup_bucket; pass --bucket", err=True)
        raise typer.Exit(2)
    return found


def _progress(what: str) -> Any:
    """A spinner with elapsed time while pgBackRest moves data (it prints no progress itself)."""
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    progress = Progress(SpinnerColumn(), TextColumn(what), TimeElapsedColumn(), transient=True)
    return progress


def _guard(action: Any) -> Any:
    try:
        return action()
    except BackupError as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(3) from None


@backup_app.command("list")
def list_cmd(stack: str = StackOpt, conf: Path = ConfOpt, include: Path = IncludeOpt, pg_data: Path = DataOpt,
             socket: Path = SocketOpt, port: int = PortOpt, user: str = UserOpt,
             bucket: Optional[str] = typer.Option(None, "--bucket", help="Default: the stack's host.backup_bucket; "
                                                  "used to flag backups the bucket lifecycle has expired."),
             as_json: bool = typer.Option(False, "--json")) -> None:
    """Backups in the repository and the recoverable time window; backups whose files the bucket
    lifecycle has expired are flagged (backup.info still lists them)."""
    run = _runtime(conf, include, pg_data, socket, port, user)
    where = _bucket(stack, bucket)
    win: Window = _guard(lambda: window(run, bucket=where, stack=stack))
    if as_json:
        typer.echo(json.dumps({"stack": stack, "backups": [
            {**dict(zip(("label", "type", "start", "stop"), r, strict=True)), "expired": r[0] in win.expired}
            for r in win.rows()],
                               "earliest": win.earliest.isoformat() if win.earliest else None,
                               "latest_backup": win.latest.isoformat() if win.latest else None}, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{stack}: pgBackRest stanza {pbr.STANZA}")
    for column in ("label", "type", "start", "stop", "files"):
        table.add_column(column)
    for row in win.rows():
        table.add_row(*row, "EXPIRED by the bucket lifecycle" if row[0] in win.expired else "present")
    console = Console()
    console.print(table)
    if win.expired:
        console.print(f"{len(win.expired)} backup(s) listed in backup.info are no longer restorable: the lifecycle "
                      "expired their files (or those of the full backup they depend on)")
    if win.earliest:
        console.print(f"recoverable: from {win.earliest.isoformat()} to the newest archived WAL "
                      f"(archive_timeout behind now at most)")
    else:
        console.print("no restorable backup: nothing is recoverable")


@backup_app.command("run")
def run_cmd(stack: str = StackOpt, conf: Path = ConfOpt, include: Path = IncludeOpt, pg_data: Path = DataOpt,
            socket: Path = SocketOpt, port: int = PortOpt, user: str = UserOpt,
            kind: str = typer.Option("full", "--type", help="full, diff or incr"),
            database: str = typer.Option("postgres", "--database", help="Database whose tables verify checks."),
            bucket: Optional[str] = typer.Option(None, "--bucket", help="Default: the stack's host.backup_bucket."),
            ) -> None:
    """A backup now, then the verification manifest (row counts, checksums, restore point)."""
    run = _runtime(conf, include, pg_data, socket, port, user)
    with _progress(f"{kind} backup of {stack}") as progress:
        progress.add_task("backup")
        label = _guard(lambda: backup_now(run, kind))
    manifest = _guard(lambda: record_manifest(run, database, label))
    put_manifest(_bucket(stack, bucket), stack, manifest)
    typer.echo(f"backup {label} done; manifest {manifest_key(stack, label)} ({len(manifest['tables'])} tables)")


@backup_app.command("restore")
def restore_cmd(stack: str = StackOpt, conf: Path = ConfOpt, include: Path = IncludeOpt, pg_data: Path = DataOpt,
                socket: Path = SocketOpt, port: int = PortOpt, user: str = UserOpt,
                at: Optional[str] = typer.Option(None, "--time", help="Restore to this time (e.g. '2026-11-26 01:02:03+00')."),
                latest: bool = typer.Option(False, "--latest", help="Restore to the end of the archived WAL."),
                yes: bool = typer.Option(False, "--yes", help="Really switch the store to the restored copy."),
                volume: bool = typer.Option(False, "--volume", help="On the stack's Docker engine: restore into a NEW "
                                            "Docker volume, check it, then point the stack at it (ops/backup_host.py)."),
                docker_host: Optional[str] = typer.Option(None, "--docker-host", help="With --volume: the engine "
                                                          "(default: the stack's; ssh://USER@ADDRESS for ec2)."),
                expect: list[str] = ExpectOpt,
                to_backup: Optional[str] = typer.Option(None, "--to-backup", help="With --volume: restore to the "
                                                        "restore point a backup's verification manifest recorded, "
                                                        "and check its row counts."),
                bucket: Optional[str] = typer.Option(None, "--bucket", help="Default: the stack's host.backup_bucket."),
                ) -> None:
    """Restore into a NEW directory (or, with --volume, a new Docker volume on the stack's engine), start
    and check it there, and only then switch the store to it. What was live is kept until you remove it."""
    if sum((at is not None, latest, to_backup is not None)) != 1 or (to_backup and not volume):
        typer.echo("say what to restore: --time T or --latest (or, with --volume, --to-backup LABEL)", err=True)
        raise typer.Exit(2)
    if not yes:
        typer.echo(f"restore of {stack} switches the live store to a restored copy: refusing without --yes", err=True)
        raise typer.Exit(2)
    if volume:
        _restore_volume(stack, at, docker_host, expect, to_backup, bucket)
        return
    run = _runtime(conf, include, pg_data, socket, port, user)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    live = Path(run.pg_path)
    new = live.with_name(f"{live.name}.restore-{stamp}")
    with _progress(f"restoring {stack} into {new}") as progress:
        progress.add_task("restore")
        _guard(lambda: restore_into(run, new, time=at, latest=latest))
    scratch_sock = new.with_name(f"{new.name}.sock")
    cluster = _guard(lambda: start_restored(new, scratch_sock))
    try:
        amcheck = pglab.run(pglab.as_postgres([str(pglab.PGBIN / "pg_amcheck"), "-h", str(cluster.sock), "-p",
                                               str(cluster.port), "-U", "postgres", "--all", "--install-missing"]),
                            check=False, timeout=24 * 3600)
        databases = cluster.sql("postgres", "SELECT count(*) FROM pg_database WHERE NOT datistemplate")
    finally:
        cluster.stop()
        shutil.rmtree(scratch_sock, ignore_errors=True)
    if amcheck.returncode != 0:
        typer.echo(f"the restored copy fails pg_amcheck; the store was not switched ({new} kept for inspection):\n"
                   f"{amcheck.stdout[-1000:]}{amcheck.stderr[-1000:]}", err=True)
        raise typer.Exit(1)
    # The copy was restored with archiving off (pgBackRest appends `archive_mode = 'off'` to
    # postgresql.auto.conf); as the store it archives again, on a new timeline.
    auto = new / "postgresql.auto.conf"
    auto.write_text("".join(line for line in auto.read_text().splitlines(keepends=True)
                            if line.strip() != "archive_mode = 'off'"))
    live_cluster(run).stop()
    kept = _guard(lambda: switch(live, new, stamp=stamp))
    live_cluster(run).start()
    typer.echo(f"restored {stack} ({'latest' if latest else at}): {databases} databases checked with pg_amcheck; "
               f"the store runs on the restored copy; the old data directory is kept at {kept}")


def _expected(items: list[str]) -> dict[str, dict[str, int]]:
    expected: dict[str, dict[str, int]] = {}
    for item in items:
        db, sep, rest = item.partition(":")
        table, eq, rows = rest.rpartition("=")
        if not (sep and eq and "." in table and rows.isdigit()):
            typer.echo(f"--expect-rows {item!r}: want DB:SCHEMA.TABLE=ROWS", err=True)
            raise typer.Exit(2)
        expected.setdefault(db, {})[table] = int(rows)
    return expected


def _restore_volume(stack: str, at: str | None, docker_host: str | None, expect: list[str], to_backup: str | None,
                    bucket: str | None) -> None:
    """The host path: the stack's engine, the store's image, config and credentials (components/data.py)."""
    import docker

    from components import pgbackrest as cpb
    from ops import backup_host as bh
    from ops.runner import run_stack, stack_file
    from render.datastores import SECRETS_DIR

    expected = _expected(expect)
    env = run_stack(stack).env
    if not cpb.enabled(env):
        typer.echo(f"stack {stack} has no continuous backups (postgres.backup / host.backup_bucket)", err=True)
        raise typer.Exit(2)
    endpoint = docker_host or bh.docker_endpoint(env.host.kind, env.host.docker_host, env.host.ssh_user, None)
    # The Docker SDK runs the system ssh for ssh:// endpoints (docker/transport/sshconn.py, use_ssh_client):
    # ~/.ssh/config and the agent apply, as for `docker -H ssh://...`.
    client = docker.DockerClient(base_url=endpoint, use_ssh_client=endpoint.startswith("ssh://"), timeout=600)
    store = client.containers.get(f"mysaaschat-{stack}-postgres")
    secrets = f"mysaaschat-{stack}-postgres-secrets"
    spec = bh.Store(image=store.attrs["Config"]["Image"], user=store.attrs["Config"].get("User") or "70:70",
                    conf=cpb.CONF, include_path="/run/pgbackrest-credentials",
                    mounts={secrets: (SECRETS_DIR, True),
                            cpb.CREDENTIALS_HOST_DIR: ("/run/pgbackrest-credentials", True)},
                    network=f"mysaaschat-{stack}-backup")
    target = ["--type=time", f"--target={at}", "--target-action=promote"] if at else ["--type=default"]
    if to_backup:
        manifest = _guard(lambda: get_manifest(_bucket(stack, bucket), stack, to_backup))
        if manifest is None:
            typer.echo(f"backup {to_backup} has no verification manifest ({manifest_key(stack, to_backup)})", err=True)
            raise typer.Exit(2)
        target, recorded = bh.manifest_target(manifest)
        for db, tables in recorded.items():
            expected.setdefault(db, {}).update(tables)
    try:
        with _progress(f"restoring {stack} into a new volume on {endpoint}") as progress:
            progress.add_task("restore")
            outcome = bh.restore_and_switch(client, spec, stack=stack, stack_file=stack_file(stack),
                                            target_args=target, expected=expected)
    except bh.HostRestoreError as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(3) from None
    for name, ok, detail in outcome.checks:
        typer.echo(f"{'ok  ' if ok else 'FAIL'} {name}" + (f": {detail}" if not ok else ""))
    if not outcome.ok:
        typer.echo(f"the restored volume {outcome.volume} failed its checks: the store stays on its volume "
                   f"(kept {outcome.volume} for inspection)", err=True)
        raise typer.Exit(1)
    typer.echo(f"restored and checked {outcome.volume}; {stack_file(stack).name} now says postgres.data_volume: "
               f"{outcome.volume}. Run `python -m ops deploy up --stack {stack}` to recreate the store on it. "
               "The previous volume is kept (protected; the program never deletes it).")


@backup_app.command("verify")
def verify_cmd(stack: str = StackOpt, conf: Path = ConfOpt, include: Path = IncludeOpt, pg_data: Path = DataOpt,
               socket: Path = SocketOpt, port: int = PortOpt, user: str = UserOpt,
               bucket: Optional[str] = typer.Option(None, "--bucket", help="Default: the stack's host.backup_bucket."),
               scratch: Optional[Path] = ScratchOpt,
               ) -> None:
    """Restore drill of the latest backup into a scratch instance: pg_amcheck, and every table's rows and
    checksum against what the backup recorded. Non-zero on any mismatch."""
    run = _runtime(conf, include, pg_data, socket, port, user)
    root = scratch or pglab.lab_root("backup-verify-")
    try:
        with _progress(f"verifying the latest backup of {stack}") as progress:
            progress.add_task("verify")
            report: Report = _guard(lambda: verify(run, bucket=_bucket(stack, bucket), stack=stack, scratch=root))
    finally:
        if scratch is None:
            pglab.remove(root)
    for name, ok, detail in report.checks:
        typer.echo(f"{'ok  ' if ok else 'FAIL'} {name}" + (f": {detail}" if detail and not ok else ""))
    typer.echo(f"backup {report.label}: {'verified' if report.ok else 'MISMATCH'} "
               f"({sum(ok for _, ok, _ in report.checks)}/{len(report.checks)} checks)")
    if not report.ok:
        raise typer.Exit(1)
