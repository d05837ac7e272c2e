"""Least-squares weight correction: let each sparse FC's kept inputs stand in for the ones it prunes.

A pruned FC computes W x~ with x~ = d * 1(|d| > tau) (d = x - m) instead of W d. Over the calibration tokens,
the correction that best maps x~ back to W d, ridge-regularised towards no change, is

    W' = W + W R (G + lam I)^-1,   G = E[x~ x~^T],  R = E[(d - x~) x~^T],  lam = damping * mean(diag G)

(R regresses what the threshold drops on what it keeps: pruned channels correlate with kept ones; d and x~ are
centred by the FC's mode). The target is the FC's own unpruned input in the pruned model, not the dense model's
input of that FC: regressing the dense model's input (so each FC would also undo the drift pruning upstream
causes) measured 2.79x dense perplexity for TEAL at 40% on SmolLM2 against 1.13x, because every FC then
corrects the whole upstream drift at once and the corrections add up (undoing it needs block-by-block fits,
one calibration pass per block). Kept columns
of W' are what the sparse kernel reads, so decode reads exactly the same bytes; the folded bias stays W m.

The statistics are second moments of d in the model pruned with the final thresholds (so each FC sees the inputs
the deployed model gives it), one K x K pair per distinct (input, mode, tau): q/k/v and gate/up share theirs.
Regularising the *correction* matters: ridge on W' itself (M = E[d x~^T](G + lam I)^-1) shrinks the columns of
rarely kept channels and measured far worse. Measured on SmolLM2 (README "Methods"): a correction fitted on the
calibration novels lowers held-out perplexity when damping is strong (damping 1) and raises it when weak (0.01).
"""
from __future__ import annotations

import nncf
import numpy as np
import openvino as ov
from nncf.common.tensor_statistics.collectors import AggregatorBase

from scap_ov.artifact import FCThreshold
from scap_ov.calibration import statistics
from scap_ov.errors import ScapError
from scap_ov.layers import FC
from scap_ov.transformations.portable import CENTERED_SUFFIX


MOMENT_BYTES = 16  # two float64 K x K sums per observed input
# Moments of this many bytes are collected per pass over the calibration data (SmolLM2: 1.6 GB, one pass; a
# Llama-2-7B block needs 2.7 GB, so one pass per block or two).
MOMENTS_MEMORY = 3 << 30


class SecondMomentsAggregator(AggregatorBase):
    """Sums x~^T x~ and (d - x~)^T x~ over every token row of the centred input d = x - m (float64 sums of
    float32 per-call products)."""

    def __init__(self, mode: np.ndarray, tau: np.ndarray):
        super().__init__(num_samples=None)
        self.mode = mode
        self.tau = tau
        self.reset()

    def reset(self) -> None:
        super().reset()
        self.kept_kept = self.dropped_kept = None
        self.rows = 0

    def _register_reduced_input_impl(self, x) -> None:
        d = np.asarray(x.data, dtype=np.float32).reshape(-1, x.shape[-1]) - self.mode  # observed: x
        kept = np.where(np.abs(d) > self.tau, d, np.float32(0))
        dropped = d - kept
        if self.kept_kept is None:
            self.kept_kept = np.zeros((d.shape[1], d.shape[1]), np.float64)
            self.dropped_kept = np.zeros_like(self.kept_kept)
        self.kept_kept += kept.T @ kept
        self.dropped_kept += dropped.T @ kept
        self.rows += d.shape[0]

    def _aggregate_impl(self):
        return self

    # one aggregator per (input, tau): never deduplicated by NNCF as equal to another's
    def __eq__(self, other) -> bool:
        return self is other

    def __hash__(self) -> int:
        return id(self)


def check_correctable(fcs: list[FC]) -> None:
    compressed = sorted({fc.weight.format_name() for fc in fcs if fc.weight.compressed})
    if compressed:
        raise ScapError(f"--weight-correction rewrites float FC weights; this model's are {', '.join(compressed)}. "
                        "Export the float model with --weight-correction (fp32 or fp16 weights)")


def _shared_key(fc: FC, entry: FCThreshold) -> tuple:
    source = fc.activation
    return (source.get_node().get_friendly_name(), source.get_index(), repr(entry.mode), repr(entry.tau))


def _chunks(names: list[str], size, budget: int) -> list[list[str]]:
    """``names`` in order, cut into runs whose summed ``size`` stays within ``budget`` (at least one each)."""
    chunks, used = [[]], 0
    for name in names:
        if chunks[-1] and used + size(name) > budget:
            chunks.append([])
            used = 0
        chunks[-1].append(name)
        used += size(name)
    return chunks


def weight_corrections(pruned: ov.Model, fcs: list[FC], entries: list[FCThreshold], dataset: nncf.Dataset,
                       subset_size: int, damping: float, memory_bytes: int = MOMENTS_MEMORY) -> dict[str, np.ndarray]:
    """Per FC name, the correction W R (G + lam I)^-1 (float32 [OC, IC], the MatMul's W orientation), from the
    second moments of its centred input in ``pruned`` (the model with ``entries`` applied; ``fcs`` are the FCs
    of the unpruned model, whose inputs tell which FCs share one). Inputs are observed in chunks of at most
    ``memory_bytes`` of moments, one pass over ``dataset`` each."""
    by_name = {e.name: e for e in entries}
    key = {fc.name: _shared_key(fc, by_name[fc.name]) for fc in fcs}
    first: dict[tuple, FC] = {}  # shared input -> the FC whose centred input is observed
    for fc in fcs:
        first.setdefault(key[fc.name], fc)
    observed = {fc.name: fc.node_name + CENTERED_SUFFIX for fc in first.values()}
    modes = {name: np.asarray(by_name[name].mode, np.float32) for name in observed}
    taus = {name: np.asarray(by_name[name].tau, np.float32) for name in observed}
    width = {fc.name: fc.in_features for fc in first.values()}
    gains: dict[str, np.ndarray] = {}  # observed FC -> R (G + lam I)^-1, [IC, IC]
    for chunk in _chunks(list(observed), lambda name: MOMENT_BYTES * width[name] ** 2, memory_bytes):
        moments = statistics.collect_with(pruned, {name: observed[name] for name in chunk}, dataset, subset_size,
                                          lambda name: SecondMomentsAggregator(modes[name], taus[name]))
        for name, agg in moments.items():
            g = agg.kept_kept / agg.rows
            r = agg.dropped_kept / agg.rows
            lam = damping * float(np.mean(np.diag(g)))
            if lam <= 0:  # nothing kept on any token: nothing to regress on
                continue
            # R (G + lam I)^-1 = ((G + lam I)^-1 R^T)^T, G symmetric
            gains[name] = np.linalg.solve(g + lam * np.eye(len(g)), r.T).T
    corrections = {}
    for fc in fcs:
        gain = gains.get(first[key[fc.name]].name)
        if gain is not None:
            w = fc.weight.dense().astype(np.float64)  # [OC, IC]
            corrections[fc.name] = (w @ gain).astype(np.float32)
    return corrections
