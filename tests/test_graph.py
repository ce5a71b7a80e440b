"""Properties of the recorded resource graph that must hold for every container, in every stack."""

from __future__ import annotations

import json
from typing import Any

from ops.mocks import Registration
from ops.runner import Recording
from ops.strict import SECRET_SIG

CONTAINER = "docker:index/container:Container"
STORES = {"postgres", "redis", "rabbitmq"}
GATEWAY = "gateway"
# components/monitoring.py: Prometheus and Alertmanager keep data (stateful); the others are stateless.
MONITORING = {"prometheus", "alertmanager", "grafana", "node-exporter", "cadvisor", "postgres-exporter",
              "redis-exporter", "nginx-exporter", "blackbox-exporter"}
MONITORING_DATA = {"prometheus", "alertmanager"}


def _lifecycle(reg: Registration) -> str:
    return next(lbl["value"] for lbl in reg.inputs["labels"] if lbl["label"] == "com.mysaaschat.lifecycle")


def containers(rec: Recording) -> list[Registration]:
    """The containers that run (services, stores, the gateway, the backup scheduler where the stack has a
    repository), not the never-started seeds."""
    found = [r for r in rec.resources.values() if r.type == CONTAINER and _lifecycle(r) != "seed"]
    assert len(found) == (len(rec.env.services) + len(STORES) + 1 + len(MONITORING)
                          + (rec.env.host.backup_bucket is not None))
    return found


def seeds(rec: Recording) -> list[Registration]:
    return [r for r in rec.resources.values() if r.type == CONTAINER and _lifecycle(r) == "seed"]


def test_no_upload_targets_a_read_only_container(rec: Recording) -> None:
    """Docker refuses every upload into a read-only container: the provider extracts its tar at "/"
    and moby checks that directory, not the entries (daemon/archive.go containerExtractToDir:
    `!toVolume && ReadonlyRootfs` -> "container rootfs is marked read-only")."""
    for c in rec.resources.values():
        if c.type == CONTAINER and c.inputs.get("uploads"):
            assert c.inputs.get("readOnly") is not True, c.name


def test_seeds_never_run_and_hold_no_privilege(rec: Recording) -> None:
    with_files = (*STORES, GATEWAY, "prometheus", "alertmanager", "grafana", "postgres-exporter", "redis-exporter",
                  "blackbox-exporter")
    assert {s.name for s in seeds(rec)} == {f"{k}-files" for k in with_files}
    for s in seeds(rec):
        i = s.inputs
        assert i["start"] is False and i["mustRun"] is False and i["restart"] == "no", s.name
        assert i["networkMode"] == "none" and "networksAdvanced" not in i, s.name
        assert i["capabilities"] == {"drops": ["ALL"]} and i["securityOpts"] == ["no-new-privileges:true"], s.name
        assert i["uploads"] and all(u["permissions"] == "0400" for u in i["uploads"]), s.name
    for store in (c for c in containers(rec) if c.name in with_files):
        seed = next(s for s in seeds(rec) if s.name == f"{store.name}-files")
        assert seed.urn in store.dependencies, store.name  # the files exist before the store starts
        seeded = {v["volumeName"] for v in seed.inputs["volumes"]}
        mounted = {v["volumeName"]: v for v in store.inputs["volumes"] if "volumeName" in v}
        assert seeded <= set(mounted) and all(mounted[v]["readOnly"] for v in seeded), store.name


def plain(value: Any) -> Any:
    while isinstance(value, dict) and SECRET_SIG in value:
        value = value["value"]
    return value


def test_every_container_is_hardened(rec: Recording) -> None:
    for c in containers(rec):
        i = c.inputs
        uid = str(i["user"]).split(":")[0]
        assert uid.isdigit() and int(uid) > 0, c.name
        assert i["readOnly"] is True, c.name
        assert i["capabilities"] == {"drops": ["ALL"]}, c.name
        assert i["securityOpts"] == ["no-new-privileges:true"], c.name
        assert i["memory"] > 0 and i["memorySwap"] == i["memory"] and float(i["cpus"]) > 0, c.name
        assert i["restart"] == "unless-stopped" and i["init"] is True, c.name
        assert i["logDriver"] == "json-file" and i["logOpts"]["max-size"], c.name
        assert i["stopTimeout"] >= 1, c.name
        assert i["healthcheck"]["tests"][0] in ("CMD", "CMD-SHELL"), c.name
        labels = {lbl["label"]: lbl["value"] for lbl in i["labels"]}
        assert labels["com.mysaaschat.stack"] == rec.stack
        assert labels["com.mysaaschat.image-digest"].split("@")[1].startswith("sha256:")


