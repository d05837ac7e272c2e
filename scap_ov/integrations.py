"""Make OpenVINO-based libraries load SCAP models: register the CPU extension with the Cores they use,
and check a SCAP model folder before loading it so a missing piece gets a message that says what to do."""
from __future__ import annotations

import importlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

from scap_ov.artifact import ARTIFACT_NAME
from scap_ov.errors import ScapError
from scap_ov.export import IR_XML
from scap_ov.extension import check_compatible, extension_path, register
from scap_ov.ops import OP_TYPE, SCHEMA_VERSIONS

# optimum-intel keeps one module-level `core = Core()` per modeling module; OVModelForCausalLM reads and
# compiles through modeling_base's, the decoder and quantizer modules through their own.
OPTIMUM_INTEL_CORE_MODULES = (
    "optimum.intel.openvino.modeling_base",
    "optimum.intel.openvino.modeling_decoder",
    "optimum.intel.openvino.quantization",
)
_OP_LAYER = re.compile(rf'<layer [^>]*type="{OP_TYPE}"[^>]*>\s*<data schema_version="(-?\d+)"')


def enable_optimum_intel() -> list[str]:
    """Register the extension with optimum-intel's Cores; returns the modules patched. Idempotent."""
    patched = []
    for name in OPTIMUM_INTEL_CORE_MODULES:
        module = importlib.import_module(name)
        register(module.core)
        patched.append(name)
    return patched


def genai_extensions() -> list[str]:
    """The value for ``openvino_genai.LLMPipeline(..., extensions=...)``."""
    return [extension_path()]


@dataclass
class FolderCheck:
    folder: Path
    fused_ops: int  # SCAPFullyConnected ops in the IR (0: a portable or dense model, no extension needed)
    artifact: Path | None


def check_folder(folder: Path) -> FolderCheck:
    """Everything a SCAP model folder needs to load here, checked up front with what-to-do messages:
    the IR, its op schema version, the calibration artifact, and (for fused IRs) an extension built for
    the running OpenVINO release."""
    folder = Path(folder)
    xml = folder / IR_XML
    if not xml.is_file():
        raise ScapError(f"{folder} holds no {IR_XML}; pass a folder written by 'scap-ov export'")
    text = xml.read_text(errors="replace")
    versions = {int(v) for v in _OP_LAYER.findall(text)}
    fused = text.count(f'type="{OP_TYPE}"')
    unsupported = sorted(v for v in versions if v not in SCHEMA_VERSIONS)
    if unsupported:
        raise ScapError(f"{xml} has {OP_TYPE} ops of schema version {unsupported[0]}; this scap-ov implements "
                        f"schema versions {', '.join(map(str, SCHEMA_VERSIONS[:-1]))} and {SCHEMA_VERSIONS[-1]}: install the scap-ov release that wrote the model, or "
                        "re-export it with this one")
    artifact = folder / ARTIFACT_NAME
    if not artifact.is_file():
        if fused:
            raise ScapError(f"{folder} has a SCAP IR but no {ARTIFACT_NAME}: the folder is incomplete; copy the "
                            "whole folder written by 'scap-ov export', or re-export the model")
        artifact = None
    else:
        try:
            json.loads(artifact.read_text())
        except ValueError as exc:
            raise ScapError(f"{artifact} is not valid JSON ({exc}); re-export the model") from exc
    if fused:
        try:
            check_compatible(extension_path())
        except ScapError as exc:
            raise ScapError(f"{folder} needs the scap-ov CPU extension to run its {fused} {OP_TYPE} ops, but "
                            f"{exc}") from exc
    return FolderCheck(folder=folder, fused_ops=fused, artifact=artifact)


# Compile properties a folder with SCAPFullyConnected ops gets unless the caller sets them. The op computes in f32;
# on a CPU with AVX512_BF16 or AMX the plugin's default precision is bf16, which runs every other node in bf16 with
# conversions around each op (measured on Zen 4, SmolLM2 fp32 at 35%, genai: 40.6 tok/s at the bf16 default on a
# busy machine, 47-55 tok/s with f32).
SCAP_FOLDER_PROPERTIES = {"INFERENCE_PRECISION_HINT": "f32"}


def load_causal_lm(folder: Path, **kwargs):
    """``OVModelForCausalLM.from_pretrained(folder, **kwargs)`` for a SCAP folder, after check_folder and
    registering the extension with optimum-intel; a fused folder's ``ov_config`` starts from
    SCAP_FOLDER_PROPERTIES (keys the caller gives win)."""
    check = check_folder(folder)
    enable_optimum_intel()
    from optimum.intel import OVModelForCausalLM

    if check.fused_ops:
        kwargs["ov_config"] = {**SCAP_FOLDER_PROPERTIES, **(kwargs.get("ov_config") or {})}
    return OVModelForCausalLM.from_pretrained(folder, **kwargs)


def llm_pipeline(folder: Path, device: str = "CPU", **properties):
    """``openvino_genai.LLMPipeline`` for a SCAP folder, after check_folder, with the extension passed and, for a
    fused folder, SCAP_FOLDER_PROPERTIES unless given."""
    import openvino_genai

    check = check_folder(folder)
    if check.fused_ops:
        properties = {"extensions": genai_extensions(), **SCAP_FOLDER_PROPERTIES, **properties}
    return openvino_genai.LLMPipeline(str(folder), device, **properties)
