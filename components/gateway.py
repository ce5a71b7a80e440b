"""The public edge: nginx in front of every routed service, the only container publishing host ports.

How a change reaches it without dropping a request:

- Its configuration (nginx.conf, certificate, key) lives in a config volume, written by a
  never-started seed container (`volume_seed`: Docker refuses uploads into a read-only container)
  and mounted read-only. The gateway container itself carries no digest of the configuration, so a
  new route, limit or certificate never replaces it (a fixed-name container with published ports
  cannot be replaced start-first: two cannot hold port 443).
- A changed configuration replaces the seed (create-first, which rewrites the files in place), and
  the `reload` command, triggered by the configuration's digest, runs `nginx -t` and then
  `nginx -s reload` inside the running gateway: a bad file is refused and the old configuration keeps
  serving; a good one is taken up by new workers while the old ones finish their requests.
- Upstreams name each service's current container (render/nginx.py). The configuration is an Output
  of every service container's name, so a service swap runs, in the engine's own order: new container
  created and healthy (`wait`), then its dependents (the seed and the reload: nginx now sends to the
  new one), and the old container deleted last. Verified in pulumi/pulumi at 1b59498 (2026-08-21),
  pkg/resource/deploy/step_generator.go: a create-before-delete replacement returns only
  `NewCreateReplacementStep(...)` and `NewReplaceStep(...)`, with the comment "the delete step is
  generated 'later' on, after all creates/updates finish"; the old state's delete comes from
  `GenerateDeletes` ("Planner decided to delete ... due to replacement"), which
  deployment_executor.go calls only in `performPostSteps`, once the program has registered every
  resource and no step is outstanding (`if seenNil && ex.asyncEventsExpected == 0`). The reload is
  a registered resource of the same `up`, so it has run before any replaced container is deleted.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass

import pulumi
import pulumi_command as command
import pulumi_docker as docker
import pulumi_tls as tls

from components.container import ContainerSpec, Mount, Upload, hardened_container, volume_seed
from components.host import Host
from components.network import Networks
from components.secrets import SecretStore
from config import Environment
from config.model import SecretRef
from render.nginx import CONF_DIR, Layout, render_nginx

CONF = f"{CONF_DIR}/nginx.conf"


@dataclass
class GatewayArgs:
    env: Environment
    host: Host
    networks: Networks
    secrets: SecretStore
    containers: Mapping[str, docker.Container]  # every routed service's container


def certificate(name: str, env: Environment, secrets: SecretStore,
                parent: pulumi.Resource) -> tuple[pulumi.Output[str], pulumi.Output[str]]:
    """(certificate PEM, private key PEM) for the stack's `tls.mode`; the key is always a secret."""
    if env.tls.mode == "secretsmanager":
        assert env.tls.secret  # the rules require it
        return (secrets.value(SecretRef(secret=env.tls.secret, key="certificate")),
                secrets.value(SecretRef(secret=env.tls.secret, key="private_key")))
    if env.tls.mode == "selfsigned":
        key = tls.PrivateKey(f"{name}-tls-key", algorithm="ECDSA", ecdsa_curve="P256",
                             opts=pulumi.ResourceOptions(parent=parent))
        cert = tls.SelfSignedCert(
            f"{name}-tls-cert", private_key_pem=key.private_key_pem, validity_period_hours=env.tls.validity_days * 24,
            # Renewed (replaced) by the first `up` in the last tenth of its life.
            early_renewal_hours=env.tls.validity_days * 24 // 10,
            allowed_uses=["digital_signature", "key_encipherment", "server_auth"],
            dns_names=[env.domain], subject=tls.SelfSignedCertSubjectArgs(common_name=env.domain),
            opts=pulumi.ResourceOptions(parent=parent))
        return cert.cert_pem, pulumi.Output.secret(key.private_key_pem)
    raise ValueError(f"tls.mode {env.tls.mode} is not supported yet")  # refused by the rules before this


