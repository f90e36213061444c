"""Every kernel instantiation compiles with NVRTC for sm_80 and sm_90, without spills (no GPU)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

import cujagged
from cujagged._kernels import families, source_dir

if not os.environ.get("CI"):  # CI installs CuPy and must compile; elsewhere CuPy is optional
    pytest.importorskip("cupy")


@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
def test_every_kernel_compiles_without_spills(arch):
    reports = cujagged.compile_all(arch)
    declared = sum(len(f.name_expressions) for f in families().values()
                   if f.arch is None or f.arch.rstrip("a") == arch)
    assert len(reports) >= declared > 0
    spills = [r for r in reports if r.spill_stores or r.spill_loads]
    assert not spills, "kernels spill registers:\n" + "\n".join(map(str, spills))


def test_sources_found_from_checkout_and_install(tmp_path):
    assert (source_dir() / "common.cuh").is_file()
    repo = Path(__file__).resolve().parents[1]
    code = "from cujagged._kernels import source_dir; print(source_dir())"
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                         text=True, env={**os.environ, "PYTHONPATH": str(repo)}, check=True)
    assert Path(out.stdout.strip()) == repo / "cuda_src"


def test_compile_error_names_file_and_log(tmp_path, monkeypatch):
    from cujagged import _kernels

    (tmp_path / "broken.cu").write_text("__global__ void k() { this is not C++; }\n")
    monkeypatch.setattr(_kernels, "source_dir", lambda: tmp_path)
    _kernels._read_source.cache_clear()
    fam = _kernels.KernelFamily("broken.cu", ["k"], register=False)
    with pytest.raises(cujagged.KernelCompileError, match="broken.cu"):
        fam.compile_report("sm_90")
    _kernels._read_source.cache_clear()


def test_allow_shared_asks_the_driver_once_per_new_maximum():
    from cujagged._kernels import Kernel

    class Raw:  # a RawKernel's attribute, counting the driver calls that set it
        kernel = type("F", (), {"ptr": 1})()
        sets = []
        max_dynamic_shared_size_bytes = 48 * 1024 - 256

        def __setattr__(self, name, n):
            self.sets.append(n)
            object.__setattr__(self, name, n)

    k = Kernel(Raw())
    for n in (0, 40 * 1024, 75 * 1024, 60 * 1024, 75 * 1024, 100 * 1024):
        k.allow_shared(n)
    assert Raw.sets == [75 * 1024, 100 * 1024]
    assert k.max_dynamic_shared_size_bytes == 100 * 1024
