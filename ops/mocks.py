"""Strict mocks: the real program under `pulumi.runtime.set_mocks`, recorded and checked.

`StrictMonitor` sees each whole registration request (options included), checks every input
against the SDK metadata (ops/strict.py) and records it. `StrictMocks` answers computed outputs
deterministically (ids, image digests, addresses, generated passwords, ARNs) so Output-valued
inputs resolve; an output it cannot answer resolves to a marker that fails the run where it is used.

Where plain mocks differ from the engine, the monitor does what the engine does: a second
resource with the same URN fails ("Duplicate resource URN"), reads (`Resource.get`) are recorded
and checked like registrations, and outputs the provider marks secret (`additionalSecretOutputs`,
e.g. `RandomPassword.result`, TLS private keys) come back secret, so what derives from them is too.
"""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass, field
from typing import Any

from google.protobuf import json_format, struct_pb2
from pulumi.runtime import mocks, rpc
from pulumi.runtime.proto import resource_pb2

from ops.strict import OUTPUT_STR, UNRESOLVED, check_inputs, find_unresolved, is_secret, output_properties, secret

ACCOUNT = "123456789012"


def digest(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()


@dataclass
class Registration:
    urn: str
    type: str
    name: str
    custom: bool
    parent: str
    provider: str
    dependencies: list[str]
    property_dependencies: dict[str, list[str]]
    protect: bool
    retain_on_delete: bool
    delete_before_replace: bool
    replace_on_changes: list[str]
    ignore_changes: list[str]
    # The wire inputs, secrets still wrapped ({SECRET_SIG: SECRET_VALUE_SIG, "value": ...}).
    inputs: dict[str, Any]
    outputs: dict[str, Any] = field(default_factory=dict)
    # False when the program left the choice to the provider (pulumi-docker: delete first).
    delete_before_replace_defined: bool = False
    custom_timeouts: dict[str, str] = field(default_factory=dict)  # create/update/delete, as sent
    # Outputs the provider marks secret (the request's additionalSecretOutputs).
    secret_outputs: list[str] = field(default_factory=list)
    # A read (`Resource.get`, ReadResource): the id it reads; inputs are the state it passed.
    read_id: str = ""


@dataclass
class Invocation:
    token: str
    # The wire arguments; secret ones still wrapped (see StrictMonitor.Invoke).
    args: dict[str, Any]


class StrictMocks(mocks.Mocks):
    def __init__(self, stack: str, region: str, secret_documents: dict[str, str]) -> None:
        self.stack, self.region = stack, region
        self.secret_documents = secret_documents
        self.invokes: list[Invocation] = []
        self.violations: list[str] = []
        self.secret_values: set[str] = set(_leaves(secret_documents))
        # What the program wrote to Secrets Manager (SecretVersion secretString, by secret ARN), for
        # the reads that follow it, as Secrets Manager answers them.
        self.written: dict[str, Any] = {}

    def call(self, args: mocks.MockCallArgs) -> dict[str, Any]:  # type: ignore[override]
        token, a = args.token, args.args
        h = digest(token, json.dumps(a, sort_keys=True, default=str))
        if token == "aws:secretsmanager/getSecretVersion:getSecretVersion":
            sid = a["secretId"]
            if sid in self.written:
                return {"secretString": self.written[sid], "arn": sid, "id": sid, "secretId": sid,
                        "versionId": h[:32], "versionStages": ["AWSCURRENT"]}
            if sid not in self.secret_documents:
                self.violations.append(f"invoke {token}: no value for secret {sid!r} in the secrets file")
                return {}
            arn = f"arn:aws:secretsmanager:{self.region}:{ACCOUNT}:secret:{sid}-{h[:6]}"
            # Secret in the answer, as the provider's schema marks it (the SDK then makes the whole
            # invoke result secret: pulumi/runtime/invoke.py, deserialize_properties_unwrap_secrets).
            return {"secretString": secret(self.secret_documents[sid]), "arn": arn, "id": arn, "secretId": sid,
                    "versionId": h[:32], "versionStages": ["AWSCURRENT"]}
        answers: dict[str, dict[str, Any]] = {
            "aws:ec2/getAmi:getAmi": {"id": f"ami-{h[:17]}", "architecture": "x86_64", "name": "mocked"},
            "aws:ssm/getParameter:getParameter": {"id": a.get("name", ""), "name": a.get("name", ""), "type": "String",
                                                  "value": f"ami-{h[:17]}", "arn": f"arn:aws:ssm:{self.region}::parameter"
                                                  f"{a.get('name', '')}", "version": 1, "insecureValue": f"ami-{h[:17]}"},
            "aws:ec2/getVpc:getVpc": {"id": f"vpc-{h[:17]}", "cidrBlock": "172.31.0.0/16"},
            "aws:ec2/getSubnet:getSubnet": {"id": f"subnet-{h[:17]}", "cidrBlock": "172.31.0.0/20"},
            "aws:index/getCallerIdentity:getCallerIdentity": {"accountId": ACCOUNT, "id": ACCOUNT, "userId": "MOCK",
                                                              "arn": f"arn:aws:iam::{ACCOUNT}:user/mock"},
            "aws:index/getRegion:getRegion": {"region": self.region, "name": self.region, "id": self.region},
        }
        if token not in answers:
            self.violations.append(f"invoke {token}: the strict mocks have no answer for it (add one in ops/mocks.py)")
            return {}
        return answers[token]

    def new_resource(self, args: mocks.MockResourceArgs) -> tuple[str, dict[str, Any]]:
        h = digest(self.stack, args.typ, args.name)
        state = dict(args.inputs)
        computed = self._computed(args.typ, args.name, args.inputs, h)
        state.update(computed)
        resource_id = str(args.resource_id or computed.get("id") or f"{args.name}-{h[:8]}")
        if args.custom:
            # Only string outputs can carry the marker; typed ones (enums, objects) would not translate.
            for prop, hint in output_properties(args.typ).items():
                if hint is str:
                    state.setdefault(prop, f"{UNRESOLVED}{args.typ}.{prop}>")
        return resource_id, state

    def random_password(self, name: str, length: int, h: str) -> str:
        return (h * 4)[:length]

    def _computed(self, typ: str, name: str, inputs: dict[str, Any], h: str) -> dict[str, Any]:
        arn = f"arn:aws:{typ.split(':')[1].split('/')[0]}:{self.region}:{ACCOUNT}:{name}"
        if typ == "random:index/randomPassword:RandomPassword":
            # Secret because the SDK asks for it (additionalSecretOutputs), not because of this mock.
            return {"result": self.random_password(name, int(inputs.get("length", 16)), h),
                    "bcryptHash": f"$2a$10${h[:53]}"}
        if typ == "tls:index/privateKey:PrivateKey":
            private = f"-----BEGIN OPENSSH PRIVATE KEY-----\nMOCK{h}\n-----END OPENSSH PRIVATE KEY-----\n"
            public = f"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAA{h[:43]}\n"
            return {"privateKeyOpenssh": private, "privateKeyPem": private, "privateKeyPemPkcs8": private,
                    "publicKeyOpenssh": public, "publicKeyPem": public, "publicKeyFingerprintSha256": f"SHA256:{h[:43]}",
                    "publicKeyFingerprintMd5": h[:32], "id": h[:40]}
        if typ == "tls:index/selfSignedCert:SelfSignedCert":
            cert = f"-----BEGIN CERTIFICATE-----\nMOCK{h}\n-----END CERTIFICATE-----\n"
            return {"certPem": cert, "validityStartTime": "2026-01-01T00:00:00Z", "validityEndTime": "2026-04-01T00:00:00Z",
                    "readyForRenewal": False, "keyAlgorithm": "ECDSA", "id": str(int(h[:16], 16))}
        if typ == "docker:index/remoteImage:RemoteImage":
            ref = str(inputs.get("name", ""))
            repo, _, pinned = ref.partition("@")
            repo = repo.rsplit(":", 1)[0] if "/" in repo.rsplit(":", 1)[-1] or ":" in repo.rsplit("/", 1)[-1] else repo
            repo_digest = f"{repo}@{pinned}" if pinned else f"{repo}@sha256:{digest('digest', ref)}"
            return {"imageId": f"sha256:{digest('image', ref)}", "repoDigest": repo_digest, "id": f"sha256:{h}"}
        if typ == "docker:index/container:Container":
            return {"name": inputs.get("name") or f"{name}-{h[:7]}", "id": h, "exitCode": 0, "containerLogs": ""}
        if typ in ("docker:index/network:Network", "docker:index/volume:Volume"):
            return {"name": inputs.get("name") or name, "id": h[:24], "mountpoint": f"/var/lib/docker/volumes/{name}"}
        if typ.startswith("command:"):
            return {"stdout": "", "stderr": ""}
        if typ == "aws:ec2/eip:Eip":
            return {"id": f"eipalloc-{h[:17]}", "allocationId": f"eipalloc-{h[:17]}", "arn": arn,
                    "publicIp": f"198.51.100.{int(h[:2], 16) % 200 + 10}", "publicDns": f"ec2-{h[:6]}.compute.amazonaws.com"}
        if typ == "aws:ec2/instance:Instance":
            return {"id": f"i-{h[:17]}", "arn": arn, "privateIp": "172.31.5.10", "publicIp": "", "primaryNetworkInterfaceId": ""}
        if typ == "aws:secretsmanager/secret:Secret":
            # The provider's id is the secret's ARN (secretsmanager/secret.go, resourceSecretCreate).
            sarn = f"arn:aws:secretsmanager:{self.region}:{ACCOUNT}:secret:{inputs.get('name', name)}-{h[:6]}"
            return {"id": sarn, "arn": sarn, "tagsAll": inputs.get("tags", {})}
        if typ == "aws:secretsmanager/secretVersion:SecretVersion":
            sid = str(inputs.get("secretId", ""))
            self.written[sid] = inputs.get("secretString")
            return {"id": f"{sid}|{h[:32]}", "arn": sid, "versionId": h[:32]}
        if typ == "aws:kms/key:Key":
            key_id = f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:32]}"
            region = inputs.get("region") or self.region
            return {"id": key_id, "keyId": key_id, "arn": f"arn:aws:kms:{region}:{ACCOUNT}:key/{key_id}",
                    "tagsAll": inputs.get("tags", {})}
        if typ == "aws:s3/bucket:Bucket":
            bucket = str(inputs.get("bucket") or f"{name}-{h[:8]}")
            return {"id": bucket, "bucket": bucket, "arn": f"arn:aws:s3:::{bucket}", "tagsAll": inputs.get("tags", {}),
                    "bucketDomainName": f"{bucket}.s3.amazonaws.com", "region": inputs.get("region") or self.region}
        if typ.startswith("aws:"):
            prefix = {"aws:ec2/securityGroup:SecurityGroup": "sg-", "aws:ec2/networkInterface:NetworkInterface": "eni-",
                      "aws:ebs/volume:Volume": "vol-", "aws:ec2/keyPair:KeyPair": "key-"}.get(typ, "")
            out: dict[str, Any] = {"id": f"{prefix}{h[:17]}" if prefix else name, "arn": arn, "tagsAll": inputs.get("tags", {})}
            if typ in ("aws:iam/role:Role", "aws:iam/instanceProfile:InstanceProfile"):
                out["name"] = inputs.get("name") or f"{name}-{h[:7]}"
                out["uniqueId"] = f"AROA{h[:17].upper()}"
            if typ == "aws:ec2/keyPair:KeyPair":
                out["keyName"] = inputs.get("keyName") or f"{name}-{h[:7]}"
            return out
        return {}


