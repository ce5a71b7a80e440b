"""`ops backup restore --volume` on a real Docker engine (the private dockerd of tests/engine/daemon.py).

What runs: the postgres stand-in image with Debian's pgBackRest 2.45 (tests/engine/images/postgres),
a store container on a volume archiving WAL through pgBackRest with the configuration the program
renders for prod (render/pgbackrest.py), a full backup; then ops/backup_host.py restores into a NEW
volume, replays and promotes in a one-shot container, checks the copy in a scratch Postgres with
`network_mode=none` (pg_amcheck, row counts), and writes the stack file only when the checks pass.

The repository: the rendered config with its `repo1-*` S3 lines swapped for a pgBackRest `posix`
repository on a volume the test creates (nothing here may reach S3 or the Internet). Everything else
in the file (cipher, bundling, compression, paths, the stanza) is as rendered. The S3 side of the same
restore is proven on the loopback moto over TLS (tests/test_backup_live.py). So this proves the Docker
side: volumes, the containers' mounts, users and hardening, the replay and the checks, and that the
switch points the recorded store container at the new volume; not S3 from inside a container.
"""

from __future__ import annotations

import io
import shutil
import tarfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import docker
import pytest
from docker.types import Mount

from ops import backup_host as bh
from ops.runner import run_stack, stack_file
from render import pgbackrest as pbr
from tests.conftest import recording
from tests.engine.daemon import TEST_LABEL

STACK = "prod"
PASSPHRASE = "engine passphrase 0123456789abcdef"
USER = "70:70"
LABELS = {TEST_LABEL: "backup-volume", "com.mysaaschat.stack": STACK}


def posix_conf() -> str:
    """The config the program renders for prod, its repository moved from S3 to a posix path."""
    runtime = pbr.Runtime()
    rendered = pbr.pgbackrest_conf(stack=STACK, bucket="unused", region="eu-west-1",
                                   backup=recording(STACK).env.postgres.backup, passphrase=PASSPHRASE, runtime=runtime)
    lines = [line for line in rendered.splitlines()
             if not line.startswith(("repo1-type=", "repo1-s3-", "repo1-storage-", "repo1-path="))]
    at = lines.index("[global]") + 1
    return "\n".join([*lines[:at], "repo1-type=posix", f"repo1-path=/repo{pbr.repo_path(STACK)}", *lines[at:]]) + "\n"


def put_files(client: docker.DockerClient, image: str, volume: str, mount: str, files: dict[str, str]) -> None:
    """Files into a volume, owned by the store's uid, through a never-started container (put_archive)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.uid, info.gid = len(data), 0o600, 70, 70
            tar.addfile(info, io.BytesIO(data))
    holder = client.containers.create(image, ["true"], mounts=[Mount(mount, volume, type="volume")], labels=LABELS)
    try:
        assert holder.put_archive(mount, buf.getvalue())
    finally:
        holder.remove(force=True)


def run_once(client: docker.DockerClient, image: str, script: str, mounts: list[Mount]) -> str:
    out = client.containers.run(image, [script], entrypoint=["/bin/sh", "-c"], user=USER, mounts=mounts,
                                network_mode="none", labels=LABELS, remove=True, stderr=True)
    return bytes(out).decode()


def volume_digest(client: docker.DockerClient, image: str, volume: str) -> str:
    """Every file's path, mode, owner, size and sha256 in a volume (read-only mount)."""
    return run_once(client, image, "cd /v && find . -printf '%p %m %U:%G %s\\n' | sort && "
                    "find . -type f -print0 | sort -z | xargs -0 sha256sum",
                    [Mount("/v", volume, type="volume", read_only=True)])


@dataclass
class Lab:
    client: docker.DockerClient
    image: str
    live: str
    store: bh.Store
    rows: int


