"""Loading of the CUDA C sources in ``cuda_src/``.

Each kernel family (one ``.cu`` file) is declared once as a :class:`KernelFamily` with the list of
template instantiations (NVRTC name expressions) it can be asked for. At run time
:meth:`KernelFamily.get` compiles one instantiation for the current device through
``cupy.RawModule`` and caches it per (instantiation, device); CuPy's own disk cache keeps the
cubins across processes. Local ``#include "x.cuh"`` lines are inlined here, so the cache key (the
source text) changes whenever a header changes.

:func:`compile_all` compiles every declared instantiation for a given architecture through
``cupy.cuda.nvrtc`` — no GPU needed — and returns the ptxas resource report of each kernel.
"""

from __future__ import annotations

import ctypes
import dataclasses
import functools
import hashlib
import os
import re
import struct
import threading
from pathlib import Path

import numpy as np

from ._backend import cupy

__all__ = ["Kernel", "KernelFamily", "KernelCompileError", "KernelReport", "compile_all",
           "source_dir"]

_FAMILIES: dict[str, KernelFamily] = {}
_INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"\s*$', re.MULTILINE)
_BASE_OPTIONS = ("-std=c++17",)


class KernelCompileError(RuntimeError):
    """NVRTC rejected a source in ``cuda_src/``; the message holds the file name and the log."""


_TLS = threading.local()  # per thread: parameter blocks by argument count
_F32 = struct.Struct("<f")
_U32 = struct.Struct("<I")
_M64 = (1 << 64) - 1


def _param_block(n: int):
    """(slots, pointers): n 8-byte parameter slots and the array of their addresses that
    cuLaunchKernel reads (reused by this thread's launches; the driver copies the values)."""
    blocks = getattr(_TLS, "blocks", None)
    if blocks is None:
        blocks = _TLS.blocks = {}
    b = blocks.get(n)
    if b is None:
        slots = (ctypes.c_uint64 * n)()
        base = ctypes.addressof(slots)
        b = blocks[n] = (slots, (ctypes.c_void_p * n)(*(base + 8 * i for i in range(n))))
    return b


class Kernel:
    """One compiled kernel on one device. Calling it, ``kernel(grid, block, args,
    shared_mem=0)``, launches through the driver on the current stream with the arguments
    written into one reused parameter block (8 bytes per argument): about a third of the host
    time of CuPy's per-argument conversion, which dominated small launches. Arguments: CuPy
    arrays, ``None`` (a null pointer) and NumPy ``int32``/``int64``/``uint64``/``float32``
    scalars, matching the kernel's parameter types. ``raw`` is the ``cupy.RawKernel``."""

    __slots__ = ("raw", "ptr", "_smem")

    def __init__(self, raw):
        self.raw = raw
        self.ptr = raw.kernel.ptr  # the CUfunction on the current device (loads the module)
        self._smem = None  # the dynamic shared memory it may take (read on first need)

    @property
    def max_dynamic_shared_size_bytes(self) -> int:
        return self.raw.max_dynamic_shared_size_bytes

    @max_dynamic_shared_size_bytes.setter
    def max_dynamic_shared_size_bytes(self, n: int) -> None:
        self.raw.max_dynamic_shared_size_bytes = n
        self._smem = n

    def allow_shared(self, n: int) -> None:
        """Let launches take ``n`` bytes of dynamic shared memory (past 48 KB with the kernel's
        static shared memory, an opt-in); one driver call per new maximum."""
        if self._smem is None:
            self._smem = self.raw.max_dynamic_shared_size_bytes
        if n > self._smem:
            self.max_dynamic_shared_size_bytes = n

    def __call__(self, grid, block, args, shared_mem: int = 0) -> None:
        slots, ptrs = _param_block(len(args))
        for i, a in enumerate(args):
            t = type(a)
            if t is cupy.ndarray:
                slots[i] = a.data.ptr
            elif a is None:
                slots[i] = 0
            elif t is np.int64 or t is np.uint64 or t is np.int32:
                slots[i] = int(a) & _M64  # int32: the kernel reads the low 4 bytes
            elif t is np.float32:
                slots[i] = _U32.unpack(_F32.pack(a))[0]
            elif isinstance(a, cupy.ndarray):
                slots[i] = a.data.ptr
            else:
                raise TypeError(f"kernel argument {i}: unsupported type {t.__name__}")
        gx, gy, gz = (*grid, 1, 1)[:3]
        bx, by, bz = (*block, 1, 1)[:3]
        cupy.cuda.driver.launchKernel(self.ptr, gx, gy, gz, bx, by, bz, shared_mem,
                                      cupy.cuda.get_current_stream().ptr,
                                      ctypes.addressof(ptrs), 0)