class Gateway(pulumi.ComponentResource):
    container: docker.Container
    reload: pulumi.Resource

    def __init__(self, name: str, args: GatewayArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("my-saas-chat:gateway:Gateway", name, None, opts)
        env, spec = args.env, args.env.gateway
        docker_opts = args.host.docker_opts(self)
        image = docker.RemoteImage(f"{name}-image", name=spec.image.reference, keep_locally=True, opts=docker_opts)
        cert, key = certificate(name, env, args.secrets, self)
        conf = pulumi.Output.all(**{svc: c.name for svc, c in sorted(args.containers.items())}).apply(
            lambda names: render_nginx(env, names))
        layout = Layout()
        files = {CONF: conf, layout.cert: cert, layout.key: key}
        volume = docker.Volume(f"{name}-config", name=f"mysaaschat-{env.stack}-gateway-config",
                               labels=[docker.VolumeLabelArgs(label="com.mysaaschat.stack", value=env.stack)],
                               opts=pulumi.ResourceOptions.merge(docker_opts,
                                                                 pulumi.ResourceOptions(delete_before_replace=True)))
        seed = volume_seed(
            f"{name}-files", image=image, volume=volume.name, mount=CONF_DIR, stack=env.stack, opts=docker_opts,
            uploads=[Upload(path=path, owner=spec.user, content=content, permissions="0400")
                     for path, content in sorted(files.items())])
        self.container = hardened_container(
            name,
            ContainerSpec(
                service=name, image=image, user=spec.user, cpus=spec.cpu, memory_bytes=spec.memory,
                healthcheck=["CMD", "wget", "-q", "-O", "/dev/null", f"http://127.0.0.1:{layout.http_port}/healthz"],
                health={"interval": "10s", "timeout": "3s", "retries": 3, "start_period": "5s"},
                networks=[args.networks.apps.name, args.networks.edge.name],
                command=["nginx", "-c", CONF, "-g", "daemon off;"],
                # pid and every temp path of render/nginx.py; /var/cache/nginx is the image's default.
                tmpfs=("/tmp", "/var/cache/nginx"),
                mounts=[Mount(volume.name, CONF_DIR, read_only=True)],
                lifecycle="edge", fixed_name=f"mysaaschat-{env.stack}-gateway",
                # Unprivileged ports inside, 80/443 on the host: no NET_BIND_SERVICE.
                ports={80: layout.http_port, 443: layout.https_port},
                stop_grace_seconds=30, deploy_timeout_seconds=60,
            ),
            env.stack,
            pulumi.ResourceOptions.merge(docker_opts, pulumi.ResourceOptions(depends_on=[seed])),
        )
        # The digest of everything nginx reads: a change re-runs the reload (a `Command` replaces on
        # a changed trigger and runs `create`). Secret, since the key is part of it.
        digest = pulumi.Output.all(*files.values()).apply(
            lambda texts: hashlib.sha256(json.dumps(texts).encode()).hexdigest())
        self.reload = reload_command(f"{name}-reload", args.host, f"mysaaschat-{env.stack}-gateway", digest,
                                     depends_on=[seed, self.container, *args.containers.values()], parent=self)
        self.register_outputs({"container": self.container.name, "config_sha256": digest})


def reload_script(docker_cli: str, container: str) -> str:
    """Validate, then reload: a configuration nginx refuses never replaces the running one."""
    exec_ = f"{docker_cli} exec {container} nginx -c {CONF}"
    return f"{exec_} -t -q && {exec_} -s reload"


def reload_command(name: str, host: Host, container: str, digest: pulumi.Output[str], *,
                   depends_on: list[pulumi.Resource], parent: pulumi.Resource) -> pulumi.Resource:
    opts = pulumi.ResourceOptions(parent=parent, depends_on=[*host.engine_ready, *depends_on])
    script = reload_script(host.docker_cli, container)
    triggers = [pulumi.Output.unsecret(digest)]  # a digest reveals nothing; the trigger is diffed in the clear
    if host.connection is not None:
        return command.remote.Command(name, connection=host.connection, create=script, triggers=triggers, opts=opts)
    return command.local.Command(name, create=script, triggers=triggers, opts=opts)


