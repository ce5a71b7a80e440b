"""The one place that decides how every container of the environment is hardened and replaced.

Services and data stores describe *what* runs (`ContainerSpec`); `hardened_container` decides *how*:
non-root, read-only root, no capabilities, no privilege escalation, limits, log rotation, init,
and the replacement strategy. Keeping it here means a new component cannot forget a rule, and the
tests check every recorded container against the same rules.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import pulumi
import pulumi_docker as docker

from components.canonical import canonical_cpus, canonical_duration
from config.host_access import HOST_ACCESS, HostMount

MiB = 1024 * 1024


@dataclass(frozen=True)
class Mount:
    volume_name: pulumi.Input[str] | None
    container_path: str
    read_only: bool = False
    host_path: str | None = None  # a bind mount of a host directory instead of a named volume


@dataclass(frozen=True)
class Upload:
    """A file for a container's volume, written by `volume_seed` (never into a read-only root)."""

    path: str
    content: pulumi.Input[str]
    owner: str  # "uid:gid", numeric: the tar header carries it (pulumi-docker 5.2 ContainerUploadArgs.owner/group)
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
    stop_grace_seconds: int = 20
    deploy_timeout_seconds: int = 180
    # Stateless services are replaced start-first (zero downtime); stateful ones stop-first,
    # because two engines writing one data volume would corrupt it. The edge (the gateway) has a
    # fixed name and publishes host ports, which two containers cannot hold at once: stop-first
    # too, and its configuration changes reach it by a reload, never a replacement.
    lifecycle: Literal["stateless", "stateful", "edge"] = "stateless"
    fixed_name: str | None = None
    cap_add: Mapping[str, str] = field(default_factory=dict)  # capability -> why it is needed
    labels: Mapping[str, pulumi.Input[str]] = field(default_factory=dict)
    # A stable host name: RabbitMQ names its node, and so its Mnesia directory, rabbit@<hostname>.
    hostname: str | None = None
    shm_size_bytes: int | None = None  # /dev/shm; Docker's default is 64 MiB
    ports: Mapping[int, int] = field(default_factory=dict)  # host port -> container port (the edge only)
    # Host paths bind-mounted into the container: only what config/host_access.py declares for this service.
    host_mounts: Sequence[HostMount] = ()
    extra_hosts: Mapping[str, str] = field(default_factory=dict)  # name -> address, in the container's /etc/hosts
    entrypoint: Sequence[str] | None = None  # None: the image's


