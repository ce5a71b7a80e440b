"""Docker networks that encode who may talk to whom.

`data` is internal (no route off the host): only the stores and the services that use them join
it. `apps` is internal too: service-to-service and, later, gateway-to-service traffic. Only
services that declare `egress` join `egress`, a network with a route to the internet. `edge` holds
the gateway alone: its published ports 80 and 443.
"""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_docker as docker

from components.host import Host
from config import Environment


@dataclass
class NetworksArgs:
    env: Environment
    host: Host


class Networks(pulumi.ComponentResource):
    def __init__(self, name: str, args: NetworksArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("my-saas-chat:network:Networks", name, None, opts)
        stack = args.env.stack

        def network(role: str, internal: bool) -> docker.Network:
            return docker.Network(
                f"{name}-{role}", name=f"mysaaschat-{stack}-{role}", driver="bridge", internal=internal,
                labels=[docker.NetworkLabelArgs(label="com.mysaaschat.stack", value=stack)],
                # A fixed name exists once: create-first replacement would fail ("network with name
                # ... already exists"), so the old network goes first (its containers with it).
                opts=pulumi.ResourceOptions.merge(args.host.docker_opts(self),
                                                  pulumi.ResourceOptions(delete_before_replace=True)))

        self.data = network("data", internal=True)
        self.apps = network("apps", internal=True)
        self.egress = network("egress", internal=False)
        # Published ports need a network with a route to the host: `apps` is internal, so the
        # gateway (and only the gateway) also joins `edge`.
        self.edge = network("edge", internal=False)
        self.register_outputs({"data": self.data.name, "apps": self.apps.name, "egress": self.egress.name,
                               "edge": self.edge.name})
