"""Scattered-row read ceiling: how much DRAM time does reading only the kept rows of a cold weight matrix save?

The one-token decode of SCAPFullyConnected streams the kept input channels' weight rows (input-channel-major
packing) of a layer whose weights start every token in DRAM. Its ratio to OpenVINO's dense FC is bounded below by
the ratio of two plain reads on the same memory system: the kept rows (random, ascending) against the whole matrix.
This builds ``row_read.cpp`` (no OpenVINO, no arithmetic beyond an XOR per 64-byte line), runs it on the row shapes
of the measured models, and reports per call (one matrix, threads meeting at a barrier as consecutive op calls do,
matrices cycled over a working set larger than the last-level cache):

  us_per_call   time to read the kept rows, best and median over sweeps
  read_ratio    that time / the time to read every row (keep 1) with the same prefetch strategy, same run

for three software-prefetch strategies: none, ``ahead`` (each row's lines 8 rows ahead into L2, like the op's
distance prefetch) and ``head`` (all of a thread's kept rows into L2 at the start of the call, like the op's head
start). A read_ratio near 1 at keep 0.5 means that on this machine skipping half of the rows of that shape saves
no DRAM time at all: no kernel can turn that sparsity into speed.

usage: python benchmarks/row_read.py --json OUT [--quick] [--shapes ROWSxROW_BYTES ...] [--keeps 1 0.5 0.3]
                                     [--threads 2] [--working-set-mib 128] [--sweeps 9]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import parse_or_print_table, publish_records, result_parser  # first: offline settings, checkout on sys.path

SOURCE = Path(__file__).with_name("row_read.cpp")
# (label, rows = input channels, row bytes = output channels x bytes per weight)
SHAPES = {
    "SmolLM2 o int8 (576x576)": (576, 576),
    "SmolLM2 down int8 (1536x576)": (1536, 576),
    "SmolLM2 qkv int8 (576x960)": (576, 960),
    "SmolLM2 gate_up int8 (576x3072)": (576, 3072),
    "SmolLM2 o int4 (576x576)": (576, 288),
    "7B int4 (4096x4096)": (4096, 2048),
    "7B int8 (4096x4096)": (4096, 4096),
}
QUICK_SHAPES = ("SmolLM2 o int8 (576x576)", "SmolLM2 down int8 (1536x576)", "7B int4 (4096x4096)")


def build(workdir: Path) -> Path:
    """Compile row_read.cpp with the C++ compiler set-up requires (``$CXX`` or c++); -march=native: AVX-512."""
    cxx = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")
    if not cxx:
        raise SystemExit("row_read: no C++ compiler found (set CXX)")
    binary = workdir / "row_read"
    cmd = [cxx, "-O2", "-march=native", "-std=c++20", "-pthread", str(SOURCE), "-o", str(binary)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"row_read: {' '.join(cmd)} failed:\n{done.stderr}")
    return binary


def run_shape(binary: Path, rows: int, row_bytes: int, keeps: list[float], threads: int, mib: int,
              sweeps: int) -> list[dict]:
    keep_arg = ",".join(f"{k:g}" for k in sorted(set(keeps) | {1.0}, reverse=True))
    done = subprocess.run([str(binary), str(rows), str(row_bytes), str(threads), str(mib), str(sweeps), keep_arg],
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"row_read: probe failed: {done.stderr.strip()}")
    records = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    full = {r["prefetch"]: r for r in records if r["keep"] >= 1.0}
    for r in records:
        base = full[r["prefetch"]]
        r["read_ratio_best"] = round(r["us_per_call_best"] / base["us_per_call_best"], 3)
        r["read_ratio_median"] = round(r["us_per_call_median"] / base["us_per_call_median"], 3)
        r.pop("check", None)
    return records


def table(result: dict) -> str:
    lines = ["| shape | keep | none: µs / read ratio | ahead: µs / read ratio | head: µs / read ratio |",
             "|---|---|---|---|---|"]
    by_key: dict[tuple, dict[str, dict]] = {}
    for r in result["records"]:
        by_key.setdefault((r["shape"], r["keep"]), {})[r["prefetch"]] = r
    for (shape, keep), cells in by_key.items():
        if keep >= 1.0:
            parts = [f"{cells[p]['us_per_call_median']:.1f}" for p in ("none", "ahead", "head")]
        else:
            parts = [f"{cells[p]['us_per_call_median']:.1f} / {cells[p]['read_ratio_median']:.2f}"
                     for p in ("none", "ahead", "head")]
        lines.append(f"| {shape} | {keep:g} | " + " | ".join(parts) + " |")
    return "\n".join(lines)


def plot(result: dict, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shapes = list(dict.fromkeys(r["shape"] for r in result["records"]))
    cols = min(4, len(shapes))
    rows = (len(shapes) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.0 * rows), sharey=True, squeeze=False)
    for ax in axes.flat[len(shapes):]:
        ax.set_visible(False)
    for ax, shape in zip(axes.flat, shapes):
        for prefetch in ("none", "ahead", "head"):
            pts = sorted((r["keep"], r["read_ratio_median"]) for r in result["records"]
                         if r["shape"] == shape and r["prefetch"] == prefetch)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=prefetch)
        ax.plot([0, 1], [0, 1], color="gray", linestyle=":", label="ideal")
        ax.set_title(shape, fontsize=8)
        ax.set_xlabel("kept fraction of rows")
        ax.set_xlim(0, 1.05)
        ax.set_ylim(0, 1.6)
    for row in axes:
        row[0].set_ylabel("read time / full read")
    axes[0][0].legend(fontsize=7)
    fig.suptitle(f"Scattered-row reads from DRAM, {result['meta']['threads']} threads ({result['meta']['cpu']})",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)


def shape_arg(text: str) -> tuple[str, tuple[int, int]]:
    rows, _, row_bytes = text.lower().partition("x")
    if not (rows.isdigit() and row_bytes.isdigit()) or int(rows) < 1 or int(row_bytes) < 64:
        raise argparse.ArgumentTypeError(f"shape {text!r} is not ROWSxROW_BYTES with ROWS >= 1 and ROW_BYTES >= 64")
    return f"{rows}x{row_bytes} B", (int(rows), int(row_bytes))


def main(argv=None) -> int:
    ap = result_parser(__doc__)
    ap.add_argument("--quick", action="store_true", help=f"only {', '.join(QUICK_SHAPES)}; 5 sweeps")
    ap.add_argument("--shapes", nargs="*", type=shape_arg, default=None, help="ROWSxROW_BYTES (instead of the models')")
    ap.add_argument("--keeps", nargs="*", type=float, default=[0.65, 0.5, 0.3])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--working-set-mib", type=int, default=128)
    ap.add_argument("--sweeps", type=int, default=None)
    args = parse_or_print_table(ap, argv, table)
    if args is None:
        return 0
    if any(not 0.0 < k <= 1.0 for k in args.keeps):
        ap.error("--keeps must be in (0, 1]")
    shapes = dict(args.shapes) if args.shapes else (
        {k: SHAPES[k] for k in QUICK_SHAPES} if args.quick else SHAPES)
    sweeps = args.sweeps or (5 if args.quick else 9)
    started = time.time()
    records = []
    with tempfile.TemporaryDirectory() as tmp:
        binary = build(Path(tmp))
        for label, (rows, row_bytes) in shapes.items():
            for r in run_shape(binary, rows, row_bytes, args.keeps, args.threads, args.working_set_mib, sweeps):
                records.append({"shape": label, **r})
                print(f"{label:34s} keep {r['keep']:.2f} {r['prefetch']:5s}: {r['us_per_call_median']:8.1f} us/call "
                      f"(best {r['us_per_call_best']:.1f}), read ratio {r['read_ratio_median']:.2f}", flush=True)
    publish_records(args.json, {"threads": args.threads, "working_set_mib": args.working_set_mib, "sweeps": sweeps},
                    records, started, plot, table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
