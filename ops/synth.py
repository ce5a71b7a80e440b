"""`synth`: the whole desired state of a stack, offline, as reviewable files.

resources.json  every resource with its options and inputs (secrets redacted), and every read
files/          every file the program places on the host, at its host path (secrets redacted)
summary.md      per component: what runs, image, ports, routes, limits, secret names
graph.mmd       Mermaid diagram of components and their dependencies
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

from ops.mocks import Registration
from ops.runner import Recording
from ops.strict import SECRET_SIG

REDACTED = "[secret]"


class Redactor:
    def __init__(self, secret_values: set[str]) -> None:
        # A multi-line secret (a private key) is re-indented inside YAML: match its lines too.
        lines = {line.strip() for v in secret_values for line in v.splitlines()[1:-1] if len(line.strip()) >= 16}
        # Longest first, so a value that contains another is replaced whole; one pass per string.
        values = sorted((v for v in secret_values | lines if len(v) >= 4), key=len, reverse=True)
        self.pattern = re.compile("|".join(map(re.escape, values))) if values else None

    def text(self, value: str) -> str:
        return self.pattern.sub(REDACTED, value) if self.pattern else value

    def tree(self, value: Any) -> Any:
        if isinstance(value, dict) and value.get(SECRET_SIG) is not None and "value" in value:
            inner = self.tree(value["value"])
            # A secret that contained no known secret value is hidden whole: fail closed.
            return inner if inner != value["value"] else REDACTED
        if isinstance(value, dict):
            return {k: self.tree(v) for k, v in sorted(value.items())}
        if isinstance(value, list):
            return [self.tree(v) for v in value]
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, float) and value.is_integer():
            return int(value)
        return value


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
            "ignoreChanges": reg.ignore_changes, "inputs": redactor.tree(reg.inputs),
        })
    invokes = sorted(({"token": i.token, "args": redactor.tree(i.args)} for i in rec.invokes),
                     key=lambda i: json.dumps(i, sort_keys=True))
    return {"stack": rec.stack, "resources": resources, "reads": reads, "invokes": invokes,
            "outputs": redactor.tree(rec.stack_outputs)}


def host_files(rec: Recording, redactor: Redactor) -> dict[str, str]:
    """Files on the host: cloud-init user data and what it writes, and uploads into Docker volumes."""
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
            mounts = {m["containerPath"]: m.get("volumeName", "") for m in inputs.get("volumes") or []}
            for upload in inputs.get("uploads") or []:
                files[_volume_path(upload["file"], mounts)] = upload.get("content", REDACTED)
    return dict(sorted(files.items()))


def _volume_path(container_path: str, mounts: dict[str, str]) -> str:
    for mount, volume in sorted(mounts.items(), key=lambda m: -len(m[0])):
        if container_path.startswith(mount.rstrip("/") + "/"):
            rel = PurePosixPath(container_path).relative_to(mount)
            return f"/var/lib/docker/volumes/{volume}/_data/{rel}"
    raise ValueError(f"upload {container_path} is not inside a volume: the read-only root filesystem refuses it")


def summary(rec: Recording) -> str:
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
            lines.append(f"- `{child.type.split(':')[-1]}` {child.name}" + _detail(rec, child))
        svc = env.services.get(comp.name) if comp.type.endswith(":AppService") else None
        if svc is not None:
            routes = ", ".join(f"`{r.prefix}` ({r.kind})" for r in svc.routes) or "none (worker)"
            lines += [f"- port: {svc.port}; routes: {routes}",
                      f"- limits: {svc.cpu:g} CPU, {svc.memory // 1024**2} MiB; uses: {', '.join(svc.uses) or 'nothing'}",
                      f"- secrets: {', '.join(sorted(svc.secrets)) or 'none'}"]
        if comp.type.endswith(":SecretStore"):
            reads = sorted({i.args.get("secretId", "") for i in rec.invokes if i.token.endswith(":getSecretVersion")})
            lines.append(f"- reads from Secrets Manager: {', '.join(f'`{r}`' for r in reads) or 'nothing (generated)'}")
        lines.append("")
    return "\n".join(lines)


def _detail(rec: Recording, reg: Registration) -> str:
    i = reg.inputs
    if reg.type == "docker:index/container:Container":
        ports = ", ".join(f"{p.get('external')}->{p.get('internal')}" for p in i.get("ports") or []) or "none published"
        return f": user `{i.get('user')}`, {i.get('cpus')} CPU, {int(i.get('memory', 0))} MiB, ports {ports}"
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


def write(rec: Recording, out: Path) -> None:
    redactor = Redactor(rec.secret_values)
    staging = out.with_name(out.name + ".tmp")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    (staging / "resources.json").write_text(json.dumps(resource_document(rec, redactor), indent=2, sort_keys=True) + "\n")
    for path, content in host_files(rec, redactor).items():
        target = staging / "files" / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(content)
    (staging / "summary.md").write_text(summary(rec))
    (staging / "graph.mmd").write_text(graph(rec))
    # Swap in whole: a failed synth never leaves a half-written directory behind.
    shutil.rmtree(out, ignore_errors=True)
    staging.rename(out)
