"""Run the real `__main__.py` for one stack under the strict mocks and return what it registered."""

from __future__ import annotations

import asyncio
import gc
import json
import os
import runpy
import tempfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pulumi.log as pulumi_log
import pulumi.runtime.resource as resource_runtime
import yaml
from pulumi.runtime import config as runtime_config
from pulumi.runtime import mocks, settings
from pulumi.runtime.proto import source_pb2
from pulumi.runtime.stack import run_in_stack
from pulumi.runtime.sync_await import _sync_await

from config import Environment, StackInput, load_environment, read_stack_file
from config.load import CATALOG_FILE, PROJECT, ROOT_DIR, SECRET_PLACEHOLDER
from ops.guards import STALL_SECONDS, DependsOnCycle, strict_runtime
from ops.mocks import Invocation, Registration, StrictMocks, StrictMonitor

PROGRAM = ROOT_DIR / "__main__.py"
CATALOG_ENV = "MY_SAAS_CHAT_CATALOG"  # an alternative catalog, for benchmarks and tests


class StrictMockError(Exception):
    def __init__(self, stack: str, violations: list[str]):
        self.violations = violations
        super().__init__(f"stack {stack}: the program broke the strict mocks:\n  " + "\n  ".join(violations))


@dataclass
class Recording:
    stack: str
    env: Environment
    resources: dict[str, Registration]
    invokes: list[Invocation]
    stack_outputs: dict[str, Any]
    # Known secret values (secrets file, provider-secret outputs, config placeholders): synth's
    # last check that none leaked; redaction itself follows secretness, not these values.
    secret_values: set[str] = field(default_factory=set)
    reads: dict[str, Registration] = field(default_factory=dict)


def stack_file(stack: str) -> Path:
    return ROOT_DIR / f"Pulumi.{stack}.yaml"


def stacks() -> list[str]:
    return sorted(p.name.split(".")[1] for p in ROOT_DIR.glob("Pulumi.*.yaml"))


def placeholder_documents(env: Environment) -> dict[str, str]:
    """Deterministic stand-ins for every Secrets Manager document the model references. Managed
    secrets are not among them: the program writes those, and reads back what it wrote."""
    keys: dict[str, set[str]] = {}
    managed = env.managed_secrets() if env.secrets_backend == "aws-secretsmanager" else {}
    for ref in env.secret_refs():
        if ref.secret in managed:
            continue
        keys.setdefault(env.secrets.get(ref.secret, ref.secret), set()).add(ref.key)
    return {sid: json.dumps({k: f"placeholder-{sid}-{k}".replace("/", "-") for k in sorted(ks)}, sort_keys=True)
            for sid, ks in sorted(keys.items())}


def region_of(path: Path) -> str:
    config = (yaml.safe_load(path.read_text()) or {}).get("config") or {}
    return str(config.get("aws:region", "us-east-1"))


@contextmanager
def _lean_runtime() -> Iterator[None]:
    """SDK work that only feeds the Pulumi CLI's display, switched off while synth runs.

    Source positions (a stack walk per resource) and debug log records cost a third of a
    1000-service run. The garbage collector's passes over ~10^6 live Output objects grow with the
    heap (measured: 1.7 s of 11 s at 1000 services, nothing at 100); a run is short and bounded,
    so collection waits until it ends. Nothing recorded depends on any of this; all is restored.
    """
    saved = (resource_runtime._get_stack_trace, pulumi_log.debug, gc.isenabled())
    resource_runtime._get_stack_trace = source_pb2.StackTrace  # an empty trace
    pulumi_log.debug = lambda *args, **kwargs: None
    gc.disable()
    try:
        yield
    finally:
        resource_runtime._get_stack_trace, pulumi_log.debug = saved[0], saved[1]
        if saved[2]:
            gc.enable()


@contextmanager
def _scratch_home() -> Iterator[None]:
    """The program writes the operator's pinned known-hosts file under ~/.ssh (components/host.py);
    a synth writes it into a throwaway home instead of the machine's."""
    previous = os.environ.get("HOME")
    with tempfile.TemporaryDirectory(prefix="synth-home-") as home:
        os.environ["HOME"] = home
        try:
            yield
        finally:
            if previous is None:
                os.environ.pop("HOME", None)
            else:
                os.environ["HOME"] = previous


