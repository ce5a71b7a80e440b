"""Live: the certificate-expiry measurement end to end, with Debian's real tools on loopback.

Real nginx serves certificates whose notAfter this test chose (made with `cryptography`); the real
blackbox exporter runs the RENDERED blackbox.yml, and a real Prometheus runs the rendered
`gateway-tls` job and alert rules. Test-only rewrites, and nothing else: the probed URL (the
gateway's `https://gateway:8443/healthz` becomes a loopback port; the TLS server name stays the
stack's domain), the `ca_file` path (a temporary file holding what the component writes there: the
stack's certificate), the exporter's address in the job, and the scrape and evaluation intervals.
"""

from __future__ import annotations

import datetime as dt
import urllib.parse
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import crossplane
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from config import Environment, load_environment, read_stack_file
from render import monitoring as m
from render.nginx import GATEWAY_HEALTH, d
from tests.conftest import require_tool, server_group
from tests.test_monitoring_live import free_port, get, query, replace_args, wait_for

ROOT = Path(__file__).resolve().parent.parent


def stack(name: str) -> Environment:
    return load_environment(read_stack_file(ROOT / f"Pulumi.{name}.yaml"))


def make_cert(directory: Path, name: str, domain: str, not_after: dt.datetime) -> Path:
    """A self-signed ECDSA certificate for `domain` ending exactly at `not_after`; writes <name>.crt/.key."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, domain)])
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)).not_valid_after(not_after)
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(domain)]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    (directory / f"{name}.key").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    path = directory / f"{name}.crt"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


def whole_seconds_from_now(days: float) -> dt.datetime:
    return (dt.datetime.now(dt.UTC) + dt.timedelta(days=days)).replace(microsecond=0)


@contextmanager
def nginx_serving(t: Path, domain: str, certs: dict[str, Path]) -> Iterator[dict[str, int]]:
    """Real nginx: one TLS server per certificate on a loopback port, answering /healthz like the gateway."""
    nginx = require_tool("nginx")
    ports = {name: free_port() for name in certs}
    servers = [d("server", block=[d("listen", f"127.0.0.1:{ports[name]}", "ssl"), d("server_name", domain),
                                  d("ssl_certificate", str(crt)), d("ssl_certificate_key", str(crt.with_suffix(".key"))),
                                  d("location", "=", GATEWAY_HEALTH, block=[d("return", "200", "ok")])])
               for name, crt in certs.items()]
    conf = [d("pid", f"{t}/nginx.pid"), d("error_log", f"{t}/nginx-error.log"), d("events", block=[]),
            d("http", block=[d("access_log", "off"), d("client_body_temp_path", f"{t}/cb"),
                             d("proxy_temp_path", f"{t}/px"), d("fastcgi_temp_path", f"{t}/fc"),
                             d("uwsgi_temp_path", f"{t}/uw"), d("scgi_temp_path", f"{t}/sc"), *servers])]
    (t / "nginx.conf").write_text(crossplane.build(conf) + "\n")
    with server_group([nginx, "-p", f"{t}/", "-c", f"{t}/nginx.conf", "-g", "daemon off;"], cwd=t):
        yield ports


@contextmanager
def blackbox(t: Path, env: Environment, ca: Path | None) -> Iterator[int]:
    """The real exporter on the rendered blackbox.yml; only the ca_file path is moved."""
    exporter = require_tool("prometheus-blackbox-exporter")
    config = yaml.safe_load(m.render_blackbox(env))
    tls = config["modules"][m.GATEWAY_TLS_MODULE]["http"]["tls_config"]
    if "ca_file" in tls:
        assert tls["ca_file"] == f"{m.BLACKBOX_DIR}/{m.BLACKBOX_CA_FILE}" and ca is not None
        tls["ca_file"] = str(ca)
    (t / "blackbox.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    argv = replace_args(m.blackbox_command(), {"--config.file": str(t / "blackbox.yml"),
                                               "--web.listen-address": f"127.0.0.1:{port}"})
    with server_group([exporter, *argv], cwd=t):
        wait_for("blackbox exporter", lambda: get(f"http://127.0.0.1:{port}/-/healthy") != "", 10)
        yield port


def probe(port: int, target: str) -> dict[str, float]:
    """One probe through the exporter's /probe, as Prometheus would ask for it; the samples by name."""
    text = get(f"http://127.0.0.1:{port}/probe?" + urllib.parse.urlencode(
        {"module": m.GATEWAY_TLS_MODULE, "target": target}))
    samples: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#") and "{" not in line.split(" ")[0]:
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)
    return samples


def test_the_probe_reports_the_served_certificates_notafter_verified_against_the_stacks_own(tmp_path: Path) -> None:
    """staging (tls.mode selfsigned): the probe trusts the stack's certificate only, and reports exactly
    the notAfter of the certificate nginx serves; a foreign certificate for the same name fails the probe."""
    env = stack("staging")
    assert env.tls.mode == "selfsigned"
    ours_ends = whole_seconds_from_now(37.25)
    ours = make_cert(tmp_path, "ours", env.domain, ours_ends)
    foreign = make_cert(tmp_path, "foreign", env.domain, whole_seconds_from_now(50))
    with nginx_serving(tmp_path, env.domain, {"ours": ours, "foreign": foreign}) as ports, \
            blackbox(tmp_path, env, ca=ours) as bb:
        url = f"https://127.0.0.1:{ports['ours']}{GATEWAY_HEALTH}"
        wait_for("nginx", lambda: probe(bb, url)["probe_success"] == 1, 10)
        good = probe(bb, url)
        assert good["probe_ssl_earliest_cert_expiry"] == ours_ends.timestamp()
        assert good["probe_http_status_code"] == 200 and good["probe_http_ssl"] == 1
        bad = probe(bb, f"https://127.0.0.1:{ports['foreign']}{GATEWAY_HEALTH}")
        assert bad["probe_success"] == 0 and "probe_ssl_earliest_cert_expiry" not in bad
        # Plain HTTP never passes for the certificate check (fail_if_not_ssl).
        assert probe(bb, f"http://127.0.0.1:{ports['ours']}{GATEWAY_HEALTH}")["probe_success"] == 0