def hardened_container(name: str, spec: ContainerSpec, stack: str, opts: pulumi.ResourceOptions) -> docker.Container:
    if spec.lifecycle == "stateless" and spec.fixed_name:
        raise ValueError(f"{name}: a stateless container must not have a fixed name (it blocks start-first replacement)")
    if spec.lifecycle == "stateful" and not spec.fixed_name:
        raise ValueError(f"{name}: a stateful container needs a fixed name so two can never run at once")
    if spec.ports and spec.lifecycle != "edge":
        raise ValueError(f"{name}: only the edge container publishes host ports")
    if spec.lifecycle == "edge" and not spec.fixed_name:
        raise ValueError(f"{name}: the edge container needs a fixed name (its reload addresses it by name)")
    declared = HOST_ACCESS.get(spec.service)
    binds = {(m.host_path, m.container_path, m.read_only) for m in spec.host_mounts}
    binds |= {(m.host_path, m.container_path, m.read_only) for m in spec.mounts if m.host_path}
    if binds - {(m.host_path, m.container_path, m.read_only) for m in (declared.mounts if declared else ())}:
        raise ValueError(f"{name}: host mounts must be declared for {spec.service} in config/host_access.py")
    if spec.lifecycle == "stateful" and not spec.hostname:
        raise ValueError(f"{name}: a stateful container needs a fixed hostname (a store's identity must survive replacement)")
    labels = {
        "com.mysaaschat.service": spec.service,
        "com.mysaaschat.stack": stack,
        "com.mysaaschat.lifecycle": spec.lifecycle,
        **spec.labels,
    }
    label_args = [docker.ContainerLabelArgs(label=k, value=v) for k, v in sorted(labels.items())]
    label_args.append(docker.ContainerLabelArgs(label="com.mysaaschat.image-digest", value=spec.image.repo_digest))
    replacement = pulumi.ResourceOptions(
        # Always explicit: pulumi-docker defaults containers to delete-before-replace
        # (pulumi-docker provider/resources.go, docker_container `DeleteBeforeReplace: true`), and
        # only a defined option overrides it (pulumi/pulumi step_generator.go: `if
        # goal.DeleteBeforeReplace != nil`); the Python SDK sends it defined for False too.
        delete_before_replace=spec.lifecycle != "stateless",
        # Docker cannot change a healthcheck in place (kreuzwerker/terraform-provider-docker#988;
        # TP v4.5.0 Update ignores it). Stateless containers replace on any change ("*"), which
        # also makes the engine *replace*, not update, a container left with init errors by a
        # failed `wait` (pulumi/pulumi step_generator.go applyReplaceOnChanges: a "*" path
        # contains "#initerror"). An update would clear the errors without any health check and the
        # healthy old container, pending delete, would then be removed: a failed release would
        # replace a healthy one. Replacing again waits for health first, and the old one is only
        # deleted after a replacement turns healthy.
        replace_on_changes=["*"] if spec.lifecycle == "stateless" else ["healthcheck"],
        # The provider's default create timeout is 20 minutes (kreuzwerker v4.5.0
        # resource_docker_container.go: `dockerContainerCreateDefaultTimeout = 20 * time.Minute`) and
        # the engine passes this one instead (pulumi/pulumi step.go CreateStep: `Timeout:
        # s.new.CustomTimeouts.Create`): the `wait` always fits, whatever deploy_timeout_seconds says.
        custom_timeouts=pulumi.CustomTimeouts(create=f"{spec.deploy_timeout_seconds + 120}s",
                                              delete=f"{spec.stop_grace_seconds + 60}s"),
    )
    health = {key: canonical_duration(value) if isinstance(value, str) else value for key, value in spec.health.items()}
    return docker.Container(
        name,
        name=spec.fixed_name,
        hostname=spec.hostname,
        image=spec.image.image_id,
        user=spec.user,
        read_only=True,
        tmpfs={path: "rw,noexec,nosuid,size=64m" for path in spec.tmpfs},
        capabilities=docker.ContainerCapabilitiesArgs(drops=["ALL"], adds=sorted(spec.cap_add) or None),
        security_opts=["no-new-privileges:true"],
        memory=spec.memory_bytes // MiB,
        memory_swap=spec.memory_bytes // MiB,  # equal to memory: no swap, an OOM is loud not slow
        cpus=canonical_cpus(spec.cpus),
        init=True,
        restart="unless-stopped",
        log_driver="json-file",
        log_opts={"max-size": "10m", "max-file": "5"},
        stop_timeout=spec.stop_grace_seconds,
        destroy_grace_seconds=spec.stop_grace_seconds,
        envs=spec.envs or None,
        command=list(spec.command) if spec.command else None,
        entrypoints=list(spec.entrypoint) if spec.entrypoint else None,
        networks_advanced=[
            docker.ContainerNetworksAdvancedArgs(name=network, aliases=[spec.service]) for network in spec.networks
        ],
        volumes=[
            docker.ContainerVolumeArgs(volume_name=m.volume_name, host_path=m.host_path,
                                       container_path=m.container_path, read_only=m.read_only)
            for m in spec.mounts
        ] + [
            docker.ContainerVolumeArgs(host_path=m.host_path, container_path=m.container_path, read_only=m.read_only)
            for m in spec.host_mounts
        ] or None,
        hosts=[docker.ContainerHostArgs(host=h, ip=ip) for h, ip in sorted(spec.extra_hosts.items())] or None,
        shm_size=spec.shm_size_bytes // MiB if spec.shm_size_bytes else None,
        # Every address of the host: the security group (ec2) decides who reaches them.
        ports=[docker.ContainerPortArgs(internal=inner, external=outer, ip="0.0.0.0", protocol="tcp")
               for outer, inner in sorted(spec.ports.items())] or None,
        healthcheck=docker.ContainerHealthcheckArgs(tests=spec.healthcheck, **health),  # type: ignore[arg-type]
        # `up` waits for the new container to turn healthy; a container that never does fails the
        # update. A stateless one's predecessor keeps running (create-first); a store's is already
        # gone (stop-first), so a store upgrade is a maintenance window (README).
        wait=True,
        wait_timeout=spec.deploy_timeout_seconds,
        labels=label_args,
        opts=pulumi.ResourceOptions.merge(opts, replacement),
    )