def pow2_at_least(n: int) -> int:
    """The smallest power of two >= ``n`` (1 for ``n <= 1``): block and tile sizes."""
    return 1 << max(int(n) - 1, 0).bit_length()


@functools.cache
def source_dir() -> Path:
    """The ``cuda_src`` folder: inside the installed package, or beside it in a checkout."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "cuda_src", here.parent / "cuda_src"):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"cuda_src/ not found next to {here} (broken install?)")


@functools.cache
def _read_source(name: str) -> str:
    """The text of ``cuda_src/<name>`` with local ``#include "..."`` lines inlined (each once)."""
    seen: set[str] = set()

    def expand(fname: str) -> str:
        if fname in seen:
            return ""
        seen.add(fname)
        path = source_dir() / fname
        if not path.is_file():
            raise KernelCompileError(f"cuda_src/{fname} not found")
        text = path.read_text()
        return _INCLUDE.sub(lambda m: expand(m.group(1)), text)

    return f'#line 1 "{name}"\n' + expand(name)


@dataclasses.dataclass(frozen=True)
class KernelReport:
    """ptxas resource usage of one kernel instantiation."""

    source: str
    name: str
    arch: str
    registers: int
    spill_stores: int
    spill_loads: int
    stack_frame: int
    shared_bytes: int


