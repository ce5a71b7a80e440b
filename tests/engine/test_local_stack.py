"""The `local` stack's recorded desired state, replayed on a real Docker 20.10 engine.

What `ops synth local` records is performed the way pulumi-docker would (tests/engine/replay.py),
so Docker, not our reading of it, decides whether the containers start, turn healthy, are
hardened, reach what they should and nothing else, restart, and swap.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest

from components.canonical import go_duration, nano_cpus_string
from tests.conftest import recording
from tests.engine.daemon import CACHE_DIR, TEST_LABEL, Engine, clean
from tests.engine.replay import Replay, ReplayError, plain

MiB = 1024 * 1024
# Outside the working tree (a test run leaves no file there), beside the engine's image cache.
RESULTS = CACHE_DIR / "results"


@pytest.fixture(scope="module")
def stack(engine: Engine, engine_client: docker.DockerClient, engine_images: dict[str, str]) -> Iterator[Replay]:
    clean(engine_client)
    replay = Replay(engine_client, recording("local"), engine_images, docker_host=engine.socket)
    try:
        replay.up()
        yield replay
    finally:
        clean(engine_client)


def seeded_file(replay: Replay, store: str, name: str) -> str:
    seed = replay.containers[f"{store}-files"].reg
    return next(u["content"] for u in plain(seed.inputs)["uploads"] if u["file"].endswith("/" + name))


def exec_ok(replay: Replay, name: str, script: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    return replay.exec(name, ["sh", "-c", script], env=env)


# --- it comes up ---------------------------------------------------------------------------------

def test_every_container_turns_healthy_within_its_deploy_timeout(stack: Replay) -> None:
    running = stack.running()
    assert len(running) == len(stack.recording.env.services) + 3
    for name, live in running.items():
        limit = plain(live.reg.inputs)["waitTimeout"]
        assert stack.healthy_after[name] <= limit, name
        assert stack.inspect(name)["State"]["Health"]["Status"] == "healthy", name
    seeds = set(stack.containers) - set(running)
    assert seeds == {"postgres-files", "redis-files", "rabbitmq-files"}
    for seed in seeds:  # created, never started
        assert stack.inspect(seed)["State"]["Status"] == "created"


def test_store_files_are_readable_only_by_the_store(stack: Replay) -> None:
    for store, user in (("postgres", "70"), ("redis", "999"), ("rabbitmq", "100")):
        code, out = exec_ok(stack, store, "stat -c '%u %a' /run/secrets/*-password; touch /run/secrets/x 2>&1")
        assert code != 0 and "Read-only file system" in out, out  # the secrets volume is mounted read-only
        assert out.splitlines()[0] == f"{user} 400", (store, out)
        config = stack.inspect(store)["Config"]
        assert not any(seeded_file(stack, store, f"{store}-password") in str(v) for v in config.values())


# --- credentials --------------------------------------------------------------------------------

def test_each_store_accepts_its_password_and_refuses_a_wrong_one(stack: Replay) -> None:
    postgres = seeded_file(stack, "postgres", "postgres-password")
    psql = 'psql -w -h 127.0.0.1 -U "$POSTGRES_USER" -d "$POSTGRES_DB" -Atc "SELECT 1"'
    assert exec_ok(stack, "postgres", psql, {"PGPASSWORD": postgres}) == (0, "1\n")
    code, out = exec_ok(stack, "postgres", psql, {"PGPASSWORD": postgres + "x"})
    assert code != 0 and "password authentication failed" in out

    redis = seeded_file(stack, "redis", "redis-password")
    ping = "redis-cli --no-auth-warning -h 127.0.0.1 ping"
    assert exec_ok(stack, "redis", ping, {"REDISCLI_AUTH": redis})[1].strip() == "PONG"
    assert "WRONGPASS" in exec_ok(stack, "redis", ping, {"REDISCLI_AUTH": redis + "x"})[1]
    assert "NOAUTH" in exec_ok(stack, "redis", ping)[1]

    rabbit = seeded_file(stack, "rabbitmq", "rabbitmq-password")
    check = 'rabbitmqctl -q authenticate_user "$RABBITMQ_USER" "$PW"'
    assert exec_ok(stack, "rabbitmq", check, {"PW": rabbit})[0] == 0
    assert exec_ok(stack, "rabbitmq", check, {"PW": rabbit + "x"})[0] != 0


# --- who reaches what ---------------------------------------------------------------------------

NODE_CONNECT = ("const [h,p,ms]=process.argv.slice(1);const s=require('net').connect({host:h,port:+p,timeout:+ms});"
                "s.on('connect',()=>{console.log('open');process.exit(0)});"
                "s.on('timeout',()=>{console.log('timeout');process.exit(2)});"
                "s.on('error',e=>{console.log(e.code);process.exit(1)})")


def connect_from(replay: Replay, name: str, host: str, port: int, timeout_ms: int = 2000) -> str:
    return replay.exec(name, ["node", "-e", NODE_CONNECT, host, str(port), str(timeout_ms)])[1].strip()


def test_services_reach_the_stores_they_use_by_alias(stack: Replay) -> None:
    env = stack.recording.env
    ports = {"postgres": 5432, "redis": 6379, "rabbitmq": 5672}
    for name, svc in env.services.items():
        for store, port in ports.items():
            result = connect_from(stack, name, store, port)
            if store in svc.uses:
                assert result == "open", (name, store, result)
            elif not svc.uses:
                # Not on the data network: the alias is unknown there (the embedded DNS forwards the
                # name to nothing, see daemon.py, so the lookup fails or outlasts the timeout).
                assert result in ("ENOTFOUND", "EAI_AGAIN", "timeout"), (name, store, result)


def _bash_connect(replay: Replay, name: str, host: str, port: int) -> int:
    return replay.exec(name, ["timeout", "3", "bash", "-c", f"exec 3<>/dev/tcp/{host}/{port}"])[0]


def test_an_internal_only_container_reaches_neither_outside_nor_a_published_port(
        stack: Replay, engine_client: docker.DockerClient, engine_images: dict[str, str]) -> None:
    """The stores sit only on the internal data network. A live target on a normal network (with
    a port published on that network's host address) is reachable from a container on that
    network, and not from the store. (An internal network still has a gateway and a default route
    inside the container; Docker isolates it with iptables, which is what this exercises.)"""
    egress = engine_client.networks.get(f"mysaaschat-{stack.recording.stack}-egress")
    gateway = egress.attrs["IPAM"]["Config"][0]["Gateway"]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    target = engine_client.containers.run(
        engine_images["stub"], detach=True, network=egress.name, environment={"PORT": "8080"},
        ports={"8080/tcp": (gateway, port)}, labels={TEST_LABEL: "target"}, user="1001:1001")
    try:
        target.reload()
        ip = target.attrs["NetworkSettings"]["Networks"][egress.name]["IPAddress"]
        deadline = time.monotonic() + 30
        while connect_from(stack, "chat-service", ip, 8080) != "open":  # positive control, egress member
            assert time.monotonic() < deadline, "the target never answered on the egress network"
            time.sleep(0.5)
        assert connect_from(stack, "chat-service", gateway, port) == "open"  # the published port is live
        assert _bash_connect(stack, "postgres", ip, 8080) != 0
        assert _bash_connect(stack, "postgres", gateway, port) != 0
    finally:
        target.remove(force=True)


# --- hardening in force -------------------------------------------------------------------------

def _status(text: str) -> dict[str, str]:
    return dict(line.split(":\t", 1) for line in text.splitlines() if ":\t" in line)


def test_hardening_is_in_force_inside_every_running_container(stack: Replay) -> None:
    for name, live in stack.running().items():
        i = plain(live.reg.inputs)
        uid, gid = i["user"].split(":")
        # PID 1 is docker-init (init: true); its child is the process the image runs.
        _, out = stack.exec(name, ["sh", "-c", "cat /proc/1/status; echo ===; "
                                      "for p in /proc/[0-9]*; do [ \"$(cat $p/stat 2>/dev/null | cut -d' ' -f4)\" = 1 ] "
                                      "&& cat $p/status && break; done"])
        init, child = (_status(part) for part in out.split("===", 1))
        assert "init" in init["Name"] and child["Name"], (name, init["Name"])
        for proc in (init, child):
            assert proc["Uid"].split() == [uid] * 4 and proc["Gid"].split() == [gid] * 4, (name, proc["Uid"])
            assert proc["NoNewPrivs"].strip() == "1", name
            assert int(proc["CapEff"], 16) == 0 and int(proc["CapPrm"], 16) == 0 and int(proc["CapBnd"], 16) == 0, name
        _, out = stack.exec(name, ["sh", "-c", "touch /probe 2>&1; grep ' / ' /proc/mounts"])
        assert "Read-only file system" in out and " ro," in out.splitlines()[-1], (name, out)
        limit = stack.exec(name, ["cat", "/sys/fs/cgroup/memory/memory.limit_in_bytes"])[1].strip()
        swap = stack.exec(name, ["cat", "/sys/fs/cgroup/memory/memory.memsw.limit_in_bytes"])[1].strip()
        assert int(limit) == i["memory"] * MiB, (name, limit)
        if swap.isdigit():  # only with swap accounting on the kernel
            assert int(swap) == i["memorySwap"] * MiB, (name, swap)
        host = stack.inspect(name)["HostConfig"]
        assert host["LogConfig"] == {"Type": "json-file", "Config": {"max-size": "10m", "max-file": "5"}}, name
        assert host["NanoCpus"] == round(float(i["cpus"]) * 1e9) and host["ReadonlyRootfs"] and host["Init"], name
        if i.get("shmSize"):
            shm = stack.exec(name, ["sh", "-c", "grep ' /dev/shm ' /proc/mounts"])[1]
            assert f"size={i['shmSize'] * 1024}k" in shm, (name, shm)
        if i.get("hostname"):
            assert stack.exec(name, ["hostname"])[1].strip() == i["hostname"], name


def test_what_docker_stores_reads_back_as_the_recorded_inputs(stack: Replay) -> None:
    """The provider's Read, applied to what the real engine stored, gives back every recorded input:
    the second `up` plans nothing. nanoInt64ToDecimalString and Duration.String are mirrored in
    components/canonical.py (kreuzwerker v4.5.0 resourceDockerContainerRead)."""
    for name, live in stack.running().items():
        i, info = plain(live.reg.inputs), stack.inspect(name)
        host, config = info["HostConfig"], info["Config"]
        hc = config["Healthcheck"]
        read = {
            "cpus": nano_cpus_string(host["NanoCpus"]),
            "memory": host["Memory"] // MiB, "memorySwap": host["MemorySwap"] // MiB,
            "user": config["User"], "readOnly": host["ReadonlyRootfs"], "init": host["Init"],
            "restart": host["RestartPolicy"]["Name"], "securityOpts": host["SecurityOpt"],
            "capabilities": {"drops": host["CapDrop"]}, "tmpfs": host["Tmpfs"], "stopTimeout": config["StopTimeout"],
            "logDriver": host["LogConfig"]["Type"], "logOpts": host["LogConfig"]["Config"],
            "healthcheck": {"tests": hc["Test"], "interval": go_duration(hc["Interval"]), "timeout": go_duration(hc["Timeout"]),
                            "startPeriod": go_duration(hc["StartPeriod"]), "retries": hc["Retries"]},
        }
        if "hostname" in i:
            read["hostname"] = config["Hostname"]
        if "shmSize" in i:
            read["shmSize"] = host["ShmSize"] // MiB
        if "command" in i:
            read["command"] = config["Cmd"]
        assert {k: i[k] for k in read} == read, name


# --- recovery and change ------------------------------------------------------------------------

def _app_pid(client: docker.DockerClient, cid: str) -> int:
    init = client.api.inspect_container(cid)["State"]["Pid"]
    children = Path(f"/proc/{init}/task/{init}/children").read_text().split()
    return int(children[0])


def test_a_killed_container_restarts_and_turns_healthy(stack: Replay, engine_client: docker.DockerClient) -> None:
    live = stack.running()["chat-service"]
    before = engine_client.api.inspect_container(live.id)["RestartCount"]
    os.kill(_app_pid(engine_client, live.id), signal.SIGKILL)  # a crash, not `docker stop`
    deadline = time.monotonic() + 90
    while True:
        state = engine_client.api.inspect_container(live.id)
        if state["RestartCount"] > before and state["State"].get("Health", {}).get("Status") == "healthy":
            break
        assert time.monotonic() < deadline, state["State"]
        time.sleep(0.5)


def test_docker_dns_answers_for_an_unhealthy_container(stack: Replay, engine_client: docker.DockerClient,
                                                       engine_images: dict[str, str]) -> None:
    """moby: the embedded DNS adds a container's aliases when it joins a network, healthy or not
    (health-aware DNS is swarm-only, moby PR #27279). So an alias is no gate: the gateway must
    not route by alias, and a start-first swap sends traffic to the new container as it starts."""
    apps = f"mysaaschat-{stack.recording.stack}-apps"
    sick = engine_client.api.create_container(
        engine_images["stub"], environment={"PORT": "3999", "STUB_HEALTH": "fail"}, labels={TEST_LABEL: "sick"},
        healthcheck={"test": ["CMD-SHELL", "exit 1"], "interval": 10**9, "retries": 1},
        host_config=engine_client.api.create_host_config(network_mode=apps),
        networking_config=engine_client.api.create_networking_config(
            {apps: engine_client.api.create_endpoint_config(aliases=["sick-service"])}))
    try:
        engine_client.api.start(sick)
        deadline = time.monotonic() + 30
        while engine_client.api.inspect_container(sick)["State"]["Health"]["Status"] != "unhealthy":
            assert time.monotonic() < deadline
            time.sleep(0.5)
        assert connect_from(stack, "frontend", "sick-service", 3999) == "open"
    finally:
        engine_client.api.remove_container(sick, force=True)


def test_an_image_change_swaps_with_a_healthy_container_behind_the_alias(
        stack: Replay, engine_client: docker.DockerClient, engine_images: dict[str, str]) -> None:
    """Replayed as the engine does it (create-first for a stateless service): a prober inside the
    apps network calls the alias throughout, and the engine's own view is sampled. Figures go to
    /var/cache/mysaaschat-engine/results/swap.json, and to the test output."""
    name, port = "chat-service", stack.recording.env.services["chat-service"].port
    new_image = engine_images["stub"].replace(":", ":v2-", 1)
    engine_client.images.get(engine_images["stub"]).tag(new_image)
    old = stack.running()[name]
    apps = f"mysaaschat-{stack.recording.stack}-apps"
    prober = engine_client.containers.run(
        engine_images["stub"], detach=True, network=apps, labels={TEST_LABEL: "prober"}, user="1001:1001",
        entrypoint=["node", "-e", PROBER, f"http://{name}:{port}/version", "60000"])
    samples: list[tuple[float, int, int]] = []  # (time, containers behind the alias, of them healthy)
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            behind = [c for c in engine_client.api.containers(filters={"network": apps, "label":
                                                                         "com.mysaaschat.service=" + name})]
            states = [c["Status"] for c in behind]
            samples.append((time.monotonic(), len(states), sum("(healthy)" in s for s in states)))
            time.sleep(0.1)

    sampler = threading.Thread(target=sample)
    try:
        time.sleep(2)
        sampler.start()
        started = time.time()
        new = stack.replace(name, image=new_image)
        time.sleep(3)
    finally:
        done.set()
        sampler.join()
        prober.kill(signal="SIGTERM")
        prober.wait(timeout=30)
        lines = prober.logs().decode().splitlines()
        prober.remove(force=True)
    results = [json.loads(line) for line in lines if line.startswith("{")]
    swap_events = [(t - started, e, n) for t, e, n in stack.events if t >= started]
    failures = [r for r in results if not r["ok"]]
    # The prober stamps requests with the shared wall clock (ms); events are on it too.
    figures: dict[str, Any] = {
        "requests": len(results), "failed": len(failures),
        "failures": sorted({r["error"] for r in failures}),
        "answered_by_old": sum(r.get("host") == old.id[:12] for r in results),
        "answered_by_new": sum(r.get("host") == new.id[:12] for r in results),
        "events": [(round(t, 2), e, n) for t, e, n in swap_events],
        "failure_times": [round(r["t"] / 1000 - started, 2) for r in failures],
        "min_healthy_behind_alias": min(h for _, _, h in samples),
        "samples": len(samples),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "swap.json").write_text(json.dumps(figures, indent=2) + "\n")
    print(json.dumps(figures))
    assert figures["answered_by_old"] > 0 and figures["answered_by_new"] > 0, figures
    # The engine's order: the new container is healthy before the old one stops, so at every
    # sampled moment at least one healthy container holds the alias.
    order = [e for _, e, n in swap_events if e in ("healthy", "stopping")]
    assert order[:2] == ["healthy", "stopping"], swap_events
    assert figures["min_healthy_behind_alias"] >= 1, figures
    # Where it does not hold for a caller of the alias: Docker's DNS hands out a container's address
    # as soon as it joins the network, healthy or not (moby#27279), so a request may meet the new
    # container before its process listens, or the old one after it stopped listening while
    # resolvers still hold its address. One run in about six also saw a refused connection before
    # the new container had started (during the release command), cause not found; the figures and
    # events go to the test output and swap.json. What holds in every run: failures only inside the
    # replacement (from its first step to 2.5 s after the old container is removed), never in
    # steady state, and few. The gateway avoids all of it by naming containers (render/nginx.py,
    # tests/engine/test_swap_engine.py: 0 failed); service-to-service callers of an alias must retry
    # (README, "the drain contract").
    first = min(t for t, _, _ in swap_events)
    removed = next(t for t, e, _ in swap_events if e == "removed")
    windows = [(first - 0.2, removed + 2.5)]
    assert figures["failed"] <= max(5, figures["requests"] // 100), (windows, figures)
    assert all(any(a <= t <= b for a, b in windows) for t in figures["failure_times"]), (windows, figures)


PROBER = r"""
const [url, ms] = process.argv.slice(1); const http = require('http'); const end = Date.now() + +ms;
let stop = false; process.on('SIGTERM', () => { stop = true; });
function one() {
  if (stop || Date.now() > end) return process.exit(0);
  const t = Date.now();
  const req = http.get(url, { timeout: 2000, agent: false }, res => {
    let body = ''; res.on('data', d => body += d);
    res.on('end', () => { let host = null; try { host = JSON.parse(body).hostname; } catch (e) {}
      console.log(JSON.stringify({ t, ok: res.statusCode === 200, status: res.statusCode, host })); setTimeout(one, 20); });
  });
  req.on('timeout', () => req.destroy(new Error('timeout')));
  req.on('error', e => { console.log(JSON.stringify({ t, ok: false, error: e.code || e.message })); setTimeout(one, 20); });
}
one();
"""


# --- release-phase commands (migrations) -----------------------------------------------------------

def _started_at(client: docker.DockerClient, cid: str) -> float:
    from datetime import datetime

    text = client.api.inspect_container(cid)["State"]["StartedAt"]  # RFC 3339 with nanoseconds
    return datetime.fromisoformat(text[:26].rstrip("Z") + "+00:00").timestamp()


def _finished_at(output: str) -> float:
    from datetime import datetime

    stamp = next(line for line in reversed(output.splitlines()) if " finished at " in line).rsplit(" ", 1)[1]
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def test_the_release_commands_ran_before_their_services_started(stack: Replay,
                                                                 engine_client: docker.DockerClient) -> None:
    """The whole `up`: every service with a release command ran it (in its image, on the data network,
    with its environment: the stand-in reached postgres at DATABASE_URL) and finished before the
    service's container started; the release containers are gone (`--rm`)."""
    with_release = {n for n, s in stack.recording.env.services.items() if s.release}
    assert set(stack.release_output) == with_release
    for name in with_release:
        output = stack.release_output[name]
        assert "succeeded; last 20 log lines:" in output, output
        # DATABASE_URL's host and port (the store's alias, reached on the data network).
        assert 'All migrations have been successfully applied to "postgres:5432".' in output, output
        assert _finished_at(output) < _started_at(engine_client, stack.running()[name].id), name
    assert engine_client.api.containers(all=True, filters={"label": "com.mysaaschat.lifecycle=release"}) == []


def test_a_failing_release_command_fails_the_update_and_the_old_container_keeps_serving(
        stack: Replay, engine_client: docker.DockerClient, engine_images: dict[str, str]) -> None:
    """Its exit code and last log lines are in the error; no new container was created; the old one
    is untouched and answers."""
    name = "billing-service"
    old = stack.running()[name]
    new_image = engine_images["stub"].replace(":", ":v3-", 1)
    engine_client.images.get(engine_images["stub"]).tag(new_image)
    before = {c["Id"] for c in engine_client.api.containers(all=True)}
    with pytest.raises(ReplayError) as failure:
        stack.release_then_replace(name, image=new_image, extra_env={"STUB_MIGRATE_EXIT": "3", "STUB_VERSION": "v3"})
    message = str(failure.value)
    print(message[-900:])
    assert message.startswith(f"{name}-release: create: exit status 3: running ")
    assert f"release command of {name} (npx prisma migrate deploy) failed with exit code 3; last 20 log lines:" in message
    assert "migrate[v3] Error: P3018 migration 0031_add_index failed to apply (exit 3)" in message
    tail = message.split("last 20 log lines:", 1)[1]
    assert "migration 0030_step applied" in tail and "migration 0001_step applied" not in tail  # only the last lines
    assert stack.containers[name] is old
    assert {c["Id"] for c in engine_client.api.containers(all=True)} == before  # nothing created, nothing left
    state = engine_client.api.inspect_container(old.id)["State"]
    assert state["Running"] and state["Health"]["Status"] == "healthy"
    port = stack.recording.env.services[name].port
    code, out = exec_ok(stack, name, f"node -e \"require('http').get('http://127.0.0.1:{port}/version', r => "
                        "{let b='';r.on('data',d=>b+=d);r.on('end',()=>{console.log(b);process.exit(r.statusCode===200?0:1)})})\"")
    assert code == 0 and '"version"' in out, out


def test_a_passing_release_command_runs_in_the_new_image_before_the_new_container_starts(
        stack: Replay, engine_client: docker.DockerClient, engine_images: dict[str, str]) -> None:
    name = "analytics-service"
    new_image = engine_images["stub"].replace(":", ":v4-", 1)
    engine_client.images.get(engine_images["stub"]).tag(new_image)
    old = stack.running()[name]
    new = stack.release_then_replace(name, image=new_image, extra_env={"STUB_VERSION": "v4"})
    output = stack.release_output[name]
    assert 'migrate[v4] All migrations have been successfully applied to "postgres:5432".' in output
    assert _finished_at(output) < _started_at(engine_client, new.id)
    assert engine_client.api.inspect_container(new.id)["Config"]["Image"] == new_image
    events = [e for _, e, n in stack.events if n in (name, new.name, old.name)]
    assert events[-6:] == ["release started", "release done", "started", "healthy", "stopping", "removed"], events


def test_rabbitmq_keeps_its_definitions_across_a_replacement(stack: Replay) -> None:
    """RabbitMQ's node is rabbit@<hostname> and its Mnesia directory is named after the node: with
    the fixed hostname a replaced container finds its definitions (vhosts, users, durable queues);
    the same replacement without it starts an empty node on the same volume."""
    def vhosts() -> set[str]:
        code, out = stack.exec("rabbitmq", ["rabbitmqctl", "-q", "list_vhosts"])
        assert code == 0, out
        return set(out.split())

    assert stack.exec("rabbitmq", ["rabbitmqctl", "-q", "add_vhost", "survives-replacement"])[0] == 0
    stack.replace("rabbitmq")  # stop-first, as the engine replaces a store
    assert "survives-replacement" in vhosts()
    assert stack.exec("rabbitmq", ["hostname"])[1].strip() == "rabbitmq"

    # The contrast, so this test can fail: the recorded inputs without `hostname` (as before issue 7).
    reg = stack.containers["rabbitmq"].reg
    anonymous = dataclasses.replace(reg, inputs={k: v for k, v in reg.inputs.items() if k != "hostname"})
    stack.replace("rabbitmq", reg=anonymous)
    assert "survives-replacement" not in vhosts()
