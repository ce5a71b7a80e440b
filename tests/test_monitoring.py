"""The monitoring files of every stack, judged by the real tools: promtool (config, rules, rule unit
tests) and amtool; dashboards parsed back and checked against the provisioned datasource and the
metric names the scraped programs expose."""

from __future__ import annotations

import json
import re
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml

from config import Environment, load_environment, read_stack_file
from render import monitoring as m
from render.contracts import BACKUP_LAST_SUCCESS, SERVICE_REQUEST_DURATION
from tests.conftest import require_tool

ROOT = Path(__file__).resolve().parent.parent
STACKS = ("prod", "staging", "local")
URLS = {"ops-webhook": "https://hooks.example.invalid/alertmanager"}


def environment(stack: str) -> Environment:
    return load_environment(read_stack_file(ROOT / f"Pulumi.{stack}.yaml"))


def write_prometheus(env: Environment, tmp_path: Path) -> Path:
    """The rendered files in a temporary directory; only rule_files is pointed at it."""
    files = m.monitoring_files(env, URLS)["prometheus"]
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    config = yaml.safe_load(files["prometheus.yml"])
    assert config["rule_files"] == [f"{m.PROMETHEUS_DIR}/rules/*.yml"]
    config["rule_files"] = [str(tmp_path / "rules/*.yml")]
    path = tmp_path / "prometheus-test.yml"
    path.write_text(yaml.safe_dump(config))
    return path


def run(argv: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=cwd)


@pytest.mark.parametrize("stack", STACKS)
def test_promtool_accepts_the_config_and_its_rules(stack: str, tmp_path: Path) -> None:
    promtool = require_tool("promtool")
    path = write_prometheus(environment(stack), tmp_path)
    result = run([promtool, "check", "config", str(path)])
    assert result.returncode == 0, result.stdout + result.stderr
    # The rules file was found through the glob and checked too.
    assert "alerts.yml" in result.stdout + result.stderr and "SUCCESS" in result.stdout + result.stderr


@pytest.mark.parametrize("stack", STACKS)
def test_promtool_checks_the_rules(stack: str, tmp_path: Path) -> None:
    promtool = require_tool("promtool")
    rules = tmp_path / "alerts.yml"
    rules.write_text(m.render_rules(environment(stack)))
    result = run([promtool, "check", "rules", str(rules)])
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(m.alerts(environment(stack)))} rules found" in result.stdout