def test_only_the_gateway_publishes_ports(rec: Recording) -> None:
    for c in containers(rec):
        if c.name != GATEWAY:
            assert not c.inputs.get("ports"), c.name
    gateway = next(c for c in containers(rec) if c.name == GATEWAY)
    # Unprivileged inside (no NET_BIND_SERVICE: capabilities are checked above), 80/443 on the host.
    assert {(p["external"], p["internal"]) for p in gateway.inputs["ports"]} == {(80, 8080), (443, 8443)}
    assert all(int(p["internal"]) >= 1024 for p in gateway.inputs["ports"])


def test_gateway_sits_on_apps_and_edge(rec: Recording) -> None:
    networks = {r.inputs["name"]: r for r in rec.resources.values() if r.type == "docker:index/network:Network"}
    gateway = next(c for c in containers(rec) if c.name == GATEWAY)
    attached = {networks[n["name"]].name for n in gateway.inputs["networksAdvanced"]}
    assert attached == {"net-apps", "net-edge"}
    assert networks[f"mysaaschat-{rec.stack}-edge"].inputs["internal"] is False  # published ports need a route
    assert networks[f"mysaaschat-{rec.stack}-apps"].inputs["internal"] is True
    for c in containers(rec):  # the edge holds the gateway alone
        if c.name != GATEWAY:
            assert f"mysaaschat-{rec.stack}-edge" not in {n["name"] for n in c.inputs["networksAdvanced"]}, c.name


def test_a_config_change_reloads_the_gateway_and_never_replaces_it(rec: Recording) -> None:
    """The gateway carries no digest of its files (a change must not replace a container that holds
    ports 80/443); the reload command is triggered by that digest and runs after the seed wrote the
    files, after the gateway runs, and after every routed service's container is created healthy."""
    gateway = next(c for c in containers(rec) if c.name == GATEWAY)
    labels = {lbl["label"] for lbl in gateway.inputs["labels"]}
    assert not any("sha256" in label for label in labels)
    assert gateway.delete_before_replace and gateway.inputs["name"] == f"mysaaschat-{rec.stack}-gateway"
    seed = next(s for s in seeds(rec) if s.name == "gateway-files")
    [reload] = [r for r in rec.resources.values() if r.name == "gateway-reload"]
    assert reload.type == ("command:remote:Command" if rec.env.host.kind == "ec2" else "command:local:Command")
    assert reload.inputs["triggers"] and len(reload.inputs["triggers"][0]) == 64
    create = reload.inputs["create"]
    assert create.index("nginx -c /etc/mysaaschat-gateway/nginx.conf -t") < create.index("-s reload")
    assert " && " in create  # no reload of a configuration nginx refused
    assert {seed.urn, gateway.urn} <= set(reload.dependencies)
    routed = {c.urn for c in containers(rec) if c.name in rec.env.services and rec.env.services[c.name].routes}
    assert routed and routed <= set(reload.dependencies)
    # The files name the containers, so the seed itself follows every routed container.
    assert routed <= set(seed.dependencies)
    if rec.env.host.kind == "ec2":
        wait = next(r for r in rec.resources.values() if r.name == "host-engine-ready")
        assert plain(reload.inputs["connection"]) == plain(wait.inputs["connection"])


def test_data_stores_sit_only_on_the_internal_data_network(rec: Recording) -> None:
    networks = {r.urn: r for r in rec.resources.values() if r.type == "docker:index/network:Network"}
    by_name = {n.inputs["name"]: n for n in networks.values()}
    for c in containers(rec):
        attached = [by_name[n["name"]] for n in c.inputs["networksAdvanced"]]
        if c.name in STORES:
            # Postgres with a backup repository also reaches S3 (archive_command runs in it), through a
            # network of its own that only its scheduler shares (components/backup.py).
            backups = c.name == "postgres" and rec.env.host.backup_bucket is not None
            assert [n.name for n in attached] == ["net-data", *(["postgres-backup-net"] if backups else [])], c.name
            assert attached[0].inputs["internal"] is True
        if any(n.name == "postgres-backup-net" for n in attached):
            assert c.name in ("postgres", "postgres-backup"), c.name
        svc = rec.env.services.get(c.name)
        if svc is not None:
            assert ("net-egress" in [n.name for n in attached]) == svc.needs_egress, c.name
            if "SENTRY_DSN" in svc.secrets:  # reporting errors needs a route out
                assert "net-egress" in [n.name for n in attached], c.name
            assert ("net-data" in [n.name for n in attached]) == bool(svc.uses), c.name
        assert all(n["aliases"] == [c.name] for n in c.inputs["networksAdvanced"])


