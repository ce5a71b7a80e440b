"""`tls.mode: letsencrypt`: the certbot companion, its wiring, and the renewal path with real tools.

What is proven here: the model and the recorded graph (staging switched to letsencrypt); the
companion's bootstrap run by a real Python with `cryptography` (as in certbot's image) giving a
pair real nginx starts with; the challenge path served on port 80 from the shared webroot; the
deploy hook (run by a real sh, with certbot's RENEWED_LINEAGE) installing a new pair; the host's
reload script taking it up by a validated reload, doing nothing when nothing changed, and refusing
a pair nginx rejects while the old certificate keeps serving.

Not proven (no ACME server is reachable here, nor Pebble installed): certbot talking to Let's
Encrypt, the challenge answered end to end, and systemd running the path unit on a real host.
"""

from __future__ import annotations

import http.client
import json
import os
import shlex
import shutil
import ssl
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from ops.policy import evaluate
from ops.runner import Recording, run_stack
from render import acme
from render.nginx import Layout, render_nginx
from tests.conftest import require_root, require_tool
from tests.engine.replay import plain
from tests.test_gateway import container_names
from tests.test_gateway_live import Gateway, free_port, start_stubs, stop

ROOT = Path(__file__).resolve().parent.parent
EMAIL = "ops@mysaaschat.app"


@pytest.fixture(scope="module")
def rec(tmp_path_factory: pytest.TempPathFactory) -> Recording:
    config = yaml.safe_load((ROOT / "Pulumi.staging.yaml").read_text())
    config["config"]["my-saas-chat:tls"] = {"mode": "letsencrypt", "email": EMAIL, "acme_staging": True}
    path = tmp_path_factory.mktemp("acme") / "Pulumi.staging.yaml"
    path.write_text(yaml.safe_dump(config))
    return run_stack("staging", path=path)


def by_name(rec: Recording, name: str) -> Any:
    return next(r for r in rec.resources.values() if r.name == name and r.custom)


def test_the_companion_is_hardened_pinned_and_has_no_way_to_the_engine(rec: Recording) -> None:
    companion = plain(by_name(rec, "gateway-acme").inputs)
    assert companion["user"] == rec.env.gateway.user  # nginx (same uid) reads the 0600 key
    assert companion["readOnly"] is True and companion["capabilities"] == {"drops": ["ALL"]}
    assert companion["securityOpts"] == ["no-new-privileges:true"] and "ports" not in companion
    assert [v["volumeName"] for v in companion["volumes"]] == ["mysaaschat-staging-acme"]
    assert not any("docker.sock" in json.dumps(v) for v in companion["volumes"])
    assert [n["name"] for n in companion["networksAdvanced"]] == ["mysaaschat-staging-egress"]  # the ACME API only
    assert companion["entrypoints"] == ["/bin/sh", "-c"]
    script = companion["command"][0]
    assert "--server " + acme.LETSENCRYPT_STAGING in script and f"--email {EMAIL}" in script
    assert "--webroot-path /var/lib/mysaaschat-acme/webroot" in script and "--keep-until-expiring" in script
    # certbot runs a hook only if its first word is a program on PATH (hooks.py validate_hook);
    # the engine test runs the real certbot with it (tests/engine/test_acme_engine.py).
    assert shutil.which(shlex.split(acme.deploy_hook())[0]) and shlex.quote(acme.deploy_hook()) in script
    image = plain(by_name(rec, "gateway-acme-image").inputs)
    assert image["name"] == "docker.io/certbot/certbot:v3.0.1"
    violations = [v for v in evaluate(rec.resources.values()) if v.level == "mandatory"]
    assert not violations, violations


