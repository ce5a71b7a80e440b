"""Continuous backups vs the seed's nightly dump, on one generated database, in one run.

    python -m bench.backup [--size-mb 1024] [--load-seconds 150] [--tps 50] [--json]

A throwaway PostgreSQL 15 cluster (pgbench tables, `--size-mb` of data, default 1 GB) archiving
through pgBackRest with the configuration and settings the program renders (prod's model) into a
local S3 (moto over TLS on loopback). Measured:
- RPO under a steady write load (pgbench at `--tps`): every 2 s a probe row is committed; its RPO is
  the time from the commit returning to the WAL segment holding it appearing in S3 (p50/p99/max;
  target p99 <= 60 s);
- full backup wall time and peak RSS (pgBackRest and all its processes) vs `pg_dump -Fc` and vs the
  seed's `pg_dumpall | gzip` (peak RSS target <= 150 MB);
- restore to a time T (restore + WAL replay + promotion, ready for queries) vs `pg_restore` of the
  `pg_dump -Fc` file into a fresh database (target ratio <= 1.0).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import threading
import time
from typing import Any

from ops import backup as ob
from ops import pglab
from ops.runner import run_stack
from render import pgbackrest as pbr

BUCKET = "bench-backups"


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


class ArchiveWatch(threading.Thread):
    """Polls the archive prefix and records when each WAL segment's object first appears."""

    def __init__(self, s3: pglab.S3Server, prefix: str) -> None:
        super().__init__(daemon=True)
        self.client, self.prefix = s3.client(), prefix
        self.seen: dict[str, float] = {}
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=self.prefix):
                for obj in page.get("Contents", []):
                    self.seen.setdefault(obj["Key"].rsplit("/", 1)[-1][:24], time.monotonic())
            time.sleep(0.25)


