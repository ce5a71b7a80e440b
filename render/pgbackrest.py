"""pgBackRest: its configuration, the Postgres settings that archive WAL through it, the backup
scheduler and its metrics, as pure functions of the model.

Verified against Debian's pgBackRest 2.45 and PostgreSQL 15 with a moto S3 over TLS
(tests/test_backup_live.py; /work/shared recipe). What the text below relies on:
- every call names its config (`--config`): otherwise `/etc/pgbackrest.conf` is read too;
- `repo1-cipher-pass` is refused on the command line, so it lives in the config file (a 0400 secret
  file owned by the store's uid), never in argv or the container's environment;
- S3 credentials come from an include file (`--config-include-path`): on a host they are the instance
  role's temporary credentials, refreshed on the host (containers cannot reach the metadata service:
  IMDSv2 hop limit 1), in tests the moto keys;
- `repo1-bundle=y`: small files bundled into few objects (one PUT per file is ~7x slower on S3);
- `io-timeout` short: a failing request is retried for `io-timeout`, so an unreachable repository
  looks like a hang for a minute at the default.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from config.model import BackupSchedule, PostgresBackup
from render.contracts import BACKUP_ARCHIVE_LAG, BACKUP_ARCHIVE_LAST_SUCCESS, BACKUP_LAST_SUCCESS

STANZA = "main"
PG_MAJOR = 15


@dataclass(frozen=True)
class Endpoint:
    """A non-AWS S3 endpoint (tests, the laptop drill). pgBackRest matches the server certificate
    against DNS names only, so `host` is a name (localhost), never an IP."""

    host: str
    port: int
    ca_file: str | None = None


@dataclass(frozen=True)
class Runtime:
    """Where things are for the process that runs pgBackRest (inside the store container on a host;
    a temporary directory in tests and the drill)."""

    pg_path: str = "/var/lib/postgresql/data/pgdata"
    socket_path: str = "/var/run/postgresql"
    port: int = 5432
    user: str = "postgres"
    database: str = "postgres"
    conf: str = "/run/secrets/pgbackrest.conf"
    include_path: str = "/run/pgbackrest-credentials"
    work: str = "/tmp/pgbackrest"  # log, lock and spool: the root filesystem is read-only


def repo_path(stack: str) -> str:
    return f"/{stack}"


def pgbackrest_conf(*, stack: str, bucket: str, region: str, backup: PostgresBackup, passphrase: str,
                    runtime: Runtime, endpoint: Endpoint | None = None, io_timeout_seconds: int = 20) -> str:
    """pgbackrest.conf for one stack's repository. Holds the passphrase: a secret file."""
    if not passphrase or "\n" in passphrase:
        raise ValueError("the backup passphrase must be one non-empty line")
    s3 = [
        "repo1-type=s3",
        f"repo1-s3-bucket={bucket}",
        f"repo1-s3-region={region}",
        f"repo1-path={repo_path(stack)}",
    ]
    if endpoint is None:
        s3.append(f"repo1-s3-endpoint=s3.{region}.amazonaws.com")
    else:
        s3 += [f"repo1-s3-endpoint={endpoint.host}", f"repo1-storage-port={endpoint.port}", "repo1-s3-uri-style=path"]
        if endpoint.ca_file:
            s3.append(f"repo1-storage-ca-file={endpoint.ca_file}")
    lines = [
        "[global]",
        *s3,
        # Credentials (key, secret, session token) arrive through the include file.
        "repo1-s3-key-type=shared",
        "repo1-cipher-type=aes-256-cbc",
        f"repo1-cipher-pass={passphrase}",
        "repo1-bundle=y",
        # The host's role may not delete (components/backup.py: retention is the bucket lifecycle's), so
        # pgBackRest must not try to expire after each backup: the backup would end in AccessDenied.
        # The retention settings below apply to an operator's `expire` run with delete rights.
        "expire-auto=n",
        "repo1-retention-full-type=time",
        f"repo1-retention-full={backup.retention_days}",
        f"repo1-retention-diff={backup.retention_diff}",
        "compress-type=zst",
        "compress-level=3",
        f"process-max={backup.process_max}",
        "start-fast=y",
        "archive-check=y",
        f"io-timeout={io_timeout_seconds}",
        f"log-path={runtime.work}/log",
        f"lock-path={runtime.work}/lock",
        f"spool-path={runtime.work}/spool",
        "log-level-console=warn",
        "log-level-stderr=error",
        "log-level-file=off",
        "",
        f"[{STANZA}]",
        f"pg1-path={runtime.pg_path}",
        f"pg1-port={runtime.port}",
        f"pg1-socket-path={runtime.socket_path}",
        f"pg1-user={runtime.user}",
        f"pg1-database={runtime.database}",
        "",
    ]
    return "\n".join(lines)


