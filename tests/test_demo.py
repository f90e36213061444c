"""``python -m cujagged`` runs end to end on the CPU backend and prints its table."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def _run(*args, timeout=300):
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", "cujagged", *args], capture_output=True,
                          text=True, timeout=timeout, env=env, cwd=ROOT)


def test_demo_cpu_small_prints_table_and_agrees():
    r = _run("--cpu", "--batch", "24", "--max-len", "40", "--dim", "64", "--heads", "2",
             "--strict")
    assert r.returncode == 0, r.stdout + r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith("cujagged") and "CPU" in lines[0]
    assert "B=24" in r.stdout and "max_len=40" in r.stdout
    header = next(i for i, ln in enumerate(lines) if ln.startswith("op "))
    assert "jagged ms" in lines[header] and "padded MiB" in lines[header]
    body = []
    for ln in lines[header + 2:]:
        if not ln.strip():
            break
        body.append(ln.split())
    names = [b[0] for b in body] + [ln.split()[1].rstrip(":") for ln in lines
                                     if ln.startswith("note:") and "skipped" in ln]
    # every op is either measured or listed as skipped
    for op in ("to_padded", "from_padded", "sum(axis=1)", "softmax", "attention"):
        assert any(n.startswith(op) for n in names), (op, r.stdout)
    for b in body:
        assert b[-1] == "ok", r.stdout  # the jagged result matches the padded way
        assert float(b[1]) > 0 and np.isfinite(float(b[1]))


def test_demo_rejects_bad_arguments():
    r = _run("--cpu", "--dim", "10", "--heads", "3")
    assert r.returncode == 2 and "--heads" in r.stderr
    for flag in ("--batch", "--max-len"):  # 0 is not "the default"
        r = _run("--cpu", flag, "0")
        assert r.returncode == 2 and flag in r.stderr, r.stderr
