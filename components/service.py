"""One product service: its pinned image and a hardened, zero-downtime-replaceable container.

The container's environment is derived from the model (`config.service_env`): shared values,
the service's overrides, secrets by reference and connection strings from the data stores.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import pulumi
import pulumi_command as command
import pulumi_docker as docker

from components.container import ContainerSpec, hardened_container, node_http_healthcheck, release_script
from components.data import DataStore
from components.host import Host
from components.network import Networks
from components.secrets import SecretStore
from config import Environment, StoreUrl, service_env
from config.model import SecretRef


@dataclass
class AppServiceArgs:
    env: Environment
    host: Host
    networks: Networks
    secrets: SecretStore
    stores: Mapping[str, DataStore]
    # Services this one waits for (from the model's depends_on), so they are healthy first.
    after: list[pulumi.Resource]


class AppService(pulumi.ComponentResource):
    container: docker.Container
    release: pulumi.Resource | None = None

    def __init__(self, name: str, args: AppServiceArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("my-saas-chat:service:AppService", name, None, opts)
        env, svc = args.env, args.env.services[name]
        docker_opts = args.host.docker_opts(self)
        # keep_locally: during a start-first replacement the old container still runs on the old
        # image; deleting the image resource must not try to remove it from the host.
        image = docker.RemoteImage(f"{name}-image", name=svc.image.reference, keep_locally=True, opts=docker_opts)

        literal: dict[str, str] = {}
        computed: dict[str, pulumi.Output[str]] = {}
        for var, value in service_env(env, name).items():
            if isinstance(value, SecretRef):
                computed[var] = args.secrets.value(value)
            elif isinstance(value, StoreUrl):
                computed[var] = args.stores[value.store].url_for(name)
            else:
                literal[var] = value
        # One Output for the whole list (secret as soon as one value is): a per-variable Output
        # chain made 1000-service synths three times slower for the same result.
        envs = pulumi.Output.all(**computed).apply(
            lambda values: [f"{k}={v}" for k, v in sorted({**literal, **values}.items())])

        networks = [args.networks.apps.name]
        if svc.uses:
            networks.append(args.networks.data.name)
        if svc.needs_egress:
            networks.append(args.networks.egress.name)
        # A service starts once the stores it uses are healthy, and after the services the model
        # says it depends on; nothing else orders it.
        after = [args.stores[s].container for s in svc.uses] + args.after
        if svc.release:
            # The release command (migrations) runs in the new image once the stores are healthy, and
            # the new container waits for it: a failed migration fails the update before the new
            # container exists, and the old one keeps serving (components/container.py release_script).
            stores: list[pulumi.Resource] = [args.stores[s].container for s in svc.uses]
            self.release = release_command(name, args, image, envs, stores, parent=self)
            after = [*after, self.release]
        self.container = hardened_container(
            name,
            ContainerSpec(
                service=name, image=image, user=svc.user, cpus=svc.cpu, memory_bytes=svc.memory,
                healthcheck=node_http_healthcheck(svc.health_path), health=svc.healthcheck.model_dump(),
                networks=networks, envs=envs, tmpfs=svc.tmpfs, stop_grace_seconds=svc.stop_grace_seconds,
                deploy_timeout_seconds=svc.deploy_timeout_seconds, labels={"com.mysaaschat.kind": svc.kind},
            ),
            env.stack,
            pulumi.ResourceOptions.merge(docker_opts, pulumi.ResourceOptions(depends_on=after)),
        )
        self.register_outputs({"container": self.container.name, "image": image.repo_digest})


def release_command(service: str, args: AppServiceArgs, image: docker.RemoteImage, envs: pulumi.Output[list[str]],
                    after: list[pulumi.Resource], *, parent: pulumi.Resource) -> pulumi.Resource:
    """The service's release command, run before every new container of the service: replaced (and so
    run) when the image digest changes (`triggers`, a `command` resource's replacement key), and run
    again by an update when its environment changes, since an update without an `update` script runs
    `create` (pulumi/pulumi-command provider/pkg/provider/local/commandController.go Update: "Use
    Create command if Update is unspecified"; remote likewise). It waits for the stores it migrates."""
    env, release = args.env, args.env.services[service].release
    svc = env.services[service]
    assert release is not None
    script = pulumi.Output.all(image.image_id, args.networks.data.name).apply(
        lambda values: release_script(
            args.host.docker_cli, service=service, stack=env.stack, image=values[0], network=values[1],
            user=svc.user, cpus=svc.cpu, memory_bytes=svc.memory, tmpfs=svc.tmpfs, command=release.command))

    def env_file(lines: list[str]) -> str:
        # docker's --env-file takes one VAR=value per line; a value with a newline cannot be passed.
        broken = [line.split("=", 1)[0] for line in lines if "\n" in line]
        if broken:
            raise ValueError(f"{service}: {', '.join(broken)} contain a newline; the release command cannot receive them")
        return "".join(f"{line}\n" for line in lines)

    text: pulumi.Output[str] = envs.apply(env_file)
    stdin: pulumi.Output[str] = pulumi.Output.secret(text)  # secret whatever the values are
    opts = pulumi.ResourceOptions(parent=parent, depends_on=[*args.host.engine_ready, image, *after])
    name, triggers = f"{service}-release", [image.repo_digest]
    if args.host.connection is not None:
        return command.remote.Command(name, connection=args.host.connection, create=script, stdin=stdin,
                                      triggers=triggers, opts=opts)
    return command.local.Command(name, create=script, stdin=stdin, triggers=triggers, opts=opts)
