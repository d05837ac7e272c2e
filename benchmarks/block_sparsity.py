"""Quality cost of block-structured activation sparsity: can kept weight rows be made to come in runs?

A scattered half of a layer's weight rows costs far more than half the DRAM time of all of them on this machine
(benchmarks/row_read.py), so runs of kept rows would make the same sparsity faster. The cheapest way to get runs is
to decide blocks of k consecutive input channels together. This measures what that costs in quality, in torch on
the packaged SmolLM2 (real weights, held-out text), with TEAL-style uniform thresholds on every block FC's input:
per layer, the threshold is the ``--sparsity`` quantile of the block score on calibration tokens (score: |x| for
k = 1, the block's RMS for k > 1), and blocks at or below it are zeroed. Perplexity on windows of *Persuasion*.

usage: python benchmarks/block_sparsity.py --json OUT [--sparsity 0.4] [--blocks 1 4 8 16] [--windows 8]
                                           [--samples 16]
"""
from __future__ import annotations

import math
import sys
import time
from pathlib import Path

from common import parse_or_print_table, publish_records, result_parser  # first: offline settings, checkout on sys.path

from scap_ov import assets
from scap_ov.dataset import token_windows

SAMPLES_PER_CALL = 20000  # block scores kept per FC call for the quantile (a uniform random subset)


def block_score(x, k: int):
    if k == 1:
        return x.abs()
    return x.reshape(*x.shape[:-1], x.shape[-1] // k, k).norm(dim=-1) / math.sqrt(k)


class BlockPruning:
    """Forward pre-hooks on every block Linear (lm_head stays dense): collect block scores, or prune by them."""

    def __init__(self, model):
        import torch

        self.linears = [(n, m) for n, m in model.named_modules()
                        if isinstance(m, torch.nn.Linear) and "lm_head" not in n]
        self.mode, self.k, self.tau, self.scores = None, 1, {}, {}
        for name, module in self.linears:
            module.register_forward_pre_hook(self._hook(name))

    def _hook(self, name):
        import torch

        def hook(_module, args):
            x = args[0]
            if self.mode == "collect":
                s = block_score(x, self.k).reshape(-1)
                self.scores.setdefault(name, []).append(s[torch.randint(0, s.numel(), (SAMPLES_PER_CALL,))])
            elif self.mode == "prune":
                keep = block_score(x, self.k) > self.tau[name]
                return (x * keep.repeat_interleave(self.k, dim=-1),)
            return None

        return hook

    def calibrate(self, k: int, sparsity: float, run, windows) -> None:
        import torch

        widths = {m.in_features for _, m in self.linears}
        if any(w % k for w in widths):
            raise SystemExit(f"block_sparsity: block size {k} does not divide every FC input width {sorted(widths)}")
        self.mode, self.k, self.scores = "collect", k, {}
        run(windows)
        self.tau = {name: torch.quantile(torch.cat(s), sparsity).item() for name, s in self.scores.items()}
        self.mode = "prune"


def table(result: dict) -> str:
    dense = result["meta"]["ppl_dense"]
    lines = ["| block of channels | perplexity | × dense |", "|---|---|---|"]
    for r in result["records"]:
        lines.append(f"| {r['block']} | {r['perplexity']:.2f} | {r['perplexity'] / dense:.3f}× |")
    return "\n".join(lines)


def plot(result: dict, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rs = result["records"]
    fig, ax = plt.subplots(figsize=(4.5, 3.2))
    ax.plot([r["block"] for r in rs], [r["perplexity"] / result["meta"]["ppl_dense"] for r in rs], marker="o")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("channels decided together (block)")
    ax.set_ylabel("perplexity / dense")
    ax.set_title(f"SmolLM2, {result['meta']['sparsity']:.0%} of every block FC input", fontsize=9)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    ap = result_parser(__doc__)
    ap.add_argument("--sparsity", type=float, default=0.4)
    ap.add_argument("--blocks", nargs="*", type=int, default=[1, 4, 8, 16])
    ap.add_argument("--windows", type=int, default=8, help="perplexity windows of 512 tokens")
    ap.add_argument("--samples", type=int, default=16, help="calibration windows of 256 tokens")
    args = parse_or_print_table(ap, argv, table)
    if args is None:
        return 0
    if not 0.0 <= args.sparsity < 1.0 or any(k < 1 for k in args.blocks):
        ap.error("--sparsity must be in [0, 1) and every --blocks value >= 1")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    started = time.time()
    folder = assets.resolve_model("smollm2-135m")
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, torch_dtype=torch.float32).eval()
    calib = token_windows(tokenizer, [assets.novel_text(*assets.CALIBRATION_NOVELS)], 256, args.samples, "calibration")
    held_out = token_windows(tokenizer, [assets.novel_text(assets.PERPLEXITY_NOVEL)], 512, args.windows, "evaluation")

    def perplexity(windows) -> float:
        nll, count = 0.0, 0
        with torch.no_grad():
            for w in windows:
                ids = torch.tensor(w[None], dtype=torch.long)
                logits = model(ids).logits[0, :-1].double()
                nll += torch.nn.functional.cross_entropy(logits, ids[0, 1:], reduction="sum").item()
                count += len(w) - 1
        return math.exp(nll / count)

    pruning = BlockPruning(model)
    ppl_dense = perplexity(held_out)
    records = []
    for k in args.blocks:
        pruning.calibrate(k, args.sparsity, perplexity, calib)
        records.append({"block": k, "sparsity": args.sparsity, "perplexity": perplexity(held_out)})
        pruning.mode = None
        print(f"block {k:3d}: perplexity {records[-1]['perplexity']:.2f} (dense {ppl_dense:.2f})", flush=True)
    publish_records(args.json, {"model": "smollm2-135m", "sparsity": args.sparsity, "ppl_dense": ppl_dense,
                                "ppl_windows_x512": args.windows, "calibration_windows_x256": args.samples},
                    records, started, plot, table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