def test_the_gateway_waits_for_a_certificate_and_reads_it_from_the_acme_volume(rec: Recording) -> None:
    gateway = by_name(rec, "gateway")
    companion = by_name(rec, "gateway-acme")
    assert companion.urn in gateway.dependencies  # healthy = a pair exists, so nginx can start
    mounts = {v["containerPath"]: v for v in plain(gateway.inputs)["volumes"]}
    assert mounts[acme.ACME_DIR] == {"containerPath": acme.ACME_DIR, "readOnly": True,
                                     "volumeName": "mysaaschat-staging-acme"}
    seed = plain(by_name(rec, "gateway-files").inputs)
    assert [u["file"] for u in seed["uploads"]] == ["/etc/mysaaschat-gateway/nginx.conf"]  # no Pulumi-made key
    conf = seed["uploads"][0]["content"]
    assert f"ssl_certificate {acme.ACME_DIR}/certs/fullchain.pem;" in conf
    assert f"ssl_certificate_key {acme.ACME_DIR}/certs/privkey.pem;" in conf
    assert f"root {acme.ACME_DIR}/webroot;" in conf
    assert not [r for r in rec.resources.values() if r.type.startswith("tls:") and r.name.startswith("gateway")]
    # The volume takes uid 101 from the gateway image's /var/cache/nginx, before certbot writes to it.
    owner = by_name(rec, "gateway-acme-owner")
    assert [v["containerPath"] for v in plain(owner.inputs)["volumes"]] == ["/var/cache/nginx"]
    assert owner.urn in companion.dependencies and plain(owner.inputs)["start"] is False
    volume = by_name(rec, "gateway-acme-volume")
    assert volume.protect and volume.retain_on_delete  # the ACME account and lineage


def test_the_host_installs_the_watch_not_the_companion(rec: Recording) -> None:
    watch = plain(by_name(rec, "gateway-acme-watch").inputs)
    units = acme.systemd_units(rec.env)
    for path in (*units, acme.RELOAD_SCRIPT):
        assert f" {path}\n" in watch["create"], path
    stamp = "/var/lib/docker/volumes/mysaaschat-staging-acme/_data/certs/reload-requested"
    assert f"PathChanged={stamp}" in units[f"/etc/systemd/system/{acme.UNIT}.path"]
    script = acme.reload_script(rec.env, "docker exec mysaaschat-staging-gateway nginx -c /etc/mysaaschat-gateway/nginx.conf")
    assert "nginx -c /etc/mysaaschat-gateway/nginx.conf -t -q\n" in script
    assert "systemctl enable --now" in watch["create"] and "disable --now" in watch["delete"]


def test_systemd_accepts_the_units(tmp_path: Path, rec: Recording) -> None:
    analyze = require_tool("systemd-analyze")
    for path, text in acme.systemd_units(rec.env).items():
        (tmp_path / Path(path).name).write_text(text)
    script = tmp_path / Path(acme.RELOAD_SCRIPT).name
    script.write_text(acme.reload_script(rec.env, "true"))
    script.chmod(0o755)
    for name in (f"{acme.UNIT}.service", f"{acme.UNIT}.path", f"{acme.UNIT}.timer"):
        text = (tmp_path / name).read_text().replace(acme.RELOAD_SCRIPT, str(script))
        (tmp_path / name).write_text(text)
    done = subprocess.run([analyze, "verify", *(str(tmp_path / n) for n in (f"{acme.UNIT}.service",
                                                                         f"{acme.UNIT}.path", f"{acme.UNIT}.timer"))],
                          capture_output=True, text=True, check=False)
    problems = [line for line in done.stderr.splitlines() if acme.UNIT in line]
    assert done.returncode == 0 and not problems, done.stderr


# --- live: bootstrap, challenge, renewal, validated reload -------------------------------------

def python_with_cryptography() -> str:
    for candidate in ("/usr/bin/python3", shutil.which("python3")):
        if candidate and subprocess.run([candidate, "-c", "import cryptography"], capture_output=True).returncode == 0:
            return candidate
    if os.environ.get("CI") == "true":
        pytest.fail("no python3 with cryptography (apt-get install python3-cryptography)")
    pytest.skip("no python3 with cryptography (apt-get install python3-cryptography)")


def served_certificate(gw: Gateway) -> bytes:
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    conn = gw.https()
    conn._context = context  # type: ignore[attr-defined]
    conn.connect()
    try:
        assert isinstance(conn.sock, ssl.SSLSocket)
        der = conn.sock.getpeercert(binary_form=True)
        assert der
        return der
    finally:
        conn.close()


