"""Encoder quality: all-MiniLM-L6-v2 (BERT, GELU) with SCAP, centre zero vs median vs KDE at 30% and 50%.

Each point is a full `export_scap` of the packaged `minilm-l6` (calibrated on paragraphs of three Austen novels,
cached under --work) whose portable IR embeds held-out sentences of *Persuasion*; sentence embeddings (mean-pooled,
normalised) are compared with the dense IR's: cosine similarity, nearest-neighbour agreement (each sentence's
nearest other sentence is the same; nn_in_top5: the dense one is among the sparse 5 nearest) and cross retrieval
(a sparse embedding finds its own sentence among the dense ones). FC-weight-byte sparsity is the one realised on
those sentences.

Records: mode, target, fc_weight_sparsity (realised), type_sparsity, cosine_mean, cosine_min, nn_agreement,
nn_in_top5, cross_retrieval, modes (mean centre per layer type), calibration_seconds. A PNG is written beside
the JSON.

usage: python benchmarks/encoder.py --json out.json [--quick]
"""
from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

from common import cpu_name, parse_or_print_table, publish, result_parser  # first: offline settings, checkout on sys.path

import openvino as ov

from scap_ov import assets
from scap_ov.artifact import ARTIFACT_NAME, Artifact
from scap_ov.config import MODES, CalibrationConfig, parse_targets
from scap_ov.dataset import load_texts
from scap_ov.encoder import calibration_samples, embed, encoder_evaluator, evaluate_model, evaluation_samples
from scap_ov.export import IR_XML, dense_ir, is_ir_folder
from scap_ov.pipeline import PORTABLE_XML, export_scap, load_tokenizer

log = logging.getLogger("scap_ov.encoder_bench")
MODEL = "minilm-l6"
TARGETS = (0.3, 0.5)


def point(args, samples_cal, samples_eval, dense, mode: str, target: float) -> dict:
    folder = args.work / f"{mode}-{target:g}-{args.samples}p"
    seconds = None
    if not is_ir_folder(folder):
        log.info("export %s at %.2f", mode, target)
        started = time.time()
        config = CalibrationConfig(targets=parse_targets(target), mode=mode, samples=args.samples)
        export_scap(folder, MODEL, config=config, overwrite=True, windows=samples_cal)
        seconds = round(time.time() - started, 1)
    quality = evaluate_model(ov.Core().read_model(folder / PORTABLE_XML), samples_eval, dense)
    fcs = Artifact.load(folder / ARTIFACT_NAME).fcs
    modes = {}
    for fc in fcs:
        modes.setdefault(fc.layer_type, []).append(fc.mode)
    record = {"mode": mode, "target": target, "calibration_seconds": seconds,
              "modes": {t: round(sum(v) / len(v), 4) for t, v in modes.items()}}
    record.update({k: v for k, v in quality.to_dict().items() if k != "layer_sparsity"})
    return record


def plot(result: dict, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    for mode in MODES:
        rows = sorted((r for r in result["records"] if r["mode"] == mode), key=lambda r: r["fc_weight_sparsity"])
        if not rows:
            continue
        xs = [r["fc_weight_sparsity"] for r in rows]
        a.plot(xs, [r["cosine_mean"] for r in rows], marker="o", label=mode)
        b.plot(xs, [r["nn_agreement"] for r in rows], marker="o", label=mode)
    a.set(xlabel="realised FC-weight-byte sparsity (held-out)", ylabel="mean cosine(sparse, dense)",
          title="Embedding similarity")
    b.set(xlabel="realised FC-weight-byte sparsity (held-out)", ylabel="same nearest neighbour",
          title="Retrieval agreement")
    a.legend(fontsize=7)
    b.legend(fontsize=7)
    meta = result["meta"]
    fig.suptitle(f"all-MiniLM-L6-v2, {meta['eval_sentences']} held-out sentences (Persuasion)", fontsize=9)
    fig.tight_layout()
    fig.savefig(png, dpi=120)


def table(result: dict) -> str:
    """The README's encoder table (markdown) from a result JSON."""
    lines = ["| mode | target | realised FC-weight-byte sparsity | cosine to dense (mean / min) | "
             "same nearest neighbour | dense NN in sparse top 5 | cross retrieval |", "|---|---|---|---|---|---|---|"]
    for r in sorted(result["records"], key=lambda r: (r["target"], MODES.index(r["mode"]))):
        lines.append(f"| {r['mode']} | {r['target']:.2f} | {r['fc_weight_sparsity']:.3f} | "
                     f"{r['cosine_mean']:.4f} / {r['cosine_min']:.4f} | {r['nn_agreement']:.3f} | "
                     f"{r['nn_in_top5']:.3f} | {r['cross_retrieval']:.3f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = result_parser(__doc__)
    ap.add_argument("--quick", action="store_true", help="KDE and zero at 0.5, small calibration and evaluation")
    ap.add_argument("--modes", nargs="*", choices=list(MODES), default=None)
    ap.add_argument("--targets", nargs="*", type=float, default=None)
    ap.add_argument("--work", type=Path, default=assets.cache_dir() / "encoder")
    ap.add_argument("--samples", type=int, default=None, help="calibration paragraphs (default 128)")
    ap.add_argument("--sentences", type=int, default=None, help="held-out sentences (default 512)")
    args = parse_or_print_table(ap, argv, table)
    if args is None:
        return 0
    args.modes = args.modes or (["zero", "kde"] if args.quick else list(MODES))
    args.targets = args.targets or ([0.5] if args.quick else list(TARGETS))
    args.samples = args.samples or (32 if args.quick else 128)
    args.sentences = args.sentences or (128 if args.quick else 512)
    logging.basicConfig(level=logging.INFO, format="encoder: %(message)s", stream=sys.stderr)
    started = time.time()
    folder = dense_ir(MODEL)
    tokenizer = load_tokenizer(folder)
    samples_cal = calibration_samples(tokenizer, load_texts(None, assets.CALIBRATION_NOVELS), args.samples)
    samples_eval = evaluation_samples(tokenizer, load_texts(None, (assets.PERPLEXITY_NOVEL,)), args.sentences)
    dense, _ = embed(encoder_evaluator(ov.Core().read_model(folder / IR_XML)), samples_eval)
    records = []
    for target in args.targets:
        for mode in args.modes:
            records.append(point(args, samples_cal, samples_eval, dense, mode, target))
            r = records[-1]
            log.info("%s %.2f: realised %.3f, cosine %.4f (min %.4f), NN agreement %.3f, cross retrieval %.3f",
                     mode, target, r["fc_weight_sparsity"], r["cosine_mean"], r["cosine_min"], r["nn_agreement"],
                     r["cross_retrieval"])
    result = {"meta": {"date": time.strftime("%Y-%m-%d %H:%M:%S"), "cpu": cpu_name(), "model": MODEL,
                       "quick": args.quick, "calibration": "paragraphs of " + "+".join(assets.CALIBRATION_NOVELS),
                       "calibration_paragraphs": len(samples_cal),
                       "calibration_tokens": int(sum(len(s) for s in samples_cal)),
                       "eval": f"sentences of {assets.PERPLEXITY_NOVEL}", "eval_sentences": len(samples_eval),
                       "eval_tokens": int(sum(len(s) for s in samples_eval)),
                       "seconds": round(time.time() - started, 1)},
              "records": records}
    publish(args.json, result, plot, table)
    print(f"{len(records)} points in {result['meta']['seconds']:.0f} s -> {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
