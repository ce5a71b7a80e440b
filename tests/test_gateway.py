"""The gateway's nginx.conf, parsed back (crossplane) rather than string-matched, for every stack."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import crossplane
import pytest

from ops.runner import Recording
from render.nginx import Layout, health_routes, render_nginx, verification_paths
from tests.test_graph import plain

CONF_PATH = "/etc/mysaaschat-gateway/nginx.conf"
Node = dict[str, Any]


def recorded_conf(rec: Recording) -> str:
    seed = next(r for r in rec.resources.values() if r.name == "gateway-files")
    return str(plain(next(u["content"] for u in seed.inputs["uploads"] if u["file"] == CONF_PATH)))


def container_names(rec: Recording) -> dict[str, str]:
    services = plain(rec.stack_outputs["services"])
    return {name: str(plain(value)) for name, value in services.items() if rec.env.services[name].routes}


def parse(text: str, tmp_path: Path) -> list[Node]:
    path = tmp_path / "nginx.conf"
    path.write_text(text)
    # Not strict: map entries (default, "") are not directives, and strict mode reports them.
    payload = crossplane.parse(str(path), single=True, strict=False, check_ctx=True, check_args=True, comments=False)
    assert payload["status"] == "ok", payload["errors"]
    return payload["config"][0]["parsed"]  # type: ignore[no-any-return]


def find(block: list[Node], directive: str, *args: str) -> list[Node]:
    return [n for n in block if n["directive"] == directive and list(n["args"][:len(args)]) == list(args)]


def one(block: list[Node], directive: str, *args: str) -> Node:
    found = find(block, directive, *args)
    assert len(found) == 1, (directive, args, found)
    return found[0]


def walk(block: list[Node]) -> list[tuple[Node, list[Node]]]:
    """Every directive with the chain of its enclosing directives."""
    out: list[tuple[Node, list[Node]]] = []

    def visit(nodes: list[Node], parents: list[Node]) -> None:
        for node in nodes:
            out.append((node, parents))
            visit(node.get("block", []), [*parents, node])
    visit(block, [])
    return out


def test_the_recorded_config_is_the_renderer_on_the_current_container_names(rec: Recording) -> None:
    names = container_names(rec)
    # Generated names (name + random suffix), never the alias a not-yet-healthy container shares.
    assert all(names[svc] != svc for svc in names)
    assert recorded_conf(rec) == render_nginx(rec.env, names)


def test_routes_limits_and_headers(rec: Recording, tmp_path: Path) -> None:
    env, names = rec.env, container_names(rec)
    top = parse(recorded_conf(rec), tmp_path)
    http = one(top, "http")["block"]
    # limit_req_zone only at http level, one per configured zone, with its rate.
    for node, parents in walk(top):
        if node["directive"] == "limit_req_zone":
            assert [p["directive"] for p in parents] == ["http"]
    zones = {n["args"][1].split("=")[1].split(":")[0]: n["args"][2] for n in find(http, "limit_req_zone")}
    assert zones == {name: f"rate={z.per_second}r/s" for name, z in env.gateway.rate_limits.items()}
    assert one(http, "limit_req_status")["args"] == ["429"]
    # Upstreams: the current container, on the service's port.
    for svc, container in names.items():
        upstream = one(http, "upstream", svc)["block"]
        assert one(upstream, "server")["args"] == [f"{container}:{env.services[svc].port}"]
    # Only idempotent requests are retried: no `non_idempotent`.
    assert "non_idempotent" not in one(http, "proxy_next_upstream")["args"]
    plain_http, tls, status = [s["block"] for s in find(http, "server")]
    # The third server: stub_status for the monitoring's exporter, on a port the gateway does not publish.
    assert one(status, "listen")["args"] == ["8081"] and one(status, "location", "=", "/stub_status")
    assert one(tls, "ssl_protocols")["args"] == ["TLSv1.2", "TLSv1.3"]
    # Port 80: the ACME path is served, everything else redirects to HTTPS.
    assert one(plain_http, "location", "^~", "/.well-known/acme-challenge/")
    assert one(one(plain_http, "location", "/")["block"], "return")["args"][0] == "301"
    for svc_name, spec in env.services.items():
        for route in spec.routes:
            prefix = route.prefix.rstrip("/")
            locations = [one(tls, "location", "/")] if route.prefix == "/" else \
                [one(tls, "location", "=", prefix), one(tls, "location", f"{prefix}/")]
            for location in locations:
                body = location["block"]
                assert one(body, "proxy_pass")["args"] == [f"http://{svc_name}"]
                headers = {n["args"][0]: n["args"][1] for n in find(body, "add_header")}
                assert headers["Strict-Transport-Security"].startswith("max-age=")
                assert headers["X-Content-Type-Options"] == "nosniff" and headers["X-Frame-Options"] == "DENY"
                assert "Referrer-Policy" in headers
                assert ("Content-Security-Policy" in headers) == (route.prefix == "/")
                sent = {n["args"][0]: n["args"][1] for n in find(body, "proxy_set_header")}
                assert sent["X-Request-ID"] == "$req_id" and sent["X-Real-IP"] == "$remote_addr"
                limits = find(body, "limit_req")
                if route.kind == "webhook":
                    assert not limits
                    assert one(body, "client_max_body_size")["args"] == [f"{env.gateway.webhook_max_body // 2**20}m"]
                else:
                    assert limits[0]["args"][:2] == [f"zone={route.rate_limit}",
                                                     f"burst={env.gateway.rate_limits[route.rate_limit].burst}"]
                if route.kind == "sse":
                    assert one(body, "proxy_buffering")["args"] == ["off"]
                    assert one(body, "proxy_cache")["args"] == ["off"]
                    assert one(body, "proxy_http_version")["args"] == ["1.1"]
                    assert int(one(body, "proxy_read_timeout")["args"][0].rstrip("s")) >= 3600
                    assert headers["X-Accel-Buffering"] == "no"


def test_each_routed_service_has_its_own_health_path(rec: Recording, tmp_path: Path) -> None:
    """`/healthz/<service>` reaches exactly that service's health_path; prefix + health_path would not
    (the frontend's / + /api/health is api-gateway's /api + /health)."""
    env = rec.env
    tls = [s["block"] for s in find(one(parse(recorded_conf(rec), tmp_path), "http")["block"], "server")][1]
    routes = health_routes(env)
    assert set(routes) == {name for name, svc in env.services.items() if svc.routes}
    assert len(set(routes.values())) == len(routes) and all(p.startswith("/healthz/") for p in routes.values())
    for svc, path in routes.items():
        body = one(tls, "location", "=", path)["block"]
        assert one(body, "proxy_pass")["args"] == [f"http://{svc}{env.services[svc].health_path}"]
        assert one(body, "proxy_next_upstream")["args"] == ["off"]
    assert verification_paths(env) == ["/healthz", *routes.values()]
    naive = [svc.routes[0].prefix.rstrip("/") + svc.health_path for svc in env.services.values() if svc.routes]
    assert len(set(naive)) < len(naive)  # the collision this settles is real in the catalog


def test_missing_container_name_is_an_error(rec: Recording) -> None:
    names = container_names(rec)
    names.pop(next(iter(names)))
    with pytest.raises(ValueError, match="no container name"):
        render_nginx(rec.env, names, Layout())


def test_private_keys_never_reach_synth_output() -> None:
    """The gateway's key is secret-derived in every mode (a Secrets Manager value, or
    tls.PrivateKey's provider-secret output), so synth writes `[secret]` for the file and for every
    input that carries it; the certificate is public (self-signed) or secret-derived (Secrets Manager)."""
    root = Path(__file__).resolve().parent / "snapshots"
    for stack in ("prod", "staging", "local"):
        tls = root / stack / "files" / "var/lib/docker/volumes" / f"mysaaschat-{stack}-gateway-config" / "_data" / "tls"
        assert (tls / "key.pem").read_text() == "[secret]", stack
        for path in (root / stack).rglob("*"):
            if path.is_file():
                assert "PRIVATE KEY" not in path.read_text(errors="replace"), path
    staging = (root / "staging" / "files" / "var/lib/docker/volumes/mysaaschat-staging-gateway-config/_data/tls")
    assert (staging / "cert.pem").read_text().startswith("-----BEGIN CERTIFICATE-----")


def test_a_route_change_rewrites_the_files_and_reloads_but_keeps_the_gateway(tmp_path: Path) -> None:
    """Item 2 of the gateway issue, in the recorded graph: a new route changes the seed's files (so
    the seed is replaced and rewrites them) and the reload's trigger (so it runs again), and not one
    input of the gateway container (which holds ports 80/443 and must not be replaced)."""
    import yaml

    from config.load import CATALOG_FILE
    from ops.runner import run_stack
    from tests.conftest import recording

    catalog = yaml.safe_load(CATALOG_FILE.read_text())
    catalog["services"]["analytics-service"]["routes"].append({"prefix": "/api/reports", "kind": "http"})
    path = tmp_path / "catalog.yaml"
    path.write_text(yaml.safe_dump(catalog))
    before, after = recording("staging"), run_stack("staging", catalog=path)

    def by_name(rec: Recording, name: str) -> Any:
        return next(r for r in rec.resources.values() if r.name == name)

    assert by_name(before, "gateway").inputs == by_name(after, "gateway").inputs
    assert by_name(before, "gateway-files").inputs["uploads"] != by_name(after, "gateway-files").inputs["uploads"]
    assert by_name(before, "gateway-reload").inputs["triggers"] != by_name(after, "gateway-reload").inputs["triggers"]
    assert "/api/reports" in recorded_conf(after) and "/api/reports" not in recorded_conf(before)


# The services' drain contract (README, "Releasing"): an idle keepalive connection is kept at least
# this long by a service (Node's default `server.keepAliveTimeout`; tests/engine/images/stub follows it).
SERVICE_IDLE_KEEPALIVE_SECONDS = 5


def test_nginx_drops_an_idle_upstream_connection_before_the_service_does(rec: Recording, tmp_path: Path) -> None:
    """Otherwise nginx may reuse a connection the service is closing: a POST on it is not retried and
    answers 502 (nginx's default upstream keepalive_timeout is 60 s)."""
    http = one(parse(recorded_conf(rec), tmp_path), "http")["block"]
    upstreams = find(http, "upstream")
    assert upstreams and len(upstreams) == len(container_names(rec))
    for upstream in upstreams:
        timeout = one(upstream["block"], "keepalive_timeout")["args"][0]
        assert timeout.endswith("s") and int(timeout[:-1]) < SERVICE_IDLE_KEEPALIVE_SECONDS, upstream
