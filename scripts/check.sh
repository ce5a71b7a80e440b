#!/usr/bin/env bash
# Everything CI checks, in the order that fails fastest: lint, types, generated docs, the policy pack
# over every stack, tests, then the engine tests (`pytest -m engine`: one private dockerd for the
# whole run, so not split across xdist workers).
set -euo pipefail
cd "$(dirname "$0")/.."
venv/bin/ruff check .
venv/bin/mypy .
venv/bin/python -m ops docs --check
# The policy pack's rules over every stack, as `pulumi preview --policy-pack policy` would run them.
venv/bin/python -m ops policy --all
venv/bin/python -m pytest -n 2 -q -m "not engine" "$@"
venv/bin/python -m pytest -q -m engine "$@"
