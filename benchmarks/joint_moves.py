"""Can measuring the whole allocation improve on greedy's? From a greedy export's group targets, each group is moved
one level up and one level down, the other groups scaled in proportion so the pruned FC-weight bytes stay on the
budget, and the next-token loss of the whole pruned model is measured on the calibration windows greedy probed.

Each move is compared with the allocation itself window by window (paired: same windows, same tokens), so the
standard error is that of the difference. A joint-measurement refinement of the allocation (take the best move,
repeat) only helps if some move is clearly below zero: this tells whether that is the case at greedy's probe size.
Thresholds are greedy's: zero-centred, from the calibration windows' histograms on the dense model.

usage: python benchmarks/joint_moves.py --json OUT --folder GREEDY_EXPORT [--step 0.1] [--windows 16] [--tokens 256]
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from common import parse_or_print_table, result_parser  # first: offline settings, checkout on sys.path
from probe_transfer import dense_setup, measure_and_publish, probe_arguments
from scap_ov.calibration.algorithm import Centre
from scap_ov.calibration.allocation import SensitivityProbe, load_allocation, make_groups

MAX_LEVEL = 0.9


def moved(levels: dict[str, float], nbytes: dict[str, int], group: str, delta: float) -> dict[str, float] | None:
    """``levels`` with ``group`` moved by ``delta`` and the others scaled to keep the pruned bytes; None when the
    move leaves [0, MAX_LEVEL]."""
    new = {**levels, group: round(levels[group] + delta, 6)}
    if not 0.0 <= new[group] <= MAX_LEVEL:
        return None
    others = sum(levels[g] * nbytes[g] for g in levels if g != group)
    scale = (sum(levels[g] * nbytes[g] for g in levels) - new[group] * nbytes[group]) / others
    return {g: new[g] if g == group else min(MAX_LEVEL, levels[g] * scale) for g in levels}


def measure(args) -> dict:
    model, fcs, windows, stats = dense_setup(args.model, args.windows, args.tokens)
    groups = make_groups(fcs, args.blocks_per_group)
    levels, budget = load_allocation(args.folder)
    nbytes = {g.name: g.nbytes for g in groups}
    centre = Centre(0.0)
    probe = SensitivityProbe(model, fcs, {fc.name: 0.0 for fc in fcs}, windows["calibration"], loss="nll")

    def loss_increase(lv: dict[str, float]) -> np.ndarray:  # per window, nats per token
        taus = {fc.name: centre.solve(stats[fc.name], lv[g.name], False)[0] for g in groups for fc in g.fcs
                if lv[g.name] > 0}
        return probe.nll_increase(taus) / (args.tokens - 1)

    base = loss_increase(levels)
    print(f"allocation: {base.mean():+.5f} ± {base.std(ddof=1) / np.sqrt(len(base)):.5f}", file=sys.stderr)
    records = []
    for group in groups:
        for delta in (args.step, -args.step):
            lv = moved(levels, nbytes, group.name, delta)
            if lv is None:
                continue
            diff = loss_increase(lv) - base
            records.append({"group": group.name, "delta": delta, "loss_change": float(diff.mean()),
                            "standard_error": float(diff.std(ddof=1) / np.sqrt(len(diff))),
                            "levels": {g: round(v, 4) for g, v in lv.items()}})
            print(f"{group.name} {delta:+.2f}: {records[-1]['loss_change']:+.5f} ± "
                  f"{records[-1]['standard_error']:.5f}", file=sys.stderr, flush=True)
    return {"records": records, "allocation": levels, "budget": budget, "allocation_loss_increase": float(base.mean()),
            "allocation_standard_error": float(base.std(ddof=1) / np.sqrt(len(base)))}


def table(result: dict) -> str:
    by_key = {(r["group"], r["delta"]): r for r in result["records"]}
    steps = sorted({d for _, d in by_key}, reverse=True)
    lines = ["| group | level | " + " | ".join(f"move {d:+.1f} (nats/token)" for d in steps) + " |",
             "|---|---|" + "---|" * len(steps)]
    for group, level in result["allocation"].items():
        cells = [f"{by_key[(group, d)]['loss_change']:+.4f} ± {by_key[(group, d)]['standard_error']:.4f}"
                 if (group, d) in by_key else "–" for d in steps]
        lines.append(f"| {group} | {level:.1f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(result: dict, png) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["records"]
    fig, ax = plt.subplots(figsize=(7, 0.3 * len(rows) + 1.5))
    y = np.arange(len(rows))
    ax.errorbar([r["loss_change"] for r in rows], y, xerr=[2 * r["standard_error"] for r in rows], fmt="o", capsize=2)
    ax.axvline(0.0, color="k", lw=0.8)
    ax.set_yticks(y, [f"{r['group']} {r['delta']:+.1f}" for r in rows])
    ax.set_xlabel("whole-model loss change vs the allocation\n(nats/token, ± 2 paired SE)")
    ax.set_title(f"{result['meta']['model']}: moves from greedy's allocation at {result['budget']:.2f}")
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    ap = result_parser(__doc__)
    ap.add_argument("--folder", type=Path, help="a greedy export (its folder or artifact): the allocation to move")
    probe_arguments(ap, "calibration windows (greedy's probe default)")
    ap.add_argument("--step", type=float, default=0.1, help="how far each group moves")
    args = parse_or_print_table(ap, argv, table)
    if args is None:
        return 0
    if args.folder is None:
        ap.error("--folder is required to measure")
    return measure_and_publish(args, measure, plot, table)


if __name__ == "__main__":
    sys.exit(main())