def volume_seed(name: str, *, image: docker.RemoteImage, volume: pulumi.Input[str], mount: str,
                uploads: Sequence[Upload], stack: str, opts: pulumi.ResourceOptions) -> docker.Container:
    """Files for a read-only container, written into its volume by a container that never starts.

    pulumi-docker uploads by extracting a tar at "/" (kreuzwerker/terraform-provider-docker
    v4.5.0 resource_docker_container_funcs.go, resourceDockerContainerCreate: `dstPath := "/"`,
    `client.CopyToContainer(ctx, retContainer.ID, dstPath, ...)`), and the daemon judges the
    extraction directory, not the entries: "/" on a read-only root is refused with "container
    rootfs is marked read-only" (moby v20.10 daemon/archive.go, containerExtractToDir:
    `if !toVolume && container.HostConfig.ReadonlyRootfs`). This container has a writable root and
    the volume mounted, so the tar lands in the volume; it is created, never started
    (`start: false`), and `must_run: false` keeps the provider's Read from flagging it as
    stopped (funcs.go resourceDockerContainerRead: "container is stopped but must_run is
    configured as true"). Secrets stay off command lines, environments and `docker inspect`.
    """
    if not uploads:
        raise ValueError(f"{name}: nothing to seed")
    return docker.Container(
        name,
        image=image.image_id,
        start=False,
        must_run=False,
        read_only=False,  # the point: the extraction directory "/" must be writable
        network_mode="none",
        restart="no",
        capabilities=docker.ContainerCapabilitiesArgs(drops=["ALL"]),
        security_opts=["no-new-privileges:true"],
        labels=[docker.ContainerLabelArgs(label=k, value=v) for k, v in sorted(
            {"com.mysaaschat.lifecycle": "seed", "com.mysaaschat.stack": stack}.items())],
        volumes=[docker.ContainerVolumeArgs(volume_name=volume, container_path=mount)],
        uploads=[
            docker.ContainerUploadArgs(file=u.path, content=u.content, permissions=u.permissions,
                                       owner=u.owner.split(":")[0], group=u.owner.split(":")[1])
            for u in uploads
        ],
        # Either order is safe for a container that never runs; create-first keeps the files in
        # place until the new seed has rewritten them.
        opts=pulumi.ResourceOptions.merge(opts, pulumi.ResourceOptions(delete_before_replace=False)),
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


RELEASE_LOG_LINES = 20  # how much of a release command's output an operator sees, on failure and success


def release_script(docker_cli: str, *, service: str, stack: str, image: str, network: str, user: str, cpus: float,
                   memory_bytes: int, tmpfs: Sequence[str], command: Sequence[str]) -> str:
    """A release-phase command (migrations), run once to completion in the service's new image.

    Why `docker run` from a `command` resource and not a run-to-completion `docker.Container`: with
    `attach: true` the provider waits for the container to stop and keeps its logs, but never looks at
    the exit code (kreuzwerker/terraform-provider-docker resource_docker_container_funcs.go,
    resourceDockerContainerCreate: `case <-attachCh:` only copies the logs into `container_logs`,
    then `resourceDockerContainerRead`, which records `exit_code` in state), so a failed migration
    would succeed as a resource and the new containers would start on an unmigrated schema. A
    `command` resource fails its create on a non-zero exit (pulumi/pulumi-command
    provider/pkg/provider/local/commandOutputs.go and remote/commandOutputs.go: `if err != nil {
    return fmt.Errorf("%w: running %q:\n%s", err, command, stdouterrbuf.String()) }`), which the
    engine reports as the update's error, with this script's output; the container that depends
    on it is then never created, and the old one keeps serving.

    Hardened like every service container (non-root, read-only root, no capabilities, no privilege
    escalation, the service's limits). The environment comes on standard input (`--env-file
    /dev/stdin`, the `command` resource's `stdin`), never on the command line. On a non-zero exit the
    script says so with the exit code and the last lines of the output, and exits with that code
    (`docker run` exits with the container's code; 125-127 are docker's own failures).
    """
    argv = [
        *docker_cli.split(), "run", "--rm", "--init",
        "--label", f"com.mysaaschat.service={service}", "--label", f"com.mysaaschat.stack={stack}",
        "--label", "com.mysaaschat.lifecycle=release",
        "--network", network, "--user", user, "--read-only",
        *[arg for path in tmpfs for arg in ("--tmpfs", f"{path}:rw,noexec,nosuid,size=64m")],
        "--cap-drop", "ALL", "--security-opt", "no-new-privileges:true",
        "--memory", f"{memory_bytes // MiB}m", "--memory-swap", f"{memory_bytes // MiB}m",
        "--cpus", canonical_cpus(cpus), "--env-file", "/dev/stdin",
        image, *command,
    ]
    run = " ".join(shlex.quote(a) for a in argv)
    what = shlex.quote(f"release command of {service} ({' '.join(command)})")
    n = RELEASE_LOG_LINES
    return (
        f'log=$(mktemp) || exit 1\n'
        f'{run} >"$log" 2>&1\n'
        f'code=$?\n'
        f'if [ "$code" -ne 0 ]; then\n'
        f'  echo {what}" failed with exit code $code; last {n} log lines:" >&2\n'
        f'  tail -n {n} "$log" >&2\n'
        f'  rm -f "$log"\n'
        f'  exit "$code"\n'
        f'fi\n'
        f'echo {what}" succeeded; last {n} log lines:"\n'
        f'tail -n {n} "$log"\n'
        f'rm -f "$log"\n'
    )
