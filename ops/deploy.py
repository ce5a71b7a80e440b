"""`deploy`: releases through the Pulumi Automation API, verified after `up`, rolled back when they fail.

The program is the local one in this repository (`LocalWorkspace(work_dir=ROOT)`); the stack's
config is checked by the model before any engine call. A release is an `up` with the stack's
`image_tag` set; its record is Pulumi's own update history (`stack.history()` keeps each update's
config and message), so `releases` and `rollback` need no store of our own.

Exit codes (also in the README): 0 done; 1 drift found; 2 refused input (invalid config, a mutable
tag, an unknown release, destroying prod without --confirm-prod); 3 verification failed and the
previous release was restored; 4 an engine step failed (a release's failed update is rolled back to
the previous good release too); 5 the stack is locked by another update;
6 no backend login; 130 cancelled (Ctrl-C; the update is cancelled cleanly).
"""

from __future__ import annotations

import json
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

from pulumi import automation as auto
from tenacity import RetryError, retry, retry_if_result, stop_after_delay, wait_fixed

from config import ConfigError, Environment, load_environment, read_stack_file
from config.load import PROJECT, ROOT_DIR
from render.nginx import verification_paths

IMAGE_TAG_KEY = f"{PROJECT}:image_tag"
RELEASE_PREFIX = "release "
POLICY_PACK = ROOT_DIR / "policy"
# Tags that name a moving target: a release must be reproducible from its record.
MUTABLE_TAGS = frozenset({"latest", "stable", "main", "master", "edge", "dev", "develop", "nightly", "head"})

OK, DRIFT, REFUSED, VERIFY_FAILED, ENGINE_FAILED, LOCKED, NO_LOGIN, CANCELLED = 0, 1, 2, 3, 4, 5, 6, 130

Echo = Callable[[str], None]


class DeployError(Exception):
    def __init__(self, code: int, message: str) -> None:
        self.code = code
        super().__init__(message)


@dataclass(frozen=True)
class Release:
    version: int
    started: str
    result: str
    image_tag: str
    commit: str
    message: str


# --- before the engine -----------------------------------------------------------------------

def validate(stack: str, image_tag: str | None = None) -> Environment:
    """The stack's config as the program will see it, with the new tag: refused before any engine call."""
    path = ROOT_DIR / f"Pulumi.{stack}.yaml"
    if not path.exists():
        raise DeployError(REFUSED, f"no stack file {path.name}")
    if image_tag is not None and (image_tag.lower() in MUTABLE_TAGS or not image_tag.strip()):
        raise DeployError(REFUSED, f"--image-tag {image_tag!r} is mutable: name an immutable release tag (2026.11.25-8d41e07)")
    stack_input = read_stack_file(path, stack)
    if image_tag is not None:
        stack_input = type(stack_input)(stack_input.stack, {**stack_input.values, "image_tag": image_tag},
                                        stack_input.file, stack_input.secret_paths)
    try:
        return load_environment(stack_input)
    except ConfigError as error:
        raise DeployError(REFUSED, f"invalid configuration for stack {stack}:\n{error}") from None


def verification_urls(env: Environment, base_url: str | None = None) -> list[str]:
    """The gateway's own health and each routed service's health route, through the public endpoint."""
    base = (base_url or f"https://{env.domain}").rstrip("/")
    # The renderer's own table (render/nginx.py): /healthz, then /healthz/<service> for each routed
    # service, which the gateway sends to exactly that service's health_path. A prefix + health_path
    # could name another service's route (the frontend's /api/health is api-gateway's /api + /health).
    return [f"{base}{path}" for path in verification_paths(env)]


def verification_deadline(env: Environment) -> float:
    """As long as the slowest service may take to turn healthy (its deploy timeout)."""
    return float(max(svc.deploy_timeout_seconds for svc in env.services.values()))


