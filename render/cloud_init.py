"""cloud-init user data for the Docker host: engine, data volume, host key, unattended upgrades."""

from __future__ import annotations

import json

import yaml

DATA_LABEL = "docker-data"
DATA_MOUNT = "/var/lib/docker"

DAEMON_JSON = {
    # Containers keep running while dockerd restarts (security upgrades restart it).
    "live-restore": True,
    "log-driver": "json-file",
    "log-opts": {"max-size": "10m", "max-file": "5"},
    "no-new-privileges": True,
    "userland-proxy": False,
}

# Runs before packages are installed, so Docker's first start already writes to the data volume.
# The attachment is made after the instance exists, hence the wait. mkfs only on a blank device:
# an existing filesystem (the database!) is never formatted.
_MOUNT_SCRIPT = """\
set -eu
dev=/dev/disk/by-id/nvme-Amazon_Elastic_Block_Store_{volume}
i=0; until [ -e "$dev" ]; do i=$((i+1)); [ "$i" -lt 300 ] || exit 1; sleep 2; done
[ -n "$(blkid -o value -s TYPE "$dev" || true)" ] || mkfs.ext4 -q -L {label} "$dev"
mkdir -p {mount}
line='LABEL={label} {mount} ext4 defaults,nofail,x-systemd.device-timeout=10min 0 2'
grep -q 'LABEL={label}' /etc/fstab || echo "$line" >> /etc/fstab
mountpoint -q {mount} || mount {mount}
"""


class _Dumper(yaml.SafeDumper):
    """Multi-line strings as literal blocks, so the scripts in user data read as scripts."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def render_user_data(*, data_volume_id: str, host_private_key: str, host_public_key: str, admin_user: str,
                     admin_public_key: str) -> str:
    volume = data_volume_id.replace("-", "")
    document = {
        "package_update": True,
        "package_upgrade": True,
        "packages": ["docker.io", "unattended-upgrades", "apt-listchanges"],
        # A host key made by Pulumi and pinned by the operator's ssh (StrictHostKeyChecking=yes):
        # the first connection is verified too, and a replaced instance keeps the same identity.
        "ssh_deletekeys": True,
        # Only ed25519, which the key above provides, so nothing is generated on boot.
        "ssh_genkeytypes": ["ed25519"],
        "ssh_keys": {"ed25519_private": host_private_key, "ed25519_public": host_public_key},
        "ssh_pwauth": False,
        "disable_root": True,
        "users": [
            {
                "name": admin_user,
                "shell": "/bin/bash",
                "sudo": "ALL=(ALL) NOPASSWD:ALL",
                "ssh_authorized_keys": [admin_public_key],
            }
        ],
        "bootcmd": [["sh", "-c", _MOUNT_SCRIPT.format(volume=volume, label=DATA_LABEL, mount=DATA_MOUNT)]],
        "write_files": [
            {"path": "/etc/docker/daemon.json", "permissions": "0644", "content": json.dumps(DAEMON_JSON, indent=2) + "\n"},
            {
                "path": "/etc/systemd/system/docker.service.d/10-data-volume.conf",
                "permissions": "0644",
                "content": f"[Unit]\nRequiresMountsFor={DATA_MOUNT}\n",
            },
            {
                "path": "/etc/apt/apt.conf.d/20auto-upgrades",
                "permissions": "0644",
                "content": 'APT::Periodic::Update-Package-Lists "1";\nAPT::Periodic::Unattended-Upgrade "1";\n',
            },
        ],
        "runcmd": [
            ["systemctl", "daemon-reload"],
            ["systemctl", "enable", "--now", "docker"],
            # Only now does the docker group exist (the package creates it; creating it earlier
            # would make the package's postinst fail). The engine-ready wait connects afterwards.
            ["usermod", "-aG", "docker", admin_user],
            ["systemctl", "enable", "--now", "unattended-upgrades"],
        ],
    }
    return "#cloud-config\n" + yaml.dump(document, Dumper=_Dumper, sort_keys=False, width=1000)
