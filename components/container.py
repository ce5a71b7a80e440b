"""The one place that decides how every container of the environment is hardened and replaced.

Services and data stores describe *what* runs (`ContainerSpec`); `hardened_container` decides *how*:
non-root, read-only root, no capabilities, no privilege escalation, limits, log rotation, init,
and the replacement strategy. Keeping it here means a new component cannot forget a rule, and the
tests check every recorded container against the same rules.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import pulumi
import pulumi_docker as docker

MiB = 1024 * 1024


@dataclass(frozen=True)
class Mount:
    volume_name: pulumi.Input[str]
    container_path: str
    read_only: bool = False


@dataclass(frozen=True)
class Upload:
    """A file written into a volume-backed path before start (never into the read-only root)."""

    path: str
    content: pulumi.Input[str]
    owner: str
    permissions: str = "0400"


@dataclass
class ContainerSpec:
    service: str
    image: docker.RemoteImage
    user: str
    cpus: float
    memory_bytes: int
    healthcheck: list[str]
    health: Mapping[str, str | int]
    networks: Sequence[pulumi.Input[str]]
    envs: pulumi.Input[Sequence[pulumi.Input[str]]] = ()
    command: Sequence[str] | None = None
    tmpfs: Sequence[str] = ("/tmp",)
    mounts: Sequence[Mount] = ()
    uploads: Sequence[Upload] = ()
    stop_grace_seconds: int = 20
    deploy_timeout_seconds: int = 180
    # Stateless services are replaced start-first (zero downtime); stateful ones stop-first,
    # because two engines writing one data volume would corrupt it.
    lifecycle: Literal["stateless", "stateful"] = "stateless"
    fixed_name: str | None = None
    cap_add: Mapping[str, str] = field(default_factory=dict)  # capability -> why it is needed
    labels: Mapping[str, str] = field(default_factory=dict)


def hardened_container(name: str, spec: ContainerSpec, stack: str, opts: pulumi.ResourceOptions) -> docker.Container:
    if spec.lifecycle == "stateless" and spec.fixed_name:
        raise ValueError(f"{name}: a stateless container must not have a fixed name (it blocks start-first replacement)")
    if spec.lifecycle == "stateful" and not spec.fixed_name:
        raise ValueError(f"{name}: a stateful container needs a fixed name so two can never run at once")
    labels = {
        "com.mysaaschat.service": spec.service,
        "com.mysaaschat.stack": stack,
        "com.mysaaschat.lifecycle": spec.lifecycle,
        **spec.labels,
    }
    label_args = [docker.ContainerLabelArgs(label=k, value=v) for k, v in sorted(labels.items())]
    label_args.append(docker.ContainerLabelArgs(label="com.mysaaschat.image-digest", value=spec.image.repo_digest))
    replacement = pulumi.ResourceOptions(
        delete_before_replace=spec.lifecycle == "stateful",
        # Docker cannot change a healthcheck in place (kreuzwerker/terraform-provider-docker#988):
        # without this the new check would silently never be applied.
        replace_on_changes=["healthcheck"],
    )
    return docker.Container(
        name,
        name=spec.fixed_name,
        image=spec.image.image_id,
        user=spec.user,
        read_only=True,
        tmpfs={path: "rw,noexec,nosuid,size=64m" for path in spec.tmpfs},
        capabilities=docker.ContainerCapabilitiesArgs(drops=["ALL"], adds=sorted(spec.cap_add) or None),
        security_opts=["no-new-privileges:true"],
        memory=spec.memory_bytes // MiB,
        memory_swap=spec.memory_bytes // MiB,  # equal to memory: no swap, an OOM is loud not slow
        cpus=f"{spec.cpus:g}",
        init=True,
        restart="unless-stopped",
        log_driver="json-file",
        log_opts={"max-size": "10m", "max-file": "5"},
        stop_timeout=spec.stop_grace_seconds,
        destroy_grace_seconds=spec.stop_grace_seconds,
        envs=spec.envs or None,
        command=list(spec.command) if spec.command else None,
        networks_advanced=[
            docker.ContainerNetworksAdvancedArgs(name=network, aliases=[spec.service]) for network in spec.networks
        ],
        volumes=[
            docker.ContainerVolumeArgs(volume_name=m.volume_name, container_path=m.container_path, read_only=m.read_only)
            for m in spec.mounts
        ] or None,
        uploads=[
            docker.ContainerUploadArgs(file=u.path, content=u.content, permissions=u.permissions,
                                       owner=u.owner.split(":")[0], group=u.owner.split(":")[1])
            for u in spec.uploads
        ] or None,
        healthcheck=docker.ContainerHealthcheckArgs(tests=spec.healthcheck, **spec.health),  # type: ignore[arg-type]
        # `up` waits for the new container to turn healthy; a container that never does fails
        # the update while the old one keeps serving.
        wait=True,
        wait_timeout=spec.deploy_timeout_seconds,
        labels=label_args,
        opts=pulumi.ResourceOptions.merge(opts, replacement),
    )


def node_http_healthcheck(path: str) -> list[str]:
    """An HTTP check that needs only Node (service images are node:alpine, which has no curl).

    It exits 0 only on a 200 from the service's own port, read from $PORT (always derived).
    """
    target = json.dumps(path)
    script = (
        f"const r=require('http').get({{host:'127.0.0.1',port:process.env.PORT,path:{target},timeout:2500}},"
        "s=>{s.resume();process.exit(s.statusCode===200?0:1)});"
        "r.on('timeout',()=>{r.destroy();process.exit(1)});r.on('error',()=>process.exit(1))"
    )
    return ["CMD", "node", "-e", script]