def verify(urls: list[str], deadline: float, interval: float = 2.0) -> list[str]:
    """GET every URL until all answer 200 or the deadline passes; the URLs still failing, with why."""
    last: dict[str, str] = {}

    def failing() -> list[str]:
        for url in urls:
            if url in last and last[url] == "200":
                continue
            try:
                with urllib.request.urlopen(url, timeout=5) as response:
                    last[url] = str(response.status)
            except urllib.error.HTTPError as error:
                last[url] = str(error.code)
            except (urllib.error.URLError, OSError) as error:
                last[url] = type(getattr(error, "reason", error)).__name__
        return [u for u in urls if last.get(u) != "200"]

    attempt = retry(stop=stop_after_delay(deadline), wait=wait_fixed(interval),
                    retry=retry_if_result(bool))(failing)
    try:
        attempt()
        return []
    except RetryError:
        return [f"{u}: {last.get(u)}" for u in urls if last.get(u) != "200"]


# --- the engine ------------------------------------------------------------------------------

@contextmanager
def engine_errors(stack: str, details: list[str] | None = None) -> Iterator[None]:
    """One clear line and a documented exit code for what the CLI reports. A failed step adds, below
    that line, the errors the engine reported per resource (`details`, filled by `resource_errors`): a
    release command's exit code and last log lines, a container that never turned healthy."""
    try:
        yield
    except auto.ConcurrentUpdateError:
        raise DeployError(LOCKED, f"stack {stack} is locked by another update; wait for it, or `pulumi cancel`") from None
    except auto.CommandError as error:
        text = str(error)
        if "currently locked" in text:
            raise DeployError(LOCKED, f"stack {stack} is locked by another update; wait for it, or `pulumi cancel`") from None
        if "PULUMI_ACCESS_TOKEN" in text or "pulumi login" in text:
            raise DeployError(NO_LOGIN, "not logged in to a Pulumi backend: run `pulumi login` "
                                        "(or set PULUMI_ACCESS_TOKEN)") from None
        line = next((x.strip() for x in text.splitlines() if x.strip().startswith("error:")), text.strip().splitlines()[-1])
        raise DeployError(ENGINE_FAILED, "\n".join([f"stack {stack}: {line}", *(details or [])])) from None


def resource_errors(details: list[str]) -> Callable[[auto.EngineEvent], None]:
    """An `on_event` that keeps each error diagnostic the engine reports for a resource, as
    `<resource>: <message>` with the message's lines indented (the CLI's own summary line says only
    that the update failed)."""
    def on_event(event: auto.EngineEvent) -> None:
        diag = event.diagnostic_event
        if diag is None or diag.severity != "error" or not diag.urn:
            return
        lines = diag.message.rstrip().splitlines() or [""]
        details.append(f"  {diag.urn.rsplit('::', 1)[-1]}: {lines[0]}")
        details.extend(f"    {line}" for line in lines[1:])
    return on_event


def open_stack(stack: str) -> auto.Stack:
    with engine_errors(stack):
        workspace = auto.LocalWorkspace(work_dir=str(ROOT_DIR))
        return auto.Stack.select(stack, workspace)


def _policy_packs() -> list[str] | None:
    return [str(POLICY_PACK)] if (POLICY_PACK / "PulumiPolicy.yaml").exists() else None


def _commit() -> str:
    result = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT_DIR, capture_output=True, text=True)
    return result.stdout.strip() or "unknown"


# --- commands ---------------------------------------------------------------------------------

def preview(stack: str, *, as_json: bool = False) -> str:
    validate(stack)
    handle = open_stack(stack)
    steps: list[dict[str, Any]] = []

    def on_event(event: auto.EngineEvent) -> None:
        pre = event.resource_pre_event
        if pre is not None and pre.metadata.op not in (auto.OpType.SAME, auto.OpType.READ):
            m = pre.metadata
            state = m.new or m.old
            parent = state.parent if state is not None else ""
            steps.append({"op": m.op.value, "urn": m.urn, "type": m.type, "component": parent.rsplit("::", 1)[-1],
                          "keys": sorted(m.diffs or m.keys or [])})

    with engine_errors(stack):
        result = handle.preview(on_event=on_event, policy_packs=_policy_packs())
    summary = {str(getattr(k, "value", k)): v for k, v in sorted(result.change_summary.items(), key=lambda kv: str(kv[0]))
               if str(getattr(k, "value", k)) != "same" and v}
    plan = summarize(steps)
    if as_json:
        return json.dumps({"stack": stack, "changes": summary, "resources": plan}, indent=2, sort_keys=True)
    return markdown(stack, summary, plan)


