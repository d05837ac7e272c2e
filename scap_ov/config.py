"""What to calibrate: per-layer-type sparsity targets, the centring method, calibration data sizes."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from scap_ov.errors import ScapError
from scap_ov.layers import LAYER_TYPES

MODES = ("zero", "median", "kde")
# scap: every FC at its layer type's target (SCAP as published). teal: the same, zero-centred (TEAL-uniform).
# greedy: the model-level budget allocated across (shared input, block group) by measured end-model KL.
METHODS = ("scap", "teal", "greedy")
DEFAULT_SPARSITY = 0.4


def check_sparsity(value: float, what: str = "sparsity") -> float:
    if not isinstance(value, (int, float)) or not math.isfinite(value) or not 0.0 <= value < 1.0:
        raise ScapError(f"{what} must lie in [0, 1), got {value!r}")
    return float(value)


def parse_targets(sparsity: float | None = None, per_type: dict[str, float] | None = None) -> dict[str, float]:
    """Per-layer-type targets: ``sparsity`` for every type, then ``per_type`` overrides."""
    base = check_sparsity(DEFAULT_SPARSITY if sparsity is None else sparsity)
    targets = {t: base for t in LAYER_TYPES}
    for layer_type, value in (per_type or {}).items():
        if layer_type not in LAYER_TYPES:
            raise ScapError(f"unknown layer type {layer_type!r} (known: {', '.join(LAYER_TYPES)})")
        targets[layer_type] = check_sparsity(value, f"sparsity of {layer_type}")
    return targets


@dataclass
class CalibrationConfig:
    targets: dict[str, float] = field(default_factory=parse_targets)
    mode: str = "zero"
    samples: int = 64  # token windows of seq_len tokens (the SCAP reference uses 64 x 256)
    seq_len: int = 256
    refine_passes: int = 1  # re-observe inputs in the pruned model and re-solve tau (see calibrate())
    method: str = "scap"
    blocks_per_group: int = 10  # greedy: blocks whose FCs reading one kind of input share a target
    probe_windows: int = 4  # greedy: calibration windows the end-model KL is measured on

    @property
    def budget(self) -> float:
        """Model-level target: the mean of the per-type targets (all equal unless set per type)."""
        return sum(self.targets.values()) / len(self.targets)

    def validate(self) -> "CalibrationConfig":
        if self.mode not in MODES:
            raise ScapError(f"unknown mode {self.mode!r} (choose from {', '.join(MODES)})")
        for layer_type, value in self.targets.items():
            if layer_type not in LAYER_TYPES:
                raise ScapError(f"unknown layer type {layer_type!r} (known: {', '.join(LAYER_TYPES)})")
            check_sparsity(value, f"sparsity of {layer_type}")
        if self.samples < 1:
            raise ScapError(f"--samples must be >= 1, got {self.samples}")
        if not 0 <= self.refine_passes <= 5:
            raise ScapError(f"--refine-passes must lie in [0, 5], got {self.refine_passes}")
        if self.seq_len < 8:
            raise ScapError(f"--seq-len must be >= 8, got {self.seq_len}")
        if self.method not in METHODS:
            raise ScapError(f"unknown method {self.method!r} (choose from {', '.join(METHODS)})")
        if self.method == "teal" and self.mode != "zero":
            raise ScapError(f"TEAL thresholds are zero-centred: --method teal takes no --mode {self.mode}")
        if self.method == "greedy" and len(set(self.targets.values())) > 1:
            raise ScapError("--method greedy allocates one model-level --sparsity budget; per-type --target "
                            "values do not apply")
        if self.blocks_per_group < 1 or self.probe_windows < 1:
            raise ScapError("blocks per group and probe windows must be >= 1")
        return self
