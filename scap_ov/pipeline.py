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

from scap_ov import assets, encoder, vision
from scap_ov.artifact import ARTIFACT_NAME, Artifact
from scap_ov.calibration import calibrate
from scap_ov.compression import WeightFormat, config_fc_channels
from scap_ov.config import CalibrationConfig
from scap_ov.dataset import load_texts, sample_tokens, token_windows
from scap_ov.errors import ScapError
from scap_ov.export import IR_XML, copy_side_files, dense_ir, is_ir_folder
from scap_ov.fsutil import atomic_output_dir, check_output_dir
from scap_ov.layers import weighted_matmuls
from scap_ov.transformations.fuse_cpu import apply_fusion
from scap_ov.transformations.portable import apply_portable

log = logging.getLogger("scap_ov")
PORTABLE_XML = "openvino_model_portable.xml"

@dataclass
class ExportResult:
    output: Path
    artifact: Artifact
    dense_ir: Path
    weight_format: str  # of the FC weights in the written IRs, e.g. fp32, int4_asym_g64

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
                layer_patterns: dict[str, str] | None = None,
                weight_format: WeightFormat | None = None,
                windows: np.ndarray | list[np.ndarray] | None = None) -> ExportResult:
    """Export ``model`` with SCAP; ``weight_format`` compresses its weights first (None keeps them as stored,
    which is how an already-compressed IR folder is exported). ``windows`` (int64 [N, T] token ids, for an
    encoder a list of 1-D token sequences, for a vision model a list of {"pixel_values": array}) replaces the
    calibration data for callers that prepare samples themselves. A vision model's ``calibration_data`` is a
    folder of images."""
    config = (config or CalibrationConfig()).validate()
    weight_format = weight_format.validate() if weight_format else None
    if config.weight_correction and weight_format and weight_format.compressed:
        raise ScapError(f"--weight-correction rewrites float weights; it cannot be combined with --weight-format "
                        f"{weight_format.name} (export fp32 or fp16)")
    output = Path(output)
    check_output_dir(output, overwrite)  # fail before any long work
    fixed = Artifact.load(artifact) if artifact else None
    # A folder is images, for a vision model; whether the model is one is known once it is exported (below).
    images = calibration_data is not None and Path(calibration_data).is_dir()
    texts = None if fixed or windows is not None or images else calibration_texts(calibration_data)
    if weight_format and not is_ir_folder(Path(model)):  # check the group size before the optimum export
        weight_format = weight_format.check_channels(config_fc_channels(assets.resolve_model(model)))
    ir_folder = dense_ir(model)
    is_encoder, is_vision = encoder.is_encoder(ir_folder), vision.is_vision(ir_folder)
    config = config.resolved(is_encoder or is_vision)
    if is_encoder or is_vision:
        encoder.check_method(config.method, "vision" if is_vision else "encoder")
    if fixed is None and windows is None and is_vision:  # images, as the model's image processor prepares them
        texts, windows = None, vision.calibration_samples(calibration_data, ir_folder, config.samples)
    elif fixed is None and windows is None:
        texts = calibration_texts(calibration_data) if texts is None else texts  # an image folder fails here
        if is_encoder:  # one paragraph per sample, up to seq_len tokens
            windows = encoder.calibration_samples(load_tokenizer(ir_folder), texts, config.samples, config.seq_len)
        else:
            windows = token_windows(load_tokenizer(ir_folder), texts, config.seq_len, config.samples, "calibration")

    ov_model = ov.Core().read_model(ir_folder / IR_XML)
    ov_model, stored = compress_weights(ov_model, weight_format)
    if fixed is None:
        log.info("calibrating on %d samples, %d tokens (%d refinement passes), %s weights", len(windows),
                 sum(sample_tokens(w) for w in windows), config.refine_passes, stored)
        fixed = calibrate(ov_model, windows, config, layer_patterns, model_id=str(model),
                          data_id=calibration_data or ("given samples" if texts is None else
                                                       "austen:" + "+".join(assets.CALIBRATION_NOVELS)))
        fixed.calibration["weight_format"] = stored
    elif fixed.calibration.get("weight_format", stored) != stored:
        log.warning("the artifact was calibrated on %s weights, this model has %s weights",
                    fixed.calibration["weight_format"], stored)
    apply_portable(ov_model, fixed, layer_patterns)
    log.info("writing portable and fused IRs to %s", output)
    with atomic_output_dir(output, overwrite) as tmp:
        ov.save_model(ov_model, tmp / PORTABLE_XML, compress_to_fp16=False)
        # The Python twin of the op is enough to write the fused IR: export needs no compiled extension.
        apply_fusion(ov_model, native=False)
        ov.save_model(ov_model, tmp / IR_XML, compress_to_fp16=False)
        fixed.save(tmp / ARTIFACT_NAME)
        copy_side_files(ir_folder, tmp)
    return ExportResult(output=output, artifact=fixed, dense_ir=ir_folder, weight_format=stored)


