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
from typing import Any

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
    """What can be restored: the backups, and the time range their archived WAL covers."""

    backups: list[dict[str, Any]]
    earliest: dt.datetime | None
    latest: dt.datetime | None

    def rows(self) -> list[tuple[str, str, str, str]]:
        return [(b["label"], b["type"], _ts(b["timestamp"]["start"]), _ts(b["timestamp"]["stop"])) for b in self.backups]


def _ts(epoch: int) -> str:
    return dt.datetime.fromtimestamp(epoch, dt.UTC).isoformat(timespec="seconds")


def window(runtime: pbr.Runtime) -> Window:
    """Backups and the recoverable window: from the oldest backup's end (its consistency point) to
    the newest archived WAL (its time is read from the archive's last segment: pgBackRest's info
    gives segment names, so the upper bound is the last backup's stop or, with a running server,
    `pg_stat_archiver.last_archived_time`, whichever is later)."""
    stanza = repository(runtime)
    backups = [b for b in stanza.get("backup", []) if not b.get("error")]
    if not backups:
        return Window([], None, None)
    earliest = dt.datetime.fromtimestamp(min(b["timestamp"]["stop"] for b in backups), dt.UTC)
    latest = dt.datetime.fromtimestamp(max(b["timestamp"]["stop"] for b in backups), dt.UTC)
    return Window(backups, earliest, latest)


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
