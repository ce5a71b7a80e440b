"""Zero downtime on the real engine: chat-service's image changes under load, through the gateway container.

The `local` stack is replayed as recorded (tests/engine/replay.py), the gateway container included
(published on free ports of 127.0.0.1, the nginx stand-in, the realised self-signed certificate: the
departures of tests/engine/test_gateway_engine.py, nothing more). The load of tests/swap_harness.py
(keepalive GET and POST clients, open SSE streams reconnecting as EventSource does) goes to the
published HTTPS port. The swap is `Replay.swap_routed`, the engine's order: release command in the
new image -> new container created, started, `wait` healthy -> the seed replaced create-first with
nginx.conf re-rendered by render/nginx.py for the new container's generated name -> the recorded
reload command (`nginx -t`, then `nginx -s reload`) -> the old container stopped (SIGTERM; SIGKILL
after `destroy_grace_seconds`) and removed, then the old seed.

Every client reaches the published port from the host, through docker-proxy, so nginx sees them all
from one address and one per-client limit: the request clients share 80% of it (`one_address`), a
far lighter load than the loopback test's (tests/test_zero_downtime.py), which gives each client its
own address. The versions are images derived from the stub that only set STUB_VERSION (and, for the
release that never turns healthy, STUB_HEALTH=fail): the recorded environment stays as recorded.
"""

from __future__ import annotations

import hashlib
import io
import json
import ssl
import time
from collections.abc import Callable, Iterator, Mapping

import docker
import docker.errors
import pytest

from tests.conftest import COUNTS, recording
from tests.engine.daemon import Engine, clean
from tests.engine.replay import GATEWAY_CONF, Replay, ReplayError, plain
from tests.engine.test_gateway_engine import access_log, free_port, tls_context
from tests.swap_harness import SERVICE, BrowserConnection, Load


def derive(client: docker.DockerClient, base: str, env: Mapping[str, str]) -> str:
    """An image FROM `base` that only sets environment variables (built locally, no registry)."""
    dockerfile = f"FROM {base}\n" + "".join(f"ENV {k}={v}\n" for k, v in sorted(env.items()))
    tag = f"{base.rsplit(':', 1)[0]}:derived-{hashlib.sha256(dockerfile.encode()).hexdigest()[:12]}"
    try:
        client.images.get(tag)
    except docker.errors.ImageNotFound:
        client.images.build(fileobj=io.BytesIO(dockerfile.encode()), tag=tag, rm=True, pull=False)
    return tag


@pytest.fixture(scope="module")
def versions(engine_client: docker.DockerClient, engine_images: dict[str, str]) -> dict[str, str]:
    stub = engine_images["stub"]
    return {"v1": derive(engine_client, stub, {"STUB_VERSION": "v1"}),
            "v2": derive(engine_client, stub, {"STUB_VERSION": "v2"}),
            "sick": derive(engine_client, stub, {"STUB_VERSION": "v3-sick", "STUB_HEALTH": "fail"})}


@pytest.fixture(scope="module")
def stack(engine: Engine, engine_client: docker.DockerClient, engine_images: dict[str, str],
          versions: dict[str, str]) -> Iterator[Replay]:
    clean(engine_client)
    publish = {80: ("127.0.0.1", free_port()), 443: ("127.0.0.1", free_port())}
    replay = Replay(engine_client, recording("local"), {**engine_images, "stub": versions["v1"]}, publish=publish,
                    docker_host=engine.socket)
    try:
        replay.up()
        yield replay
    finally:
        clean(engine_client)


class EngineFront:
    """The gateway container as the load sees it (tests/swap_harness.py Front): its published HTTPS port."""

    net = "127.60"  # the clients' source addresses (docker-proxy hides them from nginx)

    def __init__(self, stack: Replay) -> None:
        self.stack, self.env = stack, stack.recording.env
        # The realised certificate is verified; the name is checked in test_gateway_engine.py.
        self.context = tls_context(stack)
        self.context.check_hostname = False
        assert stack.publish is not None
        self.port = stack.publish[443][1]

    def connect(self, source: str, sessions: dict[str, ssl.SSLSession] | None = None) -> BrowserConnection:
        return BrowserConnection("127.0.0.1", self.port, context=self.context, timeout=10, source_address=(source, 0),
                                 tls_context=self.context, sessions=sessions if sessions is not None else {})

    def access_log_ids(self) -> set[str]:
        return set(access_log(self.stack))


def _report(record_property: Callable[[str, object], None], counts: dict[str, object]) -> str:
    text = json.dumps(counts, sort_keys=True, default=str)
    record_property(COUNTS, text)
    return text


