"""A private Docker engine for the engine tests: started here, stopped by its PID, machine left as found.

`dockerd` is Debian's docker.io 20.10.24, the version cloud-init installs on the host
(render/cloud_init.py). It gets its own data root (kept between runs: it is the image cache),
exec root, pid file and unix socket; never the machine's /var/run/docker.sock. Its addresses come
from a pool of its own, docker0's included (pulumi-docker creates every container on the default
bridge, then moves it to its networks, so the engine needs one, as the host's has). What dockerd
changes on the machine (../shared/real-tools.md: `ip_forward=1`, FORWARD policy DROP, its
iptables tables, docker0, /etc/docker/key.json) is read before start and put back after stop, and
the run fails if the machine then differs from what it was.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import docker
import docker.errors

CACHE_DIR = Path(os.environ.get("MSC_ENGINE_CACHE", "/var/cache/mysaaschat-engine"))
# Nothing else on these machines uses 10.213/16: docker0 gets one /24 of it, each test network another.
ADDRESS_POOL = "10.213.0.0/17"
BRIDGE_IP = "10.213.200.1/24"
# dockerd's own metrics on its default bridge's address, as render/cloud_init.py configures the host
# (`bip` and `metrics-addr`), so the monitoring's route to them is tested on the engine.
METRICS_ADDR = f"{BRIDGE_IP.split('/')[0]}:9323"
TEST_LABEL = "com.mysaaschat.engine-test"
KEY_FILE = Path("/etc/docker/key.json")  # dockerd 20.10 writes its trust key here, whatever the roots


class EngineUnavailable(RuntimeError):
    """dockerd is missing or did not answer; CI turns this into a failure, never a skip."""


def _run(*argv: str) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True).stdout


@dataclass(frozen=True)
class MachineState:
    """What dockerd changes on the machine, read so it can be put back and compared."""

    iptables: str
    ip6tables: str
    ip_forward: str
    links: frozenset[str]
    key_file: bool

    @classmethod
    def read(cls) -> MachineState:
        def save(tool: str) -> str:
            if not shutil.which(tool):
                return ""
            # Counters and the timestamp comments change on their own; they are not state.
            lines = _run(tool).splitlines()
            return "\n".join(line.split(" [")[0] if line.startswith(":") else line
                             for line in lines if not line.startswith("#")) + "\n"

        links = frozenset(line.split(":")[1].strip().split("@")[0] for line in _run("ip", "-o", "link").splitlines())
        return cls(iptables=save("iptables-save"), ip6tables=save("ip6tables-save"),
                   ip_forward=Path("/proc/sys/net/ipv4/ip_forward").read_text().strip(), links=links,
                   key_file=KEY_FILE.exists())

    def restore(self) -> None:
        now = MachineState.read()
        for family, tool, before, after in (("ip", "iptables-restore", self.iptables, now.iptables),
                                            ("ip6", "ip6tables-restore", self.ip6tables, now.ip6tables)):
            # iptables-restore rewrites the tables its input names, and only those: a table that
            # did not exist before dockerd made it (iptables 1.8 on nf_tables: `table ip nat`) is deleted.
            for table in _tables(after) - _tables(before):
                subprocess.run(["nft", "delete", "table", family, table], check=True)
            if before.strip():
                subprocess.run([tool], input=before, text=True, check=True)
        Path("/proc/sys/net/ipv4/ip_forward").write_text(self.ip_forward + "\n")
        for link in MachineState.read().links - self.links:
            # Only bridges/veths dockerd made for this run's networks can be new here.
            if link.startswith(("br-", "veth", "docker")):
                subprocess.run(["ip", "link", "delete", link], check=False, capture_output=True)
        if not self.key_file:
            KEY_FILE.unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                KEY_FILE.parent.rmdir()


def _tables(save: str) -> set[str]:
    return {line[1:].strip() for line in save.splitlines() if line.startswith("*")}


@dataclass
class Engine:
    client: docker.DockerClient
    socket: str
    pid: int | None  # None when the tests use an engine someone else runs (MSC_ENGINE_HOST)


def _wait_for(client: docker.DockerClient, proc: subprocess.Popen[bytes], log: Path, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise EngineUnavailable(f"dockerd exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        with contextlib.suppress(Exception):
            if client.ping():
                return
        time.sleep(0.2)
    raise EngineUnavailable(f"dockerd did not answer within {seconds:.0f} s:\n{log.read_text()[-3000:]}")


@contextlib.contextmanager
def private_engine() -> Iterator[Engine]:
    """Start dockerd (or use MSC_ENGINE_HOST), yield a client, then stop it by PID and restore the machine."""
    external = os.environ.get("MSC_ENGINE_HOST")
    if external:
        client = docker.DockerClient(base_url=external, timeout=300)
        yield Engine(client, external, None)
        client.close()
        return
    dockerd = shutil.which("dockerd")
    if dockerd is None:
        raise EngineUnavailable("dockerd is not installed (apt-get install docker.io; .ci/run does)")
    data_root = CACHE_DIR / "dockerd-data"
    data_root.mkdir(parents=True, exist_ok=True)
    # One engine per data root, and one firewall to put back: runs from other checkouts wait here.
    with (CACHE_DIR / "engine.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield from _run_engine(dockerd, data_root)


def _run_engine(dockerd: str, data_root: Path) -> Iterator[Engine]:
    before = MachineState.read()
    # A short path: a unix socket path must fit in 108 bytes.
    run_dir = Path(tempfile.mkdtemp(prefix="msc-engine-", dir="/tmp"))
    socket = f"unix://{run_dir}/docker.sock"
    log = run_dir / "dockerd.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [dockerd, "--data-root", str(data_root), "--exec-root", str(run_dir / "exec"),
             "--pidfile", str(run_dir / "docker.pid"), "-H", socket, f"--bip={BRIDGE_IP}",
             "--default-address-pool", f"base={ADDRESS_POOL},size=24", "--log-level=warn",
             f"--metrics-addr={METRICS_ADDR}",
             # Names the embedded DNS does not know are forwarded to this server: nothing listens
             # there, so no test's lookup ever leaves the machine.
             "--dns=127.0.0.1"],
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        # API 1.41 is Docker 20.10's; fixing it keeps the client from asking the daemon before it listens.
        client = docker.DockerClient(base_url=socket, version="1.41", timeout=300)
        try:
            _wait_for(client, proc, log, 60)
            clean(client)  # a crashed earlier run may have left containers and networks in the data root
            yield Engine(client, socket, proc.pid)
        finally:
            try:
                clean(client)
            finally:
                client.close()
    finally:
        _stop(proc)
        before.restore()
        shutil.rmtree(run_dir, ignore_errors=True)
    after = MachineState.read()
    if after != before:
        changed = [f for f in ("iptables", "ip6tables", "ip_forward", "links", "key_file")
                   if getattr(after, f) != getattr(before, f)]
        raise AssertionError(f"the machine was not left as found after dockerd stopped: {', '.join(changed)} differ")


def clean(client: docker.DockerClient) -> None:
    """Remove what replays and tests made (containers, networks, volumes); images stay: they are the cache.

    Only resources named `mysaaschat-*` or labelled by the program or the tests, so a shared
    development engine (MSC_ENGINE_HOST) keeps everything else.
    """
    def ours(name: str, labels: dict[str, str] | None) -> bool:
        labels = labels or {}
        return name.lstrip("/").startswith("mysaaschat-") or "com.mysaaschat.stack" in labels or TEST_LABEL in labels

    for container in client.containers.list(all=True):
        if ours(container.name or "", container.labels):
            container.remove(force=True, v=True)
    for network in client.networks.list():
        if ours(network.name or "", network.attrs.get("Labels")):
            # An endpoint can outlive its container when removals race: force it off first.
            # A stale endpoint is found by its container's name, not its gone id (moby#17217).
            for endpoint in (client.api.inspect_network(network.id).get("Containers") or {}).values():
                with contextlib.suppress(docker.errors.NotFound):
                    client.api.disconnect_container_from_network(endpoint["Name"], network.id, force=True)
            network.remove()
    for volume in client.volumes.list():
        if ours(volume.name or "", volume.attrs.get("Labels")):
            volume.remove(force=True)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)
