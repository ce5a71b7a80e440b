"""The gateway under load on loopback: `python -m bench.gateway [--stack local] [--json]` (root, wrk).

Starts the stack's rendered nginx.conf in real nginx with the stub upstreams of
tests/test_gateway_live.py (same harness: private /etc/hosts in a mount namespace, 127.0.0.0/8
only, everything stopped at the end) and reports, in one run:

- `rps_gateway`, `rps_direct`, `rps_ratio`, `p99_ms_gateway`, `p99_ms_direct`: wrk on the same stub
  upstream through the gateway (HTTPS, upstream keepalive) and directly (HTTP). The route is the
  Stripe webhook's, the one without a per-client limit, so the limit does not cap the figure;
- `first_sse_ms`: from the stub writing an SSE event to the client reading it through the gateway;
- `failed_across_reload`: requests that failed while three validated reloads ran under load:
  wrk's non-2xx answers and its connect, write and timeout errors;
- `idle_keepalive_closed_across_reload`: wrk's read errors in that run, reported apart. nginx's old
  workers close their *idle* keepalive connections when a reload retires them, and wrk, which
  never retries, counts a request it had just sent on such a connection as a read error. nginx
  never read that request (the access log has no answer for it, and every answer it logs is 200);
  an HTTP client resends it on a new connection (RFC 9112 9.3.1), as browsers do for idempotent
  requests. The live test's clients do, and count nothing lost.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from tests.test_gateway_live import SSE_PATH, start, stop

ROUTE = "/api/billing/webhooks/stripe"


def wrk(url: str, seconds: int, connections: int = 16) -> dict[str, Any]:
    out = subprocess.run(["wrk", "-t", "2", "-c", str(connections), "-d", f"{seconds}s", "--latency", url],
                         capture_output=True, text=True, timeout=seconds + 30, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)\b", out)
    assert p99, out
    p99_ms = float(p99.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[p99.group(2)]
    requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    connect, read, write, timeout = (int(g) for g in errors.groups()) if errors else (0, 0, 0, 0)
    failed = (int(non2xx.group(1)) if non2xx else 0) + connect + write + timeout
    return {"rps": rps, "p99_ms": p99_ms, "requests": requests, "failed": failed, "read_errors": read}


def first_sse_ms(gw: Any) -> float:
    stub = gw.stubs["chat-service"]
    stub.sse_sent.clear()
    stub.sse_release.clear()
    conn = gw.https("127.6.1.1")
    try:
        conn.request("GET", f"/api/chats/1/{SSE_PATH}", headers={"Host": gw.rec.env.domain})
        response = conn.getresponse()
        response.readline()
        received = time.monotonic()
        return round((received - stub.sse_sent[0]) * 1000, 2)
    finally:
        stub.sse_release.set()
        conn.close()


def run(stack: str, seconds: int) -> dict[str, Any]:
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed (apt-get install wrk)")
    root = Path(tempfile.mkdtemp(prefix="bench-gateway-"))
    root.chmod(0o755)
    gw = None
    try:
        gw = start(stack, root)
        through = f"https://127.0.0.1:{gw.layout.https_port}{ROUTE}"
        direct = f"http://{gw.addresses['billing-service']}:{gw.rec.env.services['billing-service'].port}{ROUTE}"
        for url in (through, direct):  # warm up connections and caches
            wrk(url, 1)
        via, straight = wrk(through, seconds), wrk(direct, seconds)
        result: dict[str, Any] = {"stack": stack, "seconds": seconds,
                                  "rps_gateway": via["rps"], "rps_direct": straight["rps"],
                                  "rps_ratio": round(via["rps"] / straight["rps"], 3),
                                  "p99_ms_gateway": via["p99_ms"], "p99_ms_direct": straight["p99_ms"],
                                  "failed_under_load": via["failed"] + straight["failed"]
                                  + via["read_errors"] + straight["read_errors"]}
        result["first_sse_ms"] = first_sse_ms(gw)
        log = gw.prefix / "access.log"
        time.sleep(0.5)  # the previous runs' last lines are written
        logged_before = len(log.read_text().splitlines())
        outcome: dict[str, Any] = {}
        load = threading.Thread(target=lambda: outcome.update(wrk(through, 4)))
        load.start()
        for _ in range(3):
            time.sleep(1.0)
            gw.reload()
        load.join(60)
        result["requests_across_reload"] = outcome["requests"]
        result["failed_across_reload"] = outcome["failed"]
        result["idle_keepalive_closed_across_reload"] = outcome["read_errors"]
        time.sleep(0.5)
        statuses = Counter(json.loads(line)["status"] for line in log.read_text().splitlines()[logged_before:])
        # 499: a request wrk still had in flight when its run ended and it closed the connection.
        result["statuses_logged_across_reload"] = dict(sorted(statuses.items()))
        return result
    finally:
        if gw is not None:
            stop(gw)
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stack", default="local")
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    result = run(args.stack, args.seconds)
    if args.json:
        print(json.dumps(result, indent=2, sort_keys=True))
    else:
        for key, value in result.items():
            print(f"{key}: {value}")


if __name__ == "__main__":
    main()
