"""The rendered user data passes the real `cloud-init schema` check from Debian's cloud-init."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from render.cloud_init import FORMAT_GUARD, render_user_data
from tests.conftest import require_root, require_tool


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
    assert "mkfs.ext4" in script and 'format_if_blank "$dev"' in script
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


def test_admin_is_in_the_docker_group_from_the_first_login() -> None:
    """sshd fixes a session's groups at login: a `usermod` after the engine-ready wait connected is
    invisible to it, and `docker info` would be denied until the wait gives up."""
    doc = yaml.safe_load(render_user_data(data_volume_id="vol-1", admin_user="ops", host_private_key="k",
                                          host_public_key="p", admin_public_key="o"))
    assert "docker" in doc["groups"]
    assert doc["users"][0]["name"] == "ops" and "docker" in doc["users"][0]["groups"]
    assert not any("usermod" in step for step in doc["runcmd"])


def _guard(tmp_path: Path, device: Path, blkid: str | None = None) -> subprocess.CompletedProcess[str]:
    require_tool("blkid")
    require_tool("mkfs.ext4")
    env = dict(os.environ)
    if blkid is not None:  # a stand-in blkid that fails the way the real one can (4: error, 8: ambivalent)
        shim = tmp_path / "bin"
        shim.mkdir(exist_ok=True)
        (shim / "blkid").write_text(f"#!/bin/sh\nexit {blkid}\n")
        (shim / "blkid").chmod(0o755)
        env["PATH"] = f"{shim}:{env['PATH']}"
    script = FORMAT_GUARD + f'format_if_blank "{device}" docker-data\n'
    return subprocess.run(["sh", "-eu", "-c", script], capture_output=True, text=True, env=env)


def _fs_type(device: Path) -> str:
    return subprocess.run(["blkid", "-p", "-o", "value", "-s", "TYPE", str(device)], capture_output=True,
                          text=True).stdout.strip()


def test_a_blank_device_is_formatted_once(tmp_path: Path) -> None:
    device = tmp_path / "disk.img"
    subprocess.run(["truncate", "-s", "16M", str(device)], check=True)
    assert _guard(tmp_path, device).returncode == 0
    assert _fs_type(device) == "ext4"
    (tmp_path / "marker").write_bytes(device.read_bytes()[:4096 * 4])
    assert _guard(tmp_path, device).returncode == 0  # a filesystem: left alone
    assert device.read_bytes()[:4096 * 4] == (tmp_path / "marker").read_bytes()


@pytest.mark.parametrize("code", ["4", "8"])
def test_a_failed_probe_never_formats(tmp_path: Path, code: str) -> None:
    device = tmp_path / "disk.img"
    subprocess.run(["truncate", "-s", "16M", str(device)], check=True)
    result = _guard(tmp_path, device, blkid=code)
    assert result.returncode != 0 and "refusing to format" in result.stderr
    assert _fs_type(device) == ""


def test_a_missing_device_is_not_formatted(tmp_path: Path) -> None:
    result = _guard(tmp_path, tmp_path / "absent")
    assert result.returncode != 0 and "missing" in result.stderr


def test_the_boot_script_grows_the_filesystem_after_mounting() -> None:
    doc = yaml.safe_load(render_user_data(data_volume_id="vol-1", admin_user="a", host_private_key="k",
                                          host_public_key="p", admin_public_key="o"))
    lines = doc["bootcmd"][0][2].splitlines()
    mount = next(i for i, line in enumerate(lines) if "|| mount " in line)
    assert any(line.startswith('resize2fs "$dev"') for line in lines[mount + 1:])


def test_unused_images_are_pruned_weekly(tmp_path: Path) -> None:
    doc = yaml.safe_load(render_user_data(data_volume_id="vol-1", admin_user="a", host_private_key="k",
                                          host_public_key="p", admin_public_key="o"))
    units = {Path(f["path"]).name: f["content"] for f in doc["write_files"] if f["path"].startswith("/etc/systemd/system/")}
    service, timer = units["docker-image-prune.service"], units["docker-image-prune.timer"]
    assert "docker image prune --all --force --filter until=168h" in service  # never an image in use
    assert "OnCalendar=weekly" in timer
    assert ["systemctl", "enable", "--now", "docker-image-prune.timer"] in doc["runcmd"]
    analyze = require_tool("systemd-analyze")  # the real parser of unit files
    for name, text in units.items():
        (tmp_path / name).write_text(text)
    paths = [str(tmp_path / n) for n in ("docker-image-prune.service", "docker-image-prune.timer")]
    result = subprocess.run([analyze, "verify", *paths], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    (tmp_path / "broken.timer").write_text(timer.replace("weekly", "weeklyy"))
    assert subprocess.run([analyze, "verify", str(tmp_path / "broken.timer")], capture_output=True).returncode != 0


@pytest.fixture
def loop_device(tmp_path: Path) -> Iterator[Path]:
    """A real block device (a loop device over a blank image), detached whatever the outcome."""
    require_tool("losetup")
    require_root("a loop device needs root, as CI has")
    image = tmp_path / "disk.img"
    subprocess.run(["truncate", "-s", "32M", str(image)], check=True)
    device = Path(subprocess.run(["losetup", "--find", "--show", str(image)], check=True, capture_output=True,
                                 text=True).stdout.strip())
    try:
        yield device
    finally:
        subprocess.run(["losetup", "-d", str(device)], capture_output=True)


def _uuid(device: Path) -> str:
    return subprocess.run(["blkid", "-p", "-o", "value", "-s", "UUID", str(device)], capture_output=True,
                          text=True).stdout.strip()


def test_a_blank_block_device_is_formatted_and_a_formatted_one_left_alone(tmp_path: Path, loop_device: Path) -> None:
    """The EBS volume is a block device: blank, it is formatted once; holding a filesystem, never again."""
    assert _guard(tmp_path, loop_device).returncode == 0
    assert _fs_type(loop_device) == "ext4"
    first = _uuid(loop_device)
    assert first
    result = _guard(tmp_path, loop_device)
    assert result.returncode == 0, result.stderr
    assert _uuid(loop_device) == first  # the same filesystem, not a new one


def test_a_block_device_with_another_signature_is_left_alone(tmp_path: Path, loop_device: Path) -> None:
    subprocess.run(["mkswap", str(loop_device)], check=True, capture_output=True)
    assert _guard(tmp_path, loop_device).returncode == 0
    assert _fs_type(loop_device) == "swap"
