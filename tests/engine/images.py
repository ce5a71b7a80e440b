"""Test images built from Debian, without any registry, cached by content hash across runs.

`base_image` debootstraps a minimal Debian (the rootfs tarball is cached in `cache_dir`, keyed by a
hash of the debootstrap parameters) and imports it into the engine. `build_all` builds the stand-ins
under `tests/engine/images/<name>/` FROM that base; each tag is a hash of its build context plus the
base tag, so a build is skipped whenever the engine already holds that tag (a warm run costs a few
API calls). An fcntl lock in `cache_dir` keeps two pytest-xdist workers from building the same thing.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import docker
import docker.errors

log = logging.getLogger(__name__)

IMAGES_DIR = Path(__file__).resolve().parent / "images"
REPOSITORY = "mysaaschat-test"
NAMES = ("postgres", "redis", "rabbitmq", "stub")
SUITE = "bookworm"
VARIANT = "minbase"
FALLBACK_MIRROR = "http://deb.debian.org/debian"
# Bump to invalidate every cached rootfs when the way it is made changes.
BASE_RECIPE = "1"


def _say(message: str) -> None:
    log.info(message)
    print(f"[engine-images] {message}", flush=True)


def debian_mirror(apt_dir: Path = Path("/etc/apt")) -> str:
    """The Debian mirror this machine's apt uses for `SUITE` (deb822 `.sources` first, then `sources.list`)."""
    for sources in sorted((apt_dir / "sources.list.d").glob("*.sources")):
        for stanza in re.split(r"\n\s*\n", sources.read_text()):
            fields: dict[str, str] = {}
            for line in stanza.splitlines():
                if line.startswith("#") or ":" not in line or line[:1].isspace():
                    continue
                key, _, value = line.partition(":")
                fields[key.strip().lower()] = value.strip()
            if ("deb" in fields.get("types", "").split() and SUITE in fields.get("suites", "").split()
                    and fields.get("enabled", "yes").lower() != "no"):
                uris = fields.get("uris", "").split()
                if uris:
                    return uris[0].rstrip("/")
    candidates = [apt_dir / "sources.list", *sorted((apt_dir / "sources.list.d").glob("*.list"))]
    for path in candidates:
        if not path.is_file():
            continue
        for line in path.read_text().splitlines():
            words = re.sub(r"\[[^]]*\]", " ", line.split("#", 1)[0]).split()
            if len(words) >= 3 and words[0] == "deb" and words[2] == SUITE:
                return words[1].rstrip("/")
    return FALLBACK_MIRROR


def _digest(*parts: bytes) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(len(part).to_bytes(8, "big"))
        h.update(part)
    return h.hexdigest()[:12]


def context_hash(context: Path, base_tag: str) -> str:
    """A hash of every file of a build context (path, executable bit, content) and the base tag."""
    parts = [base_tag.encode()]
    for path in sorted(p for p in context.rglob("*") if p.is_file()):
        rel = path.relative_to(context).as_posix()
        executable = b"x" if os.access(path, os.X_OK) else b"-"
        parts += [rel.encode(), executable, path.read_bytes()]
    return _digest(*parts)


def _has_image(client: docker.DockerClient, tag: str) -> bool:
    try:
        client.images.get(tag)
    except docker.errors.ImageNotFound:
        return False
    return True