@pytest.mark.parametrize("stack", STACKS)
def test_every_alert_fires_on_a_bad_series_and_stays_quiet_on_a_good_one(stack: str, tmp_path: Path) -> None:
    promtool = require_tool("promtool")
    env = environment(stack)
    (tmp_path / "alerts.yml").write_text(m.render_rules(env))
    tests = m.render_rule_tests(env)
    (tmp_path / "tests.yml").write_text(tests)
    result = run([promtool, "test", "rules", "tests.yml"], cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    # Coverage: every alert kind (ServiceMissing once, for one service) has a case that fires and one that does not.
    cases = [c for t in yaml.safe_load(tests)["tests"] for c in t["alert_rule_test"]]
    kinds = {a.name.split("_")[0] for a in m.alerts(env)}
    for kind in kinds:
        mine = [c for c in cases if c["alertname"].split("_")[0] == kind]
        assert any(c["exp_alerts"] for c in mine), f"{kind}: no case where it fires"
        assert any(not c["exp_alerts"] for c in mine), f"{kind}: no case where it stays quiet"


def test_promtool_test_catches_a_wrong_threshold(tmp_path: Path) -> None:
    """The unit tests can fail: against rules rendered with another threshold, they do."""
    promtool = require_tool("promtool")
    env = environment("prod")
    looser = env.model_copy(update={"postgres": env.postgres.model_copy(update={"max_connections": 1000})})
    (tmp_path / "alerts.yml").write_text(m.render_rules(looser))
    (tmp_path / "tests.yml").write_text(m.render_rule_tests(env))
    result = run([promtool, "test", "rules", "tests.yml"], cwd=tmp_path)
    assert result.returncode != 0 and "PostgresConnectionsNearMax" in result.stdout + result.stderr


def test_postgres_connection_alert_follows_the_models_max_connections() -> None:
    for stack in STACKS:
        env = environment(stack)
        rule = next(a for a in m.alerts(env) if a.name == "PostgresConnectionsNearMax")
        limit = int(env.postgres.max_connections * env.monitoring.alerts.postgres_connections_ratio)
        assert rule.expr.endswith(f"> {limit}")
    assert environment("prod").postgres.max_connections != environment("local").postgres.max_connections


@pytest.mark.parametrize("stack", STACKS)
def test_amtool_accepts_alertmanager_yml(stack: str, tmp_path: Path) -> None:
    amtool = require_tool("amtool")
    path = tmp_path / "alertmanager.yml"
    env = environment(stack)
    path.write_text(m.render_alertmanager(env, URLS))
    result = run([amtool, "check-config", str(path)])
    assert result.returncode == 0, result.stdout + result.stderr
    config = yaml.safe_load(path.read_text())
    assert {r["name"] for r in config["receivers"]} == {r.name for r in env.monitoring.receivers}
    assert config["receivers"][0]["webhook_configs"][0]["url"] == URLS["ops-webhook"]


def test_amtool_refuses_a_broken_alertmanager_yml(tmp_path: Path) -> None:
    amtool = require_tool("amtool")
    config = yaml.safe_load(m.render_alertmanager(environment("prod"), URLS))
    config["route"]["receiver"] = "nobody"
    path = tmp_path / "alertmanager.yml"
    path.write_text(yaml.safe_dump(config))
    assert run([amtool, "check-config", str(path)]).returncode != 0


def test_retention_and_intervals_come_from_the_model() -> None:
    assert m.prometheus_command(environment("prod"))[2] == "--storage.tsdb.retention.time=30d"
    assert "--storage.tsdb.retention.time=7d" in m.prometheus_command(environment("staging"))
    assert "--storage.tsdb.retention.time=2d" in m.prometheus_command(environment("local"))
    config = yaml.safe_load(m.render_prometheus(environment("prod")))
    assert config["global"]["scrape_interval"] == environment("prod").monitoring.scrape_interval


def test_every_service_declaring_metrics_is_scraped_on_its_alias_and_path() -> None:
    env = environment("prod")
    config = yaml.safe_load(m.render_prometheus(env))
    jobs = {j["job_name"]: j for j in config["scrape_configs"]}
    services = jobs[m.SERVICES_JOB]
    declared = {n: s for n, s in env.services.items() if s.metrics}
    assert declared == env.services  # the catalog gives every service a metrics endpoint
    assert {(c["names"][0], c["port"], c["type"]) for c in services["dns_sd_configs"]} == {
        (n, s.port, "A") for n, s in declared.items()}
    relabel = {(r["regex"], r["target_label"]): r["replacement"] for r in services["relabel_configs"]}
    for name, svc in declared.items():
        assert svc.metrics is not None
        assert relabel[(name, "service")] == name and relabel[(name, "__metrics_path__")] == svc.metrics.path
    static = {j: c["static_configs"][0]["targets"] for j, c in jobs.items() if "static_configs" in c}
    assert static["rabbitmq"] == ["rabbitmq:15692"] and static["docker"] == ["host.docker.internal:9323"]
    assert {"node", "cadvisor", "postgres", "redis", "gateway", "alertmanager", "prometheus"} <= set(static)


# Metric names the dashboards and alerts may use, per program, each list read from the program's source
# at the version the image pins (and, for the Debian-packaged exporters, checked against their real
# output by tests/test_monitoring_live.py).
KNOWN_METRICS: dict[str, set[str]] = {
    # prometheus/prometheus scrape/scrape.go: the synthetic series of every target.
    "prometheus": {"up"},
    # prometheus/node_exporter collector/{cpu,meminfo,filesystem,loadavg}_linux.go.
    "node": {"node_cpu_seconds_total", "node_memory_MemAvailable_bytes", "node_memory_MemTotal_bytes",
             "node_filesystem_avail_bytes", "node_load1", "node_load5"},
    # google/cadvisor docs/storage/prometheus.md (at 6a0c4f25): cpu, memory and spec metrics.
    "cadvisor": {"container_cpu_usage_seconds_total", "container_memory_working_set_bytes",
                 "container_spec_memory_limit_bytes", "container_start_time_seconds"},
    # prometheus-community/postgres_exporter collector/pg_database.go, pg_stat_database.go, pg_stat_activity
    # (queries.yaml default metrics), and the exporter's pg_up.
    "postgres": {"pg_up", "pg_stat_activity_count", "pg_stat_database_xact_commit", "pg_stat_database_xact_rollback",
                 "pg_stat_database_blks_hit", "pg_stat_database_blks_read"},
    # oliver006/redis_exporter exporter/exporter.go metricMapGauges/metricMapCounters.
    "redis": {"redis_up", "redis_memory_used_bytes", "redis_memory_max_bytes", "redis_commands_processed_total",
              "redis_connected_clients", "redis_db_keys", "redis_evicted_keys_total"},
    # rabbitmq/rabbitmq-server deps/rabbitmq_prometheus collectors (prometheus_rabbitmq_core_metrics_collector.erl,
    # prometheus_rabbitmq_global_metrics_collector.erl).
    "rabbitmq": {"rabbitmq_queue_messages_ready", "rabbitmq_queue_messages_unacked",
                 "rabbitmq_global_messages_received_total", "rabbitmq_global_messages_delivered_total",
                 "rabbitmq_connections", "rabbitmq_channels", "rabbitmq_process_resident_memory_bytes"},
    # nginx/nginx-prometheus-exporter collector/nginx.go (stub_status).
    "gateway": {"nginx_http_requests_total", "nginx_connections_active", "nginx_connections_waiting"},
    # moby/moby v20.10.24 daemon/metrics.go: namespace engine_daemon, "container_states", unit "containers".
    "docker": {"engine_daemon_container_states_containers"},
    # The product services and the backup jobs: render/contracts.py.
    "contracts": {f"{SERVICE_REQUEST_DURATION}_count", f"{SERVICE_REQUEST_DURATION}_bucket", BACKUP_LAST_SUCCESS},
    # prometheus/blackbox_exporter (v0.25.0) prober/handler.go (probe_success), prober/http.go ProbeHTTP.
    "blackbox": {"probe_success", "probe_ssl_earliest_cert_expiry"},
}
PROMQL_WORDS = {"sum", "by", "rate", "histogram_quantile", "label_values", "min", "max", "avg", "time", "absent",
                "predict_linear", "changes", "and", "or", "unless", "without", "on", "ignoring", "count", "le",
                "service", "id", "state", "datname", "mode", "stanza", "domain", "job", "fstype", "inf"}


def metric_names(expr: str) -> set[str]:
    without_strings = re.sub(r'"[^"]*"', '""', expr)
    without_labels = re.sub(r"\{[^}]*\}", "", without_strings)
    without_ranges = re.sub(r"\[[^\]]*\]", "", without_labels)
    names = set(re.findall(r"[A-Za-z_:][A-Za-z0-9_:]*", without_ranges))
    return {n for n in names if n.lower() not in PROMQL_WORDS and not n.startswith("$")}


def all_exprs(model: Any) -> list[str]:
    found: list[str] = []
    if isinstance(model, dict):
        for key, value in model.items():
            if key in ("expr", "query") and isinstance(value, str):
                found.append(value)
            elif key == "query" and isinstance(value, dict):
                found.append(value.get("query", ""))
            else:
                found += all_exprs(value)
    elif isinstance(model, list):
        for item in model:
            found += all_exprs(item)
    return found


def all_datasources(model: Any) -> list[Any]:
    found: list[Any] = []
    if isinstance(model, dict):
        for key, value in model.items():
            if key == "datasource":
                found.append(value)
            else:
                found += all_datasources(value)
    elif isinstance(model, list):
        for item in model:
            found += all_datasources(item)
    return found


@pytest.mark.parametrize("stack", STACKS)
def test_dashboards_use_only_the_provisioned_datasource_and_known_metrics(stack: str) -> None:
    env = environment(stack)
    files = m.monitoring_files(env, URLS)["grafana"]
    provisioned = yaml.safe_load(files["provisioning/datasources/prometheus.yml"])["datasources"]
    assert [d["uid"] for d in provisioned] == [m.DATASOURCE_UID]
    provider = yaml.safe_load(files["provisioning/dashboards/mysaaschat.yml"])["providers"][0]
    assert provider["options"]["path"] == f"{m.GRAFANA_DIR}/dashboards"
    known = set().union(*KNOWN_METRICS.values())
    boards = {path: json.loads(text) for path, text in files.items() if path.startswith("dashboards/")}
    assert {b["uid"] for b in boards.values()} == {
        "mysaaschat-services", "mysaaschat-containers", "mysaaschat-postgres", "mysaaschat-redis",
        "mysaaschat-rabbitmq", "mysaaschat-host"}
    for path, board in boards.items():
        sources = all_datasources(board)
        assert sources and all(s == {"type": "prometheus", "uid": m.DATASOURCE_UID} for s in sources), path
        exprs = all_exprs(board)
        assert exprs, path
        for expr in exprs:
            unknown = metric_names(expr) - known
            assert not unknown, f"{path}: {expr!r} uses {unknown}"
    for alert in m.alerts(env):
        assert not metric_names(alert.expr) - known, alert


def test_the_metric_name_check_can_fail() -> None:
    assert metric_names('sum by (service) (rate(http_request_duration_seconds_count{job="x"}[5m]))') == {
        "http_request_duration_seconds_count"}
    assert metric_names("rate(made_up_total[5m]) / node_load1") == {"made_up_total", "node_load1"}


def test_grafana_reads_its_password_from_a_file_and_serves_under_the_sub_path() -> None:
    env = m.grafana_env(environment("prod"))
    assert env["GF_SECURITY_ADMIN_PASSWORD__FILE"].startswith(m.GRAFANA_DIR)
    assert "GF_SECURITY_ADMIN_PASSWORD" not in env
    assert env["GF_SERVER_ROOT_URL"] == "https://mysaaschat.app/grafana/"
    assert env["GF_SERVER_SERVE_FROM_SUB_PATH"] == "true" and env["GF_AUTH_ANONYMOUS_ENABLED"] == "false"


# ---------------------------------------------------------------------------------------------
# The recorded component (strict mocks), every stack


def _containers(stack: str) -> dict[str, Any]:
    from tests.conftest import recording

    return {r.name: r for r in recording(stack).resources.values()
            if r.type == "docker:index/container:Container" and r.parent and "monitoring:Monitoring" in r.parent}


@pytest.mark.parametrize("stack", STACKS)
def test_nothing_of_monitoring_is_published_and_grafana_reads_its_password_from_a_file(stack: str) -> None:
    from tests.test_graph import plain

    found = _containers(stack)
    running = {n: c for n, c in found.items() if not n.endswith("-files")}
    assert set(running) == {"prometheus", "alertmanager", "grafana", "node-exporter", "cadvisor", "postgres-exporter",
                            "redis-exporter", "nginx-exporter", "blackbox-exporter"}
    for name, c in running.items():
        assert "ports" not in c.inputs, name
    envs = [str(e) for e in plain(running["grafana"].inputs["envs"])]
    assert f"GF_SECURITY_ADMIN_PASSWORD__FILE={m.GRAFANA_DIR}/admin_password" in envs
    assert not any(e.startswith("GF_SECURITY_ADMIN_PASSWORD=") for e in envs)
    uploads = {u["file"]: u for u in found["grafana-files"].inputs["uploads"]}
    assert uploads[f"{m.GRAFANA_DIR}/admin_password"]["permissions"] == "0400"
    # Prometheus declares every routed service as a scrape target (policy routed-service-scrape-target).
    labels = {lbl["label"]: lbl["value"] for lbl in running["prometheus"].inputs["labels"]}
    assert set(labels["com.mysaaschat.scrapes"].split(",")) >= set(environment(stack).services)
    assert "--storage.tsdb.retention.time=" + environment(stack).monitoring.retention in running["prometheus"].inputs["command"]


@pytest.mark.parametrize("stack", STACKS)
def test_host_access_is_exactly_what_host_access_declares(stack: str) -> None:
    from config.host_access import HOST_ACCESS

    for name, c in _containers(stack).items():
        binds = {(v["hostPath"], v["containerPath"], v.get("readOnly") is True)
                 for v in c.inputs.get("volumes", []) if "hostPath" in v}
        declared = HOST_ACCESS.get(name)
        assert binds == ({(h.host_path, h.container_path, h.read_only) for h in declared.mounts} if declared else set()), name
        assert c.inputs["capabilities"] == {"drops": ["ALL"]}, name
    for service in ("node-exporter", "cadvisor"):
        assert all(h.read_only and h.reason for h in HOST_ACCESS[service].mounts)
    assert all(h.reason for access in HOST_ACCESS.values() for h in access.mounts)


def test_the_backup_credentials_path_is_the_one_host_access_declares() -> None:
    from components.pgbackrest import CREDENTIALS_HOST_DIR
    from config.host_access import PGBACKREST_CREDENTIALS_HOST_DIR

    assert CREDENTIALS_HOST_DIR == PGBACKREST_CREDENTIALS_HOST_DIR


def test_the_gateway_serves_grafana_under_its_sub_path_only() -> None:
    import crossplane

    from render.nginx import Layout, render_nginx

    env = environment("prod")
    names = {n: f"{n}-abc123" for n, s in env.services.items() if s.routes}
    text = render_nginx(env, names, Layout())
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "nginx.conf").write_text(text)
        parsed = crossplane.parse(str(Path(tmp) / "nginx.conf"), single=True, check_ctx=False, check_args=False)
    http = next(d for d in parsed["config"][0]["parsed"] if d["directive"] == "http")["block"]
    servers = [s["block"] for s in http if s["directive"] == "server"]
    tls = next(s for s in servers if any(d["directive"] == "ssl_certificate" for d in s))
    grafana = next(d for d in tls if d["directive"] == "location" and d["args"] == ["^~", "/grafana/"])["block"]
    directives = {d["directive"]: d["args"] for d in grafana}
    assert directives["proxy_pass"] == ["$grafana"] and directives["set"] == ["$grafana", "http://grafana:3000"]
    assert directives["resolver"][0] == "127.0.0.11"
    plain_http = next(s for s in servers if any(d["directive"] == "return" and d["args"][0] == "301"
                                                for loc in s if loc["directive"] == "location" for d in loc["block"]))
    assert not any(d["directive"] == "location" and "/grafana/" in d["args"] for d in plain_http)