def credentials_conf(key: str, secret: str, token: str | None = None) -> str:
    """The include file with the repository's S3 credentials."""
    lines = ["[global]", f"repo1-s3-key={key}", f"repo1-s3-key-secret={secret}"]
    if token:
        lines.append(f"repo1-s3-token={token}")
    return "\n".join(lines) + "\n"


def pgbackrest_argv(runtime: Runtime, *args: str) -> list[str]:
    """A pgBackRest call with its config named explicitly (never /etc/pgbackrest.conf)."""
    return ["pgbackrest", f"--config={runtime.conf}", f"--config-include-path={runtime.include_path}",
            f"--stanza={STANZA}", *args]


def postgres_settings(backup: PostgresBackup, runtime: Runtime) -> dict[str, str]:
    """The server settings continuous archiving needs. `archive_command` runs inside the server's own
    container (or host), as the server's user: pgBackRest must be installed where Postgres runs."""
    if not 1 <= backup.archive_timeout_seconds <= 60:
        raise ValueError("archive_timeout must be between 1 and 60 seconds (the RPO promise)")
    command = " ".join(pgbackrest_argv(runtime, "archive-push", "%p"))
    return {
        "wal_level": "replica",
        "archive_mode": "on",
        "archive_command": command,
        # A quiet database still closes a segment with its last commits at least this often.
        "archive_timeout": f"{backup.archive_timeout_seconds}s",
    }


def settings_conf(settings: Mapping[str, str]) -> str:
    """postgresql.conf lines for `settings` (quoted as the server expects)."""
    return "".join(f"{key} = '{value.replace(chr(39), chr(39) * 2)}'\n" for key, value in settings.items())


def settings_args(settings: Mapping[str, str]) -> list[str]:
    """`postgres -c key=value` arguments for `settings` (argv: no shell quoting)."""
    return [arg for key, value in settings.items() for arg in ("-c", f"{key}={value}")]


def schedule_slots(schedule: BackupSchedule) -> list[str]:
    """`day-HH:MM` slots a schedule fires at, in the form the scheduler compares with `date -u`."""
    return [f"{day}-{schedule.at}" for day in schedule.days]


def schedule_text(backup: PostgresBackup) -> str:
    """One line for summaries and labels: what runs when (UTC)."""
    return (f"full {','.join(backup.full.days)} {backup.full.at} UTC; diff {','.join(backup.diff.days)} "
            f"{backup.diff.at} UTC; WAL at least every {backup.archive_timeout_seconds}s; "
            f"retention {backup.retention_days}d full, {backup.retention_diff} diff")


