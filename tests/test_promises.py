"""Promises of the README, docs/configuration.md and the code's "why" comments, checked against the
model and never against the snapshots.

A snapshot refresh blesses whatever the program renders; these tests compare each rendered value
with what the model (or the promise itself) says it must be, so a regression made together with a
refresh still fails. `python -m bench.mutation` shows which regressions they catch.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import pytest
import yaml
from typer.testing import CliRunner

from components import pgbackrest as backup
from config import service_env
from config.checks import go_duration_ns
from ops.mocks import Registration
from ops.runner import Recording
from render import pgbackrest as pbr
from render.cloud_init import render_user_data
from tests.conftest import recording
from tests.test_graph import MONITORING, MONITORING_DATA, plain

CONTAINER = "docker:index/container:Container"
MiB = 1024 * 1024
STORES = ("postgres", "redis", "rabbitmq")


def container(rec: Recording, name: str) -> Registration:
    found = [r for r in rec.resources.values() if r.type == CONTAINER and r.name == name]
    assert len(found) == 1, name
    return found[0]


def of_type(rec: Recording, type_: str) -> list[Registration]:
    return [r for r in rec.resources.values() if r.type == type_]


def env_of(rec: Recording, name: str) -> dict[str, str]:
    return dict(item.split("=", 1) for item in plain(container(rec, name).inputs["envs"]))


def seeded(rec: Recording, kind: str) -> dict[str, str]:
    """The files the store's seed writes into its secrets volume: path -> content (unredacted)."""
    return {u["file"]: plain(u["content"]) for u in container(rec, f"{kind}-files").inputs["uploads"]}


def password(rec: Recording, kind: str) -> str:
    return seeded(rec, kind)[f"/run/secrets/{kind}-password"]


def networks(reg: Registration) -> dict[str, list[str]]:
    """Network name -> aliases."""
    return {n["name"]: n["aliases"] for n in reg.inputs["networksAdvanced"]}


def network_name(rec: Recording, role: str) -> str:
    return f"mysaaschat-{rec.stack}-{role}"


def ns(value: str) -> int:
    return go_duration_ns(value)


# --- Services: the container carries what the model says ------------------------------------------

def test_each_service_container_carries_its_model_values(rec: Recording) -> None:
    check_model_values(rec)


def test_values_other_than_the_defaults_reach_the_container_too(tmp_path: Path) -> None:
    """Each service with its own timings, limits and paths: no rendered value may be a constant that
    happens to equal today's default."""
    from config.load import CATALOG_FILE
    from ops.runner import run_stack

    catalog = yaml.safe_load(CATALOG_FILE.read_text())
    for i, svc in enumerate(catalog["services"].values()):
        svc.update({"deploy_timeout_seconds": 200 + 7 * i, "stop_grace_seconds": 25 + i, "user": f"{2000 + i}:{2000 + i}",
                    "tmpfs": ["/tmp", f"/var/cache/s{i}"], "health_path": f"/healthz/{i}",
                    "healthcheck": {"interval": f"{11 + i}s", "timeout": f"{4 + i}s", "retries": 2 + i,
                                    "start_period": f"{40 + i}s"}})
    path = tmp_path / "catalog.yaml"
    path.write_text(yaml.safe_dump(catalog))
    check_model_values(run_stack("staging", catalog=path))


def check_model_values(rec: Recording) -> None:
    for name, svc in rec.env.services.items():
        c = container(rec, name)
        i = c.inputs
        assert i["stopTimeout"] == svc.stop_grace_seconds, name
        assert i["destroyGraceSeconds"] == svc.stop_grace_seconds, name
        assert i["wait"] is True and i["waitTimeout"] == svc.deploy_timeout_seconds, name
        # The provider's default 20 minutes never cuts the wait short: 2 minutes more than the deploy timeout.
        assert ns(c.custom_timeouts["create"]) == (svc.deploy_timeout_seconds + 120) * 10**9, name
        assert i["memory"] == i["memorySwap"] == svc.memory // MiB, name
        assert float(i["cpus"]) == svc.cpu, name
        assert i["user"] == svc.user, name
        assert i["tmpfs"] == {path: "rw,noexec,nosuid,size=64m" for path in svc.tmpfs}, name
        health = i["healthcheck"]
        assert f"path:{json.dumps(svc.health_path)}" in health["tests"][-1], name
        assert "port:process.env.PORT" in health["tests"][-1] and "statusCode===200?0:1" in health["tests"][-1]
        assert health["retries"] == svc.healthcheck.retries, name
        for key, wire in (("interval", "interval"), ("timeout", "timeout"), ("start_period", "startPeriod")):
            assert ns(health[wire]) == ns(getattr(svc.healthcheck, key)), (name, key)


