"""`tls.mode: letsencrypt` on a real Docker 20.10 engine: staging switched to letsencrypt, replayed as recorded.

The companion runs on a certbot stand-in (tests/engine/images/certbot: Debian's certbot 2.1 and
python3-cryptography), the gateway on the nginx stand-in; the published ports move to free
127.0.0.1 ports (tests/engine/replay.py). No ACME server is reachable (the private engine's DNS
answers nothing), so certbot's requests fail and the companion keeps retrying, which is what the
first minutes on a host look like until the gateway answers the challenge. The issued certificate
is stood in for by a lineage made in the companion, handed to the recorded deploy hook, and taken up
by the host's reload script exactly as the recorded watch command installs it (with the engine's
data root and socket in place of the host's).
"""

from __future__ import annotations

import http.client
import shlex
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest
import yaml

from config.load import ROOT_DIR
from ops.runner import Recording, run_stack
from render import acme
from tests.engine.daemon import CACHE_DIR, TEST_LABEL, Engine, clean
from tests.engine.replay import Replay, plain

DOMAIN = "staging.mysaaschat.app"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def letsencrypt_staging(directory: Path) -> Recording:
    config = yaml.safe_load((ROOT_DIR / "Pulumi.staging.yaml").read_text())
    config["config"]["my-saas-chat:tls"] = {"mode": "letsencrypt", "email": "ops@mysaaschat.app", "acme_staging": True}
    path = directory / "Pulumi.staging.yaml"
    path.write_text(yaml.safe_dump(config))
    return run_stack("staging", path=path)