def metrics_sql(stanza: str = STANZA) -> str:
    """A query that turns `pgbackrest info --output=json` (psql variable `info`) and the server's
    archiver state into the Prometheus text the monitoring reads (render/contracts.py names).

    Archive lag: age of the oldest completed WAL segment still waiting for archive_command (its
    `.ready` file's time), 0 when nothing waits. Runs as the store's superuser (pg_ls_archive_statusdir).
    """
    label = stanza.replace("\\", "\\\\").replace('"', '\\"')
    return f"""\\set ON_ERROR_STOP on
WITH info AS (SELECT coalesce(:'info', '[]')::json AS j),
backups AS (
  SELECT b->>'type' AS type, max((b->'timestamp'->>'stop')::bigint) AS stop
  FROM info, json_array_elements(coalesce(j->0->'backup', '[]'::json)) AS b
  WHERE coalesce((b->>'error')::boolean, false) IS false
  GROUP BY 1
),
waiting AS (
  SELECT min(modification) AS oldest FROM pg_ls_archive_statusdir() WHERE name LIKE '%.ready'
)
SELECT line FROM (
  SELECT 1 AS o, '# HELP {BACKUP_LAST_SUCCESS} Unix time of the last successful pgBackRest backup.' AS line
  UNION ALL SELECT 2, '# TYPE {BACKUP_LAST_SUCCESS} gauge'
  UNION ALL SELECT 3, format('{BACKUP_LAST_SUCCESS}{{stanza="{label}",type="%s"}} %s', type, stop) FROM backups
  UNION ALL SELECT 4, '# HELP {BACKUP_ARCHIVE_LAST_SUCCESS} Unix time of the last WAL segment archived.'
  UNION ALL SELECT 5, '# TYPE {BACKUP_ARCHIVE_LAST_SUCCESS} gauge'
  UNION ALL SELECT 6, format('{BACKUP_ARCHIVE_LAST_SUCCESS}{{stanza="{label}"}} %s',
                             coalesce(floor(extract(epoch FROM last_archived_time))::bigint, 0)) FROM pg_stat_archiver
  UNION ALL SELECT 7, '# HELP {BACKUP_ARCHIVE_LAG} Seconds the oldest completed WAL segment has waited for the archive.'
  UNION ALL SELECT 8, '# TYPE {BACKUP_ARCHIVE_LAG} gauge'
  UNION ALL SELECT 9, format('{BACKUP_ARCHIVE_LAG}{{stanza="{label}"}} %s',
                             coalesce(floor(extract(epoch FROM now() - oldest))::bigint, 0)) FROM waiting
) AS lines ORDER BY o, line;
"""


# The annotation key a backup's verification manifest is stored under (`pgbackrest annotate
# --set=LABEL --annotation=verify=JSON`, available since 2.41; Debian's 2.45 has it). pgBackRest parses
# `--annotation` as a hash option, splitting each KEY=VALUE at its FIRST '=' (pgbackrest src/config/parse.c
# cfgParse, cfgOptTypeHash: strchr(pair, '=')), with no length limit on the value (src/config/parse.auto.c.inc
# opt/annotation: PARSE_RULE_OPTION_TYPE(Hash), no size rule), so a JSON value with '=' in it is kept whole;
# src/command/annotate/annotate.c cmdAnnotate stores it in backup.info (infoBackupDataAnnotationSet) and
# src/command/info/info.c prints it for every backup in `info --output=json` (BACKUP_KEY_ANNOTATION).
MANIFEST_ANNOTATION = "verify"


def manifest_sql() -> str:
    """psql script (variable `label`: the restore point's name) printing one line, the verification
    manifest as JSON: {restore_point, lsn, database, tables: {"schema.table": [rows, md5]}}.

    One transaction: SHARE locks on every table (writes wait, reads do not), then counts and checksums
    and a named restore point in one statement, so the checksums describe exactly the state at that
    point. The checksum is ops/pglab.py table_checksums' (md5 over the sorted md5s of the rows' text).
    Dynamic per-table queries inside one SELECT go through query_to_xml (no function to install).
    Used by `ops backup run` (ops/backup.py record_manifest) and the scheduler (scheduler_script).
    """
    return r"""\set ON_ERROR_STOP on
BEGIN;
SELECT 'LOCK TABLE ' || string_agg(format('%I.%I', n.nspname, c.relname), ', ') || ' IN SHARE MODE'
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg_toast%'
HAVING count(*) > 0 \gexec
WITH point AS MATERIALIZED (SELECT pg_create_restore_point(:'label') AS lsn),
tables AS (
  SELECT n.nspname || '.' || c.relname AS t,
         query_to_xml(format('SELECT count(*) AS c, md5(string_agg(md5(r::text), %L ORDER BY md5(r::text))) AS m '
                             'FROM %I.%I AS r', '', n.nspname, c.relname), false, true, '') AS x
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
  WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg_toast%'
)
SELECT jsonb_build_object(
  'restore_point', :'label', 'lsn', (SELECT lsn::text FROM point), 'database', current_database(),
  'tables', coalesce((SELECT jsonb_object_agg(t, jsonb_build_array(
      ((xpath('/row/c/text()', x))[1])::text::bigint, coalesce(((xpath('/row/m/text()', x))[1])::text, '')))
    FROM tables), '{}'::jsonb));
COMMIT;
SELECT pg_switch_wal() AS switched \gset
"""


