"""A service swap under load through the real gateway: `python -m bench.swap [--seconds N] [--runs R] [--json]`.

Root, nginx and node (scripts/bootstrap.sh --test-tools). The harness of tests/test_zero_downtime.py
(tests/swap_harness.py): the `local` stack's rendered nginx.conf in real nginx on loopback, a dnslib
server for Docker's DNS, chat-service's containers as the Node stub that drains on SIGTERM; the
swap performed in the engine's order (new container healthy -> re-render -> `nginx -t` + reload ->
old container SIGTERM, drain, exit), under keepalive GET and POST clients at 80% of their per-client
limit and open SSE streams. Each run loads for `--seconds` (default 12), the swap starting at the
middle. Prints, per run and as medians over the runs:

- `served`, `failed` (target 0): answered requests, and requests that got no answer or a non-200
  one plus SSE streams that broke (not ended cleanly);
- `p99_ms_steady`: p99 latency of the GETs and POSTs sent before the swap started (after a first
  second of warm-up: TLS handshakes);
- `p99_ms_swap` (target <= 1.5x steady): the same for those sent from the swap's start until one
  second after the old container exited;
- `p99_ms_swap_without_resent`: the same without the resent requests (below);
- `resent_idle_keepalive`: requests written on an idle keepalive connection that a retiring nginx
  worker closed, resent by the client on a new one (never read by nginx: checked in the tests);
- `sse_streams`, `sse_events`, `sse_clean_ends`, `old_drain_s`, `swap_s`.

`--engine` (root, dockerd): the same swap on the real engine through the gateway container, as
tests/engine/test_swap_engine.py performs it (Replay.swap_routed: release command, new container
healthy by Docker's healthcheck, seed re-rendered and replaced, the recorded reload, old container
stopped and removed), under that test's lighter load (nginx sees every client from one address
through docker-proxy). `swap_s` then includes the release command and the wait for the first health
check (every 10 s).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
from collections.abc import Iterator
from typing import Any

from tests.swap_harness import SERVICE, Load, Result, gateway, p99


def one_run(seconds: float) -> dict[str, Any]:
    with gateway(block=90) as gw:
        old = gw.containers[0]
        with Load(gw) as load:
            load_start = time.monotonic()
            time.sleep(seconds / 2)
            swap_start = time.monotonic()
            steps = gw.swap(old, "v2")
            swap_end = swap_start + float(steps["old_exited_at"]) + 1.0
            time.sleep(max(0.0, swap_start + seconds / 2 - time.monotonic(), swap_end - time.monotonic()))
    return summary(load.result, load_start, swap_start, swap_end, old_drain_s=float(steps["old_drain_s"]),
                   swap_s=float(steps["old_exited_at"]))


def summary(r: Result, load_start: float, swap_start: float, swap_end: float, *, old_drain_s: float,
            swap_s: float) -> dict[str, Any]:
    ok = [(start, ms) for start, ms, _, outcome in r.requests if outcome == "ok"]
    # The first second is warm-up (each client's TLS handshake, nginx's and node's first requests).
    steady = [ms for start, ms in ok if load_start + 1.0 <= start < swap_start]
    during = [ms for start, ms in ok if swap_start <= start <= swap_end]
    # The same without the resent requests (each paid a new connection and a full TLS handshake).
    during_first = [ms for start, ms in ok if swap_start <= start <= swap_end and start not in r.resent_starts]
    return {
        "served": r.served, "failed": r.failed,
        "p99_ms_steady": round(p99(steady), 2), "p99_ms_swap": round(p99(during), 2),
        "p99_ms_swap_without_resent": round(p99(during_first), 2),
        "requests_steady": len(steady), "requests_swap": len(during),
        "resent_idle_keepalive": r.resent_idle_keepalive, "sse_streams": r.sse_streams,
        "sse_events": r.sse_events, "sse_clean_ends": r.sse_clean_ends,
        "old_drain_s": round(old_drain_s, 3), "swap_s": round(swap_s, 3),
        "answered_by": r.answered_by,
    }


@contextlib.contextmanager
def engine_stack() -> Iterator[tuple[Any, dict[str, str]]]:
    """`--engine`: the `local` stack replayed on a private dockerd with the gateway container published on
    127.0.0.1, as tests/engine/test_swap_engine.py does (its fixtures, without pytest)."""
    from ops.runner import run_stack
    from tests.engine.daemon import CACHE_DIR, clean, private_engine
    from tests.engine.images import build_all
    from tests.engine.replay import Replay
    from tests.engine.test_swap_engine import derive
    from tests.swap_harness import free_port

    with private_engine() as engine:
        with contextlib.redirect_stdout(sys.stderr):  # build_all's progress lines: stdout stays JSON
            images = build_all(engine.client, CACHE_DIR)
        versions = {v: derive(engine.client, images["stub"], {"STUB_VERSION": v}) for v in ("v1", "v2")}
        clean(engine.client)
        publish = {80: ("127.0.0.1", free_port()), 443: ("127.0.0.1", free_port())}
        replay = Replay(engine.client, run_stack("local"), {**images, "stub": versions["v1"]}, publish=publish,
                        docker_host=engine.socket)
        try:
            replay.up()
            yield replay, versions
        finally:
            clean(engine.client)


def engine_run(replay: Any, image: str, seconds: float) -> dict[str, Any]:
    """One image change of chat-service through the gateway container (Replay.swap_routed) under the
    load the engine test uses: every client reaches nginx through docker-proxy from one address, so the
    request clients share 80% of one client's limit."""
    from tests.engine.test_swap_engine import EngineFront

    old = replay.containers[SERVICE]
    with Load(EngineFront(replay), getters=4, posters=4, streams=4, one_address=True) as load:
        load_start = time.monotonic()
        time.sleep(seconds / 2)
        swap_start, wall = time.monotonic(), time.time()
        steps = replay.swap_routed(SERVICE, image=image)
        swap_end = swap_start + steps["old_removed"] + 1.0
        time.sleep(max(0.0, swap_start + seconds / 2 - time.monotonic(), swap_end - time.monotonic()))
    at = {(e, n): t for t, e, n in replay.events if t >= wall}
    drain = at[("removed", old.name)] - at[("stopping", old.name)]
    return {**summary(load.result, load_start, swap_start, swap_end, old_drain_s=drain, swap_s=steps["old_removed"]),
            "steps": {k: round(v, 2) for k, v in steps.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=12.0, help="load per run; the swap starts at the middle")
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--engine", action="store_true",
                        help="through the gateway container on a private Docker engine (tests/engine/test_swap_engine.py)")
    args = parser.parse_args()
    if args.engine:
        with engine_stack() as (replay, versions):
            # Each run swaps to the other version: v1 -> v2 -> v1 ...
            runs = [engine_run(replay, versions["v2" if i % 2 == 0 else "v1"], args.seconds) for i in range(args.runs)]
    else:
        runs = [one_run(args.seconds) for _ in range(args.runs)]
    keys = ("served", "failed", "p99_ms_steady", "p99_ms_swap", "p99_ms_swap_without_resent", "resent_idle_keepalive",
            "old_drain_s", "swap_s")
    medians = {k: statistics.median(float(r[k]) for r in runs) for k in keys}
    ratios = [r["p99_ms_swap"] / r["p99_ms_steady"] for r in runs if r["p99_ms_steady"]]
    result = {**medians, "p99_ratio": round(medians["p99_ms_swap"] / medians["p99_ms_steady"], 2)
              if medians["p99_ms_steady"] else None,
              "p99_ratio_median_of_runs": round(statistics.median(ratios), 2) if ratios else None, "runs": runs}
    if args.json:
        print(json.dumps(result, indent=2))
        return
    for i, r in enumerate(runs, 1):
        print(f"run {i}: served {r['served']}, failed {r['failed']}, p99 steady {r['p99_ms_steady']} ms, "
              f"p99 swap {r['p99_ms_swap']} ms, old drained in {r['old_drain_s']} s")
    print(f"median: served {medians['served']:.0f}, failed {medians['failed']:.0f}, p99 steady "
          f"{medians['p99_ms_steady']} ms, p99 swap {medians['p99_ms_swap']} ms (ratio {result['p99_ratio']})")


if __name__ == "__main__":
    main()
