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
    # The default bridge's address, pinned (Docker's default, 172.17.0.1/16) because the engine's metrics
    # listen on it: dockerd binds `metrics-addr` after creating its networks and exits if the bind fails
    # (moby v20.10.24 cmd/dockerd/daemon.go start: `startMetricsServer(cli.Config.MetricsAddress)` after
    # `daemon.NewDaemon`; metrics.go: `net.Listen("tcp", addr)`, no experimental flag needed in 20.10).
    # Not on a public address: Prometheus reaches it as host.docker.internal (render/monitoring.py).
    "bip": "172.17.0.1/16",
    "metrics-addr": "172.17.0.1:9323",
}

# Formats the data volume only when `blkid -p` (a low-level probe of the device itself, no
# cache) says it holds no signature at all: exit 2 (util-linux blkid(8), "RETURN CODE": 2 = no
# token/signature found). Any other failure (4: usage or probe error, 8: ambivalent result) stops
# the boot instead: a transient probe error must never format a disk that holds the databases.
FORMAT_GUARD = """\
format_if_blank() {
  # blkid -p also exits 2 for a path that does not exist: only a present device may be formatted.
  [ -b "$1" ] || [ -f "$1" ] || { echo "$1 is missing: refusing to format" >&2; return 1; }
  rc=0; blkid -p "$1" >/dev/null 2>&1 || rc=$?
  case "$rc" in
    0) ;;
    2) mkfs.ext4 -q -L "$2" "$1" ;;
    *) echo "blkid -p $1 failed with $rc: refusing to format" >&2; return 1 ;;
  esac
}
"""

# Runs before packages are installed, so Docker's first start already writes to the data volume.
# The attachment is made after the instance exists, hence the wait. After a `data_volume` grow
# (EBS ModifyVolume), resize2fs grows the mounted filesystem online; on an unchanged size it is a no-op.
_MOUNT_SCRIPT = """\
set -eu
{guard}dev=/dev/disk/by-id/nvme-Amazon_Elastic_Block_Store_{volume}
i=0; until [ -e "$dev" ]; do i=$((i+1)); [ "$i" -lt 300 ] || exit 1; sleep 2; done
format_if_blank "$dev" {label}
mkdir -p {mount}
line='LABEL={label} {mount} ext4 defaults,nofail,x-systemd.device-timeout=10min 0 2'
grep -q 'LABEL={label}' /etc/fstab || echo "$line" >> /etc/fstab
mountpoint -q {mount} || mount {mount}
resize2fs "$dev" >/dev/null 2>&1 || echo "resize2fs $dev failed; the filesystem keeps its size" >&2
"""


class _Dumper(yaml.SafeDumper):
    """Multi-line strings as literal blocks, so the scripts in user data read as scripts."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def render_user_data(*, data_volume_id: str, host_private_key: str, host_public_key: str, admin_user: str,
                     admin_public_key: str, backup_credentials: bool = False) -> str:
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
        # The docker group exists before the package: cloud-init's users-groups module runs in the
        # init stage, packages in the final stage, and docker.io's postinst only creates the group
        # when it is missing (`getent group docker || addgroup --system docker`). So the admin is in
        # the group from the first SSH login: sshd fixes a session's groups at login, and the
        # engine-ready wait's session may open before any later `usermod` (which it would not see).
        "groups": ["docker"],
        "users": [
            {
                "name": admin_user,
                "shell": "/bin/bash",
                "groups": ["docker"],
                "sudo": "ALL=(ALL) NOPASSWD:ALL",
                "ssh_authorized_keys": [admin_public_key],
            }
        ],
        "bootcmd": [["sh", "-c", _MOUNT_SCRIPT.format(guard=FORMAT_GUARD, volume=volume, label=DATA_LABEL, mount=DATA_MOUNT)]],
        "write_files": [
            {"path": "/etc/docker/daemon.json", "permissions": "0644", "content": json.dumps(DAEMON_JSON, indent=2) + "\n"},
            {
                "path": "/etc/systemd/system/docker.service.d/10-data-volume.conf",
                "permissions": "0644",
                "content": f"[Unit]\nRequiresMountsFor={DATA_MOUNT}\n",
            },
            # Images of past releases stay on the host (RemoteImage keep_locally: the old container
            # still runs on its image during a start-first swap). Weekly, images no container uses,
            # created more than a week ago, are removed; running and created (seed) ones are in use.
            {
                "path": "/etc/systemd/system/docker-image-prune.service",
                "permissions": "0644",
                "content": "[Unit]\nDescription=Remove unused Docker images older than a week\nRequires=docker.service\n"
                           "After=docker.service\n\n[Service]\nType=oneshot\n"
                           "ExecStart=/usr/bin/docker image prune --all --force --filter until=168h\n",
            },
            {
                "path": "/etc/systemd/system/docker-image-prune.timer",
                "permissions": "0644",
                "content": "[Unit]\nDescription=Weekly removal of unused Docker images\n\n[Timer]\nOnCalendar=weekly\n"
                           "RandomizedDelaySec=1h\nPersistent=true\n\n[Install]\nWantedBy=timers.target\n",
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
            ["systemctl", "enable", "--now", "docker-image-prune.timer"],
            ["systemctl", "enable", "--now", "unattended-upgrades"],
        ],
    }
    if backup_credentials:  # pgBackRest in containers gets the role's credentials from the host
        from render import pgbackrest
        from render.contracts import TEXTFILE_HOST_DIR

        document["write_files"] += pgbackrest.host_files(  # type: ignore[operator]
            credentials_dir="/var/lib/mysaaschat/pgbackrest-credentials", textfile_dir=TEXTFILE_HOST_DIR)
        document["runcmd"] += pgbackrest.HOST_RUNCMD  # type: ignore[operator]
    return "#cloud-config\n" + yaml.dump(document, Dumper=_Dumper, sort_keys=False, width=1000)
