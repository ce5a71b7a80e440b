"""`ops backup restore --volume`: restore on the stack's Docker engine into a NEW volume, check it,
and only then switch the store to it.

Everything runs through the Docker SDK against the stack's endpoint (`ssh://user@host` for ec2,
the stack's `unix://` socket for local, or `--docker-host`), from the store's own image, with the
store's own pgBackRest config (the secrets volume the program seeds) and credentials:

1. a new volume `mysaaschat-<stack>-postgres-data-<UTC stamp>` (refused if the name exists);
2. a one-shot restore container: `pgbackrest restore --archive-mode=off` into it, then Postgres is
   started there on a socket only (no TCP listener) to replay the archived WAL up to the target and
   promote, and stopped. This container is the only one with the store's egress network: replay
   fetches WAL from the repository (restore_command);
3. a scratch Postgres on the new volume with `network_mode=none`: `pg_amcheck --all`, and each
   expected table's row count (from the verification manifest when restoring to its restore point,
   or given by the caller); stopped;
4. only when every check passed: the stack file gets `postgres.data_volume: <new volume>`
   (written atomically) and the operator runs `python -m ops deploy up`, which recreates the store
   container on the new volume. The old volume stays: it is still the protected, retained
   `postgres-data` resource of the program (components/data.py), which never deletes it.

A failed restore removes the new volume (it holds nothing usable); a failed check keeps it, labelled,
for inspection, and leaves the stack file, the store and its volume as they were.

Every container here follows the store's hardening (components/container.py): the store's uid, all
capabilities dropped, no-new-privileges, a read-only root with tmpfs for /tmp and the socket.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from render import pgbackrest as pbr

DATA_MOUNT = "/var/lib/postgresql/data"  # the store's volume mount (components/data.py postgres_recipe)
PGDATA = f"{DATA_MOUNT}/pgdata"
SOCKET = "/var/run/postgresql"
LABEL_STACK = "com.mysaaschat.stack"
LABEL_RESTORE = "com.mysaaschat.restored-at"


class HostRestoreError(Exception):
    """The restore on the host refused or failed; the message says why and what was left where."""


def docker_endpoint(kind: str, docker_host: str, ssh_user: str, address: str | None) -> str:
    """The engine the store runs on: the stack's socket for `local`, `ssh://<ssh_user>@<address>` for
    ec2 (the address the program exports as `host_address`, the provider's own endpoint:
    components/host.py)."""
    if kind == "local":
        return docker_host
    if not address:
        raise HostRestoreError("the ec2 host's address is unknown: pass --docker-host ssh://USER@ADDRESS "
                               "(`pulumi stack output host_address`)")
    return f"ssh://{ssh_user}@{address}"


def volume_name(stack: str, stamp: str) -> str:
    return f"mysaaschat-{stack}-postgres-data-{stamp}"


@dataclass(frozen=True)
class Store:
    """What the restore containers take from the store (components/data.py, components/pgbackrest.py)."""

    image: str
    user: str = "70:70"
    conf: str = "/run/secrets/pgbackrest.conf"
    include_path: str = "/run/pgbackrest-credentials"
    # name or host path -> (container path, read-only); the secrets volume and the credentials dir on a host
    mounts: Mapping[str, tuple[str, bool]] = field(default_factory=dict)
    network: str | None = None  # egress to the repository (the stack's backup network); None: no network


def _hardened(store: Store, volume: str, *, network: str | None) -> dict[str, Any]:
    from docker.types import Mount

    mounts = [Mount(DATA_MOUNT, volume, type="volume")]
    for source, (target, read_only) in sorted(store.mounts.items()):
        kind = "bind" if source.startswith("/") else "volume"
        mounts.append(Mount(target, source, type=kind, read_only=read_only))
    return {"image": store.image, "user": store.user, "mounts": mounts, "read_only": True,
            "cap_drop": ["ALL"], "security_opt": ["no-new-privileges"], "entrypoint": ["/bin/sh", "-c"],
            "tmpfs": {"/tmp": "rw,nosuid,nodev,size=64m", SOCKET: "rw,nosuid,nodev,size=1m,mode=2775"},
            "network_mode": network or "none", "environment": {"PGDATA": PGDATA}, "detach": True}


def _run(client: Any, name: str, script: str, kwargs: dict[str, Any], timeout: float) -> tuple[int, str]:
    container = client.containers.create(command=[script], name=name, labels={LABEL_RESTORE: name}, **kwargs)
    try:
        container.start()
        status = container.wait(timeout=timeout)
        logs = container.logs(stdout=True, stderr=True).decode(errors="replace")
        return int(status.get("StatusCode", 1)), logs
    finally:
        container.remove(force=True)


def _q(value: str) -> str:
    return "'" + value.replace("'", "'\"'\"'") + "'"


def restore_script(store: Store, target_args: Sequence[str]) -> str:
    """pgBackRest restore into the new volume, then WAL replay to the target and promotion, then stop."""
    pgbr = " ".join(_q(a) for a in ["pgbackrest", f"--config={store.conf}", f"--config-include-path={store.include_path}",
                                      f"--stanza={pbr.STANZA}", f"--pg1-path={PGDATA}", "--archive-mode=off",
                                      *target_args, "restore"])
    return (
        "set -eu\n"
        f"mkdir -p -m 0700 {PGDATA}\n"
        f"{pgbr}\n"
        f"pg_ctl -D {PGDATA} -l /tmp/replay.log -w -t 86400 "
        f"-o \"-c listen_addresses='' -c unix_socket_directories={SOCKET}\" start\n"
        "i=0\n"
        f"until [ \"$(psql -X -At -h {SOCKET} -U postgres -d postgres -c 'select pg_is_in_recovery()')\" = f ]; do\n"
        "  i=$((i+1)); [ $i -lt 86400 ] || { echo 'never left recovery' >&2; cat /tmp/replay.log >&2; exit 1; }\n"
        "  sleep 1\n"
        "done\n"
        f"pg_ctl -D {PGDATA} -m fast -w stop\n"
    )


def check_script(expected: Mapping[str, Mapping[str, int]]) -> str:
    """Start the restored copy with no network, pg_amcheck every database, count the expected tables'
    rows; one JSON line per database with the counts; stop it."""
    lines = [
        "set -eu",
        f"pg_ctl -D {PGDATA} -l /tmp/check.log -w -t 600 -o \"-c listen_addresses='' -c unix_socket_directories={SOCKET} "
        "-c archive_mode=off\" start",
        "rc=0",
        f"if pg_amcheck -h {SOCKET} -U postgres --all --install-missing; then echo 'AMCHECK ok'; "
        "else echo 'AMCHECK failed'; rc=1; fi",
    ]
    for db, tables in sorted(expected.items()):
        if not tables:
            continue
        parts = " UNION ALL ".join(f"SELECT {_sql_literal(t)} AS t, count(*) AS n FROM {_sql_ident(t)}" for t in sorted(tables))
        query = f"SELECT json_build_object('db', {_sql_literal(db)}, 'rows', json_object_agg(t, n)) FROM ({parts}) AS c"
        lines.append(f"psql -X -At -v ON_ERROR_STOP=1 -h {SOCKET} -U postgres -d {_q(db)} -c {_q(query)} "
                     f"| sed 's/^/ROWS /' || rc=1")
    lines += [f"pg_ctl -D {PGDATA} -m fast -w stop", "exit $rc"]
    return "\n".join(lines) + "\n"


def _sql_ident(qualified: str) -> str:
    schema, name = qualified.split(".", 1)
    return '"' + schema.replace('"', '""') + '"."' + name.replace('"', '""') + '"'


def _sql_literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


@dataclass
class Outcome:
    volume: str
    ok: bool
    checks: list[tuple[str, bool, str]]


def restore_to_new_volume(client: Any, store: Store, *, stack: str, target_args: Sequence[str],
                          expected: Mapping[str, Mapping[str, int]] | None = None, stamp: str | None = None,
                          timeout: float = 24 * 3600) -> Outcome:
    """Steps 1-3: a new volume, restored, replayed, checked. Never touches another volume."""
    import docker.errors

    stamp = stamp or dt.datetime.now(dt.UTC).strftime("%Y%m%dt%H%M%Sz")
    name = volume_name(stack, stamp)
    try:
        client.volumes.get(name)
        raise HostRestoreError(f"volume {name} exists already; restore only ever writes into a new volume")
    except docker.errors.NotFound:
        pass
    client.volumes.create(name, labels={LABEL_STACK: stack, LABEL_RESTORE: stamp})
    code, logs = _run(client, f"{name}-restore", restore_script(store, target_args),
                      _hardened(store, name, network=store.network), timeout)
    if code != 0:
        client.volumes.get(name).remove(force=True)  # ours, and nothing usable is in it
        raise HostRestoreError(f"the restore failed (exit {code}); the new volume was removed, nothing else "
                               f"changed:\n{logs.strip()[-2000:]}")
    code, logs = _run(client, f"{name}-check", check_script(expected or {}),
                      _hardened(store, name, network=None), timeout)
    checks: list[tuple[str, bool, str]] = [("pg_amcheck --all", "AMCHECK ok" in logs.splitlines(),
                                            logs.strip()[-500:])]
    counted: dict[str, dict[str, int]] = {}
    for line in logs.splitlines():
        if line.startswith("ROWS "):
            doc = json.loads(line[5:])
            counted[doc["db"]] = {k: int(v) for k, v in (doc["rows"] or {}).items()}
    for db, tables in sorted((expected or {}).items()):
        for table, rows in sorted(tables.items()):
            got = counted.get(db, {}).get(table)
            checks.append((f"{db}:{table} rows", got == rows, f"expected {rows}, restored {got}"))
    ok = code == 0 and all(passed for _, passed, _ in checks)
    if code != 0 and len(checks) == 1:
        checks.append(("the check container", False, logs.strip()[-1000:]))
    return Outcome(name, ok, checks)


_DATA_VOLUME = re.compile(r"^(?P<indent>\s*)data_volume:.*$")


def set_data_volume(stack_file: Path, volume: str) -> None:
    """Write `postgres.data_volume: <volume>` into the stack file, atomically (a temporary file in the
    same directory, fsync, rename), keeping every other line and comment as it was."""
    import yaml

    text = stack_file.read_text()
    lines = text.splitlines(keepends=True)
    key = "  my-saas-chat:postgres:"
    start = next((i for i, line in enumerate(lines) if line.rstrip() == key), None)
    if start is None:
        if not text.endswith("\n"):
            text += "\n"
        text += f"{key}\n    data_volume: {volume}\n"
    else:
        end = start + 1
        while end < len(lines) and (lines[end].startswith("    ") or not lines[end].strip()):
            end += 1
        block = [i for i in range(start + 1, end) if _DATA_VOLUME.match(lines[i].rstrip("\n"))
                 and lines[i].startswith("    ") and not lines[i].startswith("     ")]
        if block:
            lines[block[0]] = f"    data_volume: {volume}\n"
        else:
            lines.insert(start + 1, f"    data_volume: {volume}\n")
        text = "".join(lines)
    written = (yaml.safe_load(text) or {}).get("config", {}).get("my-saas-chat:postgres", {}).get("data_volume")
    if written != volume:
        raise HostRestoreError(f"could not write postgres.data_volume into {stack_file}")
    fd, tmp = tempfile.mkstemp(prefix=f".{stack_file.name}.", dir=stack_file.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, stack_file.stat().st_mode & 0o777)
        os.replace(tmp, stack_file)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def restore_and_switch(client: Any, store: Store, *, stack: str, stack_file: Path, target_args: Sequence[str],
                       expected: Mapping[str, Mapping[str, int]] | None = None, stamp: str | None = None) -> Outcome:
    """Steps 1-4: the stack file names the new volume only when every check passed."""
    outcome = restore_to_new_volume(client, store, stack=stack, target_args=target_args, expected=expected, stamp=stamp)
    if outcome.ok:
        set_data_volume(stack_file, outcome.volume)
    return outcome


def manifest_target(manifest: Mapping[str, Any]) -> tuple[list[str], dict[str, dict[str, int]]]:
    """Restore exactly to what a verification manifest recorded (`ops backup run`): its backup set,
    its named restore point; and the row counts it recorded, which hold exactly at that point only."""
    target = [f"--set={manifest['label']}", "--type=name", f"--target={manifest['restore_point']}",
              "--target-action=promote"]
    rows = {str(table): int(entry[0]) for table, entry in manifest["tables"].items()}
    return target, {str(manifest["database"]): rows}
