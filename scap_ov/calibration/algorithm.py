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


def _thresholds(fcs: list[FC], stats: dict[str, statistics.InputStatistics], config: CalibrationConfig,
                modes: dict[str, float] | None) -> list[FCThreshold]:
    """Per FC: its mode (chosen now, or kept from ``modes``) and the tau that meets its target."""
    entries = []
    for fc in tqdm(fcs, desc="Thresholds", unit="FC", leave=False, mininterval=2.0):
        target = config.targets[fc.layer_type]
        s = stats[fc.name]
        if modes is not None:
            mode = modes[fc.name]
        else:
            mode = choose_mode(config.mode, s, fc, target) if target > 0 else 0.0
        tau = s.histogram.threshold(mode, target)
        entries.append(FCThreshold(name=fc.name, layer_type=fc.layer_type, mode=float(mode), tau=float(tau),
                                   target_sparsity=target,
                                   calibration_sparsity=round(s.histogram.fraction_within(mode, tau), 6),
                                   method=config.mode))
    return entries


def calibrate(model: ov.Model, windows: np.ndarray, config: CalibrationConfig,
              layer_patterns: dict[str, str] | None = None, model_id: str = "",
              data_id: str = "") -> Artifact:
    """Calibrate every FC of ``model`` (not modified) on token ``windows`` [N, L]; return the artifact.

    Pass 1 observes the dense model. Pruning earlier layers shifts the inputs of later ones (thresholds
    from the dense model overshoot their target), so each refinement pass re-observes every FC input in
    the model pruned with the current thresholds and re-solves tau, keeping the modes.
    """
    config.validate()
    fcs = require_fcs(model, layer_patterns)
    input_names = {name for port in model.inputs for name in port.get_names()}
    dataset = calibration_dataset(windows, input_names)
    stats = statistics.collect(model, {fc.name: fc.node_name for fc in fcs}, dataset, len(windows))
    entries = _thresholds(fcs, stats, config, modes=None)
    info = {"data": data_id, "samples": int(len(windows)), "seq_len": int(windows.shape[1]),
            "tokens": int(windows.size), "mode": config.mode, "targets": config.targets,
            "refine_passes": config.refine_passes}
    for _ in range(config.refine_passes):
        pruned = apply_portable(model.clone(), Artifact(fcs=entries), layer_patterns)
        observed = {fc.name: fc.node_name + CENTERED_SUFFIX for fc in fcs}
        stats = statistics.collect(pruned, observed, dataset, len(windows), reservoir_rows=0)
        entries = _thresholds(fcs, stats, config, modes={e.name: e.mode for e in entries})
    return Artifact(fcs=entries, model=model_id, calibration=info)
