#!/usr/bin/env python3
"""Plots end-to-end latency (p50/p95/p99) against offered load from scripts/bench.sh output.

Usage: scripts/plot_latency.py docs/bench/results.jsonl docs/bench/latency.png
Needs matplotlib; installs it into the project's .tools/venv if it is missing.
"""
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VENV_PY = os.path.join(ROOT, ".tools", "venv", "bin", "python")


def ensure_matplotlib():
    try:
        import matplotlib  # noqa: F401
        return sys.executable
    except ImportError:
        pass
    if not os.path.exists(VENV_PY):
        subprocess.check_call([sys.executable, "-m", "venv", os.path.dirname(os.path.dirname(VENV_PY))])
    subprocess.check_call([VENV_PY, "-m", "pip", "install", "--quiet", "matplotlib"])
    return VENV_PY


def main():
    src, dst = sys.argv[1], sys.argv[2]
    py = ensure_matplotlib()
    if py != sys.executable:
        os.execv(py, [py, __file__, src, dst])
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(l) for l in open(src) if l.strip()]
    runs = [r for r in rows if "mode" in r]
    # "rate 250/s for 10000 ms" -> 250: latency is plotted against the load offered.
    offered = lambda r: int(r["mode"].split()[1].rstrip("/s"))
    fixed = sorted((r for r in runs if r["mode"].startswith("rate")), key=offered)
    sat = [r for r in runs if r["mode"].startswith("saturation")]
    x = [offered(r) for r in fixed]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for k in ("p50_ms", "p95_ms", "p99_ms"):
        ax.plot(x, [r[k] for r in fixed], marker="o", label=k.replace("_ms", ""))
    if sat:
        ax.axvline(sat[0]["sagas_per_s"], color="grey", linestyle=":",
                   label=f"saturated throughput {sat[0]['sagas_per_s']:.0f}/s")
    ax.axhline(50, color="red", linestyle="--", alpha=0.5, label="p99 target 50 ms")
    ax.set_yscale("log")
    ax.set_xlabel("offered load (sagas/s)")
    ax.set_ylabel("end-to-end latency (ms)")
    ax.set_title("KRW→USD saga latency vs load (2 cores, one machine)")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(dst, dpi=110)
    print(f"wrote {dst}")


if __name__ == "__main__":
    main()
