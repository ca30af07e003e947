"""Coverage-guided fuzzing of every door (atheris, libFuzzer's engine for Python).

    .venv/bin/python bench/fuzz.py [--seconds 60] [--targets rank,report,...]

Each target runs in its own process for ``--seconds`` under atheris with the
project's code instrumented, so inputs that reach new branches of our decoders
and validators are kept and mutated further. Inputs are structured: the
fuzzer's bytes drive `loopwise.tools.fuzz.build` over the protobuf descriptors
(a structure-aware mutator in the spirit of libprotobuf-mutator; its Python
binding ``atheris-libprotobuf-mutator`` publishes no wheel and needs Bazel to
build, so it is not used), and a share of inputs goes in as raw, possibly
damaged wire bytes.

Targets:

- ``rank`` / ``rewrite`` / ``report``: the gRPC methods through a real server and
  channel (inference with the cold-start model, the collector on a real Tansu
  broker); every refusal must carry a documented status code and details;
- ``attribution``: the miner's record intake (`AttributionAgents._handle`) and window close;
- ``trainer``: the trainer's record intake (`Trainer._ingest`) and row building;
- ``memory``: the inference error memory's intake and a compensated read.

A crash is an uncaught exception or a broken invariant (a refusal without a
reason, UNKNOWN/INTERNAL, a non-finite row reaching training). The last line is
one JSON object: ``{"targets": {name: {"runs", "crashes", "seconds"}}, "runs", "crashes"}``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from loopwise.tools import procs

ROOT = Path(__file__).resolve().parents[1]
TARGETS = ("rank", "rewrite", "report", "attribution", "trainer", "memory")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=int, default=60, help="fuzzing time per target")
    p.add_argument("--targets", default=",".join(TARGETS), help="comma-separated subset of " + ",".join(TARGETS))
    p.add_argument("--target", help=argparse.SUPPRESS)  # the child process: fuzz one target
    args, rest = p.parse_known_args()
    if args.target:
        from _fuzz_targets import fuzz_one

        fuzz_one(args.target, rest)
        return
    results = {}
    for name in [t for t in args.targets.split(",") if t]:
        if name not in TARGETS:
            p.error(f"unknown target {name!r}")
        results[name] = run_target(name, args.seconds)
        print(f"{name}: {results[name]}", flush=True)
    print(json.dumps({"targets": results, "runs": sum(r["runs"] for r in results.values()),
                      "crashes": sum(r["crashes"] for r in results.values())}))


def run_target(name: str, seconds: int) -> dict:
    """One atheris process; its libFuzzer summary gives the run count."""
    with tempfile.TemporaryDirectory(prefix=f"loopwise-fuzz-{name}-") as work:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--target", name,
               f"-max_total_time={seconds}", "-rss_limit_mb=4096", "-timeout=30",
               f"-artifact_prefix={work}/", "-print_final_stats=1"]
        started = time.monotonic()
        pids = Path(work) / "pids"
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "bench"), os.environ.get("PYTHONPATH", "")]),
               "LOOPWISE_FUZZ_PIDS": str(pids)}
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=seconds + 300)
        finally:
            for pid in (pids.read_text().split() if pids.exists() else []):
                procs.stop_pid(int(pid))  # the broker and Redis a gRPC target started
        elapsed = time.monotonic() - started
        out = proc.stdout + proc.stderr
        runs = re.findall(r"stat::number_of_executed_units:\s*(\d+)", out)
        crashes = sorted(Path(work).glob("crash-*")) + sorted(Path(work).glob("timeout-*"))
        failed = proc.returncode != 0 or bool(crashes)
        if failed:
            keep = ROOT / "bench" / "results" / f"fuzz-{name}"
            keep.mkdir(parents=True, exist_ok=True)
            for c in crashes:
                (keep / c.name).write_bytes(c.read_bytes())
            print(out[-4000:], file=sys.stderr)
        return {"runs": int(runs[-1]) if runs else 0, "crashes": max(len(crashes), int(failed)),
                "seconds": round(elapsed, 1)}


if __name__ == "__main__":
    main()
