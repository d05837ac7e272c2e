"""Make OpenVINO-based libraries load SCAP models: register the CPU extension with the Cores they use."""
from __future__ import annotations

import importlib

from scap_ov.extension import extension_path, register

# optimum-intel keeps one module-level `core = Core()` per modeling module; OVModelForCausalLM reads and
# compiles through modeling_base's, the decoder and quantizer modules through their own.
OPTIMUM_INTEL_CORE_MODULES = (
    "optimum.intel.openvino.modeling_base",
    "optimum.intel.openvino.modeling_decoder",
    "optimum.intel.openvino.quantization",
)


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
