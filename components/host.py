"""The Docker host: an EC2 instance built for one job, or the laptop's own engine (`host.kind: local`).

Whatever the kind, the rest of the program only sees `Host.docker_opts()`: the explicit Docker
provider plus a dependency on "the engine answers". Default Docker providers are disabled in
Pulumi.yaml, so nothing can land on the machine that runs `pulumi up` by accident.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import pulumi
import pulumi_aws as aws
import pulumi_command as command
import pulumi_docker as docker
import pulumi_tls as tls

from components.secrets import SecretStore
from config import Environment
from config.model import Ami, SecretRef
from render.cloud_init import DATA_MOUNT, render_user_data

TOKEN = "my-saas-chat:host:Host"


@dataclass
class HostArgs:
    env: Environment
    secrets: SecretStore  # registry credentials for the Docker provider


class Host(pulumi.ComponentResource):
    provider: docker.Provider
    engine_ready: list[pulumi.Resource]
    address: pulumi.Output[str]
    # How a command reaches the host's `docker` CLI: over the engine-ready wait's SSH connection
    # (ec2), or on this machine against the configured endpoint (local).
    connection: command.remote.ConnectionArgs | None = None
    docker_cli: str = "docker"
    role: aws.iam.Role | None = None  # the instance role (ec2); components/backup.py grants it the backup prefix

    def __init__(self, name: str, args: HostArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        refuse_docker_environment(os.environ)
        super().__init__(TOKEN, name, None, opts)
        self._name = name
        env = args.env
        if env.host.kind == "local":
            self.address = pulumi.Output.from_input("localhost")
            self.engine_ready = []
            self.docker_cli = f"docker -H {env.host.docker_host}"
            self.provider = docker.Provider(f"{name}-docker", host=env.host.docker_host,
                                            registry_auth=registry_auth(env, args.secrets), opts=self._child())
        else:
            self._ec2(env, args.secrets)
        self.register_outputs({"address": self.address})

    def docker_opts(self, parent: pulumi.Resource) -> pulumi.ResourceOptions:
        """Options every Docker resource must use: this host's provider, after its engine answers."""
        return pulumi.ResourceOptions(parent=parent, provider=self.provider, depends_on=self.engine_ready)

    def _child(self, **kwargs: object) -> pulumi.ResourceOptions:
        return pulumi.ResourceOptions(parent=self, **kwargs)  # type: ignore[arg-type]

    @staticmethod
    def _ami(ami: Ami, invoke: pulumi.InvokeOutputOptions) -> pulumi.Output[str]:
        """The image: Debian's published SSM parameter, or a name filter. Either way `ignore_changes`
        on the instance's ami keeps a newer image from replacing the host unasked."""
        if ami.ssm_parameter:
            return aws.ssm.get_parameter_output(name=ami.ssm_parameter, opts=invoke).value
        return aws.ec2.get_ami_output(
            owners=ami.owners or [], most_recent=True, include_deprecated=ami.include_deprecated, opts=invoke,
            filters=[aws.ec2.GetAmiFilterArgs(name="name", values=[ami.name or ""]),
                     aws.ec2.GetAmiFilterArgs(name="architecture", values=[ami.architecture])]).id

    def _ec2(self, env: Environment, secrets: SecretStore) -> None:
        name, host = self._name, env.host
        assert host.ami and host.instance_type and host.root_volume and host.data_volume and host.ssh_public_key
        tags = {"Project": "my-saas-chat", "Stack": env.stack}
        invoke = pulumi.InvokeOutputOptions(parent=self)
        vpc = aws.ec2.get_vpc_output(default=True, opts=invoke)
        subnet = aws.ec2.get_subnet_output(default_for_az=True, availability_zone=host.availability_zone, opts=invoke)
        ami_id = self._ami(host.ami, invoke)
        group = aws.ec2.SecurityGroup(
            f"{name}-sg", vpc_id=vpc.id, description=f"my-saas-chat {env.stack}: web to all, SSH to admins", tags=tags,
            ingress=[
                aws.ec2.SecurityGroupIngressArgs(protocol="tcp", from_port=p, to_port=p, cidr_blocks=["0.0.0.0/0"],
                                                 description=d) for p, d in ((80, "http"), (443, "https"))
            ] + [aws.ec2.SecurityGroupIngressArgs(protocol="tcp", from_port=22, to_port=22,
                                                  cidr_blocks=list(host.admin_cidrs), description="ssh from admins")],
            egress=[aws.ec2.SecurityGroupEgressArgs(protocol="-1", from_port=0, to_port=0, cidr_blocks=["0.0.0.0/0"])],
            opts=self._child())
        # The address exists before the instance (on its own interface), so the host is reachable at
        # its final address from the first boot and the engine wait can start as soon as it runs.
        nic = aws.ec2.NetworkInterface(f"{name}-nic", subnet_id=subnet.id, security_groups=[group.id], tags=tags,
                                       opts=self._child())
        eip = aws.ec2.Eip(f"{name}-eip", domain="vpc", network_interface=nic.id, tags=tags, opts=self._child())
        data = aws.ebs.Volume(
            f"{name}-data", availability_zone=host.availability_zone, size=host.data_volume // 1024**3, type="gp3",
            encrypted=True, tags={**tags, "Name": f"my-saas-chat-{env.stack}-docker-data"},
            # Docker's data root, databases included: it outlives any instance and `pulumi destroy`.
            opts=self._child(protect=True, retain_on_delete=True))
        host_key = tls.PrivateKey(f"{name}-ssh-host-key", algorithm="ED25519", opts=self._child())
        key_pair = aws.ec2.KeyPair(f"{name}-admin-key", public_key=host.ssh_public_key, tags=tags, opts=self._child())
        role = aws.iam.Role(
            f"{name}-role", tags=tags,
            # iam/role.go stores `structure.NormalizeJsonString`: compact, every key sorted.
            assume_role_policy=json.dumps({"Version": "2012-10-17", "Statement": [
                {"Effect": "Allow", "Action": "sts:AssumeRole", "Principal": {"Service": "ec2.amazonaws.com"}}]},
                sort_keys=True, separators=(",", ":")),
            opts=self._child())
        self.role = role
        statements = host_statements(env)
        if statements:
            # A policy of its own: `inline_policies` is deprecated in pulumi-aws 7, and a Role that
            # sets it owns every inline policy exclusively (terraform-provider-aws iam/role.go).
            # IAM refuses a policy without statements, hence none at all then.
            aws.iam.RolePolicy(f"{name}-role-policy", role=role.id, name="least-privilege",
                               policy=policy_json(statements), opts=self._child())
        profile = aws.iam.InstanceProfile(f"{name}-profile", role=role.name, tags=tags, opts=self._child())
        user_data: pulumi.Output[str] = pulumi.Output.all(data.id, host_key.private_key_openssh, host_key.public_key_openssh).apply(
            lambda v: render_user_data(data_volume_id=v[0], host_private_key=v[1], host_public_key=v[2].strip(),
                                       admin_user=host.ssh_user, admin_public_key=host.ssh_public_key or "",
                                       backup_credentials=host.backup_bucket is not None))
        instance = aws.ec2.Instance(
            f"{name}-instance", ami=ami_id, instance_type=host.instance_type, availability_zone=host.availability_zone,
            iam_instance_profile=profile.name, key_name=key_pair.key_name,
            user_data=user_data,  # a secret: it carries the host's private key
            primary_network_interface=aws.ec2.InstancePrimaryNetworkInterfaceArgs(network_interface_id=nic.id),
            metadata_options=aws.ec2.InstanceMetadataOptionsArgs(
                http_tokens="required", http_endpoint="enabled",
                # Hop limit 1: containers (one hop further) cannot reach the instance role's credentials.
                http_put_response_hop_limit=1),
            root_block_device=aws.ec2.InstanceRootBlockDeviceArgs(
                volume_type="gp3", volume_size=host.root_volume // 1024**3, encrypted=True, delete_on_termination=True),
            tags={**tags, "Name": f"my-saas-chat-{env.stack}"},
            opts=self._child(
                # A newer AMI or edited user data must not replace the host (and stop the product) on
                # an unrelated `up`; rolling the host is explicit: `pulumi up --replace <instance urn>`.
                ignore_changes=["ami", "userData"],
                # pulumi-aws 7 stores user data in clear text (terraform-provider-aws v6 upgrade
                # guide: "no longer applies hashing"); it carries the host key, so the output is secret.
                additional_secret_outputs=["userData"],
                # The data volume and the address can belong to one instance at a time.
                delete_before_replace=True))
        aws.ec2.VolumeAttachment(f"{name}-data-attachment", device_name="/dev/sdf", volume_id=data.id,
                                 instance_id=instance.id, stop_instance_before_detaching=True, opts=self._child())

        self.address = eip.public_ip
        known_host = host_key.public_key_openssh.apply(lambda k: k.strip())
        self.connection = command.remote.ConnectionArgs(
            host=eip.public_ip, user=host.ssh_user, host_key=known_host,
            private_key=pulumi.Output.secret(host.ssh_private_key) if host.ssh_private_key else None,
            # port stated: pulumi-command stores the inferred default (remote/connection.go).
            port=22, dial_error_limit=60, per_dial_timeout=10)
        wait = command.remote.Command(
            f"{name}-engine-ready",
            connection=self.connection,
            # Explicit in the graph: nothing touches Docker before cloud-init finished, the data
            # volume is mounted and the engine answers.
            create=f"cloud-init status --wait >/dev/null; for i in $(seq 1 120); do mountpoint -q {DATA_MOUNT} "
                   "&& docker info >/dev/null 2>&1 && exit 0; sleep 5; done; exit 1",
            triggers=[instance.id],
            opts=self._child(depends_on=[instance]))
        self.engine_ready = [wait]
        if host.ssh_private_key:
            pulumi.Output.secret(host.ssh_private_key).apply(lambda k: write_operator_files(env.stack, private_key=k))
        self.provider = docker.Provider(
            f"{name}-docker",
            host=pulumi.Output.concat("ssh://", host.ssh_user, "@", eip.public_ip),
            # Resolves once the pinned key is written where the options point (the text itself never
            # changes, so the provider config does not either).
            ssh_opts=known_host.apply(lambda key: pinned_ssh_options(env.stack, key, host.ssh_options,
                                                                     identity=bool(host.ssh_private_key))),
            # The engine is not up when the provider is configured; `engine_ready` orders every
            # Docker resource after the wait instead.
            disable_docker_daemon_check=True,
            # Private service images: credentials read from Secrets Manager at `up`, kept secret.
            registry_auth=registry_auth(env, secrets),
            opts=self._child())


OPERATOR_DIR = "~/.ssh/my-saas-chat"  # ssh expands "~" itself, so the same text works on every operator machine


def host_alias(stack: str) -> str:
    return f"my-saas-chat-{stack}"


def ssh_options(stack: str, extra: list[str], *, identity: bool) -> list[str]:
    """Strict host-key checking against the key Pulumi generated: no trust-on-first-use, no prompt.

    The pinned key is in a known-hosts file the program writes on the operator's machine at every
    run (`write_operator_files`), under a fixed alias (HostKeyAlias), so a replaced instance with a
    new address keeps its identity and nothing depends on OpenSSH >= 8.5 (KnownHostsCommand, which
    Ubuntu 20.04, Debian 11 and Amazon Linux 2 lack). With `host.ssh_private_key` the Docker
    provider's ssh uses that key, as the engine-ready wait does; without it both use the agent.
    """
    options = [
        "-o", "StrictHostKeyChecking=yes",
        "-o", f"UserKnownHostsFile={OPERATOR_DIR}/{stack}.known_hosts",
        "-o", f"HostKeyAlias={host_alias(stack)}",
        "-o", "HostKeyAlgorithms=ssh-ed25519",
        "-o", "ServerAliveInterval=15",
        "-o", "ConnectTimeout=20",
    ]
    if identity:
        options += ["-o", f"IdentityFile={OPERATOR_DIR}/{stack}.key", "-o", "IdentitiesOnly=yes"]
    return options + [arg for option in extra for arg in ("-o", option)]


def write_operator_files(stack: str, *, host_public_key: str | None = None, private_key: str | None = None,
                         home: Path | None = None) -> None:
    """The files `ssh_options` names, written 0600 in a 0700 directory of the operator's ~/.ssh."""
    directory = (home or Path.home()) / ".ssh" / "my-saas-chat"
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    for name, text in ((f"{stack}.known_hosts", f"{host_alias(stack)} {host_public_key.strip()}\n" if host_public_key else None),
                       (f"{stack}.key", private_key.strip() + "\n" if private_key else None)):
        if text is None:
            continue
        path = directory / name
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(text)
        path.chmod(0o600)


def registry_auth(env: Environment, secrets: SecretStore) -> list[docker.ProviderRegistryAuthArgs] | None:
    return [docker.ProviderRegistryAuthArgs(
        address=r.address,
        username=secrets.value(SecretRef(secret=r.secret, key="username")),
        password=secrets.value(SecretRef(secret=r.secret, key="password")),
    ) for r in env.registries] or None


def pinned_ssh_options(stack: str, host_public_key: str, extra: list[str], *, identity: bool) -> list[str]:
    write_operator_files(stack, host_public_key=host_public_key)
    return ssh_options(stack, extra, identity=identity)


DOCKER_ENVIRONMENT = ("DOCKER_HOST", "DOCKER_CONTEXT", "DOCKER_CERT_PATH", "DOCKER_TLS_VERIFY", "DOCKER_CONFIG")


def refuse_docker_environment(environ: Mapping[str, str]) -> None:
    """The Docker provider and the ssh it runs read these from the operator's environment and can be
    pointed at another engine or credentials than the stack's; refuse to run rather than guess."""
    found = sorted(k for k in DOCKER_ENVIRONMENT if environ.get(k))
    if found:
        raise pulumi.RunError(f"unset {', '.join(found)} before running this program: they can redirect the Docker "
                              "provider away from the stack's host")


def host_statements(env: Environment) -> list[dict[str, object]]:
    """Least privilege: nothing but what another component grants for its own resource. The backup
    prefix (read, write, list; never delete) is granted by components/backup.py next to the bucket
    and its KMS key (render/backup_storage.py host_statements). The host reads no secret: the
    program reads Secrets Manager at `up`, with the operator's credentials, and hands values to
    containers."""
    return []


def policy_json(statements: list[dict[str, object]]) -> str:
    """An IAM policy in the form terraform-provider-aws stores (iam/role_policy.go `StateFunc:
    verify.LegacyPolicyNormalize`: compact, sorted keys, "Version" moved first), so the state and
    the input are byte-identical, not merely equivalent."""
    return '{"Version":"2012-10-17","Statement":' + json.dumps(statements, sort_keys=True, separators=(",", ":")) + "}"