class StrictMonitor(mocks.MockMonitor):
    def __init__(self, mocks_: StrictMocks) -> None:
        super().__init__(mocks_)
        self.strict = mocks_
        self.registrations: dict[str, Registration] = {}
        self.reads: dict[str, Registration] = {}
        # The SDK calls the monitor from an executor's threads: the duplicate check and the insert
        # must be one step.
        self._lock = threading.Lock()
        self.stack_outputs: dict[str, Any] = {}
        # Invoke arguments the SDK unwrapped from secrets before sending (ops/guards.py fills it).
        self.secret_invoke_args: dict[str, dict[str, Any]] = {}
        self.calls = 0  # every request answered: progress, for the stall guard

    def RegisterResource(self, request: Any) -> Any:
        # Replaces MockMonitor.RegisterResource: same contract, but the request is decoded once and
        # the answer encoded synchronously (the SDK's async round trip dominated 1000-service runs).
        self.calls += 1
        urn = self.make_urn(request.parent, request.type, request.name)
        if request.type == "pulumi:pulumi:Stack":
            return resource_pb2.RegisterResourceResponse(urn=urn)
        inputs = json_format.MessageToDict(request.object)
        label = f"{request.type} {request.name!r}"
        if request.custom:
            self.strict.violations.extend(f"{label}: {p}" for p in check_inputs(request.type, inputs))
        self.strict.violations.extend(f"{label}: {p}" for p in find_unresolved(inputs))
        registration = Registration(
            urn=urn, type=request.type, name=request.name, custom=request.custom, parent=request.parent,
            provider=request.provider.rsplit("::", 1)[0] if request.provider else "",
            dependencies=sorted(set(request.dependencies)),
            property_dependencies={k: sorted(v.urns) for k, v in sorted(request.propertyDependencies.items())},
            protect=bool(request.protect), retain_on_delete=bool(request.retainOnDelete),
            delete_before_replace=bool(request.deleteBeforeReplace),
            delete_before_replace_defined=bool(request.deleteBeforeReplaceDefined),
            custom_timeouts={k: v for k, v in (("create", request.customTimeouts.create),
                                               ("update", request.customTimeouts.update),
                                               ("delete", request.customTimeouts.delete)) if v},
            replace_on_changes=sorted(request.replaceOnChanges), ignore_changes=sorted(request.ignoreChanges),
            inputs=inputs, secret_outputs=sorted(request.additionalSecretOutputs))
        self._record(self.registrations, registration, label)
        args = mocks.MockResourceArgs(typ=request.type, name=request.name, inputs=inputs, provider=request.provider,
                                      resource_id=request.importId, custom=request.custom or False)
        resource_id, answer = self._answer(urn, args, request.additionalSecretOutputs)
        return resource_pb2.RegisterResourceResponse(urn=urn, id=resource_id, object=answer)

    def ReadResource(self, request: Any) -> Any:
        # MockMonitor.ReadResource answers a read but records nothing and checks nothing.
        self.calls += 1
        urn = self.make_urn(request.parent, request.type, request.name)
        state = json_format.MessageToDict(request.properties)
        label = f"{request.type} {request.name!r} (read)"
        if not request.id or UNRESOLVED in request.id:
            self.strict.violations.append(f"{label}: id: {request.id or 'empty'}: a read needs the id of an existing resource")
        self.strict.violations.extend(f"{label}: {p}" for p in check_inputs(request.type, state, read=True))
        self.strict.violations.extend(f"{label}: {p}" for p in find_unresolved(state))
        registration = Registration(
            urn=urn, type=request.type, name=request.name, custom=True, parent=request.parent,
            provider=request.provider.rsplit("::", 1)[0] if request.provider else "",
            dependencies=sorted(set(request.dependencies)), property_dependencies={}, protect=False,
            retain_on_delete=False, delete_before_replace=False, replace_on_changes=[], ignore_changes=[],
            inputs=state, secret_outputs=sorted(request.additionalSecretOutputs), read_id=request.id)
        self._record(self.reads, registration, label)
        args = mocks.MockResourceArgs(typ=request.type, name=request.name, inputs=state, provider=request.provider,
                                      resource_id=request.id, custom=True)
        resource_id, answer = self._answer(urn, args, request.additionalSecretOutputs)
        return resource_pb2.ReadResourceResponse(urn=urn, id=resource_id, properties=answer)

    def _record(self, into: dict[str, Registration], registration: Registration, label: str) -> None:
        if OUTPUT_STR in registration.name:
            self.strict.violations.append(f"{registration.type} (name {registration.name.splitlines()[0]!r}...): "
                                          "its name was built from an Output formatted into a string")
        with self._lock:
            if registration.urn in self.registrations or registration.urn in self.reads:
                # The engine's diagnostic 2001 (pkg/resource/deploy): plain mocks keep the last one silently.
                self.strict.violations.append(
                    f"{label}: Duplicate resource URN '{registration.urn}'; try giving it a unique name")
                return
            into[registration.urn] = registration

    def _answer(self, urn: str, args: mocks.MockResourceArgs, secret_outputs: Any) -> tuple[str, struct_pb2.Struct]:
        resource_id, state = self.strict.new_resource(args)
        # As the engine does after each step (pkg/resource/deploy/step_executor.go): every output
        # named in additionalSecretOutputs is made secret; `id` never is. Inputs echoed back keep
        # their wrappers, so an output whose input was secret stays secret too.
        for name in secret_outputs:
            if name != "id" and name in state and not is_secret(state[name]):
                if name not in args.inputs:  # generated by the provider: a value synth must never show
                    self.strict.secret_values.update(_strings(state[name]))
                state[name] = secret(state[name])
        answer = struct_pb2.Struct()
        answer.update(state)
        self.resources[urn] = mocks.MockMonitor.ResourceRegistration(urn, resource_id, state)
        return resource_id, answer

    def Invoke(self, request: Any) -> Any:
        self.calls += 1
        args = json_format.MessageToDict(request.args)
        # The SDK unwraps secret arguments before it sends them (pulumi/runtime/invoke.py); record
        # them as they were, so synth redacts them.
        args = self.secret_invoke_args.get(json.dumps(args, sort_keys=True), args)
        if request.tok != "pulumi:pulumi:getResource":
            self.strict.invokes.append(Invocation(request.tok, args))
            self.strict.violations.extend(f"invoke {request.tok}: {p}" for p in find_unresolved(args))
        return super().Invoke(request)

    def RegisterResourceOutputs(self, request: Any) -> Any:
        self.calls += 1
        outputs = rpc.deserialize_properties(request.outputs, keep_unknowns=True)
        if request.urn in self.registrations:
            self.registrations[request.urn].outputs = outputs
        elif "pulumi:pulumi:Stack" in request.urn:
            self.stack_outputs = outputs
            self.strict.violations.extend(f"stack output {p}" for p in find_unresolved(
                json_format.MessageToDict(request.outputs)))
        return super().RegisterResourceOutputs(request)


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return []


def _leaves(documents: dict[str, str]) -> list[str]:
    values: list[str] = []
    for text in documents.values():
        try:
            doc = json.loads(text)
        except json.JSONDecodeError:
            values.append(text)
            continue
        values.extend(str(v) for v in (doc.values() if isinstance(doc, dict) else [doc]))
    return values
