"""`python -m ops policy STACK`: the policy pack's validators over the strict-mock recording.

The very `pulumi_policy` objects the pack registers (`policy.rules.policies()`) are called with
what the engine would send them: for each custom resource a `ResourceValidationArgs` whose props
are the recorded wire inputs (camelCase) decoded as the pack decodes them (`engine_properties`:
secrets unwrapped, a secret string a `SecretStr`) inside pulumi-policy's unknown-checking proxy,
and the resource options; then one `StackValidationArgs` with every resource, its dependencies and
property dependencies. Stack policies see inputs here where the engine passes outputs after the
update: the program emits every input in its read-back form (components/canonical.py), so the
properties the rules read are the same.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from pulumi_policy import (
    EnforcementLevel,
    PolicyCustomTimeouts,
    PolicyResource,
    PolicyResourceOptions,
    ResourceValidationArgs,
    ResourceValidationPolicy,
    StackValidationArgs,
    StackValidationPolicy,
)
from pulumi_policy.proxy import unknown_checking_proxy

from ops.mocks import Registration
from policy import rules


@dataclass(frozen=True)
class Violation:
    urn: str
    rule: str
    level: EnforcementLevel
    message: str

    @property
    def mandatory(self) -> bool:
        return self.level == EnforcementLevel.MANDATORY

    def render(self) -> str:
        problem, _, fix = self.message.partition(". Fix: ")
        return f"{self.level.value.upper()} {self.rule}: {self.urn}\n  {problem}\n  fix: {fix}"


def _options(reg: Registration) -> PolicyResourceOptions:
    return PolicyResourceOptions(
        protect=reg.protect, ignore_changes=list(reg.ignore_changes),
        delete_before_replace=reg.delete_before_replace if reg.delete_before_replace_defined else None,
        aliases=[], custom_timeouts=PolicyCustomTimeouts(0, 0, 0), additional_secret_outputs=list(reg.secret_outputs),
        parent=reg.parent or None)


def _props(reg: Registration) -> dict:
    return unknown_checking_proxy(rules.engine_properties(reg.inputs))


def evaluate(registrations: Iterable[Registration]) -> list[Violation]:
    """Every violation of every policy of the pack, in the pack's order, then by URN."""
    regs = sorted(registrations, key=lambda r: r.urn)
    found: list[Violation] = []
    stack_resources: list[PolicyResource] | None = None
    for policy in rules.policies():
        level = policy.enforcement_level or EnforcementLevel.MANDATORY

        if isinstance(policy, ResourceValidationPolicy):
            for reg in regs:
                if not reg.custom:
                    continue  # component resources have no provider inputs to judge
                args = ResourceValidationArgs(reg.type, _props(reg), reg.urn, reg.name, _options(reg), None)
                # As in Analyze: a resource policy's violation is always the validated resource's.
                policy.validate(args, _reporter(found, policy.name, level, reg.urn))
        elif isinstance(policy, StackValidationPolicy):
            if stack_resources is None:
                stack_resources = _stack(regs)
            policy.validate(StackValidationArgs(stack_resources), _reporter(found, policy.name, level, None))
    return found


def _reporter(found: list[Violation], rule: str, level: EnforcementLevel, urn: str | None) -> Callable[[str, str | None], None]:
    def report(message: str, reported: str | None = None) -> None:
        found.append(Violation(urn or reported or "", rule, level, message))
    return report


def _stack(regs: list[Registration]) -> list[PolicyResource]:
    """As pulumi-policy's AnalyzeStack builds them: parents and dependencies as resource objects."""
    by_urn = {reg.urn: PolicyResource(reg.type, _props(reg), reg.urn, reg.name, _options(reg), None, None, [], {})
              for reg in regs}
    for reg in regs:
        resource = by_urn[reg.urn]
        resource.parent = by_urn.get(reg.parent)
        resource.dependencies = [by_urn[d] for d in reg.dependencies if d in by_urn]
        resource.property_dependencies = {k: [by_urn[d] for d in v if d in by_urn]
                                          for k, v in reg.property_dependencies.items()}
    return list(by_urn.values())


def rules_applied() -> list[str]:
    """The names of the policies `evaluate` runs (the pack's `__main__.py` must register the same)."""
    return [p.name for p in rules.policies()]
