"""Do the greedy allocation's probe costs hold on held-out text? Per group of the allocation and sparsity level:
the next-token loss increase (nats per token) from pruning only that group, measured on calibration windows (what
the allocation ranks by) and on as many windows of held-out text, each with its standard error over windows.

Thresholds are the allocation's own: zero-centred, from the calibration windows' histograms on the dense model.
The costs are what `--method greedy` (loss nll) measures; if they did not transfer, the allocation would fit the
calibration text rather than the model.

usage: python benchmarks/probe_transfer.py --json OUT [--levels 0.2 0.4 0.6] [--windows 16] [--tokens 256]
"""
from __future__ import annotations

import sys
import time

import numpy as np
import openvino as ov

from common import cpu_name, parse_or_print_table, publish, result_parser  # first: offline settings, checkout on sys.path
from scap_ov import assets
from scap_ov.calibration import statistics
from scap_ov.calibration.algorithm import Centre
from scap_ov.calibration.allocation import SensitivityProbe, make_groups
from scap_ov.dataset import calibration_dataset, load_texts, token_windows
from scap_ov.export import IR_XML, dense_ir
from scap_ov.layers import require_fcs
from scap_ov.pipeline import calibration_texts, load_tokenizer

TEXTS = ("calibration", "held_out")


def dense_setup(model_name: str, windows: int, tokens: int):
    """(model, FCs, token windows per text, per-FC input statistics of the calibration windows on the dense model):
    what greedy's probes start from (also benchmarks/joint_moves.py)."""
    ir = dense_ir(model_name)
    tokenizer = load_tokenizer(ir)
    model = ov.Core().read_model(ir / IR_XML)
    fcs = require_fcs(model)
    texts = {"calibration": token_windows(tokenizer, calibration_texts(None), tokens, windows, "calibration"),
             "held_out": token_windows(tokenizer, load_texts(None, (assets.PERPLEXITY_NOVEL,)), tokens, windows,
                                       "evaluation")}
    inputs = {name for port in model.inputs for name in port.get_names()}
    stats = statistics.collect(model, {fc.name: fc.node_name for fc in fcs},
                               calibration_dataset(texts["calibration"], inputs), windows)
    return model, fcs, texts, stats


def measure(args) -> dict:
    model, fcs, windows, stats = dense_setup(args.model, args.windows, args.tokens)
    centre = Centre(0.0)
    groups = make_groups(fcs, args.blocks_per_group)
    records = []
    for text in TEXTS:
        probe = SensitivityProbe(model, fcs, {fc.name: 0.0 for fc in fcs}, windows[text], loss="nll")
        for group in groups:
            for level in args.levels:
                taus = {fc.name: centre.solve(stats[fc.name], level, False)[0] for fc in group.fcs}
                per_token = probe.nll_increase(taus) / (args.tokens - 1)
                records.append({"group": group.name, "level": level, "text": text,
                                "loss_increase": float(per_token.mean()),
                                "standard_error": float(per_token.std(ddof=1) / np.sqrt(len(per_token)))})
                print(f"{text} {group.name} {level:.2f}: {records[-1]['loss_increase']:+.5f} "
                      f"± {records[-1]['standard_error']:.5f}", file=sys.stderr, flush=True)
    return {"records": records}


def pairs(result: dict) -> list[tuple[str, float, dict, dict]]:
    by_key = {(r["group"], r["level"], r["text"]): r for r in result["records"]}
    return [(g, lv, by_key[(g, lv, "calibration")], by_key[(g, lv, "held_out")])
            for g, lv, text in by_key if text == "calibration" and (g, lv, "held_out") in by_key]


def table(result: dict) -> str:
    lines = ["| group | level | calibration text (nats/token) | held-out text (nats/token) |", "|---|---|---|---|"]
    for group, level, cal, held in pairs(result):
        lines.append(f"| {group} | {level:.1f} | {cal['loss_increase']:+.4f} ± {cal['standard_error']:.4f} | "
                     f"{held['loss_increase']:+.4f} ± {held['standard_error']:.4f} |")
    return "\n".join(lines)


def plot(result: dict, png) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 6))
    rows = pairs(result)
    for kind in sorted({g.split("@")[0] for g, *_ in rows}):
        sel = [(c, h) for g, _, c, h in rows if g.split("@")[0] == kind]
        ax.errorbar([c["loss_increase"] for c, _ in sel], [h["loss_increase"] for _, h in sel],
                    xerr=[c["standard_error"] for c, _ in sel], yerr=[h["standard_error"] for _, h in sel],
                    fmt="o", label=kind, capsize=2)
    lo = min(min(c["loss_increase"], h["loss_increase"]) for _, _, c, h in rows)
    hi = max(max(c["loss_increase"], h["loss_increase"]) for _, _, c, h in rows)
    ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
    ax.set_xscale("symlog", linthresh=0.002)
    ax.set_yscale("symlog", linthresh=0.002)
    ax.set_xlabel("loss increase on calibration text (nats/token)")
    ax.set_ylabel("loss increase on held-out text (nats/token)")
    ax.set_title(f"{result['meta']['model']}: one group pruned at a time")
    ax.legend()
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    plt.close(fig)


def probe_arguments(ap, windows_help: str) -> None:
    """The model and probe-window arguments of the probe benchmarks (this one and joint_moves.py)."""
    ap.add_argument("--model", default=assets.DEFAULT_MODEL)
    ap.add_argument("--windows", type=int, default=16, help=windows_help)
    ap.add_argument("--tokens", type=int, default=256, help="tokens per window")
    ap.add_argument("--blocks-per-group", type=int, default=10)


def measure_and_publish(args, measure, plot, table) -> int:
    started = time.time()
    result = measure(args)
    result["meta"] = {"date": time.strftime("%Y-%m-%d %H:%M:%S"), "cpu": cpu_name(), "model": args.model,
                      "command": "python " + " ".join(sys.argv), "windows": args.windows, "tokens": args.tokens,
                      "seconds": round(time.time() - started, 1)}
    publish(args.json, result, plot, table)
    return 0


def main(argv=None) -> int:
    ap = result_parser(__doc__)
    probe_arguments(ap, "windows per text")
    ap.add_argument("--levels", nargs="*", type=float, default=[0.2, 0.4, 0.6])
    args = parse_or_print_table(ap, argv, table)
    if args is None:
        return 0
    return measure_and_publish(args, measure, plot, table)


if __name__ == "__main__":
    sys.exit(main())
