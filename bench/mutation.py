"""Mutation run: does the suite catch a regression *after* the snapshots and docs bless it?

`python -m bench.mutation [--jobs 2] [--only ID ...] [--json] [--list]`

For each hand-made regression in `bench/mutants.py` (a source edit over components/, render/,
config/ or ops/), a scratch copy of the working tree is made under the system temp directory,
the edit applied, then, as a contributor who trusted the README would do:

    python -m ops synth --all --out tests/snapshots   # bless the change
    python -m ops docs
    python -m pytest -x -q -p no:cacheprovider -m "not engine" tests/test_*.py

The files run in a fixed order (quick graph checks first, real servers last); every file runs
for a survivor. The mutant is killed when the suite fails. A synth or docs run that fails also counts as killed
(the contributor could not bless it), and is reported as such. Each mutant's processes run in
their own session and the whole group is killed at the end (a real server a test started never
outlives it); each copy is removed. The unmutated tree is run the same way first: if it fails,
nothing is counted.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

from bench.mutants import MUTANTS, Mutant

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("components", "render", "config", "ops")
TIMEOUT = 600
PYTEST = ["-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "-m", "not engine"]
# Every test file runs for a survivor; the order only makes a kill come sooner (`-x`): the broad,
# quick checks of the recorded graph first, the real servers (RabbitMQ takes 15 s) last.
FIRST = ("test_promises.py", "test_graph.py", "test_canonical.py", "test_cloud_init.py", "test_host.py",
         "test_container_rules.py", "test_config_errors.py", "test_runtime_config.py", "test_config_corpus.py",
         "test_secrets.py", "test_strict_mocks.py", "test_snapshots.py", "test_stores.py")
LAST = ("test_healthchecks.py",)


def test_files(root: Path) -> list[str]:
    present = sorted(p.name for p in (root / "tests").glob("test_*.py"))
    rest = [n for n in present if n not in FIRST and n not in LAST]
    return [f"tests/{n}" for n in (*(n for n in FIRST if n in present), *rest, *(n for n in LAST if n in present))]


@dataclass
class Result:
    id: str
    file: str
    status: str  # killed | survived | killed-by-synth | timeout | baseline
    seconds: float
    why: str
    detail: str = ""


def tracked_files() -> list[str]:
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                         check=True, capture_output=True).stdout.decode()
    return [p for p in out.split("\0") if p and (ROOT / p).is_file()]


def stale(mutants: Sequence[Mutant]) -> list[str]:
    problems = []
    for m in mutants:
        count = (ROOT / m.file).read_text().count(m.old)
        if count != 1:
            problems.append(f"{m.id}: the old text occurs {count} times in {m.file}")
        if m.file.split("/")[0] not in PACKAGES:
            problems.append(f"{m.id}: {m.file} is outside {', '.join(PACKAGES)}")
    ids = [m.id for m in mutants]
    problems += [f"{i}: duplicate id" for i in sorted({i for i in ids if ids.count(i) > 1})]
    return problems


_LIVE: set[int] = set()  # process groups running now, stopped if the run itself is stopped


def _stop_all(*_: object) -> None:
    for pgid in list(_LIVE):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
    raise SystemExit(130)


def _sweep(marker: str) -> None:
    """Kill what a run left in sessions of its own (a test's server whose test was killed with its
    pytest): every process whose environment carries the run's marker."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            if marker.encode() in (proc / "environ").read_bytes().split(b"\0"):
                os.kill(int(proc.name), signal.SIGKILL)
        except (OSError, ValueError):
            continue


def _run(cmd: list[str], cwd: Path, deadline: float) -> tuple[int | None, str]:
    """Run in a new session; afterwards (or on timeout) kill the whole process group, and whatever
    it started in sessions of its own."""
    marker = f"BENCH_MUTATION_RUN={os.getpid()}-{time.monotonic_ns()}"
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "PYTEST_ADDOPTS": "", marker.split("=")[0]: marker.split("=")[1]}
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    _LIVE.add(proc.pid)
    try:
        out, _ = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
        code: int | None = proc.returncode
    except subprocess.TimeoutExpired:
        code, out = None, b""
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        _sweep(marker)
        _LIVE.discard(proc.pid)
    return code, out.decode(errors="replace")


def run_one(mutant: Mutant | None, files: list[str]) -> Result:
    start = time.monotonic()
    deadline = start + TIMEOUT
    scratch = Path(tempfile.mkdtemp(prefix="mutant-"))
    try:
        for rel in files:
            target = scratch / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, target)
        if mutant is not None:
            path = scratch / mutant.file
            path.write_text(path.read_text().replace(mutant.old, mutant.new, 1))
        ident, file, why = (mutant.id, mutant.file, mutant.why) if mutant else ("(unmutated)", "", "baseline")
        py = sys.executable
        for step in ([py, "-m", "ops", "synth", "--all", "--out", "tests/snapshots"], [py, "-m", "ops", "docs"]):
            code, out = _run(step, scratch, deadline)
            if code != 0:
                status = "timeout" if code is None else "killed-by-synth"
                last = out.strip().splitlines()[-1] if out.strip() else ""
                return Result(ident, file, status, time.monotonic() - start, why, last)
        code, out = _run([py, *PYTEST, *test_files(scratch)], scratch, deadline)
        status = "timeout" if code is None else "survived" if code == 0 else "killed"
        failed = next((line for line in out.splitlines() if line.startswith(("FAILED", "ERROR"))), "")
        return Result(ident, file, status, time.monotonic() - start, why, failed)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.mutation", description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2, help="mutants run at once (default 2: one per core)")
    parser.add_argument("--only", nargs="*", default=None, help="run only these mutant ids")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument("--list", action="store_true", help="list the mutants and exit")
    args = parser.parse_args(argv)
    mutants = [m for m in MUTANTS if args.only is None or m.id in args.only]
    if args.list:
        for m in mutants:
            print(f"{m.id:28} {m.file:26} {m.why}")
        return 0
    problems = stale(mutants)
    if problems:
        print("stale mutants:\n" + "\n".join(problems), file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _stop_all)
    signal.signal(signal.SIGINT, _stop_all)
    files = tracked_files()
    started = time.monotonic()
    baseline = run_one(None, files)
    if baseline.status != "survived":
        print(f"the unmutated tree does not pass ({baseline.status}): {baseline.detail}", file=sys.stderr)
        return 2
    results: list[Result] = []
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        for result in pool.map(lambda m: run_one(m, files), mutants):
            results.append(result)
            if not args.json:
                print(f"{result.status:15} {result.seconds:6.1f}s {result.id:28} {result.detail[:100]}", flush=True)
    killed = [r for r in results if r.status in ("killed", "killed-by-synth")]
    survivors = [r for r in results if r not in killed]
    elapsed = time.monotonic() - started
    by_package = {p: sum(1 for m in mutants if m.file.startswith(p + "/")) for p in PACKAGES}
    summary = {"mutants": len(results), "killed": len(killed),
               "ratio": round(len(killed) / len(results), 4) if results else 0.0,
               "seconds": round(elapsed, 1), "by_package": by_package,
               "survivors": [asdict(r) for r in survivors]}
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(f"\n{len(killed)}/{len(results)} killed ({summary['ratio']:.1%}) in {elapsed:.0f} s; "
              f"mutants per package: {by_package}")
        for r in survivors:
            print(f"SURVIVED {r.id} ({r.file}): {r.why} [{r.status}]")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