class KernelFamily:
    """All instantiations of the kernels of one ``cuda_src/<source>`` file.

    Args:
        source: file name inside ``cuda_src/``.
        name_expressions: every template instantiation callers may ask for, e.g.
            ``"to_padded<uint4, int64_t>"``; :func:`compile_all` compiles all of them.
        options: extra NVRTC options (``-std=c++17`` is always there).
        register: list it for :func:`compile_all` (tests of the loader itself pass False).
    """

    def __init__(self, source: str, name_expressions, options=(), *, arch: str | None = None,
                 register: bool = True):
        self.source = source
        self.name_expressions = tuple(dict.fromkeys(name_expressions))
        self.options = _BASE_OPTIONS + tuple(options)
        self.arch = arch
        self._cache: dict[tuple[str, int], object] = {}
        if register:
            _FAMILIES[source] = self

    def supported(self) -> bool:
        """Whether the current device can run this family (an arch-specific family such as
        ``arch="sm_90a"`` runs only on that compute capability)."""
        if self.arch is None:
            return True
        cc = cupy.cuda.Device().compute_capability
        return self.arch.removeprefix("sm_").rstrip("a") == cc

    def get(self, name: str) -> Kernel:
        """The :class:`Kernel` of instantiation ``name`` on the current device, compiled once."""
        if name not in self.name_expressions:
            raise KeyError(f"{self.source}: {name!r} is not a declared instantiation")
        key = (name, cupy.cuda.Device().id)
        kernel = self._cache.get(key)
        if kernel is None:
            raw = self._load_arch_specific(name) if self.arch else self._load(name)
            kernel = self._cache[key] = Kernel(raw)
        return kernel

    def _load(self, name: str):
        try:
            module = cupy.RawModule(code=_read_source(self.source), options=self.options,
                                    name_expressions=(name,))
            return module.get_function(name)
        except cupy.cuda.compiler.CompileException as e:
            raise KernelCompileError(
                f"NVRTC failed on cuda_src/{self.source} ({name}):\n{e.get_message()}"
            ) from None

    def _load_arch_specific(self, name: str):
        """CuPy always compiles for the device's plain arch (sm_90, never sm_90a): compile the
        cubin here and keep it in a content-addressed file that CuPy loads."""
        if not self.supported():
            raise RuntimeError(f"cuda_src/{self.source} needs {self.arch}, the device is "
                               f"sm_{cupy.cuda.Device().compute_capability}")
        from cupy.cuda import nvrtc

        text = _read_source(self.source)
        tag = "\0".join([text, name, self.arch, *self.options, str(nvrtc.getVersion())])
        cache = Path(os.environ.get("CUJAGGED_CACHE_DIR", Path.home() / ".cache" / "cujagged"))
        path = cache / (hashlib.sha256(tag.encode()).hexdigest() + ".cubin")
        lowered_path = path.with_suffix(".name")
        if not (path.exists() and lowered_path.exists()):
            cubin, _, lowered = self._nvrtc(self.arch, (name,), verbose=False)
            cache.mkdir(parents=True, exist_ok=True)
            # written whole then renamed: processes sharing the cache never read a partial file
            for dst, data in ((path, cubin), (lowered_path, next(iter(lowered)).encode())):
                tmp = dst.with_suffix(f"{dst.suffix}.tmp{os.getpid()}")
                tmp.write_bytes(data)
                tmp.replace(dst)
        return cupy.RawModule(path=str(path)).get_function(lowered_path.read_text())

    def _nvrtc(self, arch: str, names, verbose: bool):
        """(cubin, log, {lowered name: name expression}) of ``names`` compiled for ``arch``."""
        from cupy.cuda import nvrtc

        prog = nvrtc.createProgram(_read_source(self.source), self.source, [], [])
        try:
            for ne in names:
                nvrtc.addNameExpression(prog, ne)
            opts = [*self.options, f"--gpu-architecture={arch}"] + (["-Xptxas=-v"] if verbose
                                                                     else [])
            try:
                nvrtc.compileProgram(prog, opts)
            except nvrtc.NVRTCError:
                raise KernelCompileError(
                    f"NVRTC failed on cuda_src/{self.source} for {arch}:\n"
                    f"{nvrtc.getProgramLog(prog)}"
                ) from None
            log = nvrtc.getProgramLog(prog)
            lowered = {nvrtc.getLoweredName(prog, ne): ne for ne in names}
            return nvrtc.getCUBIN(prog), log, lowered
        finally:
            nvrtc.destroyProgram(prog)

    def compile_report(self, arch: str = "sm_90") -> list[KernelReport]:
        """Compile every instantiation for ``arch`` (no GPU needed); ptxas report per kernel.
        An arch-specific family compiles for its own arch when ``arch`` is its base (sm_90a
        for sm_90) and reports nothing for other archs."""
        if self.arch is not None:
            if self.arch.rstrip("a") != arch:
                return []
            arch = self.arch
        _, log, lowered = self._nvrtc(arch, self.name_expressions, verbose=True)
        return _parse_ptxas(log, self.source, arch, lowered)


_ENTRY = re.compile(r"Compiling entry function '(\S+)' for '(\w+)'")
_FRAME = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_REGS = re.compile(r"Used (\d+) registers")
_SMEM = re.compile(r"(\d+) bytes smem")


def _parse_ptxas(log: str, source: str, arch: str, mangled: dict[str, str]) -> list[KernelReport]:
    reports, current = [], None
    for line in log.splitlines():
        if m := _ENTRY.search(line):
            current = {"name": mangled.get(m.group(1), m.group(1)), "smem": 0}
        elif current is None:
            continue
        elif m := _FRAME.search(line):
            current["frame"] = tuple(int(g) for g in m.groups())
        elif m := _REGS.search(line):
            current["regs"] = int(m.group(1))
            if m := _SMEM.search(line):
                current["smem"] = int(m.group(1))
            stack, stores, loads = current.get("frame", (0, 0, 0))
            reports.append(
                KernelReport(source, current["name"], arch, current["regs"], stores, loads, stack,
                             current["smem"])
            )
            current = None
    return reports


def families() -> dict[str, KernelFamily]:
    """Every declared kernel family, by source file (importing the package declares them all)."""
    import cujagged  # noqa: F401  (declares every family)

    return dict(_FAMILIES)


def compile_all(arch: str = "sm_90") -> list[KernelReport]:
    """Compile every instantiation of every family for ``arch``; raise on any NVRTC error."""
    return [r for fam in families().values() for r in fam.compile_report(arch)]