def test_stateful_volumes_are_protected_and_retained(rec: Recording) -> None:
    volumes = [r for r in rec.resources.values() if r.type == "docker:index/volume:Volume" and r.name.endswith("-data")]
    assert {v.name for v in volumes} == {f"{s}-data" for s in (*STORES, *MONITORING_DATA)}
    assert all(v.protect and v.retain_on_delete for v in volumes)
    ebs = [r for r in rec.resources.values() if r.type == "aws:ebs/volume:Volume"]
    assert len(ebs) == (1 if rec.env.host.kind == "ec2" else 0)
    assert all(v.protect and v.retain_on_delete and v.inputs["encrypted"] for v in ebs)


def test_replacement_strategy(rec: Recording) -> None:
    for c in containers(rec):
        # Explicit either way: pulumi-docker defaults containers to delete-before-replace.
        assert c.delete_before_replace_defined, c.name
        if c.name == GATEWAY:
            # Ports 80/443 are held by one container at a time: stop-first, fixed name.
            assert c.replace_on_changes == ["healthcheck"] and c.delete_before_replace, c.name
            assert c.inputs["wait"] is True
        elif c.name in (*STORES, *MONITORING_DATA):
            assert c.replace_on_changes == ["healthcheck"], c.name
            # Never two writers on one volume: fixed name, stop first. A fixed host name keeps the
            # store's identity: RabbitMQ's node (and Mnesia directory) is rabbit@<hostname>.
            assert c.delete_before_replace and c.inputs["name"] == f"mysaaschat-{rec.stack}-{c.name}"
            assert c.inputs["hostname"] == c.name
        else:
            # Start-first: no fixed name, wait for healthy, old one removed after. "*" also makes the
            # engine replace, not update, a container left with init errors by a failed wait.
            assert c.replace_on_changes == ["*"], c.name
            assert not c.delete_before_replace and "name" not in c.inputs, c.name
            assert c.inputs["wait"] is True and c.inputs["waitTimeout"] >= 10, c.name
        # The health wait fits in the create timeout the engine gives the provider (else 20 minutes).
        assert c.custom_timeouts["create"] == f"{int(c.inputs['waitTimeout']) + 120}s", c.name


def test_every_docker_resource_uses_the_hosts_provider_after_the_engine_answers(rec: Recording) -> None:
    providers = [r for r in rec.resources.values() if r.type == "pulumi:providers:docker"]
    assert [p.name for p in providers] == ["host-docker"]
    wait = [r.urn for r in rec.resources.values() if r.name == "host-engine-ready"]
    for r in rec.resources.values():
        if r.type.startswith("docker:"):
            assert r.provider == providers[0].urn, r.name
            if rec.env.host.kind == "ec2":
                assert _reaches(rec, r.urn, wait[0]), f"{r.name} can start before the engine answers"


def _reaches(rec: Recording, start: str, target: str) -> bool:
    todo, seen = [start], set()
    while todo:
        urn = todo.pop()
        if urn == target:
            return True
        if urn not in seen and urn in rec.resources:
            seen.add(urn)
            todo.extend(rec.resources[urn].dependencies)
    return False


def test_services_wait_only_for_what_the_model_says(rec: Recording) -> None:
    by_urn = rec.resources
    for c in containers(rec):
        svc = rec.env.services.get(c.name)
        if svc is None:
            continue
        deps = {by_urn[d].name for d in c.dependencies if by_urn[d].type == CONTAINER}
        assert deps == set(svc.uses) | set(svc.depends_on), c.name


def test_no_secret_in_a_container_command_line(rec: Recording) -> None:
    secrets = {v for v in rec.secret_values if len(v) >= 8}
    for c in containers(rec):
        visible = str(plain(c.inputs.get("command"))) + str(c.inputs["healthcheck"])
        assert not any(s in visible for s in secrets), c.name
        if c.name in STORES:
            assert not any(s in str(plain(c.inputs.get("envs"))) for s in secrets), c.name


