"""`synth`: the whole desired state of a stack, offline, as reviewable files.

resources.json  every resource with its options and inputs, and every read, sorted, stable
files/          every file the program places on the host, at its host path
summary.md      per component: what runs, image, ports, routes, limits, environment by source
graph.mmd       Mermaid diagram of components and their dependencies

Redaction follows secretness, as the engine's does: a value the wire marks secret (a secret
Output, anything derived from one, an output the provider marks secret) is written as `[secret]`
whole, whatever its length or encoding, and nothing is matched as text. As a last defence, known
secret values are looked for in everything about to be written, raw and encoded (URL, JSON,
base64); finding one fails synth and writes nothing.
"""

from __future__ import annotations

import base64
import json
import shutil
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import quote, quote_plus

import yaml

from config import StoreUrl, service_env
from config.model import SecretRef
from ops.mocks import Registration
from ops.runner import Recording
from ops.strict import is_secret
from render.pgbackrest import repo_path, schedule_text

REDACTED = "[secret]"
# Known secret values shorter than this are not looked for as text (they would match anything);
# secretness alone keeps them out.
LEAK_CHECK_MIN = 8


class SecretLeakError(Exception):
    """A known secret value reached synth output outside a secret: nothing was written."""


class Redactor:
    """Stateless: a value marked secret on the wire is `[secret]`, whole."""

    def tree(self, value: Any) -> Any:
        if is_secret(value):
            return REDACTED
        if isinstance(value, dict):
            return {k: self.tree(v) for k, v in sorted(value.items())}
        if isinstance(value, list):
            return [self.tree(v) for v in value]
        if isinstance(value, float) and value.is_integer():
            return int(value)
        return value


def encodings(value: str) -> set[str]:
    """The forms a secret takes inside synth output: raw, URL-, JSON- and base64-encoded."""
    raw = value.encode()
    forms = {value, quote(value), quote(value, safe=""), quote_plus(value), json.dumps(value)[1:-1],
             json.dumps(value, ensure_ascii=False)[1:-1], json.dumps(json.dumps(value)[1:-1])[1:-1],
             base64.b64encode(raw).decode().rstrip("="), base64.urlsafe_b64encode(raw).decode().rstrip("=")}
    return {f for f in forms if f}


def check_no_leak(outputs: dict[str, str], secret_values: set[str]) -> None:
    """Defence in depth behind secretness: fail if a known secret value shows, in any encoding."""
    for value in secret_values:
        if len(value) < LEAK_CHECK_MIN:
            continue
        for form in encodings(value):
            for name, text in outputs.items():
                if form in text:
                    raise SecretLeakError(f"{name}: a secret value appears outside a secret (the program "
                                          "unwrapped it or built it outside an Output); nothing was written")


def resource_document(rec: Recording, redactor: Redactor) -> dict[str, Any]:
    reads = [{"urn": r.urn, "type": r.type, "name": r.name, "id": r.read_id, "parent": r.parent,
              "provider": r.provider, "inputs": redactor.tree(r.inputs)}
             for r in sorted(rec.reads.values(), key=lambda r: r.urn)]
    resources = []
    for reg in sorted(rec.resources.values(), key=lambda r: r.urn):
        resources.append({
            "urn": reg.urn, "type": reg.type, "name": reg.name, "custom": reg.custom,
            "parent": reg.parent, "provider": reg.provider, "dependencies": reg.dependencies,
            "protect": reg.protect, "retainOnDelete": reg.retain_on_delete,
            "deleteBeforeReplace": reg.delete_before_replace, "replaceOnChanges": reg.replace_on_changes,
            "customTimeouts": reg.custom_timeouts,
            "ignoreChanges": reg.ignore_changes, "inputs": redactor.tree(reg.inputs),
        })
    invokes = sorted(({"token": i.token, "args": redactor.tree(i.args)} for i in rec.invokes),
                     key=lambda i: json.dumps(i, sort_keys=True))
    return {"stack": rec.stack, "resources": resources, "reads": reads, "invokes": invokes,
            "outputs": redactor.tree(rec.stack_outputs)}


