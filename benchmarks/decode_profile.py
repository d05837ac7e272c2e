"""Where a decode step's time goes, dense vs SCAP: OpenVINO's per-node performance counters, by kind of node.

For each (model, weight format, sparsity) folder pair that ``e2e.py`` prepares (same cache), both stateful IRs
are compiled with PERF_COUNT on (otherwise the configuration of e2e: defaults, f32 precision), given the same
PROMPT-token prompt, then stepped one token at a time, dense and SCAP alternating step by step. Per step the
node counters are summed by kind:

  fc          OpenVINO's FullyConnected nodes of the blocks (dense FC on f32 or compressed weights)
  scap        SCAPFullyConnected (an extension op: the CPU plugin's generic Reference node)
  lm_head     the vocabulary projection (dense in both)
  attention   ScaledDotProductAttention and the KV-cache state nodes around it
  other       everything else (norms, rotary, adds, gathers, converts...)

and set against the step's wall time; wall minus the summed node time is what the graph costs outside its
nodes (scheduling, synchronisation points, state handling). Records: model, weight_format, sparsity, variant
(dense|scap), wall_ms, nodes_ms, per-kind ms and node counts (medians over the steps).

usage: python benchmarks/decode_profile.py --json out.json [--formats fp32 int8] [--sparsities 0.3]
"""
from __future__ import annotations

import logging
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from common import parse_or_print_table, publish_records, result_parser  # first: offline settings, checkout on sys.path

import openvino as ov

from scap_ov import assets
from scap_ov.export import IR_XML
from scap_ov.extension import register

import e2e

log = logging.getLogger("scap_ov.decode_profile")
KINDS = ("fc", "scap", "lm_head", "attention", "other")
ATTENTION_TYPES = {"ScaledDotProductAttention", "ScaledDotProductAttentionWithKVCache", "ReadValue", "Assign",
                   "ReadValueWithSubgraph", "Concat"}


FC_GROUPS = {"q_proj": "qkv", "k_proj": "qkv", "v_proj": "qkv", "o_proj": "o", "gate_proj": "gate_up",
             "up_proj": "gate_up", "down_proj": "down"}


def fc_group(node_name: str) -> str | None:
    """qkv / o / gate_up / down for a block FC's node (fused siblings are named after their first FC)."""
    return next((group for module, group in FC_GROUPS.items() if f".{module}/" in node_name), None)


def kind_of(info) -> str:
    if info.node_type == "Reference" and "/scap/" in info.node_name:  # how the plugin runs the extension op
        return "scap"
    if info.node_type.startswith("FullyConnected"):  # FullyConnectedCompressed: int8/int4 weights
        return "lm_head" if "lm_head" in info.node_name else "fc"
    if info.node_type in ATTENTION_TYPES or "ScaledDotProduct" in info.node_type:
        return "attention"
    return "other"


class Stepper:
    """One compiled stateful decoder stepping a fixed prompt one greedy token at a time.

    The CPU plugin reports each node's time averaged over every inference since compilation, so a step's own
    time per node is the difference of the running totals (average x inferences) before and after it.
    """

    def __init__(self, core: ov.Core, folder: Path, threads: int = 0, precision: str = "f32"):
        config = {"PERF_COUNT": True, **e2e.precision_properties(precision),
                  **({"INFERENCE_NUM_THREADS": threads} if threads else {})}
        self.request = core.compile_model(folder / IR_XML, "CPU", config).create_infer_request()
        self.inputs = {port.any_name for port in self.request.model_inputs}
        self.runs = 0
        self.totals: dict[str, float] = {}  # node name -> ms summed over all runs

    def _node_times(self) -> list[tuple[object, float]]:
        """(profiling info, ms in the last run) of every node executed in it."""
        out = []
        for info in self.request.get_profiling_info():
            if info.status != ov.ProfilingInfo.Status.EXECUTED:
                continue
            total = info.real_time.total_seconds() * 1000 * self.runs
            out.append((info, total - self.totals.get(info.node_name, 0.0)))
            self.totals[info.node_name] = total
        return out

    def _feed(self, ids: np.ndarray, past: int) -> np.ndarray:
        n = ids.shape[1]
        feed = {"input_ids": ids, "attention_mask": np.ones((1, past + n), np.int64),
                "position_ids": np.arange(past, past + n, dtype=np.int64)[None],
                "beam_idx": np.zeros(1, np.int32)}
        self.request.infer({k: v for k, v in feed.items() if k in self.inputs})
        self.runs += 1
        return self.request.get_output_tensor(0).data[0, -1]

    def start(self, prompt: np.ndarray) -> None:
        self.request.reset_state()
        self.past = prompt.shape[1]
        self.next = int(np.argmax(self._feed(prompt, 0)))
        self._node_times()

    def step(self) -> dict:
        started = time.perf_counter()
        logits = self._feed(np.array([[self.next]], np.int64), self.past)
        wall = (time.perf_counter() - started) * 1000
        self.past += 1
        self.next = int(np.argmax(logits))
        out = {"wall_ms": wall, "nodes_ms": 0.0}
        out.update({f"{k}_ms": 0.0 for k in KINDS})
        out.update({f"{k}_nodes": 0 for k in KINDS})
        out["by_type"] = {}
        out["by_fc"] = {}
        for info, ms in self._node_times():
            label = f"{info.node_type}:{info.exec_type}"
            out["by_type"][label] = out["by_type"].get(label, 0.0) + ms
            kind = kind_of(info)
            if kind in ("fc", "scap"):
                group = f"{fc_group(info.node_name)}_ms"
                out["by_fc"][group] = out["by_fc"].get(group, 0.0) + ms
            out[f"{kind}_ms"] += ms
            out[f"{kind}_nodes"] += 1
            out["nodes_ms"] += ms
        return out


