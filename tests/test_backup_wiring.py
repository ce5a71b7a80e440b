"""How continuous backups are wired into the stacks (recorded under the strict mocks), and the model's
limits. What pgBackRest and PostgreSQL do with the rendered text is proven in test_backup_live.py."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from components import pgbackrest as backup
from config.model import PostgresBackup
from ops.runner import Recording
from policy.rules import image_problem
from render import pgbackrest as pbr
from render.cloud_init import render_user_data
from render.contracts import TEXTFILE_HOST_DIR
from tests.conftest import recording, require_tool
from tests.test_promises import container, plain, seeded

IMAGE = "docker:index/remoteImage:RemoteImage"


def _image(rec: Recording) -> dict[str, object]:
    return next(r.inputs for r in rec.resources.values() if r.type == IMAGE and r.name == "postgres-image")


@pytest.mark.parametrize("stack", ["prod", "staging"])
def test_postgres_archives_through_pgbackrest_with_the_models_settings(stack: str) -> None:
    rec = recording(stack)
    spec = rec.env.postgres
    command = plain(container(rec, "postgres").inputs["command"])
    settings = dict(command[i + 1].split("=", 1) for i, arg in enumerate(command) if arg == "-c")
    assert settings["archive_mode"] == "on" and settings["wal_level"] == "replica"
    assert settings["archive_timeout"] == f"{spec.backup.archive_timeout_seconds}s"
    assert spec.backup.archive_timeout_seconds <= 60
    assert settings["archive_command"].startswith("pgbackrest --config=/run/secrets/pgbackrest.conf ")
    assert settings["archive_command"].endswith(" archive-push %p")
    conf = seeded(rec, "postgres")[backup.CONF]
    lines = set(conf.splitlines())
    assert {f"repo1-s3-bucket={rec.env.host.backup_bucket}", f"repo1-path=/{stack}", "repo1-cipher-type=aes-256-cbc",
            "repo1-bundle=y", "compress-type=zst", f"repo1-retention-full={spec.backup.retention_days}",
            "repo1-retention-full-type=time", f"process-max={spec.backup.process_max}",
            # The host's role may not delete (the bucket's policy): no automatic expire after a backup.
            "expire-auto=n",
            "repo1-s3-region=eu-west-1" if stack == "prod" else "repo1-type=s3"} <= lines
    # The passphrase is in the (secret) file, never on a command line or in the environment.
    passphrase = next(line.split("=", 1)[1] for line in lines if line.startswith("repo1-cipher-pass="))
    assert passphrase and passphrase not in " ".join(command)
    assert all(passphrase not in e for e in plain(container(rec, "postgres").inputs["envs"]))
    assert seeded(rec, "postgres")[backup.SCHEDULER] == pbr.scheduler_script(
        spec.backup, backup.runtime(spec), metrics_sql_path=backup.METRICS_SQL, textfile_dir=backup.TEXTFILE_MOUNT)


def test_the_store_image_is_the_pinned_official_image_plus_pinned_pgbackrest() -> None:
    rec = recording("prod")
    spec, image = rec.env.postgres, _image(recording("prod"))
    build = image["build"]
    assert isinstance(build, dict)
    assert build["buildArgs"] == {"BASE": spec.image.reference, "PGBACKREST_VERSION": spec.backup.pgbackrest_version}
    assert backup.PROJECT_ROOT / str(build["context"]) == backup.CONTEXT and (backup.CONTEXT / "Dockerfile").exists()
    assert image_problem(str(image["name"])) is None
    # Every container running the store image is the store or its scheduler, both uid 70.
    assert container(rec, "postgres").inputs["user"] == container(rec, "postgres-backup").inputs["user"] == "70:70"


def test_the_scheduler_shares_only_what_pgbackrest_needs_and_writes_the_textfile() -> None:
    rec = recording("prod")
    store, scheduler = container(rec, "postgres"), container(rec, "postgres-backup")
    by_path = {v["containerPath"]: v for v in plain(scheduler.inputs["volumes"])}
    assert by_path["/var/lib/postgresql/data"]["readOnly"] is True
    assert by_path["/run/secrets"]["readOnly"] is True
    assert by_path["/run/pgbackrest-credentials"]["hostPath"] == backup.CREDENTIALS_HOST_DIR
    assert by_path["/run/pgbackrest-credentials"]["readOnly"] is True
    assert by_path[backup.TEXTFILE_MOUNT]["hostPath"] == TEXTFILE_HOST_DIR
    store_paths = {v["containerPath"]: v for v in plain(store.inputs["volumes"])}
    assert store_paths[backup.SOCKET_DIR]["volumeName"] == by_path[backup.SOCKET_DIR]["volumeName"]
    assert backup.SOCKET_DIR not in (store.inputs.get("tmpfs") or {})
    assert scheduler.inputs["readOnly"] is True and scheduler.inputs["capabilities"]["drops"] == ["ALL"]
    labels = {item["label"]: item["value"] for item in plain(scheduler.inputs["labels"])}
    assert labels["com.mysaaschat.backup-of"] == "postgres"
    assert labels["com.mysaaschat.backup-schedule"] == pbr.schedule_text(rec.env.postgres.backup)
    assert "PGPASSFILE=/run/secrets/pgpass" in plain(scheduler.inputs["envs"])


def test_local_has_no_repository_and_keeps_the_official_image() -> None:
    rec = recording("local")
    assert rec.env.host.backup_bucket is None
    assert str(_image(rec)["name"]) == rec.env.postgres.image.reference
    assert not [r for r in rec.resources.values() if r.type.endswith(":PostgresBackup")]
    assert "archive_mode=on" not in plain(container(rec, "postgres").inputs["command"])


@pytest.mark.parametrize(("change", "message"), [
    ({"archive_timeout_seconds": 61}, "less than or equal to 60"),
    ({"full": {"days": ["mon"], "at": "01:00"}, "diff": {"days": ["mon"], "at": "01:00"}}, "pick one"),
    ({"full": {"days": ["sun"], "at": "25:00"}}, "String should match pattern"),
    ({"full": {"days": ["sun", "sun"], "at": "01:00"}}, "listed twice"),
])
def test_the_model_refuses_backup_settings_that_break_a_promise(change: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        PostgresBackup.model_validate(change)


def test_user_data_with_backup_credentials_passes_cloud_init_schema(tmp_path: Path) -> None:
    tool = require_tool("cloud-init")
    text = render_user_data(data_volume_id="vol-0123456789abcdef0", host_private_key="k", host_public_key="p",
                            admin_user="admin", admin_public_key="ssh-ed25519 AAAA", backup_credentials=True)
    path = tmp_path / "user-data"
    path.write_text(text)
    result = subprocess.run([tool, "schema", "--config-file", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    document = yaml.safe_load(text)
    refresher = next(f for f in document["write_files"] if f["path"] == "/usr/local/sbin/mysaaschat-backup-credentials")
    compiled = subprocess.run(["python3", "-c", "import sys; compile(sys.stdin.read(), 'refresher', 'exec')"],
                              input=refresher["content"], capture_output=True, text=True)
    assert compiled.returncode == 0, compiled.stderr
    assert ["systemctl", "enable", "--now", "mysaaschat-backup-credentials.timer"] in document["runcmd"]
