"""Throwaway PostgreSQL 15 clusters and a local S3 (moto over TLS) on loopback, for the backup tests,
the laptop drill (bench/backup_drill.py), the benchmark and `ops backup verify`'s scratch instance.

Everything lives under one directory and runs in process groups of its own, stopped by PID.
Traps handled here (verified with Debian's PostgreSQL 15.18 and pgBackRest 2.45, moto 5.2.5):
- initdb refuses root: server processes run as `postgres` (runuser) when we are root, and every
  directory they touch is theirs;
- pgBackRest checks the server certificate against DNS names only: the certificate is for
  `localhost` and the endpoint is that name;
- Werkzeug closes TLS connections without a close_notify, which pgBackRest reports as
  `unexpected eof` on uploads: the moto wrapper unwraps each TLS socket before closing it.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from config.model import PostgresBackup
from render import pgbackrest as pbr

PGBIN = Path(os.environ.get("PGBIN", "/usr/lib/postgresql/15/bin"))
S3_KEY, S3_SECRET, S3_REGION = "testkey", "testsecret", "us-east-1"

MOTO_TLS = '''\
import ssl, sys
import werkzeug.serving as ws
_orig = ws.BaseWSGIServer.shutdown_request
def _shutdown_request(self, request):
    # Send TLS close_notify before closing: pgBackRest treats a bare close as a truncated upload.
    if isinstance(request, ssl.SSLSocket):
        try:
            request.settimeout(2.0)
            request = request.unwrap()
        except (OSError, ValueError):
            pass
    _orig(self, request)
ws.BaseWSGIServer.shutdown_request = _shutdown_request
from moto.server import main
sys.exit(main())
'''


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def is_root() -> bool:
    return os.geteuid() == 0


def as_postgres(argv: Sequence[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *argv] if is_root() else list(argv)


def give_to_postgres(*paths: Path) -> None:
    if not is_root():
        return
    pw = pwd.getpwnam("postgres")
    for path in paths:
        os.chown(path, pw.pw_uid, pw.pw_gid)
        if path.is_dir():
            for root, dirs, files in os.walk(path):
                for name in dirs + files:
                    os.chown(os.path.join(root, name), pw.pw_uid, pw.pw_gid, follow_symlinks=False)


def run(argv: Sequence[str], *, env: Mapping[str, str] | None = None, timeout: float = 600,
        check: bool = True, input: str | None = None) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(list(argv), capture_output=True, text=True, errors="replace", timeout=timeout, input=input,
                            env={**os.environ, **(env or {})})
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[:6])} ... failed ({result.returncode}): "
                           f"{(result.stderr or result.stdout).strip()[-2000:]}")
    return result


def _stop_group(proc: subprocess.Popen[bytes], grace: float = 10) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(grace)
            break
        except subprocess.TimeoutExpired:
            continue


@dataclass
class S3Server:
    """moto's S3 over TLS on 127.0.0.1, addressed as `localhost` (the certificate's name)."""

    root: Path
    port: int = field(default_factory=free_port)
    env: Mapping[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def ca_file(self) -> Path:
        return self.root / "ca.crt"

    @property
    def url(self) -> str:
        return f"https://localhost:{self.port}"

    def endpoint(self) -> pbr.Endpoint:
        return pbr.Endpoint(host="localhost", port=self.port, ca_file=str(self.ca_file))

    def start(self) -> S3Server:
        self.root.mkdir(parents=True, exist_ok=True)
        key, ca = self.root / "ca.key", self.ca_file
        run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=backup-lab-ca",
             "-keyout", str(key), "-out", str(ca)])
        run(["openssl", "req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost",
             "-keyout", str(self.root / "server.key"), "-out", str(self.root / "server.csr")])
        (self.root / "san.ext").write_text("subjectAltName=DNS:localhost\nextendedKeyUsage=serverAuth\n")
        run(["openssl", "x509", "-req", "-in", str(self.root / "server.csr"), "-CA", str(ca), "-CAkey", str(key),
             "-CAcreateserial", "-days", "2", "-extfile", str(self.root / "san.ext"),
             "-out", str(self.root / "server.crt")])
        ca.chmod(0o644)
        (self.root / "moto_tls.py").write_text(MOTO_TLS)
        log = open(self.root / "moto.log", "wb")  # noqa: SIM115 - the server keeps it open
        self.proc = subprocess.Popen(
            [sys.executable, str(self.root / "moto_tls.py"), "-H", "127.0.0.1", "-p", str(self.port),
             "--ssl-cert", str(self.root / "server.crt"), "--ssl-key", str(self.root / "server.key")],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env={**os.environ, **self.env})
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return self
            if self.proc.poll() is not None:
                raise RuntimeError(f"moto exited: {(self.root / 'moto.log').read_text()[-1000:]}")
            time.sleep(0.1)
        raise RuntimeError("moto did not start listening within 30 s")

    def client(self, key: str = S3_KEY, secret: str = S3_SECRET) -> Any:
        import boto3

        return boto3.client("s3", endpoint_url=self.url, aws_access_key_id=key, aws_secret_access_key=secret,
                            region_name=S3_REGION, verify=str(self.ca_file))

    def stop(self) -> None:
        if self.proc is not None:
            _stop_group(self.proc)
            self.proc = None

    def __enter__(self) -> S3Server:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass
class Cluster:
    """A PostgreSQL 15 data directory and the server on it (socket in `sock`, loopback TCP off)."""

    data: Path
    sock: Path
    port: int = field(default_factory=free_port)
    log: Path | None = None

    def initdb(self) -> Cluster:
        self.data.parent.mkdir(parents=True, exist_ok=True)
        self.sock.mkdir(parents=True, exist_ok=True)
        give_to_postgres(self.data.parent, self.sock)
        run(as_postgres([str(PGBIN / "initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8",
                         "--locale=C.UTF-8", "--data-checksums"]))
        return self

    def configure(self, settings: Mapping[str, str]) -> None:
        base = {"port": str(self.port), "listen_addresses": "", "unix_socket_directories": str(self.sock),
                "max_wal_size": "2GB", "fsync": "on"}
        conf = pbr.settings_conf({**base, **settings})
        with open(self.data / "postgresql.auto.conf", "a") as fh:
            fh.write(conf)

    def start(self, *, port: int | None = None, timeout: int = 600) -> None:
        port = port or self.port
        self.port = port
        log = self.log or self.data.parent / f"{self.data.name}.log"
        run(as_postgres([str(PGBIN / "pg_ctl"), "-D", str(self.data), "-l", str(log), "-o",
                         f"-c port={port} -c unix_socket_directories={self.sock} -c listen_addresses=''",
                         "-w", "-t", str(timeout), "start"]), timeout=timeout + 30)

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            run(as_postgres([str(PGBIN / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop"]), check=False)

    def wait_promoted(self, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.sql("postgres", "select pg_is_in_recovery()") == "f":
                return
            time.sleep(0.2)
        raise RuntimeError("the restored server did not leave recovery")

    def psql_argv(self, db: str) -> list[str]:
        return as_postgres([str(PGBIN / "psql"), "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", "-h", str(self.sock),
                            "-p", str(self.port), "-U", "postgres", "-d", db])

    def sql(self, db: str, query: str, timeout: float = 600) -> str:
        return run(self.psql_argv(db), input=query, timeout=timeout).stdout.strip()

    def run_file(self, db: str, path: Path) -> None:
        run([*self.psql_argv(db), "-f", str(path)], timeout=3600)

    def runtime(self, conf: Path, include: Path, work: Path) -> pbr.Runtime:
        return pbr.Runtime(pg_path=str(self.data), socket_path=str(self.sock), port=self.port, user="postgres",
                           database="postgres", conf=str(conf), include_path=str(include), work=str(work))


def write_pgbackrest(root: Path, *, conf_text: str, credentials: str) -> tuple[Path, Path]:
    """pgbackrest.conf (0600) and its credentials include directory, owned by postgres."""
    conf, include = root / "pgbackrest.conf", root / "pgbackrest-credentials"
    include.mkdir(parents=True, exist_ok=True)
    conf.write_text(conf_text)
    (include / "credentials.conf").write_text(credentials)
    for path in (conf, include / "credentials.conf"):
        path.chmod(0o600)
    (root / "pgbackrest-work").mkdir(exist_ok=True)
    give_to_postgres(conf, include, root / "pgbackrest-work")
    return conf, include


def start_backed_up(root: Path, live: Cluster, s3: S3Server, *, stack: str, bucket: str, backup: PostgresBackup,
                    passphrase: str, settings: Mapping[str, str] | None = None) -> pbr.Runtime:
    """A new cluster archiving to `s3` as a store with backups does: initdb, the rendered
    pgbackrest.conf and credentials under `root`, the rendered archive settings (plus `settings`),
    started. Returns the pgBackRest runtime to call it with."""
    live.initdb()
    runtime = live.runtime(root / "pgbackrest.conf", root / "pgbackrest-credentials", root / "pgbackrest-work")
    conf = pbr.pgbackrest_conf(stack=stack, bucket=bucket, region=S3_REGION, backup=backup, passphrase=passphrase,
                               runtime=runtime, endpoint=s3.endpoint())
    write_pgbackrest(root, conf_text=conf, credentials=pbr.credentials_conf(S3_KEY, S3_SECRET))
    live.configure({**pbr.postgres_settings(backup, runtime), **(settings or {})})
    live.start()
    return runtime


def pgbackrest(runtime: pbr.Runtime, *args: str, timeout: float = 900, check: bool = True,
               env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return run(as_postgres(pbr.pgbackrest_argv(runtime, *args)), timeout=timeout, check=check, env=env)


def info(runtime: pbr.Runtime) -> list[dict[str, Any]]:
    return list(json.loads(pgbackrest(runtime, "info", "--output=json").stdout))


def lab_root(prefix: str) -> Path:
    """A directory the `postgres` user can reach (pytest's tmp dirs are 0700 root)."""
    import tempfile

    root = Path(tempfile.mkdtemp(prefix=prefix))
    root.chmod(0o755)
    return root


def remove(root: Path) -> None:
    shutil.rmtree(root, ignore_errors=True)


TABLE_CHECKSUMS = r"""
SELECT n.nspname || '.' || c.relname AS t FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg_toast%'
ORDER BY 1
"""


def table_checksums(cluster: Cluster, db: str) -> dict[str, tuple[int, str]]:
    """Per table: row count and an md5 over the md5s of its rows' text forms, sorted (order-independent)."""
    tables = [t for t in cluster.sql(db, TABLE_CHECKSUMS).splitlines() if t]
    if not tables:
        return {}
    parts = []
    for t in tables:
        schema, name = t.split(".", 1)
        ident = f'"{schema}"."{name}"'
        literal = t.replace("'", "''")
        parts.append(f"SELECT '{literal}', count(*), coalesce(md5(string_agg(md5(r::text), '' ORDER BY md5(r::text))), '') "
                     f"FROM {ident} AS r")
    out = cluster.sql(db, " UNION ALL ".join(parts) + ";")
    result: dict[str, tuple[int, str]] = {}
    for line in out.splitlines():
        table, count, digest = line.split("|")
        result[table] = (int(count), digest)
    return result


def sequences(cluster: Cluster, db: str) -> dict[str, int]:
    out = cluster.sql(db, "SELECT schemaname || '.' || sequencename, coalesce(last_value, 0) FROM pg_sequences ORDER BY 1")
    return {line.split("|")[0]: int(line.split("|")[1]) for line in out.splitlines() if line}


def peak_rss_children_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024


_RUSAGE = ("import resource, subprocess, sys; rc = subprocess.call(sys.argv[1:]); "
           "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr); sys.exit(rc)")


def measured(argv: Sequence[str], *, timeout: float = 24 * 3600, env: Mapping[str, str] | None = None,
             shell_out: Path | None = None) -> tuple[float, float]:
    """Run `argv`, return (wall seconds, peak RSS in MB of it and every descendant it waited for).

    A small Python parent runs the command and reads its own RUSAGE_CHILDREN: the kernel keeps the
    largest resident set of any waited-for descendant (runuser -> pgbackrest -> its workers)."""
    started = time.monotonic()
    stdout = open(shell_out, "wb") if shell_out else subprocess.DEVNULL  # noqa: SIM115
    try:
        result = subprocess.run([sys.executable, "-c", _RUSAGE, *argv], stdout=stdout, stderr=subprocess.PIPE,
                                timeout=timeout, env={**os.environ, **(env or {})})
    finally:
        if shell_out:
            stdout.close()  # type: ignore[union-attr]
    seconds = time.monotonic() - started
    lines = result.stderr.decode(errors="replace").strip().splitlines()
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[:6])} ... failed ({result.returncode}): {' '.join(lines[-5:])[-1500:]}")
    return seconds, int(lines[-1]) / 1024
