"""The rendered gateway config of every stack, run by real nginx on loopback in front of stub upstreams.

nginx (Debian's nginx-light) runs as root in a temporary prefix, inside a private mount namespace
whose /etc/hosts maps each service's container name to its own loopback address (the machine's
/etc/hosts is untouched). The stubs are written here: threaded HTTP/1.1 servers with a real listen
backlog (Python's default of 5 causes connect timeouts under load). Traffic goes to 127.0.0.0/8
only; nginx runs in its own process group and is stopped, by its id, whatever happens.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import http.client
import json
import os
import random
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import threading
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from ops.runner import Recording
from render.nginx import Layout, health_routes, render_nginx
from tests.conftest import recording, require_root, require_tool
from tests.test_gateway import container_names

STACKS = ["prod", "staging", "local"]
SSE_PATH = "stream"


class Stub(ThreadingHTTPServer):
    request_queue_size = 1024
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, service: str, address: tuple[str, int]) -> None:
        self.service = service
        self.sse_sent: list[float] = []  # monotonic times the stub wrote each SSE event
        self.sse_release = threading.Event()
        self.connections: set[socket.socket] = set()
        super().__init__(address, Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        self.connections.add(request)
        super().process_request(request, client_address)

    def down(self) -> None:
        """The upstream dies: no listener, and its open (keepalive) connections reset."""
        self.shutdown()
        self.server_close()
        for conn in list(self.connections):
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keepalive, as the gateway's upstream blocks expect
    # One write per answer and no Nagle: headers and body written apart wait out a 40 ms delayed ACK.
    disable_nagle_algorithm = True
    wbufsize = 65536
    server: Stub

    def log_message(self, *args: Any) -> None:
        pass

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        if self.path.endswith(SSE_PATH):
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-cache")
            self.end_headers()
            for i in range(2):
                time.sleep(0.3)
                self.server.sse_sent.append(time.monotonic())
                self.wfile.write(f"data: event {i}\n\n".encode())
                self.wfile.flush()
            self.server.sse_release.wait(5)
            self.close_connection = True
            return
        answer = json.dumps({
            "service": self.server.service, "path": self.path, "method": self.command,
            "body_sha256": hashlib.sha256(body).hexdigest(), "body_length": len(body),
            "headers": {k.lower(): v for k, v in self.headers.items()},
        }).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    do_GET = do_POST = do_PUT = do_DELETE = _answer


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Gateway:
    rec: Recording
    prefix: Path
    layout: Layout
    names: dict[str, str]
    addresses: dict[str, str]  # service -> its stub's loopback address
    stubs: dict[str, Stub] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None
    context: ssl.SSLContext = field(default_factory=ssl.create_default_context)

    def in_namespace(self, command: str) -> list[str]:
        return ["unshare", "--mount", "sh", "-c", f"mount --bind {self.prefix}/hosts /etc/hosts && {command}"]

    def nginx(self, *args: str) -> str:
        return " ".join([require_tool("nginx"), "-p", f"{self.prefix}/", "-c", f"{self.prefix}/nginx.conf", *args])

    def test_config(self) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.in_namespace(self.nginx("-t")), capture_output=True, text=True, timeout=30)

    def reload(self) -> None:
        """What the program's reload command does: validate, then reload (SIGHUP = `nginx -s reload`)."""
        checked = self.test_config()
        assert checked.returncode == 0, checked.stderr
        assert self.process is not None
        os.kill(self.master_pid(), signal.SIGHUP)

    def master_pid(self) -> int:
        return int((self.prefix / "tmp" / "nginx.pid").read_text())

    def https(self, source: str = "127.0.0.1") -> http.client.HTTPSConnection:
        return http.client.HTTPSConnection("127.0.0.1", self.layout.https_port, context=self.context, timeout=5,
                                           source_address=(source, 0))

    def request(self, method: str, path: str, body: bytes | None = None, source: str = "127.0.0.1",
                headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        conn = self.https(source)
        try:
            conn.request(method, path, body=body, headers={"Host": self.rec.env.domain, **(headers or {})})
            response = conn.getresponse()
            return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
        finally:
            conn.close()


def start_stubs(rec: Recording, names: dict[str, str]) -> tuple[dict[str, str], dict[str, Stub]]:
    """Each gateway's stubs on a 127.X.Y.0/24 that no other process holds: xdist workers, and the
    other checkouts on this machine running these tests at the same moment (fixed blocks made
    them fail each other with EADDRINUSE)."""
    for _ in range(50):
        net = f"127.{random.randrange(20, 250)}.{random.randrange(1, 250)}"
        addresses = {svc: f"{net}.{10 + i}" for i, svc in enumerate(sorted(names))}
        stubs: dict[str, Stub] = {}
        try:
            for svc in names:
                stubs[svc] = Stub(svc, (addresses[svc], rec.env.services[svc].port))
        except OSError as error:
            for stub in stubs.values():
                stub.server_close()
            if error.errno != errno.EADDRINUSE:
                raise
            continue
        return addresses, stubs
    raise AssertionError("no free loopback block for the stub upstreams after 50 tries")


def start(stack: str, root: Path) -> Gateway:
    require_tool("unshare")
    openssl = require_tool("openssl")
    require_root("the live gateway tests need root (a private mount namespace)")
    rec = recording(stack)
    names = container_names(rec)
    addresses, stubs = start_stubs(rec, names)
    prefix = root / stack
    (prefix / "tmp").mkdir(parents=True)
    (prefix / "tls").mkdir()
    layout = Layout(conf_dir=str(prefix), temp_dir=str(prefix / "tmp"), http_port=free_port(), https_port=free_port(),
                    listen_address="127.0.0.1", access_log=str(prefix / "access.log"), error_log=str(prefix / "error.log"),
                    status_port=free_port())
    subprocess.run([openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                    "-subj", f"/CN={rec.env.domain}", "-addext", f"subjectAltName=DNS:{rec.env.domain}",
                    "-days", "1", "-keyout", layout.key, "-out", layout.cert], check=True, capture_output=True)
    (prefix / "hosts").write_text("127.0.0.1 localhost\n" + "".join(f"{addresses[s]} {n}\n" for s, n in names.items()))
    (prefix / "nginx.conf").write_text(render_nginx(rec.env, names, layout))
    acme = prefix / "acme" / ".well-known" / "acme-challenge"
    acme.mkdir(parents=True)
    (acme / "token-1").write_text("proof")
    for path in (prefix, prefix / "acme", acme.parent, acme):
        path.chmod(0o755)
    (acme / "token-1").chmod(0o644)
    gw = Gateway(rec=rec, prefix=prefix, layout=layout, names=names, addresses=addresses)
    gw.context = ssl.create_default_context(cafile=layout.cert)
    gw.context.check_hostname = False  # we connect to 127.0.0.1; the certificate names the domain
    gw.stubs = stubs
    for svc in names:
        threading.Thread(target=gw.stubs[svc].serve_forever, daemon=True).start()
    gw.process = subprocess.Popen(gw.in_namespace("exec " + gw.nginx("-g", "'daemon off;'")),
                                  start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", layout.https_port), timeout=0.2):
            break
        if gw.process.poll() is not None:
            raise AssertionError(f"nginx exited: {gw.process.stderr.read().decode() if gw.process.stderr else ''}")
        time.sleep(0.05)
    return gw


def stop(gw: Gateway) -> None:
    if gw.process is not None and gw.process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(gw.process.pid, signal.SIGTERM)  # its own process group: master and workers
        try:
            gw.process.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(gw.process.pid, signal.SIGKILL)
            gw.process.wait(10)
    for stub in gw.stubs.values():
        stub.sse_release.set()
        stub.shutdown()
        stub.server_close()


@pytest.fixture(scope="module", params=STACKS)
def gw(request: pytest.FixtureRequest) -> Iterator[Gateway]:
    # Not under pytest's 0700 temp root: nginx's workers (Debian: www-data) must reach the ACME files.
    root = Path(tempfile.mkdtemp(prefix="gateway-live-"))
    root.chmod(0o755)
    gateway: Gateway | None = None
    try:
        gateway = start(request.param, root)
        yield gateway
    finally:
        if gateway is not None:
            stop(gateway)
        shutil.rmtree(root, ignore_errors=True)


def test_nginx_accepts_the_config(gw: Gateway) -> None:
    checked = gw.test_config()
    assert checked.returncode == 0, checked.stderr
    assert "syntax is ok" in checked.stderr and "test is successful" in checked.stderr


def test_every_route_reaches_its_service(gw: Gateway) -> None:
    for svc, spec in gw.rec.env.services.items():
        for i, route in enumerate(spec.routes):
            if route.kind == "sse":
                continue  # test_sse_event_arrives_at_once
            path = route.prefix.rstrip("/") + "/probe/x?q=1"
            source = f"127.9.{STACKS.index(gw.rec.stack)}.{10 + i + 5 * list(gw.rec.env.services).index(svc)}"
            status, headers, body = gw.request("GET", path, source=source, headers={"X-Request-ID": "req-42"})
            assert status == 200, (path, status, body[:200])
            seen = json.loads(body)
            assert seen["service"] == svc and seen["path"] == path, (path, seen)
            assert seen["headers"]["x-real-ip"] == source and seen["headers"]["x-forwarded-for"] == source
            assert seen["headers"]["x-request-id"] == "req-42" and headers["x-request-id"] == "req-42"
    # Without one, the gateway makes a request id and sends it both ways.
    status, headers, body = gw.request("GET", "/api/analytics/x", source="127.9.9.1")
    assert status == 200 and len(headers["x-request-id"]) == 32
    assert json.loads(body)["headers"]["x-request-id"] == headers["x-request-id"]
    # A sibling of a prefix is not that prefix: /api/chatsx goes to /api (api-gateway).
    status, _, body = gw.request("GET", "/api/chatsx", source="127.9.9.2")
    assert json.loads(body)["service"] == "api-gateway"


def test_each_service_health_path_reaches_that_service(gw: Gateway) -> None:
    """What the deploy driver verifies (ops/deploy.py verification_urls): /healthz/<service> answers
    from that service, at its health_path; the naive prefix + health_path of the frontend
    (/api/health) is answered by api-gateway instead."""
    for svc, path in health_routes(gw.rec.env).items():
        status, _, body = gw.request("GET", path, source="127.9.8.1")
        seen = json.loads(body)
        assert status == 200 and seen["service"] == svc, (path, status, seen)
        assert seen["path"] == gw.rec.env.services[svc].health_path, (path, seen)
    if "frontend" in gw.rec.env.services and "api-gateway" in gw.rec.env.services:
        status, _, body = gw.request("GET", "/api/health", source="127.9.8.2")
        assert json.loads(body)["service"] == "api-gateway"


def test_access_log_is_json_with_upstream_timing(gw: Gateway) -> None:
    gw.request("GET", "/api/analytics/logged", source="127.9.9.3")
    time.sleep(0.2)
    lines = [json.loads(line) for line in (gw.prefix / "access.log").read_text().splitlines()]
    entry = next(e for e in reversed(lines) if e["uri"] == "/api/analytics/logged")
    assert entry["status"] == "200" and entry["remote_addr"] == "127.9.9.3"
    assert float(entry["upstream_response_time"]) >= 0 and entry["upstream"].endswith(":3005")
    assert entry["request_id"]


@pytest.mark.parametrize("zone_route", ["/api/auth/login", "/api/analytics/report"])
def test_429_starts_exactly_after_the_burst(gw: Gateway, zone_route: str) -> None:
    env = gw.rec.env
    svc = next(s for s in env.services.values() for r in s.routes if zone_route.startswith(r.prefix + "/")
               and r.prefix in ("/api/auth", "/api/analytics"))
    route = next(r for r in svc.routes if zone_route.startswith(r.prefix))
    limit = env.gateway.rate_limits[route.rate_limit]
    source = f"127.8.{STACKS.index(gw.rec.stack)}.{1 + ['/api/auth/login', '/api/analytics/report'].index(zone_route)}"
    # All requests at once, each on a connection whose TLS handshake is already done, so that the
    # whole series takes far less than one token's time (1 / rate): the count is then exact.
    total = limit.burst + 3

    def series() -> tuple[float, list[tuple[int, bytes, dict[str, str]]]]:
        conns = [gw.https(source) for _ in range(total)]
        for conn in conns:
            conn.connect()
        barrier = threading.Barrier(total + 1)
        answers: list[tuple[int, bytes, dict[str, str]]] = []
        lock = threading.Lock()

        def one_request(conn: http.client.HTTPSConnection) -> None:
            barrier.wait()
            conn.request("GET", zone_route, headers={"Host": env.domain})
            response = conn.getresponse()
            answer = (response.status, response.read(), {k.lower(): v for k, v in response.getheaders()})
            with lock:
                answers.append(answer)

        threads = [threading.Thread(target=one_request, args=(conn,)) for conn in conns]
        try:
            for t in threads:
                t.start()
            barrier.wait()
            started = time.monotonic()
            for t in threads:
                t.join(10)
            return time.monotonic() - started, answers
        finally:
            for conn in conns:
                conn.close()

    # On a loaded machine a series can take longer than one token: then it proves nothing either
    # way, so wait for the bucket to refill and measure again (at most 5 times).
    for _ in range(5):
        elapsed, answers = series()
        if elapsed < 1 / limit.per_second:
            break
        time.sleep((limit.burst + 1) / limit.per_second)
    statuses = sorted(a[0] for a in answers)
    # One request at the rate plus `burst` more (nodelay), then 429; exact only if the series took
    # less than one token's time.
    assert elapsed < 1 / limit.per_second, f"too slow to judge the burst: {elapsed:.3f}s"
    assert statuses == [200] * (limit.burst + 1) + [429, 429], statuses
    bodies = [(body, headers) for status, body, headers in answers if status == 429]
    body, headers = bodies[-1]
    assert json.loads(body)["error"] == "rate_limited" and headers["content-type"] == "application/json"
    assert headers["strict-transport-security"].startswith("max-age=")


def test_the_webhook_is_exempt_from_the_limit_and_passes_the_raw_body(gw: Gateway) -> None:
    env = gw.rec.env
    burst = env.gateway.rate_limits["default"].burst
    payload = b'{"id":"evt_1","type":"invoice.paid"}  \n\t{"not": "reformatted"}'
    conn = gw.https("127.7.0.1")
    try:
        for _ in range(burst + 10):
            conn.request("POST", "/api/billing/webhooks/stripe", body=payload,
                         headers={"Host": env.domain, "Content-Type": "application/json", "Stripe-Signature": "t=1,v1=ab"})
            response = conn.getresponse()
            seen = json.loads(response.read())
            assert response.status == 200
            assert seen["service"] == "billing-service"
            assert seen["body_sha256"] == hashlib.sha256(payload).hexdigest()
            assert seen["headers"]["stripe-signature"] == "t=1,v1=ab"
    finally:
        conn.close()


def test_sse_event_arrives_at_once_and_the_stream_stays_open(gw: Gateway) -> None:
    stub = gw.stubs["chat-service"]
    stub.sse_sent.clear()
    stub.sse_release.clear()
    conn = gw.https("127.6.0.1")
    try:
        conn.request("GET", f"/api/chats/1/{SSE_PATH}", headers={"Host": gw.rec.env.domain, "Accept": "text/event-stream"})
        response = conn.getresponse()
        assert response.status == 200 and response.getheader("X-Accel-Buffering") == "no"
        assert response.getheader("Content-Type") == "text/event-stream"
        received = []
        for _ in range(2):
            line = response.readline()
            received.append(time.monotonic())
            assert line.startswith(b"data: event"), line
            assert response.readline() == b"\n"
        delays = [(r - s) * 1000 for r, s in zip(received, stub.sse_sent, strict=True)]
        assert max(delays) < 100, delays
        assert not response.isclosed()  # the stream is still open after the events
    finally:
        stub.sse_release.set()
        conn.close()


def test_http_redirects_to_https_except_the_acme_path(gw: Gateway) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", gw.layout.http_port, timeout=5)
    try:
        conn.request("GET", "/api/chats?x=1", headers={"Host": gw.rec.env.domain})
        response = conn.getresponse()
        response.read()
        assert response.status == 301
        assert response.getheader("Location") == f"https://{gw.rec.env.domain}/api/chats?x=1"
        conn.request("GET", "/.well-known/acme-challenge/token-1", headers={"Host": gw.rec.env.domain})
        response = conn.getresponse()
        assert (response.status, response.read()) == (200, b"proof")
        conn.request("GET", "/healthz")
        response = conn.getresponse()
        assert (response.status, response.read()) == (200, b"ok")
    finally:
        conn.close()


def test_tls_12_and_13_only(gw: Gateway) -> None:
    for version, accepted in ((ssl.TLSVersion.TLSv1_1, False), (ssl.TLSVersion.TLSv1_2, True),
                              (ssl.TLSVersion.TLSv1_3, True)):
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
        with contextlib.suppress(ValueError, ssl.SSLError):
            context.set_ciphers("ALL:@SECLEVEL=0")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # TLS 1.1: deprecated, which is the point
            context.minimum_version = context.maximum_version = version
        try:
            with socket.create_connection(("127.0.0.1", gw.layout.https_port), timeout=5) as raw, \
                    context.wrap_socket(raw) as tls:
                assert accepted, f"{version} was accepted"
                assert tls.version() == {ssl.TLSVersion.TLSv1_2: "TLSv1.2", ssl.TLSVersion.TLSv1_3: "TLSv1.3"}[version]
        except (ssl.SSLError, ConnectionResetError):
            assert not accepted, f"{version} was refused"


def test_security_headers(gw: Gateway) -> None:
    for path, csp in (("/", True), ("/api/analytics/x", False)):
        status, headers, _ = gw.request("GET", path, source="127.5.0.1")
        assert status == 200
        assert headers["strict-transport-security"] == f"max-age={gw.rec.env.gateway.hsts_max_age_seconds}; includeSubDomains"
        assert headers["x-content-type-options"] == "nosniff" and headers["x-frame-options"] == "DENY"
        assert headers["referrer-policy"] == "strict-origin-when-cross-origin"
        assert ("content-security-policy" in headers) == csp
        assert "server" not in headers or headers["server"] == "nginx"  # server_tokens off: no version


def test_oversized_bodies_get_413(gw: Gateway) -> None:
    env = gw.rec.env
    status, _, body = gw.request("POST", "/api/analytics/upload", body=b"x" * (env.gateway.max_body + 1),
                                       source="127.4.0.1")
    assert status == 413 and json.loads(body)["error"] == "payload_too_large"
    status, _, _ = gw.request("POST", "/api/billing/webhooks/stripe", body=b"x" * (env.gateway.webhook_max_body + 1),
                              source="127.4.0.2")
    assert status == 413
    status, _, _ = gw.request("POST", "/api/analytics/upload", body=b"x" * env.gateway.webhook_max_body * 2,
                              source="127.4.0.3")
    assert status == 200  # the webhook's cap is its own


def test_a_down_upstream_answers_502_within_a_second(gw: Gateway) -> None:
    gw.stubs["analytics-service"].down()
    try:
        started = time.monotonic()
        status, headers, _ = gw.request("GET", "/api/analytics/x", source="127.3.0.1")
        assert status in (502, 503) and time.monotonic() - started < 1.0
        assert headers["x-content-type-options"] == "nosniff"
    finally:
        gw.stubs["analytics-service"] = Stub("analytics-service", (gw.addresses["analytics-service"], 3005))
        threading.Thread(target=gw.stubs["analytics-service"].serve_forever, daemon=True).start()
    status, _, _ = gw.request("GET", "/api/analytics/x", source="127.3.0.2")
    assert status == 200


def test_a_reload_under_load_drops_nothing(gw: Gateway) -> None:
    """Eight clients, each on its own connection, for ~3 s, through three validated reloads; the
    webhook route is used because it is exempt from the per-client limit."""
    stop_at = time.monotonic() + 3.0
    results: list[tuple[int, str]] = []
    lock = threading.Lock()

    def client(n: int) -> None:
        local: list[tuple[int, str]] = []
        conn = gw.https(f"127.2.0.{n + 1}")
        while time.monotonic() < stop_at:
            try:
                method = "POST" if n % 2 else "GET"
                conn.request(method, "/api/billing/webhooks/stripe", body=b"{}" if method == "POST" else None,
                             headers={"Host": gw.rec.env.domain})
                response = conn.getresponse()
                response.read()
                local.append((response.status, ""))
                if response.getheader("Connection", "").lower() == "close":
                    conn.close()
                    conn = gw.https(f"127.2.0.{n + 1}")
            except (OSError, http.client.HTTPException) as error:
                # A keepalive connection closed by an old worker between requests is the client's
                # normal reconnect (RFC 9112 9.3.1), not a failed request: retry it once, fresh.
                conn.close()
                conn = gw.https(f"127.2.0.{n + 1}")
                try:
                    conn.request("GET", "/api/billing/webhooks/stripe", headers={"Host": gw.rec.env.domain})
                    response = conn.getresponse()
                    response.read()
                    local.append((response.status, f"retried after {error!r}"))
                except (OSError, http.client.HTTPException) as again:
                    local.append((0, repr(again)))
        conn.close()
        with lock:
            results.extend(local)

    threads = [threading.Thread(target=client, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    pids_before = gw.master_pid()
    for _ in range(3):
        time.sleep(0.7)
        gw.reload()
    for t in threads:
        t.join(10)
    assert gw.master_pid() == pids_before  # reloaded, never restarted
    failed = [r for r in results if r[0] != 200]
    assert len(results) > 200, len(results)
    assert failed == [], failed[:5]


def test_a_changed_route_is_served_after_a_validated_reload_and_a_refused_one_never_is(gw: Gateway) -> None:
    """Item 2 live: new files, `nginx -t`, reload; the running gateway takes the new route up
    without a restart. A file nginx refuses stops at `nginx -t` and the old one keeps serving."""
    conf = gw.prefix / "nginx.conf"
    original = conf.read_text()
    env = gw.rec.env
    analytics = env.services["analytics-service"]
    changed = env.model_copy(update={"services": {**env.services, "analytics-service": analytics.model_copy(
        update={"routes": [*analytics.routes, analytics.routes[0].model_copy(update={"prefix": "/api/reports"})]})}})
    pid = gw.master_pid()
    try:
        assert json.loads(gw.request("GET", "/api/reports/x", source="127.1.9.1")[2])["service"] == "api-gateway"
        conf.write_text(render_nginx(changed, gw.names, gw.layout))
        gw.reload()
        # Until the old workers have exited, one of them can still accept a connection (nginx
        # signals them after starting the new ones): wait for 20 answers in a row from the new config.
        # Each from its own address, so the per-client rate limit never answers instead.
        deadline, in_a_row, sent = time.monotonic() + 10, 0, 0
        while in_a_row < 20:
            sent += 1
            served = json.loads(gw.request("GET", "/api/reports/x", source=f"127.1.{20 + sent // 250}.{1 + sent % 250}")[2])[
                "service"]
            in_a_row = in_a_row + 1 if served == "analytics-service" else 0
            assert time.monotonic() < deadline, "the reloaded route never served steadily"
            if not in_a_row:
                time.sleep(0.05)
        conf.write_text(original.replace("limit_req_status 429;", "limit_req_status 429;\n    limit_req_zone broken;"))
        assert gw.test_config().returncode != 0  # the reload command stops here (`nginx -t && ...`)
        assert json.loads(gw.request("GET", "/api/reports/x", source="127.1.9.3")[2])["service"] == "analytics-service"
        assert gw.master_pid() == pid
    finally:
        conf.write_text(original)
        gw.reload()
