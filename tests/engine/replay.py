"""Replay a recorded stack on a real Docker engine, doing what pulumi-docker would do with it.

A test instrument, not a deploy path. `ops synth` records every input the program gives each
resource; this performs, with the Docker SDK, the calls the provider makes for those inputs, in
the provider's order, so Docker itself judges them (a read-only root refusing an upload, DNS
answering for an unhealthy container, a limit not applied). Each step names the provider code it
mirrors: kreuzwerker/terraform-provider-docker v4.x (wrapped by pulumi-docker 5.x),
`internal/provider/resource_docker_container_funcs.go` (below: "container_funcs"),
`resource_docker_network_funcs.go`, `resource_docker_volume.go`.

Images are mapped to the stand-ins built by tests/engine/images.py: a store's image by its
repository name, the gateway's nginx to the nginx stand-in, certbot (`tls.mode: letsencrypt`) to the
certbot stand-in, every product service to the stub service.

The gateway is replayed only when the test says where its published ports go (`publish`): the
recorded 0.0.0.0:80 and 0.0.0.0:443 would take the machine's own ports and face its network, so a
test maps each recorded host port to a free port on 127.0.0.1 (the container ports, 8080/8443,
stay as recorded). That mapping and the image are the only departures from the recording. What the
gateway needs from other providers is realised here as those providers would: the self-signed
certificate and key (pulumi-tls, whose outputs the strict mocks only stand in for) with openssl from
the recorded inputs, and the reload `command:local:Command` run as recorded against this engine.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import secrets
import shlex
import shutil
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker
import docker.errors
from docker.types import Healthcheck, LogConfig

from components.canonical import parse_cpus, parse_go_duration
from ops.mocks import Registration, StrictMocks, digest
from ops.runner import Recording
from ops.strict import SECRET_SIG
from render.acme import ACME_DIR
from render.nginx import CONF_DIR, Layout, render_nginx

MiB = 1024 * 1024
CONTAINER = "docker:index/container:Container"
NETWORK = "docker:index/network:Network"
GATEWAY = "my-saas-chat:gateway:Gateway"
MONITORING = "my-saas-chat:monitoring:Monitoring"
VOLUME = "docker:index/volume:Volume"
IMAGE = "docker:index/remoteImage:RemoteImage"
COMMAND = "command:local:Command"
TLS_KEY = "tls:index/privateKey:PrivateKey"
TLS_CERT = "tls:index/selfSignedCert:SelfSignedCert"
STORES = ("postgres", "redis", "rabbitmq")
HOST_DOCKER = "unix:///var/run/docker.sock"  # what the local stack's reload command talks to
COMMANDS = ("command:local:Command", "command:remote:Command")
GATEWAY_CONF = f"{CONF_DIR}/nginx.conf"  # components/gateway.py CONF
RECORDED_DOCKER_CLI = "docker -H unix:///var/run/docker.sock"  # the local stack's host.docker_cli


class ReplayError(Exception):
    """A step the real provider would have failed on, with the engine's own message."""

    def __init__(self, resource: str, step: str, message: str) -> None:
        self.resource, self.step = resource, step
        super().__init__(f"{resource}: {step}: {message}")


def plain(value: Any) -> Any:
    """The recorded wire value as the provider receives it: secrets unwrapped (the engine gets the real
    value), whole numbers as ints."""
    if isinstance(value, dict) and SECRET_SIG in value and "value" in value:
        return plain(value["value"])
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    if isinstance(value, float) and value.is_integer():
        return int(value)  # the wire carries every number as a double; the schema's ints are ints
    return value


@dataclass
class Live:
    """A container the replay created: its engine id and name, and the registration it came from."""

    reg: Registration
    id: str
    name: str


