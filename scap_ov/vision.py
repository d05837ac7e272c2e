"""The vision family (ViT, DeiT): image calibration samples and the agreement of a SCAP model with its dense self.

A vision transformer reads ``pixel_values`` [1, 3, H, W] instead of token ids. Its samples are images from a
folder, preprocessed by the model's own image processor (preprocessor_config.json, which optimum-intel copies
into the IR folder): each sample is a mapping of input name -> array, which ``scap_ov.dataset.model_inputs``
passes through as it is. Quality is the model's output against the dense model's on held-out images (the dense
reference is the evaluated IR with its pruning stripped, as for encoders): top-1 agreement of classifier logits,
or cosine of the mean-pooled last hidden state of a feature extractor.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import openvino as ov

from scap_ov.encoder import config_value, model_type, spread, strip_pruning
from scap_ov.errors import ScapError
from scap_ov.evaluation import Evaluator, weight_byte_sparsity

VISION_MODEL_TYPES = ("vit", "deit")  # transformers model_type values exported and calibrated on images
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
PIXEL_INPUT = "pixel_values"
OUTPUTS = ("logits", "last_hidden_state")  # image-classification, feature-extraction


def is_vision(folder: Path) -> bool:
    return model_type(folder) in VISION_MODEL_TYPES


def export_task(folder: Path) -> str:
    """optimum-intel task: image classification for a ...ForImageClassification checkpoint, else features."""
    architectures = config_value(folder, "architectures") or []
    return "image-classification" if any(a.endswith("ForImageClassification") for a in architectures) \
        else "feature-extraction"


def image_files(source: str | Path | None) -> list[Path]:
    """The image files of a folder, sorted by name."""
    if source is None:
        raise ScapError("a vision model is calibrated on images: pass --calibration-data DIR, a folder of "
                        f"{'/'.join(s[1:] for s in IMAGE_SUFFIXES)} files")
    folder = Path(source)
    if not folder.is_dir():
        raise ScapError(f"{folder} is not a folder of images (a vision model reads images, not text)")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ScapError(f"{folder} holds no image ({', '.join(IMAGE_SUFFIXES)} files)")
    return files


def image_processor(folder: Path):
    """The image processor saved in a model folder (preprocessor_config.json), in its PIL version: transformers'
    AutoImageProcessor and default processors need torchvision, which scap-ov does not install."""
    import transformers

    try:
        name = json.loads((Path(folder) / "preprocessor_config.json").read_text())["image_processor_type"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ScapError(f"{folder} has no readable preprocessor_config.json naming its image processor "
                        f"({exc})") from None
    base = name.removesuffix("Fast").removesuffix("Pil")
    cls = getattr(transformers, base + "Pil", None) or getattr(transformers, base, None)
    if cls is None:
        raise ScapError(f"transformers has no image processor {name!r} (from {folder}/preprocessor_config.json)")
    return cls.from_pretrained(folder)


def pixel_samples(folder: Path, files: list[Path]) -> list[dict[str, np.ndarray]]:
    """Each image as the model's input: ``pixel_values`` [1, 3, H, W] float32 from the image processor saved in
    the model ``folder`` (resize, rescale, normalise as the model was trained)."""
    from PIL import Image

    processor = image_processor(folder)
    samples = []
    for path in files:
        try:
            with Image.open(path) as image:
                pixels = processor(images=image.convert("RGB"), return_tensors="np")[PIXEL_INPUT]
        except OSError as exc:
            raise ScapError(f"cannot read image {path}: {exc}") from exc
        samples.append({PIXEL_INPUT: np.asarray(pixels, dtype=np.float32)})
    return samples


def calibration_samples(source: str | Path | None, folder: Path, count: int) -> list[dict[str, np.ndarray]]:
    """``count`` images spread over the folder ``source``, as model inputs."""
    return pixel_samples(folder, spread(image_files(source), count))


# ------------------------------------------------------------------------------------------------ quality


@dataclass
class VisionQuality:
    images: int
    output: str  # the compared model output: logits or last_hidden_state
    top1_agreement: float | None  # logits: argmax of the SCAP model == argmax of the dense model
    cosine_mean: float  # cosine of the SCAP and dense outputs (hidden states mean-pooled over patches)
    cosine_min: float
    fc_weight_sparsity: float
    layer_sparsity: dict[str, float] = field(default_factory=dict)
    type_sparsity: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def vision_evaluator(model: ov.Model, core: ov.Core | None = None) -> Evaluator:
    names = {n for port in model.outputs for n in port.get_names()}
    output = next((o for o in OUTPUTS if o in names), None)
    if output is None or PIXEL_INPUT not in {n for port in model.inputs for n in port.get_names()}:
        raise ScapError(f"the IR is not an optimum-intel vision export (input {PIXEL_INPUT}, output "
                        f"{' or '.join(OUTPUTS)})")
    return Evaluator(model, core, output=output)


def _outputs(evaluator: Evaluator, samples: list[dict[str, np.ndarray]]) -> tuple[np.ndarray, dict[str, float]]:
    """One output vector per sample (hidden states mean-pooled over patches), and each FC's mean sparsity."""
    rows, sums = [], {}
    for sample in samples:
        out, sparsity = evaluator.forward(sample)
        rows.append(out.astype(np.float64).reshape(-1, out.shape[-1]).mean(axis=0))
        for name, value in sparsity.items():
            sums[name] = sums.get(name, 0.0) + value
    return np.stack(rows), {n: s / len(samples) for n, s in sums.items()}


def evaluate_model(model: ov.Model, samples: list[dict[str, np.ndarray]], core: ov.Core | None = None) -> VisionQuality:
    """Output agreement of ``model`` (a portable SCAP or dense IR) with its pruning-stripped self on ``samples``,
    and the sparsity each FC realises on them."""
    evaluator = vision_evaluator(model, core)
    sparse, layer = _outputs(evaluator, samples)
    dense, _ = _outputs(vision_evaluator(strip_pruning(model), core), samples)
    output = next(n for n in OUTPUTS if n in evaluator.logits_port.get_names())
    cosine = (sparse * dense).sum(1) / np.maximum(np.linalg.norm(sparse, axis=1) * np.linalg.norm(dense, axis=1),
                                                  1e-12)
    top1 = float((sparse.argmax(1) == dense.argmax(1)).mean()) if output == "logits" else None
    total, by_type = weight_byte_sparsity(evaluator.fcs.values(), layer)
    return VisionQuality(images=len(samples), output=output, top1_agreement=top1, cosine_mean=float(cosine.mean()),
                         cosine_min=float(cosine.min()), fc_weight_sparsity=total, layer_sparsity=layer,
                         type_sparsity=by_type)


def evaluate_vision_folder(folder: Path, images: str | Path | None, count: int = 64) -> VisionQuality:
    """Agreement with the dense model and realised sparsity of the IR in a vision SCAP folder on held-out
    images (a folder not used for calibration)."""
    from scap_ov.pipeline import model_ir

    folder = Path(folder)
    if images is None:
        raise ScapError(f"{folder} holds a vision model: pass held-out images with --images DIR (a folder not used "
                        "for calibration)")
    samples = pixel_samples(folder, spread(image_files(images), count))
    return evaluate_model(ov.Core().read_model(model_ir(folder)), samples)
