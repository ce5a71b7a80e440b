#!/usr/bin/env bash
# Set up a machine for this project: a ./venv with the pinned requirements and, with
# --test-tools, the real tools the tests judge our output with (Debian packages).
#   ./scripts/bootstrap.sh               # enough for `python -m ops synth` and `pulumi up`
#   ./scripts/bootstrap.sh --test-tools  # plus PostgreSQL, Redis, RabbitMQ, cloud-init, Node
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ "${1:-}" == "--test-tools" ]]; then
  sudo=""; [[ $(id -u) -eq 0 ]] || sudo="sudo"
  # docker.io is the engine the engine tests start (Debian 20.10.24, as on the host); debootstrap builds
  # their images without a registry; nftables puts back the firewall dockerd changed; nginx-light, openssl and wrk
  # run the gateway tests (tests/test_gateway_live.py) and bench.gateway; pgbackrest (with postgresql 15) runs
  # the backup tests (tests/test_backup_live.py), bench.backup and bench.backup_drill; the Prometheus family
  # judges and runs the monitoring files (tests/test_monitoring.py, tests/test_monitoring_live.py,
  # tests/test_blackbox_live.py).
  packages=(postgresql redis-server rabbitmq-server cloud-init docker.io debootstrap nftables iptables nginx-light openssl wrk pgbackrest
            prometheus prometheus-alertmanager prometheus-node-exporter prometheus-postgres-exporter
            prometheus-redis-exporter prometheus-nginx-exporter prometheus-blackbox-exporter)
  # python3-cryptography runs the certbot companion's bootstrap (as certbot's image would); systemd-analyze
  # (systemd) judges the certificate reload units (tests/test_acme.py).
  packages+=(python3-cryptography systemd)
  command -v node >/dev/null || packages+=(nodejs)
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -q
  # Services installed here are started by the tests themselves, on free loopback ports.
  $sudo apt-get install -y -q --no-install-recommends "${packages[@]}"
  requirements=requirements-dev.txt
else
  requirements=requirements.txt
fi

[[ -x venv/bin/python ]] || python3 -m venv venv
venv/bin/pip install -q --disable-pip-version-check -r "$requirements"