def _conf(stack: Replay) -> str:
    return stack.exec("gateway", ["cat", GATEWAY_CONF])[1]


def _master(stack: Replay) -> str:
    return stack.exec("gateway", ["cat", "/tmp/nginx.pid"])[1].strip()


def test_an_image_change_through_the_gateway_container_fails_no_request(
        stack: Replay, versions: dict[str, str], record_property: Callable[[str, object], None]) -> None:
    old = stack.containers[SERVICE]
    grace = float(plain(old.reg.inputs)["destroyGraceSeconds"])
    master, started = _master(stack), time.time()
    assert old.name in _conf(stack)
    with Load(EngineFront(stack), getters=4, posters=4, streams=4, one_address=True) as load:
        time.sleep(3.0)
        steps = stack.swap_routed(SERVICE, image=versions["v2"])
        time.sleep(2.0)
    r = load.result
    new = stack.containers[SERVICE]
    events = {(e, n): t - started for t, e, n in stack.events if t >= started}
    drain = events[("removed", old.name)] - events[("stopping", old.name)]
    conf = _conf(stack)
    counts = {**r.counts(), "steps": {k: round(v, 2) for k, v in steps.items()}, "old_drain_s": round(drain, 2),
              "resent_read_by_nginx": r.resent_ids_logged_by_nginx, "old": old.name, "new": new.name}
    text = _report(record_property, counts)
    assert r.failed == 0 and r.served > 60, text
    assert r.answered_by.get("v1", 0) > 10 and r.answered_by.get("v2", 0) > 10, text  # a real swap under load
    assert r.sse_events > 50 and r.sse_clean_ends >= 4, text  # every open stream moved to the new container
    assert r.resent_ids_logged_by_nginx == 0, text
    # The engine's order, as performed: healthy, then the reload, then the old container's stop.
    assert events[("healthy", new.name)] < events[("reload", "gateway")] < events[("stopping", old.name)], events
    # The gateway names the new container now, reloaded by the recorded command, never restarted.
    assert new.name != old.name and new.name in conf and old.name not in conf, text
    assert conf == stack.gateway_conf({svc: live.name for svc, live in stack.containers.items()
                                       if stack.recording.env.services.get(svc) and
                                       stack.recording.env.services[svc].routes})
    assert _master(stack) == master and stack.inspect("gateway")["RestartCount"] == 0
    # The old container drained (its drain delay, 2 s) and exited well within its grace: never killed.
    assert 2.0 <= drain < grace, text


def test_a_new_version_that_never_turns_healthy_leaves_the_old_one_serving(
        stack: Replay, engine_client: docker.DockerClient, versions: dict[str, str],
        record_property: Callable[[str, object], None]) -> None:
    current = stack.containers[SERVICE]
    seed, conf, master, started = stack.containers["gateway-files"], _conf(stack), _master(stack), time.time()
    try:
        with Load(EngineFront(stack), getters=4, posters=4, streams=4, one_address=True) as load:
            time.sleep(2.0)
            # The recorded wait_timeout is 180 s; 15 s covers the first health checks (every 10 s).
            with pytest.raises(ReplayError, match="wait: not healthy within 15 s") as failed:
                stack.swap_routed(SERVICE, image=versions["sick"], wait_timeout=15)
            time.sleep(1.0)
    finally:
        # The engine keeps the failed container (created, started, not healthy); a later `up` replaces it.
        sick = [c for c in engine_client.api.containers(all=True, filters={
            "label": f"com.mysaaschat.service={SERVICE}"}) if c["Id"] != current.id]
        for c in sick:
            engine_client.api.remove_container(c["Id"], force=True)
    r = load.result
    events = [(round(t - started, 2), e, n) for t, e, n in stack.events if t >= started]
    text = _report(record_property, {**r.counts(), "events": events, "error": str(failed.value).splitlines()[0]})
    assert len(sick) == 1, sick
    # `up` failed at the wait: no re-render, no reload, no delete; the old container serves throughout.
    assert not any(e in ("reload", "stopping") for _, e, _ in events), text
    assert stack.containers[SERVICE] is current and stack.containers["gateway-files"] is seed, text
    assert _conf(stack) == conf and _master(stack) == master, text
    assert r.failed == 0 and r.served > 40, text
    assert len(r.answered_by) == 1 and "v3-sick" not in r.answered_by, text
    assert r.sse_clean_ends == 0 and r.sse_events > 50, text  # its streams were never interrupted
    assert stack.inspect(SERVICE)["State"]["Health"]["Status"] == "healthy"