def test_ec2_host(rec: Recording) -> None:
    aws = [r for r in rec.resources.values() if r.type.startswith("aws:")]
    if rec.env.host.kind == "local":
        assert aws == [] and not any(i.token.startswith("aws:") for i in rec.invokes)
        return
    instance = next(r for r in aws if r.type == "aws:ec2/instance:Instance")
    assert instance.inputs["metadataOptions"]["httpTokens"] == "required"
    assert instance.inputs["rootBlockDevice"]["encrypted"] is True
    assert {"ami", "userData"} <= set(instance.ignore_changes)
    group = next(r for r in aws if r.type == "aws:ec2/securityGroup:SecurityGroup")
    rules = {int(g["fromPort"]): g["cidrBlocks"] for g in group.inputs["ingress"]}
    assert rules[80] == rules[443] == ["0.0.0.0/0"]
    assert rules[22] == rec.env.host.admin_cidrs


def test_host_wave_depth_fits_the_target() -> None:
    from bench.waves import waves
    from tests.conftest import recording

    rec = recording("prod")
    result = waves(rec)
    # Twelve steps: the seed containers (a create and an upload, no start) sit between the volumes
    # and the stores; the release commands (migrations) between the stores and the services that
    # run them; the gateway's seed, the gateway and its reload follow the services (the config names
    # their containers). What takes time is waiting for health: stores, then services, then the
    # gateway (nginx answers /healthz within a second of starting); and the migrations themselves.
    assert len(result) <= 12
    # Along any dependency chain, at most three health waits follow one another.
    memo: dict[str, int] = {}

    def waits(urn: str) -> int:
        if urn not in memo:
            reg = rec.resources[urn]
            deps = [d for d in reg.dependencies if d in rec.resources]
            memo[urn] = int(bool(reg.inputs.get("wait"))) + max((waits(d) for d in deps), default=0)
        return memo[urn]

    assert max(waits(urn) for urn in rec.resources) == 3


def test_host_role_is_least_privilege() -> None:
    import json

    from tests.conftest import recording

    rec = recording("prod")
    role = next(r for r in rec.resources.values() if r.type == "aws:iam/role:Role")
    assert json.loads(role.inputs["assumeRolePolicy"])["Statement"][0]["Principal"] == {"Service": "ec2.amazonaws.com"}
    assert "inlinePolicies" not in role.inputs  # deprecated in pulumi-aws 7; a RolePolicy instead
    policies = [r for r in rec.resources.values() if r.type == "aws:iam/rolePolicy:RolePolicy"
                and role.urn in r.property_dependencies.get("role", [])]
    [policy] = policies  # components/backup.py grants the backup prefix; host.py grants nothing else
    statements = json.loads(policy.inputs["policy"])["Statement"]
    # The host reads, writes and lists its backup prefix, uses the bucket's key, and deletes nothing:
    # secrets are read at `up` by the operator.
    key = next(r for r in rec.resources.values() if r.name == "backup-key")
    assert statements == [
        {"Action": ["s3:GetObject", "s3:PutObject"], "Effect": "Allow",
         "Resource": ["arn:aws:s3:::mysaaschat-backups/prod/*"]},
        {"Action": ["s3:ListBucket"], "Condition": {"StringLike": {"s3:prefix": ["prod/*"]}}, "Effect": "Allow",
         "Resource": ["arn:aws:s3:::mysaaschat-backups"]},
        {"Action": ["kms:Decrypt", "kms:GenerateDataKey"], "Effect": "Allow",
         "Resource": [statements[2]["Resource"][0]]}]
    assert statements[2]["Resource"][0].startswith("arn:aws:kms:eu-west-1:123456789012:key/")
    assert key.urn in policy.property_dependencies["policy"]
    assert not any("Delete" in a for st in statements for a in st["Action"])
    assert not role.inputs.get("managedPolicyArns")


def test_default_docker_provider_is_disabled() -> None:
    import yaml

    from tests.conftest import ROOT

    project = yaml.safe_load((ROOT / "Pulumi.yaml").read_text())
    assert "docker" in project["config"]["pulumi:disable-default-providers"]["value"]


def test_ssh_to_the_host_pins_its_key(rec: Recording) -> None:
    provider = next(r for r in rec.resources.values() if r.type == "pulumi:providers:docker")
    if rec.env.host.kind == "local":
        assert provider.inputs["host"] == "unix:///var/run/docker.sock"
        return
    opts = plain(provider.inputs["sshOpts"])
    opts = json.loads(opts) if isinstance(opts, str) else opts
    assert "StrictHostKeyChecking=yes" in opts and "StrictHostKeyChecking=no" not in " ".join(opts)
    assert not any(o.startswith("KnownHostsCommand=") for o in opts)  # needs OpenSSH >= 8.5 on the operator's side
    stack = rec.stack
    assert f"UserKnownHostsFile=~/.ssh/my-saas-chat/{stack}.known_hosts" in opts
    assert f"HostKeyAlias=my-saas-chat-{stack}" in opts
    wait = next(r for r in rec.resources.values() if r.name == "host-engine-ready")
    pinned = plain(wait.inputs["connection"])["hostKey"]
    # Both connections verify the one key Pulumi generated for the host (the file's content is
    # tested against a real sshd in tests/test_host.py).
    assert pinned.startswith("ssh-ed25519 ")


