"""A point-in-time recovery drill anyone can run on a laptop (Debian/Ubuntu with PostgreSQL 15 and
pgBackRest installed; as root, the servers run as `postgres`).

    python -m bench.backup_drill --sql FILE [--keep DIR] [--json]

Loads FILE into a throwaway PostgreSQL 15 cluster configured with the pgBackRest config and server
settings the program renders (render/pgbackrest.py, prod's model; only paths, port and the S3
endpoint differ), with the repository on a local S3 (moto over TLS on loopback), takes a full backup,
writes more rows into a table of its own (`drill_rows`, leaving the file's tables as loaded), records
a time T, writes more, restores to T into a new data directory, and compares every table's row
count and checksum with the state at T. `rpo_seconds` is measured: from a commit returning to the
WAL segment holding it appearing as an object in S3 (archive_timeout bounds it).

`--keep DIR` leaves the restored data directory at DIR, stopped, owned by `postgres`, its settings
reduced to `archive_mode = off`: `pg_ctl -D DIR -o "-p 5499" start` starts it on any port.
Exit 0 when every checksum matches, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import secrets
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from ops import backup as ob
from ops import pglab
from ops.runner import run_stack
from render import pgbackrest as pbr

BUCKET = "drill-backups"
DATABASE = "drill"


def wait_object(s3: pglab.S3Server, prefix: str, name: str, timeout: float = 180) -> float:
    """Seconds until an object whose name starts with `name` exists under `prefix`."""
    client, started = s3.client(), time.monotonic()
    while time.monotonic() - started < timeout:
        listing = client.list_objects_v2(Bucket=BUCKET, Prefix=prefix)
        if any(o["Key"].rsplit("/", 1)[-1].startswith(name) for o in listing.get("Contents", [])):
            return time.monotonic() - started
        time.sleep(0.1)
    raise RuntimeError(f"WAL segment {name} did not reach S3 within {timeout}s")


def drill(sql: Path, keep: Path | None) -> dict[str, Any]:
    if keep is not None and keep.exists() and any(keep.iterdir()):
        raise SystemExit(f"--keep {keep}: the directory is not empty")
    model = run_stack("prod").env.postgres.backup
    root = pglab.lab_root("backup-drill-")
    s3 = pglab.S3Server(root / "s3")
    live = pglab.Cluster(root / "pg" / "live", root / "sock")
    restored: pglab.Cluster | None = None
    result: dict[str, Any] = {}
    try:
        s3.start()
        s3.client().create_bucket(Bucket=BUCKET)
        runtime = pglab.start_backed_up(root, live, s3, stack="drill", bucket=BUCKET, backup=model,
                                        passphrase=secrets.token_hex(24))
        live.sql("postgres", f"CREATE DATABASE {DATABASE}")
        copy = root / "load.sql"
        shutil.copyfile(sql, copy)
        pglab.give_to_postgres(copy)
        live.run_file(DATABASE, copy)
        pglab.pgbackrest(runtime, "stanza-create")
        backup_seconds, backup_rss = pglab.measured(pglab.as_postgres(pbr.pgbackrest_argv(runtime, "--type=full", "backup")))

        live.sql(DATABASE, "CREATE TABLE drill_rows (id bigserial PRIMARY KEY, note text, "
                           "at timestamptz DEFAULT clock_timestamp());"
                           "INSERT INTO drill_rows (note) SELECT 'before T #' || g FROM generate_series(1, 1000) g;")
        at_t = pglab.table_checksums(live, DATABASE)
        time.sleep(1.1)
        target = live.sql("postgres", "SELECT now()::text")
        time.sleep(1.1)
        live.sql(DATABASE, "INSERT INTO drill_rows (note) SELECT 'after T #' || g FROM generate_series(1, 1000) g;")
        # RPO: the last commit, then its segment's object in S3 (no forced switch: archive_timeout does it).
        lsn = live.sql(DATABASE, "INSERT INTO drill_rows (note) VALUES ('rpo probe') RETURNING pg_current_wal_lsn()")
        committed = time.monotonic()
        segment = live.sql("postgres", f"SELECT pg_walfile_name('{lsn}')")
        prefix = f"drill/archive/{pbr.STANZA}/"
        wait_object(s3, prefix, segment)
        rpo = time.monotonic() - committed

        target_dir = root / "pg" / "restored"
        started = time.monotonic()
        restore_seconds_cmd, restore_rss = pglab.measured(pglab.as_postgres(pbr.pgbackrest_argv(
            runtime, f"--pg1-path={target_dir}", "--archive-mode=off", "--type=time", f"--target={target}",
            "--target-action=promote", "restore")))
        restored = ob.start_restored(target_dir, root / "sock")
        restore_seconds = time.monotonic() - started
        got = pglab.table_checksums(restored, DATABASE)
        mismatched = sorted(t for t in set(at_t) | set(got) if at_t.get(t) != got.get(t))
        result = {
            "checksums_equal": not mismatched,
            "tables": len(at_t),
            "mismatched_tables": mismatched,
            "rpo_seconds": round(rpo, 2),
            "archive_timeout_seconds": model.archive_timeout_seconds,
            "backup_seconds": round(backup_seconds, 2),
            "restore_seconds": round(restore_seconds, 2),
            "restore_command_seconds": round(restore_seconds_cmd, 2),
            "peak_rss_mb": {"backup": round(backup_rss, 1), "restore": round(restore_rss, 1)},
            "target_time": target,
        }
        restored.stop()
        if keep is not None:
            _keep(target_dir, keep)
            result["kept"] = str(keep)
        return result
    finally:
        if restored is not None:
            restored.stop()
        live.stop()
        s3.stop()
        pglab.remove(root)


def _keep(data: Path, keep: Path) -> None:
    """Move the restored directory to `keep`, startable anywhere: the lab's port, socket and archive
    settings (postgresql.auto.conf) are replaced by `archive_mode = off`."""
    (data / "postgresql.auto.conf").write_text(
        "# Restored by bench.backup_drill; start with: pg_ctl -D <this dir> -o \"-p PORT\" start\narchive_mode = 'off'\n")
    for leftover in ("recovery.signal", "standby.signal", "postmaster.opts"):
        (data / leftover).unlink(missing_ok=True)
    keep.mkdir(parents=True, exist_ok=True)
    for child in data.iterdir():
        shutil.move(str(child), str(keep / child.name))
    keep.chmod(0o700)
    pglab.give_to_postgres(keep)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.backup_drill", description=__doc__.split("\n\n")[0])
    parser.add_argument("--sql", type=Path, required=True, help="SQL file to load into the throwaway cluster")
    parser.add_argument("--keep", type=Path, help="leave the restored data directory here (stopped)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args(argv)
    if not args.sql.is_file():
        parser.error(f"--sql {args.sql}: no such file")
    result = drill(args.sql, args.keep.absolute() if args.keep else None)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"checksums equal: {result['checksums_equal']} ({result['tables']} tables)"
              + (f", mismatched: {', '.join(result['mismatched_tables'])}" if result["mismatched_tables"] else ""))
        print(f"RPO (commit -> WAL object in S3): {result['rpo_seconds']} s (archive_timeout "
              f"{result['archive_timeout_seconds']} s)")
        print(f"full backup {result['backup_seconds']} s, restore to T {result['restore_seconds']} s; peak RSS "
              f"backup {result['peak_rss_mb']['backup']} MB, restore {result['peak_rss_mb']['restore']} MB")
        if "kept" in result:
            print(f"restored data directory: {result['kept']} (stopped; pg_ctl -D {result['kept']} -o '-p PORT' start)")
    return 0 if result["checksums_equal"] else 1


if __name__ == "__main__":
    sys.exit(main())
