"""`scap-ov` command line: export (calibrate + transform), eval, lm-eval, check, extension-path, prepare."""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

from scap_ov.compression import WEIGHT_FORMATS
from scap_ov.config import AUTO_METHOD, GREEDY_LOSSES, METHODS, SCORES, CalibrationConfig
from scap_ov.errors import ScapError
from scap_ov.layers import LAYER_TYPES


def _type_target(text: str) -> tuple[str, float]:
    name, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"expected TYPE=SPARSITY, got {text!r}")
    try:
        return name.strip(), float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"sparsity in {text!r} is not a number") from None


def _layer_pattern(text: str) -> tuple[str, str]:
    name, sep, regex = text.partition("=")
    if not sep or not regex:
        raise argparse.ArgumentTypeError(f"expected TYPE=REGEX, got {text!r}")
    return name.strip(), regex


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="scap-ov", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    ex = sub.add_parser("export", help="calibrate a model and write a SCAP OpenVINO model folder")
    ex.add_argument("--output", required=True, type=Path, help="output folder (written atomically)")
    ex.add_argument("--model", default="smollm2-135m",
                    help="packaged model name (smollm2-135m; minilm-l6, a BERT sentence encoder), a transformers "
                         "folder, a .gguf file or an OpenVINO IR folder")
    ex.add_argument("--sparsity", type=float, default=None, help="target sparsity for every FC type (default 0.4)")
    ex.add_argument("--target", type=_type_target, action="append", default=[], metavar="TYPE=S",
                    help=f"per-layer-type target, repeatable; types: {', '.join(LAYER_TYPES)}")
    ex.add_argument("--mode", default="zero", help="centre m: zero | median | kde | channel (per-input-channel "
                                                   "median) (default zero)")
    ex.add_argument("--score", default="magnitude", choices=SCORES,
                    help="threshold |x - m| (magnitude) or |x_j - m_j| * ||W[:, j]|| (weighted: weight-aware, a "
                         "per-channel tau) (default magnitude)")
    ex.add_argument("--method", default=AUTO_METHOD, choices=METHODS + (AUTO_METHOD,),
                    help="scap: every FC at its type's target; teal: the same, zero-centred (TEAL-uniform); "
                         "greedy: the --sparsity budget allocated across layer types and blocks by the measured "
                         "end-model loss (--greedy-loss); cats: CATS, a threshold on |act(gate)| (gate dense, up "
                         "rows and down inputs sparse) meeting the --sparsity budget; auto (default): greedy for "
                         "a language model with one --sparsity budget, else scap")
    ex.add_argument("--greedy-loss", default=GREEDY_LOSSES[0], choices=GREEDY_LOSSES,
                    help="greedy's probe cost: nll, the increase of the next-token loss on the calibration text "
                         "(default); kl, the next-token KL from the dense model")
    ex.add_argument("--probe-windows", type=int, default=CalibrationConfig.probe_windows,
                    help="greedy: calibration windows each probe measures the loss on (default %(default)s; fewer "
                         "is faster and noisier)")
    ex.add_argument("--probe-tokens", type=int, default=CalibrationConfig.probe_tokens,
                    help="greedy: tokens of each probe window (default %(default)s)")
    ex.add_argument("--level-step", type=float, default=CalibrationConfig.level_step,
                    help="greedy: spacing of the sparsity levels a group can take (default %(default)s; 0.05 takes "
                         "about twice the probes and measured worse on SmolLM2 at 40%%)")
    ex.add_argument("--allocation-from", type=Path, default=None, metavar="FOLDER",
                    help="greedy: reuse the group targets of an earlier greedy export (its folder or artifact) "
                         "instead of probing, e.g. the fp32 export's for an int8 one; thresholds are still "
                         "calibrated on this model; the budget defaults to that export's")
    ex.add_argument("--weight-correction", action="store_true",
                    help="least-squares weight correction: fit each FC's float weights so its kept inputs stand in "
                         "for the pruned ones (same bytes read at decode; float weights only)")
    ex.add_argument("--correction-damping", type=float, default=1.0,
                    help="ridge of the weight correction, in units of the mean kept-input energy (default 1)")
    ex.add_argument("--calibration-data", default=None,
                    help="a .txt file, a .json list of strings, or a Hugging Face dataset name (online only); "
                         "default: three packaged Austen novels. Vision models (ViT, DeiT): a folder of images")
    ex.add_argument("--samples", type=int, default=64,
                    help="calibration windows; for an encoder, paragraphs (default 64)")
    ex.add_argument("--seq-len", type=int, default=256,
                    help="tokens per calibration window; for an encoder, at most per paragraph (default 256)")
    ex.add_argument("--refine-passes", type=int, default=1,
                    help="re-calibrate tau on the model pruned so far, to hit the targets (default 1)")
    ex.add_argument("--artifact", type=Path, default=None,
                    help="skip calibration: transform from this calibration artifact JSON")
    ex.add_argument("--layers", type=_layer_pattern, action="append", default=[], metavar="TYPE=REGEX",
                    help="explicit FC layer patterns (module-name regex with one group for the block index); "
                         "for model families whose FC names scap-ov does not know")
    ex.add_argument("--layers-file", type=Path, default=None, metavar="FILE",
                    help="explicit FC layer patterns from a JSON or YAML mapping of TYPE to REGEX (--layers "
                         "entries override it)")
    ex.add_argument("--weight-format", choices=WEIGHT_FORMATS, default=None,
                    help="compress the weights first (NNCF), so thresholds are calibrated on the deployed model; "
                         "default: keep the model's weights (fp32, or as stored in an already-compressed IR)")
    ex.add_argument("--group-size", type=int, default=None,
                    help="int4 only: input channels per scale, -1 for one scale per output channel "
                         "(default 128, or the largest of 64/32/16 that divides every FC input)")
    ex.add_argument("--sym", action="store_true", help="int8/int4: symmetric quantization (no zero points)")
    ex.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder")

    ev = sub.add_parser("eval", help="realised sparsity and quality on held-out text: perplexity and cloze accuracy "
                                     "(language models) or embedding similarity to dense (encoders)")
    ev.add_argument("folder", type=Path)
    ev.add_argument("--text", default=None, help="held-out text (.txt / .json list); default: packaged novels "
                                                  "never used for calibration")
    ev.add_argument("--json", type=Path, default=None, help="write the full result here")
    ev.add_argument("--windows", type=int, default=None, help="language models: perplexity windows (default 32)")
    ev.add_argument("--seq-len", type=int, default=None, help="language models: tokens per window (default 512)")
    ev.add_argument("--cloze", type=int, default=None, help="language models: cloze items (default 200, 0 to skip)")
    ev.add_argument("--sentences", type=int, default=None,
                    help="encoders: held-out sentences embedded and compared with the dense model (default 512)")
    ev.add_argument("--images", type=Path, default=None,
                    help="vision models: a folder of held-out images (required for them; up to 64 are used)")
    ev.add_argument("--plot", type=Path, default=None,
                    help="write a PNG of realised sparsity, tau and mode per layer (a SCAP folder's artifact)")

    ck = sub.add_parser("check", help="check that a SCAP model folder can be loaded here (IR, op schema, artifact, "
                                      "extension built for this OpenVINO release)")
    ck.add_argument("folder", type=Path)

    le = sub.add_parser("lm-eval", help="lm-evaluation-harness tasks on a model folder (SCAP export or dense IR), "
                                        "offline; local tasks from --include-path")
    le.add_argument("folder", type=Path)
    le.add_argument("--tasks", required=True, help="comma-separated lm-eval task, group or tag names")
    le.add_argument("--include-path", type=Path, action="append", default=[], metavar="DIR",
                    help="a folder of task YAMLs (e.g. 'dataset_path: json' + local data_files), repeatable")
    le.add_argument("--limit", type=float, default=None, help="items per task (a fraction of each task if < 1)")
    le.add_argument("--num-fewshot", type=int, default=None, help="few-shot examples (default: the task's, or 0)")
    le.add_argument("--batch-size", type=int, default=1, help="requests per model call (default 1)")
    le.add_argument("--json", type=Path, default=None, help="write lm-eval's full result here")

    sub.add_parser("extension-path", help="print the path of the compiled CPU extension")

    pr = sub.add_parser("prepare", help="fetch and convert the packaged text and model into the cache (offline "
                                        "afterwards); run by the set-up command")
    pr.add_argument("--text-only", action="store_true", help="only the packaged text")
    return parser


