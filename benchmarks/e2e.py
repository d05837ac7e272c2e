"""End-to-end decode benchmark: dense vs SCAP tokens/s and prefill latency, per weight format, through
openvino.genai and optimum-intel, with perplexity recorded next to every speed.

Models:
  smollm2-135m  the real packaged model, at the sparsities swept (the <= 5 % perplexity point is marked)
  llama7b-slice Llama-2-7B layer dimensions (hidden 4096, MLP 11008, 32 heads), a few layers, random weights
                and a 4096-token vocabulary so FC weight traffic dominates as in the full 7B model; thresholds
                calibrated to 50 % on its own inputs (random token ids). Its perplexity means nothing (null).
The dense baseline of each weight format is the same compressed model without SCAP (``export_dense``), and
the SCAP model is exported from exactly that folder, so both read identical weights. Both run with OpenVINO's
default CPU configuration (threads, dynamic quantization of the dense compressed FC), as a user gets them, except
the inference precision, pinned to f32 (``--precision``): the op computes in f32, and on a CPU with AVX512_BF16 or
AMX OpenVINO's default is bf16, which would run the dense model's FCs (and every other node) in bf16 on bf16 copies
of fp32 weights: another weight format. ``--precision default`` measures what the loaders give each folder by
default: the plugin's choice for the dense one, f32 for the SCAP one (scap_ov.integrations.SCAP_FOLDER_PROPERTIES).
Dense and SCAP runs alternate (ABAB.. with the order flipped every repetition); medians are reported.

decode tok/s = 1000 / time per output token (genai: PerfMetrics TPOT; optimum: (t(N) - t(1)) / (N - 1));
prefill = time to first token for a PROMPT-token prompt (genai TTFT, with no KV-cache reuse between calls; optimum:
generate 1 token). The prompt is
held-out text (Northanger Abbey) for SmolLM2, random token ids for the slice.
Exports are cached under --work (default $SCAP_OV_CACHE/bench) so reruns only measure; a SCAP folder fused by
an older pass B (fusion_version in its rt_info) is rebuilt from its own artifact.

usage: python benchmarks/e2e.py --json out.json [--quick]
"""
from __future__ import annotations

import gc
import logging
import os
import platform
import shutil
import statistics
import sys
import time
from functools import cached_property
from pathlib import Path

import numpy as np

from common import cpu_name, parse_or_print_table, publish, result_parser  # first: offline settings, checkout on sys.path

import openvino as ov

from scap_ov import assets
from scap_ov.artifact import ARTIFACT_NAME, Artifact
from scap_ov.compression import WeightFormat
from scap_ov.config import AUTO_METHOD, METHODS, CalibrationConfig, parse_targets
from scap_ov.export import IR_XML, dense_ir, is_ir_folder
from scap_ov.extension import register
from scap_ov.fsutil import atomic_output_dir
from scap_ov.pipeline import evaluate_folder, export_dense, export_scap

log = logging.getLogger("scap_ov.e2e")
SLICE = "llama7b-slice"
SMOLLM = assets.DEFAULT_MODEL
SLICE_VOCAB = 4096
FORMATS = {"fp32": WeightFormat("fp32"), "int8": WeightFormat("int8", sym=True), "int4": WeightFormat("int4", sym=True)}


def build_slice(out: Path, layers: int) -> Path:
    """A dense stateful IR folder of a Llama-2-7B-shaped model with ``layers`` blocks and random weights."""
    import torch
    from optimum.exporters.openvino import export_from_model
    from transformers import LlamaConfig, LlamaForCausalLM

    if is_ir_folder(out):
        return out
    config = LlamaConfig(hidden_size=4096, intermediate_size=11008, num_attention_heads=32, num_key_value_heads=32,
                         num_hidden_layers=layers, vocab_size=SLICE_VOCAB, max_position_embeddings=2048,
                         bos_token_id=1, eos_token_id=2)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).eval()
    with atomic_output_dir(out, overwrite=True) as tmp:
        export_from_model(model, str(tmp), task="text-generation-with-past")
        # genai needs tokenizer models to load; prompts are token ids, so SmolLM2's serve
        smol = dense_ir(SMOLLM)
        for name in ("openvino_tokenizer.xml", "openvino_tokenizer.bin", "openvino_detokenizer.xml",
                     "openvino_detokenizer.bin", "tokenizer.json", "tokenizer_config.json"):
            if not (tmp / name).exists():
                shutil.copy2(smol / name, tmp / name)
    del model
    gc.collect()
    return out