@pytest.fixture(scope="module")
def stack(engine: Engine, engine_client: docker.DockerClient, engine_images: dict[str, str],
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[Replay]:
    clean(engine_client)
    publish = {80: ("127.0.0.1", free_port()), 443: ("127.0.0.1", free_port())}
    recording = letsencrypt_staging(tmp_path_factory.mktemp("acme"))
    # The gateway, its companion and the routed services it names; not the stores (staging's
    # Postgres and its backup container bind host paths of the EC2 host) nor release commands.
    edge = {r.urn for r in recording.resources.values()
            if r.type in ("my-saas-chat:gateway:Gateway", "my-saas-chat:gateway:AcmeCompanion")}
    routed = {name for name, svc in recording.env.services.items() if svc.routes}

    def select(reg: Any) -> bool:
        if reg.type == "docker:index/container:Container":
            return reg.parent in edge or reg.name in routed
        return reg.type in ("docker:index/network:Network", "docker:index/volume:Volume")

    replay = Replay(engine_client, recording, engine_images, publish=publish, docker_host=engine.socket, select=select)
    try:
        replay.up()
        yield replay
    finally:
        clean(engine_client)


def served_certificate(stack: Replay) -> bytes:
    assert stack.publish is not None
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", stack.publish[443][1]), timeout=10) as raw, \
            context.wrap_socket(raw, server_hostname=DOMAIN) as tls:
        der = tls.getpeercert(binary_form=True)
        assert der
        return der


def volume_cert(stack: Replay) -> bytes:
    code, pem = stack.exec("gateway", ["cat", f"{acme.ACME_DIR}/certs/fullchain.pem"])
    assert code == 0, pem
    return ssl.PEM_cert_to_DER_cert(pem)


def test_the_gateway_starts_on_the_companions_temporary_certificate(stack: Replay) -> None:
    """No deadlock: the companion writes a pair and turns healthy; only then the gateway starts."""
    order = [(event, name) for _, event, name in stack.events if event in ("started", "healthy")]
    companion, gateway = "mysaaschat-staging-gateway-acme", "mysaaschat-staging-gateway"
    assert order.index(("healthy", companion)) < order.index(("started", gateway)), order
    assert stack.inspect("gateway")["State"]["Health"]["Status"] == "healthy"
    code, out = stack.exec("gateway-acme", ["sh", "-c", "id -u; stat -c '%u %a' /var/lib/mysaaschat-acme/certs/privkey.pem;"
                                                      " touch /probe 2>&1 || true"])
    assert code == 0 and out.splitlines()[:2] == ["101", "101 600"] and "Read-only file system" in out, out
    der = served_certificate(stack)
    assert der == volume_cert(stack)
    cert = ssl.DER_cert_to_PEM_cert(der)
    text = subprocess.run(["openssl", "x509", "-noout", "-subject", "-ext", "subjectAltName"], input=cert,
                          capture_output=True, text=True, check=True).stdout
    assert f"DNS:{DOMAIN}" in text, text


def test_certbot_accepts_the_recorded_arguments_and_keeps_retrying(stack: Replay) -> None:
    """certbot parses the recorded command line (an unknown flag would end it at once) and, with no
    ACME server reachable here, fails and retries while the companion stays up."""
    deadline = time.monotonic() + 120
    while True:
        logs = stack.client.api.logs(stack.containers["gateway-acme"].id).decode(errors="replace")
        if "certbot failed; again in 300 s" in logs:
            break
        assert time.monotonic() < deadline, logs[-3000:]
        time.sleep(2)
    assert "unrecognized arguments" not in logs and "usage:" not in logs.lower(), logs[-3000:]
    assert stack.inspect("gateway-acme")["State"]["Running"] is True
    code, out = stack.exec("gateway-acme", ["sh", "-c", "ls /var/lib/mysaaschat-acme/letsencrypt/logs"])
    assert code == 0 and "letsencrypt.log" in out, out  # certbot ran with the recorded directories


def test_the_challenge_written_by_the_companion_is_served_on_port_80(stack: Replay) -> None:
    assert stack.publish is not None
    code, out = stack.exec("gateway-acme", ["sh", "-c", "printf tok-9.thumb > "
                                                      "/var/lib/mysaaschat-acme/webroot/.well-known/acme-challenge/tok-9"])
    assert code == 0, out
    conn = http.client.HTTPConnection("127.0.0.1", stack.publish[80][1], timeout=10)
    try:
        conn.request("GET", "/.well-known/acme-challenge/tok-9", headers={"Host": DOMAIN})
        response = conn.getresponse()
        assert (response.status, response.read()) == (200, b"tok-9.thumb")
    finally:
        conn.close()


def recorded_reload_script(stack: Replay, state: Path) -> str:
    """The host script as the recorded watch command installs it, moved onto this engine."""
    watch = next(r for r in stack.resources("command:remote:Command") if r.name == "gateway-acme-watch")
    # printf '%s' <script> | sudo install -m 0755 /dev/stdin <RELOAD_SCRIPT>
    words = shlex.split(str(plain(watch.inputs)["create"]))
    at = next(i for i, w in enumerate(words) if w == acme.RELOAD_SCRIPT and words[i - 1] == "/dev/stdin")
    assert words[at - 9:at - 7] == ["printf", "%s"], words[at - 9:at + 1]
    script = words[at - 7]
    assert stack.docker_host
    return (script.replace("docker exec ", f"docker -H {stack.docker_host} exec ")
            .replace("/var/lib/docker/volumes/", f"{CACHE_DIR}/dockerd-data/volumes/")
            .replace(acme.STATE_FILE, str(state)))


def test_a_renewal_reaches_the_gateway_through_the_hook_and_the_hosts_reload(stack: Replay, tmp_path: Path) -> None:
    companion = plain(stack.containers["gateway-acme"].reg.inputs)["command"][0]
    hook = acme.deploy_hook()
    assert shlex.quote(hook) in companion  # the hook certbot would run is the recorded one
    before = served_certificate(stack)
    # A lineage as certbot leaves it, made inside the companion (its python3 and cryptography).
    code, out = stack.exec("gateway-acme", ["sh", "-c", "mkdir -p /tmp/lineage && python3 -c \"$PY\" $D /tmp/lineage"],
                           env={"PY": acme.BOOTSTRAP_PY, "D": DOMAIN})
    assert code == 0, out
    code, out = stack.exec("gateway-acme", ["sh", "-c", hook], env={"RENEWED_LINEAGE": "/tmp/lineage"})
    assert code == 0, out
    renewed = volume_cert(stack)
    assert renewed != before and served_certificate(stack) == before  # installed, not yet taken up

    script = tmp_path / "reload"
    script.write_text(recorded_reload_script(stack, tmp_path / "state"))
    done = subprocess.run(["sh", str(script)], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0 and "gateway reloaded" in done.stdout, (done.stdout, done.stderr)
    deadline = time.monotonic() + 10
    while served_certificate(stack) != renewed:
        assert time.monotonic() < deadline, "the renewed certificate was never served"
        time.sleep(0.2)
    again = subprocess.run(["sh", str(script)], capture_output=True, text=True, timeout=60, check=False)
    assert again.returncode == 0 and again.stdout == "", again  # nothing new: no reload
    assert stack.inspect("gateway")["RestartCount"] == 0


# --- letsencrypt: who may write the ACME volume ----------------------------------------------------

def test_the_acme_volume_takes_uid_101_from_the_gateway_image(
        engine_client: docker.DockerClient, engine_images: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> None:
    """components/gateway.py AcmeCompanion: certbot runs as 101, not root, so its volume must be
    writable by 101. The recorded never-started owner seed (the gateway image, the volume mounted
    on its /var/cache/nginx) makes Docker copy that directory's owner onto the empty volume at
    create; without it the volume is root's and 101 cannot write (the contrast)."""
    replay = Replay(engine_client, letsencrypt_staging(tmp_path_factory.mktemp("acme-owner")), engine_images)
    volume = next(r for r in replay.resources("docker:index/volume:Volume") if r.name == "gateway-acme-volume")
    owner = next(r for r in replay.resources("docker:index/container:Container") if r.name == "gateway-acme-owner")
    bare = "mysaaschat-staging-acme-bare"
    try:
        clean(engine_client)
        replay.volume(volume)
        replay.create(owner)
        engine_client.volumes.create(bare, labels={TEST_LABEL: "bare"})

        def write_as_101(name: str) -> tuple[int, str]:
            probe = engine_client.containers.run(
                engine_images["stub"], ["sh", "-c", "mkdir -p /v/certs && echo ok > /v/certs/x && stat -c '%u' /v"],
                user="101:101", volumes={name: {"bind": "/v", "mode": "rw"}}, labels={TEST_LABEL: "probe"},
                network_mode="none", detach=True, entrypoint=[])
            code = probe.wait(timeout=60)["StatusCode"]
            out = probe.logs().decode()
            probe.remove(force=True)
            return int(code), out

        assert write_as_101(plain(volume.inputs)["name"]) == (0, "101\n")
        code, out = write_as_101(bare)
        assert code != 0 and "Permission denied" in out, out
    finally:
        clean(engine_client)
