"""Plot a GPU-check results file: time and peak memory against fill ratio, cujagged vs peers.

    python -m bench.plot bench/results/<date>-<gpu>.json   # writes <same name>.png beside it
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path


def plot(path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = json.loads(path.read_text())
    # series: (op, params other than fill) -> impl -> [(fill, ms, peak)]
    series: dict[tuple, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    for e in data["benchmarks"]:
        p = dict(e.get("params", {}))
        if "fill" not in p or "ms" not in e:
            continue
        fill = p.pop("fill")
        for derived in ("T", "mean_len"):  # follow from the fill: not part of the series
            p.pop(derived, None)
        key = (e["name"], json.dumps(p, sort_keys=True))
        series[key][e["impl"]].append((fill, e["ms"], e.get("peak_mib", 0.0)))
    series = {k: v for k, v in series.items() if any(len(s) > 1 for s in v.values())}
    if not series:
        raise SystemExit(f"{path}: no benchmark swept over fill")
    fig, axes = plt.subplots(len(series), 2, figsize=(11, 3.2 * len(series)), squeeze=False)
    for row, ((name, params), impls) in zip(axes, sorted(series.items())):
        for impl, pts in sorted(impls.items()):
            pts.sort()
            f, ms, mib = zip(*pts)
            style = dict(marker="o", lw=2.5 if impl == "cujagged" else 1.2)
            row[0].plot(f, ms, label=impl, **style)
            row[1].plot(f, mib, label=impl, **style)
        short = ", ".join(f"{k}={v}" for k, v in json.loads(params).items())
        row[0].set(xlabel="fill ratio", ylabel="ms (events, 10 calls back to back)", yscale="log")
        row[0].set_title(f"{name}\n{short}", fontsize=9)
        row[1].set(title="peak extra memory", xlabel="fill ratio", ylabel="MiB")
        row[0].legend(fontsize=7)
        for ax in row:
            ax.grid(alpha=0.3)
    fig.suptitle(f"cujagged on {data['gpu']} ({data['commit'][:10]})")
    fig.tight_layout()
    out = path.with_suffix(".png")
    fig.savefig(out, dpi=90)
    return out


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit("usage: python -m bench.plot bench/results/<date>-<gpu>.json [...]")
    for arg in sys.argv[1:]:
        print(plot(Path(arg)))