class Variant:
    """One (model, weight format, sparsity) point: its dense and SCAP folders and their perplexities."""

    def __init__(self, model: str, fmt: str, sparsity: float, dense: Path, scap: Path):
        self.model, self.fmt, self.sparsity, self.dense, self.scap = model, fmt, sparsity, dense, scap
        self.ppl_dense = self.ppl_scap = None

    @cached_property
    def calibration(self) -> dict:
        return Artifact.load(self.scap / ARTIFACT_NAME).calibration

    @property
    def weight_format(self) -> str:
        """The stored FC weight format the SCAP export recorded, e.g. int4_sym_g64."""
        return self.calibration.get("weight_format", self.fmt)


def stale_fusion(folder: Path) -> bool:
    from scap_ov.transformations.fuse_cpu import FUSION_VERSION, fusion_version

    return fusion_version(register(ov.Core()).read_model(folder / IR_XML)) != FUSION_VERSION


PROMPT_NOVEL = "northangerabbey"  # held out: neither calibration text nor the perplexity novel


def prompt_ids(model: str, dense: Path, tokens: int) -> np.ndarray:
    """[1, tokens] prompt: real held-out text for SmolLM2, as a user's prompt would be (thresholds were
    calibrated on text; random token ids give other activations and another realised sparsity); random ids
    for the slice, whose random weights have no text."""
    if model == SLICE:
        return np.random.default_rng(1).integers(3, SLICE_VOCAB, (1, tokens), dtype=np.int64)
    from scap_ov.dataset import token_windows
    from scap_ov.pipeline import load_tokenizer

    return token_windows(load_tokenizer(dense), [assets.novel_text(PROMPT_NOVEL)], tokens, 1, "prompt")[:1]


def prepare(args, model: str, fmt: str, sparsities: list[float]) -> list[Variant]:
    work = args.work / model
    if model == SLICE:
        source = build_slice(work / f"dense-L{args.slice_layers}", args.slice_layers)
        tag = f"L{args.slice_layers}-"
    else:
        source, tag = model, ""
    dense = work / f"{tag}{fmt}-dense"
    if not is_ir_folder(dense):
        log.info("dense %s %s", model, fmt)
        export_dense(dense, str(source), FORMATS[fmt], overwrite=True)
    variants = []
    for sparsity in sparsities:
        samples, seq_len = (4, 64) if model == SLICE else (args.samples, 256)
        # the slice: uniform thresholds at the target on its own inputs; SmolLM2: the export's method (default
        # auto = greedy allocation, what `scap-ov export` gives a user)
        method = "scap" if model == SLICE else args.method
        config = CalibrationConfig(targets=parse_targets(sparsity), samples=samples, seq_len=seq_len, method=method,
                                   probe_windows=args.probe_windows, probe_tokens=args.probe_tokens)
        greedy = config.resolved(False).method == "greedy"  # folders named by probe size: it changes the result
        mtag = "" if method == "scap" else f"{method}-" + (f"p{args.probe_windows}x{args.probe_tokens}-" if greedy else "")
        scap = work / f"{tag}{fmt}-{mtag}scap{sparsity:g}-{samples}x{seq_len}"
        if is_ir_folder(scap) and stale_fusion(scap):  # fused by an older pass B: rebuild from its artifact
            log.info("re-fusing %s (fusion version changed)", scap.name)
            artifact = scap.parent / f"{scap.name}.{ARTIFACT_NAME}"
            shutil.copy(scap / ARTIFACT_NAME, artifact)  # out of the folder that overwrite replaces
            try:
                export_scap(scap, str(dense), artifact=artifact, overwrite=True)
            finally:
                artifact.unlink()
        if not is_ir_folder(scap):
            log.info("SCAP %s %s at %.2f", model, fmt, sparsity)
            windows = None
            if model == SLICE:  # random token ids: the slice's "own inputs"
                windows = np.random.default_rng(0).integers(3, SLICE_VOCAB, (samples, seq_len), dtype=np.int64)
            export_scap(scap, str(dense), config, overwrite=True, windows=windows)
        variants.append(Variant(model, fmt, sparsity, dense, scap))
    return variants


