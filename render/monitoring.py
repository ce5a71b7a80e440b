"""Monitoring files, each a pure function of the model: prometheus.yml, the alert rules and their
promtool unit tests, alertmanager.yml, and Grafana's provisioning with dashboards built as code.

Everything is built as data (dicts printed by PyYAML, dashboards by grafana-foundation-sdk's
builders) so the tests parse it back, and every file is judged by its real tool (promtool, amtool).

Where Prometheus finds what it scrapes, and why:

- Product services: `dns_sd_configs` of type A on each service's network alias. Docker's embedded
  DNS answers an alias with every container that holds it (moby#27279), so during a start-first swap
  both the old and the new container are scraped, each as its own target, and a new container is found
  within `refresh_interval` without touching Prometheus. prometheus/prometheus discovery/dns/dns.go
  (`refresh`: one target per answer record, `__address__` = record address + configured `port`,
  `__meta_dns_name` = the queried name). Unlike `docker_sd_configs` it needs no Docker socket in
  Prometheus (reading the engine's API is root on the host).
- Exporters, RabbitMQ, Alertmanager: `static_configs` on their network aliases: one container each.
- The gateway: nginx has no Prometheus endpoint; nginx-prometheus-exporter reads `stub_status`, which
  render/nginx.py serves on a port that is never published (connections and requests in total). The
  per-service rate, errors and latency come from the services' own histograms, which know the route.
- Docker's engine: dockerd's own `metrics-addr` (render/cloud_init.py daemon.json), on the default
  bridge's address, reached from Prometheus as `host.docker.internal` (Docker's `host-gateway`).
- The gateway's certificate: the blackbox exporter probes `https://gateway:8443/healthz` with the
  stack's domain as TLS server name, so what is measured is the certificate nginx actually serves
  (`probe_ssl_earliest_cert_expiry`), whoever installed it; `probe_success` says whether the probe
  (TLS verification included) worked at all.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

import yaml
from grafana_foundation_sdk.builders import dashboard as dash
from grafana_foundation_sdk.builders import prometheus as promq
from grafana_foundation_sdk.builders import stat, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.dashboard import DataSourceRef

from config import Environment
from config.checks import prometheus_duration_ms
from render.contracts import (
    BACKUP_LAST_SUCCESS,
    SERVICE_REQUEST_DURATION,
    SERVICE_STATUS_LABEL,
)

# Ports inside the containers (nothing is published on the host).
PROMETHEUS_PORT = 9090
ALERTMANAGER_PORT = 9093
GRAFANA_PORT = 3000
NODE_EXPORTER_PORT = 9100
CADVISOR_PORT = 8080
POSTGRES_EXPORTER_PORT = 9187
REDIS_EXPORTER_PORT = 9121
NGINX_EXPORTER_PORT = 9113
BLACKBOX_PORT = 9115
# rabbitmq_prometheus' default listener; the official image enables the plugin
# (docker-library/rabbitmq 4.0/alpine/Dockerfile: `rabbitmq-plugins enable --offline rabbitmq_prometheus`).
RABBITMQ_PROMETHEUS_PORT = 15692
DOCKERD_METRICS_PORT = 9323
DOCKER_HOST_ALIAS = "host.docker.internal"
# nginx's stub_status, on a port of the gateway that is never published (render/nginx.py status_server).
GATEWAY_STATUS_PORT = 8081
GATEWAY_STATUS_PATH = "/stub_status"

# Where each container reads its files (a config volume, mounted read-only).
PROMETHEUS_DIR = "/etc/mysaaschat-prometheus"
ALERTMANAGER_DIR = "/etc/mysaaschat-alertmanager"
GRAFANA_DIR = "/etc/mysaaschat-grafana"
EXPORTER_DIR = "/etc/mysaaschat-exporter"
BLACKBOX_DIR = "/etc/mysaaschat-blackbox"
# The stack's own certificate, the trust anchor of a `selfsigned` stack's probe (see blackbox_modules).
BLACKBOX_CA_FILE = "gateway-ca.pem"
NODE_TEXTFILE_DIR = "/textfile"  # TEXTFILE_HOST_DIR, mounted read-only (config/host_access.py)

DATASOURCE_UID = "mysaaschat-prometheus"
GRAFANA_SUB_PATH = "/grafana"

# Job names, one per kind of target: alerts and dashboards select on them.
STATIC_JOBS: dict[str, tuple[str, int]] = {
    "prometheus": ("localhost", PROMETHEUS_PORT),
    "alertmanager": ("alertmanager", ALERTMANAGER_PORT),
    "node": ("node-exporter", NODE_EXPORTER_PORT),
    "cadvisor": ("cadvisor", CADVISOR_PORT),
    "postgres": ("postgres-exporter", POSTGRES_EXPORTER_PORT),
    "redis": ("redis-exporter", REDIS_EXPORTER_PORT),
    "rabbitmq": ("rabbitmq", RABBITMQ_PROMETHEUS_PORT),
    "gateway": ("nginx-exporter", NGINX_EXPORTER_PORT),
    "docker": (DOCKER_HOST_ALIAS, DOCKERD_METRICS_PORT),
    "blackbox": ("blackbox-exporter", BLACKBOX_PORT),
}
SERVICES_JOB = "services"
# The blackbox probe of the gateway's TLS endpoint: job and module names (alerts select on the job).
GATEWAY_TLS_JOB = "gateway-tls"
GATEWAY_TLS_MODULE = "gateway_tls"
# Containers of the stack as cAdvisor sees them without the Docker API: cgroup v2 with the systemd
# driver (Debian 12, docker.io 20.10) places each container in /system.slice/docker-<id>.scope.
CONTAINER_CGROUP = 'id=~"/system.slice/docker-.+\\\\.scope"'
# Filesystems worth predicting: real disks, not tmpfs or the containers' overlays.
REAL_FS = 'fstype!~"tmpfs|overlay|squashfs|nsfs|ramfs"'


def grafana_alias() -> str:
    return "grafana"


def _yaml(data: Any) -> str:
    return "# Rendered by render/monitoring.py from the model; do not edit.\n" + yaml.safe_dump(
        data, sort_keys=False, default_flow_style=False, width=120)


def _seconds(duration: str) -> int:
    return prometheus_duration_ms(duration) // 1000


# ---------------------------------------------------------------------------------------------
# prometheus.yml


def scrape_configs(env: Environment) -> list[dict[str, Any]]:
    jobs: list[dict[str, Any]] = []
    for job, (host, port) in STATIC_JOBS.items():
        jobs.append({"job_name": job, "static_configs": [{"targets": [f"{host}:{port}"]}]})
    services = {name: svc for name, svc in sorted(env.services.items()) if svc.metrics}
    if services:
        relabel: list[dict[str, Any]] = []
        for name, svc in services.items():
            assert svc.metrics
            exact = f"^{name}$".replace(".", "\\.")
            relabel += [
                {"source_labels": ["__meta_dns_name"], "regex": exact.strip("^$"), "target_label": "service",
                 "replacement": name},
                {"source_labels": ["__meta_dns_name"], "regex": exact.strip("^$"), "target_label": "__metrics_path__",
                 "replacement": svc.metrics.path},
            ]
        jobs.append({
            "job_name": SERVICES_JOB,
            "dns_sd_configs": [
                {"names": [name], "type": "A", "port": (svc.metrics.port if svc.metrics and svc.metrics.port else svc.port),
                 "refresh_interval": env.monitoring.scrape_interval}
                for name, svc in services.items()
            ],
            "relabel_configs": relabel,
        })
    return jobs


def gateway_probe_target() -> str:
    """The gateway's HTTPS listener as seen from the `apps` network: the port inside the container (the
    host publishes 443 -> 8443), the health path nginx answers itself (no upstream involved)."""
    from render.nginx import GATEWAY_HEALTH, Layout  # render.nginx imports this module

    return f"https://gateway:{Layout().https_port}{GATEWAY_HEALTH}"


def gateway_tls_job(env: Environment) -> dict[str, Any]:
    # The blackbox exporter's multi-target pattern: the target becomes the `target` parameter and the
    # instance label, the scrape goes to the exporter (prometheus/blackbox_exporter README, "Prometheus
    # Configuration"). The domain label names the certificate in the alert.
    return {
        "job_name": GATEWAY_TLS_JOB,
        "metrics_path": "/probe",
        "params": {"module": [GATEWAY_TLS_MODULE]},
        "static_configs": [{"targets": [gateway_probe_target()], "labels": {"domain": env.domain}}],
        "relabel_configs": [
            {"source_labels": ["__address__"], "target_label": "__param_target"},
            {"source_labels": ["__param_target"], "target_label": "instance"},
            {"target_label": "__address__", "replacement": f"{STATIC_JOBS['blackbox'][0]}:{BLACKBOX_PORT}"},
        ],
    }


def render_prometheus(env: Environment) -> str:
    mon = env.monitoring
    return _yaml({
        "global": {
            "scrape_interval": mon.scrape_interval,
            "evaluation_interval": mon.evaluation_interval,
            "external_labels": {"stack": env.stack},
        },
        "rule_files": [f"{PROMETHEUS_DIR}/rules/*.yml"],
        "alerting": {"alertmanagers": [{"static_configs": [{"targets": [f"alertmanager:{ALERTMANAGER_PORT}"]}]}]},
        "scrape_configs": [*scrape_configs(env), gateway_tls_job(env)],
    })


def prometheus_command(env: Environment) -> list[str]:
    return [
        f"--config.file={PROMETHEUS_DIR}/prometheus.yml",
        "--storage.tsdb.path=/prometheus",
        f"--storage.tsdb.retention.time={env.monitoring.retention}",
        # Reached only through an SSH tunnel; no lifecycle or admin API (a changed config replaces the container).
        f"--web.listen-address=:{PROMETHEUS_PORT}",
    ]


# ---------------------------------------------------------------------------------------------
# Alert rules


@dataclass(frozen=True)
class Alert:
    name: str
    expr: str
    for_: str
    severity: str
    summary: str

    def rule(self) -> dict[str, Any]:
        return {"alert": self.name, "expr": self.expr, "for": self.for_,
                "labels": {"severity": self.severity}, "annotations": {"summary": self.summary}}


def alerts(env: Environment) -> list[Alert]:
    a, pg = env.monitoring.alerts, env.postgres
    duration_sum = f"{SERVICE_REQUEST_DURATION}_count"
    found: list[Alert] = [
        Alert("TargetDown", "up == 0", a.down_for, "critical",
              "{{ $labels.job }} target {{ $labels.instance }} has been unreachable for " + a.down_for),
    ]
    found += [
        # A service with no container answering its alias has no target at all, so `up == 0` never
        # fires for it: its absence is the signal.
        Alert(f"ServiceMissing_{name.replace('-', '_')}", f'absent(up{{job="{SERVICES_JOB}",service="{name}"}})',
              a.down_for, "critical", f"no {name} container is being scraped")
        for name, svc in sorted(env.services.items()) if svc.metrics
    ]
    found += [
        Alert("HighErrorRatio",
              f'sum by (service) (rate({duration_sum}{{job="{SERVICES_JOB}",{SERVICE_STATUS_LABEL}=~"5.."}}[5m]))'
              f' / sum by (service) (rate({duration_sum}{{job="{SERVICES_JOB}"}}[5m])) > {a.error_ratio:g}',
              "5m", "critical", "{{ $labels.service }} answers more than " + f"{a.error_ratio:.0%}" + " of requests with 5xx"),
        Alert("HighLatencyP95",
              f'histogram_quantile(0.95, sum by (service, le) (rate({SERVICE_REQUEST_DURATION}_bucket'
              f'{{job="{SERVICES_JOB}"}}[5m]))) > {a.latency_p95_seconds:g}',
              "10m", "warning", "{{ $labels.service }} p95 latency above " + f"{a.latency_p95_seconds:g}s"),
        Alert("DiskFillingUp",
              f"predict_linear(node_filesystem_avail_bytes{{{REAL_FS}}}[6h], {a.disk_full_hours * 3600}) < 0",
              "30m", "critical",
              "{{ $labels.mountpoint }} is predicted to be full within " + f"{a.disk_full_hours}h"),
        Alert("ContainerRestarting",
              f"changes(container_start_time_seconds{{{CONTAINER_CGROUP}}}[15m]) >= {a.restarts}",
              "0s", "warning", "container {{ $labels.id }} started " + f"{a.restarts}" + " times or more in 15 minutes"),
        Alert("ContainerMemoryNearLimit",
              f"container_memory_working_set_bytes{{{CONTAINER_CGROUP}}}"
              f" / (container_spec_memory_limit_bytes{{{CONTAINER_CGROUP}}} > 0) > {a.memory_ratio:g}",
              "5m", "warning", "container {{ $labels.id }} uses more than " + f"{a.memory_ratio:.0%}" + " of its memory limit"),
        Alert("PostgresDown", "pg_up == 0", "1m", "critical", "the Postgres exporter cannot reach Postgres"),
        Alert("PostgresConnectionsNearMax",
              f"sum(pg_stat_activity_count) > {int(pg.max_connections * a.postgres_connections_ratio)}",
              "5m", "warning",
              f"Postgres has more than {a.postgres_connections_ratio:.0%} of its max_connections ({pg.max_connections}) in use"),
        Alert("RedisDown", "redis_up == 0", "1m", "critical", "the Redis exporter cannot reach Redis"),
        # The certificate the gateway serves, as the blackbox probe saw it (gateway_tls_job).
        Alert("CertificateExpiring",
              f'min by (domain) (probe_ssl_earliest_cert_expiry{{job="{GATEWAY_TLS_JOB}"}}) - time()'
              f" < {a.certificate_days * 86400}",
              "1h", "warning", "the certificate of {{ $labels.domain }} expires in less than " + f"{a.certificate_days} days"),
        # The exporter answers (`up` is 1) but the probe failed: no TLS, a certificate that does not verify
        # (expired, wrong name, not ours) or no 200 on /healthz. Then there is no expiry to read either.
        Alert("GatewayProbeFailed", f'probe_success{{job="{GATEWAY_TLS_JOB}"}} == 0', a.down_for, "critical",
              "the HTTPS probe of {{ $labels.instance }} ({{ $labels.domain }}) fails: TLS, certificate or /healthz"),
        Alert("BackupTooOld", f"time() - max by (stanza) ({BACKUP_LAST_SUCCESS}) > {a.backup_max_age_hours * 3600}",
              "0s", "critical", "the newest backup of {{ $labels.stanza }} is older than " + f"{a.backup_max_age_hours}h"),
        # No backup metric at all means no backup is known to have run.
        Alert("BackupMissing", f"absent({BACKUP_LAST_SUCCESS})", "1h", "critical", "no backup has reported success"),
    ]
    return found


def render_rules(env: Environment) -> str:
    return _yaml({"groups": [{"name": "mysaaschat", "rules": [a.rule() for a in alerts(env)]}]})


RULES_FILE = "rules/alerts.yml"


def render_rule_tests(env: Environment, rules_path: str = "alerts.yml") -> str:
    """promtool unit tests: each alert fires on a series that crosses its threshold and stays quiet on a
    healthy one. Series are built from the model's thresholds, so a changed threshold is retested."""
    a, pg = env.monitoring.alerts, env.postgres
    tests: list[dict[str, Any]] = []
    cg = "/system.slice/docker-abc.scope"

    def case(series: list[dict[str, str]], alert: str, at: str, fires: list[dict[str, Any]],
             interval: str = "1m") -> None:
        tests.append({"interval": interval, "input_series": series,
                      "alert_rule_test": [{"eval_time": at, "alertname": alert, "exp_alerts": fires}]})

    def fired(alert: str, labels: dict[str, str]) -> list[dict[str, Any]]:
        rule = next(x for x in alerts(env) if x.name == alert)
        summary = re.sub(r"\{\{ \$labels\.(\w+) \}\}", lambda g: labels[g.group(1)], rule.summary)
        return [{"exp_labels": {**labels, "severity": rule.severity}, "exp_annotations": {"summary": summary}}]

    down_min = max(1, _seconds(a.down_for) // 60)
    # TargetDown: down long enough fires; up stays quiet.
    case([{"series": 'up{job="node",instance="node-exporter:9100"}', "values": f"0x{down_min + 5}"}],
         "TargetDown", f"{down_min + 2}m", fired("TargetDown", {"job": "node", "instance": "node-exporter:9100"}))
    case([{"series": 'up{job="node",instance="node-exporter:9100"}', "values": f"1x{down_min + 5}"}],
         "TargetDown", f"{down_min + 2}m", [])
    # ServiceMissing: a service without any target fires; one with a target does not.
    name = next(n for n, s in sorted(env.services.items()) if s.metrics)
    alert = f"ServiceMissing_{name.replace('-', '_')}"
    case([{"series": 'up{job="node",instance="x"}', "values": f"1x{down_min + 5}"}], alert, f"{down_min + 2}m",
         fired(alert, {"job": SERVICES_JOB, "service": name}))
    case([{"series": f'up{{job="{SERVICES_JOB}",service="{name}",instance="10.0.0.2:1"}}', "values": f"1x{down_min + 5}"}],
         alert, f"{down_min + 2}m", [])
    # HighErrorRatio: per minute 100 requests, of which twice the threshold (bad) or half of it (good) are 5xx.
    count = f"{SERVICE_REQUEST_DURATION}_count"
    for ratio, fires in ((min(0.99, a.error_ratio * 2), True), (a.error_ratio / 2, False)):
        bad = round(1000 * ratio)
        case([{"series": f'{count}{{job="{SERVICES_JOB}",service="chat-service",{SERVICE_STATUS_LABEL}="500"}}',
               "values": f"0+{bad}x20"},
              {"series": f'{count}{{job="{SERVICES_JOB}",service="chat-service",{SERVICE_STATUS_LABEL}="200"}}',
               "values": f"0+{1000 - bad}x20"}],
             "HighErrorRatio", "15m", fired("HighErrorRatio", {"service": "chat-service"}) if fires else [])
    # HighLatencyP95: all requests in the bucket just above (bad) or well below (good) the threshold.
    threshold = a.latency_p95_seconds
    for fires in (True, False):
        le_hit = threshold * (4 if fires else 0.25)
        bucket = f"{SERVICE_REQUEST_DURATION}_bucket"
        lo, hi = f"{threshold * 0.5:g}", f"{threshold * 8:g}"
        series = [
            {"series": f'{bucket}{{job="{SERVICES_JOB}",service="chat-service",le="{lo}"}}',
             "values": "0+0x30" if le_hit > threshold * 0.5 else "0+100x30"},
            {"series": f'{bucket}{{job="{SERVICES_JOB}",service="chat-service",le="{hi}"}}', "values": "0+100x30"},
            {"series": f'{bucket}{{job="{SERVICES_JOB}",service="chat-service",le="+Inf"}}', "values": "0+100x30"},
        ]
        case(series, "HighLatencyP95", "25m", fired("HighLatencyP95", {"service": "chat-service"}) if fires else [])
    # DiskFillingUp: a disk losing 1/10 of its size per hour, empty well within the horizon (bad), or steady.
    size = 100 * 2**30
    hours = a.disk_full_hours
    drop = size // max(1, hours * 2) // 4  # per 15 minutes: empty in hours/2
    labels = 'device="/dev/nvme1n1",fstype="ext4",mountpoint="/var/lib/docker",instance="node-exporter:9100",job="node"'
    case([{"series": f"node_filesystem_avail_bytes{{{labels}}}", "values": f"{size // 2}-{drop}x40"}],
         "DiskFillingUp", "8h", fired("DiskFillingUp", {"device": "/dev/nvme1n1", "fstype": "ext4",
                                                         "mountpoint": "/var/lib/docker", "instance": "node-exporter:9100",
                                                         "job": "node"}), interval="15m")
    case([{"series": f"node_filesystem_avail_bytes{{{labels}}}", "values": f"{size // 2}+0x40"}],
         "DiskFillingUp", "8h", [], interval="15m")
    # ContainerRestarting: the start time changes every few minutes (bad), or never.
    start = f'container_start_time_seconds{{id="{cg}",job="cadvisor",instance="cadvisor:8080"}}'
    restarts = " ".join(str(1_700_000_000 + 60 * (i // 3)) for i in range(3 * (a.restarts + 1)))
    case([{"series": start, "values": restarts}], "ContainerRestarting", f"{3 * a.restarts}m",
         fired("ContainerRestarting", {"id": cg, "job": "cadvisor", "instance": "cadvisor:8080"}))
    case([{"series": start, "values": "1700000000x20"}], "ContainerRestarting", "15m", [])
    # ContainerMemoryNearLimit: working set just above and well below the ratio of a 1 GiB limit.
    limit = 2**30
    for used, fires in ((a.memory_ratio + (1 - a.memory_ratio) / 2, True), (a.memory_ratio / 2, False)):
        labels = f'id="{cg}",job="cadvisor",instance="cadvisor:8080"'
        case([{"series": f"container_memory_working_set_bytes{{{labels}}}", "values": f"{int(limit * used)}x15"},
              {"series": f"container_spec_memory_limit_bytes{{{labels}}}", "values": f"{limit}x15"}],
             "ContainerMemoryNearLimit", "10m",
             fired("ContainerMemoryNearLimit", {"id": cg, "job": "cadvisor", "instance": "cadvisor:8080"})
             if fires else [])
    # PostgresDown / RedisDown.
    for alert, metric, job in (("PostgresDown", "pg_up", "postgres"), ("RedisDown", "redis_up", "redis")):
        inst = f"{STATIC_JOBS[job][0]}:{STATIC_JOBS[job][1]}"
        case([{"series": f'{metric}{{job="{job}",instance="{inst}"}}', "values": "0x10"}], alert, "5m",
             fired(alert, {"job": job, "instance": inst}))
        case([{"series": f'{metric}{{job="{job}",instance="{inst}"}}', "values": "1x10"}], alert, "5m", [])
    # PostgresConnectionsNearMax: from the model's max_connections.
    limit_conn = int(pg.max_connections * a.postgres_connections_ratio)
    for conns, fires in ((limit_conn + 1, True), (limit_conn, False)):
        case([{"series": 'pg_stat_activity_count{datname="x",state="active",job="postgres"}', "values": f"{conns}x15"}],
             "PostgresConnectionsNearMax", "10m", fired("PostgresConnectionsNearMax", {}) if fires else [])
    # CertificateExpiring: at eval time (1h10m = 4200 s) the certificate ends in days-1 (bad) or days+1 (good).
    probe = {"job": GATEWAY_TLS_JOB, "instance": gateway_probe_target(), "domain": env.domain}
    probe_labels = ",".join(f'{k}="{v}"' for k, v in probe.items())
    for days, fires in ((a.certificate_days - 1, True), (a.certificate_days + 1, False)):
        case([{"series": f"probe_ssl_earliest_cert_expiry{{{probe_labels}}}", "values": f"{4200 + days * 86400}x80"}],
             "CertificateExpiring", "70m", fired("CertificateExpiring", {"domain": env.domain}) if fires else [])
    # GatewayProbeFailed: a failing probe long enough fires; a succeeding one stays quiet.
    for value, fires in ((0, True), (1, False)):
        case([{"series": f"probe_success{{{probe_labels}}}", "values": f"{value}x{down_min + 5}"}],
             "GatewayProbeFailed", f"{down_min + 2}m", fired("GatewayProbeFailed", probe) if fires else [])
    # BackupTooOld / BackupMissing: the last success at t=0, evaluated past (bad) or within (good) the limit.
    max_age = a.backup_max_age_hours * 3600
    for at, fires in ((max_age + 3600, True), (max_age - 3600, False)):
        case([{"series": f'{BACKUP_LAST_SUCCESS}{{stanza="mysaaschat",type="full"}}',
               "values": f"0x{at // 3600 + 2}"}],
             "BackupTooOld", f"{at // 3600}h", fired("BackupTooOld", {"stanza": "mysaaschat"}) if fires else [],
             interval="1h")
    case([{"series": 'up{job="node"}', "values": "1x90"}], "BackupMissing", "70m", fired("BackupMissing", {}))
    case([{"series": f'{BACKUP_LAST_SUCCESS}{{stanza="mysaaschat",type="full"}}', "values": "0x90"}],
         "BackupMissing", "70m", [])
    return _yaml({"rule_files": [rules_path], "evaluation_interval": "1m", "tests": tests})


# ---------------------------------------------------------------------------------------------
# alertmanager.yml


def render_alertmanager(env: Environment, urls: dict[str, str]) -> str:
    """`urls` maps each receiver's name to its URL (a secret read from Secrets Manager)."""
    receivers: list[dict[str, Any]] = []
    for r in env.monitoring.receivers:
        if r.kind == "webhook":
            receivers.append({"name": r.name, "webhook_configs": [{"url": urls[r.name], "send_resolved": r.send_resolved}]})
        else:
            receivers.append({"name": r.name, "slack_configs": [
                {"api_url": urls[r.name], "channel": r.channel, "send_resolved": r.send_resolved}]})
    return _yaml({
        "route": {
            "receiver": env.monitoring.receivers[0].name,
            "group_by": ["alertname", "service"],
            "group_wait": "30s", "group_interval": "5m", "repeat_interval": "4h",
            # Every receiver gets every alert: each child matches all and lets the next one see it too.
            "routes": [{"receiver": r.name, "continue": True} for r in env.monitoring.receivers],
        },
        # A critical alert silences the warnings about the same target.
        "inhibit_rules": [{"source_matchers": ['severity="critical"'], "target_matchers": ['severity="warning"'],
                           "equal": ["instance"]}],
        "receivers": receivers,
    })


def alertmanager_command() -> list[str]:
    return [f"--config.file={ALERTMANAGER_DIR}/alertmanager.yml", "--storage.path=/alertmanager",
            f"--web.listen-address=:{ALERTMANAGER_PORT}",
            # One instance: no gossip with peers (and no port 9094 listening).
            "--cluster.listen-address="]


# ---------------------------------------------------------------------------------------------
# Grafana


def render_datasource() -> str:
    return _yaml({"apiVersion": 1, "datasources": [{
        "name": "Prometheus", "type": "prometheus", "uid": DATASOURCE_UID, "access": "proxy",
        "url": f"http://prometheus:{PROMETHEUS_PORT}", "isDefault": True, "editable": False,
        "jsonData": {"timeInterval": "15s"},
    }]})


def render_dashboard_provider() -> str:
    return _yaml({"apiVersion": 1, "providers": [{
        "name": "mysaaschat", "folder": "My SaaS Chat", "type": "file", "disableDeletion": True,
        "allowUiUpdates": False, "updateIntervalSeconds": 60,
        "options": {"path": f"{GRAFANA_DIR}/dashboards", "foldersFromFilesStructure": False},
    }]})


def grafana_env(env: Environment) -> dict[str, str]:
    return {
        "GF_PATHS_PROVISIONING": f"{GRAFANA_DIR}/provisioning",
        # A file, never the value: Grafana reads any setting from `<VAR>__FILE` (docs: "Override
        # configuration with environment variables", file provider).
        "GF_SECURITY_ADMIN_PASSWORD__FILE": f"{GRAFANA_DIR}/admin_password",
        "GF_SECURITY_ADMIN_USER": "admin",
        # Served by the gateway under /grafana/ only (render/nginx.py grafana_location).
        "GF_SERVER_ROOT_URL": f"https://{env.domain}{GRAFANA_SUB_PATH}/",
        "GF_SERVER_SERVE_FROM_SUB_PATH": "true",
        "GF_SERVER_HTTP_PORT": str(GRAFANA_PORT),
        "GF_USERS_ALLOW_SIGN_UP": "false",
        "GF_AUTH_ANONYMOUS_ENABLED": "false",
        "GF_SECURITY_COOKIE_SECURE": "true",
        "GF_SECURITY_DISABLE_GRAVATAR": "true",
        "GF_ANALYTICS_REPORTING_ENABLED": "false",
        "GF_ANALYTICS_CHECK_FOR_UPDATES": "false",
        "GF_ANALYTICS_CHECK_FOR_PLUGIN_UPDATES": "false",
        "GF_PLUGINS_PREINSTALL_DISABLED": "true",
        "GF_PATHS_DATA": "/var/lib/grafana",
        "GF_LOG_MODE": "console",
    }


_DS = DataSourceRef(type_val="prometheus", uid=DATASOURCE_UID)


def _ts(title: str, unit: str, *queries: tuple[str, str]) -> timeseries.Panel:
    panel = timeseries.Panel().title(title).unit(unit).datasource(_DS).span(12).height(8)
    for i, (expr, legend) in enumerate(queries):
        panel = panel.with_target(promq.Dataquery().expr(expr).legend_format(legend).ref_id(chr(65 + i)).datasource(_DS))
    return panel


def _stat(title: str, unit: str, expr: str) -> stat.Panel:
    return (stat.Panel().title(title).unit(unit).datasource(_DS).span(6).height(4)
            .with_target(promq.Dataquery().expr(expr).ref_id("A").datasource(_DS)))


def dashboards(env: Environment) -> dict[str, dict[str, Any]]:
    """uid -> dashboard JSON model, built with grafana-foundation-sdk."""
    d = SERVICE_REQUEST_DURATION
    sel = f'job="{SERVICES_JOB}",service=~"$service"'
    service_var = (dash.QueryVariable("service").label("Service").datasource(_DS)
                   .query(f'label_values(up{{job="{SERVICES_JOB}"}}, service)').multi(True).include_all(True))
    built = {
        "mysaaschat-services": dash.Dashboard("Services: rate, errors, latency").uid("mysaaschat-services")
        .tags(["mysaaschat"]).refresh("30s").time("now-3h", "now").with_variable(service_var)
        .with_panel(_ts("Requests per second", "reqps", (f"sum by (service) (rate({d}_count{{{sel}}}[5m]))", "{{service}}")))
        .with_panel(_ts("5xx ratio", "percentunit",
                        (f'sum by (service) (rate({d}_count{{{sel},{SERVICE_STATUS_LABEL}=~"5.."}}[5m])) / '
                         f"sum by (service) (rate({d}_count{{{sel}}}[5m]))", "{{service}}")))
        .with_panel(_ts("Latency p50 / p95 / p99", "s", *[
            (f"histogram_quantile({q}, sum by (service, le) (rate({d}_bucket{{{sel}}}[5m])))", f"{{{{service}}}} p{int(q * 100)}")
            for q in (0.5, 0.95, 0.99)]))
        .with_panel(_ts("Targets up", "short", (f"sum by (service) (up{{{sel}}})", "{{service}}"))),
        "mysaaschat-containers": dash.Dashboard("Containers: CPU, memory").uid("mysaaschat-containers")
        .tags(["mysaaschat"]).refresh("30s").time("now-3h", "now")
        .with_panel(_ts("CPU (cores)", "short",
                        (f"sum by (id) (rate(container_cpu_usage_seconds_total{{{CONTAINER_CGROUP}}}[5m]))", "{{id}}")))
        .with_panel(_ts("Memory working set", "bytes",
                        (f"container_memory_working_set_bytes{{{CONTAINER_CGROUP}}}", "{{id}}")))
        .with_panel(_ts("Memory / limit", "percentunit",
                        (f"container_memory_working_set_bytes{{{CONTAINER_CGROUP}}} / "
                         f"(container_spec_memory_limit_bytes{{{CONTAINER_CGROUP}}} > 0)", "{{id}}")))
        .with_panel(_ts("Engine: containers by state", "short",
                        ("engine_daemon_container_states_containers", "{{state}}"))),
        "mysaaschat-postgres": dash.Dashboard("Postgres").uid("mysaaschat-postgres").tags(["mysaaschat"])
        .refresh("30s").time("now-3h", "now")
        .with_panel(_stat("Up", "short", "pg_up"))
        .with_panel(_stat("Connections / max", "percentunit",
                          f"sum(pg_stat_activity_count) / {env.postgres.max_connections}"))
        .with_panel(_ts("Connections by state", "short", ("sum by (state) (pg_stat_activity_count)", "{{state}}")))
        .with_panel(_ts("Transactions per second", "ops",
                        ("sum by (datname) (rate(pg_stat_database_xact_commit[5m]))", "{{datname}} commit"),
                        ("sum by (datname) (rate(pg_stat_database_xact_rollback[5m]))", "{{datname}} rollback")))
        .with_panel(_ts("Cache hit ratio", "percentunit",
                        ("sum(rate(pg_stat_database_blks_hit[5m])) / (sum(rate(pg_stat_database_blks_hit[5m])) + "
                         "sum(rate(pg_stat_database_blks_read[5m])))", "hit ratio"))),
        "mysaaschat-redis": dash.Dashboard("Redis").uid("mysaaschat-redis").tags(["mysaaschat"])
        .refresh("30s").time("now-3h", "now")
        .with_panel(_stat("Up", "short", "redis_up"))
        .with_panel(_ts("Memory used / max", "bytes", ("redis_memory_used_bytes", "used"),
                        ("redis_memory_max_bytes", "maxmemory")))
        .with_panel(_ts("Commands per second", "ops", ("rate(redis_commands_processed_total[5m])", "commands")))
        .with_panel(_ts("Clients and keys", "short", ("redis_connected_clients", "clients"),
                        ("sum(redis_db_keys)", "keys")))
        .with_panel(_ts("Evictions per second", "ops", ("rate(redis_evicted_keys_total[5m])", "evicted"))),
        "mysaaschat-rabbitmq": dash.Dashboard("RabbitMQ").uid("mysaaschat-rabbitmq").tags(["mysaaschat"])
        .refresh("30s").time("now-3h", "now")
        .with_panel(_ts("Messages ready / unacked", "short", ("sum(rabbitmq_queue_messages_ready)", "ready"),
                        ("sum(rabbitmq_queue_messages_unacked)", "unacked")))
        .with_panel(_ts("Published / delivered per second", "ops",
                        ("sum(rate(rabbitmq_global_messages_received_total[5m]))", "published"),
                        ("sum(rate(rabbitmq_global_messages_delivered_total[5m]))", "delivered")))
        .with_panel(_ts("Connections and channels", "short", ("rabbitmq_connections", "connections"),
                        ("rabbitmq_channels", "channels")))
        .with_panel(_ts("Memory used", "bytes", ("rabbitmq_process_resident_memory_bytes", "resident"))),
        "mysaaschat-host": dash.Dashboard("Host and gateway").uid("mysaaschat-host").tags(["mysaaschat"])
        .refresh("30s").time("now-6h", "now")
        .with_panel(_ts("CPU busy", "percentunit",
                        ('1 - avg(rate(node_cpu_seconds_total{mode="idle"}[5m]))', "busy")))
        .with_panel(_ts("Memory available", "bytes", ("node_memory_MemAvailable_bytes", "available"),
                        ("node_memory_MemTotal_bytes", "total")))
        .with_panel(_ts("Disk available", "bytes", (f"node_filesystem_avail_bytes{{{REAL_FS}}}", "{{mountpoint}}")))
        .with_panel(_ts("Load", "short", ("node_load1", "1m"), ("node_load5", "5m")))
        .with_panel(_ts("Gateway requests per second", "reqps", ("rate(nginx_http_requests_total[5m])", "requests")))
        .with_panel(_ts("Gateway connections", "short", ("nginx_connections_active", "active"),
                        ("nginx_connections_waiting", "waiting"))),
    }
    return {uid: json.loads(json.dumps(b.build(), cls=JSONEncoder)) for uid, b in built.items()}


# ---------------------------------------------------------------------------------------------
# Exporters


def postgres_exporter_env(env: Environment) -> dict[str, str]:
    # postgres_exporter reads the password from DATA_SOURCE_PASS_FILE (prometheus-community/postgres_exporter
    # cmd/postgres_exporter/datasource.go, getDataSources), so it is never in the environment.
    return {"DATA_SOURCE_URI": f"postgres:5432/{env.postgres.database}?sslmode=disable",
            "DATA_SOURCE_USER": env.postgres.user,
            "DATA_SOURCE_PASS_FILE": f"{EXPORTER_DIR}/postgres-password"}


def redis_password_file(password: str) -> str:
    # redis_exporter's --redis.password-file is a JSON map of URI -> password (oliver006/redis_exporter
    # exporter/pwd_file.go, LoadPwdFile), looked up by the scraped address.
    return json.dumps({"redis://redis:6379": password})


def redis_exporter_command() -> list[str]:
    return ["--redis.addr=redis://redis:6379", f"--redis.password-file={EXPORTER_DIR}/redis-passwords.json",
            f"--web.listen-address=:{REDIS_EXPORTER_PORT}"]


def node_exporter_command() -> list[str]:
    return ["--path.procfs=/host/proc", "--path.sysfs=/host/sys", "--path.rootfs=/host/root",
            f"--collector.textfile.directory={NODE_TEXTFILE_DIR}",
            "--collector.filesystem.mount-points-exclude=^/(dev|proc|sys|run|var/lib/docker/.+)($|/)",
            f"--web.listen-address=:{NODE_EXPORTER_PORT}"]


def cadvisor_command() -> list[str]:
    # Flags of google/cadvisor (at 6a0c4f25): cmd/cadvisor.go store_container_labels and enable_metrics,
    # lib/container/factory.go `OOMMetrics MetricKind = "oom_event"`, lib/container/raw/factory.go docker_only.
    return [f"--port={CADVISOR_PORT}", "--housekeeping_interval=15s", "--store_container_labels=false",
            # Only what the dashboards and alerts read: cheaper, and no collector that needs root.
            "--enable_metrics=cpu,memory,network,oom_event", "--docker_only=false"]


def nginx_exporter_command(gateway_host: str) -> list[str]:
    return [f"--nginx.scrape-uri=http://{gateway_host}:{GATEWAY_STATUS_PORT}{GATEWAY_STATUS_PATH}",
            f"--web.listen-address=:{NGINX_EXPORTER_PORT}"]


def blackbox_verification(env: Environment) -> dict[str, Any]:
    """How the probe verifies the gateway's certificate, per `tls.mode`:

    - selfsigned: against the stack's own certificate as the only root (`ca_file`, written next to
      blackbox.yml): a self-signed certificate is its own issuer, so this pins the certificate this
      program made, and an old or foreign one fails the probe (both shown with the real exporter in
      tests/test_monitoring_live.py);
    - secretsmanager, letsencrypt: the image's system roots (a public CA). The image is built on
      quay.io/prometheus/busybox (prometheus/blackbox_exporter Dockerfile), which copies Debian's
      /etc/ssl/certs/ca-certificates.crt in (prometheus/busybox glibc/Dockerfile), the first bundle
      Go looks for on Linux;
    - letsencrypt with `acme_staging`: Let's Encrypt's staging CA is in no trust store, so
      `insecure_skip_verify`. The expiry is still reported: prometheus/blackbox_exporter prober/http.go
      (v0.25.0 and HEAD, `ProbeHTTP`: `if resp.TLS != nil` sets probe_ssl_earliest_cert_expiry) from prober/tls.go
      `getEarliestCertExpiry`, which reads `state.PeerCertificates`, filled by crypto/tls whether or
      not it verified (only probe_ssl_last_chain_expiry_timestamp_seconds needs `VerifiedChains`).
    """
    tls: dict[str, Any] = {"server_name": env.domain}
    if env.tls.mode == "selfsigned":
        tls["ca_file"] = f"{BLACKBOX_DIR}/{BLACKBOX_CA_FILE}"
    elif env.tls.mode == "letsencrypt" and env.tls.acme_staging:
        tls["insecure_skip_verify"] = True
    return tls


def render_blackbox(env: Environment) -> str:
    # Field names: prometheus/blackbox_exporter config/config.go (`HTTPProbe`, its inline
    # `HTTPClientConfig` from prometheus/common config/http_config.go with `tls_config`).
    return _yaml({"modules": {GATEWAY_TLS_MODULE: {
        "prober": "http",
        "timeout": "10s",
        "http": {
            "method": "GET",
            "valid_status_codes": [200],
            # A plain-HTTP answer must never count as success: the point is the certificate.
            "fail_if_not_ssl": True,
            "follow_redirects": False,
            "preferred_ip_protocol": "ip4",
            "tls_config": blackbox_verification(env),
        },
    }}})


def blackbox_command() -> list[str]:
    return [f"--config.file={BLACKBOX_DIR}/blackbox.yml", f"--web.listen-address=:{BLACKBOX_PORT}"]


def monitoring_files(env: Environment, urls: dict[str, str]) -> dict[str, dict[str, str]]:
    """Every monitoring file per container (paths relative to its config directory); no secret but the
    receivers' URLs (alertmanager.yml), which the caller passes in."""
    grafana = {"provisioning/datasources/prometheus.yml": render_datasource(),
               "provisioning/dashboards/mysaaschat.yml": render_dashboard_provider()}
    grafana |= {f"dashboards/{uid}.json": json.dumps(model, indent=2, sort_keys=True) + "\n"
                for uid, model in dashboards(env).items()}
    return {
        "prometheus": {"prometheus.yml": render_prometheus(env), RULES_FILE: render_rules(env)},
        "alertmanager": {"alertmanager.yml": render_alertmanager(env, urls)},
        "grafana": grafana,
        # The `selfsigned` trust anchor (BLACKBOX_CA_FILE) is the gateway's certificate, added by the component.
        "blackbox-exporter": {"blackbox.yml": render_blackbox(env)},
    }