def _export(args) -> int:
    from scap_ov.calibration.allocation import load_allocation
    from scap_ov.compression import WeightFormat
    from scap_ov.config import CalibrationConfig, parse_targets
    from scap_ov.layers import check_layer_patterns, load_layer_patterns
    from scap_ov.pipeline import export_scap

    allocation, sparsity = None, args.sparsity
    if args.allocation_from is not None:
        if args.artifact is not None:
            raise ScapError("--artifact skips calibration, --allocation-from calibrates: give one of them")
        allocation, budget = load_allocation(args.allocation_from)
        sparsity = budget if sparsity is None else sparsity
    config = CalibrationConfig(targets=parse_targets(sparsity, dict(args.target)), mode=args.mode,
                               samples=args.samples, seq_len=args.seq_len, refine_passes=args.refine_passes,
                               method=args.method, score=args.score, greedy_loss=args.greedy_loss,
                               probe_windows=args.probe_windows, probe_tokens=args.probe_tokens,
                               level_step=args.level_step, allocation=allocation,
                               weight_correction=args.weight_correction,
                               correction_damping=args.correction_damping)
    weight_format = None
    if args.weight_format:
        weight_format = WeightFormat(args.weight_format, args.group_size, args.sym).validate()
    elif args.group_size is not None or args.sym:
        raise ScapError("--group-size and --sym need --weight-format int8 or int4")
    layers = {**(load_layer_patterns(args.layers_file) if args.layers_file else {}), **dict(args.layers)}
    started = time.time()
    result = export_scap(args.output, args.model, config, args.calibration_data, args.artifact,
                         args.overwrite, check_layer_patterns(layers) or None, weight_format)
    fcs = result.artifact.fcs
    by_type = {}
    for fc in fcs:
        by_type.setdefault(fc.layer_type, []).append(fc.target_sparsity)
    targets = ", ".join(f"{t} {sum(v) / len(v):.2f}" for t, v in by_type.items())
    print(f"SCAP model written to {result.output} in {time.time() - started:.0f} s: {len(fcs)} FC layers "
          f"({targets}), method {result.artifact.calibration.get('method', '?')}, "
          f"mode {result.artifact.calibration.get('mode', '?')}, {result.weight_format} weights")
    print(f"next: scap-ov eval {result.output}")
    return 0


