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
from render.acme import ACME_DIR, acme_volume, companion_script, install_script, uninstall_script
from render.nginx import CONF_DIR, Layout, render_nginx

CONF = f"{CONF_DIR}/nginx.conf"
NGINX_OWNED_DIR = "/var/cache/nginx"  # uid 101's in nginx-unprivileged (and in the engine tests' stand-in)


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
    raise ValueError(f"tls.mode {env.tls.mode} has no Pulumi-made certificate")  # letsencrypt: AcmeCompanion


class Gateway(pulumi.ComponentResource):
    container: docker.Container
    reload: pulumi.Resource
    acme: AcmeCompanion | None = None  # tls.mode letsencrypt only
    # The certificate PEM this program installs (selfsigned, secretsmanager); None under letsencrypt.
    certificate_pem: pulumi.Output[str] | None = None

    def __init__(self, name: str, args: GatewayArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("my-saas-chat:gateway:Gateway", name, None, opts)
        env, spec = args.env, args.env.gateway
        docker_opts = args.host.docker_opts(self)
        image = docker.RemoteImage(f"{name}-image", name=spec.image.reference, keep_locally=True, opts=docker_opts)
        letsencrypt = env.tls.mode == "letsencrypt"
        layout = Layout(acme_dir=ACME_DIR) if letsencrypt else Layout()
        conf = pulumi.Output.all(**{svc: c.name for svc, c in sorted(args.containers.items())}).apply(
            lambda names: render_nginx(env, names, layout))
        files: dict[str, pulumi.Output[str]] = {CONF: conf}
        mounts: list[Mount] = []
        after: list[pulumi.Resource] = []
        container_name = f"mysaaschat-{env.stack}-gateway"
        if letsencrypt:
            # The certificate comes from the certbot companion through the ACME volume; the gateway
            # starts only once the companion is healthy, i.e. once a (temporary) pair exists there.
            self.acme = AcmeCompanion(f"{name}-acme", env, args, image, container_name, parent=self)
            mounts.append(Mount(self.acme.volume.name, ACME_DIR, read_only=True))
            after.append(self.acme.container)
        else:
            cert, key = certificate(name, env, args.secrets, self)
            self.certificate_pem = cert
            files |= {layout.cert: cert, layout.key: key}
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
                mounts=[Mount(volume.name, CONF_DIR, read_only=True), *mounts],
                lifecycle="edge", fixed_name=container_name,
                # Unprivileged ports inside, 80/443 on the host: no NET_BIND_SERVICE.
                ports={80: layout.http_port, 443: layout.https_port},
                stop_grace_seconds=30, deploy_timeout_seconds=60,
            ),
            env.stack,
            pulumi.ResourceOptions.merge(docker_opts, pulumi.ResourceOptions(depends_on=[seed, *after])),
        )
        # The digest of everything nginx reads: a change re-runs the reload (a `Command` replaces on
        # a changed trigger and runs `create`). Secret, since the key is part of it.
        digest = pulumi.Output.all(*files.values()).apply(
            lambda texts: hashlib.sha256(json.dumps(texts).encode()).hexdigest())
        self.reload = reload_command(f"{name}-reload", args.host, container_name, digest,
                                     depends_on=[seed, self.container, *args.containers.values()], parent=self)
        self.register_outputs({"container": self.container.name, "config_sha256": digest})


class AcmeCompanion(pulumi.ComponentResource):
    """`tls.mode: letsencrypt`: certbot beside the gateway, and the host's reload after each renewal.

    What runs and why is in render/acme.py. Wiring only:

    - the ACME volume takes its owner from the gateway image: Docker copies an image's directory
      into an empty volume mounted over it, ownership included, when a container is created
      (moby v20.10 daemon/create_unix.go createContainerOSSpecificSettings -> CopyImagePathContent
      -> container_unix.go copyExistingContents + copyOwnership). nginx-unprivileged's
      /var/cache/nginx belongs to uid 101, so a never-started seed of that image mounting the volume
      there makes it writable by 101: certbot runs as the gateway's uid (no root, and nginx reads
      the 0600 key), and nothing else gets a way in;
    - certbot runs hardened (non-root, read-only root, no capabilities) on the `egress` network
      only (the ACME API), stop-first (one certbot per volume), with no Docker socket;
    - on `ec2`, a remote command installs the host's path unit, timer and validated reload script
      (render/acme.py), so a renewal reaches nginx without any container reaching the engine.
    """

    volume: docker.Volume
    container: docker.Container
    watch: pulumi.Resource

    def __init__(self, name: str, env: Environment, args: GatewayArgs, gateway_image: docker.RemoteImage,
                 gateway: str, *, parent: pulumi.Resource) -> None:
        super().__init__("my-saas-chat:gateway:AcmeCompanion", name, None, pulumi.ResourceOptions(parent=parent))
        certbot, user = env.tls.certbot, env.gateway.user
        docker_opts = args.host.docker_opts(self)
        # The ACME account and the certificates: losing them means a new account and issuance
        # against Let's Encrypt's rate limits (5 duplicate certificates a week).
        self.volume = docker.Volume(
            f"{name}-volume", name=acme_volume(env), labels=[docker.VolumeLabelArgs(label="com.mysaaschat.stack", value=env.stack)],
            opts=pulumi.ResourceOptions.merge(docker_opts, pulumi.ResourceOptions(protect=True, retain_on_delete=True)))
        owner = volume_seed(
            f"{name}-owner", image=gateway_image, volume=self.volume.name, mount=NGINX_OWNED_DIR, stack=env.stack,
            opts=docker_opts, uploads=[Upload(path=f"{NGINX_OWNED_DIR}/README", owner=user, permissions="0444",
                                              content="The gateway's ACME volume (render/acme.py).\n")])
        image = docker.RemoteImage(f"{name}-image", name=certbot.image.reference, keep_locally=True, opts=docker_opts)
        self.container = hardened_container(
            name,
            ContainerSpec(
                service=name, image=image, user=user, cpus=certbot.cpu, memory_bytes=certbot.memory,
                # Healthy once a pair exists (the temporary one at first): the gateway waits for it.
                healthcheck=["CMD-SHELL", f"test -s {ACME_DIR}/certs/fullchain.pem && test -s {ACME_DIR}/certs/privkey.pem"],
                health={"interval": "10s", "timeout": "3s", "retries": 3, "start_period": "10s"},
                networks=[args.networks.egress.name],
                entrypoint=["/bin/sh", "-c"], command=[companion_script(env)],
                mounts=[Mount(self.volume.name, ACME_DIR)],
                lifecycle="stateful", fixed_name=f"mysaaschat-{env.stack}-gateway-acme", hostname="gateway-acme",
                stop_grace_seconds=10, deploy_timeout_seconds=60,
            ),
            env.stack,
            pulumi.ResourceOptions.merge(docker_opts, pulumi.ResourceOptions(depends_on=[owner])),
        )
        if args.host.connection is None:
            raise ValueError("tls.mode letsencrypt needs an ec2 host")  # refused by config/rules.py before this
        install = install_script(env, nginx=f"{args.host.docker_cli} exec {gateway} nginx -c {CONF}")
        self.watch = command.remote.Command(
            f"{name}-watch", connection=args.host.connection, create=install, delete=uninstall_script(),
            triggers=[hashlib.sha256(install.encode()).hexdigest()],
            opts=pulumi.ResourceOptions(parent=self, depends_on=args.host.engine_ready))
        self.register_outputs({"container": self.container.name, "volume": self.volume.name})


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


