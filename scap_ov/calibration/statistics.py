"""Per-FC-input statistics collected through NNCF's OpenVINO statistics machinery.

Each FC input gets a ``TensorCollector`` at NNCF's PRE_LAYER_OPERATION target point with two branches on a
``RawReducer``: a streaming signed-log histogram (thresholds, median, KDE) and a bounded reservoir of token
rows (output error of candidate modes). Both are fixed-size, so memory does not grow with calibration
tokens. NNCF merges the collectors of FCs that share an input (q/k/v, gate/up): one histogram per input.
"""
from __future__ import annotations

from dataclasses import dataclass

import nncf
import numpy as np
import openvino as ov
from nncf.common.factory import build_graph
from nncf.common.graph.transformations.commands import TargetType
from nncf.common.tensor_statistics.collectors import AggregatorBase, RawReducer, TensorCollector
from nncf.common.tensor_statistics.statistic_point import StatisticPoint, StatisticPointsContainer
from nncf.openvino.graph.transformations.commands import OVTargetPoint
from nncf.openvino.statistics.aggregator import OVStatisticsAggregator

from scap_ov.calibration.histogram import SignedLogHistogram

ALGORITHM_KEY = "SCAP"
HISTOGRAM_BRANCH = "histogram"
RESERVOIR_BRANCH = "reservoir"
RESERVOIR_ROWS = 256


class HistogramAggregator(AggregatorBase):
    """Folds every registered activation tensor into one SignedLogHistogram."""

    def __init__(self):
        super().__init__(num_samples=None)
        self.histogram = SignedLogHistogram()

    def _register_reduced_input_impl(self, x) -> None:
        self.histogram.update(x.data)

    def _aggregate_impl(self) -> SignedLogHistogram:
        return self.histogram

    def reset(self) -> None:
        super().reset()
        self.histogram = SignedLogHistogram()


class ReservoirAggregator(AggregatorBase):
    """Keeps a uniform random sample of at most ``rows`` token rows (reservoir sampling, fixed seed)."""

    def __init__(self, rows: int = RESERVOIR_ROWS, seed: int = 0):
        super().__init__(num_samples=None)
        self.rows = rows
        self.seed = seed
        self.reset()

    def reset(self) -> None:
        super().reset()
        self._rng = np.random.default_rng(self.seed)
        self._sample: np.ndarray | None = None
        self._seen = 0

    def _register_reduced_input_impl(self, x) -> None:
        tokens = np.asarray(x.data, dtype=np.float32).reshape(-1, x.shape[-1])
        if self._sample is None:
            self._sample = np.empty((self.rows, tokens.shape[1]), dtype=np.float32)
        for row in tokens:
            if self._seen < self.rows:
                self._sample[self._seen] = row
            else:
                j = self._rng.integers(0, self._seen + 1)
                if j < self.rows:
                    self._sample[j] = row
            self._seen += 1

    def _aggregate_impl(self) -> np.ndarray:
        return self._sample[: min(self._seen, self.rows)].copy()

    def __hash__(self) -> int:
        return hash((self.__class__.__name__, self.rows, self.seed))


@dataclass
class InputStatistics:
    histogram: SignedLogHistogram
    rows: np.ndarray  # [R, IC] sampled token rows


def statistic_points(node_names: list[str], reservoir_rows: int = RESERVOIR_ROWS) -> StatisticPointsContainer:
    """One collector at input 0 of each named node (NNCF merges those that observe the same tensor)."""
    container = StatisticPointsContainer()
    for node_name in node_names:
        collector = TensorCollector()
        reducer = RawReducer()
        collector.register_statistic_branch(HISTOGRAM_BRANCH, reducer, HistogramAggregator())
        if reservoir_rows:
            collector.register_statistic_branch(RESERVOIR_BRANCH, reducer, ReservoirAggregator(reservoir_rows))
        point = OVTargetPoint(TargetType.PRE_LAYER_OPERATION, node_name, 0)
        container.add_statistic_point(StatisticPoint(point, collector, ALGORITHM_KEY))
    return container


def collect(model: ov.Model, observed: dict[str, str], dataset: nncf.Dataset, subset_size: int,
            reservoir_rows: int = RESERVOIR_ROWS) -> dict[str, InputStatistics]:
    """Run ``model`` over ``dataset``; ``observed`` maps a key (FC name) to the node whose input 0 to watch."""
    points = statistic_points(list(observed.values()), reservoir_rows)
    aggregator = OVStatisticsAggregator(dataset)
    aggregator.stat_subset_size = subset_size
    aggregator.register_statistic_points(points)
    aggregator.collect_statistics(model, build_graph(model))
    by_node = {node: key for key, node in observed.items()}
    out = {}
    for node_name, point_list in points.data.items():
        for point in point_list:
            for collector in point.algorithm_to_tensor_collectors[ALGORITHM_KEY]:
                stats = collector.get_statistics()
                rows = stats.get(RESERVOIR_BRANCH)
                out[by_node[node_name]] = InputStatistics(
                    stats[HISTOGRAM_BRANCH], rows if rows is not None else np.empty((0, 0), np.float32))
    return out
