"""The rendered user data passes the real `cloud-init schema` check from Debian's cloud-init."""

from __future__ import annotations

import subprocess
from pathlib import Path

import yaml

from render.cloud_init import render_user_data
from tests.conftest import require_tool


def test_user_data_passes_cloud_init_schema(tmp_path: Path) -> None:
    tool = require_tool("cloud-init")
    text = render_user_data(data_volume_id="vol-0123456789abcdef0", admin_user="admin",
                            host_private_key="-----BEGIN OPENSSH PRIVATE KEY-----\nabc\n-----END OPENSSH PRIVATE KEY-----\n",
                            host_public_key="ssh-ed25519 AAAAC3Nza host", admin_public_key="ssh-ed25519 AAAAC3Nzb op")
    path = tmp_path / "user-data"
    path.write_text(text)
    result = subprocess.run([tool, "schema", "--config-file", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    # The check is real: a wrong type is rejected.
    broken = tmp_path / "broken"
    broken.write_text(text.replace("ssh_pwauth: false", "ssh_pwauth: [nope]"))
    assert subprocess.run([tool, "schema", "--config-file", str(broken)], capture_output=True).returncode != 0


def test_mount_runs_before_docker_is_installed() -> None:
    doc = yaml.safe_load(render_user_data(data_volume_id="vol-1", admin_user="a", host_private_key="k",
                                          host_public_key="p", admin_public_key="o"))
    script = doc["bootcmd"][0][2]
    assert "nvme-Amazon_Elastic_Block_Store_vol1" in script
    assert "mkfs.ext4" in script and 'blkid -o value -s TYPE' in script
    daemon = next(f for f in doc["write_files"] if f["path"] == "/etc/docker/daemon.json")
    assert '"live-restore": true' in daemon["content"]


def test_boot_script_is_valid_shell() -> None:
    doc = yaml.safe_load(render_user_data(data_volume_id="vol-1", admin_user="a", host_private_key="k",
                                          host_public_key="p", admin_public_key="o"))
    result = subprocess.run(["sh", "-n", "-c", doc["bootcmd"][0][2]], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_synthesized_user_data_passes_cloud_init_schema(tmp_path: Path) -> None:
    """The exact user data the program registers for prod and staging (mock key inside).

    Synth writes it as `[secret]` (it carries the host's private key), so it is taken from the
    recorded wire inputs, unwrapped, into a temporary file.
    """
    from ops.strict import is_secret
    from tests.conftest import recording

    tool = require_tool("cloud-init")
    for stack in ("prod", "staging"):
        instance = next(r for r in recording(stack).resources.values() if r.type == "aws:ec2/instance:Instance")
        user_data = instance.inputs["userData"]
        assert is_secret(user_data), stack
        path = tmp_path / f"{stack}-user-data"
        path.write_text(user_data["value"])
        result = subprocess.run([tool, "schema", "--config-file", str(path)], capture_output=True, text=True)
        assert result.returncode == 0, f"{stack}: {result.stdout}{result.stderr}"


def test_admin_joins_the_docker_group_after_the_package_creates_it() -> None:
    doc = yaml.safe_load(render_user_data(data_volume_id="vol-1", admin_user="ops", host_private_key="k",
                                          host_public_key="p", admin_public_key="o"))
    assert "groups" not in doc["users"][0] and "groups" not in doc
    assert ["usermod", "-aG", "docker", "ops"] in doc["runcmd"]
    assert "docker.io" in doc["packages"]  # packages run before runcmd
