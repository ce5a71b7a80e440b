"""My SaaS Chat: one stack of the environment. Read top to bottom, it is the table of contents."""

import pulumi

from components.backup import BackupStorage, BackupStorageArgs
from components.data import DataStore, DataStoreArgs
from components.gateway import Gateway, GatewayArgs
from components.host import Host, HostArgs
from components.monitoring import Monitoring, MonitoringArgs
from components.network import Networks, NetworksArgs
from components.secrets import SecretStore, SecretStoreArgs
from components.service import AppService, AppServiceArgs
from config import ConfigError, from_pulumi_runtime, load_environment

try:
    env = load_environment(from_pulumi_runtime())
except ConfigError as error:  # every problem at once, and no resource registered
    raise pulumi.RunError(f"invalid configuration:\n{error}") from None

secrets = SecretStore("secrets", SecretStoreArgs(env=env))
host = Host("host", HostArgs(env=env, secrets=secrets))
backup_storage = BackupStorage("backup", BackupStorageArgs(env=env, host=host))
networks = Networks("net", NetworksArgs(env=env, host=host))
stores = {
    kind: DataStore(kind, DataStoreArgs(env=env, host=host, network=networks.data.name, secrets=secrets))
    for kind in ("postgres", "redis", "rabbitmq")
}

services: dict[str, AppService] = {}
for name in env.service_order():
    after: list[pulumi.Resource] = [services[dep].container for dep in env.services[name].depends_on]
    services[name] = AppService(name, AppServiceArgs(env=env, host=host, networks=networks, secrets=secrets,
                                                     stores=stores, after=after))
# The edge: routes to each service's current container, reloaded (never replaced) on a change.
gateway = Gateway("gateway", GatewayArgs(env=env, host=host, networks=networks, secrets=secrets,
                                         containers={name: svc.container for name, svc in services.items()
                                                     if env.services[name].routes}))
# The eyes: Prometheus, Alertmanager, Grafana (under the gateway's /grafana/) and the exporters.
monitoring = Monitoring("monitoring", MonitoringArgs(env=env, host=host, networks=networks, secrets=secrets,
                                                     passwords={k: stores[k].password for k in ("postgres", "redis")},
                                                     gateway_certificate=gateway.certificate_pem))

pulumi.export("host_address", host.address)
pulumi.export("url", f"https://{env.domain}")
pulumi.export("services", {name: svc.container.name for name, svc in services.items()})
pulumi.export("images", {name: svc.image.reference for name, svc in env.services.items()})
