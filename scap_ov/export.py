"""Dense OpenVINO IR of a model through optimum-intel's exporter (OpenVINO's PyTorch frontend for model types it
cannot export), offline; cached for packaged models."""
from __future__ import annotations

import hashlib
import os
import shutil
import warnings
from contextlib import contextmanager
from pathlib import Path

from scap_ov import assets
from scap_ov.errors import ScapError
from scap_ov.fsutil import atomic_output_dir

IR_XML = "openvino_model.xml"
# Files of an optimum-intel model folder besides the IR itself.
SIDE_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
              "special_tokens_map.json", "chat_template.jinja", "openvino_tokenizer.xml",
              "openvino_tokenizer.bin", "openvino_detokenizer.xml", "openvino_detokenizer.bin",
              "openvino_config.json", "preprocessor_config.json")


def is_ir_folder(path: Path) -> bool:
    return (Path(path) / IR_XML).is_file()


def export_task(hf_folder: Path) -> str:
    """optimum-intel task for a transformers folder: feature extraction for encoders, image classification or
    feature extraction for vision models, else a stateful decoder."""
    from scap_ov import encoder, vision

    if vision.is_vision(hf_folder):
        return vision.export_task(hf_folder)
    return encoder.EXPORT_TASK if encoder.is_encoder(hf_folder) else "text-generation-with-past"


# transformers model types this optimum-intel cannot export: 2.2 registers mamba and falcon_mamba (and Mamba2
# mixers only inside hybrids such as granitemoehybrid and zamba2), not mamba2. OpenVINO's PyTorch frontend
# converts them instead, stateless: the whole sequence in one call (input_ids -> logits, no cache). Node names
# keep the module path (__module.backbone.layers.N.mixer.in_proj/...) as optimum's do, so layers.py finds the FCs.
TORCH_CONVERTED_TYPES = ("mamba2",)


def convert_from_torch(hf_folder: Path, out: Path) -> Path:
    """An f32 IR of a causal LM converted by ov.convert_model from its torch module (see TORCH_CONVERTED_TYPES)."""
    import openvino as ov
    import torch
    from transformers import AutoModelForCausalLM

    with atomic_output_dir(out, overwrite=True) as tmp:
        try:
            model = AutoModelForCausalLM.from_pretrained(hf_folder, dtype=torch.float32).eval()
            model.config.use_cache = False  # logits only: no cache object in the traced outputs
            # Mamba2 pads the sequence to whole scan chunks only when it is not a multiple of chunk_size: trace
            # a length that needs padding, so the traced graph keeps the (dynamically sized) pad for any length.
            length = getattr(model.config, "chunk_size", 16) + 1
            example = {"input_ids": torch.ones((1, length), dtype=torch.int64)}
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")  # TracerWarning on that branch: tests check padded and whole lengths
                ov_model = ov.convert_model(model, example_input=example)
        except Exception as exc:  # the tracer and frontend raise many types; report one line
            raise ScapError(f"OpenVINO could not convert {hf_folder} from torch: {exc}") from exc
        ov_model.outputs[0].get_tensor().set_names({"logits"})  # the frontend adds a numeric name
        ov.save_model(ov_model, tmp / IR_XML, compress_to_fp16=False)
        copy_side_files(hf_folder, tmp)
    return out


@contextmanager
def class_attribute_patch(attribute: str, values: dict[type, object]):
    """While inside, each class in ``values`` has ``attribute`` set to its value; on exit the class's own value
    (or its absence, so inheritance applies again) is restored."""
    saved = {cls: cls.__dict__.get(attribute) for cls in values}
    for cls, value in values.items():
        setattr(cls, attribute, value)
    try:
        yield
    finally:
        for cls, value in saved.items():
            if value is None:
                delattr(cls, attribute)
            else:
                setattr(cls, attribute, value)


# optimum-intel 2.2 refuses gemma3_text under transformers > 5.0, a cap its Gemma3 text config inherits from
# Gemma v1's; the export itself is exact under the installed transformers (tests/test_gemma3.py compares the IR's
# logits with torch's), so the cap is raised for the duration of an export.
_EXPORT_CAPS = {"Gemma3TextOpenVINOConfig": "5.5.99"}


def raised_export_caps():
    """optimum-intel export configs in ``_EXPORT_CAPS`` accept the installed transformers while inside."""
    from optimum.exporters.openvino import model_configs

    caps = {getattr(model_configs, name): cap for name, cap in _EXPORT_CAPS.items() if hasattr(model_configs, name)}
    return class_attribute_patch("MAX_TRANSFORMERS_VERSION", caps)


@contextmanager
def export_patches():
    """Every adjustment scap-ov makes to optimum-intel's export: raised version caps, one FC per MoE expert."""
    from scap_ov.moe import per_expert_export

    with raised_export_caps(), per_expert_export():
        yield


def export_dense(hf_folder: Path, out: Path) -> Path:
    """optimum-intel export of a transformers folder to an f32 IR with tokenizers: a stateful decoder, an
    encoder's feature extractor (last_hidden_state) or a vision model (see export_task); model types optimum
    cannot export are converted from torch (TORCH_CONVERTED_TYPES)."""
    from scap_ov.encoder import model_type

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if model_type(hf_folder) in TORCH_CONVERTED_TYPES:
        return convert_from_torch(hf_folder, out)
    from optimum.exporters.openvino import main_export

    with atomic_output_dir(out, overwrite=True) as tmp, export_patches():
        try:
            main_export(str(hf_folder), output=tmp, task=export_task(hf_folder), convert_tokenizer=True)
        except Exception as exc:  # the exporter raises many types; report one line
            raise ScapError(f"optimum-intel could not export {hf_folder}: {exc}") from exc
    return out


def dense_ir(model: str) -> Path:
    """An IR folder for ``model`` (packaged name, .gguf, HF folder, or an IR folder returned as is)."""
    path = Path(model)
    if path.is_dir() and is_ir_folder(path):
        return path
    hf = assets.resolve_model(model)
    if is_ir_folder(hf):
        return hf
    key = hashlib.sha1(str(hf.resolve()).encode()).hexdigest()[:12]
    cached = assets.cache_dir() / "ir" / f"{hf.name}-{key}"
    if not is_ir_folder(cached):
        export_dense(hf, cached)
    return cached


def copy_side_files(src: Path, dst: Path) -> None:
    for name in SIDE_FILES:
        if (src / name).is_file():
            shutil.copy2(src / name, dst / name)