def test_every_image_is_kept_on_the_host_for_the_swap(rec: Recording) -> None:
    """keep_locally: during a start-first swap the old container still runs on the old image."""
    images = of_type(rec, "docker:index/remoteImage:RemoteImage")
    assert len(images) == len(rec.env.services) + len(STORES) + 1 + len(MONITORING)  # + the gateway's
    assert all(i.inputs["keepLocally"] is True for i in images)


def test_service_networks_follow_uses_and_egress(rec: Recording) -> None:
    """apps always; data only with a store; egress for `egress: true` and for every service that
    reports to Sentry (README, decided: Sentry services join the egress network)."""
    for name, svc in rec.env.services.items():
        nets = networks(container(rec, name))
        expected = {network_name(rec, "apps")}
        if svc.uses:
            expected.add(network_name(rec, "data"))
        if svc.egress or "SENTRY_DSN" in service_env(rec.env, name):
            expected.add(network_name(rec, "egress"))
        assert set(nets) == expected, name
        assert all(aliases == [name] for aliases in nets.values()), name


def test_the_derived_variables_are_what_the_reference_says(rec: Recording) -> None:
    for name, svc in rec.env.services.items():
        env = env_of(rec, name)
        assert env["PORT"] == str(svc.port), name
        assert env["SERVICE_NAME"] == name
        assert env["SENTRY_ENVIRONMENT"] == rec.stack
        assert env["FRONTEND_URL"] == f"https://{rec.env.domain}"
        assert env["NEXT_PUBLIC_API_URL"] == f"https://{rec.env.domain}/api"
        urls = {"postgres": "DATABASE_URL", "redis": "REDIS_URL", "rabbitmq": "RABBITMQ_URL"}
        assert {store for store, var in urls.items() if var in env} == set(svc.uses), name


def _users_of(rec: Recording, store: str) -> list[str]:
    return [n for n, s in sorted(rec.env.services.items()) if store in s.uses]


def _store_alias(rec: Recording, store: str) -> list[str]:
    return networks(container(rec, store))[network_name(rec, "data")]


def test_database_url_reaches_postgres_with_its_password_and_a_schema_per_service(rec: Recording) -> None:
    schemas = []
    for name in _users_of(rec, "postgres"):
        url = urlsplit(env_of(rec, name)["DATABASE_URL"])
        assert url.scheme == "postgresql"
        assert url.hostname in _store_alias(rec, "postgres") and url.port == 5432
        assert unquote(url.username or "") == rec.env.postgres.user
        assert unquote(url.password or "") == password(rec, "postgres")
        assert url.path == f"/{rec.env.postgres.database}"
        schema = parse_qs(url.query)["schema"]
        assert schema == [name.replace("-", "_")], name
        schemas += schema
    assert len(schemas) == len(set(schemas)) >= 2  # one Prisma schema per service


def test_redis_url_reaches_redis_with_its_password(rec: Recording) -> None:
    conf = seeded(rec, "redis")["/run/secrets/redis.conf"]
    port = int(re.search(r"^port (\d+)$", conf, re.M).group(1))  # type: ignore[union-attr]
    assert _users_of(rec, "redis")
    for name in _users_of(rec, "redis"):
        url = urlsplit(env_of(rec, name)["REDIS_URL"])
        assert url.scheme == "redis" and url.hostname in _store_alias(rec, "redis") and url.port == port
        assert unquote(url.password or "") == password(rec, "redis") and url.path == "/0"


def test_rabbitmq_url_reaches_rabbitmq_with_its_user_password_and_vhost(rec: Recording) -> None:
    conf = rabbitmq_settings(seeded(rec, "rabbitmq")["/run/secrets/rabbitmq.conf"])
    assert _users_of(rec, "rabbitmq")
    for name in _users_of(rec, "rabbitmq"):
        url = urlsplit(env_of(rec, name)["RABBITMQ_URL"])
        assert url.scheme == "amqp" and url.hostname in _store_alias(rec, "rabbitmq")
        assert url.port == int(conf["listeners.tcp.default"])
        assert unquote(url.username or "") == conf["default_user"] == rec.env.rabbitmq.user
        assert unquote(url.password or "") == conf["default_pass"] == password(rec, "rabbitmq")
        assert unquote(url.path[1:]) == conf["default_vhost"] == rec.env.rabbitmq.vhost


