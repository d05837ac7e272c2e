"""What CPU this is, for benchmark and test reports.

VMs here report only "AMD EPYC" as the model name, for an AVX2-only Zen 3 and an AVX-512 Zen 4 alike, and every
result depends on which: reports carry the family / model numbers and the kernel ISA the extension picks.
"""
from __future__ import annotations

import platform
import os
from functools import lru_cache
from pathlib import Path

ISAS = ("scalar", "avx2", "avx512")  # kernel ISAs, narrowest first (SCAP_OV_ISA values)


@lru_cache(maxsize=1)
def _cpuinfo() -> dict[str, str]:
    """The fields of the first processor in /proc/cpuinfo (empty where there is none)."""
    fields: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if not line.strip():
                break
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    return fields


def kernel_isa() -> str:
    """The widest kernel ISA the extension runs on this CPU (the feature checks of kernels/dispatch.cpp)."""
    flags = set(_cpuinfo().get("flags", "").split())
    if not {"avx2", "fma", "f16c", "bmi2"} <= flags:
        return "scalar"
    return "avx512" if {"avx512f", "avx512bw", "avx512vl", "avx512dq"} <= flags else "avx2"


def has_vnni() -> bool:
    """AVX-512 VNNI: the prefill and one-token decode kernels with dynamically quantized activations
    (kernels/avx512_vnni.cpp)."""
    return kernel_isa() == "avx512" and "avx512_vnni" in _cpuinfo().get("flags", "").split()


def dynamic_quantization_chunk() -> int:
    """Channels per activation chunk of the dynamically quantized paths (prefill, one-token decode), as the extension reads
    $SCAP_OV_DYNAMIC_QUANTIZATION_GROUP_SIZE (default 32, 0 = off; rounded down to a multiple of 4, at most 512)."""
    raw = os.environ.get("SCAP_OV_DYNAMIC_QUANTIZATION_GROUP_SIZE", "")
    if not raw:
        return 32
    v = int(raw) if raw.isdigit() else -1
    if not 0 <= v < 2**63:  # the extension refuses the same values when a model is compiled
        raise ValueError(f"SCAP_OV_DYNAMIC_QUANTIZATION_GROUP_SIZE={raw!r} is not a non-negative integer")
    return 0 if v == 0 else min(512, max(4, v // 4 * 4))


def cpu_description() -> str:
    """E.g. "AMD EPYC (family 25 model 17, avx512)"."""
    info = _cpuinfo()
    name = info.get("model name") or platform.processor() or platform.machine()
    return f"{name} (family {info.get('cpu family', '?')} model {info.get('model', '?')}, {kernel_isa()})"
