"""Prometheus, Alertmanager, Grafana and the exporters: the environment watching itself.

Nothing of it publishes a host port. Grafana is served by the gateway under /grafana/ (behind its own
login); Prometheus (9090) and Alertmanager (9093) are reached through an SSH tunnel to the host,
e.g. `ssh -L 9090:<prometheus container address>:9090 admin@host` (README, "Monitoring").

Every file is rendered by render/monitoring.py and written into a config volume by a never-started
seed (`volume_seed`, as the gateway and the stores do), mounted read-only. A digest of the files is a
label of the container that reads them, so a changed rule, receiver or dashboard replaces it:
Grafana and the exporters start-first; Prometheus and Alertmanager, which keep data in a volume,
stop-first (a gap of seconds in scraping, never two writers on one TSDB).

Networks: `monitoring` (internal) joins every part; Prometheus also joins `apps` (services; the
gateway's exporter is on `monitoring`) and `data` (RabbitMQ's built-in endpoint). dockerd's metrics
listen on the default bridge's address, and a container on an internal network still reaches the
host's own addresses (Docker's isolation rules filter forwarded traffic only): Prometheus reaches them
as `host.docker.internal` (`host-gateway`), shown on the engine by tests/engine/test_monitoring_engine.py.
Alertmanager joins `egress` (its receivers are on the internet); the Postgres and Redis exporters join
`data`; the nginx exporter, the blackbox exporter and Grafana join `apps` (the gateway: the blackbox
exporter probes its HTTPS listener, 8443 inside, where the gateway's alias `gateway` answers).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass

import pulumi
import pulumi_docker as docker

from components.container import ContainerSpec, Mount, Upload, hardened_container, volume_seed
from components.host import Host
from components.network import Networks
from components.secrets import SecretStore
from config import Environment
from config.host_access import HOST_ACCESS
from config.model import MonitoringContainer, SecretRef
from render import monitoring as r

NOBODY = "65534:65534"
USERS = {"prometheus": NOBODY, "alertmanager": NOBODY, "grafana": "472:472", "node-exporter": NOBODY,
         "cadvisor": NOBODY, "postgres-exporter": NOBODY, "redis-exporter": "59000:59000", "nginx-exporter": NOBODY,
         "blackbox-exporter": NOBODY}
HEALTH: dict[str, str | int] = {"interval": "15s", "timeout": "5s", "retries": 3, "start_period": "30s"}


def wget(port: int, path: str) -> list[str]:
    # The busybox- and alpine-based images have wget and no curl.
    return ["CMD", "wget", "-q", "-O", "/dev/null", f"http://127.0.0.1:{port}{path}"]


@dataclass
class MonitoringArgs:
    env: Environment
    host: Host
    networks: Networks
    secrets: SecretStore
    passwords: Mapping[str, pulumi.Output[str]]  # the stores' passwords: postgres, redis
    # The gateway's certificate PEM, the probe's trust anchor under tls.mode selfsigned
    # (render/monitoring.py blackbox_verification); unused otherwise.
    gateway_certificate: pulumi.Input[str] | None = None


def _digest(files: Mapping[str, str]) -> str:
    return hashlib.sha256(json.dumps(dict(files), sort_keys=True).encode()).hexdigest()


class Monitoring(pulumi.ComponentResource):
    containers: dict[str, docker.Container]

    def __init__(self, name: str, args: MonitoringArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("my-saas-chat:monitoring:Monitoring", name, None, opts)
        env, mon = args.env, args.env.monitoring
        self._env, self._args = env, args
        self._docker_opts = args.host.docker_opts(self)
        stack = env.stack
        self.network = self._network("monitoring", internal=True)
        nets = args.networks
        urls = {rc.name: args.secrets.value(rc.url) for rc in mon.receivers if rc.url}
        alertmanager_yml: pulumi.Output[str] = pulumi.Output.secret(  # type: ignore[arg-type]
            pulumi.Output.all(**urls).apply(lambda u: r.render_alertmanager(env, dict(u))))
        files = r.monitoring_files(env, {rc.name: "" for rc in mon.receivers})
        self.containers = {}

        # Prometheus: the TSDB in a protected volume; what it scrapes declared for the policy pack.
        scrapes = sorted({n for n, s in env.services.items() if s.metrics} | {"postgres", "redis", "rabbitmq", "gateway"})
        self.containers["prometheus"] = self._container(
            "prometheus", mon.prometheus, r.PROMETHEUS_DIR, files["prometheus"],
            healthcheck=wget(r.PROMETHEUS_PORT, "/-/ready"), command=r.prometheus_command(env),
            networks=[self.network.name, nets.apps.name, nets.data.name],
            data_path="/prometheus", extra_hosts={r.DOCKER_HOST_ALIAS: "host-gateway"},
            labels={"com.mysaaschat.scrapes": ",".join(scrapes)})
        self.containers["alertmanager"] = self._container(
            "alertmanager", mon.alertmanager, r.ALERTMANAGER_DIR, {"alertmanager.yml": alertmanager_yml},
            healthcheck=wget(r.ALERTMANAGER_PORT, "/-/ready"), command=r.alertmanager_command(),
            networks=[self.network.name, nets.egress.name], data_path="/alertmanager")
        # Managed by the program (config.model MANAGED_SECRETS: generated, kept in Secrets Manager, rotated
        # with `python -m ops secrets rotate grafana`).
        password = args.secrets.value(SecretRef(secret="grafana", key="admin_password"))
        self.containers["grafana"] = self._container(
            "grafana", mon.grafana, r.GRAFANA_DIR, {**files["grafana"], "admin_password": password},
            healthcheck=wget(r.GRAFANA_PORT, f"{r.GRAFANA_SUB_PATH}/api/health"),
            networks=[self.network.name, nets.apps.name], envs=r.grafana_env(env),
            # Sessions and the admin user live in Grafana's SQLite file: rebuilt from the provisioning and
            # the password file at every start, so nothing worth a volume.
            tmpfs=("/tmp", "/var/lib/grafana"))
        self.containers["node-exporter"] = self._container(
            "node-exporter", mon.node_exporter, None, {}, healthcheck=wget(r.NODE_EXPORTER_PORT, "/"),
            command=r.node_exporter_command(), networks=[self.network.name])
        self.containers["cadvisor"] = self._container(
            "cadvisor", mon.cadvisor, None, {}, healthcheck=wget(r.CADVISOR_PORT, "/healthz"),
            command=r.cadvisor_command(), networks=[self.network.name])
        pg_password = args.passwords["postgres"]
        self.containers["postgres-exporter"] = self._container(
            "postgres-exporter", mon.postgres_exporter, r.EXPORTER_DIR, {"postgres-password": pg_password},
            healthcheck=wget(r.POSTGRES_EXPORTER_PORT, "/"), envs=r.postgres_exporter_env(env),
            networks=[self.network.name, nets.data.name])
        redis_file: pulumi.Output[str] = pulumi.Output.secret(  # type: ignore[arg-type]
            args.passwords["redis"].apply(r.redis_password_file))
        self.containers["redis-exporter"] = self._container(
            "redis-exporter", mon.redis_exporter, r.EXPORTER_DIR, {"redis-passwords.json": redis_file},
            healthcheck=wget(r.REDIS_EXPORTER_PORT, "/health"), command=r.redis_exporter_command(),
            networks=[self.network.name, nets.data.name])
        # The image has no shell and no HTTP client: the check proves the binary starts; that it serves
        # is Prometheus' `up` for the gateway job (TargetDown).
        self.containers["nginx-exporter"] = self._container(
            "nginx-exporter", mon.nginx_exporter, None, {},
            healthcheck=["CMD", "/usr/bin/nginx-prometheus-exporter", "--version"],
            command=r.nginx_exporter_command("gateway"), networks=[self.network.name, nets.apps.name])
        blackbox_files: dict[str, pulumi.Input[str]] = dict(files["blackbox-exporter"])
        if env.tls.mode == "selfsigned":
            if args.gateway_certificate is None:
                raise ValueError("tls.mode selfsigned: the blackbox probe needs the gateway's certificate")
            blackbox_files[r.BLACKBOX_CA_FILE] = args.gateway_certificate
        # The gateway's certificate as served (probe_ssl_earliest_cert_expiry): the CertificateExpiring
        # and GatewayProbeFailed alerts read it. No capability: HTTP probes only (ICMP would need NET_RAW).
        self.containers["blackbox-exporter"] = self._container(
            "blackbox-exporter", mon.blackbox_exporter, r.BLACKBOX_DIR, blackbox_files,
            healthcheck=wget(r.BLACKBOX_PORT, "/-/healthy"), command=r.blackbox_command(),
            networks=[self.network.name, nets.apps.name])
        self.register_outputs({"containers": {k: c.name for k, c in self.containers.items()},
                               "monitoring_network": self.network.name, "stack": stack})

    def _network(self, role: str, internal: bool) -> docker.Network:
        stack = self._env.stack
        return docker.Network(
            f"net-{role}", name=f"mysaaschat-{stack}-{role}", driver="bridge", internal=internal,
            labels=[docker.NetworkLabelArgs(label="com.mysaaschat.stack", value=stack)],
            opts=pulumi.ResourceOptions.merge(self._docker_opts, pulumi.ResourceOptions(delete_before_replace=True)))

    def _container(self, service: str, spec: MonitoringContainer, conf_dir: str | None,
                   files: Mapping[str, pulumi.Input[str]], *, healthcheck: list[str],
                   networks: list[pulumi.Input[str]], command: list[str] | None = None,
                   envs: Mapping[str, str] | None = None, data_path: str | None = None,
                   tmpfs: tuple[str, ...] = ("/tmp",), extra_hosts: Mapping[str, str] | None = None,
                   labels: Mapping[str, pulumi.Input[str]] | None = None) -> docker.Container:
        stack, user, docker_opts = self._env.stack, USERS[service], self._docker_opts
        image = docker.RemoteImage(f"{service}-image", name=spec.image.reference, keep_locally=True, opts=docker_opts)
        mounts: list[Mount] = []
        depends: list[pulumi.Resource] = []
        all_labels: dict[str, pulumi.Input[str]] = dict(labels or {})
        if files:
            assert conf_dir
            volume = docker.Volume(f"{service}-config", name=f"mysaaschat-{stack}-{service}-config",
                                   labels=[docker.VolumeLabelArgs(label="com.mysaaschat.stack", value=stack)],
                                   opts=pulumi.ResourceOptions.merge(docker_opts,
                                                                     pulumi.ResourceOptions(delete_before_replace=True)))
            depends.append(volume_seed(
                f"{service}-files", image=image, volume=volume.name, mount=conf_dir, stack=stack, opts=docker_opts,
                uploads=[Upload(path=f"{conf_dir}/{path}", owner=user, content=content, permissions="0400")
                         for path, content in sorted(files.items())]))
            mounts.append(Mount(volume.name, conf_dir, read_only=True))
            # A changed file replaces the container that reads it (none of them rereads on its own here).
            all_labels["com.mysaaschat.files-sha256"] = pulumi.Output.all(**dict(files)).apply(_digest)
        if data_path:
            data = docker.Volume(
                f"{service}-data", name=f"mysaaschat-{stack}-{service}-data",
                labels=[docker.VolumeLabelArgs(label="com.mysaaschat.stack", value=stack)],
                opts=pulumi.ResourceOptions.merge(docker_opts, pulumi.ResourceOptions(
                    protect=True, retain_on_delete=True, delete_before_replace=True)))
            mounts.append(Mount(data.name, data_path))
        access = HOST_ACCESS.get(service)
        return hardened_container(
            service,
            ContainerSpec(
                service=service, image=image, user=user, cpus=spec.cpu, memory_bytes=spec.memory,
                healthcheck=healthcheck, health=HEALTH, networks=networks, command=command,
                envs=[f"{k}={v}" for k, v in sorted((envs or {}).items())], tmpfs=tmpfs, mounts=mounts,
                host_mounts=access.mounts if access else (), cap_add=access.capabilities if access else {},
                extra_hosts=extra_hosts or {}, labels=all_labels,
                # Stores of their own data: one writer at a time, stop-first, a fixed name and host name.
                lifecycle="stateful" if data_path else "stateless",
                fixed_name=f"mysaaschat-{stack}-{service}" if data_path else None,
                hostname=service if data_path else None,
                stop_grace_seconds=30, deploy_timeout_seconds=180,
            ),
            stack,
            pulumi.ResourceOptions.merge(docker_opts, pulumi.ResourceOptions(depends_on=depends)),
        )