def scheduler_script(backup: PostgresBackup, runtime: Runtime, *, metrics_sql_path: str, textfile_dir: str,
                     interval_seconds: int = 30) -> str:
    """The backup scheduler's loop (POSIX sh, runs in the store image as the store's uid).

    Each minute slot of the model's schedule runs one backup; every `interval_seconds` the metrics
    are rewritten atomically (a temporary name in the same directory, then rename) so the textfile
    collector never reads half a file.
    """
    full, diff = " ".join(schedule_slots(backup.full)), " ".join(schedule_slots(backup.diff))
    pbr = " ".join(pgbackrest_argv(runtime))
    psql = f"psql -X -q -At -h {runtime.socket_path} -p {runtime.port} -U {runtime.user} -d {runtime.database}"
    return f"""#!/bin/sh
# Rendered by render/pgbackrest.py: full {backup.full.days} {backup.full.at}, diff {backup.diff.days} {backup.diff.at} (UTC).
set -u
mkdir -p {runtime.work}/log {runtime.work}/lock {runtime.work}/spool
pbr() {{ {pbr} "$@"; }}
metrics() {{
  info=$(pbr info --output=json 2>/dev/null) || info='[]'
  tmp={textfile_dir}/.pgbackrest.prom.$$
  if {psql} -v info="$info" -f {metrics_sql_path} > "$tmp"; then
    mv -f "$tmp" {textfile_dir}/pgbackrest.prom
  else
    rm -f "$tmp"
  fi
}}
# After each scheduled backup: the verification manifest (manifest_sql, the one `ops backup run` records
# too) stored with the backup itself as its `verify` annotation, so `ops backup verify` can drill it.
# The newest label comes from `info --output=json`, read by psql (the image has no jq).
record() {{
  info=$(pbr info --output=json) || return 1
  label=$({psql} -v info="$info" <<'SQL'
SELECT (:'info')::json->0->'backup'->-1->>'label';
SQL
) || return 1
  [ -n "$label" ] || return 1
  manifest=$({psql} -v label="$label" <<'SQL'
{manifest_sql().rstrip()}
SQL
) || return 1
  pbr annotate --set="$label" --annotation={MANIFEST_ANNOTATION}="$manifest"
}}
# The stanza exists once; `stanza-create` on an existing, matching stanza is a no-op.
until pbr stanza-create; do echo "stanza-create failed; retrying in 60s" >&2; sleep 60; done
last=""
while :; do
  now=$(date -u +%a-%H:%M | tr 'A-Z' 'a-z')
  if [ "$now" != "$last" ]; then
    last=$now
    case " {full} " in *" $now "*) if pbr --type=full backup; then record || echo "full backup: no manifest" >&2
      else echo "full backup failed" >&2; fi ;; esac
    case " {diff} " in *" $now "*) if pbr --type=diff backup; then record || echo "diff backup: no manifest" >&2
      else echo "diff backup failed" >&2; fi ;; esac
  fi
  metrics
  sleep {interval_seconds}
done
"""


def image_build_args(base_image: str, backup: PostgresBackup) -> dict[str, str]:
    """Build arguments of images/postgres-pgbackrest/Dockerfile: the pinned official image plus
    Alpine's pgbackrest package at a pinned version."""
    return {"BASE": base_image, "PGBACKREST_VERSION": backup.pgbackrest_version}


