"""Decisions of the EC2 host that the provider-level review found wrong: the image lookup and SSH."""

from __future__ import annotations

import getpass
import json
import socket
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import ValidationError

from components.host import ssh_options, write_operator_files
from config.model import Ami
from ops.runner import run_stack
from tests.conftest import recording, require_tool, server_group


def _invoke(stack: str, token: str) -> dict[str, object]:
    return next(i.args for i in recording(stack).invokes if i.token == token)


def test_prod_resolves_debians_published_ssm_parameter() -> None:
    args = _invoke("prod", "aws:ssm/getParameter:getParameter")
    assert args == {"name": "/aws/service/debian/release/bookworm/latest/amd64"}
    instance = next(r for r in recording("prod").resources.values() if r.type == "aws:ec2/instance:Instance")
    assert "ami" in instance.ignore_changes  # a newer image never replaces the host unasked


def test_a_pinned_image_name_is_found_after_aws_deprecates_it() -> None:
    """Public AMIs are deprecated two years after creation, and a filtered DescribeImages then hides
    them unless IncludeDeprecated is set; debian-12-amd64-20241004-1890 is past that."""
    args = _invoke("staging", "aws:ec2/getAmi:getAmi")
    assert args["includeDeprecated"] is True
    assert Ami.model_validate({"owners": ["136693071363"], "name": "debian-12-amd64-20241004-1890"}).include_deprecated
    assert not Ami.model_validate({"owners": ["136693071363"], "name": "debian-12-amd64-*"}).include_deprecated


@pytest.mark.parametrize("fields", [
    {"ssm_parameter": "/aws/service/debian/release/bookworm/latest/amd64", "name": "x", "owners": ["136693071363"]},
    {"name": "debian-12-amd64-*"},
    {},
    {"ssm_parameter": "ami-0123456789abcdef0"},
])
def test_the_image_source_is_one_and_well_formed(fields: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        Ami.model_validate(fields)


# --- SSH: the options the Docker provider's ssh gets, judged by real OpenSSH ----------------------

def _keygen(path: Path) -> str:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)
    return Path(f"{path}.pub").read_text().strip()


@pytest.fixture
def sshd(tmp_path: Path) -> Iterator[tuple[int, str, Path]]:
    """A real sshd on 127.0.0.1 with its own host key, accepting one client key for this user."""
    server = require_tool("sshd")
    require_tool("ssh")
    host_key = tmp_path / "host_key"
    host_public = _keygen(host_key)
    client_key = tmp_path / "client_key"
    (tmp_path / "authorized_keys").write_text(_keygen(client_key) + "\n")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = tmp_path / "sshd_config"
    config.write_text("\n".join([
        f"Port {port}", "ListenAddress 127.0.0.1", f"HostKey {host_key}", f"PidFile {tmp_path}/sshd.pid",
        f"AuthorizedKeysFile {tmp_path}/authorized_keys", "StrictModes no", "PasswordAuthentication no",
        "KbdInteractiveAuthentication no", "PermitRootLogin prohibit-password", "UsePAM no", ""]))
    Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege-separation directory
    log = tmp_path / "sshd.log"
    # Its own process group, stopped whole: the per-connection sshd processes go with the listener.
    with log.open("wb") as err, server_group([server, "-D", "-e", "-f", str(config)], stderr=err) as proc:
        deadline = time.monotonic() + 10
        while socket.socket().connect_ex(("127.0.0.1", port)) != 0:
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        yield port, host_public, client_key


def _ssh(options: list[str], home: Path, port: int) -> subprocess.CompletedProcess[str]:
    # ssh expands "~" from the password database, not $HOME: point the options at the test's home.
    options = [o.replace("~/.ssh/my-saas-chat", str(home / ".ssh" / "my-saas-chat")) for o in options]
    return subprocess.run(["ssh", "-F", "/dev/null", "-o", "BatchMode=yes", *options, "-p", str(port),
                           f"{getpass.getuser()}@127.0.0.1", "echo", "reached"],
                          capture_output=True, text=True, timeout=30)


def test_the_pinned_host_key_and_identity_work_with_real_openssh(tmp_path: Path, sshd: tuple[int, str, Path]) -> None:
    port, host_public, client_key = sshd
    home = tmp_path / "home"
    write_operator_files("prod", host_public_key=host_public + "\n", private_key=client_key.read_text(), home=home)
    files = home / ".ssh" / "my-saas-chat"
    assert stat.S_IMODE(files.stat().st_mode) == 0o700
    assert all(stat.S_IMODE((files / f).stat().st_mode) == 0o600 for f in ("prod.known_hosts", "prod.key"))
    result = _ssh(ssh_options("prod", [], identity=True), home, port)
    assert result.returncode == 0 and result.stdout.strip() == "reached", result.stderr


def test_another_host_key_is_refused(tmp_path: Path, sshd: tuple[int, str, Path]) -> None:
    port, _, client_key = sshd
    home = tmp_path / "home"
    impostor = _keygen(tmp_path / "impostor")
    write_operator_files("prod", host_public_key=impostor, private_key=client_key.read_text(), home=home)
    result = _ssh(ssh_options("prod", [], identity=True), home, port)
    assert result.returncode == 255 and "Host key verification failed" in result.stderr


def test_without_a_private_key_both_connections_use_the_agent() -> None:
    opts = ssh_options("prod", [], identity=False)
    assert not any(o.startswith(("IdentityFile", "IdentitiesOnly")) for o in opts)
    wait = next(r for r in recording("prod").resources.values() if r.type == "command:remote:Command")
    assert "privateKey" not in json.dumps(wait.inputs)  # pulumi-command falls back to SSH_AUTH_SOCK


@pytest.mark.parametrize("variable", ["DOCKER_HOST", "DOCKER_CONTEXT", "DOCKER_CERT_PATH"])
def test_docker_environment_variables_stop_the_program(monkeypatch: pytest.MonkeyPatch, variable: str) -> None:
    monkeypatch.setenv(variable, "tcp://elsewhere:2376")
    with pytest.raises(Exception, match=variable):
        run_stack("local")


def test_private_images_are_pulled_with_the_registry_token_from_secrets_manager() -> None:
    rec = recording("prod")
    provider = next(r for r in rec.resources.values() if r.type == "pulumi:providers:docker")
    auth = provider.inputs["registryAuth"]
    assert auth.get("4dabf18193072939515e22adb298388d")  # the whole list travels as a secret
    [entry] = json.loads(auth["value"]) if isinstance(auth["value"], str) else auth["value"]
    assert entry["address"] == "ghcr.io"
    assert entry["password"] == "placeholder-prod-my-saas-chat-registry-password"
    reads = {i.args["secretId"] for i in rec.invokes if i.token.endswith("getSecretVersion")}
    assert "prod/my-saas-chat/registry" in reads
