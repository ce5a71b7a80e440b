"""`tls.mode: letsencrypt`: the certbot companion's script and the host's validated reload on renewal.

Pure functions of the model. The pieces and why:

- **One ACME volume**, mounted read-write in the companion and read-only in the gateway at
  `ACME_DIR`: `webroot/` (HTTP-01 challenge files, served by the gateway at
  `/.well-known/acme-challenge/` on port 80, which never redirects that path), `certs/` (the pair
  nginx reads, `fullchain.pem` and `privkey.pem`, and the `reload-requested` stamp) and
  `letsencrypt/` (certbot's config, work and log directories: the account, the lineage).
- **No deadlock at the first start:** nginx refuses to start without its certificate, and the
  certificate needs nginx serving the challenge. The companion first writes a temporary
  self-signed pair for the domain when `certs/` has none (its healthcheck turns healthy only then,
  and the gateway depends on it), then asks Let's Encrypt, retrying every few minutes until the
  gateway answers the challenge.
- **Renewal:** `certbot certonly --keep-until-expiring` every `check_every_hours` is a no-op until
  the certificate is due (30 days before expiry), then renews; certbot's `--deploy-hook` (run only
  after a successful issuance or renewal) copies the new pair into `certs/` by atomic renames and
  writes the new certificate's sha256 into `certs/reload-requested`.
- **The reload without the Docker socket:** the companion cannot reach nginx's master (another
  container, another PID namespace), and giving it the Docker socket would give it the host. The
  host watches the stamp instead: a systemd path unit on the volume's host path starts a oneshot
  that runs the same validated reload as a config change (`nginx -t`, then `nginx -s reload`) when
  the stamp differs from the last one applied, and an hourly timer runs it too (a stamp written
  while the host was down, or a reload refused before). A pair nginx refuses fails the unit and
  is retried; the old certificate keeps serving meanwhile.
"""

from __future__ import annotations

import shlex
import textwrap

from config import Environment

ACME_DIR = "/var/lib/mysaaschat-acme"  # where the ACME volume is mounted, in the companion and the gateway
LETSENCRYPT_STAGING = "https://acme-staging-v02.api.letsencrypt.org/directory"
UNIT = "mysaaschat-gateway-cert-reload"
RELOAD_SCRIPT = f"/usr/local/sbin/{UNIT}"
STATE_FILE = "/var/lib/mysaaschat/gateway-cert-reloaded"


def acme_volume(env: Environment) -> str:
    return f"mysaaschat-{env.stack}-acme"


def host_volume_path(env: Environment, docker_root: str = "/var/lib/docker") -> str:
    """The ACME volume's directory on the host (the local driver's `<root>/volumes/<name>/_data`)."""
    return f"{docker_root}/volumes/{acme_volume(env)}/_data"


# The temporary pair: certbot's image always has Python and `cryptography` (certbot depends on it),
# not necessarily the openssl CLI. ECDSA P-256, the domain as CN and SAN, a week: long enough to
# get the real one, short enough that nobody mistakes it for one.
BOOTSTRAP_PY = '''\
import datetime, os, sys
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
domain, certs = sys.argv[1], sys.argv[2]
key = ec.generate_private_key(ec.SECP256R1())
name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, domain)])
now = datetime.datetime.now(datetime.timezone.utc)
cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=7))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(domain)]), critical=False)
        .sign(key, hashes.SHA256()))
pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
for name, data in (("privkey.pem", pem), ("fullchain.pem", cert.public_bytes(serialization.Encoding.PEM))):
    tmp = os.path.join(certs, name + ".tmp")
    with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as out:
        out.write(data)
    os.rename(tmp, os.path.join(certs, name))
'''


def deploy_hook(acme_dir: str = ACME_DIR) -> str:
    """certbot's --deploy-hook (sh, with RENEWED_LINEAGE set): install the new pair, then ask for a reload.

    The key first, then the certificate, each by rename: nginx reads both only at a reload, which
    the stamp, written last, requests. Wrapped in `sh -c`: certbot refuses a hook whose first word
    is not a program on PATH (certbot/_internal/hooks.py validate_hook: "Unable to find deploy-hook
    command set in the PATH", found by the engine test with Debian's certbot)."""
    certs = f"{acme_dir}/certs"
    return "sh -c " + shlex.quote(f'set -eu; umask 077; '
            f'cp "$RENEWED_LINEAGE/privkey.pem" {certs}/privkey.pem.tmp; '
            f'cp "$RENEWED_LINEAGE/fullchain.pem" {certs}/fullchain.pem.tmp; '
            f'mv {certs}/privkey.pem.tmp {certs}/privkey.pem; mv {certs}/fullchain.pem.tmp {certs}/fullchain.pem; '
            f'sha256sum {certs}/fullchain.pem | cut -d" " -f1 > {certs}/reload-requested.tmp; '
            f'mv {certs}/reload-requested.tmp {certs}/reload-requested')


