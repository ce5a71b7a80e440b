"""`python -m ops env audit|migrate` on a tree laid out like the seed's (its real variable names), with
duplicates, a conflict, and the parsing python-dotenv does (export, quotes, multi-line values)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import ROOT
from tests.moto_server import UNSET, aws_env, free_port

JWT = "9fK2xQ7vLm3Rt8Wz1Yb6Nc4Hd0Pj5Sa"
OPENAI = "sk-proj-Zq8xT4mN7vB2cK9pL1wR6yH3"
STRIPE = "sk_test_51HxYzAbCdEfGhIjKlMnOpQr"
WEBHOOK = "whsec_Tq3Lm8Vn2Xc7Bz1Kp4Wr9Yd6"
REFRESH = "Rf7Hk2Lq9Zx4Cv8Bn1Mw6Pt3Ys5"
ENCRYPTION = "e7b1c9d3a5f2e8b4c6d0a1f3e5b7c9d2"
SMTP = "smtp://mailer:Gx7kP2qW9z@smtp.example.com:587"
SENTRY = "https://5f2c9a1b7e3d4c8a@o12345.ingest.sentry.io/678"
PEM = "-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE\n-----END PUBLIC KEY-----"
SECRET_VALUES = [JWT, OPENAI, STRIPE, WEBHOOK, REFRESH, ENCRYPTION, SMTP, SENTRY, "Gx7kP2qW9z",
                 "MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE"]

TREE = {
    ".env": f"""# ROOT ENVIRONMENT VARIABLES (the seed's step 1.2)
