"""A service swap through the real gateway, step for step as the program, Pulumi and Docker perform it.

Shared by tests/test_zero_downtime.py and `python -m bench.swap`. On loopback only:

- nginx (Debian's) runs the `local` stack's rendered nginx.conf (only paths and ports moved into a
  temporary prefix), as root in a private mount namespace whose /etc/resolv.conf names a dnslib
  server standing in for Docker's embedded DNS, and whose /etc/hosts has only localhost: container
  names resolve through DNS, as in a container on a user-defined network;
- each "container" of the swapped service is the engine tests' Node stub (tests/engine/images/stub/
  server.js, the drain contract every service follows) on its own loopback address, in its own
  process group, stopped by its id;
- the swap: new container started and in DNS -> healthy (its health route polled, as the provider's
  `wait`) -> nginx.conf re-rendered by render/nginx.py with the new container's name -> `nginx -t`
  then `nginx -s reload` (the gateway's reload command) -> the old container gets SIGTERM at once
  (the engine deletes replaced resources after every step, and Docker stops with
  `destroy_grace_seconds`: SIGKILL after stop_grace_seconds) -> it exits -> out of DNS;
- the load: keepalive clients doing GETs and POSTs, and SSE clients holding streams open and
  reconnecting when a stream ends cleanly, as a browser's EventSource does.

Counting. A request fails when it gets no answer or a non-200 one, and an SSE stream fails when it
breaks (no clean end). One case is counted apart, never as a failure: a request written on an idle
keepalive connection that a retiring nginx worker closed at that moment, which nginx never read (its
request id is not in nginx's access log: checked) and which the client resends on a new connection
(RFC 9112 9.3.1), as browsers do.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import random
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from dnslib import QTYPE, RCODE, RR, A
from dnslib.server import BaseResolver, DNSLogger, DNSServer

from config.rules import DRAIN_DELAY_SECONDS
from ops.runner import Recording, run_stack
from render.nginx import Layout, render_nginx

ROOT = Path(__file__).resolve().parent.parent
STUB = ROOT / "tests" / "engine" / "images" / "stub" / "server.js"
SERVICE = "chat-service"  # the SSE route's service: GETs, POSTs and streams all go through /api/chats


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise FileNotFoundError(f"{name} is not installed (scripts/bootstrap.sh --test-tools installs it)")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Names(BaseResolver):  # type: ignore[misc]
    """Docker's embedded DNS, as far as nginx sees it: a container's name answers its address while it
    is on the network; anything else is NXDOMAIN."""

    def __init__(self) -> None:
        self.names: dict[str, str] = {}
        self.queries = 0

    def resolve(self, request: Any, handler: Any) -> Any:
        self.queries += 1
        reply = request.reply()
        name = str(request.q.qname).rstrip(".")
        address = self.names.get(name)
        if address is None:
            reply.header.rcode = RCODE.NXDOMAIN
        elif request.q.qtype == QTYPE.A:
            reply.add_answer(RR(request.q.qname, QTYPE.A, rdata=A(address), ttl=600))  # Docker's TTL
        return reply


@dataclass
class Container:
    """A stub service process standing in for one container of the swapped service."""

    name: str
    address: str
    version: str
    process: subprocess.Popen[bytes]
    log: Path
    sigterm_at: float | None = None
    exited_at: float | None = None
    killed: bool = False


@dataclass
class Result:
    """What the load saw. Times are time.monotonic()."""

    requests: list[tuple[float, float, str, str]] = field(default_factory=list)  # (start, ms, method, outcome)
    answered_by: dict[str, int] = field(default_factory=dict)  # version -> answers
    last_answer_sent: dict[str, float] = field(default_factory=dict)  # version -> latest request start answered
    resent_idle_keepalive: int = 0
    resent_starts: set[float] = field(default_factory=set)  # start times of the requests that were resent
    resent_ids_logged_by_nginx: int = 0  # of the resent requests' first attempts: must stay 0
    sse_streams: int = 0
    sse_events: int = 0
    sse_clean_ends: int = 0
    sse_broken: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    @property
    def served(self) -> int:
        return sum(1 for r in self.requests if r[3] == "ok")

    @property
    def failed(self) -> int:
        return len(self.failures) + len(self.sse_broken)

    def counts(self) -> dict[str, Any]:
        return {"served": self.served, "failed": self.failed, "gets": sum(r[2] == "GET" for r in self.requests),
                "posts": sum(r[2] == "POST" for r in self.requests), "sse_streams": self.sse_streams,
                "sse_events": self.sse_events, "sse_clean_ends": self.sse_clean_ends,
                "sse_broken": len(self.sse_broken), "resent_idle_keepalive": self.resent_idle_keepalive,
                "answered_by": dict(sorted(self.answered_by.items())), "failures": self.failures[:10] + self.sse_broken[:10]}


class Gateway:
    """nginx on the rendered config of a stack, with the DNS stand-in and the swapped service's stubs."""

    def __init__(self, root: Path, stack: str = "local", block: int = 0,
                 drain_delay_ms: int = DRAIN_DELAY_SECONDS * 1000) -> None:
        self.drain_delay_ms = drain_delay_ms  # the stubs' STUB_DRAIN_DELAY_MS (the drain contract)
        self.rec: Recording = run_stack(stack)
        self.env = self.rec.env
        self.root = root
        # 127.30+block.0.0/16 for this harness: distinct from the live gateway tests' 127.1-9.x.
        self.net = f"127.{30 + block}"
        self.dns_address = f"{self.net}.0.53"
        self.resolver = Names()
        self.dns: DNSServer | None = None
        self.nginx: subprocess.Popen[bytes] | None = None
        self.layout = Layout(conf_dir=str(root), temp_dir=str(root / "tmp"), http_port=free_port(),
                             https_port=free_port(), listen_address="127.0.0.1", access_log=str(root / "access.log"),
                             error_log=str(root / "error.log"), status_port=free_port())
        routed = sorted(n for n, s in self.env.services.items() if s.routes)
        # Every other routed service's name resolves (nginx resolves every upstream at load) to an
        # address nothing listens on: the load only goes to the swapped service.
        self.names = {svc: f"{svc}-{secrets.token_hex(4)[:7]}" for svc in routed}
        for i, svc in enumerate(routed):
            if svc != SERVICE:
                self.resolver.names[self.names[svc]] = f"{self.net}.1.{10 + i}"
        self.containers: list[Container] = []
        self._next_address = 10
        self.context = ssl.create_default_context()
        self.reloads = 0

    # --- the pieces ----------------------------------------------------------------------------

    def prepare(self) -> None:
        tool("unshare")
        (self.root / "tmp").mkdir(parents=True)
        (self.root / "tls").mkdir()
        self.root.chmod(0o755)
        subprocess.run([tool("openssl"), "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                        "-nodes", "-subj", f"/CN={self.env.domain}", "-days", "1", "-keyout", self.layout.key, "-out",
                        self.layout.cert], check=True, capture_output=True)
        self.context = ssl.create_default_context(cafile=self.layout.cert)
        self.context.check_hostname = False
        (self.root / "hosts").write_text("127.0.0.1 localhost\n")
        (self.root / "resolv.conf").write_text(f"nameserver {self.dns_address}\noptions timeout:1 attempts:2\n")
        self.dns = DNSServer(self.resolver, address=self.dns_address, port=53,
                             logger=DNSLogger("-recv,-send,-request,-reply,-truncated,-error,-data", prefix=False))
        self.dns.start_thread()

    def start(self, first: Container) -> None:
        """nginx, routing the swapped service to its first container."""
        self.names[SERVICE] = first.name
        self.write_conf()
        nginx = tool("nginx")
        self.nginx = subprocess.Popen(self.in_namespace(f"exec {nginx} -p {self.root}/ -c {self.root}/nginx.conf "
                                                        "-g 'daemon off;'"),
                                      start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 10
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.layout.https_port), 0.2):
                return
            if self.nginx.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"nginx did not start: {self.nginx.stderr.read().decode() if self.nginx.stderr else ''}")
            time.sleep(0.05)

    def in_namespace(self, command: str) -> list[str]:
        return ["unshare", "--mount", "sh", "-c", f"mount --bind {self.root}/hosts /etc/hosts && "
                f"mount --bind {self.root}/resolv.conf /etc/resolv.conf && {command}"]

    def write_conf(self) -> None:
        (self.root / "nginx.conf").write_text(render_nginx(self.env, self.names, self.layout))

    def reload(self) -> None:
        """The gateway's reload command (components/gateway.py reload_script): `nginx -t` and only then
        `nginx -s reload`."""
        nginx = tool("nginx")
        args = f"{nginx} -p {self.root}/ -c {self.root}/nginx.conf"
        result = subprocess.run(self.in_namespace(f"{args} -t -q && {args} -s reload"), capture_output=True,
                                text=True, timeout=30)
        if result.returncode != 0:
            raise RuntimeError(f"reload refused: {result.stderr}")
        self.reloads += 1

    def run_container(self, version: str, *, healthy: bool = True) -> Container:
        """Docker's create + network connect (the name joins DNS) + start."""
        address = f"{self.net}.2.{self._next_address}"
        self._next_address += 1
        name = f"{SERVICE}-{secrets.token_hex(4)[:7]}"
        log = self.root / f"{name}.log"
        env = {"PATH": os.environ["PATH"], "PORT": str(self.env.services[SERVICE].port), "STUB_HOST": address,
               "STUB_VERSION": version, "STUB_SSE_MS": "100", "STUB_DRAIN_DELAY_MS": str(self.drain_delay_ms),
               **({} if healthy else {"STUB_HEALTH": "fail"})}
        self.resolver.names[name] = address
        with log.open("wb") as out:
            process = subprocess.Popen([tool("node"), str(STUB)], env=env, stdout=out, stderr=subprocess.STDOUT,
                                       start_new_session=True)
        container = Container(name=name, address=address, version=version, process=process, log=log)
        self.containers.append(container)
        return container

    def wait_healthy(self, container: Container, timeout: float) -> bool:
        """The provider's `wait`: poll until healthy or the deploy timeout."""
        port = self.env.services[SERVICE].port
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError, http.client.HTTPException):
                conn = http.client.HTTPConnection(container.address, port, timeout=1)
                try:
                    conn.request("GET", self.env.services[SERVICE].health_path)
                    if conn.getresponse().status == 200:
                        return True
                finally:
                    conn.close()
            time.sleep(0.1)
        return False

    def stop_container(self, container: Container, grace: float) -> None:
        """Docker's stop: SIGTERM, SIGKILL after the grace period; then the name leaves DNS."""
        container.sigterm_at = time.monotonic()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(container.process.pid, signal.SIGTERM)
        try:
            container.process.wait(grace)
        except subprocess.TimeoutExpired:
            container.killed = True
            with contextlib.suppress(ProcessLookupError):
                os.killpg(container.process.pid, signal.SIGKILL)
            container.process.wait(10)
        container.exited_at = time.monotonic()
        self.resolver.names.pop(container.name, None)

    def swap(self, old: Container, version: str, *, healthy: bool = True,
             deploy_timeout: float | None = None) -> dict[str, float | bool]:
        """One image change of the swapped service, in the engine's order. Returns the step times."""
        svc = self.env.services[SERVICE]
        t0 = time.monotonic()
        new = self.run_container(version, healthy=healthy)
        if not self.wait_healthy(new, deploy_timeout if deploy_timeout is not None else svc.deploy_timeout_seconds):
            # `up` fails: no dependent step runs (no re-render, no reload) and the old container,
            # pending delete, is never deleted. The failed one keeps running (the engine keeps it,
            # with init errors); nginx never routes to it, since it routes by container name.
            return {"healthy": False, "failed_at": time.monotonic() - t0}
        healthy_at = time.monotonic() - t0
        self.names[SERVICE] = new.name
        self.write_conf()
        self.reload()
        reloaded_at = time.monotonic() - t0
        retired: dict[str, float] = {}
        watcher = threading.Thread(target=self._watch_old_workers, args=(retired,), daemon=True)
        watcher.start()
        self.stop_container(old, svc.stop_grace_seconds)
        watcher.join(svc.stop_grace_seconds + 10)
        return {"healthy": True, "healthy_at": healthy_at, "reloaded_at": reloaded_at,
                "old_exited_at": time.monotonic() - t0, "old_killed": old.killed,
                "old_drain_s": (old.exited_at or 0) - (old.sigterm_at or 0),
                "old_nginx_workers_max": retired.get("max", 0), "old_nginx_workers_gone_s": retired.get("gone", -1)}

    def _watch_old_workers(self, out: dict[str, float]) -> None:
        """How many workers the reload retired, and how long after the reload the last one exited (an
        SSE stream keeps its worker until the stream ends)."""
        start = time.monotonic()
        out["max"] = 0
        while time.monotonic() - start < 120:
            n = self.old_workers()
            out["max"] = max(out["max"], n)
            if n == 0 and time.monotonic() - start > 0.2:
                out["gone"] = time.monotonic() - start
                return
            time.sleep(0.02)

    def stop(self) -> None:
        if self.nginx is not None and self.nginx.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.nginx.pid, signal.SIGTERM)
            try:
                self.nginx.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.nginx.pid, signal.SIGKILL)
                self.nginx.wait(10)
        for container in self.containers:
            if container.process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(container.process.pid, signal.SIGKILL)
                container.process.wait(10)
        if self.dns is not None:
            self.dns.stop()

    def old_workers(self) -> int:
        """nginx workers retired by a reload and still running (holding a request or a stream)."""
        assert self.nginx is not None
        count = 0
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            with contextlib.suppress(OSError):
                if os.getpgid(int(entry.name)) == self.nginx.pid and \
                        b"shutting down" in (entry / "cmdline").read_bytes():
                    count += 1
        return count

    def access_log_ids(self) -> set[str]:
        path = self.root / "access.log"
        ids = set()
        for line in path.read_text().splitlines() if path.exists() else []:
            with contextlib.suppress(ValueError):
                ids.add(json.loads(line)["request_id"])
        return ids

    # --- the load ------------------------------------------------------------------------------

    def connect(self, source: str, sessions: dict[str, ssl.SSLSession] | None = None) -> BrowserConnection:
        return BrowserConnection("127.0.0.1", self.layout.https_port, context=self.context, timeout=10,
                                 source_address=(source, 0), tls_context=self.context,
                                 sessions=sessions if sessions is not None else {})


