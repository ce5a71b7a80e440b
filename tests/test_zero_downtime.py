"""Zero downtime, proven: a service swap under load through the real gateway (tests/swap_harness.py).

The swap is the program's, Pulumi's and Docker's sequence on an image change of chat-service in the
`local` stack: new container started -> healthy -> nginx.conf re-rendered with the new container's
name -> `nginx -t` and `nginx -s reload` -> the old container gets SIGTERM at once, drains and exits.
The load: keepalive GET and POST clients, each at 80% of its per-client limit, and SSE clients holding
streams open. Counts are in each assertion's message and in the "request counts" section of the
test output.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from typing import Any

import pytest

from tests.conftest import COUNTS, require_root, require_tool
from tests.swap_harness import SERVICE, Gateway, Load, gateway

WORKER = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0) % 20


@pytest.fixture
def swap_gateway() -> Callable[..., Any]:
    for tool in ("nginx", "node", "openssl", "unshare"):
        require_tool(tool)
    require_root("the zero-downtime tests need root (a private mount namespace, DNS on port 53)")

    def make(block: int, **kwargs: Any) -> Any:
        return gateway(block=WORKER * 10 + block, **kwargs)
    return make


def _report(record_property: Callable[[str, object], None], counts: dict[str, Any]) -> str:
    text = json.dumps(counts, sort_keys=True)
    record_property(COUNTS, text)
    return text


def run_swap(gw: Gateway, *, healthy: bool = True, deploy_timeout: float | None = None) -> tuple[Load, dict[str, Any]]:
    old = gw.containers[0]
    with Load(gw) as load:
        time.sleep(2.0)
        steps = gw.swap(old, "v2", healthy=healthy, deploy_timeout=deploy_timeout)
        time.sleep(1.5)
    return load, steps


def test_an_image_change_under_load_fails_no_request(swap_gateway: Callable[..., Any],
                                                      record_property: Callable[[str, object], None]) -> None:
    with swap_gateway(0) as gw:
        old = gw.containers[0]
        grace = gw.env.services[SERVICE].stop_grace_seconds
        load, steps = run_swap(gw)
        r = load.result
        # The margin of the old container's drain: it kept accepting for the drain delay after SIGTERM;
        # the last request it answered was sent this long before it stopped accepting.
        margin = (old.sigterm_at or 0) + gw.drain_delay_ms / 1000 - r.last_answer_sent.get("v1", 0)
        counts = {**r.counts(), "steps": {k: round(v, 3) if isinstance(v, float) else v for k, v in steps.items()},
                  "drain_margin_s": round(margin, 3), "resent_read_by_nginx": r.resent_ids_logged_by_nginx}
        text = _report(record_property, counts)
    assert steps["healthy"], text
    assert r.failed == 0 and r.served > 300, text
    assert r.answered_by.get("v1", 0) > 50 and r.answered_by.get("v2", 0) > 50, text  # a real swap under load
    assert r.sse_events > 50 and r.sse_clean_ends >= 4, text  # every open stream moved to the new container
    # A resend is only ever of a request nginx never read (its id is not in the access log).
    assert r.resent_ids_logged_by_nginx == 0, text
    # The old container drained within its stop grace, never killed; and the nginx worker the reload
    # retired, which held the old SSE streams, exited once they ended: well within that grace, with no
    # worker_shutdown_timeout.
    assert not steps["old_killed"] and steps["old_drain_s"] < grace, text
    assert 0 <= steps["old_nginx_workers_gone_s"] < grace, text
    assert margin > 1.0, text


def test_a_new_version_that_never_turns_healthy_leaves_the_old_one_serving(
        swap_gateway: Callable[..., Any], record_property: Callable[[str, object], None]) -> None:
    with swap_gateway(1) as gw:
        before = (gw.root / "nginx.conf").read_text()
        load, steps = run_swap(gw, healthy=False, deploy_timeout=3)
        r = load.result
        text = _report(record_property, {**r.counts(), "steps": steps, "reloads": gw.reloads})
        after = (gw.root / "nginx.conf").read_text()
    assert steps["healthy"] is False, text
    assert gw.reloads == 0 and after == before, text  # `up` failed: nothing after the wait ran
    assert r.failed == 0 and r.served > 200, text
    assert set(r.answered_by) == {"v1"}, text  # the old one served throughout
    assert r.sse_clean_ends == 0 and r.sse_events > 50, text  # its streams were never interrupted


def test_without_the_drain_delay_the_same_swap_drops_requests(
        swap_gateway: Callable[..., Any], record_property: Callable[[str, object], None]) -> None:
    """The control: a service that stops accepting at SIGTERM (the stub before the drain contract)
    loses requests in the same swap: nginx's workers retired by the reload, and the reload itself,
    still send to the old container for a few milliseconds after `nginx -s reload` returns."""
    with swap_gateway(2, drain_delay_ms=0) as gw:
        load, steps = run_swap(gw)
        text = _report(record_property, {**load.result.counts(), "steps": steps})
    assert steps["healthy"], text
    assert load.result.failed > 0, text


def test_a_retired_nginx_worker_keeps_its_sse_streams_until_the_old_container_ends_them(
        swap_gateway: Callable[..., Any], record_property: Callable[[str, object], None]) -> None:
    """What an old worker does with an open SSE stream: a reload retires it, and it keeps proxying the
    stream (nginx sets no worker_shutdown_timeout here, so no stream is cut by a reload). In a swap the
    old container ends its streams on SIGTERM (the drain contract), the clients reconnect to the new
    one, and the retired workers exit."""
    with swap_gateway(3) as gw:
        with Load(gw, getters=1, posters=1, streams=4) as load:
            time.sleep(1.0)
            gw.reload()  # a configuration change without a swap (a new route, a certificate)
            time.sleep(1.0)
            retired = gw.old_workers()
            events_before = load.result.sse_events
            time.sleep(1.0)
            events_on_old_streams = load.result.sse_events - events_before
            streams_before_swap = (load.result.sse_streams, load.result.sse_clean_ends)
            steps = gw.swap(gw.containers[0], "v2")
            time.sleep(1.0)
            left = gw.old_workers()
        r = load.result
        text = _report(record_property, {**r.counts(), "retired_workers_holding_streams": retired,
                                         "events_on_old_streams_after_reload": events_on_old_streams,
                                         "retired_workers_after_swap": left, "steps": steps,
                                         "streams_opened_and_ended_before_swap": streams_before_swap})
    # The same four streams, never ended by the reload, went on receiving events through a retired worker.
    assert retired >= 1 and streams_before_swap == (4, 0) and events_on_old_streams > 20, text
    assert left == 0 and r.sse_broken == [] and r.failed == 0 and r.sse_clean_ends >= 4, text