def _write_json(path: Path | None, data: dict) -> None:
    from scap_ov.fsutil import atomic_file

    if path:
        with atomic_file(path) as tmp:
            tmp.write_text(json.dumps(data, indent=1))


def _eval_encoder(args) -> int:
    from scap_ov.encoder import DEFAULT_SENTENCES, evaluate_encoder_folder

    given = [f"--{n.replace('_', '-')}" for n in ("windows", "seq_len", "cloze") if getattr(args, n) is not None]
    if given:
        verb = "apply" if len(given) > 1 else "applies"
        raise ScapError(f"{', '.join(given)} {verb} to language models; {args.folder} holds an encoder, evaluated "
                        "by embedding similarity on --sentences held-out sentences")
    artifact = _plot_artifact(args)
    result = evaluate_encoder_folder(args.folder, args.text, args.sentences or DEFAULT_SENTENCES)
    _write_json(args.json, result.to_dict())
    _plot(args, artifact, result.layer_sparsity)
    types = ", ".join(f"{t} {s:.3f}" for t, s in result.type_sparsity.items())
    print(f"sentence embeddings vs dense on {result.sentences} held-out sentences ({result.tokens} tokens): cosine "
          f"mean {result.cosine_mean:.4f} (min {result.cosine_min:.4f}); nearest-neighbour agreement "
          f"{result.nn_agreement:.3f} (in sparse top 5: {result.nn_in_top5:.3f}); cross retrieval "
          f"{result.cross_retrieval:.3f}")
    print(f"FC-weight-byte sparsity {result.fc_weight_sparsity:.3f} ({types})")
    return 0


def _plot_artifact(args):
    """--plot: the folder's artifact, loaded before the evaluation runs (a bad folder fails fast)."""
    from scap_ov.artifact import ARTIFACT_NAME, Artifact

    if not args.plot:
        return None
    if not (args.folder / ARTIFACT_NAME).is_file():
        raise ScapError(f"--plot needs a SCAP folder: {args.folder} has no {ARTIFACT_NAME}")
    return Artifact.load(args.folder / ARTIFACT_NAME)


def _plot(args, artifact, layer_sparsity: dict[str, float]) -> None:
    from scap_ov.report import plot_layers

    if artifact is not None:
        plot_layers(artifact, layer_sparsity, args.plot, f"{args.folder.name}: {artifact.model}")
        print(f"per-layer plot: {args.plot}")