@pytest.fixture(scope="module")
def lab(engine_client: docker.DockerClient, engine_images: dict[str, str]) -> Iterator[Lab]:
    client, image = engine_client, engine_images["postgres"]
    live, secrets, creds, repo = (f"mysaaschat-{STACK}-postgres-data", "bv-secrets", "bv-credentials", "bv-repo")
    for name in (live, secrets, creds, repo):
        client.volumes.create(name, labels=LABELS)
    runtime = pbr.Runtime()
    put_files(client, image, secrets, "/run/secrets", {"pgbackrest.conf": posix_conf()})
    put_files(client, image, creds, "/run/pgbackrest-credentials", {"credentials.conf": "[global]\n"})
    # The repo volume's root is root-owned: give it to the store's uid once (the only root step here).
    client.containers.run(image, ["chown", "70:70", "/repo"], entrypoint=[], mounts=[Mount("/repo", repo, type="volume")],
                          network_mode="none", labels=LABELS, remove=True)
    shared = [Mount("/run/secrets", secrets, type="volume", read_only=True),
              Mount("/run/pgbackrest-credentials", creds, type="volume", read_only=True),
              Mount("/repo", repo, type="volume")]
    data = [Mount(bh.DATA_MOUNT, live, type="volume")]
    run_once(client, image, f"initdb -D {bh.PGDATA} -U postgres --auth=trust -E UTF8 --locale=C.UTF-8 "
             "--data-checksums >/dev/null", data)
    settings = pbr.postgres_settings(recording(STACK).env.postgres.backup, runtime)
    args = [arg for key, value in {**settings, "listen_addresses": ""}.items() for arg in ("-c", f"{key}={value}")]
    store = client.containers.run(
        image, ["-D", bh.PGDATA, *args], entrypoint=["postgres"], user=USER, name=f"mysaaschat-{STACK}-postgres",
        mounts=data + shared, network_mode="none", read_only=True, cap_drop=["ALL"], security_opt=["no-new-privileges"],
        tmpfs={"/tmp": "", bh.SOCKET: ""}, labels=LABELS, detach=True)
    try:
        def sh(cmd: str) -> str:
            code, out = store.exec_run(["sh", "-c", cmd], user=USER)
            assert code == 0, out.decode()
            return bytes(out).decode().strip()

        psql = f"psql -X -At -v ON_ERROR_STOP=1 -h {bh.SOCKET} -U postgres -d postgres"
        for _ in range(60):
            if store.exec_run(["pg_isready", "-h", bh.SOCKET], user=USER).exit_code == 0:
                break
            time.sleep(0.5)
        pgbr = " ".join(pbr.pgbackrest_argv(runtime))
        sh(f"{pgbr} stanza-create && {pgbr} --type=full backup")
        rows = 1000
        sh(f"{psql} -c \"CREATE TABLE t (id int PRIMARY KEY, body text); "
           f"INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, {rows}) g\"")
        segment = sh(f"{psql} -c 'SELECT pg_walfile_name(pg_switch_wal())'")
        for _ in range(120):
            if sh(f"{psql} -c \"SELECT coalesce(last_archived_wal, '') >= '{segment}' FROM pg_stat_archiver\"") == "t":
                break
            time.sleep(0.5)
        else:
            raise AssertionError(f"{segment} was not archived")
        store.stop(timeout=60)  # the live volume must hold still for the byte-for-byte comparison
        yield Lab(client, image, live, bh.Store(image=image, user=USER, mounts={
            secrets: ("/run/secrets", True), creds: ("/run/pgbackrest-credentials", True), repo: ("/repo", False)}), rows)
    finally:
        store.remove(force=True)


def test_restore_lands_in_a_new_volume_checks_it_and_only_then_switches(lab: Lab, tmp_path: Path) -> None:
    client = lab.client
    before = volume_digest(client, lab.image, lab.live)
    stack_copy = tmp_path / f"Pulumi.{STACK}.yaml"
    shutil.copy(stack_file(STACK), stack_copy)
    original = stack_copy.read_text()

    # A check that fails (the copy holds 1000 rows, not 999): nothing is switched, the new volume is kept.
    failed = bh.restore_and_switch(client, lab.store, stack=STACK, stack_file=stack_copy, target_args=["--type=default"],
                                   expected={"postgres": {"public.t": lab.rows - 1}}, stamp="20261126t000001z")
    assert not failed.ok
    assert [(name, ok) for name, ok, _ in failed.checks] == [("pg_amcheck --all", True), ("postgres:public.t rows", False)]
    assert stack_copy.read_text() == original
    assert client.volumes.get(failed.volume).attrs["Labels"][bh.LABEL_RESTORE] == "20261126t000001z"

    # The same restore with the right expectation: checked, then the stack file names the new volume.
    outcome = bh.restore_and_switch(client, lab.store, stack=STACK, stack_file=stack_copy, target_args=["--type=default"],
                                    expected={"postgres": {"public.t": lab.rows}}, stamp="20261126t000002z")
    assert outcome.ok, outcome.checks
    assert outcome.volume == "mysaaschat-prod-postgres-data-20261126t000002z" != lab.live
    # The live volume: byte for byte what it was (both restores, replays and checks ran elsewhere).
    assert volume_digest(client, lab.image, lab.live) == before
    # A name that exists is refused before anything is written.
    with pytest.raises(bh.HostRestoreError, match="exists already"):
        bh.restore_to_new_volume(client, lab.store, stack=STACK, target_args=["--type=default"], stamp="20261126t000002z")

    # After the switch: the recorded store container (the program run on the edited stack file) mounts
    # the new volume, the backup scheduler too, and the original volume is still a protected resource.
    rec = run_stack(STACK, path=stack_copy)
    by_name = {r.name: r for r in rec.resources.values()}
    recorded = {name: next(v for v in by_name[name].inputs["volumes"] if v.get("containerPath") == bh.DATA_MOUNT)
                for name in ("postgres", "postgres-backup")}
    assert {name: m["volumeName"] for name, m in recorded.items()} == {"postgres": outcome.volume,
                                                                        "postgres-backup": outcome.volume}
    data_mount = recorded["postgres"]
    assert by_name["postgres-data"].inputs["name"] == lab.live and by_name["postgres-data"].protect
    # ...and a Postgres started with exactly that recorded mount serves the restored rows.
    mounts = [Mount(data_mount["containerPath"], data_mount["volumeName"], type="volume",
                    read_only=bool(data_mount.get("readOnly")))]
    out = run_once(client, lab.image, f"pg_ctl -D {bh.PGDATA} -l /tmp/l -w -o \"-c listen_addresses='' "
                   f"-c unix_socket_directories=/tmp -c archive_mode=off\" start >/dev/null || {{ cat /tmp/l >&2; exit 1; }}; "
                   "psql -X -At -h /tmp -U postgres -d postgres -c 'SELECT count(*) FROM t' && "
                   f"pg_ctl -D {bh.PGDATA} -m fast -w stop >/dev/null", mounts)
    assert out.strip() == str(lab.rows)
