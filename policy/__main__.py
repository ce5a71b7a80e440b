"""The policy pack's entry point: what `pulumi preview --policy-pack policy` runs.

Constructing `PolicyPack` starts the analyzer's gRPC server and never returns, so it happens here
only; the rules are in `policy/rules.py`, which `python -m ops policy` runs without the CLI.
"""

import sys
from pathlib import Path

# The engine starts the pack in this directory; the rules import the project's modules (config/).
ROOT = str(Path(__file__).resolve().parent.parent)
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from pulumi_policy import EnforcementLevel, PolicyPack  # noqa: E402

from policy import rules  # noqa: E402

rules.preserve_secretness()

PolicyPack(
    name=rules.PACK,
    enforcement_level=EnforcementLevel.MANDATORY,
    policies=rules.policies(),
)