def host_files(rec: Recording, redactor: Redactor) -> dict[str, str]:
    """Files on the host: cloud-init user data and what it writes, and uploads into Docker volumes.

    Secretness decides here too: user data derived from a secret (it carries the host's private
    key) is one `[secret]` file, its parts not listed; an upload whose content is secret is
    `[secret]`. A file whose path is secret cannot be placed and is left out.
    """
    files: dict[str, str] = {}
    for reg in rec.resources.values():
        inputs = redactor.tree(reg.inputs)
        if reg.type == "aws:ec2/instance:Instance" and isinstance(inputs.get("userData"), str):
            user_data = inputs["userData"]
            files["/var/lib/cloud/instance/user-data.txt"] = user_data
            document = yaml.safe_load(user_data) if user_data.startswith("#cloud-config") else None
            for item in (document or {}).get("write_files", []):
                files[item["path"]] = item.get("content", "")
        if reg.type == "docker:index/container:Container":
            volumes = inputs["volumes"] if isinstance(inputs.get("volumes"), list) else []
            mounts = {m["containerPath"]: m.get("volumeName", "") for m in volumes
                      if isinstance(m, dict) and isinstance(m.get("containerPath"), str)}
            uploads = inputs["uploads"] if isinstance(inputs.get("uploads"), list) else []
            for upload in uploads:
                if isinstance(upload, dict) and isinstance(upload.get("file"), str) and upload["file"] != REDACTED:
                    files[_volume_path(upload["file"], mounts)] = str(upload.get("content", REDACTED))
    return dict(sorted(files.items()))


def _volume_path(container_path: str, mounts: dict[str, str]) -> str:
    for mount, volume in sorted(mounts.items(), key=lambda m: -len(m[0])):
        if container_path.startswith(mount.rstrip("/") + "/"):
            rel = PurePosixPath(container_path).relative_to(mount)
            return f"/var/lib/docker/volumes/{volume}/_data/{rel}"
    raise ValueError(f"upload {container_path} is not inside a volume: the read-only root filesystem refuses it")


def summary(rec: Recording, redactor: Redactor | None = None) -> str:
    redactor = redactor or Redactor()
    env = rec.env
    lines = [f"# Stack `{rec.stack}`", "", f"- domain: `{env.domain}`", f"- host: `{env.host.kind}`"
             + (f" ({env.host.instance_type}, data volume {(env.host.data_volume or 0) // 1024**3} GiB)"
                if env.host.kind == "ec2" else ""),
             f"- resources: {len(rec.resources)} ({sum(r.custom for r in rec.resources.values())} custom)", ""]
    children: dict[str, list[Registration]] = {}
    for reg in sorted(rec.resources.values(), key=lambda r: r.urn):
        children.setdefault(reg.parent, []).append(reg)
    for comp in sorted((r for r in rec.resources.values() if not r.custom), key=lambda r: (r.type, r.name)):
        lines.append(f"## {comp.name} (`{comp.type}`)")
        lines.append("")
        for child in children.get(comp.urn, []):
            lines.append(f"- `{child.type.split(':')[-1]}` {child.name}" + _detail(child, redactor.tree(child.inputs)))
        svc = env.services.get(comp.name) if comp.type.endswith(":AppService") else None
        if svc is not None:
            routes = ", ".join(f"`{r.prefix}` ({r.kind})" for r in svc.routes) or "none (worker)"
            lines += [f"- port: {svc.port}; routes: {routes}",
                      f"- limits: {svc.cpu:g} CPU, {svc.memory // 1024**2} MiB; uses: {', '.join(svc.uses) or 'nothing'}",
                      f"- secrets: {', '.join(sorted(svc.secrets)) or 'none'}",
                      # From the model, not from the container's inputs: those are one secret list
                      # as soon as one variable is secret, so this is where the environment is reviewed.
                      f"- env: {_env(rec, comp.name)}"]
        if comp.type.endswith(":Gateway"):
            table = [(r.prefix, name, r.kind, "none" if r.kind == "webhook" else
                      f"{r.rate_limit} ({env.gateway.rate_limits[r.rate_limit].per_second}/s, "
                      f"burst {env.gateway.rate_limits[r.rate_limit].burst})")
                     for name, s in env.services.items() for r in s.routes]
            lines += [f"- tls: {env.tls.mode}" + (f" (secret `{env.tls.secret}`)" if env.tls.secret else ""),
                      f"- body limit: {env.gateway.max_body // 1024**2} MiB, webhooks "
                      f"{env.gateway.webhook_max_body // 1024**2} MiB",
                      "- routes (longest prefix wins): " + ", ".join(
                          f"`{prefix}` -> {name} ({kind}, limit {limit})" for prefix, name, kind, limit in sorted(table))]
        if comp.type.endswith(":PostgresBackup"):
            lines.append(f"- schedule: {schedule_text(env.postgres.backup)}; repository "
                         f"`s3://{env.host.backup_bucket}{repo_path(env.stack)}` (pgBackRest, aes-256-cbc, zst, bundled)")
        if comp.type.endswith(":SecretStore"):
            reads = sorted({i.args.get("secretId", "") for i in rec.invokes if i.token.endswith(":getSecretVersion")})
            lines.append(f"- reads from Secrets Manager: {', '.join(f'`{r}`' for r in reads) or 'nothing (generated)'}")
        lines.append("")
    return "\n".join(lines)