NODE_ENV=production
LOG_LEVEL=info
DATABASE_URL=postgresql://user:password@postgres:5432/mysaaschat
DATABASE_POOL_MIN=2
DATABASE_POOL_MAX=20
REDIS_HOST=redis
REDIS_PORT=6379
REDIS_PASSWORD=your-secure-redis-password
RABBITMQ_URL=amqp://user:password@rabbitmq:5672
ANALYTICS_EXCHANGE=analytics-events
export OPENAI_API_KEY={OPENAI}
STRIPE_SECRET_KEY="{STRIPE}"
STRIPE_WEBHOOK_SECRET='{WEBHOOK}'
SENTRY_DSN={SENTRY}
SENTRY_ENVIRONMENT=production
JAEGER_ENDPOINT=http://jaeger:14268/api/traces
FRONTEND_URL=https://yourdomain.com
NEXT_PUBLIC_API_URL=https://api.yourdomain.com
JWT_SECRET={JWT}
JWT_REFRESH_SECRET={REFRESH}
ENCRYPTION_KEY={ENCRYPTION}
JWT_PUBLIC_KEY="{PEM}"
RATE_LIMIT_MAX=100
""",
    "backend/.env": f"NODE_ENV=production\nLOG_LEVEL=info\nJWT_SECRET={JWT}\n"
                    "DATABASE_URL=postgresql://user:password@postgres:5432/mysaaschat\n",
    "backend/.env.template": "JWT_SECRET=your-secure-jwt-secret-min-32-chars\nLOG_LEVEL=warn\n",
    "backend/api-gateway/.env": "PORT=3002\nRATE_LIMIT_MAX=100\n",
    "backend/services/auth-service/.env": f"PORT=3001\nSERVICE_NAME=auth-service\nJWT_SECRET={JWT}\n",
    "backend/services/chat-service/.env": f"PORT=3003\nLOG_LEVEL=debug\nOPENAI_API_KEY={OPENAI}\n",
    "backend/services/billing-service/.env": f"PORT=3004\nSTRIPE_SECRET_KEY={STRIPE}\n",
    "backend/services/email-worker/.env": f"SMTP_URL={SMTP}\nEMAIL_FROM=\"My SaaS Chat <no-reply@mysaaschat.app>\"\n",
    "backend/services/analytics-service/.env": "PORT=3005\n",
    "backend/services/orchestrator-service/.env": "PORT=3006\nDATABASE_POOL_MAX=5\n",
    "frontend/.env": "NEXT_PUBLIC_API_URL=https://api.yourdomain.com\n",
    "frontend/.env.development": "NEXT_PUBLIC_API_URL=http://localhost:3002\n",
    "frontend/node_modules/some-lib/.env": "this line is not an assignment\n",
    ".git/.env": "NOT=scanned\n",
}


def build(root: Path, files: dict[str, str] = TREE) -> Path:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k not in UNSET}
    return subprocess.run([sys.executable, "-m", "ops", "env", *args], cwd=ROOT, env={**base, **(env or {})},
                          capture_output=True, text=True, timeout=120)


def no_secret_in(text: str) -> None:
    assert not [v for v in SECRET_VALUES if v in text]


def test_audit_reports_each_key_with_where_agreement_and_secretness(tmp_path: Path) -> None:
    done = cli("audit", str(build(tmp_path)))
    assert done.returncode == 1, done.stderr  # LOG_LEVEL conflicts
    out = done.stdout
    no_secret_in(out)
    blocks = {b.split("  [")[0]: b for b in ("\n" + out).split("\n") if "  [" in b}
    assert blocks["LOG_LEVEL"] == "LOG_LEVEL  [plain, CONFLICT]"
    assert blocks["JWT_SECRET"] == "JWT_SECRET  [secret, agree]"  # the template's placeholder never conflicts
    assert blocks["NEXT_PUBLIC_API_URL"] == "NEXT_PUBLIC_API_URL  [plain, agree]"  # .env.development is its own variant
    assert blocks["RATE_LIMIT_MAX"] == "RATE_LIMIT_MAX  [plain, agree]"
    assert blocks["SMTP_URL"] == "SMTP_URL  [secret, once]"  # a URL with a password: secret by its value
    assert blocks["ENCRYPTION_KEY"].startswith("ENCRYPTION_KEY  [secret")
    assert "    backend/services/chat-service/.env:2  value C  \"debug\"" in out
    assert blocks["PORT"] == "PORT  [plain, per service]"  # each service its own: no conflict
    assert blocks["DATABASE_POOL_MAX"] == "DATABASE_POOL_MAX  [plain, CONFLICT]"
    assert "    .env:3  value A  \"info\"" in out
    assert "    backend/services/auth-service/.env:3  value A  ********" in out
    assert "node_modules" not in out and "NOT" not in blocks
    assert out.splitlines()[-1] == "12 files, 27 keys, 2 in conflict, 12 secret"


def test_audit_parses_like_dotenv(tmp_path: Path) -> None:
    from ops import env as envs

    reports = envs.scan(build(tmp_path))
    assert reports["OPENAI_API_KEY"].definitions[0].value == OPENAI  # `export`
    assert reports["STRIPE_SECRET_KEY"].definitions[0].value == STRIPE  # double quotes
    assert reports["STRIPE_WEBHOOK_SECRET"].definitions[0].value == WEBHOOK  # single quotes
    assert reports["JWT_PUBLIC_KEY"].definitions[0].value == PEM  # multi-line
    assert reports["EMAIL_FROM"].definitions[0].value == "My SaaS Chat <no-reply@mysaaschat.app>"
    assert not envs.looks_secret("http://jaeger:14268/api/traces") and not envs.looks_secret("analytics-events")


def test_audit_without_conflict_exits_zero(tmp_path: Path) -> None:
    files = dict(TREE)
    files["backend/services/chat-service/.env"] = "PORT=3003\n"
    files["backend/services/orchestrator-service/.env"] = "PORT=3006\n"
    assert cli("audit", str(build(tmp_path, files))).returncode == 0


@pytest.mark.parametrize(("name", "content", "message"), [
    ("backend/services/chat-service/.env", "PORT=3003\nLOG_LEVEL=debug\nthis is not an assignment\n",
     "backend/services/chat-service/.env:3: cannot parse 'this is not an assignment'"),
    (".env", "A=1\nB=\"never closed\n", ".env:2: cannot parse"),
    ("frontend/.env", b"A=\xff\xfe\n", "frontend/.env: not UTF-8 text"),
])
def test_bad_files_are_named_with_their_line(tmp_path: Path, name: str, content: str | bytes, message: str) -> None:
    (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        (tmp_path / name).write_bytes(content)
    else:
        (tmp_path / name).write_text(content)
    done = cli("audit", str(tmp_path))
    assert done.returncode == 2 and message in done.stderr, done.stderr


def test_an_unreadable_file_is_named(tmp_path: Path) -> None:
    # A dangling link: unreadable even for root (a chmod 000 file is not, and the tests run as root).
    (tmp_path / "backend").mkdir()
    (tmp_path / "backend" / ".env").symlink_to(tmp_path / "gone")
    done = cli("audit", str(tmp_path))
    assert done.returncode == 2 and "backend/.env: cannot be read: No such file or directory" in done.stderr


# --- migrate ------------------------------------------------------------------------------------



def stack_dir(tmp_path: Path, stack: str = "prod") -> Path:
    target = tmp_path / "stacks"
    target.mkdir()
    shutil.copy(ROOT / f"Pulumi.{stack}.yaml", target)
    return target


def test_migrate_dry_run_writes_nothing_and_shows_no_value(tmp_path: Path) -> None:
    stacks = stack_dir(tmp_path)
    before = (stacks / "Pulumi.prod.yaml").read_bytes()
    done = cli("migrate", str(build(tmp_path / "tree")), "--stack", "prod", "--stack-dir", str(stacks),
               env={"AWS_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}"})  # nothing listens: no call is made
    assert done.returncode == 0, done.stderr
    no_secret_in(done.stdout)
    assert "services.chat-service.env: LOG_LEVEL=\"debug\"" in done.stdout
    assert done.stdout.rstrip().endswith("dry run: nothing written (pass --write)")
    assert (stacks / "Pulumi.prod.yaml").read_bytes() == before


def test_migrate_writes_overrides_and_references_and_stores_the_secrets(tmp_path: Path, aws: dict[str, str],
                                                                        client: Any) -> None:
    stacks = stack_dir(tmp_path)
    original = yaml.safe_load((stacks / "Pulumi.prod.yaml").read_text())
    client.create_secret(Name="prod/my-saas-chat/stripe", SecretString=json.dumps({"publishable_key": "pk_live_x"}))
    done = cli("migrate", str(build(tmp_path / "tree")), "--stack", "prod", "--stack-dir", str(stacks), "--write",
               env=aws)
    assert done.returncode == 0, done.stderr
    no_secret_in(done.stdout + done.stderr)
    config = yaml.safe_load((stacks / "Pulumi.prod.yaml").read_text())["config"]
    # Only what differs from config/shared.yaml and the catalog; derived values and duplicates dropped.
    assert config["my-saas-chat:env"] == {"DATABASE_POOL_MAX": "20"}
    assert config["my-saas-chat:services"]["chat-service"] == {"memory": "2Gi", "cpu": 2.0, "env": {"LOG_LEVEL": "debug"}}
    assert config["my-saas-chat:services"]["orchestrator-service"] == {"memory": "1Gi", "env": {"DATABASE_POOL_MAX": "5"}}
    assert "email-worker" not in config["my-saas-chat:services"]  # EMAIL_FROM repeats the catalog
    # Every other key kept as it was.
    assert {k: v for k, v in config.items() if k not in ("my-saas-chat:env", "my-saas-chat:services")} == \
        {k: v for k, v in original["config"].items() if k not in ("my-saas-chat:services",)}
    # Only references in the file; the values are in Secrets Manager, merged into existing documents.
    text = (stacks / "Pulumi.prod.yaml").read_text()
    no_secret_in(text)

    def doc(sid: str) -> dict[str, str]:
        return dict(json.loads(client.get_secret_value(SecretId=sid)["SecretString"]))

    assert doc("prod/my-saas-chat/stripe") == {"publishable_key": "pk_live_x", "secret_key": STRIPE,
                                               "webhook_secret": WEBHOOK}
    assert doc("prod/my-saas-chat/openai") == {"api_key": OPENAI}
    assert doc("prod/my-saas-chat/app") == {"jwt_secret": JWT, "jwt_refresh_secret": REFRESH,
                                            "encryption_key": ENCRYPTION, "jwt_public_key": PEM}
    assert doc("prod/my-saas-chat/smtp") == {"url": SMTP}
    assert doc("prod/my-saas-chat/sentry") == {"dsn": SENTRY}
    # The store passwords are the program's own: never copied from a .env file.
    assert "prod/my-saas-chat/stores" not in {s["Name"] for s in client.list_secrets()["SecretList"]}
    # The result is a valid stack for the model.
    from config import load_environment, read_stack_file

    env = load_environment(read_stack_file(stacks / "Pulumi.prod.yaml", "prod"))
    assert env.services["chat-service"].env == {"LOG_LEVEL": "debug"}


def test_migrate_adds_secret_ids_the_stack_lacks(tmp_path: Path, aws: dict[str, str], client: Any) -> None:
    stacks = stack_dir(tmp_path, "staging")
    done = cli("migrate", str(build(tmp_path / "tree")), "--stack", "staging", "--stack-dir", str(stacks), "--write",
               env=aws)
    assert done.returncode == 0, done.stderr
    # staging generates its JWT keys: the .env values of `app` are not stored.
    assert "skipped JWT_SECRET: app is generated by the program for this stack" in done.stdout
    names = {s["Name"] for s in client.list_secrets()["SecretList"]}
    assert "staging/my-saas-chat/app" not in names and "staging/my-saas-chat/openai" in names


def test_a_failed_secret_store_writes_nothing(tmp_path: Path) -> None:
    stacks = stack_dir(tmp_path)
    before = (stacks / "Pulumi.prod.yaml").read_bytes()
    done = cli("migrate", str(build(tmp_path / "tree")), "--stack", "prod", "--stack-dir", str(stacks), "--write",
               env={**aws_env(f"http://127.0.0.1:{free_port()}"), "AWS_MAX_ATTEMPTS": "1"})
    assert done.returncode == 2 and "storing a secret failed" in done.stderr and "was not written" in done.stderr
    assert (stacks / "Pulumi.prod.yaml").read_bytes() == before
    assert sorted(p.name for p in stacks.iterdir()) == ["Pulumi.prod.yaml"]  # no temporary file left


def test_migrate_refusals(tmp_path: Path) -> None:
    stacks = stack_dir(tmp_path)
    tree = build(tmp_path / "tree")
    done = cli("migrate", str(tree), "--stack", "nosuch", "--stack-dir", str(stacks))
    assert done.returncode == 2 and "no stack file Pulumi.nosuch.yaml" in done.stderr
    (tree / "backend/.env").write_text("LOG_LEVEL=warn\n")
    done = cli("migrate", str(tree), "--stack", "prod", "--stack-dir", str(stacks))
    assert done.returncode == 2 and "LOG_LEVEL: the shared files disagree (.env:3, backend/.env:1)" in done.stderr
    (tree / "backend/.env").write_text(f"JWT_SECRET=other-{JWT}\n")
    done = cli("migrate", str(tree), "--stack", "prod", "--stack-dir", str(stacks))
    assert done.returncode == 2 and "JWT_SECRET: secret with different values" in done.stderr
    no_secret_in(done.stderr)
