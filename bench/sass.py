"""SASS of one kernel instantiation, on a machine without a GPU: NVRTC's PTX through ptxas, then
nvdisasm. Needs ``pip install nvidia-cuda-nvcc-cu12 nvidia-cuda-nvdisasm`` (ptxas and nvdisasm;
nvdisasm 13 reads ptxas 12's cubins, not NVRTC's own).

    python -m bench.sass attention:_FAM90 "bf16_t, 128, 1, 32, 3" [--arch sm_90a] [-DX=1 ...]

Prints the register / spill report, the instruction mix and the static length of the loop with
the most tensor-core instructions; writes the listing to ``/tmp/<kernel>.sass``.
"""

from __future__ import annotations

import collections
import importlib
import re
import subprocess
import sys
from pathlib import Path


def _tool(name: str) -> str:
    import nvidia

    for root in nvidia.__path__:
        hits = sorted(Path(root).glob(f"*/bin/{name}"))
        if hits:
            return str(hits[-1])
    raise SystemExit(f"{name} not found: pip install nvidia-cuda-nvcc-cu12 nvidia-cuda-nvdisasm")


def sass(family: str, name_part: str, arch: str | None = None, options=()) -> str:
    """The SASS listing of the first instantiation of ``module:FAMILY`` whose name contains
    ``name_part``."""
    from cupy.cuda import nvrtc

    from cujagged._kernels import _read_source

    mod, _, attr = family.partition(":")
    fam = getattr(importlib.import_module(f"cujagged.{mod}"), attr or "_FAM")
    name = next(n for n in fam.name_expressions if name_part in n)
    arch = arch or fam.arch or "sm_90"
    prog = nvrtc.createProgram(_read_source(fam.source), fam.source, [], [])
    try:
        nvrtc.addNameExpression(prog, name)
        nvrtc.compileProgram(prog, [*fam.options, *options,
                                    f"--gpu-architecture={arch.replace('sm_', 'compute_')}"])
        ptx = nvrtc.getPTX(prog)
    finally:
        nvrtc.destroyProgram(prog)
    tmp = Path("/tmp") / re.sub(r"[^A-Za-z0-9]+", "_", name).strip("_")
    tmp.with_suffix(".ptx").write_text(ptx if isinstance(ptx, str) else ptx.decode())
    r = subprocess.run([_tool("ptxas"), "-v", f"-arch={arch}", str(tmp.with_suffix(".ptx")),
                        "-o", str(tmp.with_suffix(".cubin"))], capture_output=True, text=True,
                       check=True)
    report = [ln.split(":", 1)[-1].strip() for ln in r.stderr.splitlines()
              if "registers" in ln or "spill" in ln][:2]
    out = subprocess.run([_tool("nvdisasm"), "-c", str(tmp.with_suffix(".cubin"))],
                         capture_output=True, text=True, check=True).stdout
    tmp.with_suffix(".sass").write_text(out)
    print(name, "|", " | ".join(report), "|", tmp.with_suffix(".sass"))
    return out


def summary(listing: str, top: int = 15) -> None:
    lines = listing.splitlines()
    instr = [ln for ln in lines if re.match(r"\s+/\*[0-9a-f]+\*/", ln)]
    ops = collections.Counter(
        re.sub(r"^\s+/\*[0-9a-f]+\*/\s+(@!?U?P\w+\s+)?", "", ln).split()[0].split(".")[0]
        for ln in instr)
    print(f"{len(instr)} instructions:", ", ".join(f"{k} {v}" for k, v in ops.most_common(top)))
    labels = {m.group(1): i for i, ln in enumerate(lines)
              if (m := re.match(r"^\.(L_x_\d+):", ln.strip()))}
    best = None
    for i, ln in enumerate(lines):  # backward branches: loops
        m = re.search(r"BRA `\(\.(L_x_\d+)\)", ln)
        if m and labels.get(m.group(1), i) < i:
            body = lines[labels[m.group(1)]:i + 1]
            mma = sum("MMA" in x for x in body)
            n = sum(bool(re.match(r"\s+/\*[0-9a-f]+\*/", x)) for x in body)
            if best is None or (mma, n) > best[:2]:
                best = (mma, n)
    if best:
        print(f"loop with the most MMA instructions: {best[0]} MMA, {best[1]} instructions")


if __name__ == "__main__":
    args = sys.argv[1:]
    arch = args[args.index("--arch") + 1] if "--arch" in args else None
    opts = [a for a in args if a.startswith("-D")]
    pos = [a for i, a in enumerate(args) if not a.startswith("-") and
           (i == 0 or args[i - 1] != "--arch")]
    summary(sass(pos[0], pos[1], arch, opts))