def pem_der(pem: str) -> bytes:
    return ssl.PEM_cert_to_DER_cert(pem)


def workers(gw: Gateway) -> set[int]:
    master = gw.master_pid()
    return {int(p) for p in Path(f"/proc/{master}/task/{master}/children").read_text().split()}


@pytest.fixture(scope="module")
def live(rec: Recording) -> Iterator[tuple[Gateway, Path]]:
    require_tool("unshare")
    nginx = require_tool("nginx")
    require_root("the live acme test needs root (a private mount namespace)")
    python = python_with_cryptography()
    root = Path(tempfile.mkdtemp(prefix="acme-live-"))
    root.chmod(0o755)
    gw: Gateway | None = None
    try:
        names = container_names(rec)
        addresses, stubs = start_stubs(rec, names)
        prefix, acme_dir = root / "gw", root / "acme"
        (prefix / "tmp").mkdir(parents=True)
        layout = Layout(conf_dir=str(prefix), temp_dir=str(prefix / "tmp"), http_port=free_port(),
                        https_port=free_port(), listen_address="127.0.0.1", access_log=str(prefix / "access.log"),
                        error_log=str(prefix / "error.log"), acme_dir=str(acme_dir), status_port=free_port())
        # The companion's start, up to certbot: directories and the temporary pair (real python3).
        start = acme.companion_script(rec.env, str(acme_dir)).split("while :; do")[0]
        done = subprocess.run(["sh", "-c", start.replace("python3 -c", f"{python} -c")],
                              capture_output=True, text=True, check=False)
        assert done.returncode == 0, done.stderr
        # In the gateway, nginx runs as the companion's uid; here its workers are another user (the
        # master, root, reads the key): they only need to traverse to the webroot.
        acme_dir.chmod(0o755)
        (prefix / "hosts").write_text("127.0.0.1 localhost\n" + "".join(f"{addresses[s]} {n}\n" for s, n in names.items()))
        (prefix / "nginx.conf").write_text(render_nginx(rec.env, names, layout))
        gw = Gateway(rec=rec, prefix=prefix, layout=layout, names=names, addresses=addresses)
        gw.stubs = stubs
        for svc in names:
            threading.Thread(target=gw.stubs[svc].serve_forever, daemon=True).start()
        gw.process = subprocess.Popen(gw.in_namespace("exec " + gw.nginx("-g", "'daemon off;'")),
                                      start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 10
        while not (prefix / "tmp" / "nginx.pid").exists():
            assert gw.process.poll() is None and time.monotonic() < deadline, nginx
            time.sleep(0.05)
        time.sleep(0.3)
        yield gw, acme_dir
    finally:
        if gw is not None:
            stop(gw)
        shutil.rmtree(root, ignore_errors=True)


def nginx_wrapper(gw: Gateway, path: Path) -> str:
    """How the host's script runs nginx in the gateway (`docker exec` there; the namespace here)."""
    inner = f"mount --bind {gw.prefix}/hosts /etc/hosts && exec {gw.nginx()} \"$@\""
    path.write_text(f"#!/bin/sh\nexec unshare --mount sh -c {shlex.quote(inner)} nginx \"$@\"\n")
    path.chmod(0o755)
    return str(path)


def test_nginx_starts_on_the_temporary_certificate_and_serves_the_challenge(live: tuple[Gateway, Path]) -> None:
    gw, acme_dir = live
    cert = (acme_dir / "certs" / "fullchain.pem").read_text()
    assert served_certificate(gw) == pem_der(cert)
    assert oct((acme_dir / "certs" / "privkey.pem").stat().st_mode & 0o777) == "0o600"
    token = acme_dir / "webroot" / ".well-known" / "acme-challenge" / "tok-123"
    token.write_text("tok-123.thumbprint")
    token.chmod(0o644)
    conn = http.client.HTTPConnection("127.0.0.1", gw.layout.http_port, timeout=5)
    try:
        conn.request("GET", "/.well-known/acme-challenge/tok-123", headers={"Host": gw.rec.env.domain})
        response = conn.getresponse()
        assert (response.status, response.read()) == (200, b"tok-123.thumbprint")
    finally:
        conn.close()


def lineage(directory: Path, domain: str, key_from: Path | None = None) -> Path:
    """A certbot lineage as the deploy hook sees it (RENEWED_LINEAGE): fullchain.pem and privkey.pem."""
    directory.mkdir(parents=True, exist_ok=True)
    openssl = require_tool("openssl")
    key = directory / "privkey.pem"
    if key_from is None:
        subprocess.run([openssl, "ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", str(key)], check=True)
    else:
        shutil.copy(key_from, key)
    subprocess.run([openssl, "req", "-x509", "-new", "-key", str(key), "-subj", f"/CN={domain}",
                    "-addext", f"subjectAltName=DNS:{domain}", "-days", "90", "-out", str(directory / "fullchain.pem")],
                   check=True, capture_output=True)
    return directory


def test_a_renewal_reaches_nginx_by_a_validated_reload_and_a_bad_pair_never_does(
        live: tuple[Gateway, Path], tmp_path: Path) -> None:
    gw, acme_dir = live
    env = gw.rec.env
    hook = acme.deploy_hook(str(acme_dir))
    docker_root = tmp_path / "docker"
    # The host's view of the volume: <root>/volumes/<name>/_data is the ACME directory.
    (docker_root / "volumes" / acme.acme_volume(env)).mkdir(parents=True)
    (docker_root / "volumes" / acme.acme_volume(env) / "_data").symlink_to(acme_dir)
    state = tmp_path / "state"
    script = tmp_path / "reload"
    script.write_text(acme.reload_script(env, nginx_wrapper(gw, tmp_path / "nginx"), str(docker_root), str(state)))
    script.chmod(0o755)

    def run(path: Path, environ: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["sh", "-c", str(path)] if path == script else ["sh", "-c", hook],
                              env={**os.environ, **(environ or {})}, capture_output=True, text=True, check=False)

    before = served_certificate(gw)
    assert run(script).returncode == 0 and not state.exists()  # no stamp yet: nothing to do

    renewed = lineage(tmp_path / "live-1", env.domain)
    assert run(Path("hook"), {"RENEWED_LINEAGE": str(renewed)}).returncode == 0
    new_pem = (renewed / "fullchain.pem").read_text()
    assert (acme_dir / "certs" / "fullchain.pem").read_text() == new_pem
    assert oct((acme_dir / "certs" / "privkey.pem").stat().st_mode & 0o777) == "0o600"
    assert served_certificate(gw) == before  # installed, not yet taken up
    old_workers = workers(gw)
    done = run(script)
    assert done.returncode == 0, done.stderr
    deadline = time.monotonic() + 10
    while served_certificate(gw) != pem_der(new_pem):
        assert time.monotonic() < deadline, "the renewed certificate was never served"
        time.sleep(0.2)
    assert state.read_text().strip() == (acme_dir / "certs" / "reload-requested").read_text().strip()

    # Run again with nothing new (the hourly timer): no reload, the same workers keep serving.
    time.sleep(1)
    settled = workers(gw)
    assert settled != old_workers
    assert run(script).returncode == 0 and workers(gw) == settled

    # A pair nginx refuses (the key of another certificate): the reload fails, the renewed one keeps serving.
    bad = lineage(tmp_path / "live-2", env.domain)
    shutil.copy(lineage(tmp_path / "other", env.domain) / "privkey.pem", bad / "privkey.pem")
    assert run(Path("hook"), {"RENEWED_LINEAGE": str(bad)}).returncode == 0
    refused = run(script)
    assert refused.returncode != 0 and "key values mismatch" in refused.stderr + refused.stdout, refused
    assert state.read_text().strip() != (acme_dir / "certs" / "reload-requested").read_text().strip()  # retried later
    assert served_certificate(gw) == pem_der(new_pem) and workers(gw) == settled
