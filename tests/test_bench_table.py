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
