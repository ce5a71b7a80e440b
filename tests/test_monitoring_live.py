"""Live: a real Prometheus running the rendered configuration scrapes the real exporters in front of a
real PostgreSQL and Redis started here, and stopping PostgreSQL makes the real Alertmanager, running
the rendered alertmanager.yml, deliver the alert to a webhook written in this test.

The test-only rewrite, and nothing else:
- target addresses: each static target and the Alertmanager target become a loopback address; the
  services' DNS discovery (Docker's DNS, unreachable here) becomes static target groups carrying the
  `__meta_dns_name` that DNS discovery would set, so the rendered relabelling runs unchanged;
  targets not run here (cAdvisor, RabbitMQ, the gateway's exporter, dockerd) point at a closed
  loopback port;
- the containers' paths (config, data, password files, /host/proc) become temporary ones;
- timings, so the run takes seconds: scrape every 2 s, evaluation every second, every rule's `for` 2s,
  Alertmanager's group_wait and group_interval 1s.
Everything runs on 127.0.0.1 in process groups of its own, stopped by PID whatever happens.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from config import Environment, load_environment, read_stack_file
from render import monitoring as m
from render.contracts import BACKUP_LAST_SUCCESS, SERVICE_REQUEST_DURATION
from tests.conftest import require_root, require_tool, stop_group
from tests.test_monitoring import KNOWN_METRICS

ROOT = Path(__file__).resolve().parent.parent
NOT_RUN_HERE = ("cadvisor", "rabbitmq", "gateway", "docker")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(what: str, check: Callable[[], bool], timeout: float) -> float:
    # A deadline, not a measurement: the waits return as soon as the check holds, so a loaded
    # machine (CI's two cores running both xdist workers) gets twice the time before a verdict.
    timeout *= 2
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        try:
            if check():
                return time.monotonic() - start
        except OSError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as answer:
        return str(answer.read().decode())


class Recorder(BaseHTTPRequestHandler):
    """The webhook receiver, and the services' /metrics stub, in one."""

    received: list[dict[str, Any]] = []
    metric_paths: list[str] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        Recorder.received.append(json.loads(body))
        self.send_response(200)
        self.end_headers()

    def do_GET(self) -> None:
        Recorder.metric_paths.append(self.path)
        text = (f"# TYPE {SERVICE_REQUEST_DURATION} histogram\n"
                f'{SERVICE_REQUEST_DURATION}_bucket{{status_code="200",le="+Inf"}} 3\n'
                f'{SERVICE_REQUEST_DURATION}_sum{{status_code="200"}} 0.3\n'
                f'{SERVICE_REQUEST_DURATION}_count{{status_code="200"}} 3\n').encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        self.send_header("Content-Length", str(len(text)))
        self.end_headers()
        self.wfile.write(text)

    def log_message(self, *args: object) -> None:
        pass


def query(prom: int, expr: str) -> list[dict[str, Any]]:
    answer = json.loads(get(f"http://127.0.0.1:{prom}/api/v1/query?query={urllib.parse.quote(expr)}"))
    assert answer["status"] == "success", answer
    return list(answer["data"]["result"])