@pytest.mark.parametrize("stack", STACKS)
def test_synth_shows_every_monitoring_file(stack: str) -> None:
    """The reviewed output (tests/snapshots, refreshed by `ops synth`) holds each file where the host
    keeps it, with the rendered content; alertmanager.yml holds the receivers' URLs, so it is secret."""
    files = ROOT / "tests" / "snapshots" / stack / "files" / "var" / "lib" / "docker" / "volumes"
    prom = files / f"mysaaschat-{stack}-prometheus-config" / "_data"
    env = environment(stack)
    assert yaml.safe_load((prom / "prometheus.yml").read_text()) == yaml.safe_load(m.render_prometheus(env))
    assert yaml.safe_load((prom / "rules" / "alerts.yml").read_text()) == yaml.safe_load(m.render_rules(env))
    grafana = files / f"mysaaschat-{stack}-grafana-config" / "_data"
    assert (grafana / "provisioning" / "datasources" / "prometheus.yml").read_text() == m.render_datasource()
    assert {p.name for p in (grafana / "dashboards").iterdir()} == {f"{uid}.json" for uid in m.dashboards(env)}
    assert (grafana / "admin_password").read_text() == "[secret]"
    assert (files / f"mysaaschat-{stack}-alertmanager-config" / "_data" / "alertmanager.yml").read_text() == "[secret]"