@dataclass
class Replay:
    client: docker.DockerClient
    recording: Recording
    images: Mapping[str, str]  # logical image (postgres, redis, rabbitmq, stub) -> local tag
    containers: dict[str, Live] = field(default_factory=dict)  # by resource name
    log: list[str] = field(default_factory=list)
    events: list[tuple[float, str, str]] = field(default_factory=list)  # (wall-clock time, event, container)
    healthy_after: dict[str, float] = field(default_factory=dict)  # resource name -> seconds from start
    on_wait: Callable[[str], None] | None = None
    # Recorded host port -> (host address, host port) it is published on here; None: no gateway.
    publish: Mapping[int, tuple[str, int]] | None = None
    # The engine's socket, for the recorded commands' docker CLI (release commands, the gateway's reload).
    docker_host: str | None = None
    realised: dict[str, str] = field(default_factory=dict)  # mock provider output -> real value
    # Replay only what this accepts (an ec2 stack's stores bind host paths of the EC2 host): None, all.
    select: Callable[[Registration], bool] | None = None
    release_output: dict[str, str] = field(default_factory=dict)  # service -> its release command's output

    def _event(self, event: str, name: str) -> None:
        self.events.append((time.time(), event, name))
        self.log.append(f"{event} {name}")

    # --- what to replay ------------------------------------------------------------------

    def resources(self, typ: str) -> list[Registration]:
        return [r for r in self.recording.resources.values() if r.type == typ]

    def order(self) -> list[Registration]:
        """Docker resources in dependency order (the engine walks the same graph)."""
        docker_types = (NETWORK, VOLUME, CONTAINER)
        releases = {r.urn for r in self.recording.resources.values() if r.type in COMMANDS and r.name.endswith("-release")}
        # The gateway (its config volume, seed and container) only with somewhere to publish it. Never
        # monitoring (no stand-ins for its images; its files are proven by the real tools in
        # tests/test_monitoring*.py).
        monitoring = {r.urn for r in self.recording.resources.values() if r.type == MONITORING}
        gateway = monitoring | (set() if self.publish is not None else {
            r.urn for r in self.recording.resources.values() if r.type == GATEWAY})
        regs = {r.urn: r for r in self.recording.resources.values()
                if ((r.type in docker_types and r.parent not in gateway) or r.urn in releases)
                and (self.select is None or self.select(r))}
        done: list[Registration] = []
        seen: set[str] = set()

        def visit(urn: str) -> None:
            if urn in seen or urn not in regs:
                return
            seen.add(urn)
            for dep in regs[urn].dependencies:
                visit(dep)
            done.append(regs[urn])

        for urn in sorted(regs):
            visit(urn)
        return done

    def image_for(self, reg: Registration) -> str:
        """The stand-in for the RemoteImage this container depends on."""
        images = {r.urn: r for r in self.resources(IMAGE)}
        image = next(images[d] for d in reg.dependencies if d in images)
        repository = str(image.inputs["name"]).split("@")[0].rsplit(":", 1)[0].rsplit("/", 1)[-1]
        if repository in STORES:
            return self.images[repository]
        gateway = {r.urn for r in self.resources(GATEWAY)}
        if image.parent in gateway:
            return self.images["nginx"]
        return self.images["certbot" if repository == "certbot" else "stub"]

    def recorded_name(self, reg: Registration) -> str | None:
        """The generated name the program recorded for a service container (its `services` output):
        nginx.conf names the upstreams by it, so the replay gives the container that name."""
        if reg.name in self.containers:
            return None  # a replacement is auto-named anew (<resource name>-<7 random hex>), never the first name
        name = plain(self.recording.stack_outputs.get("services") or {}).get(reg.name)
        return str(name) if name else None

    # --- up ----------------------------------------------------------------------------------

    def waves(self) -> list[list[Registration]]:
        """`order()` grouped as the engine runs it: a resource starts once all it depends on exist,
        and independent ones run at once (Pulumi's default parallelism is unbounded)."""
        depth: dict[str, int] = {}
        for reg in self.order():  # dependencies come first
            depth[reg.urn] = 1 + max((depth[d] for d in reg.dependencies if d in depth), default=-1)
        waves: list[list[Registration]] = [[] for _ in range(max(depth.values(), default=-1) + 1)]
        for reg in self.order():
            waves[depth[reg.urn]].append(reg)
        return waves

    def up(self) -> None:
        if self.publish is not None:
            self.realise_tls()
        with ThreadPoolExecutor(max_workers=16) as pool:
            for wave in self.waves():
                # A failure in a wave stops the run after the wave, as the engine stops scheduling.
                for reg, live in zip(wave, pool.map(self._apply, wave), strict=True):
                    if live is not None:
                        self.containers[reg.name] = live

    def _apply(self, reg: Registration) -> Live | None:
        if reg.type == NETWORK:
            self.network(reg)
        elif reg.type == VOLUME:
            self.volume(reg)
        elif reg.type in COMMANDS:
            self.release(reg)
        else:
            return self.create(reg)
        return None

    def network(self, reg: Registration) -> None:
        # resource_docker_network_funcs.go resourceDockerNetworkCreate: NetworkCreate with the
        # name, driver, internal flag and labels; Docker picks the subnet from its address pool.
        i = plain(reg.inputs)
        self.client.networks.create(i["name"], driver=i.get("driver", "bridge"), internal=bool(i.get("internal")),
                                    labels=_labels(i), check_duplicate=True)

    def volume(self, reg: Registration) -> None:
        # resource_docker_volume.go resourceDockerVolumeCreate: VolumeCreate(name, driver, labels).
        i = plain(reg.inputs)
        self.client.volumes.create(i["name"], labels=_labels(i))

    def create(self, reg: Registration, *, image: str | None = None, name: str | None = None,
               wait_timeout: float | None = None) -> Live:
        """resourceDockerContainerCreate, step by step, then the `wait` poll (`wait_timeout`: a test's
        shorter deadline in place of the recorded one)."""
        i = plain(reg.inputs)
        api = self.client.api
        image = image or self.image_for(reg)
        # Pulumi auto-names a container without `name` as <resource name>-<7 random hex>.
        name = name or i.get("name") or self.recorded_name(reg) or f"{reg.name}-{secrets.token_hex(4)[:7]}"
        hc = i.get("healthcheck")
        # container_funcs: durations through time.ParseDuration (mirrored in components/canonical.py).
        health = Healthcheck(
            test=hc["tests"], interval=parse_go_duration(hc["interval"]), timeout=parse_go_duration(hc["timeout"]),
            retries=int(hc["retries"]), start_period=parse_go_duration(hc.get("startPeriod", "0s"))) if hc else None
        caps = i.get("capabilities") or {}
        # container_funcs: hostConfig from the inputs. Memory and MemorySwap are MB in the schema,
        # multiplied by 1024*1024; cpus is parsed to NanoCPUs; volumes with volume_name become
        # mounts of that named volume; tmpfs, log driver/options, init, restart policy as given.
        host_config = api.create_host_config(
            binds=[f"{v['volumeName']}:{v['containerPath']}:{'ro' if v.get('readOnly') else 'rw'}"
                   for v in i.get("volumes") or []],
            read_only=bool(i.get("readOnly")), tmpfs=i.get("tmpfs") or None,
            cap_drop=caps.get("drops"), cap_add=caps.get("adds"), security_opt=i.get("securityOpts"),
            mem_limit=int(i["memory"]) * MiB if "memory" in i else None,
            memswap_limit=int(i["memorySwap"]) * MiB if "memorySwap" in i else None,
            nano_cpus=parse_cpus(str(i["cpus"])) if "cpus" in i else None,
            shm_size=int(i["shmSize"]) * MiB if "shmSize" in i else None,
            init=i.get("init"), restart_policy={"Name": i.get("restart", "no")},
            network_mode=i.get("networkMode"),
            log_config=LogConfig(type=i.get("logDriver", "json-file"), config=i.get("logOpts") or {}),
            port_bindings=self.port_bindings(i.get("ports") or []) or None,
        )
        try:
            created = api.create_container(
                # container_funcs: `if v, ok := d.GetOk("entrypoint")`: config.Entrypoint.
                image, name=name, command=i.get("command"), entrypoint=i.get("entrypoints"), user=i.get("user"),
                environment=i.get("envs"),
                ports=[(int(p["internal"]), p.get("protocol", "tcp")) for p in i.get("ports") or []] or None,
                hostname=i.get("hostname"), labels=_labels(i), healthcheck=health, stop_timeout=i.get("stopTimeout"),
                host_config=host_config)
        except docker.errors.APIError as error:
            raise ReplayError(reg.name, "ContainerCreate", str(error.explanation or error)) from None
        cid = created["Id"]
        live = Live(reg, cid, name)
        # container_funcs: with networks_advanced, the container (created on the default
        # network) is disconnected from "bridge" and connected to each network with its aliases.
        networks = i.get("networksAdvanced") or []
        if networks and api.networks(names=["bridge"]):  # an engine run with --bridge=none has none
            try:
                api.disconnect_container_from_network(cid, "bridge")
            except docker.errors.APIError as error:  # the provider ignores exactly this one
                if "is not connected to the network bridge" not in str(error):
                    raise
        for net in networks:
            api.connect_container_to_network(cid, net["name"], aliases=net.get("aliases"))
        # container_funcs: each upload is a one-file tar (header Name = the `file` path, Mode from
        # `permissions`, Uid/Gid from owner/group) sent with CopyToContainer(ctx, id, "/", tar).
        for upload in i.get("uploads") or []:
            try:
                api.put_archive(cid, "/", _upload_tar({**upload, "content": self.realised.get(
                    str(upload.get("content", "")), upload.get("content", ""))}))
            except docker.errors.APIError as error:
                # The provider keeps the container (recorded with init errors); the replay stops here.
                api.remove_container(cid, force=True)
                raise ReplayError(reg.name, f"upload {upload['file']}", str(error.explanation or error)) from None
        # container_funcs: `if d.Get("start").(bool) { ContainerStart ...; if d.Get("wait") ... }`.
        if not i.get("start", True):
            self._event("created (never started)", name)
            return live
        api.start(cid)
        self._event("started", name)
        if i.get("wait"):
            self.wait_healthy(live, wait_timeout if wait_timeout is not None else float(i.get("waitTimeout", 60)))
        return live

    def port_bindings(self, ports: list[dict[str, Any]]) -> dict[str, list[tuple[str, int]]]:
        """structures.go portSetToDockerPorts: ExposedPorts `<internal>/<protocol>` and PortBindings
        {HostIP: ip, HostPort: external}; the host side moved as `publish` says (module docstring)."""
        bindings: dict[str, list[tuple[str, int]]] = {}
        for port in ports:
            if self.publish is None or int(port["external"]) not in self.publish:
                raise ReplayError("ports", "publish", f"no test mapping for recorded host port {port['external']}")
            key = f"{int(port['internal'])}/{port.get('protocol', 'tcp')}"
            bindings.setdefault(key, []).append(self.publish[int(port["external"])])
        return bindings

    def realise_tls(self) -> None:
        """pulumi-tls's PrivateKey and SelfSignedCert, from their recorded inputs, with openssl.

        hashicorp/terraform-provider-tls internal/provider: resource_private_key.go (ECDSA with the
        named curve, PEM), resource_self_signed_cert.go + common_cert.go createCertificate (subject,
        dns_names as SANs, validity_period_hours, allowed_uses as key usages, not a CA)."""
        keys = {r.urn: r for r in self.resources(TLS_KEY)}
        with tempfile.TemporaryDirectory(prefix="replay-tls-") as tmp:
            for cert in self.resources(TLS_CERT):
                i = plain(cert.inputs)
                key_reg = next(keys[d] for d in cert.dependencies if d in keys)
                k = plain(key_reg.inputs)
                assert k.get("algorithm") == "ECDSA", k  # the program's only choice
                curve = {"P256": "prime256v1", "P384": "secp384r1"}[k.get("ecdsaCurve", "P224")]
                key_file, cert_file = Path(tmp, f"{cert.name}.key"), Path(tmp, f"{cert.name}.pem")
                usages = {"digital_signature": "digitalSignature", "key_encipherment": "keyEncipherment"}
                extended = {"server_auth": "serverAuth", "client_auth": "clientAuth"}
                allowed = i.get("allowedUses") or []
                subprocess.run(
                    ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", f"ec_paramgen_curve:{curve}", "-nodes",
                     "-subj", f"/CN={i['subject']['commonName']}",
                     "-addext", "subjectAltName=" + ",".join(f"DNS:{n}" for n in i.get("dnsNames") or []),
                     "-addext", "basicConstraints=critical,CA:FALSE",
                     "-addext", "keyUsage=critical," + ",".join(usages[u] for u in allowed if u in usages),
                     "-addext", "extendedKeyUsage=" + ",".join(extended[u] for u in allowed if u in extended),
                     "-days", str(max(1, int(i["validityPeriodHours"]) // 24)),
                     "-keyout", str(key_file), "-out", str(cert_file)], check=True, capture_output=True)
                # What the strict mocks answered in synth (ops/mocks.py StrictMocks._computed), replaced
                # wherever the program put it (the seed's uploads).
                self.realised[self._mock_output(cert, "certPem")] = cert_file.read_text()
                self.realised[self._mock_output(key_reg, "privateKeyPem")] = key_file.read_text()

    def _mock_output(self, reg: Registration, prop: str) -> str:
        mock = StrictMocks(self.recording.stack, "", {})
        h = digest(self.recording.stack, reg.type, reg.name)
        return str(mock._computed(reg.type, reg.name, plain(reg.inputs), h)[prop])

    def run_command(self, name: str) -> subprocess.CompletedProcess[str]:
        """A recorded `command:local:Command`'s `create`, as pulumi-command runs it (`sh -c`), against
        this engine instead of the host's socket (pulumi/pulumi-command provider/pkg/provider/local)."""
        reg = next(r for r in self.resources(COMMAND) if r.name == name)
        script = str(plain(reg.inputs)["create"])
        assert self.docker_host, "a Replay that runs commands needs docker_host"
        return subprocess.run(["sh", "-c", script.replace(f"-H {HOST_DOCKER}", f"-H {shlex.quote(self.docker_host)}")],
                              capture_output=True, text=True, timeout=60, check=False)

    def release(self, reg: Registration, *, image: str | None = None, extra_env: Mapping[str, str] | None = None) -> str:
        """A service's release command, as pulumi-command's local Command runs it: the recorded `create`
        script under `/bin/sh -c`, the recorded `stdin` on its standard input, and a non-zero exit is
        the resource's error, `<exit status>: running "<script>":\n<output>` (pulumi/pulumi-command
        provider/pkg/provider/local/commandOutputs.go run). Only two things are mapped: the docker CLI
        to this engine's socket, and the recorded image id to the stand-in image. `extra_env` adds
        lines to the environment on stdin (a test's cue)."""
        i = plain(reg.inputs)
        if not self.docker_host:
            raise ReplayError(reg.name, "command", "no docker_host: the replay needs the engine's socket to run it")
        cli = "/usr/bin/docker" if shutil.which("/usr/bin/docker") else (shutil.which("docker") or "docker")
        script = str(i["create"])
        recorded_image = next(w for w in script.split() if w.startswith("sha256:"))
        script = script.replace(RECORDED_DOCKER_CLI, f"{cli} -H {self.docker_host}").replace(
            recorded_image, image or self.image_for(reg))
        stdin = str(i.get("stdin", "")) + "".join(f"{k}={v}\n" for k, v in (extra_env or {}).items())
        service = reg.name.removesuffix("-release")
        self._event("release started", service)
        result = subprocess.run(["/bin/sh", "-c", script], input=stdin, capture_output=True, text=True, timeout=300)
        output = result.stdout + result.stderr
        self.release_output[service] = output
        if result.returncode != 0:
            self._event("release failed", service)
            raise ReplayError(reg.name, "create", f"exit status {result.returncode}: running {script!r}:\n{output}")
        self._event("release done", service)
        return output

    def release_then_replace(self, name: str, *, image: str, extra_env: Mapping[str, str] | None = None) -> Live:
        """An image change of a service with a release command, in the engine's order: the command is
        replaced (its trigger, the image digest, changed) and runs first; the container, which depends
        on it, is replaced only if it succeeded. A failure leaves every container as it was."""
        release = next(r for r in self.recording.resources.values()
                       if r.type in COMMANDS and r.name == f"{name}-release")
        self.release(release, image=image, extra_env=extra_env)
        return self.replace(name, image=image)

    def wait_healthy(self, live: Live, timeout: float) -> float:
        """container_funcs `wait`: poll the health status until healthy; an error after wait_timeout."""
        start = time.monotonic()
        while True:
            state = self.client.api.inspect_container(live.id)["State"]
            status = (state.get("Health") or {}).get("Status")
            if self.on_wait:
                self.on_wait(live.name)
            if status == "healthy":
                elapsed = time.monotonic() - start
                self._event("healthy", live.name)
                self.healthy_after[live.reg.name] = elapsed
                return elapsed
            if time.monotonic() - start > timeout:
                logs = self.client.api.logs(live.id, tail=30).decode(errors="replace")
                raise ReplayError(live.reg.name, "wait", f"not healthy within {timeout:.0f} s (status {status}, "
                                  f"state {state.get('Status')}); last log lines:\n{logs}")
            time.sleep(0.5)

    # --- replacement and delete ---------------------------------------------------------------

    def delete(self, live: Live) -> None:
        """resourceDockerContainerDelete: stop with destroy_grace_seconds, then force-remove."""
        grace = int(plain(live.reg.inputs).get("destroyGraceSeconds", 0) or 0)
        self._event("stopping", live.name)
        # TP funcs.go Delete: ContainerStop with destroy_grace_seconds (0 when unset: an immediate
        # kill), then ContainerRemove{RemoveVolumes, Force: true}.
        self.client.api.stop(live.id, timeout=grace)
        self.client.api.remove_container(live.id, force=True, v=True)
        self._event("removed", live.name)

    def running(self) -> dict[str, Live]:
        """The containers that run (the never-started seeds excluded), by resource name."""
        return {n: c for n, c in self.containers.items() if plain(c.reg.inputs).get("start", True)}

    def replace(self, name: str, *, image: str | None = None, reg: Registration | None = None) -> Live:
        """A replacement as the engine orders it: create-before-delete unless deleteBeforeReplace.
        The new container takes `reg` (changed inputs) or the old registration, and `image`."""
        old = self.containers[name]
        reg = reg or old.reg
        if old.reg.delete_before_replace:
            self.delete(old)
            new = self.create(reg, image=image)
        else:
            new = self.create(reg, image=image)
            self.delete(old)
        self.containers[name] = new
        return new

    # --- an image change of a routed service, through the gateway --------------------------------

    def _recorded(self, name: str) -> Registration:
        return next(r for r in self.recording.resources.values() if r.name == name)

    def gateway_conf(self, names: Mapping[str, str], gateway: str = "gateway") -> str:
        """nginx.conf for these container names, as the program renders it: the seed's upload is
        `Output.all(**{svc: container.name}).apply(lambda names: render_nginx(env, names, layout))`
        (components/gateway.py Gateway), so a new container name re-renders it. Checked against the
        recording first: the recorded names give the recorded upload byte for byte."""
        env = self.recording.env
        layout = Layout(acme_dir=ACME_DIR) if env.tls.mode == "letsencrypt" else Layout()  # as Gateway chooses
        routed = {svc for svc, spec in env.services.items() if spec.routes}
        recorded_names = {svc: str(n) for svc, n in plain(self.recording.stack_outputs["services"]).items()
                          if svc in routed}
        uploads = {u["file"]: u["content"] for u in plain(self._recorded(f"{gateway}-files").inputs)["uploads"]}
        if render_nginx(env, recorded_names, layout) != uploads[GATEWAY_CONF]:
            raise ReplayError(f"{gateway}-files", "render", "render_nginx does not reproduce the recorded nginx.conf")
        return render_nginx(env, names, layout)

    def gateway_trigger(self, files: Mapping[str, str], gateway: str = "gateway") -> str:
        """The reload command's trigger for these file contents (by path; the others as recorded):
        components/gateway.py, sha256 of the JSON list of every file nginx reads, in the seed's order.
        Checked against the recording first: the recorded contents give the recorded trigger."""
        seed = plain(self._recorded(f"{gateway}-files").inputs)["uploads"]
        recorded = str(plain(self._recorded(f"{gateway}-reload").inputs)["triggers"][0])

        def sha(texts: list[str]) -> str:
            return hashlib.sha256(json.dumps(texts).encode()).hexdigest()

        if sha([u["content"] for u in seed]) != recorded:
            raise ReplayError(f"{gateway}-reload", "triggers", "the recorded trigger is not the digest of the seed's files")
        return sha([files.get(u["file"], u["content"]) for u in seed])

    def reseed(self, seed: str, files: Mapping[str, str]) -> Live:
        """A seed whose files changed, replaced as the engine replaces it: `upload` is ForceNew
        (resource_docker_container.go schema, `"upload": {... ForceNew: true}`) and the seed is
        create-first (components/container.py volume_seed), so a new never-started container uploads
        the new files into the same volume (resourceDockerContainerCreate, as `create`). Returns the
        old seed: its delete comes with the other replaced resources', after every create (`delete`)."""
        old = self.containers[seed]
        inputs = plain(old.reg.inputs)
        inputs["uploads"] = [{**u, "content": files[u["file"]]} if u["file"] in files else u
                             for u in inputs["uploads"]]
        self.containers[seed] = self.create(dataclasses.replace(old.reg, inputs=inputs))
        return old

    def swap_routed(self, name: str, *, image: str, wait_timeout: float | None = None,
                    gateway: str = "gateway") -> dict[str, float]:
        """An image change of a routed service, in the engine's order, with the gateway as recorded.

        The release command (its trigger, the image digest, changed) runs in the new image; the new
        container is created beside the old one and `wait`s for healthy (a ReplayError after the wait
        timeout: `up` fails there and nothing below runs, the old container keeps serving); the seed,
        whose nginx.conf is an Output of the container's new name, is replaced create-first; the reload
        command, whose trigger (the files' digest) changed, is replaced: pulumi-command's `triggers` is
        replaceOnChanges (provider/pkg/provider/common/inputs.go), and its create runs `nginx -t` then
        `nginx -s reload`; then the deletes of the replaced resources, once every create is done
        (pulumi/pulumi step_generator.go / deployment_executor.go, cited in components/gateway.py): the
        old container (SIGTERM, `destroy_grace_seconds`) and the old seed. Returns each step's end, in
        seconds from the start."""
        t0, steps = time.monotonic(), {}
        release = next((r for r in self.recording.resources.values()
                        if r.type in COMMANDS and r.name == f"{name}-release"), None)
        if release is not None:
            self.release(release, image=image)
            steps["released"] = time.monotonic() - t0
        old = self.containers[name]
        new = self.create(old.reg, image=image, wait_timeout=wait_timeout)
        steps["healthy"] = time.monotonic() - t0
        self.containers[name] = new
        routed = {svc for svc, spec in self.recording.env.services.items() if spec.routes}
        conf = self.gateway_conf({svc: live.name for svc, live in self.containers.items() if svc in routed}, gateway)
        old_seed = self.reseed(f"{gateway}-files", {GATEWAY_CONF: conf})
        steps["reseeded"] = time.monotonic() - t0
        self._event("reload", gateway)
        done = self.run_command(f"{gateway}-reload")
        if done.returncode != 0:
            raise ReplayError(f"{gateway}-reload", "create", f"exit status {done.returncode}:\n{done.stdout}{done.stderr}")
        steps["reloaded"] = time.monotonic() - t0
        self.delete(old)
        steps["old_removed"] = time.monotonic() - t0
        self.delete(old_seed)
        return steps

    # --- reading the running state --------------------------------------------------------------

    def exec(self, name: str, argv: Iterable[str], env: Mapping[str, str] | None = None) -> tuple[int, str]:
        result = self.client.api.exec_create(self.containers[name].id, list(argv), environment=dict(env or {}))
        output = self.client.api.exec_start(result["Id"]).decode(errors="replace")
        return int(self.client.api.exec_inspect(result["Id"])["ExitCode"]), output

    def inspect(self, name: str) -> dict[str, Any]:
        return self.client.api.inspect_container(self.containers[name].id)  # type: ignore[no-any-return]


def _labels(inputs: Mapping[str, Any]) -> dict[str, str]:
    return {item["label"]: item["value"] for item in inputs.get("labels") or []}


def _upload_tar(upload: Mapping[str, Any]) -> bytes:
    content = str(upload.get("content", "")).encode()
    info = tarfile.TarInfo(name=upload["file"])
    info.size = len(content)
    info.mode = int(upload.get("permissions", "0644"), 8)
    info.uid = int(upload.get("owner") or 0)
    info.gid = int(upload.get("group") or 0)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        tar.addfile(info, io.BytesIO(content))
    return buf.getvalue()
