"""Cold `synth` timings: the prod stack, and synthetic catalogs of 10, 100 and 1000 services.

Every run is a fresh process (`python -m ops synth ...`): imports, validation, the program under
the strict mocks, and writing the output. Synthetic catalogs clone the real services round-robin
(new names, ports and route prefixes) and run against the staging stack file.

    python -m bench.synth_bench [--runs 5] [--sizes 10,100,1000]

Targets (2 cores): prod <= 2 s; 1000 services <= 15 s; per-service cost at 1000 <= 1.3x that at 100.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def synthetic_catalog(size: int) -> dict:
    real = yaml.safe_load((ROOT / "config" / "catalog.yaml").read_text())["services"]
    names = sorted(real)
    services = {}
    for i in range(size):
        base = copy.deepcopy(real[names[i % len(names)]])
        base["port"] = 10000 + i
        if base["kind"] == "web":
            base["routes"] = [{"prefix": f"/api/s{i}", "kind": base["routes"][0]["kind"]}]
        base.pop("depends_on", None)
        services[f"{names[i % len(names)]}-{i}"] = base
    return {"services": services}


def timed(cmd: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, env=env, check=True, capture_output=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--sizes", default="10,100,1000")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="synth-bench-"))
    base_env = {k: v for k, v in os.environ.items() if k != "MY_SAAS_CHAT_CATALOG"}
    cmd = [sys.executable, "-m", "ops", "synth"]
    results: dict[str, float] = {}
    prod = [timed([*cmd, "prod", "--out", str(work / "prod")], base_env) for _ in range(args.runs)]
    results["prod"] = statistics.median(prod)
    print(f"prod: median {results['prod']:.2f} s over {args.runs} cold runs ({', '.join(f'{t:.2f}' for t in prod)})")
    for size in (int(s) for s in args.sizes.split(",")):
        catalog = work / f"catalog-{size}.yaml"
        catalog.write_text(yaml.safe_dump(synthetic_catalog(size)))
        env = {**base_env, "MY_SAAS_CHAT_CATALOG": str(catalog)}
        runs = [timed([*cmd, "staging", "--out", str(work / f"s{size}")], env) for _ in range(args.runs)]
        results[str(size)] = statistics.median(runs)
        print(f"{size} services: median {results[str(size)]:.2f} s ({', '.join(f'{t:.2f}' for t in runs)}), "
              f"{results[str(size)] / size * 1000:.1f} ms/service")
    if "100" in results and "1000" in results:
        # Per-service cost net of the fixed cost (interpreter, imports, host resources): the 10-service run.
        fixed = results.get("10", 0.0)
        per100 = (results["100"] - fixed) / 90
        per1000 = (results["1000"] - fixed) / 990
        print(f"marginal cost per service: {per100 * 1000:.1f} ms at 100, {per1000 * 1000:.1f} ms at 1000 "
              f"(ratio {per1000 / per100:.2f}; target <= 1.3)")


if __name__ == "__main__":
    main()