def perplexities(variant: Variant, windows: int, cache: dict) -> None:
    if variant.model == SLICE:
        return  # random weights: no meaningful perplexity
    for attr, folder in (("ppl_dense", variant.dense), ("ppl_scap", variant.scap)):
        if folder not in cache:
            cache[folder] = evaluate_folder(folder, windows=windows, seq_len=256, cloze=0, progress=False).perplexity
        setattr(variant, attr, cache[folder])


# ------------------------------------------------------------------------------------------------ runtimes
# --precision: OpenVINO's INFERENCE_PRECISION_HINT for both models ("default": what the loaders choose per folder)
PRECISIONS = ("f32", "default")


def precision_properties(precision: str) -> dict:
    return {} if precision == "default" else {"INFERENCE_PRECISION_HINT": precision}


class GenaiRunner:
    def __init__(self, folder: Path, precision: str):
        from scap_ov.integrations import llm_pipeline

        self.pipe = llm_pipeline(folder, "CPU", **precision_properties(precision))
        self.calls = 0

    def run(self, ids: np.ndarray, new_tokens: int) -> tuple[float, float]:
        import openvino_genai

        # The pipeline keeps the KV cache of its previous call and reuses it for a prompt that starts with the same
        # tokens: a repeated prompt then costs one token, and TTFT times a decode step, not the prefill (measured:
        # 22 ms instead of 160-270 ms for 128 tokens). Every other call flips the lowest bit of the first token id
        # (vocabulary sizes here are even), so no call shares a prefix with the one before.
        ids = ids.copy()
        if self.calls % 2:
            ids[:, 0] ^= 1
        self.calls += 1
        config = openvino_genai.GenerationConfig()
        config.max_new_tokens = config.min_new_tokens = new_tokens
        config.do_sample = False
        metrics = self.pipe.generate(ov.Tensor(ids), config).perf_metrics
        return metrics.get_ttft().mean, metrics.get_tpot().mean


class OptimumRunner:
    def __init__(self, folder: Path, precision: str):
        from scap_ov.integrations import load_causal_lm

        self.model = load_causal_lm(folder, ov_config=precision_properties(precision))

    def _generate(self, ids, new_tokens: int) -> float:
        import torch

        input_ids = torch.from_numpy(ids)
        started = time.perf_counter()
        self.model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), do_sample=False,
                            max_new_tokens=new_tokens, min_new_tokens=new_tokens)
        return (time.perf_counter() - started) * 1000

    def run(self, ids: np.ndarray, new_tokens: int) -> tuple[float, float]:
        first = self._generate(ids, 1)
        full = self._generate(ids, new_tokens)
        return first, (full - first) / (new_tokens - 1)


RUNTIMES = {"genai": GenaiRunner, "optimum": OptimumRunner}


def measure(variant: Variant, runtime: str, args, prompt: np.ndarray) -> dict:
    runners = {kind: RUNTIMES[runtime](folder, args.precision)
               for kind, folder in (("dense", variant.dense), ("scap", variant.scap))}
    for runner in runners.values():  # warm-up: compile caches, first-inference allocations
        runner.run(prompt, 4)
    samples = {k: [] for k in runners}
    for rep in range(args.reps):
        for kind in (("dense", "scap") if rep % 2 == 0 else ("scap", "dense")):
            samples[kind].append(runners[kind].run(prompt, args.new_tokens))
    del runners
    gc.collect()
    ttft = {k: statistics.median(s[0] for s in v) for k, v in samples.items()}
    tpot = {k: statistics.median(s[1] for s in v) for k, v in samples.items()}
    return {
        "model": variant.model, "weight_format": variant.weight_format, "runtime": runtime,
        "sparsity": variant.sparsity, "method": variant.calibration.get("method"),
        "dense_tok_s": 1000 / tpot["dense"], "scap_tok_s": 1000 / tpot["scap"],
        "speedup": tpot["dense"] / tpot["scap"],
        "dense_prefill_ms": ttft["dense"], "scap_prefill_ms": ttft["scap"],
        "prefill_ratio": ttft["scap"] / ttft["dense"],
        "ppl_dense": variant.ppl_dense, "ppl_scap": variant.ppl_scap,
        "ppl_ratio": None if variant.ppl_dense is None else variant.ppl_scap / variant.ppl_dense,
        "samples_ms": {k: [[round(a, 3), round(b, 3)] for a, b in v] for k, v in samples.items()},
    }