@contextmanager
def _catalog(catalog: Path | None) -> Iterator[Path]:
    previous = os.environ.get(CATALOG_ENV)
    if catalog is not None:
        os.environ[CATALOG_ENV] = str(catalog)
    try:
        yield Path(os.environ.get(CATALOG_ENV, CATALOG_FILE))
    finally:
        if previous is None:
            os.environ.pop(CATALOG_ENV, None)
        else:
            os.environ[CATALOG_ENV] = previous


def run_stack(stack: str, *, secrets: Mapping[str, Any] | None = None, catalog: Path | None = None,
              path: Path | None = None) -> Recording:
    """Validate the stack's config (ConfigError), then run the program and check what it registers."""
    path = path or stack_file(stack)
    stack_input = read_stack_file(path, stack)
    with _catalog(catalog) as catalog_path:
        env = load_environment(stack_input, catalog=catalog_path)
        documents = placeholder_documents(env) if secrets is None else _documents(secrets, env)
        strict = StrictMocks(stack, region_of(path), documents)
        strict.secret_values.update(_config_placeholders(stack_input))
        monitor = StrictMonitor(strict)
        runtime_config.set_all_config(*_engine_config(path, stack_input))
        with _lean_runtime(), _scratch_home():
            run_program(strict, monitor, _program, stack=stack)
    if strict.violations:
        raise StrictMockError(stack, sorted(set(strict.violations)))
    return Recording(stack, env, monitor.registrations, strict.invokes, monitor.stack_outputs, strict.secret_values,
                     monitor.reads)


def run_program(strict: StrictMocks, monitor: StrictMonitor, program: Callable[[], Any], *, stack: str,
                project: str = PROJECT, stall_seconds: float = STALL_SECONDS) -> None:
    """Run `program` as the Pulumi program of a stack under the strict mocks (ops/guards.py watching).

    When a violation was recorded, a failure of the program is added to the violations (it may be
    their consequence, and is never dropped) for the caller to report; otherwise it is raised as is.
    """
    mocks.set_mocks(strict, project=project, stack=stack, preview=False, monitor=monitor)
    settings.set_root_resource(None)  # type: ignore[arg-type]  # run_in_stack makes the root stack
    settings.SETTINGS.outputs.clear()  # what an earlier, stopped run left behind
    with strict_runtime(strict, monitor, stall_seconds) as guard:
        def main() -> None:
            guard.loop = asyncio.get_running_loop()
            program()

        try:
            _sync_await(run_in_stack(main))
        except (Exception, asyncio.CancelledError) as error:
            if not strict.violations:
                raise
            if not isinstance(error, (DependsOnCycle, asyncio.CancelledError)):  # those are violations already
                strict.violations.append(f"the program failed: {type(error).__name__}: {error}")


class SecretsFileError(Exception):
    """The --secrets-file does not hold what the stack references."""


def _documents(secrets: Mapping[str, Any], env: Environment) -> dict[str, str]:
    documents = {k: v if isinstance(v, str) else json.dumps(v, sort_keys=True) for k, v in secrets.items()}
    missing = []
    for sid, placeholder in placeholder_documents(env).items():
        try:
            doc = json.loads(documents[sid]) if sid in documents else None
        except json.JSONDecodeError:
            doc = None
        if not isinstance(doc, dict):
            missing.append(f"{sid}: {'missing' if sid not in documents else 'not a JSON object'}")
            continue
        missing += [f"{sid}.{key}: missing" for key in json.loads(placeholder) if key not in doc]
    if missing:
        raise SecretsFileError("\n".join(missing))
    return documents


def _program() -> None:
    runpy.run_path(str(PROGRAM), run_name="__main__")


def _engine_config(path: Path, stack_input: StackInput) -> tuple[dict[str, str], list[str]]:
    """The config the Pulumi engine would hand the program: objects as JSON text, secrets marked."""
    raw = (yaml.safe_load(path.read_text()) or {}).get("config") or {}
    config: dict[str, str] = {}
    for key, value in raw.items():
        if str(key).startswith(f"{PROJECT}:"):
            name = str(key).split(":", 1)[1].removeprefix("config:")  # the CLI's legacy key form
            key, value = f"{PROJECT}:{name}", stack_input.values[name]
        config[str(key)] = value if isinstance(value, str) else json.dumps(value)
    secret_keys = [f"{PROJECT}:{p.split('.')[0]}" for p in stack_input.secret_paths]
    return config, sorted(set(secret_keys))


def _config_placeholders(stack_input: StackInput) -> set[str]:
    return {f"{SECRET_PLACEHOLDER}:{p}" for p in stack_input.secret_paths}
