"""The deploy driver's own overhead around an engine run: `python -m bench.deploy_overhead [--runs N] [--json]`.

`ops.deploy.up("prod", image_tag=...)` through the real Automation API against the fake `pulumi` of
the tests (tests/fake_pulumi: it answers each CLI call the SDK makes, streams the engine events of a
succeeded update over gRPC as the CLI does, keeps config and history), with verification against a
local endpoint that answers 200 at once. A timing shim on PATH in front of the fake records each
CLI invocation's wall time, so the figures split into:

- `total_s`: the whole `up` (validate, open the stack, read the history, set the tag, run the update,
  verify every routed service and the gateway);
- `cli_s`: the time inside `pulumi` processes (here the fake: its Python start-up and its work; with
  the real CLI, the engine's own run would be there instead), and `cli_calls`, how many;
- `overhead_s` = total - cli: the driver itself (config validation, the SDK's event stream, the
  verification requests, the timing shim's two `date` calls per invocation);
- `validate_s`: the config validation alone (the driver's "validate" phase), timed apart.

Medians over the runs, each a fresh state (one earlier release in the history).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from ops import deploy

ROOT = Path(__file__).resolve().parent.parent
FAKE = ROOT / "tests" / "fake_pulumi"
SHIM = """#!/bin/sh
start=$(date +%s%N)
"{fake}/pulumi" "$@"
code=$?
echo "$start $(date +%s%N) $*" >> "$FAKE_PULUMI_DIR/timing"
exit $code
"""


@contextmanager
def endpoint() -> Iterator[str]:
    class Healthy(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Healthy)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()


def one_run(url: str, n: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="deploy-bench-") as tmp:
        home = Path(tmp)
        shim_dir = home / "bin"
        shim_dir.mkdir()
        (shim_dir / "pulumi").write_text(SHIM.format(fake=FAKE))
        (shim_dir / "pulumi").chmod(0o755)
        history = [{"kind": "update", "startTime": "2026-11-20T10:00:00.000Z", "endTime": "2026-11-20T10:05:00.000Z",
                    "message": "release 2026.11.20-0000001", "environment": {"git.head": "abc1234def"},
                    "result": "succeeded", "version": 1,
                    "config": {deploy.IMAGE_TAG_KEY: {"value": "2026.11.20-0000001", "secret": False}}}]
        (home / "state.json").write_text(json.dumps({"config": {}, "history": history}))
        saved = {k: os.environ.get(k) for k in ("PATH", "FAKE_PULUMI_PYTHON", "FAKE_PULUMI_DIR", "PULUMI_SKIP_UPDATE_CHECK")}
        os.environ.update(PATH=f"{shim_dir}:{os.environ['PATH']}", FAKE_PULUMI_PYTHON=sys.executable,
                          FAKE_PULUMI_DIR=str(home), PULUMI_SKIP_UPDATE_CHECK="true")
        lines: list[str] = []
        try:
            started = time.monotonic()
            code = deploy.up("prod", image_tag=f"2026.11.26-{n:07x}", base_url=url, echo=lines.append, deadline=10)
            total = time.monotonic() - started
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
        calls = [line.split(" ", 2) for line in (home / "timing").read_text().splitlines()]
    if code != deploy.OK:
        raise RuntimeError(f"up failed ({code}): {lines}")
    cli = sum(int(end) - int(start) for start, end, _ in calls) / 1e9
    t = time.monotonic()
    deploy.validate("prod", f"2026.11.26-{n:07x}")
    validate = round(time.monotonic() - t, 4)
    return {"total_s": round(total, 3), "cli_s": round(cli, 3), "overhead_s": round(total - cli, 3),
            "cli_calls": len(calls), "validate_s": validate,
            "commands": [" ".join([w for w in c[2].split(" ") if not w.startswith("-")][:2]) for c in calls]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with endpoint() as url:
        runs = [one_run(url, n) for n in range(args.runs)]
    medians = {k: round(statistics.median(r[k] for r in runs), 3) for k in ("total_s", "cli_s", "overhead_s", "validate_s")}
    result = {**medians, "cli_calls": runs[0]["cli_calls"], "commands": runs[0]["commands"],
              "runs": [{k: v for k, v in r.items() if k != "commands"} for r in runs]}
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"up prod, median of {args.runs}: {medians['total_s']} s in all, {medians['cli_s']} s in "
              f"{result['cli_calls']} pulumi calls ({', '.join(result['commands'])}), driver overhead "
              f"{medians['overhead_s']} s (of it config validation {medians['validate_s']} s)")


if __name__ == "__main__":
    main()