def _eval_vision(args) -> int:
    from scap_ov.vision import evaluate_vision_folder

    given = [f"--{n.replace('_', '-')}" for n in ("windows", "seq_len", "cloze", "sentences", "text")
             if getattr(args, n) is not None]
    if given:
        raise ScapError(f"{', '.join(given)} do not apply to {args.folder}, a vision model evaluated on --images")
    artifact = _plot_artifact(args)
    result = evaluate_vision_folder(args.folder, args.images)
    _write_json(args.json, result.to_dict())
    _plot(args, artifact, result.layer_sparsity)
    top1 = "" if result.top1_agreement is None else f"top-1 agreement {result.top1_agreement:.3f}, "
    types = ", ".join(f"{t} {s:.3f}" for t, s in result.type_sparsity.items())
    print(f"{result.output} vs dense on {result.images} held-out images: {top1}cosine mean {result.cosine_mean:.4f} "
          f"(min {result.cosine_min:.4f})")
    print(f"FC-weight-byte sparsity {result.fc_weight_sparsity:.3f} ({types})")
    return 0


def _eval(args) -> int:
    from scap_ov.encoder import is_encoder
    from scap_ov.pipeline import evaluate_folder
    from scap_ov.vision import is_vision

    if is_vision(args.folder):
        return _eval_vision(args)
    if args.images is not None:
        raise ScapError(f"--images applies to vision models; {args.folder} holds no ViT or DeiT")
    if is_encoder(args.folder):
        return _eval_encoder(args)
    if args.sentences is not None:
        raise ScapError(f"--sentences applies to encoders; {args.folder} is evaluated by perplexity and cloze")
    windows = 32 if args.windows is None else args.windows
    seq_len = 512 if args.seq_len is None else args.seq_len
    cloze_count = 200 if args.cloze is None else args.cloze
    if windows < 1 or seq_len < 2 or cloze_count < 0:
        raise ScapError("--windows must be >= 1, --seq-len >= 2 and --cloze >= 0")
    artifact = _plot_artifact(args)
    result = evaluate_folder(args.folder, args.text, windows, seq_len, cloze_count)
    _write_json(args.json, result.to_dict())
    _plot(args, artifact, result.layer_sparsity)
    cloze = "n/a" if result.cloze_accuracy is None else f"{result.cloze_accuracy:.3f} ({result.cloze_items} items)"
    types = ", ".join(f"{t} {s:.3f}" for t, s in result.type_sparsity.items())
    print(f"perplexity {result.perplexity:.3f} on {result.tokens} tokens; cloze accuracy {cloze}")
    print(f"FC-weight-byte sparsity {result.fc_weight_sparsity:.3f} ({types})")
    return 0


def _lm_eval(args) -> int:
    from scap_ov.lm_eval import run_lm_eval, summary

    if args.batch_size < 1 or (args.num_fewshot or 0) < 0:
        raise ScapError("--batch-size must be >= 1 and --num-fewshot >= 0")
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    result = run_lm_eval(args.folder, tasks, args.include_path, args.limit, args.num_fewshot, args.batch_size)
    if args.json:
        _write_json(args.json, result.results)
    print(summary(result))
    return 0


def _prepare(args) -> int:
    from scap_ov import assets
    from scap_ov.export import dense_ir

    print(f"text: {assets.fetch_corpus()}")
    if not args.text_only:
        for name in assets.PACKAGED_MODELS:
            print(f"model {name}: {dense_ir(name)}")
    return 0


def _check(args) -> int:
    from scap_ov.integrations import check_folder

    check = check_folder(args.folder)
    if check.fused_ops:
        from scap_ov.extension import extension_path

        print(f"{check.folder}: {check.fused_ops} SCAPFullyConnected ops; load with the extension {extension_path()}")
    else:
        print(f"{check.folder}: no SCAPFullyConnected ops (portable or dense IR); loads without the extension")
    return 0


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing may reach a hub at run time
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="scap-ov: %(message)s", stream=sys.stderr)
    try:
        if args.command == "export":
            return _export(args)
        if args.command == "eval":
            return _eval(args)
        if args.command == "prepare":
            return _prepare(args)
        if args.command == "check":
            return _check(args)
        if args.command == "lm-eval":
            return _lm_eval(args)
        from scap_ov.extension import extension_path

        print(extension_path())
        return 0
    except ScapError as exc:
        print(f"scap-ov: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("scap-ov: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