def bench(size_mb: int, load_seconds: int, tps: int) -> dict[str, Any]:
    model = run_stack("prod").env.postgres.backup
    root = pglab.lab_root("backup-bench-")
    s3 = pglab.S3Server(root / "s3")
    live = pglab.Cluster(root / "pg" / "live", root / "sock")
    others: list[pglab.Cluster] = []
    out: dict[str, Any] = {"size_mb_requested": size_mb, "archive_timeout_seconds": model.archive_timeout_seconds}
    try:
        s3.start()
        s3.client().create_bucket(Bucket=BUCKET)
        runtime = pglab.start_backed_up(root, live, s3, stack="bench", bucket=BUCKET, backup=model,
                                        passphrase="bench-passphrase-0123456789abcdef",
                                        settings={"shared_buffers": "256MB"})
        live.sql("postgres", "CREATE DATABASE bench")
        scale = max(1, round(size_mb / 15))  # pgbench: ~15 MB per scale unit
        pgbench = [str(pglab.PGBIN / "pgbench"), "-h", str(live.sock), "-p", str(live.port), "-U", "postgres"]
        started = time.monotonic()
        pglab.run(pglab.as_postgres([*pgbench, "-i", "-q", "-s", str(scale), "bench"]), timeout=7200)
        out["generate_seconds"] = round(time.monotonic() - started, 1)
        out["database_mb"] = round(int(live.sql("bench", "SELECT pg_database_size('bench')")) / 1024**2)
        pglab.pgbackrest(runtime, "stanza-create")

        # --- full backup vs pg_dump -Fc vs pg_dumpall | gzip (no load: each reads the same data)
        seconds, rss = pglab.measured(pglab.as_postgres(pbr.pgbackrest_argv(runtime, "--type=full", "backup")))
        out["full_backup"] = {"seconds": round(seconds, 1), "peak_rss_mb": round(rss, 1)}
        dump = root / "bench.dump"
        pglab.give_to_postgres(root)
        seconds, rss = pglab.measured(pglab.as_postgres([str(pglab.PGBIN / "pg_dump"), "-Fc", "-h", str(live.sock), "-p",
                                                         str(live.port), "-U", "postgres", "-f", str(dump), "bench"]))
        out["pg_dump_fc"] = {"seconds": round(seconds, 1), "peak_rss_mb": round(rss, 1),
                             "file_mb": round(dump.stat().st_size / 1024**2)}
        gz = root / "all.sql.gz"
        seconds, rss = pglab.measured(pglab.as_postgres(["sh", "-c", f"{pglab.PGBIN}/pg_dumpall -h {live.sock} -p "
                                                               f"{live.port} -U postgres | gzip > {gz}"]))
        out["pg_dumpall_gzip"] = {"seconds": round(seconds, 1), "peak_rss_mb": round(rss, 1),
                                  "file_mb": round(gz.stat().st_size / 1024**2)}
        gz.unlink()

        # --- RPO under steady load
        watch = ArchiveWatch(s3, f"bench/archive/{pbr.STANZA}/")
        watch.start()
        load = subprocess.Popen(pglab.as_postgres([*pgbench, "-n", "-c", "2", "-R", str(tps), "-T", str(load_seconds),
                                                   "bench"]), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        live.sql("bench", "CREATE TABLE probes (id serial PRIMARY KEY, at timestamptz DEFAULT clock_timestamp())")
        probes: list[tuple[str, float]] = []
        target_time = ""
        while load.poll() is None:
            lsn = live.sql("bench", "INSERT INTO probes DEFAULT VALUES RETURNING pg_current_wal_lsn()")
            committed = time.monotonic()
            probes.append((live.sql("postgres", f"SELECT pg_walfile_name('{lsn}')"), committed))
            if not target_time and time.monotonic() - started > 0 and len(probes) == max(2, load_seconds // 4):
                target_time = live.sql("postgres", "SELECT now()::text")  # T, a quarter into the load
            time.sleep(2)
        deadline = time.monotonic() + model.archive_timeout_seconds + 60
        while time.monotonic() < deadline and any(seg not in watch.seen for seg, _ in probes):
            time.sleep(0.5)
        watch.stop.set()
        rpos = [watch.seen[seg] - t for seg, t in probes if seg in watch.seen]
        out["rpo"] = {"probes": len(probes), "archived": len(rpos), "tps": tps,
                      "p50_seconds": round(statistics.median(rpos), 1), "p99_seconds": round(_percentile(rpos, 0.99), 1),
                      "max_seconds": round(max(rpos), 1)}

        # --- restore to T vs pg_restore of the dump
        target = root / "pg" / "restored"
        started = time.monotonic()
        ob.restore_into(runtime, target, time=target_time)
        restored = ob.start_restored(target, root / "sock")
        others.append(restored)
        out["restore_to_time"] = {"seconds": round(time.monotonic() - started, 1), "target": target_time,
                                  "replayed_to_t": restored.sql("bench", "SELECT max(at) <= '" + target_time
                                                                + "'::timestamptz FROM probes") == "t"}
        restored.stop()
        fresh = pglab.Cluster(root / "pg" / "fresh", root / "sock")
        others.append(fresh)
        fresh.initdb()
        fresh.start()
        fresh.sql("postgres", "CREATE DATABASE bench")
        seconds, rss = pglab.measured(pglab.as_postgres([str(pglab.PGBIN / "pg_restore"), "-h", str(fresh.sock), "-p",
                                                         str(fresh.port), "-U", "postgres", "-d", "bench", str(dump)]))
        out["pg_restore"] = {"seconds": round(seconds, 1), "peak_rss_mb": round(rss, 1)}
        out["restore_ratio"] = round(out["restore_to_time"]["seconds"] / seconds, 2)
        return out
    finally:
        for cluster in others:
            cluster.stop()
        live.stop()
        s3.stop()
        pglab.remove(root)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.backup", description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mb", type=int, default=1024, help="generated database size (default 1024)")
    parser.add_argument("--load-seconds", type=int, default=150, help="steady write load for the RPO measure")
    parser.add_argument("--tps", type=int, default=50, help="pgbench transactions per second during the load")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    result = bench(args.size_mb, args.load_seconds, args.tps)
    print(json.dumps(result, indent=2) if args.json else "\n".join(f"{k}: {v}" for k, v in result.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
