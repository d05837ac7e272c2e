"""SCAP calibration: per FC, a centre m and a threshold tau for its target sparsity.

Shape follows NNCF's SmoothQuant: statistic points at each FC input (``statistics.collect``), one pass of the
model over an ``nncf.Dataset``, then per-FC decisions from the aggregated statistics.

What an FC thresholds (``Centre``): |x - m| with m a scalar (zero | median | KDE peak) or a per-channel median,
optionally weighted by the input channel's weight-column norm (``--score weighted``: keep x_j when
|x_j - m_j| * ||W[:, j]|| > tau, i.e. a per-channel threshold tau / ||W[:, j]||). Scalar, unweighted centres
read tau off the histogram of x (one histogram answers any m); the others histogram their score instead.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import openvino as ov
from tqdm.auto import tqdm

from scap_ov.artifact import Artifact, FCThreshold, json_value
from scap_ov.calibration import statistics
from scap_ov.calibration.allocation import greedy_targets, reused_targets
from scap_ov.calibration.correction import check_correctable, weight_corrections
from scap_ov.config import AUTO_METHOD, CalibrationConfig
from scap_ov.dataset import calibration_dataset, sample_tokens
from scap_ov.errors import ScapError
from scap_ov.layers import FC, gated_input, require_fcs
from scap_ov.transformations.portable import CATS_METHOD, CENTERED_SUFFIX, apply_portable

# The reference picks among KDE peaks fitted on 100k/200k/300k-value subsamples; Scott's factor n^-1/5
# with bw_adjust 0.5 gives these bandwidths, in units of the data's standard deviation.
KDE_BANDWIDTHS = tuple(0.5 * n ** -0.2 for n in (100_000, 200_000, 300_000))


def output_error(fc_weight: np.ndarray, rows: np.ndarray, mode: float, tau: float) -> float:
    """|| W x - W (s(x - m) + m) ||^2 summed over sampled rows: the error pruning adds to the FC output."""
    d = rows - mode
    pruned_part = np.where(np.abs(d) > tau, 0.0, d)
    return float(np.square(pruned_part @ fc_weight.T).sum())


def choose_mode(method: str, stats: statistics.InputStatistics, fc: FC, target: float) -> float | np.ndarray:
    h = stats.histogram
    if method == "zero":
        return 0.0
    if method == "median":
        return h.quantile(0.5)
    if method == "channel":
        if len(stats.rows) == 0:
            raise ScapError(f"no calibration rows reached {fc.name}: per-channel modes need them")
        return np.median(stats.rows, axis=0).astype(np.float32)
    sigma = h.std()
    candidates = [h.kde_peak(bw * sigma) for bw in KDE_BANDWIDTHS]
    if len(stats.rows) == 0:
        return candidates[0]
    w = fc.weight.dense()
    errors = [output_error(w, stats.rows, m, h.threshold(m, target)) for m in candidates]
    return candidates[int(np.argmin(errors))]


def channel_norms(fcs: list[FC]) -> dict[str, np.ndarray]:
    """Per FC, ||W[:, j]|| of each input channel over the stacked weights of every FC reading that input."""
    by_input: dict[tuple[str, int], list[FC]] = {}
    for fc in fcs:
        by_input.setdefault((fc.activation.get_node().get_name(), fc.activation.get_index()), []).append(fc)
    norms = {}
    for members in by_input.values():
        n = np.sqrt(sum(np.square(fc.weight.dense().astype(np.float64)).sum(0) for fc in members))
        n = np.maximum(n, 1e-6 * max(float(np.median(n)), 1e-30)).astype(np.float32)  # dead channels: finite tau
        norms.update({fc.name: n for fc in members})
    return norms


@dataclass
class Centre:
    """What an FC thresholds: |x - mode| (* scale, the weight-aware per-channel norms)."""
    mode: float | np.ndarray
    scale: np.ndarray | None = None

    @property
    def scored(self) -> bool:
        """True when tau must come from a histogram of the score, not of x."""
        return np.ndim(self.mode) > 0 or self.scale is not None

    def score(self) -> statistics.Score:
        return statistics.Score(self.mode, 1.0 if self.scale is None else self.scale)

    def solve(self, stats: statistics.InputStatistics, level: float, score_histogram: bool):
        """(tau, fraction of calibration values pruned) for ``level``. ``score_histogram``: the histogram
        holds this centre's score; otherwise a scored centre solves on the sampled rows."""
        h = stats.histogram
        if not self.scored:
            tau = h.threshold(self.mode, level)
            return float(tau), h.fraction_within(self.mode, tau)
        if score_histogram:
            t = h.threshold(0.0, level)
            fraction = h.fraction_within(0.0, t)
        elif len(stats.rows) == 0:
            raise ScapError("a per-channel or weighted threshold needs sampled calibration rows")
        else:
            s = np.abs(self.score()(stats.rows)).ravel()
            t = float(np.quantile(s, level)) if level > 0 else 0.0
            fraction = float(np.mean(s <= t)) if level > 0 else 0.0
        tau = np.float32(t) if self.scale is None else (np.float32(t) / self.scale).astype(np.float32)
        return tau, fraction