def _env(rec: Recording, service: str) -> str:
    parts = []
    for var, value in service_env(rec.env, service).items():
        if isinstance(value, SecretRef):
            parts.append(f"`{var}` (secret {value.secret}.{value.key})")
        elif isinstance(value, StoreUrl):
            parts.append(f"`{var}` ({value.store} URL, secret)")
        else:
            parts.append(f"`{var}={value}`")
    return ", ".join(parts) or "none"


def _detail(reg: Registration, i: dict[str, Any]) -> str:
    """One line about a resource, from its redacted inputs."""
    if reg.type == "docker:index/container:Container":
        ports = i["ports"] if isinstance(i.get("ports"), list) else []
        published = ", ".join(f"{p.get('external')}->{p.get('internal')}" for p in ports if isinstance(p, dict))
        return f": user `{i.get('user')}`, {i.get('cpus')} CPU, {i.get('memory', 0)} MiB, ports {published or 'none published'}"
    if reg.type == "docker:index/remoteImage:RemoteImage":
        return f": `{i.get('name')}`"
    flags = [f for f, on in (("protected", reg.protect), ("retained on delete", reg.retain_on_delete)) if on]
    return f" ({', '.join(flags)})" if flags else ""


def graph(rec: Recording) -> str:
    components = {r.urn: r for r in rec.resources.values() if not r.custom}
    owner: dict[str, str] = {}
    for reg in rec.resources.values():
        node = reg.urn
        while node and node not in components:
            node = rec.resources[node].parent if node in rec.resources else ""
        owner[reg.urn] = node
    edges = set()
    for reg in rec.resources.values():
        for dep in [*reg.dependencies, reg.provider]:
            a, b = owner.get(reg.urn), owner.get(dep)
            if a and b and a != b:
                edges.add((components[b].name, components[a].name))
    lines = ["flowchart LR"]
    for comp in sorted(components.values(), key=lambda r: r.name):
        lines.append(f'  {_id(comp.name)}["{comp.name}<br/><small>{comp.type.split(":", 1)[1]}</small>"]')
    lines += [f"  {_id(a)} --> {_id(b)}" for a, b in sorted(edges)]
    # Secrets read from Secrets Manager are invokes, not resources: draw those reads from the model.
    store = next((c.name for c in components.values() if c.type.endswith(":SecretStore")), None)
    reads = sorted(n for n, svc in rec.env.services.items() if svc.secrets and (store, n) not in edges)
    lines += [f"  {_id(store)} -. reads .-> {_id(n)}" for n in reads if store]
    return "\n".join(lines) + "\n"


def _id(name: str) -> str:
    return name.replace("-", "_")


def render(rec: Recording) -> dict[str, str]:
    """Every output file, by its path relative to the output directory."""
    redactor = Redactor()
    outputs = {"resources.json": json.dumps(resource_document(rec, redactor), indent=2, sort_keys=True) + "\n"}
    outputs.update({f"files/{path.lstrip('/')}": content for path, content in host_files(rec, redactor).items()})
    outputs["summary.md"] = summary(rec, redactor)
    outputs["graph.mmd"] = graph(rec)
    check_no_leak(outputs, rec.secret_values)
    return outputs


def write(rec: Recording, out: Path, outputs: dict[str, str] | None = None) -> None:
    outputs = render(rec) if outputs is None else outputs
    staging = out.with_name(out.name + ".tmp")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    for name, content in outputs.items():
        target = staging / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(content)
    # Swap in whole: a failed synth never leaves a half-written directory behind.
    shutil.rmtree(out, ignore_errors=True)
    staging.rename(out)
