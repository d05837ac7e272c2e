"""What to calibrate: per-layer-type sparsity targets, the centring method, calibration data sizes."""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

from scap_ov.errors import ScapError
from scap_ov.layers import LAYER_TYPES

# Centre m: zero | median | kde (one scalar per FC, SCAP as published) | channel (per-input-channel median).
MODES = ("zero", "median", "kde", "channel")
# scap: every FC at its layer type's target (SCAP as published). teal: the same, zero-centred (TEAL-uniform).
# greedy: the model-level budget allocated across (shared input, block group) by measured end-model loss.
# cats: CATS, a threshold on |act(gate)| only: gate stays dense, up (its rows) and down (its inputs) sparse.
METHODS = ("scap", "teal", "greedy", "cats")
# The export default: greedy for a language model with one model-level budget (below TEAL-uniform's perplexity at
# every budget measured, README "Methods"); scap where greedy does not apply (encoders: no next-token loss;
# per-type --target values).
AUTO_METHOD = "auto"
# What is thresholded: magnitude |x - m|, or weighted |x_j - m_j| * ||W[:, j]|| (weight-aware: a per-channel tau;
# FCs sharing an input use the norms of their stacked weights, so they keep one mask).
SCORES = ("magnitude", "weighted")
# What greedy's probes measure, default first: nll, the increase of the mean next-token loss on the calibration
# text itself (what perplexity measures); kl, the mean next-token KL from the dense model (lower KL need not mean
# lower loss: at 25% greedy-kl has 0.6x TEAL's KL and 2x its loss increase, on held-out text too).
GREEDY_LOSSES = ("nll", "kl")
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
    score: str = "magnitude"
    blocks_per_group: int = 10  # greedy: blocks whose FCs reading one kind of input share a target
    # greedy: calibration windows and tokens per window the end-model loss is measured on. 16 x 256 (4096 tokens)
    # against the former 4 x 128 gave 1.083x dense perplexity at 40% instead of 1.113x on SmolLM2 (README
    # "Methods"): loss differences between levels are small, and 512 tokens measured some as a loss drop.
    probe_windows: int = 16
    probe_tokens: int = 256
    greedy_loss: str = GREEDY_LOSSES[0]  # greedy: cost of a group's level
    # greedy: spacing of the sparsity levels a group can take (1 / step an integer). 0.05 gave 1.103x dense
    # perplexity at 40% on SmolLM2 against 1.083x for 0.1: a finer grid leans harder on additive group costs.
    level_step: float = 0.1
    # greedy: group name -> target of an earlier greedy export (--allocation-from), used instead of probing
    allocation: dict[str, float] | None = None
    weight_correction: bool = False  # least-squares weight correction (scap_ov.calibration.correction)
    correction_damping: float = 1.0  # its ridge, in units of the mean kept-input energy

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
        if self.method not in METHODS + (AUTO_METHOD,):
            raise ScapError(f"unknown method {self.method!r} (choose from {', '.join(METHODS)})")
        if self.score not in SCORES:
            raise ScapError(f"unknown score {self.score!r} (choose from {', '.join(SCORES)})")
        if self.method in ("teal", "cats") and (self.mode != "zero" or self.score != "magnitude"):
            raise ScapError(f"{self.method.upper()} thresholds zero-centred magnitudes: --method {self.method} "
                            f"takes no --mode {self.mode} / --score {self.score}")
        if self.method in ("greedy", "cats") and len(set(self.targets.values())) > 1:
            raise ScapError(f"--method {self.method} meets one model-level --sparsity budget; per-type --target "
                            "values do not apply")
        if self.greedy_loss not in GREEDY_LOSSES:
            raise ScapError(f"unknown greedy loss {self.greedy_loss!r} (choose from {', '.join(GREEDY_LOSSES)})")
        if not (isinstance(self.correction_damping, (int, float)) and math.isfinite(self.correction_damping)
                and self.correction_damping > 0):
            raise ScapError(f"--correction-damping must be a finite number > 0, got {self.correction_damping!r}")
        if self.weight_correction and self.method == "cats":
            raise ScapError("--weight-correction corrects the FCs SCAP prunes the inputs of; CATS prunes act(gate) "
                            "inside the MLP instead: use another --method")
        step = self.level_step
        if not (isinstance(step, (int, float)) and 0 < step <= 0.5 and abs(1 / step - round(1 / step)) < 1e-6):
            raise ScapError(f"--level-step must divide 1 into 2 or more equal levels (e.g. 0.1, 0.05), got "
                            f"{self.level_step!r}")
        if self.allocation is not None:
            if self.method not in ("greedy", AUTO_METHOD):
                raise ScapError(f"--allocation-from reuses a greedy allocation: it does not apply to --method "
                                f"{self.method}")
            for name, value in self.allocation.items():
                check_sparsity(value, f"the reused target of {name}")
        if self.blocks_per_group < 1 or self.probe_windows < 1 or self.probe_tokens < 2:
            raise ScapError("blocks per group and probe windows must be >= 1, probe tokens >= 2")
        return self

    def resolved(self, encoder: bool) -> "CalibrationConfig":
        """This config with ``auto`` replaced by the method it stands for (see AUTO_METHOD)."""
        if self.method != AUTO_METHOD:
            return self
        per_type = len(set(self.targets.values())) > 1
        return replace(self, method="scap" if encoder or per_type else "greedy").validate()
