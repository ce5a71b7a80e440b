#!/usr/bin/env bash
# Everything CI checks, in the order that fails fastest: lint, types, generated docs, the policy pack
# over every stack, then the tests, with the engine tests (`pytest -m engine`: one private dockerd for
# the whole run, so not split across xdist workers) beside the others.
set -euo pipefail
cd "$(dirname "$0")/.."
venv/bin/ruff check .
venv/bin/mypy .
venv/bin/python -m ops docs --check
# The policy pack's rules over every stack, as `pulumi preview --policy-pack policy` would run them.
venv/bin/python -m ops policy --all
# The engine tests spend most of their time waiting (Docker's health intervals, drains, restarts), so
# they run beside the others rather than after them; their output follows once both are done.
engine_log=$(mktemp)
venv/bin/python -m pytest -q -m engine "$@" >"$engine_log" 2>&1 &
engine=$!
status=0
venv/bin/python -m pytest -n 2 -q -m "not engine" "$@" || status=$?
engine_status=0
wait "$engine" || engine_status=$?
echo "--- engine tests (pytest -m engine) ---"
cat "$engine_log"
rm -f "$engine_log"
[[ $status -eq 0 && $engine_status -eq 0 ]] || exit 1
