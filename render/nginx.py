"""The gateway's nginx.conf: a pure function of the model and of the services' current container names.

Built as data (crossplane's payload: directive, args, block) and printed by `crossplane.build`, so
nothing is string-templated and the tests parse the result back (`crossplane.parse`) instead of
matching text. Upstreams name each service's *current container* (its generated name), never the
shared network alias: Docker's embedded DNS answers containers that are not yet healthy
(moby#27279), and the name of a container that Pulumi created with `wait` is one that turned
healthy. nginx resolves these names when it (re)loads its configuration, which the gateway
component triggers after every change (components/gateway.py).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import crossplane

from config import Environment
from config.model import Route
from render.monitoring import GATEWAY_STATUS_PATH, GATEWAY_STATUS_PORT, GRAFANA_PORT, GRAFANA_SUB_PATH, grafana_alias

Directive = dict[str, Any]

CONF_DIR = "/etc/mysaaschat-gateway"  # the config volume, mounted read-only in the gateway


@dataclass(frozen=True)
class Layout:
    """Where nginx finds and writes things; the container's by default, a temporary prefix in the tests."""

    conf_dir: str = CONF_DIR
    temp_dir: str = "/tmp"  # a tmpfs on the read-only root
    http_port: int = 8080  # unprivileged inside; the host publishes 80 -> 8080 and 443 -> 8443
    https_port: int = 8443
    listen_address: str = ""  # "" = every address of the container
    access_log: str = "/dev/stdout"
    error_log: str = "/dev/stderr"
    status_port: int = GATEWAY_STATUS_PORT  # stub_status for the monitoring's nginx exporter; never published
    # `tls.mode: letsencrypt`: the certificate, key and challenge files live in the ACME volume
    # (render/acme.py), not in the config volume; "" = the config volume's.
    acme_dir: str = ""

    @property
    def cert(self) -> str:
        return f"{self.acme_dir}/certs/fullchain.pem" if self.acme_dir else f"{self.conf_dir}/tls/cert.pem"

    @property
    def key(self) -> str:
        return f"{self.acme_dir}/certs/privkey.pem" if self.acme_dir else f"{self.conf_dir}/tls/key.pem"

    @property
    def acme_root(self) -> str:
        """The directory holding `.well-known/acme-challenge/`."""
        return f"{self.acme_dir}/webroot" if self.acme_dir else f"{self.conf_dir}/acme"

    def listen(self, port: int) -> str:
        return f"{self.listen_address}:{port}" if self.listen_address else str(port)


# Every field an operator needs to follow a request: who, which request id, how long the upstream took.
LOG_FIELDS = {
    "time": "$time_iso8601", "remote_addr": "$remote_addr", "request_id": "$req_id", "method": "$request_method",
    "uri": "$uri", "status": "$status", "bytes_sent": "$body_bytes_sent", "request_time": "$request_time",
    "upstream": "$upstream_addr", "upstream_status": "$upstream_status",
    "upstream_connect_time": "$upstream_connect_time", "upstream_header_time": "$upstream_header_time",
    "upstream_response_time": "$upstream_response_time", "user_agent": "$http_user_agent",
}
# The frontend's pages (Next.js): its hydration scripts and styles are inline, hence 'unsafe-inline'
# until the frontend sends nonces; everything else is same-origin, and no one may frame it.
FRONTEND_CSP = ("default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
                "img-src 'self' data: https:; font-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; "
                "base-uri 'self'; form-action 'self'; object-src 'none'")
RATE_LIMITED_BODY = '{"error":"rate_limited","message":"too many requests, retry later"}'
TOO_LARGE_BODY = '{"error":"payload_too_large"}'
# How long nginx keeps an idle connection to a service for reuse: below the services' own idle
# keepalive timeout (the drain contract, README "Releasing": at least 5 s, Node's default
# `server.keepAliveTimeout`), so the service never closes a connection nginx is about to reuse. nginx's
# default (60 s) loses that race: a POST sent on a connection the service has just closed is not
# retried (proxy_next_upstream without non_idempotent) and answers 502.
UPSTREAM_KEEPALIVE_SECONDS = 4


def d(directive: str, *args: object, block: list[Directive] | None = None) -> Directive:
    node: Directive = {"directive": directive, "args": [str(a) for a in args]}
    if block is not None:
        node["block"] = block
    return node


def security_headers(env: Environment, csp: bool) -> list[Directive]:
    # `always`: also on 4xx/5xx answers. nginx drops inherited add_header lines as soon as a block
    # has one of its own, so every location gets the whole set.
    headers = [
        ("Strict-Transport-Security", f"max-age={env.gateway.hsts_max_age_seconds}; includeSubDomains"),
        ("X-Content-Type-Options", "nosniff"),
        ("X-Frame-Options", "DENY"),
        ("Referrer-Policy", "strict-origin-when-cross-origin"),
    ]
    if csp:
        headers.append(("Content-Security-Policy", FRONTEND_CSP))
    return [d("add_header", name, value, "always") for name, value in headers]


