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
    fixed = sorted((r for r in runs if r["mode"].startswith("rate")), key=lambda r: r["sagas_per_s"])
    sat = [r for r in runs if r["mode"].startswith("saturation")]
    x = [r["sagas_per_s"] for r in fixed] + [r["sagas_per_s"] for r in sat]
    series = {k: [r[k] for r in fixed] + [r[k] for r in sat] for k in ("p50_ms", "p95_ms", "p99_ms")}
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for k, v in series.items():
        ax.plot(x, v, marker="o", label=k.replace("_ms", ""))
    if sat:
        ax.axvline(sat[0]["sagas_per_s"], color="grey", linestyle=":", label="saturation")
    ax.set_xlabel("achieved throughput (sagas/s)")
    ax.set_ylabel("end-to-end latency (ms)")
    ax.set_title("KRW→USD saga latency vs load (2 cores, one machine)")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(dst, dpi=110)
    print(f"wrote {dst}")


if __name__ == "__main__":
    main()