# --- Stores --------------------------------------------------------------------------------------

def rabbitmq_settings(text: str) -> dict[str, str]:
    return dict(line.split(" = ", 1) for line in text.splitlines() if line and not line.startswith("#"))


def redis_settings(text: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.partition(" ")
            out.setdefault(key, []).append(value)
    return out


def test_stores_keep_their_identity_and_their_files(rec: Recording) -> None:
    for kind in STORES:
        c = container(rec, kind)
        i = c.inputs
        # Fixed host name: RabbitMQ's node (and Mnesia directory) is rabbit@<hostname>.
        assert i["hostname"] == kind and i["name"] == f"mysaaschat-{rec.stack}-{kind}"
        assert _store_alias(rec, kind) == [kind]
        # A changed password or config replaces the store: the label is the digest of its files.
        label = next(lbl["value"] for lbl in i["labels"] if lbl["label"] == "com.mysaaschat.files-sha256")
        files = seeded(rec, kind)
        assert plain(label) == hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest(), kind
        # The seed writes them as the store's own user, readable by it alone.
        for upload in container(rec, f"{kind}-files").inputs["uploads"]:
            assert f"{upload['owner']}:{upload['group']}" == i["user"] and upload["permissions"] == "0400", kind
        # An empty Postgres runs initdb before it listens: a minute of start period for every store.
        assert ns(i["healthcheck"]["startPeriod"]) >= 60 * 10**9, kind
        volumes = {v["containerPath"]: v for v in i["volumes"]}
        assert volumes["/run/secrets"]["readOnly"] is True


def test_fixed_name_volumes_replace_delete_first_and_data_is_kept(rec: Recording) -> None:
    volumes = of_type(rec, "docker:index/volume:Volume")
    backups = rec.env.host.backup_bucket is not None
    # Data and secrets per store, the gateway's config; with backups Postgres's shared socket directory;
    # monitoring: six config volumes (Prometheus, Alertmanager, Grafana, the Postgres, Redis and blackbox
    # exporters), two data volumes.
    assert len(volumes) == 2 * len(STORES) + 1 + backups + 6 + len(MONITORING_DATA)
    for v in volumes:
        assert v.delete_before_replace is True, v.name  # a second volume with one name cannot exist
        kept = v.name.endswith("-data") or (backups and v.name == "postgres-run")  # a store writes both
        assert (v.protect, v.retain_on_delete) == ((True, True) if kept else (False, False)), v.name


def test_postgres_runs_with_the_models_settings(rec: Recording) -> None:
    spec = rec.env.postgres
    i = container(rec, "postgres").inputs
    command = i["command"]
    assert command[0] == "postgres"
    settings = dict(command[j + 1].split("=", 1) for j in range(1, len(command), 2) if command[j] == "-c")
    archiving = (pbr.postgres_settings(spec.backup, backup.runtime(spec))
                 if rec.env.host.backup_bucket is not None else {})
    assert settings == {"shared_buffers": f"{spec.shared_buffers // MiB}MB",
                        "effective_cache_size": f"{spec.effective_cache_size // MiB}MB",
                        "max_connections": str(spec.max_connections), "password_encryption": "scram-sha-256",
                        **archiving}
    env = dict(e.split("=", 1) for e in i["envs"])
    assert env["POSTGRES_USER"] == spec.user and env["POSTGRES_DB"] == spec.database
    # Password auth on loopback and the socket too, so the healthcheck proves the password.
    assert set(env["POSTGRES_INITDB_ARGS"].split()) == {"--auth-host=scram-sha-256", "--auth-local=scram-sha-256"}
    # /dev/shm: a quarter of the container's memory (Docker's default 64 MiB breaks parallel queries).
    assert i["shmSize"] == max(64, spec.memory // 4 // MiB)


def test_redis_runs_with_its_rendered_config(rec: Recording) -> None:
    spec = rec.env.redis
    files = seeded(rec, "redis")
    conf_path = "/run/secrets/redis.conf"
    assert container(rec, "redis").inputs["command"] == ["redis-server", conf_path]
    conf = redis_settings(files[conf_path])
    assert conf["requirepass"] == [password(rec, "redis")]
    assert conf["maxmemory"] == [f"{spec.maxmemory // MiB}mb"]
    assert conf["maxmemory-policy"] == [spec.maxmemory_policy]
    assert conf["appendonly"] == ["yes" if spec.appendonly else "no"]
    assert sorted(conf["rename-command"]) == ['CONFIG ""', 'DEBUG ""']


def test_rabbitmq_config_keeps_the_app_user_unprivileged_and_logs_to_the_console(rec: Recording) -> None:
    conf = rabbitmq_settings(seeded(rec, "rabbitmq")["/run/secrets/rabbitmq.conf"])
    assert conf["loopback_users.guest"] == "true"
    assert conf["default_user_tags.administrator"] == "false"
    assert (conf["log.console"], conf["log.file"]) == ("true", "false")  # the root is read-only


# --- The host ------------------------------------------------------------------------------------

def _ec2() -> Recording:
    rec = recording("prod")
    assert rec.env.host.kind == "ec2"
    return rec


def test_the_security_group_opens_web_to_all_and_ssh_to_admins_only() -> None:
    rec = _ec2()
    (group,) = of_type(rec, "aws:ec2/securityGroup:SecurityGroup")
    ingress = sorted((g["fromPort"], g["toPort"], g["protocol"], tuple(g["cidrBlocks"])) for g in group.inputs["ingress"])
    admins = tuple(rec.env.host.admin_cidrs)
    assert ingress == [(22, 22, "tcp", admins), (80, 80, "tcp", ("0.0.0.0/0",)), (443, 443, "tcp", ("0.0.0.0/0",))]
    assert "0.0.0.0/0" not in admins


def test_instance_metadata_and_disks() -> None:
    rec = _ec2()
    (instance,) = of_type(rec, "aws:ec2/instance:Instance")
    # IMDSv2, hop limit 1: a container (one hop further) cannot reach the role's credentials.
    assert instance.inputs["metadataOptions"] == {"httpEndpoint": "enabled", "httpPutResponseHopLimit": 1,
                                                  "httpTokens": "required"}
    assert "userData" in instance.secret_outputs  # it carries the host key
    (data,) = of_type(rec, "aws:ebs/volume:Volume")
    assert data.inputs["encrypted"] is True and data.inputs["type"] == "gp3"
    assert data.protect and data.retain_on_delete
    assert data.inputs["size"] * 1024**3 == rec.env.host.data_volume
    assert instance.delete_before_replace is True  # the volume and the address belong to one instance


def test_the_engine_ready_wait_checks_cloud_init_the_mount_and_docker() -> None:
    rec = _ec2()
    (wait,) = [r for r in rec.resources.values() if r.type == "command:remote:Command" and r.name.endswith("-engine-ready")]
    script = wait.inputs["create"]
    assert "cloud-init status --wait" in script
    assert "mountpoint -q /var/lib/docker" in script and "docker info" in script
    assert plain(wait.inputs["connection"])["hostKey"]  # the pinned key, never trust on first use


@pytest.mark.parametrize("variable", ["DOCKER_HOST", "DOCKER_CONTEXT", "DOCKER_CERT_PATH", "DOCKER_TLS_VERIFY",
                                      "DOCKER_CONFIG"])
def test_each_docker_variable_named_in_the_readme_stops_the_program(variable: str) -> None:
    import pulumi

    from components.host import refuse_docker_environment
    with pytest.raises(pulumi.RunError, match=variable):
        refuse_docker_environment({variable: "x"})


def test_operator_files_are_private(tmp_path: Path) -> None:
    from components.host import write_operator_files
    write_operator_files("s", host_public_key="ssh-ed25519 AAAA", private_key="KEY", home=tmp_path)
    directory = tmp_path / ".ssh" / "my-saas-chat"
    assert directory.stat().st_mode & 0o777 == 0o700
    assert {p.name: p.stat().st_mode & 0o777 for p in directory.iterdir()} == {"s.known_hosts": 0o600, "s.key": 0o600}


# --- cloud-init ----------------------------------------------------------------------------------

def user_data() -> dict[str, Any]:
    return yaml.safe_load(render_user_data(data_volume_id="vol-0abc", admin_user="admin", host_private_key="k",
                                           host_public_key="p", admin_public_key="o"))


def written(path: str) -> str:
    return next(f["content"] for f in user_data()["write_files"] if f["path"] == path)


def test_daemon_json_options() -> None:
    daemon = json.loads(written("/etc/docker/daemon.json"))
    assert daemon == {"live-restore": True, "log-driver": "json-file", "log-opts": {"max-size": "10m", "max-file": "5"},
                      "no-new-privileges": True, "userland-proxy": False,
                      "bip": "172.17.0.1/16", "metrics-addr": "172.17.0.1:9323"}


def test_docker_requires_the_data_volume_mount() -> None:
    text = written("/etc/systemd/system/docker.service.d/10-data-volume.conf")
    assert text.splitlines() == ["[Unit]", "RequiresMountsFor=/var/lib/docker"]


def test_ssh_hardening_in_user_data() -> None:
    doc = user_data()
    assert doc["ssh_genkeytypes"] == ["ed25519"]  # the pinned key is the only one: nothing generated on boot
    assert doc["ssh_pwauth"] is False and doc["disable_root"] is True and doc["ssh_deletekeys"] is True


def test_the_data_volume_mount_survives_a_late_device() -> None:
    script = user_data()["bootcmd"][0][2]
    line = next(s for s in script.splitlines() if s.startswith("line="))
    options = line.split()[3].split(",")
    assert "nofail" in options and "x-systemd.device-timeout=10min" in options


def test_security_upgrades_are_unattended() -> None:
    assert 'APT::Periodic::Unattended-Upgrade "1";' in written("/etc/apt/apt.conf.d/20auto-upgrades")
    assert ["systemctl", "enable", "--now", "unattended-upgrades"] in user_data()["runcmd"]


# --- ops: redaction fails closed ------------------------------------------------------------------

# A space, a slash, a quote and characters whose base64 holds "+" and "/": no encoding contains another.
SECRET = 'pa ss/w+rd=>>>???"0123'


@pytest.mark.parametrize("form", ["raw", "url", "url-safe", "url-plus", "json", "base64", "base64-url"])
def test_a_leaked_secret_is_found_in_every_encoding(form: str) -> None:
    import base64
    from urllib.parse import quote, quote_plus

    from ops import synth
    text = {"raw": SECRET, "url": quote(SECRET), "url-safe": quote(SECRET, safe=""), "url-plus": quote_plus(SECRET),
            "json": json.dumps(SECRET),
            "base64": base64.b64encode(SECRET.encode()).decode(),
            "base64-url": base64.urlsafe_b64encode(SECRET.encode()).decode()}[form]
    # Exactly one of the forms synth looks for is in the text: each form is needed on its own.
    assert len([f for f in synth.encodings(SECRET) if f in text]) == 1, form
    with pytest.raises(synth.SecretLeakError):
        synth.check_no_leak({"summary.md": f"x {text} y"}, {SECRET})


def test_secrets_of_eight_characters_are_looked_for() -> None:
    from ops import synth
    with pytest.raises(synth.SecretLeakError):
        synth.check_no_leak({"summary.md": "a 8charsXY b"}, {"8charsXY"})


def test_render_refuses_output_that_shows_a_secret_and_the_cli_writes_nothing(tmp_path: Path,
                                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    from ops import cli, runner, synth
    rec = recording("local")
    leaked = next(v for v in sorted(rec.secret_values) if len(v) >= 8)
    real_summary = synth.summary
    monkeypatch.setattr(synth, "summary", lambda r, redactor=None: real_summary(r, redactor) + f"\n{leaked}\n")
    with pytest.raises(synth.SecretLeakError):
        synth.render(rec)
    monkeypatch.setattr(runner, "run_stack", lambda name, secrets=None: rec)
    result = CliRunner().invoke(cli.app, ["synth", "local", "--out", str(tmp_path / "out")])
    assert result.exit_code == 1, result.output
    assert not (tmp_path / "out").exists() and not list(tmp_path.iterdir())


def test_synth_never_writes_into_the_operators_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The program pins the host key in ~/.ssh at every run; a synth does it in a throwaway home."""
    from ops.runner import run_stack
    monkeypatch.setenv("HOME", str(tmp_path))
    run_stack("prod")
    assert list(tmp_path.iterdir()) == []
