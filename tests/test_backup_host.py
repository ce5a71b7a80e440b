"""The pure parts of `ops backup restore --volume` (ops/backup_host.py). The Docker side runs on the real
engine in tests/engine/test_backup_volume.py."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from ops import backup_host as bh
from ops.cli import app
from ops.runner import read_stack_file, stack_file


def test_the_switch_writes_only_the_data_volume_and_keeps_every_other_line(tmp_path: Path) -> None:
    path = tmp_path / "Pulumi.local.yaml"
    shutil.copy(stack_file("local"), path)
    before = path.read_text()
    bh.set_data_volume(path, "mysaaschat-local-postgres-data-20261126t010203z")
    after = path.read_text()
    added = [line for line in after.splitlines() if line not in before.splitlines()]
    assert added == ["    data_volume: mysaaschat-local-postgres-data-20261126t010203z"]
    assert [line for line in before.splitlines() if line not in after.splitlines()] == []
    # Again, with another volume: replaced in place, not added twice.
    bh.set_data_volume(path, "mysaaschat-local-postgres-data-20261127t000000z")
    config = yaml.safe_load(path.read_text())["config"]
    assert config["my-saas-chat:postgres"]["data_volume"] == "mysaaschat-local-postgres-data-20261127t000000z"
    assert path.read_text().count("data_volume:") == 1
    assert read_stack_file(path, "local")  # still a valid stack file
    assert not [p for p in tmp_path.iterdir() if p.name != path.name]  # no temporary file left


def test_the_switch_adds_a_postgres_block_when_the_stack_file_has_none(tmp_path: Path) -> None:
    path = tmp_path / "Pulumi.x.yaml"
    path.write_text("# comment kept\nconfig:\n  my-saas-chat:domain: example.com\n")
    bh.set_data_volume(path, "vol-1")
    assert path.read_text().startswith("# comment kept\n")
    assert yaml.safe_load(path.read_text())["config"]["my-saas-chat:postgres"] == {"data_volume": "vol-1"}


def test_the_model_refuses_a_volume_name_docker_would_refuse(tmp_path: Path) -> None:
    from config.load import ConfigError
    from ops.runner import run_stack

    path = tmp_path / "Pulumi.local.yaml"
    shutil.copy(stack_file("local"), path)
    bh.set_data_volume(path, "../etc")
    with pytest.raises(ConfigError, match=r"Pulumi.local.yaml: postgres.data_volume"):
        run_stack("local", path=path)


def test_the_endpoint_is_the_stacks_engine() -> None:
    assert bh.docker_endpoint("local", "unix:///var/run/docker.sock", "admin", None) == "unix:///var/run/docker.sock"
    assert bh.docker_endpoint("ec2", "unix:///x", "admin", "203.0.113.7") == "ssh://admin@203.0.113.7"
    with pytest.raises(bh.HostRestoreError, match="--docker-host"):
        bh.docker_endpoint("ec2", "unix:///x", "admin", None)


def test_restore_volume_refuses_without_yes_and_touches_nothing() -> None:
    before = stack_file("prod").read_text()
    result = CliRunner().invoke(app, ["backup", "restore", "--stack", "prod", "--latest", "--volume",
                                      "--docker-host", "unix:///nonexistent.sock"])
    assert result.exit_code == 2 and "refusing without --yes" in result.output
    assert stack_file("prod").read_text() == before


def test_the_restore_script_never_archives_and_the_check_has_no_network() -> None:
    script = bh.restore_script(bh.Store(image="x"), ["--type=default"])
    assert "'--archive-mode=off'" in script and "'restore'" in script and "listen_addresses=''" in script
    kwargs = bh._hardened(bh.Store(image="x", network="backup-net"), "vol", network=None)
    assert kwargs["network_mode"] == "none" and kwargs["read_only"] and kwargs["cap_drop"] == ["ALL"]
    assert bh._hardened(bh.Store(image="x", network="backup-net"), "vol", network="backup-net")["network_mode"] == "backup-net"


@pytest.mark.parametrize("version, ok", [("2.51-r0", True), ("2.55.0-r0", False), ("2.55-r0", False),
                                         ("2.55.1-r0", True), ("2.54.2-r0", True)])
def test_a_pgbackrest_without_content_md5_is_refused(version: str, ok: bool) -> None:
    from pydantic import ValidationError

    from config.model import PostgresBackup

    if ok:
        assert PostgresBackup.model_validate({"pgbackrest_version": version}).pgbackrest_version == version
    else:
        with pytest.raises(ValidationError, match="Content-MD5"):
            PostgresBackup.model_validate({"pgbackrest_version": version})


def test_a_manifest_gives_its_restore_point_and_the_row_counts_that_hold_there() -> None:
    manifest = {"label": "20261126-010203F", "database": "app", "restore_point": "20261126-010203F",
                "tables": {"public.messages": [6, "abc"], "public.big": [3, "def"]}}
    target, expected = bh.manifest_target(manifest)
    assert target == ["--set=20261126-010203F", "--type=name", "--target=20261126-010203F", "--target-action=promote"]
    assert expected == {"app": {"public.messages": 6, "public.big": 3}}


def test_to_backup_needs_the_volume_path() -> None:
    result = CliRunner().invoke(app, ["backup", "restore", "--stack", "prod", "--to-backup", "x", "--yes"])
    assert result.exit_code == 2 and "--to-backup" in result.output
