"""The GPU check: GPU tests, compute-sanitizer, benchmarks -> ``bench/results/<date>-<gpu>.json``.

Run on a GPU machine from a checkout, no install step::

    PYTHONPATH=. python3 -m bench.gpu_check [--quick] [--out DIR] [--only attention,layout]

Steps (each can be skipped: --no-tests, --no-sanitizer, --no-bench):
1. ``pytest -m gpu`` (GPU kernels against the Numba twins) -> passed/failed/skipped (JUnit
   files ``gpu-tests-<shard>.xml`` and the log ``gpu-tests.log`` in --out);
2. ``compute-sanitizer --tool memcheck`` over a small run of the same GPU tests -> errors;
3. every ``bench/bench_*.py`` module's ``run(quick)`` (the ``bench_cpu*`` ones excluded) plus the
   device copy bandwidth -> the benchmark list; a markdown table with the ratios to each peer last.

``--merge FILE`` takes the sections this run skipped from an earlier results file, and adds a
sanitizer run over another test selection (``--sanitizer-args``) to the earlier one's (shards).
``--jobs N`` runs the tests, and the sanitizer, as N concurrent pytest processes each (shard k
takes every N-th selected test from the k-th; ``CUJAGGED_TEST_SHARD``, tests/conftest.py), to
overlap what is expected to be most of their time: host work (Hypothesis, the Numba references,
compiles, memcheck's bookkeeping) beside kernels of milliseconds.

On a cold kernel cache the serial tests (~440 s on an H100) and memcheck (~560 s) no longer fit
one 600-s device call side by side. First try (not yet run on a GPU when written; G =
``python -m bench.gpu_check``; R = the results file the call before wrote, carried back into the
tree)::

    1. $G --quick --jobs 4 --sanitizer-timeout 450 --no-bench --out $OUT/r
    2. $G --quick --no-tests --no-sanitizer --merge R --out $OUT/r

and if shards contend (a shard's TIMEOUT, or GPU memory), the serial recipe of three calls (F =
the file this call's first run writes under $OUT/r, ``<date>-<gpu>.json``, which the second run
updates in place)::

    1. $G --quick --no-sanitizer --no-bench --out $OUT/r
    2. $G --quick --no-tests --no-sanitizer --merge R --out $OUT/r &&
       $G --no-tests --no-bench --merge F --out $OUT/r --sanitizer-args
           "tests/test_attention.py tests/test_attention_sm90.py tests/test_torch_adapter.py"
    3. $G --no-tests --no-bench --merge R --out $OUT/r --sanitizer-args
           "tests --ignore=tests/test_attention.py --ignore=tests/test_attention_sm90.py
            --ignore=tests/test_torch_adapter.py -k 'not huge and not torch and not jax'"
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime
import importlib
import json
import os
import pkgutil
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench.harness import ROOT, git


def environment(gpu: bool = True) -> dict:
    """Commit, dirty flag, device name ("cpu" with ``gpu=False``) and versions."""
    versions = {"python": sys.version.split()[0]}
    name = "cpu"
    if gpu:
        import cupy

        props = cupy.cuda.runtime.getDeviceProperties(0)
        name = props["name"]
        name = name.decode() if isinstance(name, bytes) else name
        versions.update(cupy=cupy.__version__,
                        cuda_runtime=cupy.cuda.runtime.runtimeGetVersion(),
                        driver=cupy.cuda.runtime.driverGetVersion())
    for mod in ("torch", "numba", "numpy", "awkward"):
        try:
            versions[mod] = importlib.import_module(mod).__version__
        except Exception:
            versions[mod] = None
    commit = os.environ.get("CUJAGGED_COMMIT") or git("rev-parse", "--verify", "-q", "HEAD")
    if not re.fullmatch(r"[0-9a-f]{7,40}", commit or ""):
        commit = "unknown"  # e.g. a copy of the tree whose .git has no objects
    dirty_env = os.environ.get("CUJAGGED_DIRTY")
    dirty = (dirty_env == "1") if dirty_env is not None else bool(git("status", "--porcelain"))
    return {"commit": commit, "dirty": dirty, "gpu": name, "versions": versions}


def combine_sanitizer(old: dict, new: dict) -> dict:
    """The sanitizer section of a merged results file: ``new`` alone when ``old`` is empty or
    ran the same test selection (a rerun), ``old`` when this run had none; otherwise both
    shards: errors and test counts added (errors unknown, None, if either shard's are), each
    shard's own record under ``runs``."""
    if not new:
        return old
    if not old or old.get("args") == new.get("args"):
        return new
    runs = [r for r in old.get("runs", [old]) if r.get("args") != new.get("args")] + [new]
    if len(runs) == 1:
        return new
    errs = [r.get("errors") for r in runs]
    counts: dict = {}
    for r in runs:
        for k, v in (r.get("pytest") or {}).items():
            counts[k] = counts.get(k, 0) + v
    return {"errors": None if None in errs else sum(errs), "pytest": counts,
            "seconds": round(sum(r.get("seconds", 0) for r in runs), 1),
            "args": [a for r in runs for a in (r.get("args") or [])], "runs": runs}


def _run_shards(cmd: list[str], env: dict, jobs: int, timeout: float | None = None,
                xml: Path | None = None) -> list[str]:
    """Run ``cmd`` as ``jobs`` concurrent processes (shard k of n: ``CUJAGGED_TEST_SHARD=k/n``,
    tests/conftest.py), each with its own JUnit file ``xml`` -> ``<stem>-k.xml``; the output of
    each. A shard still running ``timeout`` seconds after the start is killed with its process
    group (compute-sanitizer's child too) and its output ends with TIMEOUT."""
    procs = []
    for k in range(jobs):
        shard_env = {**env, "CUJAGGED_TEST_SHARD": f"{k}/{jobs}"} if jobs > 1 else env
        junit = [f"--junitxml={xml.with_name(f'{xml.stem}-{k}.xml')}"] if xml else []
        procs.append(subprocess.Popen(cmd + junit, cwd=ROOT, env=shard_env, text=True,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      start_new_session=True))
    deadline = None if timeout is None else time.time() + timeout
    logs = []
    with ThreadPoolExecutor(jobs) as pool:  # drain every pipe at once (none may fill and block)
        futs = [pool.submit(p.communicate) for p in procs]
        for p, f in zip(procs, futs):
            try:
                left = None if deadline is None else max(deadline - time.time(), 0.0)
                logs.append(f.result(left)[0] or "")
            except concurrent.futures.TimeoutError:
                os.killpg(p.pid, signal.SIGKILL)
                logs.append((f.result()[0] or "") + f"\nTIMEOUT after {timeout} s")
    return logs


def _joined(logs: list[str]) -> str:
    if len(logs) == 1:
        return logs[0]
    return "".join(f"===== shard {k}/{len(logs)} =====\n{log}\n" for k, log in enumerate(logs))


def run_tests(out: Path, extra: list[str], jobs: int = 1) -> dict:
    """``pytest -m gpu`` (Hypothesis profile "gpu"), in ``jobs`` concurrent shards."""
    xml = out / "gpu-tests.xml"
    for old in out.glob("gpu-tests-*.xml"):
        old.unlink()
    cmd = [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider", *extra]
    env = {**os.environ, "HYPOTHESIS_PROFILE": os.environ.get("HYPOTHESIS_PROFILE", "gpu")}
    t0 = time.time()
    logs = _run_shards(cmd, env, jobs, xml=xml)
    (out / "gpu-tests.log").write_text(_joined(logs))
    for log in logs:
        print(log[-6000 // jobs:], flush=True)
    counts = {"passed": 0, "failed": 0, "skipped": 0}
    xmls = sorted(out.glob("gpu-tests-*.xml"))
    for path in xmls:
        for suite in ET.parse(path).getroot().iter("testsuite"):
            tests, skipped = int(suite.get("tests", 0)), int(suite.get("skipped", 0))
            failed = int(suite.get("failures", 0)) + int(suite.get("errors", 0))
            counts["passed"] += tests - skipped - failed
            counts["failed"] += failed
            counts["skipped"] += skipped
    counts["failed"] += jobs - len(xmls)  # a shard that wrote no report (crashed) fails
    counts["seconds"] = round(time.time() - t0, 1)
    if jobs > 1:
        counts["jobs"] = jobs
    return counts


SANITIZER_DEFAULT = ["-k", "not huge and not torch and not jax"]


def run_sanitizer(out: Path, extra: list[str], timeout: float, jobs: int = 1) -> dict:
    """memcheck over the GPU tests (Hypothesis profile "sanitizer": 4 examples a test), in
    ``jobs`` concurrent shards (errors and test counts added)."""
    tool = shutil.which("compute-sanitizer")
    if tool is None:
        return {"errors": None, "note": "compute-sanitizer not found"}
    cmd = [tool, "--tool", "memcheck", "--error-exitcode", "0", sys.executable, "-m", "pytest",
           "-m", "gpu", "-q", "-p", "no:cacheprovider", *(extra or SANITIZER_DEFAULT)]
    env = {**os.environ, "HYPOTHESIS_PROFILE": "sanitizer"}
    t0 = time.time()
    logs = _run_shards(cmd, env, jobs, timeout)
    (out / "sanitizer.log").write_text(_joined(logs))
    errors: int | None = 0
    counts: dict[str, int] = {}
    for log in logs:
        summary = log.strip().splitlines()[-3:] if log.strip() else []
        print("sanitizer:", *summary, sep="\n  ", flush=True)
        m = re.findall(r"ERROR SUMMARY: (\d+) error", log)
        errors = None if errors is None or not m else errors + int(m[-1])
        for v, k in re.findall(r"(\d+) (passed|failed|skipped|deselected)", log):
            counts[k] = counts.get(k, 0) + int(v)
    if jobs > 1:  # each shard deselects the others' tests: count those once
        ran = sum(counts.get(k, 0) for k in ("passed", "failed", "skipped"))
        counts["deselected"] = (counts.get("deselected", 0) - (jobs - 1) * ran) // jobs
    rec = {"errors": errors, "pytest": counts, "seconds": round(time.time() - t0, 1),
           "args": extra or SANITIZER_DEFAULT}
    if jobs > 1:
        rec["jobs"] = jobs
    return rec


def run_benchmarks(quick: bool, only: set[str] | None) -> list[dict]:
    from bench.harness import copy_entry

    results = [copy_entry()]
    import bench

    mods = [m.name for m in pkgutil.iter_modules(bench.__path__)
            if m.name.startswith("bench_") and not m.name.startswith("bench_cpu")
            and (not only or m.name.removeprefix("bench_") in only)]
    try:
        from tqdm import tqdm

        mods = tqdm(sorted(mods), desc="benchmarks", file=sys.stdout)
    except ImportError:
        mods = sorted(mods)
    for mod in mods:
        t0 = time.time()
        try:
            entries = importlib.import_module(f"bench.{mod}").run(quick=quick)
        except Exception as e:  # a broken benchmark must not hide the others
            print(f"{mod}: FAILED {type(e).__name__}: {e}", flush=True)
            results.append({"name": mod, "impl": "error", "params": {}, "error": repr(e)})
            continue
        print(f"{mod}: {len(entries)} entries in {time.time() - t0:.1f} s", flush=True)
        results.extend(entries)
    return results


def _key(e: dict) -> tuple:
    return e["name"], json.dumps(e.get("params", {}), sort_keys=True)


def _speedup(peer: dict, ours: dict) -> str:
    """peer time / our time: device times when both have one, else event times ("ev")."""
    if "gpu_ms" in peer and "gpu_ms" in ours:
        return f"{peer['gpu_ms'] / ours['gpu_ms']:.2f}x"
    return f"{peer['ms'] / ours['ms']:.2f}x ev"


def table(benchmarks: list[dict]) -> str:
    """Markdown: every cujagged entry with its time, rate and speed-up over each peer. Device
    time (``gpu_ms``: launch gaps and host Python removed) where both sides have it, else the
    event time (marked "ev"): a fast kernel's event time can measure the host instead."""
    by_key: dict[tuple, dict[str, dict]] = {}
    for e in benchmarks:
        if "ms" in e:
            by_key.setdefault(_key(e), {})[e["impl"]] = e
    copy = next((e for e in benchmarks if e.get("name") == "copy"), None)
    lines = ["| op | params | cujagged ms device / events | rate | peak MiB | speed-up vs peers |",
             "|---|---|---|---|---|---|"]
    for (name, params), impls in by_key.items():
        ours = impls.get("cujagged")
        if ours is None:
            continue
        p = json.loads(params)
        gbps = ours.get("gbps_gpu", ours.get("gbps"))
        rate = (f"{gbps:.0f} GB/s" if gbps is not None else
                f"{ours['tflops']:.1f} TFLOP/s" if "tflops" in ours else "")
        if gbps is not None and copy:
            rate += f" ({100 * gbps / copy['gbps']:.0f}% copy)"
        peers = ", ".join(f"{k} {_speedup(v, ours)}" for k, v in impls.items()
                          if k != "cujagged")
        short = ",".join(f"{k}={v}" for k, v in p.items())
        dev = f"{ours['gpu_ms']:.4f}" if "gpu_ms" in ours else "-"
        lines.append(f"| {name} | {short} | {dev} / {ours['ms']:.4f} | {rate} | "
                     f"{ours['peak_mib']:.1f} | {peers} |")
    if copy:
        lines.append(f"\ndevice copy: {copy['gbps']:.0f} GB/s (read + write)")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer benchmark shapes")
    ap.add_argument("--out", default=os.environ.get("OUT") or str(ROOT / "bench" / "results"))
    ap.add_argument("--only", default="", help="comma-separated benchmark families")
    ap.add_argument("--no-tests", action="store_true")
    ap.add_argument("--no-sanitizer", action="store_true")
    ap.add_argument("--no-bench", action="store_true")
    ap.add_argument("--pytest-args", default="", help="extra pytest arguments (tests + sanitizer)")
    ap.add_argument("--sanitizer-args", default="", help="pytest arguments for the sanitizer run")
    ap.add_argument("--sanitizer-timeout", type=float, default=420.0)
    ap.add_argument("--jobs", type=int, default=1, help="concurrent pytest processes each for "
                    "the tests and for the sanitizer (shards of the selection; one GPU)")
    ap.add_argument("--merge", default="", help="an earlier results file: the sections this run "
                    "skips, and the benchmarks of ops it does not time, are taken from it")
    args = ap.parse_args(argv)
    if args.jobs < 1:
        ap.error(f"--jobs must be >= 1, got {args.jobs}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    result = environment()
    print(f"GPU check on {result['gpu']} at {result['commit'][:10]}"
          f"{' (dirty)' if result['dirty'] else ''}", flush=True)
    extra = shlex.split(args.pytest_args)
    # the tests and the sanitizer's run of them side by side (two processes on one GPU; each
    # is mostly host time): the check takes the longer of the two, not their sum
    with ThreadPoolExecutor(2) as pool:
        tests = None if args.no_tests else pool.submit(run_tests, out, extra, args.jobs)
        san = None if args.no_sanitizer else pool.submit(
            run_sanitizer, out, shlex.split(args.sanitizer_args), args.sanitizer_timeout,
            args.jobs)
        result["tests"] = tests.result() if tests else {}
        result["sanitizer"] = san.result() if san else {}
    only = {s for s in args.only.split(",") if s} or None
    result["benchmarks"] = [] if args.no_bench else run_benchmarks(args.quick, only)

    if args.merge:
        old = json.loads(Path(args.merge).read_text())
        if old.get("commit") != result["commit"]:
            print(f"--merge: {args.merge} is of commit {old.get('commit')}, not this one")
        if not result["tests"] and old.get("tests"):
            result["tests"] = old["tests"]
        result["sanitizer"] = combine_sanitizer(old.get("sanitizer") or {}, result["sanitizer"])
        # benchmarks of ops this run did not time come from the earlier file, tagged with its
        # commit (use it when only some kernel families changed since)
        ran = {e["name"] for e in result["benchmarks"]}
        result["benchmarks"] += [{**e, "commit": e.get("commit", old.get("commit"))}
                                 for e in old.get("benchmarks", []) if e["name"] not in ran]
    gpu = re.sub(r"[^A-Za-z0-9]+", "-", result["gpu"]).strip("-").lower()
    path = out / f"{datetime.date.today().isoformat()}-{gpu}.json"
    path.write_text(json.dumps(result, indent=1) + "\n")
    print("\n" + table(result["benchmarks"]))
    print(f"\ntests: {result['tests']}\nsanitizer: {result['sanitizer']}\nwrote {path}")
    failed = result["tests"].get("failed", 0) or (result["sanitizer"].get("errors") or 0)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