def test_depends_on_orders_one_service_after_another(tmp_path: Any) -> None:
    import yaml

    from config.load import CATALOG_FILE
    from ops.runner import run_stack

    catalog = yaml.safe_load(CATALOG_FILE.read_text())
    catalog["services"]["api-gateway"]["depends_on"] = ["auth-service"]
    path = tmp_path / "catalog.yaml"
    path.write_text(yaml.safe_dump(catalog))
    rec = run_stack("staging", catalog=path)
    by_name = {r.name: r for r in rec.resources.values() if r.type == CONTAINER and r.name in rec.env.services}
    assert by_name["auth-service"].urn in by_name["api-gateway"].dependencies
    assert not any(by_name["api-gateway"].urn in r.dependencies for r in by_name.values())


def releases(rec: Recording) -> dict[str, Registration]:
    return {r.name.removesuffix("-release"): r for r in rec.resources.values()
            if r.type.startswith("command:") and r.name.endswith("-release")}


def test_a_release_command_runs_in_the_new_image_before_the_new_container(rec: Recording) -> None:
    """Each service with a `release` command: its command resource depends on the service's image,
    the stores it uses and the data network; the service's container depends on it (so the engine
    starts the new container only after the command succeeded); it is replaced, so run again, when
    the image digest changes (`triggers`, replaced on change), and its environment travels secret on
    standard input, never on the command line."""
    found = releases(rec)
    assert set(found) == {n for n, s in rec.env.services.items() if s.release}
    assert found, "the catalog declares release commands (Prisma migrations)"
    by_urn = rec.resources
    for name, release in found.items():
        svc = rec.env.services[name]
        assert release.type == ("command:remote:Command" if rec.env.host.kind == "ec2" else "command:local:Command")
        container = next(c for c in containers(rec) if c.name == name)
        image = next(r for r in rec.resources.values() if r.name == f"{name}-image")
        assert release.urn in container.dependencies, name
        assert image.urn in release.dependencies, name
        stores = {by_urn[d].name for d in release.dependencies if by_urn[d].type == CONTAINER}
        assert stores == set(svc.uses), name  # stores healthy first; never the service's own containers
        assert release.inputs["triggers"] == [image.inputs["name"].split(":")[0].split("@")[0] + "@"
                                              + release.inputs["triggers"][0].split("@")[1]]
        assert "triggers[*]" in release.replace_on_changes
        script = release.inputs["create"]
        words = script.split("\n")[1].split(" ")
        at = words.index("run")
        assert words[at + 1:at + 3] == ["--rm", "--init"]
        assert words[words.index("--network") + 1] == f"mysaaschat-{rec.stack}-data"
        assert words[words.index("--user") + 1] == svc.user and "--read-only" in words
        assert words[words.index("--cap-drop") + 1] == "ALL"
        assert words[words.index("--security-opt") + 1] == "no-new-privileges:true"
        assert words[words.index("--env-file") + 1] == "/dev/stdin"
        image_id = words[words.index("/dev/stdin") + 1]
        command = svc.release.command if svc.release else []
        assert image_id.startswith("sha256:") and words[words.index(image_id) + 1:][:len(command)] == command
        assert plain(release.inputs["stdin"]) != release.inputs["stdin"]  # secret
        secrets = {v for v in rec.secret_values if len(v) >= 8}
        assert not any(s in script for s in secrets), name
        assert 'exit "$code"' in script and "tail -n 20" in script


def test_the_release_command_is_ordered_in_the_creation_waves() -> None:
    """The release wave sits between the stores' health wait and the services' (bench.waves)."""
    from bench.waves import waves
    from tests.conftest import recording

    rec = recording("local")
    result = waves(rec)
    wave_of = {entry.split(" ", 1)[1]: i for i, wave in enumerate(result) for entry in wave}
    for name in releases(rec):
        assert wave_of[f"{name}-release"] < wave_of[name], (name, result)
        assert wave_of["postgres"] < wave_of[f"{name}-release"], (name, result)