def export_dense(output: Path, model: str = assets.DEFAULT_MODEL, weight_format: WeightFormat | None = None,
                 overwrite: bool = False) -> Path:
    """A dense (no SCAP) model folder with weights in ``weight_format``: what ``optimum-cli export openvino
    --weight-format`` writes. The baseline SCAP is measured against, and a pre-quantized ``--model``."""
    weight_format = weight_format.validate() if weight_format else None
    output = Path(output)
    check_output_dir(output, overwrite)
    ir_folder = dense_ir(model)
    ov_model, _ = compress_weights(ov.Core().read_model(ir_folder / IR_XML), weight_format)
    with atomic_output_dir(output, overwrite) as tmp:
        ov.save_model(ov_model, tmp / IR_XML, compress_to_fp16=False)
        copy_side_files(ir_folder, tmp)
    return output


def compress_weights(model: ov.Model, weight_format: WeightFormat | None) -> tuple[ov.Model, str]:
    """``model`` with its weights in ``weight_format``, and the name of the FC weight format it now has.

    Only a float32 model is compressed: an IR whose FC weights are already compressed or f16 is exported as
    stored (``weight_format`` None), never re-quantized.
    """
    stored = stored_weight_format(model)
    if weight_format is None or weight_format.name == stored:
        return model, stored
    if stored != "fp32":
        raise ScapError(f"the model's FC weights are already {stored}; export it without --weight-format to "
                        f"keep them, or start from the float32 model to get {weight_format.name}")
    weight_format = weight_format.check_channels(chain.dense_shape()[1] for _, chain in weighted_matmuls(model))
    log.info("compressing weights to %s", weight_format.describe())
    model = weight_format.apply(model)
    return model, stored_weight_format(model)


def stored_weight_format(model: ov.Model) -> str:
    """fp32 | fp16 | bf16 | int8_asym | int4_sym_g64 ...: the format most FC weights of ``model`` are stored in."""
    names = [chain.format_name() for _, chain in weighted_matmuls(model)]
    if not names:
        raise ScapError("the model has no MatMul with constant weights")
    name = max(set(names), key=names.count)
    return {"f32": "fp32", "f16": "fp16", "bf16": "bf16"}.get(name, name)


def model_ir(folder: Path) -> Path:
    """The IR quality is measured on in a model folder: the portable SCAP IR, else the (dense) model IR."""
    folder = Path(folder)
    ir = folder / PORTABLE_XML if (folder / PORTABLE_XML).is_file() else folder / IR_XML
    if not ir.is_file():
        raise ScapError(f"{folder} holds no {IR_XML}; pass a folder written by 'scap-ov export'")
    return ir


def evaluate_folder(folder: Path, text: str | None = None, windows: int = 32, seq_len: int = 512,
                    cloze: int = 200, progress: bool = True):
    """Perplexity, cloze accuracy and realised sparsity of the IR in ``folder`` on held-out text."""
    from scap_ov.evaluation import EvalResult, Evaluator, cloze_items

    folder = Path(folder)
    ir = model_ir(folder)
    if encoder.is_encoder(folder):
        raise ScapError(f"{folder} holds an encoder: it has no perplexity or cloze; evaluate its embeddings with "
                        "scap_ov.encoder.evaluate_encoder_folder (what 'scap-ov eval' does for encoders)")
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