def profile(variant: e2e.Variant, args, prompt: np.ndarray) -> list[dict]:
    core = register(ov.Core())
    steppers = {kind: Stepper(core, folder, args.threads, args.precision)
                for kind, folder in (("dense", variant.dense), ("scap", variant.scap))}
    samples = {k: [] for k in steppers}
    for stepper in steppers.values():
        stepper.start(prompt)
    for i in range(args.warmup + args.steps):
        for kind in (("dense", "scap") if i % 2 == 0 else ("scap", "dense")):
            record = steppers[kind].step()
            if i >= args.warmup:
                samples[kind].append(record)
    records = []
    for kind, steps in samples.items():
        r = {"model": variant.model, "weight_format": variant.weight_format, "sparsity": variant.sparsity,
             "method": variant.calibration.get("method"), "variant": kind, "steps": len(steps)}
        r.update({key: statistics.median(s[key] for s in steps) for key in steps[0] if not key.startswith("by_")})
        r.update({key: statistics.median(s["by_fc"].get(key, 0.0) for s in steps) for key in steps[0]["by_fc"]})
        labels = {label for s in steps for label in s["by_type"]}
        by_type = {label: statistics.median(s["by_type"].get(label, 0.0) for s in steps) for label in labels}
        r["by_type_ms"] = dict(sorted(by_type.items(), key=lambda kv: -kv[1]))  # node type:implementation
        r["outside_nodes_ms"] = r["wall_ms"] - r["nodes_ms"]
        records.append(r)
    return records


def plot(result: dict, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["records"]
    labels = [f"{r['weight_format']} s={r['sparsity']:g}\n{r['variant']}" for r in rows]
    x = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(max(5, 1.1 * len(rows)), 4.5))
    bottom = np.zeros(len(rows))
    for kind in KINDS + ("outside_nodes",):
        values = np.array([r[f"{kind}_ms"] for r in rows])
        ax.bar(x, values, 0.6, bottom=bottom, label=kind.replace("_", " "))
        bottom += values
    ax.set_xticks(x)
    ax.set_xticklabels(labels, fontsize=7)
    ax.set_ylabel("ms per decode step (median)")
    ax.legend(fontsize=7)
    ax.set_title(f"{result['meta']['model']} decode step, {result['meta']['cpu']}", fontsize=8)
    fig.tight_layout()
    fig.savefig(png, dpi=120)


def table(result: dict) -> str:
    lines = ["| weights | sparsity | variant | step wall ms | block FCs (nodes) | qkv / o / gate_up / down | lm_head "
             "| attention + KV | other (nodes) | outside nodes |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["records"]:
        fc_ms, fc_n = (r["scap_ms"] + r["fc_ms"], r["scap_nodes"] + r["fc_nodes"])
        groups = " / ".join(f"{r.get(g + '_ms', 0.0):.2f}" for g in ("qkv", "o", "gate_up", "down"))
        lines.append(f"| {r['weight_format']} | {r['sparsity']:g} | {r['variant']} | {r['wall_ms']:.2f} | "
                     f"{fc_ms:.2f} ({fc_n:.0f}) | {groups} | {r['lm_head_ms']:.2f} | {r['attention_ms']:.2f} | "
                     f"{r['other_ms']:.2f} ({r['other_nodes']:.0f}) | {r['outside_nodes_ms']:.2f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = result_parser(__doc__)
    ap.add_argument("--work", type=Path, default=assets.cache_dir() / "bench", help="e2e's cache of exported folders")
    ap.add_argument("--model", choices=[e2e.SMOLLM, e2e.SLICE], default=e2e.SMOLLM)
    ap.add_argument("--formats", nargs="*", choices=list(e2e.FORMATS), default=["fp32", "int8"])
    ap.add_argument("--sparsities", nargs="*", type=float, default=[0.3])
    e2e.calibration_arguments(ap)
    ap.add_argument("--slice-layers", type=int, default=2)
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--pair", nargs=2, type=Path, metavar=("DENSE", "SCAP"),
                    help="profile these two folders instead of e2e's (e.g. a dense IR and a SCAP export of it)")
    ap.add_argument("--steps", type=int, default=48)
    ap.add_argument("--warmup", type=int, default=8)
    ap.add_argument("--threads", type=int, default=0, help="INFERENCE_NUM_THREADS of both models (0: plugin default)")
    ap.add_argument("--precision", choices=e2e.PRECISIONS, default="f32", help="INFERENCE_PRECISION_HINT of both models")
    args = parse_or_print_table(ap, argv, table)
    if args is None:
        return 0
    logging.basicConfig(level=logging.INFO, format="decode_profile: %(message)s", stream=sys.stderr)
    e2e.probe_defaults(args, quick=False)
    started = time.time()
    records = []
    if args.pair:
        dense, scap = args.pair
        budget = e2e.Artifact.load(scap / e2e.ARTIFACT_NAME).calibration.get("targets", {})
        plan = [e2e.Variant(args.model, "?", max(budget.values(), default=0.0), dense, scap)]
    else:
        plan = [v for fmt in args.formats
                for v in e2e.prepare(args, args.model, fmt, [0.5] if args.model == e2e.SLICE else args.sparsities)]
    for variant in plan:
        log.info("profile %s %s s=%.2f", variant.model, variant.weight_format, variant.sparsity)
        records += profile(variant, args, e2e.prompt_ids(variant.model, variant.dense, args.prompt_tokens))
    publish_records(args.json, {"threads": os.cpu_count(), "openvino": ov.get_version(), "model": args.model,
                                "prompt_tokens": args.prompt_tokens, "steps": args.steps,
                                "inference_threads": args.threads or "default", "inference_precision": args.precision},
                    records, started, plot, table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
