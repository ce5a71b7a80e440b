"""Operator CLI: `python -m ops synth prod --out build/synth`, `python -m ops policy prod`, `python -m ops docs`,
`python -m ops deploy ...`."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Optional

import typer

from config import ConfigError
from ops import docs as docs_module

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, no_args_is_help=True,
                  help="My SaaS Chat infrastructure operator tools.")


@app.command()
def synth(
    stack: Annotated[Optional[str], typer.Argument(help="Stack name (Pulumi.<stack>.yaml).")] = None,
    out: Annotated[Path, typer.Option("--out", help="Output directory.")] = Path("build/synth"),
    all_stacks: Annotated[bool, typer.Option("--all", help="Every Pulumi.<stack>.yaml, into OUT/<stack>/.")] = False,
    secrets_file: Annotated[Optional[Path], typer.Option(
        "--secrets-file", help="JSON {secret-id: value} standing in for Secrets Manager.")] = None,
) -> None:
    """Write the stack's whole desired state offline: resources.json, files/, summary.md, graph.mmd."""
    from ops import runner
    from ops import synth as writer

    if all_stacks == (stack is not None):
        raise typer.BadParameter("name one STACK or pass --all")
    names = runner.stacks() if all_stacks else [stack or ""]
    secrets = None
    if secrets_file is not None:
        try:
            secrets = json.loads(secrets_file.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            typer.echo(f"{secrets_file}: cannot be read as JSON: {exc}", err=True)
            raise typer.Exit(2) from None
        if not isinstance(secrets, dict):
            typer.echo(f"{secrets_file}: must be a JSON object of secret id -> value", err=True)
            raise typer.Exit(2)
    recordings = []
    for name in names:
        if not runner.stack_file(name).exists():
            typer.echo(f"no stack file {runner.stack_file(name).name} (stacks: {', '.join(runner.stacks())})", err=True)
            raise typer.Exit(2)
        try:
            recordings.append(runner.run_stack(name, secrets=secrets))
        except ConfigError as error:
            typer.echo(f"invalid configuration for stack {name}:\n{error}", err=True)
            raise typer.Exit(2) from None
        except runner.SecretsFileError as error:
            typer.echo(f"{secrets_file} does not hold every secret stack {name} references:\n{error}", err=True)
            raise typer.Exit(2) from None
        except runner.StrictMockError as error:
            typer.echo(str(error), err=True)
            raise typer.Exit(1) from None
        except Exception as error:
            typer.echo(f"stack {name}: the program failed: {error}", err=True)
            raise typer.Exit(1) from None
    rendered = []
    for rec in recordings:
        try:
            rendered.append(writer.render(rec))
        except writer.SecretLeakError as error:
            typer.echo(f"stack {rec.stack}: {error}", err=True)
            raise typer.Exit(1) from None
    # Written only once every stack synthesized: nothing half-applied.
    for rec, outputs in zip(recordings, rendered, strict=True):
        target = out / rec.stack if all_stacks else out
        writer.write(rec, target, outputs)
        typer.echo(f"{rec.stack}: {len(rec.resources)} resources -> {target}")


@app.command()
def docs(check: Annotated[bool, typer.Option("--check", help="Fail if the file is stale.")] = False) -> None:
    """Regenerate docs/configuration.md from the models."""
    text = docs_module.render()
    if check:
        if not docs_module.PATH.exists() or docs_module.PATH.read_text() != text:
            typer.echo(f"{docs_module.PATH} is stale: run python -m ops docs", err=True)
            raise typer.Exit(1)
        return
    docs_module.PATH.write_text(text)
    typer.echo(f"wrote {docs_module.PATH}")



def _backup_app() -> typer.Typer:
    from ops.backup import backup_app

    return backup_app


app.add_typer(_backup_app(), name="backup")

deploy_app = typer.Typer(no_args_is_help=True, help="Releases through the Pulumi Automation API (ops/deploy.py).")
app.add_typer(deploy_app, name="deploy")

StackArg = Annotated[str, typer.Argument(help="Stack name (Pulumi.<stack>.yaml).")]
BaseUrl = Annotated[Optional[str], typer.Option("--base-url", help="Verify here instead of https://<domain>.")]


def _run(action: Callable[[], int | str]) -> None:
    """Every deploy command: one clear line and a documented exit code on failure (ops/deploy.py)."""
    from ops import deploy

    try:
        result = action()
    except deploy.DeployError as error:
        typer.echo(str(error), err=True)
        raise typer.Exit(error.code) from None
    except KeyboardInterrupt:
        typer.echo("cancelled", err=True)
        raise typer.Exit(deploy.CANCELLED) from None
    if isinstance(result, str):
        typer.echo(result, nl=False)
    elif result:
        raise typer.Exit(result)


@deploy_app.command("preview")
def deploy_preview(stack: StackArg, as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """The change summary as Markdown for a pull request (or JSON)."""
    from ops import deploy

    _run(lambda: deploy.preview(stack, as_json=as_json))


@deploy_app.command("up")
def deploy_up(stack: StackArg, image_tag: Annotated[Optional[str], typer.Option("--image-tag")] = None,
              base_url: BaseUrl = None) -> None:
    """Update, verify through the public endpoint, roll back automatically when verification fails."""
    from ops import deploy

    _run(lambda: deploy.up(stack, image_tag=image_tag, base_url=base_url, echo=typer.echo))


@deploy_app.command("releases")
def deploy_releases(stack: StackArg, as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Release history from Pulumi's update history: version, time, result, image tag, commit."""
    from ops import deploy

    def show() -> str:
        found = deploy.releases(stack)
        if as_json:
            return json.dumps([deploy.as_dict(r) for r in found], indent=2) + "\n"
        return "".join(f"{r.version:>4}  {r.started}  {r.result:<10} {r.image_tag:<24} {r.commit}\n" for r in found)

    _run(show)


@deploy_app.command("rollback")
def deploy_rollback(stack: StackArg, to: Annotated[Optional[int], typer.Option("--to", help="Release version.")] = None,
                    base_url: BaseUrl = None) -> None:
    """`up` with an earlier release's image tag (the previous good one by default)."""
    from ops import deploy

    _run(lambda: deploy.rollback(stack, to=to, base_url=base_url, echo=typer.echo))


@deploy_app.command("drift")
def deploy_drift(stack: StackArg) -> None:
    """Refresh, then a preview that expects no changes; exit 1 on drift."""
    from ops import deploy

    _run(lambda: deploy.drift(stack, echo=typer.echo))


@deploy_app.command("destroy")
def deploy_destroy(stack: StackArg, confirm_prod: Annotated[bool, typer.Option("--confirm-prod")] = False) -> None:
    """Destroy the stack's resources (protected ones stay); prod needs --confirm-prod."""
    from ops import deploy

    _run(lambda: deploy.destroy(stack, confirm_prod=confirm_prod, echo=typer.echo))


@app.command()
def policy(
    stack: Annotated[Optional[str], typer.Argument(help="Stack name (Pulumi.<stack>.yaml).")] = None,
    all_stacks: Annotated[bool, typer.Option("--all", help="Every Pulumi.<stack>.yaml.")] = False,
) -> None:
    """Run the policy pack's rules over the stack's strict-mock recording; exit 1 on a mandatory violation."""
    from ops import policy as checker
    from ops import runner

    if all_stacks == (stack is not None):
        raise typer.BadParameter("name one STACK or pass --all")
    failed = False
    for name in runner.stacks() if all_stacks else [stack or ""]:
        if not runner.stack_file(name).exists():
            typer.echo(f"no stack file {runner.stack_file(name).name} (stacks: {', '.join(runner.stacks())})", err=True)
            raise typer.Exit(2)
        try:
            rec = runner.run_stack(name)
        except ConfigError as error:
            typer.echo(f"invalid configuration for stack {name}:\n{error}", err=True)
            raise typer.Exit(2) from None
        except runner.StrictMockError as error:
            typer.echo(str(error), err=True)
            raise typer.Exit(1) from None
        violations = checker.evaluate(rec.resources.values())
        for violation in violations:
            typer.echo(violation.render())
        mandatory = sum(v.mandatory for v in violations)
        failed = failed or mandatory > 0
        typer.echo(f"{name}: {len(rec.resources)} resources, {len(checker.rules_applied())} rules: "
                   f"{mandatory} mandatory, {len(violations) - mandatory} advisory violations")
    if failed:
        raise typer.Exit(1)


secrets_app = typer.Typer(no_args_is_help=True, help="The stack's Secrets Manager documents (ops/secrets.py).")
app.add_typer(secrets_app, name="secrets")
StackOpt = Annotated[str, typer.Option("--stack", help="Stack name (Pulumi.<stack>.yaml).")]


def _secrets_env(stack: str) -> tuple[object, str]:
    from ops import runner
    from ops import secrets as sm

    try:
        env = sm.environment(stack)
    except sm.SecretsError as error:
        typer.echo(str(error), err=True)
        raise typer.Exit(error.code) from None
    except ConfigError as error:
        typer.echo(f"invalid configuration for stack {stack}:\n{error}", err=True)
        raise typer.Exit(2) from None
    return env, runner.region_of(runner.stack_file(stack))


@secrets_app.command("check")
def secrets_check(stack: StackOpt) -> None:
    """List every referenced secret id and key and whether it exists (never a value); exit 1 if one is missing."""
    from ops import secrets as sm

    env, region = _secrets_env(stack)
    try:
        found = sm.check(env, region)  # type: ignore[arg-type]
    except sm.SecretsError as error:
        typer.echo(str(error), err=True)
        raise typer.Exit(error.code) from None
    for c in found:
        typer.echo(f"{'ok     ' if c.ok else 'MISSING'} {c.secret_id} {c.key} ({'managed' if c.managed else 'referenced'})"
                   + ("" if c.ok else f": {c.status}"))
    missing = sum(not c.ok for c in found)
    typer.echo(f"{stack}: {len(found)} keys, {missing} missing")
    if missing:
        raise typer.Exit(1)


@secrets_app.command("rotate")
def secrets_rotate(name: Annotated[str, typer.Argument(help="Managed logical secret (stores, grafana, ...).")],
                   stack: StackOpt,
                   key: Annotated[Optional[str], typer.Option("--key", help="Only this key of the document.")] = None) -> None:
    """Write a new version of a managed secret and say which containers the next `up` replaces."""
    from ops import secrets as sm

    env, region = _secrets_env(stack)
    try:
        done = sm.rotate(env, name, region, key=key)  # type: ignore[arg-type]
    except sm.SecretsError as error:
        typer.echo(str(error), err=True)
        raise typer.Exit(error.code) from None
    typer.echo(f"wrote version {done.version_id} of {done.secret_id} (new: {', '.join(done.keys)})")
    typer.echo(f"the next `up` replaces: {', '.join(done.replaced) or 'nothing'}")
    for warning in done.warnings:
        typer.echo(f"warning: {warning}")


env_app = typer.Typer(no_args_is_help=True, help="From .env files to the model (ops/env.py).")
app.add_typer(env_app, name="env")
TreeArg = Annotated[Path, typer.Argument(help="Directory to scan for .env* files (node_modules and .git skipped).")]


@env_app.command("audit")
def env_audit(path: TreeArg) -> None:
    """Every key: where it is defined, whether the values agree, which look secret (masked); exit 1 on a conflict."""
    from ops import env as envs

    try:
        lines, conflict = envs.audit(path)
    except envs.EnvError as error:
        typer.echo(str(error), err=True)
        raise typer.Exit(2) from None
    typer.echo("\n".join(lines))
    if conflict:
        raise typer.Exit(1)


@env_app.command("migrate")
def env_migrate(
    path: TreeArg, stack: StackOpt,
    write: Annotated[bool, typer.Option("--write", help="Store the secrets and write the stack file (else a dry run).")] = False,
    variant: Annotated[str, typer.Option("--variant", help="Which files: '' for .env, 'production' for .env.production.")] = "",
    stack_dir: Annotated[Optional[Path], typer.Option("--stack-dir", help="Where Pulumi.<stack>.yaml is.")] = None,
) -> None:
    """Shared settings and per-service overrides into the stack file, secret values into Secrets Manager."""
    from ops import env as envs
    from ops import runner

    stack_path = (stack_dir or runner.ROOT_DIR) / f"Pulumi.{stack}.yaml"
    try:
        for line in envs.migrate(path, stack, stack_path, write=write, variant=variant):
            typer.echo(line)
    except envs.EnvError as error:
        typer.echo(str(error), err=True)
        raise typer.Exit(2) from None