def mark_5pct_points(records: list[dict]) -> None:
    """Per (model, format, runtime): the highest sparsity whose perplexity stays within 5 % of dense."""
    groups = {}
    for r in records:
        groups.setdefault((r["model"], r["weight_format"], r["runtime"]), []).append(r)
    for group in groups.values():
        ok = [r for r in group if r["ppl_ratio"] is not None and r["ppl_ratio"] <= 1.05]
        best = max(ok, key=lambda r: r["sparsity"]) if ok else None
        for r in group:
            r["ppl_within_5pct_point"] = r is best


def plot(result: dict, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["records"]
    labels = [f"{r['model'].replace('smollm2-135m', 'SmolLM2')}\n{r['weight_format']} s={r['sparsity']:g}\n"
              f"{r['runtime']}" + ("\n(ppl ≤5%)" if r.get("ppl_within_5pct_point") else "") for r in rows]
    x = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(rows)), 4.5))
    ax.bar(x - 0.2, [r["speedup"] for r in rows], 0.4, label="decode speedup (dense time / SCAP time)")
    ax.bar(x + 0.2, [r["prefill_ratio"] for r in rows], 0.4, label="prefill SCAP / dense")
    ax.axhline(1.0, color="grey", lw=0.6)
    ax.set_xticks(x)
    ax.set_xticklabels(labels, fontsize=6)
    ax.legend(fontsize=7)
    ax.set_title(f"SCAP end to end, {result['meta']['cpu']} ({result['meta']['threads']} threads)", fontsize=8)
    fig.tight_layout()
    fig.savefig(png, dpi=120)


def table(result: dict) -> str:
    """The README's end-to-end table (markdown) from a result JSON."""
    lines = ["| model | weights | sparsity (method) | runtime | dense tok/s | SCAP tok/s | decode speedup | prefill SCAP/dense "
             "| ppl dense → SCAP |", "|---|---|---|---|---|---|---|---|---|"]
    for r in result["records"]:
        ppl = "random weights" if r["ppl_dense"] is None else (
            f"{r['ppl_dense']:.2f} → {r['ppl_scap']:.2f} ({r['ppl_ratio']:.3f}×)"
            + (" ≤5% point" if r.get("ppl_within_5pct_point") else ""))
        method = f" ({r['method']})" if r.get("method") else ""
        lines.append(f"| {r['model']} | {r['weight_format']} | {r['sparsity']:g}{method} | {r['runtime']} | "
                     f"{r['dense_tok_s']:.1f} | {r['scap_tok_s']:.1f} | {r['speedup']:.2f}× | "
                     f"{r['prefill_ratio']:.2f} | {ppl} |")
    return "\n".join(lines)


def calibration_arguments(ap) -> None:
    """How prepare() calibrates SmolLM2 (shared with decode_profile.py, which profiles the same folders)."""
    ap.add_argument("--method", default=AUTO_METHOD, choices=METHODS + (AUTO_METHOD,),
                    help="SmolLM2 calibration method (default: the export default)")
    ap.add_argument("--samples", type=int, default=16, help="SmolLM2 calibration windows of 256 tokens")
    ap.add_argument("--probe-windows", type=int, default=None,
                    help=f"greedy's probe windows (default: the export's, {CalibrationConfig.probe_windows}; --quick: 4)")
    ap.add_argument("--probe-tokens", type=int, default=None,
                    help=f"greedy's tokens per probe window (default: the export's, {CalibrationConfig.probe_tokens}; "
                         "--quick: 128)")


def probe_defaults(args, quick: bool) -> None:
    """Fill unset probe sizes: the export's defaults, or small ones for --quick (export in ~1 minute, not ~18)."""
    args.probe_windows = args.probe_windows or (4 if quick else CalibrationConfig.probe_windows)
    args.probe_tokens = args.probe_tokens or (128 if quick else CalibrationConfig.probe_tokens)