def certbot_args(env: Environment, acme_dir: str = ACME_DIR) -> list[str]:
    assert env.tls.email, "config/rules.py requires tls.email for letsencrypt"
    le = f"{acme_dir}/letsencrypt"
    args = ["certbot", "certonly", "--non-interactive", "--agree-tos", "--no-eff-email", "--email", env.tls.email,
            "--webroot", "--webroot-path", f"{acme_dir}/webroot", "--domain", env.domain, "--cert-name", env.domain,
            "--key-type", "ecdsa", "--keep-until-expiring",
            "--config-dir", f"{le}/config", "--work-dir", f"{le}/work", "--logs-dir", f"{le}/logs",
            "--deploy-hook", deploy_hook(acme_dir)]
    if env.tls.acme_staging:
        args += ["--server", LETSENCRYPT_STAGING]
    return args


def companion_script(env: Environment, acme_dir: str = ACME_DIR, retry_seconds: int = 300) -> str:
    """The companion's whole life (run by `sh -c`): bootstrap pair, then issue/renew forever."""
    every = env.tls.certbot.check_every_hours * 3600
    certs = f"{acme_dir}/certs"
    certbot = shlex.join(certbot_args(env, acme_dir))
    bootstrap = f"python3 -c {shlex.quote(BOOTSTRAP_PY)} {shlex.quote(env.domain)} {certs}"
    return "\n".join([
        "set -eu",
        "umask 077",
        f"mkdir -p {acme_dir}/webroot/.well-known/acme-challenge {certs} {acme_dir}/letsencrypt",
        f"chmod 755 {acme_dir}/webroot {acme_dir}/webroot/.well-known {acme_dir}/webroot/.well-known/acme-challenge",
        f"if [ ! -s {certs}/fullchain.pem ] || [ ! -s {certs}/privkey.pem ]; then",
        f'  echo "no certificate yet: a temporary self-signed one for {env.domain}"',
        f"  {bootstrap}",
        "fi",
        "while :; do",
        f"  if {certbot}; then",
        f"    pause={every}",
        "  else",
        f'    echo "certbot failed; again in {retry_seconds} s"',
        f"    pause={retry_seconds}",
        "  fi",
        '  sleep "$pause" & wait $!',
        "done",
    ]) + "\n"


def reload_script(env: Environment, nginx: str, docker_root: str = "/var/lib/docker",
                  state_file: str = STATE_FILE) -> str:
    """The host's validated reload after a renewal: runs only when the stamp differs from the last applied.

    `nginx` is how the host runs nginx inside the gateway (`docker exec <gateway> nginx -c <conf>`)."""
    stamp = f"{host_volume_path(env, docker_root)}/certs/reload-requested"
    return textwrap.dedent(f"""\
        #!/bin/sh
        # Rendered by render/acme.py: reload the gateway after certbot installed a new certificate.
        set -eu
        stamp={stamp}
        state={state_file}
        [ -s "$stamp" ] || exit 0
        wanted=$(cat "$stamp")
        [ "$(cat "$state" 2>/dev/null || true)" != "$wanted" ] || exit 0
        {nginx} -t -q
        {nginx} -s reload
        mkdir -p "$(dirname "$state")"
        printf '%s\\n' "$wanted" > "$state"
        echo "gateway reloaded for certificate $wanted"
        """)


def systemd_units(env: Environment, docker_root: str = "/var/lib/docker") -> dict[str, str]:
    """The path unit (on the stamp), the hourly safety-net timer, and the oneshot both start."""
    stamp = f"{host_volume_path(env, docker_root)}/certs/reload-requested"
    return {
        f"/etc/systemd/system/{UNIT}.service": textwrap.dedent(f"""\
            [Unit]
            Description=Validated reload of the gateway after a certificate renewal
            Requires=docker.service
            After=docker.service

            [Service]
            Type=oneshot
            ExecStart={RELOAD_SCRIPT}
            """),
        f"/etc/systemd/system/{UNIT}.path": textwrap.dedent(f"""\
            [Unit]
            Description=Watch certbot's reload stamp for the gateway

            [Path]
            PathChanged={stamp}
            Unit={UNIT}.service

            [Install]
            WantedBy=paths.target
            """),
        f"/etc/systemd/system/{UNIT}.timer": textwrap.dedent(f"""\
            [Unit]
            Description=Hourly check that the gateway serves the latest certificate

            [Timer]
            OnCalendar=hourly
            RandomizedDelaySec=5m
            Persistent=true
            Unit={UNIT}.service

            [Install]
            WantedBy=timers.target
            """),
    }


def install_script(env: Environment, nginx: str, docker_root: str = "/var/lib/docker") -> str:
    """What the host runs (over SSH, with sudo) to install the reload script and its units."""
    files = {RELOAD_SCRIPT: reload_script(env, nginx, docker_root), **systemd_units(env, docker_root)}
    lines = ["set -eu"]
    for path, text in files.items():
        mode = "0755" if path == RELOAD_SCRIPT else "0644"
        lines.append(f"printf '%s' {shlex.quote(text)} | sudo install -m {mode} /dev/stdin {path}")
    lines += ["sudo systemctl daemon-reload", f"sudo systemctl enable --now {UNIT}.path {UNIT}.timer"]
    return "\n".join(lines) + "\n"


def uninstall_script() -> str:
    return (f"sudo systemctl disable --now {UNIT}.path {UNIT}.timer || true\n"
            f"sudo rm -f {RELOAD_SCRIPT} /etc/systemd/system/{UNIT}.service /etc/systemd/system/{UNIT}.path "
            f"/etc/systemd/system/{UNIT}.timer\nsudo systemctl daemon-reload\n")
