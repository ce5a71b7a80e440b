"""Depth of the resource graph: how many sequential creation waves a fresh `up` needs.

A resource can be created once everything it depends on (explicit dependencies, its parent's
creation is not a dependency, and its provider) exists. Wave 1 holds resources with no custom
dependency; the number of waves is the deploy's critical path in steps.

    python -m bench.waves prod
"""

from __future__ import annotations

import sys
from functools import cache

from ops.runner import Recording, run_stack


def waves(rec: Recording) -> list[list[str]]:
    resources = {u: r for u, r in rec.resources.items() if r.custom}

    @cache
    def depth(urn: str) -> int:
        reg = resources[urn]
        deps = [d for d in [*reg.dependencies, reg.provider] if d in resources]
        return 1 + max((depth(d) for d in deps), default=0)

    out: list[list[str]] = []
    for urn in sorted(resources):
        d = depth(urn)
        while len(out) < d:
            out.append([])
        out[d - 1].append(f"{resources[urn].type.split(':')[-1]} {resources[urn].name}")
    return out


def main() -> None:
    stack = sys.argv[1] if len(sys.argv) > 1 else "prod"
    result = waves(run_stack(stack))
    for i, wave in enumerate(result, 1):
        print(f"wave {i}: {len(wave)} resources: {', '.join(wave)}")
    print(f"{stack}: {len(result)} waves")


if __name__ == "__main__":
    main()