def _upstream_headers() -> list[Directive]:
    return [
        d("proxy_http_version", "1.1"),  # keepalive to the upstream, and chunked SSE
        d("proxy_set_header", "Connection", ""),
        d("proxy_set_header", "Host", "$host"),
        # The gateway is the edge: what the client says about itself is not trusted.
        d("proxy_set_header", "X-Real-IP", "$remote_addr"),
        d("proxy_set_header", "X-Forwarded-For", "$remote_addr"),
        d("proxy_set_header", "X-Forwarded-Proto", "https"),
        d("proxy_set_header", "X-Request-ID", "$req_id"),
    ]


def _proxy(service: str) -> list[Directive]:
    return [
        d("proxy_pass", f"http://{service}"),  # no URI part: the path (and a webhook's body) pass unchanged
        *_upstream_headers(),
        d("add_header", "X-Request-ID", "$req_id", "always"),
    ]


GATEWAY_HEALTH = "/healthz"


def health_routes(env: Environment) -> dict[str, str]:
    """Each routed service's public health path, owned by the gateway: `/healthz/<service>`.

    A service's `health_path` under its first route's prefix is no public address: routes overlap
    (the frontend's `/` + `/api/health` and api-gateway's `/api` + `/health` are one path, which
    only one of them answers). `/healthz` is reserved to the gateway (config/rules.py), so these
    paths can never collide with a route, and each reaches exactly its service's `health_path`.
    The renderer and the deploy driver's verification (ops/deploy.py) both read this function."""
    return {name: f"{GATEWAY_HEALTH}/{name}" for name, svc in sorted(env.services.items()) if svc.routes}


def verification_paths(env: Environment) -> list[str]:
    """What a deploy checks through the public endpoint: the gateway itself, then every routed service."""
    return [GATEWAY_HEALTH, *health_routes(env).values()]


def health_block(env: Environment, service: str, path: str) -> Directive:
    # An exact location with a URI in proxy_pass: nginx replaces the whole matched path with the
    # service's health_path (ngx_http_proxy_module, proxy_pass "with a URI").
    return d("location", "=", path, block=[
        d("proxy_pass", f"http://{service}{env.services[service].health_path}"),
        d("proxy_http_version", "1.1"), d("proxy_set_header", "Connection", ""),
        d("proxy_set_header", "Host", "$host"), d("proxy_set_header", "X-Request-ID", "$req_id"),
        d("proxy_next_upstream", "off"),  # a health answer is about this upstream, never another try
        *security_headers(env, csp=False),
    ])


def route_block(env: Environment, service: str, route: Route) -> list[Directive]:
    body = _proxy(service) + security_headers(env, csp=route.prefix == "/")
    if route.kind == "sse":
        body += [
            d("proxy_buffering", "off"), d("proxy_cache", "off"), d("gzip", "off"),
            d("proxy_read_timeout", f"{env.gateway.sse_read_timeout_seconds}s"),
            d("add_header", "X-Accel-Buffering", "no", "always"),
        ]
    if route.kind == "webhook":
        # Exempt from the per-client limit (Stripe retries from few addresses), body passed as
        # received (the signature covers the raw bytes), capped in size.
        body += [d("client_max_body_size", f"{env.gateway.webhook_max_body // 2**20}m"),
                 d("proxy_request_buffering", "on")]
    else:
        limit = env.gateway.rate_limits[route.rate_limit]
        body.append(d("limit_req", f"zone={route.rate_limit}", f"burst={limit.burst}", "nodelay"))
    if route.prefix == "/":
        return [d("location", "/", block=body)]
    prefix = route.prefix.rstrip("/")
    # The prefix itself and everything below it, never a sibling (/api/chatsx).
    return [d("location", "=", prefix, block=body), d("location", f"{prefix}/", block=[dict(x) for x in body])]


def status_server(layout: Layout) -> Directive:
    """nginx's stub_status for nginx-prometheus-exporter (render/monitoring.py), on a port the gateway
    does not publish: only containers on the apps network reach it."""
    return d("server", block=[
        d("listen", layout.listen(layout.status_port)),
        d("access_log", "off"),
        d("location", "=", GATEWAY_STATUS_PATH, block=[d("stub_status")]),
        d("location", "/", block=[d("return", "404")]),
    ])


def grafana_locations(env: Environment) -> list[Directive]:
    """Grafana under /grafana/, behind its own login (render/monitoring.py grafana_env: serve_from_sub_path).

    Resolved by Docker's DNS (127.0.0.11) when a request comes, through a variable: nginx would refuse
    to (re)load a configuration naming a host it cannot resolve, and the gateway must keep serving the
    product when Grafana is absent or being replaced. A variable without a URI part passes the request
    URI unchanged (ngx_http_proxy_module, proxy_pass)."""
    body = [
        d("resolver", "127.0.0.11", "valid=10s", "ipv6=off"),
        d("set", "$grafana", f"http://{grafana_alias()}:{GRAFANA_PORT}"),
        d("proxy_pass", "$grafana"),
        *_upstream_headers(),
        *security_headers(env, csp=False),
    ]
    return [d("location", "^~", f"{GRAFANA_SUB_PATH}/", block=body),
            d("location", "=", GRAFANA_SUB_PATH, block=[d("return", "301", f"{GRAFANA_SUB_PATH}/")])]