def summarize(steps: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One entry per resource: what happens to it, why (the changed inputs), and in which order a
    replacement runs (the engine emits delete-replaced first for a delete-first replacement)."""
    by_urn: dict[str, dict[str, Any]] = {}
    for step in steps:
        entry = by_urn.setdefault(step["urn"], {"urn": step["urn"], "type": step["type"], "component": step["component"],
                                                "ops": [], "keys": []})
        entry["ops"].append(step["op"])
        entry["keys"] = sorted(set(entry["keys"]) | set(step["keys"]))
    for entry in by_urn.values():
        ops = entry["ops"]
        if "create-replacement" in ops or "replace" in ops or "delete-replaced" in ops:
            order = "delete-first" if "delete-replaced" in ops and ("create-replacement" not in ops or
                                                                   ops.index("delete-replaced") < ops.index("create-replacement")) \
                else "create-first"
            entry["action"], entry["order"] = "replace", order
        else:
            entry["action"], entry["order"] = ops[0], ""
        del entry["ops"]
    return sorted(by_urn.values(), key=lambda e: (e["component"], e["urn"]))


def markdown(stack: str, summary: dict[str, int], plan: list[dict[str, Any]]) -> str:
    lines = [f"### `pulumi preview` of `{stack}`", ""]
    lines.append(", ".join(f"{n} to {op}" for op, n in summary.items()) or "No changes.")
    component = None
    for entry in plan:
        if entry["component"] != component:
            component = entry["component"]
            lines += ["", f"**{component or 'stack'}**", ""]
        name = entry["urn"].rsplit("::", 1)[-1]
        why = f" because of `{'`, `'.join(entry['keys'])}`" if entry["keys"] else ""
        order = f" ({entry['order']})" if entry["order"] else ""
        lines.append(f"- {entry['action']} `{entry['type'].split(':')[-1]}` {name}{order}{why}")
    return "\n".join(lines) + "\n"


def releases(stack: str) -> list[Release]:
    handle = open_stack(stack)
    with engine_errors(stack):
        history = handle.history()
    found = []
    for update in history:
        if update.kind != "update":
            continue
        tag = (update.config or {}).get(IMAGE_TAG_KEY)
        found.append(Release(version=update.version or 0, started=update.start_time.isoformat(), result=update.result,
                             image_tag=tag.value if tag else "", commit=(update.environment or {}).get("git.head", "")[:12],
                             message=update.message or ""))
    return found


def up(stack: str, *, image_tag: str | None = None, base_url: str | None = None, echo: Echo = print,
       deadline: float | None = None, rollback_on_failure: bool = True) -> int:
    started = time.monotonic()

    def phase(name: str, since: float) -> None:
        echo(f"{name}: {time.monotonic() - since:.1f} s")

    env = validate(stack, image_tag)
    phase("validate", started)
    handle = open_stack(stack)
    previous = _last_good(releases(stack))
    tag = image_tag or env.image_tag or ""
    t = time.monotonic()
    details: list[str] = []
    try:
        with engine_errors(stack, details):
            if image_tag is not None:
                handle.set_config(IMAGE_TAG_KEY, auto.ConfigValue(image_tag))
            handle.up(message=f"{RELEASE_PREFIX}{tag} @ {_commit()}", policy_packs=_policy_packs(),
                      on_event=resource_errors(details))
    except KeyboardInterrupt:
        handle.cancel()
        echo("cancelled: the update was cancelled; the stack is unlocked")
        return CANCELLED
    except DeployError as error:
        # A release whose update failed (a migration's non-zero exit, a container that never turned
        # healthy) must not stay the stack's desired state: its tag would be retried by the next
        # `up` of any change, and a never-healthy container stays running, with its network aliases,
        # after the provider's `wait` gives up (kreuzwerker/terraform-provider-docker v4.5.0
        # resource_docker_container_funcs.go resourceDockerContainerCreate: the wait returns
        # errContainerFailedToBeInHealthyState and removes nothing), while the engine marks the serving
        # container pending deletion (pulumi/pulumi pkg/resource/deploy/step.go CreateStep.Apply sets
        # `s.old.Delete = true` on a partial failure). An update back to the previous good release
        # restores the tag, creates a fresh container of it and deletes the failed and the pending one
        # only after every create (step_generator.go GenerateDeletes), so the service stays served.
        if (error.code != ENGINE_FAILED or image_tag is None or not rollback_on_failure or previous is None
                or previous.image_tag in ("", tag)):
            raise
        phase(f"up {tag} failed", t)
        t = time.monotonic()
        _restore(handle, stack, previous, f"{tag} failed to update")
        phase(f"rollback to {previous.image_tag}", t)
        raise DeployError(ENGINE_FAILED, f"{error}\nrolled back to {previous.image_tag} "
                                         f"(release {previous.version})") from None
    phase(f"up {tag}", t)
    t = time.monotonic()
    failures = verify(verification_urls(env, base_url), deadline if deadline is not None else verification_deadline(env))
    if not failures:
        phase("verify", t)
        return OK
    echo(f"verify failed after {time.monotonic() - t:.1f} s: " + "; ".join(failures))
    if not rollback_on_failure or previous is None or previous.image_tag in ("", tag):
        echo("no earlier good release to restore")
        return VERIFY_FAILED
    t = time.monotonic()
    _restore(handle, stack, previous, f"{tag} failed verification")
    phase(f"rollback to {previous.image_tag}", t)
    return VERIFY_FAILED


def _restore(handle: auto.Stack, stack: str, previous: Release, why: str) -> None:
    """An update back to `previous`'s image tag (Pulumi has no rollback of its own)."""
    with engine_errors(stack):
        handle.set_config(IMAGE_TAG_KEY, auto.ConfigValue(previous.image_tag))
        handle.up(message=f"rollback to {previous.image_tag} (release {previous.version}) after {why}",
                  policy_packs=_policy_packs())


def _last_good(history: list[Release]) -> Release | None:
    """The newest update that succeeded (history is newest first)."""
    return next((r for r in history if r.result == "succeeded" and r.image_tag), None)


def rollback(stack: str, *, to: int | None = None, base_url: str | None = None, echo: Echo = print,
             deadline: float | None = None) -> int:
    history = releases(stack)
    if to is not None:
        target = next((r for r in history if r.version == to and r.result == "succeeded"), None)
        if target is None:
            listing = ", ".join(f"{r.version} ({r.image_tag}, {r.result})" for r in history) or "none"
            raise DeployError(REFUSED, f"no successful release {to} of stack {stack}; releases: {listing}")
    else:
        current = _last_good(history)
        target = next((r for r in history if r.result == "succeeded" and r.image_tag and current is not None
                       and r.image_tag != current.image_tag), None)
        if target is None:
            raise DeployError(REFUSED, f"stack {stack} has no earlier successful release to roll back to")
    echo(f"rolling back to release {target.version} ({target.image_tag})")
    return up(stack, image_tag=target.image_tag, base_url=base_url, echo=echo, deadline=deadline,
              rollback_on_failure=False)


def drift(stack: str, *, echo: Echo = print) -> int:
    validate(stack)
    handle = open_stack(stack)
    changed: list[str] = []

    def on_event(event: auto.EngineEvent) -> None:
        pre = event.resource_pre_event
        if pre is not None and pre.metadata.op not in (auto.OpType.SAME, auto.OpType.READ):
            changed.append(f"{pre.metadata.op.value} {pre.metadata.urn}")

    with engine_errors(stack):
        handle.refresh(on_event=on_event)
        result = handle.preview(on_event=on_event)
    drifted = {str(getattr(k, "value", k)): v for k, v in result.change_summary.items()
               if str(getattr(k, "value", k)) != "same" and v}
    if not drifted and not changed:
        echo(f"{stack}: no drift")
        return OK
    echo(f"{stack}: drift: " + ", ".join(f"{n} {op}" for op, n in sorted(drifted.items())))
    for line in changed:
        echo(f"  {line}")
    return DRIFT


def destroy(stack: str, *, confirm_prod: bool = False, echo: Echo = print) -> int:
    if stack == "prod" and not confirm_prod:
        raise DeployError(REFUSED, "destroying prod needs --confirm-prod (the data volumes are protected and retained)")
    handle = open_stack(stack)
    with engine_errors(stack):
        handle.destroy()
    echo(f"{stack}: destroyed")
    return OK


def as_dict(release: Release) -> dict[str, Any]:
    return asdict(release)