def image_name(base_tag: str, backup: PostgresBackup) -> str:
    """The local name of the built store image: a release-looking tag that changes with its inputs."""
    return f"mysaaschat/postgres-pgbackrest:{base_tag}-pgbackrest{backup.pgbackrest_version}"


CREDENTIALS_REFRESHER = '''#!/usr/bin/python3
"""Writes the instance role's temporary S3 credentials where the Postgres containers read them.

Containers cannot reach the metadata service (IMDSv2, hop limit 1); pgBackRest includes this file
in every call (--config-include-path). Atomic: a temporary file in the same directory, renamed.
"""
import json, os, tempfile, urllib.request

IMDS = "http://169.254.169.254/latest"
DIR, UID, GID = {directory!r}, 0, {gid}
TEXTFILE = {textfile!r}


def get(path, token):
    request = urllib.request.Request(IMDS + path, headers={{"X-aws-ec2-metadata-token": token}})
    return urllib.request.urlopen(request, timeout=5).read().decode()


token = urllib.request.urlopen(urllib.request.Request(
    IMDS + "/api/token", method="PUT", headers={{"X-aws-ec2-metadata-token-ttl-seconds": "300"}}), timeout=5).read().decode()
role = get("/meta-data/iam/security-credentials/", token).split()[0]
creds = json.loads(get("/meta-data/iam/security-credentials/" + role, token))
text = "[global]\\nrepo1-s3-key={{}}\\nrepo1-s3-key-secret={{}}\\nrepo1-s3-token={{}}\\n".format(
    creds["AccessKeyId"], creds["SecretAccessKey"], creds["Token"])
os.makedirs(DIR, mode=0o750, exist_ok=True)
os.chown(DIR, UID, GID)
os.chmod(DIR, 0o750)
fd, tmp = tempfile.mkstemp(dir=DIR, prefix=".credentials-")
with os.fdopen(fd, "w") as fh:
    fh.write(text)
    os.fchown(fh.fileno(), UID, GID)
    os.fchmod(fh.fileno(), 0o440)
os.replace(tmp, os.path.join(DIR, "credentials.conf"))
# The backup scheduler (uid {gid}) writes its metrics into the textfile collector's directory.
os.makedirs(TEXTFILE, mode=0o775, exist_ok=True)
os.chown(TEXTFILE, UID, GID)
os.chmod(TEXTFILE, 0o775)
'''


def host_files(*, credentials_dir: str, textfile_dir: str, store_gid: int = 70) -> list[dict[str, str]]:
    """cloud-init write_files for the host side of backups: the credentials refresher and its timer."""
    return [
        {"path": "/usr/local/sbin/mysaaschat-backup-credentials", "permissions": "0755",
         "content": CREDENTIALS_REFRESHER.format(directory=credentials_dir, gid=store_gid, textfile=textfile_dir)},
        {"path": "/etc/systemd/system/mysaaschat-backup-credentials.service", "permissions": "0644",
         "content": "[Unit]\nDescription=Instance role credentials for pgBackRest\nAfter=network-online.target\n\n"
                    "[Service]\nType=oneshot\nExecStart=/usr/local/sbin/mysaaschat-backup-credentials\n"},
        {"path": "/etc/systemd/system/mysaaschat-backup-credentials.timer", "permissions": "0644",
         # Role credentials live at least an hour and IMDS renews them before expiry: every 10 minutes.
         "content": "[Unit]\nDescription=Refresh pgBackRest's S3 credentials\n\n[Timer]\nOnBootSec=10s\n"
                    "OnUnitActiveSec=10min\n\n[Install]\nWantedBy=timers.target\n"},
    ]


HOST_RUNCMD = [["systemctl", "enable", "--now", "mysaaschat-backup-credentials.timer"],
               ["systemctl", "start", "mysaaschat-backup-credentials.service"]]