def rewrite_prometheus(config: dict[str, Any], ports: dict[str, int], closed: int, services_port: int,
                       rules_glob: str, alertmanager: int) -> dict[str, Any]:
    # 2s, not 1s: with its database down, postgres_exporter 0.11 answers only after about a second
    # (measured: 1.01 s), so a 1 s scrape timeout would report the exporter itself down, not pg_up 0.
    config["global"]["scrape_interval"] = "2s"
    config["global"]["evaluation_interval"] = "1s"
    config["rule_files"] = [rules_glob]
    config["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] = [f"127.0.0.1:{alertmanager}"]
    for job in config["scrape_configs"]:
        name = job["job_name"]
        if name == m.GATEWAY_TLS_JOB:
            # The probed URL stays (nothing answers it here); the exporter's address moves.
            relabel = job["relabel_configs"][-1]
            assert relabel["target_label"] == "__address__"
            relabel["replacement"] = f"127.0.0.1:{ports.get('blackbox', closed)}"
        elif "static_configs" in job:
            job["static_configs"][0]["targets"] = [f"127.0.0.1:{ports.get(name, closed)}"]
        else:
            assert name == m.SERVICES_JOB and set(job) == {"job_name", "dns_sd_configs", "relabel_configs"}
            job["static_configs"] = [{"targets": [f"127.0.0.1:{services_port}"],
                                      "labels": {"__meta_dns_name": sd["names"][0]}} for sd in job.pop("dns_sd_configs")]
    return config


def replace_args(argv: list[str], replacements: dict[str, str]) -> list[str]:
    """Rendered flags with their values moved: `--flag=value` keeps its flag, the value changes."""
    out = []
    for arg in argv:
        flag = arg.split("=", 1)[0]
        out.append(f"{flag}={replacements[flag]}" if flag in replacements else arg)
    return out


@pytest.fixture
def tools() -> dict[str, str]:
    names = {"prometheus": "prometheus", "alertmanager": "prometheus-alertmanager",
             "node": "prometheus-node-exporter", "postgres_exporter": "prometheus-postgres-exporter",
             "redis_exporter": "prometheus-redis-exporter", "redis": "redis-server", "redis_cli": "redis-cli",
             "runuser": "runuser"}
    found = {key: require_tool(tool) for key, tool in names.items()}
    bindir = next(iter(sorted(Path("/usr/lib/postgresql").glob("*/bin"))), None)
    if bindir is None:
        require_tool("pg_ctl")  # fails in CI, skips elsewhere
        raise AssertionError("unreachable")
    found["pg_bin"] = str(bindir)
    require_root("the live monitoring test runs PostgreSQL as the postgres user (needs root)")
    return found


@pytest.fixture
def pg_dir() -> Iterator[Path]:
    # pytest's tmp dirs are root-only (0700); the postgres user needs a directory of its own.
    base = Path(tempfile.mkdtemp(prefix="mon-pg-"))
    base.chmod(0o755)
    try:
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_prometheus_scrapes_real_exporters_and_a_stopped_postgres_reaches_the_webhook(
        tools: dict[str, str], pg_dir: Path, tmp_path: Path) -> None:
    started = time.monotonic()
    env: Environment = load_environment(read_stack_file(ROOT / "Pulumi.prod.yaml"))
    mon_password, redis_password = "pg-correct-horse", "redis-correct-horse"
    port = {k: free_port() for k in ("pg", "redis", "prometheus", "alertmanager", "node", "postgres", "redis_exp",
                                     "http", "closed")}
    Recorder.received, Recorder.metric_paths = [], []
    http = ThreadingHTTPServer(("127.0.0.1", port["http"]), Recorder)
    threading.Thread(target=http.serve_forever, daemon=True).start()

    # PostgreSQL, as the store is configured (database, user, max_connections from the model).
    as_pg = [tools["runuser"], "-u", "postgres", "--"]
    (pg_dir / "pw").write_text(mon_password)
    shutil.chown(pg_dir, "postgres")
    shutil.chown(pg_dir / "pw", "postgres")
    subprocess.run([*as_pg, f"{tools['pg_bin']}/initdb", "-D", str(pg_dir / "data"), "-U", env.postgres.user,
                    "-A", "scram-sha-256", f"--pwfile={pg_dir / 'pw'}"], check=True, capture_output=True)
    postgres = subprocess.Popen(
        [*as_pg, f"{tools['pg_bin']}/postgres", "-D", str(pg_dir / "data"), "-p", str(port["pg"]), "-k", str(pg_dir),
         "-c", "listen_addresses=127.0.0.1", "-c", f"max_connections={env.postgres.max_connections}"],
        start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        pg_env = {**os.environ, "PGPASSWORD": mon_password}
        wait_for("postgres", lambda: subprocess.run(
            [f"{tools['pg_bin']}/pg_isready", "-h", "127.0.0.1", "-p", str(port["pg"])], capture_output=True).returncode == 0,
            20)
        subprocess.run([f"{tools['pg_bin']}/createdb", "-h", "127.0.0.1", "-p", str(port["pg"]), "-U", env.postgres.user,
                        env.postgres.database], check=True, capture_output=True, env=pg_env)
        _run_the_rest(env, tools, port, postgres, tmp_path, mon_password, redis_password, started)
    finally:
        stop_group(postgres)
        http.shutdown()


def _run_the_rest(env: Environment, tools: dict[str, str], port: dict[str, int], postgres: subprocess.Popen[bytes],
                  tmp: Path, pg_password: str, redis_password: str, started: float) -> None:
    # Files the containers read, at temporary paths.
    (tmp / "pg-pass").write_text(pg_password)
    redis_addr = f"redis://127.0.0.1:{port['redis']}"
    (tmp / "redis-passwords.json").write_text(
        json.dumps({redis_addr: json.loads(m.redis_password_file(redis_password))["redis://redis:6379"]}))
    textfile = tmp / "textfile"
    textfile.mkdir()
    # A backup job's file, as the backup work will write it (render/contracts.py).
    (textfile / "backup.prom").write_text(f'{BACKUP_LAST_SUCCESS}{{stanza="main",type="full"}} {int(time.time())}\n')
    rules = tmp / "rules"
    rules.mkdir()
    rendered_rules = yaml.safe_load(m.render_rules(env))
    for rule in rendered_rules["groups"][0]["rules"]:
        rule["for"] = "2s"
    (rules / "alerts.yml").write_text(yaml.safe_dump(rendered_rules))
    config = rewrite_prometheus(
        yaml.safe_load(m.render_prometheus(env)),
        {"prometheus": port["prometheus"], "alertmanager": port["alertmanager"], "node": port["node"],
         "postgres": port["postgres"], "redis": port["redis_exp"]},
        port["closed"], port["http"], str(rules / "*.yml"), port["alertmanager"])
    (tmp / "prometheus.yml").write_text(yaml.safe_dump(config))
    am = yaml.safe_load(m.render_alertmanager(env, {r.name: f"http://127.0.0.1:{port['http']}/hook/{r.name}"
                                                    for r in env.monitoring.receivers}))
    am["route"]["group_wait"] = am["route"]["group_interval"] = "1s"
    (tmp / "alertmanager.yml").write_text(yaml.safe_dump(am))

    pg_exporter_env = {**os.environ, **m.postgres_exporter_env(env)}
    pg_exporter_env["DATA_SOURCE_URI"] = pg_exporter_env["DATA_SOURCE_URI"].replace("postgres:5432",
                                                                                    f"127.0.0.1:{port['pg']}")
    pg_exporter_env["DATA_SOURCE_PASS_FILE"] = str(tmp / "pg-pass")
    argv = {
        "redis": [tools["redis"], "--port", str(port["redis"]), "--bind", "127.0.0.1", "--requirepass", redis_password,
                  "--save", "", "--appendonly", "no", "--maxmemory", str(env.redis.maxmemory)],
        "redis_exp": [tools["redis_exporter"], *replace_args(m.redis_exporter_command(), {
            "--redis.addr": redis_addr, "--redis.password-file": str(tmp / "redis-passwords.json"),
            "--web.listen-address": f"127.0.0.1:{port['redis_exp']}"})],
        "postgres": [tools["postgres_exporter"], f"--web.listen-address=127.0.0.1:{port['postgres']}"],
        "node": [tools["node"], *replace_args(m.node_exporter_command(), {
            "--path.procfs": "/proc", "--path.sysfs": "/sys", "--path.rootfs": "/",
            "--collector.textfile.directory": str(textfile), "--web.listen-address": f"127.0.0.1:{port['node']}"})],
        "alertmanager": [tools["alertmanager"], *replace_args(m.alertmanager_command(), {
            "--config.file": str(tmp / "alertmanager.yml"), "--storage.path": str(tmp / "am-data"),
            "--web.listen-address": f"127.0.0.1:{port['alertmanager']}"})],
        "prometheus": [tools["prometheus"], *replace_args(m.prometheus_command(env), {
            "--config.file": str(tmp / "prometheus.yml"), "--storage.tsdb.path": str(tmp / "prom-data"),
            "--web.listen-address": f"127.0.0.1:{port['prometheus']}"})],
    }
    assert f"--storage.tsdb.retention.time={env.monitoring.retention}" in argv["prometheus"]
    logs = {name: open(tmp / f"{name}.log", "wb") for name in argv}  # noqa: SIM115 - closed below
    procs: dict[str, subprocess.Popen[bytes]] = {}
    try:
        for name, cmd in argv.items():
            procs[name] = subprocess.Popen(cmd, start_new_session=True, stdout=logs[name], stderr=subprocess.STDOUT,
                                           env=pg_exporter_env if name == "postgres" else None, cwd=tmp)
        subprocess.run([tools["redis_cli"], "-p", str(port["redis"]), "-a", redis_password, "--no-auth-warning",
                        "set", "k", "v"], capture_output=True, timeout=10)
        prom = port["prometheus"]

        def up(job: str) -> list[float]:
            return [float(r["value"][1]) for r in query(prom, f'up{{job="{job}"}}')]

        running_jobs = ("prometheus", "alertmanager", "node", "postgres", "redis")
        wait_for("every running target up", lambda: all(up(j) == [1.0] for j in running_jobs)
                 and len(up(m.SERVICES_JOB)) == len(env.services) and all(v == 1.0 for v in up(m.SERVICES_JOB)), 30)
        wait_for("pg_up and redis_up", lambda: [float(r["value"][1]) for r in query(prom, "pg_up")] == [1.0]
                 and [float(r["value"][1]) for r in query(prom, "redis_up")] == [1.0], 15)
        # The services' targets carry the rendered relabelling: the service label and its metrics path.
        services = {r["metric"]["service"] for r in query(prom, f'up{{job="{m.SERVICES_JOB}"}}')}
        assert services == set(env.services)
        assert set(Recorder.metric_paths) == {s.metrics.path for s in env.services.values() if s.metrics}
        # Targets this test does not run are configured and scraped, and down.
        wait_for("the jobs not run here scraped and down", lambda: all(up(job) == [0.0] for job in NOT_RUN_HERE), 15)
        # The metric names the dashboards and alerts use exist in the real exporters' output.
        for job in ("node", "postgres", "redis"):
            names = {r["metric"]["__name__"] for r in query(prom, f'{{job="{job}"}}')}
            missing = KNOWN_METRICS[job] - names
            assert not missing, f"{job} does not expose {missing}"
        assert query(prom, BACKUP_LAST_SUCCESS), "the textfile collector did not pass the backup metric"
        assert not [r for r in Recorder.received if any(a["labels"]["alertname"] == "PostgresDown" for a in r["alerts"])]

        # Stop PostgreSQL: the exporter keeps answering with pg_up 0, the rule fires, Alertmanager delivers.
        stop_group(postgres)
        stopped = time.monotonic()

        def delivered() -> bool:
            return any(a["labels"]["alertname"] == "PostgresDown" and a["status"] == "firing"
                       for body in Recorder.received for a in body["alerts"])

        try:
            wait_for("PostgresDown at the webhook", delivered, 30)
        except AssertionError:
            print("pg_up", query(prom, "pg_up"), "ALERTS", query(prom, "ALERTS"),
                  "received", [a["labels"]["alertname"] for b in Recorder.received for a in b["alerts"]])
            print((tmp / "alertmanager.log").read_text()[-3000:])
            raise
        latency = time.monotonic() - stopped
        body = next(b for b in Recorder.received if any(a["labels"]["alertname"] == "PostgresDown" for a in b["alerts"]))
        alert = next(a for a in body["alerts"] if a["labels"]["alertname"] == "PostgresDown")
        assert alert["labels"]["severity"] == "critical" and alert["labels"]["stack"] == env.stack
        assert body["receiver"] == env.monitoring.receivers[0].name
        total = time.monotonic() - started
        print(f"PostgresDown delivered {latency:.1f}s after the stop; whole test {total:.1f}s")
        assert total < 60
    finally:
        for proc in procs.values():
            stop_group(proc)
        for log in logs.values():
            log.close()


RABBIT_BIN = Path("/usr/lib/rabbitmq/bin")


def test_prometheus_scrapes_rabbitmqs_builtin_endpoint(tmp_path: Path) -> None:
    """RabbitMQ's own Prometheus endpoint (rabbitmq_prometheus, which the official image enables), with
    the program's rendered rabbitmq.conf, scraped by a real Prometheus on the rendered configuration."""
    from render.datastores import rabbitmq_conf
    from tests.conftest import server_group

    prometheus = require_tool("prometheus")
    if not (RABBIT_BIN / "rabbitmq-server").exists():
        require_tool("rabbitmq-server")
    env = load_environment(read_stack_file(ROOT / "Pulumi.prod.yaml"))
    port = {k: free_port() for k in ("amqp", "metrics", "dist", "epmd", "prometheus", "closed")}
    conf = tmp_path / "rabbitmq.conf"
    # The rendered config with its ports moved; the plugin is enabled as the official image does
    # (docker-library/rabbitmq Dockerfile: `rabbitmq-plugins enable --offline rabbitmq_prometheus`).
    conf.write_text(rabbitmq_conf(env.rabbitmq, "s3cret-rabbit").replace("= 5672", f"= {port['amqp']}")
                    + f"prometheus.tcp.port = {port['metrics']}\nprometheus.tcp.ip = 127.0.0.1\n")
    (tmp_path / "plugins").write_text("[rabbitmq_prometheus].")
    rabbit_env = {**os.environ, "PATH": f"{RABBIT_BIN}:{os.environ['PATH']}", "HOME": str(tmp_path),
                  "RABBITMQ_NODENAME": f"mon{port['amqp']}@localhost", "RABBITMQ_DIST_PORT": str(port["dist"]),
                  "RABBITMQ_MNESIA_BASE": str(tmp_path / "mnesia"), "RABBITMQ_LOG_BASE": str(tmp_path / "log"),
                  "RABBITMQ_CONFIG_FILE": str(conf), "RABBITMQ_ENABLED_PLUGINS_FILE": str(tmp_path / "plugins"),
                  "RABBITMQ_PID_FILE": str(tmp_path / "pid"), "ERL_CRASH_DUMP": str(tmp_path / "erl_crash.dump"),
                  "ERL_EPMD_PORT": str(port["epmd"])}
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "alerts.yml").write_text(m.render_rules(env))
    config = rewrite_prometheus(yaml.safe_load(m.render_prometheus(env)),
                                {"prometheus": port["prometheus"], "rabbitmq": port["metrics"]}, port["closed"],
                                port["closed"], str(rules / "*.yml"), port["closed"])
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    epmd = shutil.which("epmd") or "epmd"
    with server_group([epmd, "-port", str(port["epmd"])], cwd=tmp_path), \
            server_group(["rabbitmq-server"], env=rabbit_env, cwd=tmp_path), \
            server_group([prometheus, *replace_args(m.prometheus_command(env), {
                "--config.file": str(tmp_path / "prometheus.yml"), "--storage.tsdb.path": str(tmp_path / "prom-data"),
                "--web.listen-address": f"127.0.0.1:{port['prometheus']}"})], cwd=tmp_path):
        prom = port["prometheus"]
        wait_for("RabbitMQ's metrics endpoint", lambda: "rabbitmq_" in get(f"http://127.0.0.1:{port['metrics']}/metrics"),
                 90)
        wait_for("up{job=rabbitmq} == 1", lambda: [float(r["value"][1]) for r in query(prom, 'up{job="rabbitmq"}')]
                 == [1.0], 30)
        names = {r["metric"]["__name__"] for r in query(prom, '{job="rabbitmq"}')}
        missing = KNOWN_METRICS["rabbitmq"] - names
        assert not missing, f"RabbitMQ does not expose {missing}"


def test_prometheus_scrapes_the_gateways_stub_status_through_the_nginx_exporter(tmp_path: Path) -> None:
    """The gateway's rendered stub_status server (render/nginx.py status_server) in real nginx, read by
    the real nginx-prometheus-exporter with the rendered flags, scraped by Prometheus as the `gateway` job."""
    import crossplane

    from render.nginx import Layout, d, status_server
    from tests.conftest import server_group

    nginx, exporter, prometheus = (require_tool("nginx"), require_tool("prometheus-nginx-exporter"),
                                   require_tool("prometheus"))
    env = load_environment(read_stack_file(ROOT / "Pulumi.prod.yaml"))
    port = {k: free_port() for k in ("status", "exporter", "prometheus", "closed")}
    layout = Layout(listen_address="127.0.0.1", status_port=port["status"])
    t = tmp_path
    conf = [d("pid", f"{t}/nginx.pid"), d("error_log", f"{t}/error.log"), d("events", block=[]),
            d("http", block=[d("client_body_temp_path", f"{t}/cb"), d("proxy_temp_path", f"{t}/px"),
                             d("fastcgi_temp_path", f"{t}/fc"), d("uwsgi_temp_path", f"{t}/uw"),
                             d("scgi_temp_path", f"{t}/sc"), status_server(layout)])]
    (t / "nginx.conf").write_text(crossplane.build(conf) + "\n")
    rules = t / "rules"
    rules.mkdir()
    (rules / "alerts.yml").write_text(m.render_rules(env))
    config = rewrite_prometheus(yaml.safe_load(m.render_prometheus(env)),
                                {"prometheus": port["prometheus"], "gateway": port["exporter"]}, port["closed"],
                                port["closed"], str(rules / "*.yml"), port["closed"])
    (t / "prometheus.yml").write_text(yaml.safe_dump(config))
    exporter_args = replace_args(m.nginx_exporter_command("gateway"), {
        "--nginx.scrape-uri": f"http://127.0.0.1:{port['status']}{m.GATEWAY_STATUS_PATH}",
        "--web.listen-address": f"127.0.0.1:{port['exporter']}"})
    with server_group([nginx, "-p", f"{t}/", "-c", f"{t}/nginx.conf", "-g", "daemon off;"], cwd=t), \
            server_group([exporter, *exporter_args], cwd=t), \
            server_group([prometheus, *replace_args(m.prometheus_command(env), {
                "--config.file": str(t / "prometheus.yml"), "--storage.tsdb.path": str(t / "prom-data"),
                "--web.listen-address": f"127.0.0.1:{port['prometheus']}"})], cwd=t):
        wait_for("stub_status", lambda: "Active connections" in get(
            f"http://127.0.0.1:{port['status']}{m.GATEWAY_STATUS_PATH}"), 10)
        # Anything else on the status port is a 404: it serves the counters and nothing more.
        with pytest.raises(urllib.error.HTTPError) as refused:
            get(f"http://127.0.0.1:{port['status']}/")
        assert refused.value.code == 404
        prom = port["prometheus"]
        wait_for("up{job=gateway} == 1", lambda: [float(r["value"][1]) for r in query(prom, 'up{job="gateway"}')]
                 == [1.0], 30)
        names = {r["metric"]["__name__"] for r in query(prom, '{job="gateway"}')}
        missing = KNOWN_METRICS["gateway"] - names
        assert not missing, f"the nginx exporter does not expose {missing}"


def test_the_gateway_serves_grafana_under_its_sub_path_resolved_at_request_time(tmp_path: Path) -> None:
    """The rendered nginx.conf in real nginx: /grafana/ reaches the container named `grafana` through
    the DNS resolver (Docker's 127.0.0.11 there, a dnslib server here: the resolver address is the only
    rewrite) with the sub path kept, as serve_from_sub_path expects; and with Grafana gone, the gateway
    still serves everything else."""
    import crossplane
    from dnslib import QTYPE, RR, A
    from dnslib.server import BaseResolver, DNSLogger, DNSServer

    from render.nginx import Layout, render_nginx
    from tests.conftest import server_group

    nginx, openssl = require_tool("nginx"), require_tool("openssl")
    require_tool("unshare")
    require_root("needs root (a private mount namespace for /etc/hosts)")
    env = load_environment(read_stack_file(ROOT / "Pulumi.prod.yaml"))
    worker = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0) % 200
    grafana_ip = f"127.5.{worker}.20"
    base = Path(tempfile.mkdtemp(prefix="mon-gw-"))
    base.chmod(0o755)
    seen: list[str] = []

    class Grafana(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append(self.path)
            self.send_response(200)
            self.send_header("Content-Length", "7")
            self.end_headers()
            self.wfile.write(b"grafana")

        def log_message(self, *args: object) -> None:
            pass

    class Docker127011(BaseResolver):  # type: ignore[misc]
        def resolve(self, request: Any, handler: Any) -> Any:
            reply = request.reply()
            if str(request.q.qname).rstrip(".") == m.grafana_alias() and request.q.qtype == QTYPE.A:
                reply.add_answer(RR(request.q.qname, QTYPE.A, rdata=A(grafana_ip), ttl=1))
            return reply

    dns_port = free_port()
    dns = DNSServer(Docker127011(), port=dns_port, address="127.0.0.1",
                    logger=DNSLogger(log="-request,-reply,-truncated,-error,-recv,-send,-data"))
    grafana = ThreadingHTTPServer((grafana_ip, m.GRAFANA_PORT), Grafana)
    try:
        dns.start_thread()
        threading.Thread(target=grafana.serve_forever, daemon=True).start()
        layout = Layout(conf_dir=str(base), temp_dir=str(base / "tmp"), http_port=free_port(), https_port=free_port(),
                        status_port=free_port(), listen_address="127.0.0.1", access_log=str(base / "access.log"),
                        error_log=str(base / "error.log"))
        (base / "tmp").mkdir()
        (base / "tls").mkdir()
        subprocess.run([openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                        "-subj", f"/CN={env.domain}", "-days", "1", "-keyout", layout.key, "-out", layout.cert],
                       check=True, capture_output=True)
        names = {n: f"{n}-c0ffee" for n, s in env.services.items() if s.routes}
        # nginx resolves the upstream servers when it loads: a private /etc/hosts names them (nothing answers).
        (base / "hosts").write_text("127.0.0.1 localhost\n" + "".join(f"127.0.0.1 {c}\n" for c in names.values()))
        (base / "rendered.conf").write_text(render_nginx(env, names, layout))
        parsed = crossplane.parse(str(base / "rendered.conf"), single=True, check_ctx=False, check_args=False)
        tree = parsed["config"][0]["parsed"]
        resolvers = []

        def walk(nodes: list[dict[str, Any]]) -> None:
            for node in nodes:
                if node["directive"] == "resolver":
                    node["args"][0] = f"127.0.0.1:{dns_port}"
                    resolvers.append(node)
                walk(node.get("block", []))

        walk(tree)
        assert len(resolvers) == 1
        (base / "nginx.conf").write_text(crossplane.build(tree) + "\n")
        command = (f"mount --bind {base}/hosts /etc/hosts && exec {nginx} -p {base}/ -c {base}/nginx.conf "
                   "-g 'daemon off;'")
        with server_group(["unshare", "--mount", "sh", "-c", command], cwd=base):
            import http.client
            import ssl

            context = ssl.create_default_context(cafile=layout.cert)
            context.check_hostname = False

            def request(path: str) -> tuple[int, dict[str, str], bytes]:
                conn = http.client.HTTPSConnection("127.0.0.1", layout.https_port, context=context, timeout=5)
                try:
                    conn.request("GET", path, headers={"Host": env.domain})
                    answer = conn.getresponse()
                    return answer.status, {k.lower(): v for k, v in answer.getheaders()}, answer.read()
                finally:
                    conn.close()

            wait_for("nginx", lambda: request("/healthz")[0] == 200, 10)
            status, headers, body = request("/grafana/api/health?x=1")
            assert (status, body) == (200, b"grafana") and seen == ["/grafana/api/health?x=1"]
            assert headers["strict-transport-security"].startswith("max-age=")
            status, headers, _ = request("/grafana")
            assert status == 301 and headers["location"].endswith("/grafana/")
            # Grafana gone: its path fails fast, the gateway keeps serving.
            grafana.shutdown()
            grafana.server_close()
            started = time.monotonic()
            assert request("/grafana/login")[0] == 502
            assert time.monotonic() - started < 2
            assert request("/healthz")[0] == 200
    finally:
        dns.stop()
        grafana.server_close()
        shutil.rmtree(base, ignore_errors=True)