def _centres(fcs: list[FC], stats: dict[str, statistics.InputStatistics], config: CalibrationConfig,
             targets: dict[str, float]) -> dict[str, Centre]:
    norms = channel_norms(fcs) if config.score == "weighted" else {}
    return {fc.name: Centre(choose_mode(config.mode, stats[fc.name], fc, targets[fc.name])
                            if targets[fc.name] > 0 else 0.0, norms.get(fc.name))
            for fc in tqdm(fcs, desc="Modes", unit="FC", leave=False, mininterval=2.0)}


def _thresholds(fcs: list[FC], stats: dict[str, statistics.InputStatistics], targets: dict[str, float],
                centres: dict[str, Centre], method: str, score_histogram: bool) -> list[FCThreshold]:
    """Per FC: the tau that meets its target around its centre."""
    entries = []
    for fc in fcs:
        centre, target = centres[fc.name], targets[fc.name]
        tau, fraction = centre.solve(stats[fc.name], target, score_histogram)
        entries.append(FCThreshold(name=fc.name, layer_type=fc.layer_type, mode=json_value(centre.mode),
                                   tau=json_value(tau), target_sparsity=target,
                                   calibration_sparsity=round(float(fraction), 6), method=method))
    return entries


def cats_targets(fcs: list[FC], budget: float) -> dict[str, float]:
    """CATS prunes the gated inputs (down_proj's) and the rows of their ``other`` FC (up_proj's): the level
    on those that meets a model-level FC-weight-byte ``budget``."""
    by_node = {fc.node_name: fc for fc in fcs}
    gated = {fc.name: gated_input(fc) for fc in fcs}
    downs = [fc for fc in fcs if gated[fc.name] is not None]
    if not downs:
        types = sorted({fc.layer_type for fc in fcs})
        raise ScapError("--method cats needs a gated MLP (an FC reading act(gate) * up, e.g. down_proj of "
                        f"SwiGLU/GeGLU); none of this model's FCs ({', '.join(types)}) does")
    prunable = 0
    for fc in downs:
        partner = by_node.get(gated[fc.name].other.get_node().get_friendly_name())
        prunable += fc.weight.nbytes + (partner.weight.nbytes if partner else 0)
    share = prunable / sum(fc.weight.nbytes for fc in fcs)
    level = budget / share
    if level >= 1.0:
        raise ScapError(f"--method cats prunes only gated MLP inputs and their up rows ({share:.0%} of FC-weight "
                        f"bytes here): a model-level budget of {budget:.2f} is out of its reach "
                        f"(at most {share:.2f})")
    return {fc.name: level for fc in downs}


