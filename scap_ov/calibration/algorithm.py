"""SCAP calibration: per FC, a centre m (zero | median | KDE peak) and a threshold tau for its target sparsity.

Shape follows NNCF's SmoothQuant: statistic points at each FC input (``statistics.statistic_points``), one
pass of the model over an ``nncf.Dataset``, then per-FC decisions from the aggregated statistics.
"""
from __future__ import annotations

import numpy as np
import openvino as ov
from tqdm.auto import tqdm

from scap_ov.artifact import Artifact, FCThreshold
from scap_ov.calibration import statistics
from scap_ov.calibration.allocation import greedy_targets
from scap_ov.config import CalibrationConfig
from scap_ov.dataset import calibration_dataset
from scap_ov.layers import FC, require_fcs
from scap_ov.transformations.portable import CENTERED_SUFFIX, apply_portable

# The reference picks among KDE peaks fitted on 100k/200k/300k-value subsamples; Scott's factor n^-1/5
# with bw_adjust 0.5 gives these bandwidths, in units of the data's standard deviation.
KDE_BANDWIDTHS = tuple(0.5 * n ** -0.2 for n in (100_000, 200_000, 300_000))


def output_error(fc_weight: np.ndarray, rows: np.ndarray, mode: float, tau: float) -> float:
    """|| W x - W (s(x - m) + m) ||^2 summed over sampled rows: the error pruning adds to the FC output."""
    d = rows - mode
    pruned_part = np.where(np.abs(d) > tau, 0.0, d)
    return float(np.square(pruned_part @ fc_weight.T).sum())


def choose_mode(method: str, stats: statistics.InputStatistics, fc: FC, target: float) -> float:
    h = stats.histogram
    if method == "zero":
        return 0.0
    if method == "median":
        return h.quantile(0.5)
    sigma = h.std()
    candidates = [h.kde_peak(bw * sigma) for bw in KDE_BANDWIDTHS]
    if len(stats.rows) == 0:
        return candidates[0]
    w = fc.weight.dense()
    errors = [output_error(w, stats.rows, m, h.threshold(m, target)) for m in candidates]
    return candidates[int(np.argmin(errors))]


def _modes(fcs: list[FC], stats: dict[str, statistics.InputStatistics], config: CalibrationConfig,
           targets: dict[str, float]) -> dict[str, float]:
    return {fc.name: choose_mode(config.mode, stats[fc.name], fc, targets[fc.name]) if targets[fc.name] > 0 else 0.0
            for fc in tqdm(fcs, desc="Modes", unit="FC", leave=False, mininterval=2.0)}


def _thresholds(fcs: list[FC], stats: dict[str, statistics.InputStatistics], config: CalibrationConfig,
                targets: dict[str, float], modes: dict[str, float]) -> list[FCThreshold]:
    """Per FC: the tau that meets its target around its mode."""
    entries = []
    for fc in fcs:
        target, mode, h = targets[fc.name], modes[fc.name], stats[fc.name].histogram
        tau = h.threshold(mode, target)
        entries.append(FCThreshold(name=fc.name, layer_type=fc.layer_type, mode=float(mode), tau=float(tau),
                                   target_sparsity=target, calibration_sparsity=round(h.fraction_within(mode, tau), 6),
                                   method=config.mode))
    return entries


def calibrate(model: ov.Model, windows: np.ndarray | list[np.ndarray], config: CalibrationConfig,
              layer_patterns: dict[str, str] | None = None, model_id: str = "",
              data_id: str = "") -> Artifact:
    """Calibrate every FC of ``model`` (not modified) on token ``windows`` [N, L] (or a list of N 1-D token
    sequences of any lengths, run one at a time); return the artifact.

    Pass 1 observes the dense model. Pruning earlier layers shifts the inputs of later ones (thresholds
    from the dense model overshoot their target), so each refinement pass re-observes every FC input in
    the model pruned with the current thresholds and re-solves tau, keeping the modes.
    """
    config.validate()
    fcs = require_fcs(model, layer_patterns)
    input_names = {name for port in model.inputs for name in port.get_names()}
    dataset = calibration_dataset(windows, input_names)
    stats = statistics.collect(model, {fc.name: fc.node_name for fc in fcs}, dataset, len(windows))
    lengths = [len(w) for w in windows]  # [N, L] windows, or N ragged sequences (encoder sentences)
    info = {"data": data_id, "samples": int(len(windows)), "seq_len": int(max(lengths)),
            "tokens": int(sum(lengths)), "method": config.method, "mode": config.mode, "targets": config.targets,
            "refine_passes": config.refine_passes}
    if config.method == "greedy":
        modes = _modes(fcs, stats, config, {fc.name: config.budget for fc in fcs})
        targets, info["allocation"] = greedy_targets(model, fcs, stats, modes, windows[: config.probe_windows],
                                                     config.budget, config.blocks_per_group, layer_patterns)
    else:
        targets = {fc.name: config.targets[fc.layer_type] for fc in fcs}
        modes = _modes(fcs, stats, config, targets)
    entries = _thresholds(fcs, stats, config, targets, modes)
    for _ in range(config.refine_passes):
        pruned = apply_portable(model.clone(), Artifact(fcs=entries), layer_patterns)
        observed = {fc.name: fc.node_name + CENTERED_SUFFIX for fc in fcs}
        stats = statistics.collect(pruned, observed, dataset, len(windows), reservoir_rows=0)
        entries = _thresholds(fcs, stats, config, targets, modes)
    return Artifact(fcs=entries, model=model_id, calibration=info)