def test_the_prod_probe_verifies_with_the_system_roots_and_acme_staging_skips_verification(tmp_path: Path) -> None:
    """prod (a public CA): a self-signed certificate fails the probe, so verification is on. A
    letsencrypt stack on Let's Encrypt's staging CA skips verification and still gets the expiry
    (prober/tls.go getEarliestCertExpiry reads PeerCertificates, see render/monitoring.py)."""
    prod = stack("prod")
    ends = whole_seconds_from_now(3.5)
    served = make_cert(tmp_path, "served", prod.domain, ends)
    acme_staging = prod.model_copy(update={"tls": prod.tls.model_copy(update={
        "mode": "letsencrypt", "acme_staging": True, "email": "ops@example.com", "secret": None})})
    assert yaml.safe_load(m.render_blackbox(acme_staging))["modules"][m.GATEWAY_TLS_MODULE]["http"][
        "tls_config"] == {"server_name": prod.domain, "insecure_skip_verify": True}
    (tmp_path / "prod").mkdir()
    (tmp_path / "le").mkdir()
    with nginx_serving(tmp_path, prod.domain, {"served": served}) as ports, \
            blackbox(tmp_path / "prod", prod, ca=None) as strict, blackbox(tmp_path / "le", acme_staging, ca=None) as lax:
        url = f"https://127.0.0.1:{ports['served']}{GATEWAY_HEALTH}"
        wait_for("nginx", lambda: probe(lax, url)["probe_success"] == 1, 10)
        assert probe(lax, url)["probe_ssl_earliest_cert_expiry"] == ends.timestamp()
        assert probe(strict, url)["probe_success"] == 0


def test_prometheus_runs_the_rendered_job_and_the_certificate_alert_follows_the_served_notafter(
        tmp_path: Path) -> None:
    """The rendered gateway-tls job and rules in a real Prometheus: the sample carries the chosen notAfter
    and the job's labels, and CertificateExpiring is active for a certificate ending within the model's
    `certificate_days` and not for one ending just after it. Two static target groups (one per certificate,
    told apart by their domain label) are the only change to the job besides addresses and intervals."""
    env = stack("staging")
    days = env.monitoring.alerts.certificate_days
    soon_ends, later_ends = whole_seconds_from_now(days - 0.5), whole_seconds_from_now(days + 0.5)
    # One trust anchor file holding both certificates (each is its own root).
    soon = make_cert(tmp_path, "soon", env.domain, soon_ends)
    later = make_cert(tmp_path, "later", env.domain, later_ends)
    (tmp_path / "ca.pem").write_bytes(soon.read_bytes() + later.read_bytes())
    prometheus = require_tool("prometheus")
    with ExitStack() as stack_:
        ports = stack_.enter_context(nginx_serving(tmp_path, env.domain, {"soon": soon, "later": later}))
        bb = stack_.enter_context(blackbox(tmp_path, env, ca=tmp_path / "ca.pem"))
        config: dict[str, Any] = yaml.safe_load(m.render_prometheus(env))
        job = next(j for j in config["scrape_configs"] if j["job_name"] == m.GATEWAY_TLS_JOB)
        assert job["static_configs"] == [{"targets": [m.gateway_probe_target()], "labels": {"domain": env.domain}}]
        job["static_configs"] = [{"targets": [f"https://127.0.0.1:{ports[n]}{GATEWAY_HEALTH}"], "labels": {"domain": n}}
                                 for n in ("soon", "later")]
        assert job["relabel_configs"][-1]["target_label"] == "__address__"
        job["relabel_configs"][-1]["replacement"] = f"127.0.0.1:{bb}"
        config["scrape_configs"] = [job]
        config["global"] |= {"scrape_interval": "1s", "evaluation_interval": "1s"}
        config.pop("alerting")
        (tmp_path / "rules.yml").write_text(m.render_rules(env))
        config["rule_files"] = [str(tmp_path / "rules.yml")]
        (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
        prom = free_port()
        stack_.enter_context(server_group([prometheus, *replace_args(m.prometheus_command(env), {
            "--config.file": str(tmp_path / "prometheus.yml"), "--storage.tsdb.path": str(tmp_path / "data"),
            "--web.listen-address": f"127.0.0.1:{prom}"})], cwd=tmp_path))
        wait_for("both probes", lambda: len(query(prom, f'probe_success{{job="{m.GATEWAY_TLS_JOB}"}} == 1')) == 2, 30)
        expiry = {r["metric"]["domain"]: float(r["value"][1])
                  for r in query(prom, f'probe_ssl_earliest_cert_expiry{{job="{m.GATEWAY_TLS_JOB}"}}')}
        assert expiry == {"soon": soon_ends.timestamp(), "later": later_ends.timestamp()}
        instance = query(prom, f'probe_success{{job="{m.GATEWAY_TLS_JOB}",domain="soon"}}')[0]["metric"]["instance"]
        assert instance == f"https://127.0.0.1:{ports['soon']}{GATEWAY_HEALTH}"
        wait_for("CertificateExpiring for soon", lambda: [r["metric"]["domain"] for r in query(
            prom, 'ALERTS{alertname="CertificateExpiring"}')] == ["soon"], 15)
        assert not query(prom, 'ALERTS{alertname="GatewayProbeFailed"}')