def main(argv=None) -> int:
    ap = result_parser(__doc__)
    ap.add_argument("--quick", action="store_true",
                    help="SmolLM2 fp32 at 0.3 and a 1-layer slice in fp32/int4, genai only, fewer tokens")
    ap.add_argument("--work", type=Path, default=assets.cache_dir() / "bench", help="cache of exported folders")
    ap.add_argument("--formats", nargs="*", choices=list(FORMATS), default=None)
    ap.add_argument("--runtimes", nargs="*", choices=list(RUNTIMES), default=None)
    ap.add_argument("--sparsities", nargs="*", type=float, default=None, help="SmolLM2 sweep")
    ap.add_argument("--models", nargs="*", choices=[SMOLLM, SLICE], default=[SMOLLM, SLICE])
    ap.add_argument("--slice-layers", type=int, default=None)
    calibration_arguments(ap)
    ap.add_argument("--reps", type=int, default=None)
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--precision", choices=PRECISIONS, default="f32",
                    help="INFERENCE_PRECISION_HINT of both models (default: f32, what the op computes in)")
    ap.add_argument("--new-tokens", type=int, default=None)
    ap.add_argument("--ppl-windows", type=int, default=None)
    ap.add_argument("--prepare-only", action="store_true", help="export into --work and stop (no timing)")
    args = parse_or_print_table(ap, argv, table)
    if args is None:
        return 0
    quick = args.quick
    args.formats = args.formats or (["fp32"] if quick else list(FORMATS))
    args.runtimes = args.runtimes or (["genai"] if quick else list(RUNTIMES))
    args.sparsities = args.sparsities or ([0.3] if quick else [0.2, 0.3, 0.4, 0.5])
    args.slice_layers = args.slice_layers or (1 if quick else 2)
    args.reps = args.reps or (3 if quick else 5)
    probe_defaults(args, quick)
    args.new_tokens = args.new_tokens or (16 if quick else 32)
    args.ppl_windows = args.ppl_windows or (2 if quick else 16)
    logging.basicConfig(level=logging.INFO, format="e2e: %(message)s", stream=sys.stderr)
    started = time.time()

    plan = []
    for model in args.models:
        formats = (["fp32", "int4"] if quick else args.formats) if model == SLICE else args.formats
        for fmt in formats:
            plan += prepare(args, model, fmt, [0.5] if model == SLICE else args.sparsities)
    if args.prepare_only:
        print(f"{len(plan)} variants ready under {args.work}")
        return 0
    ppl_cache, records = {}, []
    for variant in plan:
        perplexities(variant, args.ppl_windows, ppl_cache)
        prompt = prompt_ids(variant.model, variant.dense, args.prompt_tokens)
        for runtime in args.runtimes:
            log.info("measure %s %s s=%.2f %s", variant.model, variant.weight_format, variant.sparsity, runtime)
            records.append(measure(variant, runtime, args, prompt))
            r = records[-1]
            log.info("  dense %.2f tok/s, SCAP %.2f tok/s (x%.2f), prefill x%.2f, ppl %s -> %s", r["dense_tok_s"],
                     r["scap_tok_s"], r["speedup"], r["prefill_ratio"], r["ppl_dense"], r["ppl_scap"])
    mark_5pct_points(records)

    import openvino_genai

    result = {"meta": {
        "date": time.strftime("%Y-%m-%d %H:%M:%S"), "cpu": cpu_name(), "threads": os.cpu_count(),
        "openvino": ov.get_version(), "openvino_genai": openvino_genai.__version__, "python": platform.python_version(),
        "quick": quick, "inference_precision": args.precision, "prompt_tokens": args.prompt_tokens, "new_tokens": args.new_tokens, "reps": args.reps,
        "ppl_windows_x256": args.ppl_windows, "slice_layers": args.slice_layers, "smollm2_calibration": args.samples,
        "smollm2_probes": f"{args.probe_windows}x{args.probe_tokens}",
        "seconds": round(time.time() - started, 1),
    }, "records": records}
    publish(args.json, result, plot, table)
    print(f"{len(records)} records in {result['meta']['seconds']:.0f} s -> {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