@contextlib.contextmanager
def _locked(cache_dir: Path) -> Iterator[None]:
    cache_dir.mkdir(parents=True, exist_ok=True)
    with (cache_dir / "build.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _rootfs_tarball(cache_dir: Path, mirror: str, key: str) -> Path:
    tarball = cache_dir / f"rootfs-{SUITE}-{VARIANT}-{key}.tar"
    if tarball.exists():
        return tarball
    if shutil.which("debootstrap") is None:
        raise RuntimeError("debootstrap is not installed (apt-get install debootstrap)")
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="rootfs-", dir=cache_dir) as tmp:
        rootfs = Path(tmp) / "rootfs"
        proc = subprocess.run(
            ["debootstrap", f"--variant={VARIANT}", SUITE, str(rootfs), mirror],
            capture_output=True, text=True, check=False,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"debootstrap failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
        # debootstrap leaves its package cache behind; the image does not need it.
        for leftover in (rootfs / "var/cache/apt/archives").glob("*.deb"):
            leftover.unlink()
        partial = tarball.with_suffix(".partial")
        subprocess.run(["tar", "--numeric-owner", "-C", str(rootfs), "-cf", str(partial), "."], check=True)
        partial.rename(tarball)
    _say(f"debootstrap {SUITE} ({VARIANT}) from {mirror}: {time.monotonic() - started:.1f}s -> {tarball.name}")
    return tarball


def base_image(client: docker.DockerClient, cache_dir: Path) -> str:
    """The tag of a minimal Debian image imported from a debootstrap rootfs (cached by its parameters)."""
    mirror = debian_mirror()
    key = _digest(SUITE.encode(), VARIANT.encode(), mirror.encode(), BASE_RECIPE.encode())
    tag = f"{REPOSITORY}/debian:{SUITE}-{key}"
    if _has_image(client, tag):
        return tag
    with _locked(cache_dir):
        if _has_image(client, tag):  # another worker imported it while we waited
            return tag
        tarball = _rootfs_tarball(cache_dir, mirror, key)
        started = time.monotonic()
        repository, _, version = tag.rpartition(":")
        client.api.import_image(src=str(tarball), repository=repository, tag=version,
                                changes=['CMD ["/bin/bash"]', "ENV LANG=C.UTF-8"])
        _say(f"import {tag}: {time.monotonic() - started:.1f}s")
    return tag


def _mirror_hosts() -> dict[str, str]:
    """The engine forwards every name it does not know to 127.0.0.1 (daemon.py `--dns`), so a build's
    apt could not resolve the mirror: the mirror's address, resolved here, goes into the build's
    /etc/hosts (`docker build --add-host`, docker SDK `extra_hosts`). Nothing else resolves."""
    import socket
    import urllib.parse

    host = urllib.parse.urlparse(debian_mirror()).hostname
    if not host:
        return {}
    try:
        return {host: socket.gethostbyname(host)}
    except OSError:
        return {}


def _build(client: docker.DockerClient, name: str, base_tag: str) -> str:
    context = IMAGES_DIR / name
    tag = f"{REPOSITORY}/{name}:{context_hash(context, base_tag)}"
    if _has_image(client, tag):
        return tag
    started = time.monotonic()
    try:
        client.images.build(
            path=str(context), tag=tag, buildargs={"BASE": base_tag}, network_mode="host",
            rm=True, forcerm=True, pull=False, labels={"com.mysaaschat.test-image": name},
            extra_hosts=_mirror_hosts(),
        )
    except docker.errors.BuildError as err:
        tail = "".join(str(chunk.get("stream", chunk.get("error", ""))) for chunk in err.build_log)[-4000:]
        raise RuntimeError(f"building {name} failed: {err.msg}\n{tail}") from err
    _say(f"build {tag}: {time.monotonic() - started:.1f}s")
    return tag


def build_all(client: docker.DockerClient, cache_dir: Path) -> dict[str, str]:
    """Logical name ("postgres", "redis", "rabbitmq", "stub", and "base") -> image tag, building what is missing."""
    started = time.monotonic()
    base = base_image(client, cache_dir)
    tags = {"base": base}
    wanted = {name: f"{REPOSITORY}/{name}:{context_hash(IMAGES_DIR / name, base)}" for name in NAMES}
    if all(_has_image(client, tag) for tag in wanted.values()):
        tags.update(wanted)
    else:
        with _locked(cache_dir):
            for name in NAMES:
                tags[name] = _build(client, name, base)
    _say(f"build_all: {time.monotonic() - started:.2f}s")
    return tags
