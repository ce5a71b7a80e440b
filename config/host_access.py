"""The one place that says which containers may see the host, how, and why.

node-exporter and cAdvisor measure the host and the other containers, which they can only do through
the host's /proc and /sys: read-only, no capability, as nobody (65534), so a host file that only root
may read stays unreadable to them. The backup work (components/pgbackrest.py) reads the S3 credentials
the host's refresher writes, and writes its metrics where node-exporter's textfile collector reads them.
`hardened_container` refuses a host path not declared here for that service, and the policy pack's
`container-host-mounts` rule (policy/rules.py) checks every recorded container against this table.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from render.contracts import TEXTFILE_HOST_DIR

# components/pgbackrest.py CREDENTIALS_HOST_DIR (tests/test_monitoring.py checks they agree).
PGBACKREST_CREDENTIALS_HOST_DIR = "/var/lib/mysaaschat/pgbackrest-credentials"


@dataclass(frozen=True)
class HostMount:
    host_path: str
    container_path: str
    reason: str
    read_only: bool = True


@dataclass(frozen=True)
class HostAccess:
    mounts: tuple[HostMount, ...]
    capabilities: dict[str, str] = field(default_factory=dict)  # capability -> reason; none needed today


HOST_ACCESS: dict[str, HostAccess] = {
    # prometheus/node_exporter README, "Docker": the host's /proc, /sys and / under --path.procfs,
    # --path.sysfs and --path.rootfs. Without the host's network and PID namespaces (refused by the
    # policy) its network counters are those of its own namespace; CPU, memory, load, disks and
    # filesystems are the host's.
    "node-exporter": HostAccess(mounts=(
        HostMount("/proc", "/host/proc", "the host's CPU, memory, load and disk I/O counters (--path.procfs)"),
        HostMount("/sys", "/host/sys", "block devices, hardware and thermal attributes of the host (--path.sysfs)"),
        HostMount("/", "/host/root", "free space of the host's filesystems, the data volume included: "
                  "statfs on their mount points (--path.rootfs)"),
        HostMount(TEXTFILE_HOST_DIR, "/textfile", "the backup jobs' metrics, written as *.prom files "
                  "(render/contracts.py; --collector.textfile.directory)"),
    )),
    # google/cadvisor docs/running.md mounts /, /var/run, /sys, /var/lib/docker and /dev/disk, privileged.
    # Here only /sys: the cgroup v2 hierarchy (/sys/fs/cgroup) holds every container's CPU and memory
    # accounting, which is all the dashboards and alerts read. No Docker socket (reading the engine's
    # API is root on the host), so containers are named by their cgroup id, not their Docker name.
    "cadvisor": HostAccess(mounts=(
        HostMount("/sys", "/sys", "every container's CPU and memory accounting in the cgroup v2 hierarchy"),
    )),
    # The instance role's short-lived S3 credentials, refreshed on the host (render/pgbackrest.py
    # CREDENTIALS_REFRESHER): pgBackRest in the store pushes WAL with them (archive_command).
    "postgres": HostAccess(mounts=(
        HostMount(PGBACKREST_CREDENTIALS_HOST_DIR, "/run/pgbackrest-credentials",
                  "S3 credentials for archive_command, refreshed on the host from the instance role"),
    )),
    # The backup scheduler: the same credentials, and its metrics for node-exporter's textfile collector
    # (render/contracts.py), the one writable host path.
    "postgres-backup": HostAccess(mounts=(
        HostMount(PGBACKREST_CREDENTIALS_HOST_DIR, "/run/pgbackrest-credentials",
                  "S3 credentials for the scheduled backups, refreshed on the host from the instance role"),
        HostMount(TEXTFILE_HOST_DIR, "/textfile", "writes pgbackrest.prom (backup age, archive lag) for "
                  "node-exporter's textfile collector", read_only=False),
    )),
}