class BrowserConnection(http.client.HTTPSConnection):
    """An HTTPS connection that resumes its client's last TLS session on a new connection, as browsers
    do (nginx keeps sessions in `ssl_session_cache`, render/nginx.py): a reconnect costs a resumed
    handshake, not a full one."""

    def __init__(self, *args: Any, tls_context: ssl.SSLContext, sessions: dict[str, ssl.SSLSession],
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.tls_context, self.sessions = tls_context, sessions
        self.bind: tuple[str, int] | None = kwargs.get("source_address")

    def connect(self) -> None:
        sock = socket.create_connection((self.host, self.port), self.timeout, self.bind)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock = self.tls_context.wrap_socket(sock, server_hostname=self.host, session=self.sessions.get("tls"))

    def remember_session(self) -> None:
        # With TLS 1.3 the session (ticket) arrives after the handshake, with the first answer.
        if isinstance(self.sock, ssl.SSLSocket) and self.sock.session is not None:
            self.sessions["tls"] = self.sock.session


class Front(Protocol):
    """What the load needs of a gateway: the loopback `Gateway` here, or the gateway container on the
    engine (tests/engine/test_swap_engine.py)."""

    env: Any
    net: str  # the clients' source addresses are <net>.<100..102>.<n>

    def connect(self, source: str, sessions: dict[str, ssl.SSLSession] | None = None) -> BrowserConnection: ...

    def access_log_ids(self) -> set[str]: ...


class Load:
    """Bounded continuous load through the gateway: keepalive GET and POST clients and SSE clients."""

    def __init__(self, gw: Front, *, getters: int = 10, posters: int = 10, streams: int = 4,
                 one_address: bool = False) -> None:
        self.gw = gw
        # Each client from its own address, at 80% of the route's per-client limit (10 r/s by
        # default): the limit answers 429 above it, which is the gateway working, not a swap failure.
        # `one_address`: nginx sees every client from the same address (a port published on the host
        # is reached from the host through docker-proxy), so the request clients share that 80%.
        zone = next(r.rate_limit for r in gw.env.services[SERVICE].routes)
        self.interval = (getters + posters if one_address else 1) / (0.8 * gw.env.gateway.rate_limits[zone].per_second)
        self.result = Result()
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.first_attempts: list[str] = []  # request ids whose first attempt hit a closing idle connection
        self.threads = [threading.Thread(target=self.requests, args=("GET", n), daemon=True) for n in range(getters)]
        self.threads += [threading.Thread(target=self.requests, args=("POST", n), daemon=True) for n in range(posters)]
        self.threads += [threading.Thread(target=self.sse, args=(n,), daemon=True) for n in range(streams)]

    def __enter__(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(30)
        ids = self.gw.access_log_ids()
        self.result.resent_ids_logged_by_nginx = sum(i in ids for i in self.first_attempts)

    def requests(self, method: str, n: int) -> None:
        source = f"{self.gw.net}.{100 + (method == 'POST')}.{n + 1}"
        prefix = f"/api/chats/{'version' if method == 'GET' else 'echo'}"
        body = json.dumps({"client": n, "pad": "x" * 512}).encode() if method == "POST" else None
        sessions: dict[str, ssl.SSLSession] = {}
        conn = self.gw.connect(source, sessions)
        fresh = True
        next_at = time.monotonic() + random.random() * self.interval
        while not self.stop.is_set():
            time.sleep(max(0.0, next_at - time.monotonic()))
            next_at += self.interval
            request_id = secrets.token_hex(16)
            start = time.monotonic()
            try:
                status, answer = self._one(conn, method, prefix, body, request_id)
            except (OSError, http.client.HTTPException) as error:
                conn.close()
                conn = self.gw.connect(source, sessions)
                if fresh or not _idle_close(error):
                    self._record(start, method, f"{method} error {error!r}")
                    fresh = True
                    continue
                # A reused idle connection closed under the request: resend on a new one, once.
                with self.lock:
                    self.result.resent_idle_keepalive += 1
                    self.result.resent_starts.add(start)
                    self.first_attempts.append(request_id)
                try:
                    status, answer = self._one(conn, method, prefix, body, secrets.token_hex(16))
                except (OSError, http.client.HTTPException) as again:
                    self._record(start, method, f"{method} resend error {again!r}")
                    conn.close()
                    conn = self.gw.connect(source, sessions)
                    fresh = True
                    continue
            fresh = False
            if status == 200:
                version = json.loads(answer).get("version", "?")
                with self.lock:
                    self.result.answered_by[version] = self.result.answered_by.get(version, 0) + 1
                    self.result.last_answer_sent[version] = max(start, self.result.last_answer_sent.get(version, 0))
                self._record(start, method, "ok")
            else:
                self._record(start, method, f"{method} {status}")
        conn.close()

    def _one(self, conn: BrowserConnection, method: str, path: str, body: bytes | None,
             request_id: str) -> tuple[int, bytes]:
        headers = {"Host": self.gw.env.domain, "X-Request-ID": request_id}
        if body is not None:
            headers["Content-Type"] = "application/json"
        conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        answer = response.read()
        conn.remember_session()
        if response.getheader("Connection", "").lower() == "close":
            conn.close()
        return response.status, answer

    def _record(self, start: float, method: str, outcome: str) -> None:
        with self.lock:
            self.result.requests.append((start, (time.monotonic() - start) * 1000, method, outcome))
            if outcome != "ok":
                self.result.failures.append(outcome)

    def sse(self, n: int) -> None:
        source = f"{self.gw.net}.102.{n + 1}"
        retry = 1.0  # until the server says otherwise (browsers use a few seconds)
        while not self.stop.is_set():
            conn = self.gw.connect(source)
            try:
                conn.request("GET", "/api/chats/sse", headers={"Host": self.gw.env.domain,
                                                               "Accept": "text/event-stream"})
                response = conn.getresponse()
                if response.status != 200:
                    with self.lock:
                        self.result.sse_broken.append(f"SSE status {response.status}")
                    continue  # (after the wait below, as EventSource)
                with self.lock:
                    self.result.sse_streams += 1
                while not self.stop.is_set():
                    line = response.readline()
                    if not line:  # the stream ended cleanly (last chunk): EventSource reconnects
                        with self.lock:
                            self.result.sse_clean_ends += 1
                        break
                    if line.startswith(b"retry:"):
                        retry = int(line[6:].strip()) / 1000
                    if line.startswith(b"data:"):
                        with self.lock:
                            self.result.sse_events += 1
            except (OSError, http.client.HTTPException) as error:
                if not self.stop.is_set():
                    with self.lock:
                        self.result.sse_broken.append(f"SSE broken {error!r}")
            finally:
                conn.close()
            # EventSource waits its reconnection time (the last `retry:` the server sent) first.
            self.stop.wait(retry)


def _idle_close(error: BaseException) -> bool:
    """The signature of a request written on a connection the server had just closed: no answer byte."""
    return isinstance(error, (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError,
                              ssl.SSLEOFError)) or "EOF occurred" in str(error)


def p99(values: list[float]) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]


@contextlib.contextmanager
def gateway(block: int = 0, drain_delay_ms: int = DRAIN_DELAY_SECONDS * 1000) -> Iterator[Gateway]:
    """nginx running, the swapped service on its first container (version v1): `gw.containers[0]`."""
    if os.geteuid() != 0:
        raise PermissionError("the swap harness needs root (a private mount namespace, DNS on port 53)")
    root = Path(tempfile.mkdtemp(prefix="swap-"))
    gw = Gateway(root, block=block, drain_delay_ms=drain_delay_ms)
    try:
        gw.prepare()
        first = gw.run_container("v1")
        if not gw.wait_healthy(first, 10):
            raise RuntimeError(f"the first stub never turned healthy: {first.log.read_text()}")
        gw.start(first)
        yield gw
    finally:
        gw.stop()
        shutil.rmtree(root, ignore_errors=True)