def calibrate(model: ov.Model, windows: np.ndarray | list[np.ndarray] | list[dict], config: CalibrationConfig,
              layer_patterns: dict[str, str] | None = None, model_id: str = "",
              data_id: str = "") -> Artifact:
    """Calibrate every FC of ``model`` (not modified) on token ``windows`` [N, L] (or a list of N 1-D token
    sequences of any lengths, or of N mappings of input name -> array such as images, run one at a time);
    return the artifact.

    Pass 1 observes the dense model. Pruning earlier layers shifts the inputs of later ones (thresholds
    from the dense model overshoot their target), so each refinement pass re-observes every FC input in
    the model pruned with the current thresholds and re-solves tau, keeping the centres.
    """
    config.validate()
    if config.method == AUTO_METHOD:
        raise ScapError("calibrate() needs a resolved method: pass CalibrationConfig.resolved(...)")
    fcs = require_fcs(model, layer_patterns)
    if config.weight_correction:
        check_correctable(fcs)
    reused = None  # checked before any long work
    if config.method == "greedy" and config.allocation is not None:
        reused = reused_targets(fcs, config.allocation, config.budget, config.blocks_per_group)
    input_names = {name for port in model.inputs for name in port.get_names()}
    dataset = calibration_dataset(windows, input_names)
    # [N, L] windows, N ragged sequences (encoder sentences), or N mappings of named inputs (images: no tokens)
    lengths = [sample_tokens(w) for w in windows]
    info = {"data": data_id, "samples": int(len(windows)), "seq_len": int(max(lengths)),
            "tokens": int(sum(lengths)), "method": config.method, "mode": config.mode, "score": config.score,
            "targets": config.targets, "refine_passes": config.refine_passes}
    if config.method == "cats":
        targets = cats_targets(fcs, config.budget)
        fcs = [fc for fc in fcs if fc.name in targets]
        gated = {fc.name: gated_input(fc) for fc in fcs}
        observed = {name: (g.multiply.get_friendly_name(), g.port) for name, g in gated.items()}
        stats = statistics.collect(model, observed, dataset, len(windows), reservoir_rows=0)
        centres = {fc.name: Centre(0.0) for fc in fcs}
    else:
        stats = statistics.collect(model, {fc.name: fc.node_name for fc in fcs}, dataset, len(windows))
        if config.method == "greedy":
            centres = _centres(fcs, stats, config, {fc.name: config.budget for fc in fcs})
        if reused is not None:
            targets, info["allocation"] = reused
        elif config.method == "greedy":
            targets, info["allocation"] = greedy_targets(
                model, fcs, lambda fc, level: centres[fc.name].solve(stats[fc.name], level, False)[0],
                {name: c.mode for name, c in centres.items()}, windows[: config.probe_windows], config.budget,
                config.blocks_per_group, layer_patterns, config.greedy_loss, config.probe_tokens, config.level_step)
        else:
            targets = {fc.name: config.targets[fc.layer_type] for fc in fcs}
            centres = _centres(fcs, stats, config, targets)
    method = CATS_METHOD if config.method == "cats" else config.mode
    entries = _thresholds(fcs, stats, targets, centres, method, score_histogram=False)

    def refine(entries: list[FCThreshold], corrections: dict) -> list[FCThreshold]:
        pruned = apply_portable(model.clone(), Artifact(fcs=entries, corrections=corrections), layer_patterns)
        observed = {fc.name: fc.node_name + CENTERED_SUFFIX for fc in fcs}
        scores = {name: c.score() for name, c in centres.items() if c.scored}
        stats = statistics.collect(pruned, observed, dataset, len(windows), reservoir_rows=0, scores=scores)
        return _thresholds(fcs, stats, targets, centres, method, score_histogram=True)

    def correct(entries: list[FCThreshold], corrections: dict) -> dict:
        pruned = apply_portable(model.clone(), Artifact(fcs=entries, corrections=corrections), layer_patterns)
        fitted = weight_corrections(pruned, fcs, entries, dataset, len(windows), config.correction_damping)
        return {name: c.astype(np.float16) for name, c in fitted.items()}

    for _ in range(config.refine_passes):
        entries = refine(entries, {})
    corrections = {}
    if config.weight_correction:
        # Corrected FCs give later layers slightly larger inputs, which keep more: fit, re-solve tau in the
        # corrected model, and fit again on the final thresholds (with the first fit upstream).
        info["weight_correction"] = {"damping": config.correction_damping}
        corrections = correct(entries, {})
        if config.refine_passes:
            entries = refine(entries, corrections)
            corrections = correct(entries, corrections)
    return Artifact(fcs=entries, model=model_id, calibration=info, corrections=corrections)