def render_nginx(env: Environment, containers: Mapping[str, str], layout: Layout = Layout()) -> str:
    """nginx.conf for the stack; `containers` maps each routed service to its current container name."""
    routed = {name: svc for name, svc in sorted(env.services.items()) if svc.routes}
    missing = sorted(set(routed) - set(containers))
    if missing:
        raise ValueError(f"no container name for {', '.join(missing)}")
    t = layout.temp_dir
    http: list[Directive] = [
        d("default_type", "application/octet-stream"),
        d("server_tokens", "off"),
        d("sendfile", "on"), d("tcp_nopush", "on"), d("keepalive_timeout", "65s"),
        d("client_body_temp_path", f"{t}/client_body"), d("proxy_temp_path", f"{t}/proxy"),
        d("fastcgi_temp_path", f"{t}/fastcgi"), d("uwsgi_temp_path", f"{t}/uwsgi"), d("scgi_temp_path", f"{t}/scgi"),
        d("map", "$http_x_request_id", "$req_id", block=[d("default", "$http_x_request_id"), d("", "$request_id")]),
        d("log_format", "json", "escape=json", json.dumps(LOG_FIELDS, separators=(",", ":"))),
        d("access_log", layout.access_log, "json"),
        d("client_max_body_size", f"{env.gateway.max_body // 2**20}m"),
        # Zones live at http level (the seed declared them in server {}, which nginx refuses).
        *[d("limit_req_zone", "$binary_remote_addr", f"zone={name}:10m", f"rate={limit.per_second}r/s")
          for name, limit in sorted(env.gateway.rate_limits.items())],
        d("limit_req_status", "429"),
        # A dead upstream answers 502 at once (refused) or within the connect timeout.
        d("proxy_connect_timeout", "1s"),
        # Another try only for idempotent methods: without `non_idempotent`, nginx never retries
        # POST, LOCK or PATCH (ngx_http_proxy_module, proxy_next_upstream).
        d("proxy_next_upstream", "error", "timeout", "http_502", "http_503"),
        d("proxy_next_upstream_tries", "2"),
        d("proxy_next_upstream_timeout", "5s"),
    ]
    for name in routed:
        svc = routed[name]
        http.append(d("upstream", name, block=[d("server", f"{containers[name]}:{svc.port}"), d("keepalive", "32"),
                                                d("keepalive_timeout", f"{UPSTREAM_KEEPALIVE_SECONDS}s")]))
    health = d("location", "=", GATEWAY_HEALTH, block=[d("access_log", "off"), d("default_type", "text/plain"),
                                                     d("return", "200", "ok")])
    http.append(d("server", block=[
        d("listen", layout.listen(layout.http_port), "default_server"),
        d("server_name", "_"),
        d("location", "^~", "/.well-known/acme-challenge/",
          block=[d("root", layout.acme_root), d("default_type", "text/plain")]),
        dict(health),
        d("location", "/", block=[d("return", "301", f"https://{env.domain}$request_uri")]),
    ]))
    locations: list[Directive] = [health, *grafana_locations(env),
                                  *(health_block(env, svc, path) for svc, path in health_routes(env).items())]
    for name, svc in routed.items():
        for route in svc.routes:
            locations += route_block(env, name, route)
    if not any(r.prefix == "/" for s in routed.values() for r in s.routes):
        locations.append(d("location", "/", block=[d("default_type", "application/json"),
                                                   d("return", "404", '{"error":"not_found"}')]))
    json_error = [d("default_type", "application/json"), *security_headers(env, csp=False)]
    http.append(d("server", block=[
        d("listen", layout.listen(layout.https_port), "ssl", "default_server"),
        d("server_name", env.domain),
        d("ssl_certificate", layout.cert), d("ssl_certificate_key", layout.key),
        d("ssl_protocols", "TLSv1.2", "TLSv1.3"),
        d("ssl_prefer_server_ciphers", "off"),
        d("ssl_session_cache", "shared:TLS:10m"), d("ssl_session_tickets", "off"),
        d("error_page", "429", "=", "@rate_limited"),
        d("error_page", "413", "=", "@too_large"),
        d("location", "@rate_limited", block=[*json_error, d("return", "429", RATE_LIMITED_BODY)]),
        d("location", "@too_large", block=[*json_error, d("return", "413", TOO_LARGE_BODY)]),
        *locations,
    ]))
    http.append(status_server(layout))
    main = [
        d("worker_processes", "auto"),
        d("pid", f"{t}/nginx.pid"),
        d("error_log", layout.error_log, "warn"),
        d("events", block=[d("worker_connections", "4096")]),
        d("http", block=http),
    ]
    return "# Rendered by render/nginx.py from the model; do not edit.\n" + crossplane.build(main, indent=4) + "\n"
