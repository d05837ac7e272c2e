"""The main job: model -> dense IR (optimum-intel) -> calibration -> portable SCAP IR, in one output folder.

Output folder (loadable by optimum-intel as an OVModelForCausalLM folder):
    openvino_model.xml/.bin     fused CPU IR (SCAPFullyConnected ops: needs the scap-ov extension)
    openvino_model_portable.xml/.bin  portable SCAP IR (standard opset, any device; quality is measured on it)
    scap_calibration.json       the artifact (re-running the transformation from it reproduces the IR)
    config.json, tokenizer files, openvino_tokenizer/detokenizer
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import openvino as ov

from scap_ov import assets
from scap_ov.artifact import Artifact
from scap_ov.calibration import calibrate
from scap_ov.config import CalibrationConfig
from scap_ov.dataset import load_texts, token_windows
from scap_ov.errors import ScapError
from scap_ov.export import IR_XML, copy_side_files, dense_ir
from scap_ov.fsutil import atomic_output_dir, check_output_dir
from scap_ov.transformations.fuse_cpu import apply_fusion
from scap_ov.transformations.portable import apply_portable

log = logging.getLogger("scap_ov")
ARTIFACT_NAME = "scap_calibration.json"
PORTABLE_XML = "openvino_model_portable.xml"

@dataclass
class ExportResult:
    output: Path
    artifact: Artifact
    dense_ir: Path

def load_tokenizer(folder: Path):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(folder)
    except Exception as exc:  # noqa: BLE001
        raise ScapError(f"cannot load a tokenizer from {folder}: {exc}") from exc

def calibration_texts(source: str | None) -> list[str]:
    texts = load_texts(source, assets.CALIBRATION_NOVELS)
    if not any(t.strip() for t in texts):
        raise ScapError("calibration text is empty")
    return texts

def export_scap(output: Path, model: str = assets.DEFAULT_MODEL, config: CalibrationConfig | None = None,
                calibration_data: str | None = None, artifact: Path | None = None, overwrite: bool = False,
                layer_patterns: dict[str, str] | None = None) -> ExportResult:
    config = (config or CalibrationConfig()).validate()
    output = Path(output)
    check_output_dir(output, overwrite)  # fail before any long work
    fixed = Artifact.load(artifact) if artifact else None
    texts = None if fixed else calibration_texts(calibration_data)
    ir_folder = dense_ir(model)
    windows = None if fixed else token_windows(load_tokenizer(ir_folder), texts, config.seq_len, config.samples,
                                               "calibration")

    ov_model = ov.Core().read_model(ir_folder / IR_XML)
    if fixed is None:
        log.info("calibrating on %d windows x %d tokens (%d refinement passes)", len(windows), windows.shape[1],
                 config.refine_passes)
        fixed = calibrate(ov_model, windows, config, layer_patterns, model_id=str(model),
                          data_id=calibration_data or "austen:" + "+".join(assets.CALIBRATION_NOVELS))
    apply_portable(ov_model, fixed, layer_patterns)
    log.info("writing portable and fused IRs to %s", output)
    with atomic_output_dir(output, overwrite) as tmp:
        ov.save_model(ov_model, tmp / PORTABLE_XML, compress_to_fp16=False)
        # The Python twin of the op is enough to write the fused IR: export needs no compiled extension.
        apply_fusion(ov_model, native=False)
        ov.save_model(ov_model, tmp / IR_XML, compress_to_fp16=False)
        fixed.save(tmp / ARTIFACT_NAME)
        copy_side_files(ir_folder, tmp)
    return ExportResult(output=output, artifact=fixed, dense_ir=ir_folder)


def evaluate_folder(folder: Path, text: str | None = None, windows: int = 32, seq_len: int = 512,
                    cloze: int = 200, progress: bool = True):
    """Perplexity, cloze accuracy and realised sparsity of the IR in ``folder`` on held-out text."""
    from scap_ov.evaluation import EvalResult, Evaluator, cloze_items

    folder = Path(folder)
    ir = folder / PORTABLE_XML if (folder / PORTABLE_XML).is_file() else folder / IR_XML
    if not ir.is_file():
        raise ScapError(f"{folder} holds no {IR_XML}; pass a folder written by 'scap-ov export'")
    tokenizer = load_tokenizer(folder)
    texts = load_texts(text, (assets.PERPLEXITY_NOVEL,))
    ppl_windows = token_windows(tokenizer, texts, seq_len, windows, "evaluation")
    evaluator = Evaluator(ov.Core().read_model(ir))
    ppl, tokens, layer = evaluator.perplexity(ppl_windows, progress)
    weight_sparsity, by_type = evaluator.weight_byte_sparsity(layer)

    result = EvalResult(perplexity=ppl, tokens=tokens, fc_weight_sparsity=weight_sparsity,
                        layer_sparsity=layer, type_sparsity=by_type)
    if cloze > 0:
        paragraphs = [p for t in load_texts(text, (assets.CLOZE_NOVEL,)) for p in assets.paragraphs(t)]
        items = cloze_items(tokenizer, paragraphs, cloze)
        if items:
            result.cloze_accuracy = evaluator.cloze(items, progress)
            result.cloze_items = len(items)
    return result
