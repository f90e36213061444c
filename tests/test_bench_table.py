"""The GPU check's summary table (bench/gpu_check.py) compares device times where both sides have
one and falls back to event times, marked, where a side has none."""

import sys
from pathlib import Path

# bench/ is not installed with the package: found at the end of the path, after the installed
# cujagged
sys.path.append(str(Path(__file__).resolve().parents[1]))
from bench.gpu_check import table  # noqa: E402


def _e(impl, ms, gpu_ms=None, **kw):
    e = {"name": "sum_fwd", "impl": impl, "params": {"B": 2}, "ms": ms, "peak_mib": 0.0, **kw}
    if gpu_ms is not None:
        e["gpu_ms"] = gpu_ms
    return e


def test_table_uses_device_time_when_both_sides_have_it():
    rows = [{"name": "copy", "impl": "copy", "params": {}, "ms": 1.0, "gbps": 1000.0},
            _e("cujagged", 0.5, 0.1, gbps_gpu=800.0),
            _e("peer_dev", 0.6, 0.4),   # device 4x, events 1.2x
            _e("peer_ev", 1.0)]         # events only: 2x, marked
    line = next(ln for ln in table(rows).splitlines() if ln.startswith("| sum_fwd"))
    assert "peer_dev 4.00x" in line and "peer_ev 2.00x ev" in line
    assert "0.1000 / 0.5000" in line and "800 GB/s (80% copy)" in line


def test_check_runs_tests_and_sanitizer_side_by_side_and_merges(tmp_path, monkeypatch):
    """main() runs the two steps concurrently (each waits for the other to have started, so
    a serial run would fail), writes one file with both, and --merge fills the skipped ones."""
    import json
    import threading

    import bench.gpu_check as G

    both = threading.Barrier(2, timeout=10)

    def fake_tests(out, extra, jobs):
        both.wait()
        return {"passed": 3, "failed": 0, "skipped": 0}

    def fake_sanitizer(out, extra, timeout, jobs):
        both.wait()
        return {"errors": 0}

    monkeypatch.setattr(G, "environment", lambda: {"commit": "abc1234", "dirty": False,
                                                    "gpu": "Fake GPU", "versions": {}})
    monkeypatch.setattr(G, "run_tests", fake_tests)
    monkeypatch.setattr(G, "run_sanitizer", fake_sanitizer)
    assert G.main(["--no-bench", "--out", str(tmp_path / "a")]) == 0
    first = next((tmp_path / "a").glob("*-fake-gpu.json"))
    doc = json.loads(first.read_text())
    assert doc["tests"]["passed"] == 3 and doc["sanitizer"]["errors"] == 0

    monkeypatch.setattr(G, "run_benchmarks", lambda quick, only: [
        {"name": "copy", "impl": "copy", "params": {}, "ms": 1.0, "gbps": 1000.0}])
    assert G.main(["--no-tests", "--no-sanitizer", "--merge", str(first),
                   "--out", str(tmp_path / "b")]) == 0
    merged = json.loads(next((tmp_path / "b").glob("*.json")).read_text())
    assert merged["tests"]["passed"] == 3 and merged["sanitizer"]["errors"] == 0
    assert [e["name"] for e in merged["benchmarks"]] == ["copy"]


def test_sanitizer_shards_combine_on_merge():
    """--merge adds a sanitizer run over another test selection (a shard) to the earlier one's;
    a rerun of the same selection replaces it; an unknown error count stays unknown."""
    from bench.gpu_check import combine_sanitizer

    a = {"errors": 0, "pytest": {"passed": 164, "skipped": 4}, "seconds": 174.0, "args": ["x"]}
    b = {"errors": 2, "pytest": {"passed": 109, "skipped": 19}, "seconds": 283.0, "args": ["y"]}
    both = combine_sanitizer(a, b)
    assert both["errors"] == 2 and both["pytest"] == {"passed": 273, "skipped": 23}
    assert both["runs"] == [a, b] and both["seconds"] == 457.0
    assert combine_sanitizer(a, {**a, "errors": 1}) == {**a, "errors": 1}
    assert combine_sanitizer(a, {}) == a and combine_sanitizer({}, b) == b
    assert combine_sanitizer(a, {**b, "errors": None})["errors"] is None
    three = combine_sanitizer(both, {**b, "args": ["z"], "errors": 0})
    assert len(three["runs"]) == 3 and three["pytest"]["passed"] == 382


def test_a_rerun_shard_replaces_its_earlier_run():
    """After a merge of shards x and y, a rerun of y replaces y's record (its errors too)."""
    from bench.gpu_check import combine_sanitizer

    x = {"errors": 0, "pytest": {"passed": 164}, "seconds": 1.0, "args": ["x"]}
    y = {"errors": 2, "pytest": {"passed": 109}, "seconds": 2.0, "args": ["y"]}
    fixed = combine_sanitizer(combine_sanitizer(x, y), {**y, "errors": 0})
    assert fixed["errors"] == 0 and fixed["pytest"] == {"passed": 273}
    assert [r["args"] for r in fixed["runs"]] == [["x"], ["y"]]


def test_jobs_split_the_tests_into_disjoint_shards(tmp_path):
    """--jobs n runs n pytest processes, shard k taking every n-th selected test from the k-th
    (tests/conftest.py): together they run each test of the selection once."""
    import bench.gpu_check as G

    sel = ["tests/test_multi_gpu.py"]  # GPU tests: they run, or skip, in either case quickly
    runs = {}
    for jobs in (1, 3):
        (tmp_path / str(jobs)).mkdir()
        runs[jobs] = G.run_tests(tmp_path / str(jobs), sel, jobs=jobs)
    one, three = ({k: v for k, v in runs[j].items() if k not in ("seconds", "jobs")}
                  for j in (1, 3))
    assert one["passed"] + one["skipped"] > 3 and one["failed"] == 0
    assert three == one and runs[3]["jobs"] == 3
    assert len(list((tmp_path / "3").glob("gpu-tests-*.xml"))) == 3
    assert (tmp_path / "3" / "gpu-tests.log").read_text().count("===== shard ") == 3


def test_sanitizer_shards_add_their_errors_and_counts(tmp_path, monkeypatch):
    """The sanitizer's shards: errors added (unknown if a shard printed no summary), each test
    counted once (every shard deselects the others' tests)."""
    import bench.gpu_check as G

    logs = ["3 passed, 1 skipped, 8 deselected in 1s\n========= ERROR SUMMARY: 0 errors",
            "2 passed, 1 skipped, 9 deselected in 1s\n========= ERROR SUMMARY: 2 errors",
            "3 passed, 8 deselected in 1s\n========= ERROR SUMMARY: 0 errors"]
    monkeypatch.setattr(G.shutil, "which", lambda name: "/bin/compute-sanitizer")
    monkeypatch.setattr(G, "_run_shards", lambda cmd, env, jobs, timeout: logs[:jobs])
    rec = G.run_sanitizer(tmp_path, [], 10.0, jobs=3)
    # 10 tests ran; 8 + 9 + 8 = 25 deselected = 3 x (those -k removed) + 2 x 10
    assert rec["errors"] == 2 and rec["jobs"] == 3
    assert rec["pytest"] == {"passed": 8, "skipped": 2, "deselected": 1}
    logs[2] = "3 passed, 8 deselected in 1s\nTIMEOUT after 10.0 s"
    assert G.run_sanitizer(tmp_path, [], 10.0, jobs=3)["errors"] is None
    assert "===== shard 2/3 =====" in (tmp_path / "sanitizer.log").read_text()
