"""The gateway under load on loopback: `python -m bench.gateway [--stack local] [--json]` (root, wrk).

Starts the stack's rendered nginx.conf in real nginx with the stub upstreams of
tests/test_gateway_live.py (same harness: private /etc/hosts in a mount namespace, 127.0.0.0/8
only, everything stopped at the end) and reports, in one run:

- `rps_gateway`, `rps_direct`, `rps_ratio`, `p99_ms_gateway`, `p99_ms_direct`: wrk on the same stub
  upstream through the gateway (HTTPS, upstream keepalive) and directly (HTTP), alternated over
  `--runs` rounds (medians; each round's ratio in `rps_ratios`). The route is the Stripe
  webhook's, the one without a per-client limit, so the limit does not cap the figure. Two
  choices keep the comparison fair on a 2-core machine where wrk, nginx and the stub share the
  cores: the direct requests carry the headers the gateway adds upstream (`X-Real-IP`,
  `X-Forwarded-For`, `X-Forwarded-Proto`, `X-Request-ID`), because the stub parses and echoes every
  header, so without them it does a third less work per direct request and the ratio measures the
  stub, not the gateway (`rps_direct_bare`, `rps_ratio_bare`: the direct run without them, reported
  too); and wrk runs one thread (`-t 1 -c 16`, both runs alike), which drives either target
  without taking a core from nginx and the stub;
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
import statistics
import subprocess
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from tests.test_gateway_live import SSE_PATH, start, stop

ROUTE = "/api/billing/webhooks/stripe"


# What nginx sends upstream besides Host (render/nginx.py _proxy): the direct run sends the same.
UPSTREAM_HEADERS = ("X-Real-IP: 127.0.0.1", "X-Forwarded-For: 127.0.0.1", "X-Forwarded-Proto: https",
                    "X-Request-ID: 5f0c6b1e8f7a4d2c9b3a1e0d7c6b5a49")


def wrk(url: str, seconds: int, connections: int = 16, threads: int = 1,
        headers: tuple[str, ...] = ()) -> dict[str, Any]:
    argv = ["wrk", "-t", str(threads), "-c", str(connections), "-d", f"{seconds}s", "--latency"]
    for header in headers:
        argv += ["-H", header]
    out = subprocess.run([*argv, url], capture_output=True, text=True, timeout=seconds + 30, check=True).stdout
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


def run(stack: str, seconds: int, runs: int = 5) -> dict[str, Any]:
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
        rounds: list[tuple[dict[str, Any], dict[str, Any], dict[str, Any]]] = []
        for _ in range(runs):  # alternated, so each pair shares the machine's load of the moment
            rounds.append((wrk(through, seconds), wrk(direct, seconds, headers=UPSTREAM_HEADERS), wrk(direct, seconds)))
        ratios = [round(via["rps"] / straight["rps"], 3) for via, straight, _ in rounds]
        bare = [round(via["rps"] / plain["rps"], 3) for via, _, plain in rounds]

        def median(values: list[float]) -> float:
            return round(statistics.median(values), 3)

        result: dict[str, Any] = {
            "stack": stack, "seconds": seconds, "runs": runs,
            "rps_gateway": median([r[0]["rps"] for r in rounds]), "rps_direct": median([r[1]["rps"] for r in rounds]),
            "rps_ratio": median(ratios), "rps_ratios": ratios,
            "rps_direct_bare": median([r[2]["rps"] for r in rounds]), "rps_ratio_bare": median(bare),
            "p99_ms_gateway": median([r[0]["p99_ms"] for r in rounds]),
            "p99_ms_direct": median([r[1]["p99_ms"] for r in rounds]),
            "failed_under_load": sum(x["failed"] + x["read_errors"] for r in rounds for x in r)}
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
    parser.add_argument("--runs", type=int, default=5, help="rounds of gateway vs direct (medians)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    result = run(args.stack, args.seconds, args.runs)
    if args.json:
        print(json.dumps(result, indent=2, sort_keys=True))
    else:
        for key, value in result.items():
            print(f"{key}: {value}")


if __name__ == "__main__":
    main()
