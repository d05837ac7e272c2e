"""Per-FC-input statistics collected through NNCF's OpenVINO statistics machinery.

Each FC input gets a ``TensorCollector`` at NNCF's PRE_LAYER_OPERATION target point with two branches on a
``RawReducer``: a streaming signed-log histogram (thresholds, median, KDE) and a bounded reservoir of token
rows (output error of candidate modes). Both are fixed-size, so memory does not grow with calibration
tokens. NNCF merges the reducers of FCs that share an input (q/k/v, gate/up): the tensor is read out once.

A histogram can hold a per-FC *score* of the input instead of x itself, ``(x - shift) * scale`` per input
channel (``Score``): thresholds of per-channel modes and weight-aware thresholds are quantiles of that score.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

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
CUSTOM_BRANCH = "custom"
RESERVOIR_ROWS = 256


@dataclass(frozen=True, eq=False)
class Score:
    """``(x - shift) * scale``, each a scalar or an [IC] vector over the input's last axis."""
    shift: np.ndarray | float = 0.0
    scale: np.ndarray | float = 1.0

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return (np.asarray(x, np.float32) - self.shift) * self.scale


class HistogramAggregator(AggregatorBase):
    """Folds every registered activation tensor (or its ``score``) into one SignedLogHistogram."""

    def __init__(self, score: Score | None = None):
        super().__init__(num_samples=None)
        self.score = score
        self.histogram = SignedLogHistogram()

    def _register_reduced_input_impl(self, x) -> None:
        self.histogram.update(x.data if self.score is None else self.score(x.data))

    # NNCF dedupes equal aggregators on one tensor: histograms of different scores must never compare equal.
    def __eq__(self, other) -> bool:
        return isinstance(other, HistogramAggregator) and self.score is other.score

    def __hash__(self) -> int:
        return hash((self.__class__.__name__, id(self.score)))

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


def _point(where: str | tuple[str, int]) -> OVTargetPoint:
    node_name, port = (where, 0) if isinstance(where, str) else where
    return OVTargetPoint(TargetType.PRE_LAYER_OPERATION, node_name, port)


def _run(model: ov.Model, collectors: dict[str, tuple[str | tuple[str, int], TensorCollector]],
         dataset: nncf.Dataset, subset_size: int) -> None:
    container = StatisticPointsContainer()
    for where, collector in collectors.values():
        container.add_statistic_point(StatisticPoint(_point(where), collector, ALGORITHM_KEY))
    aggregator = OVStatisticsAggregator(dataset)
    aggregator.stat_subset_size = subset_size
    aggregator.register_statistic_points(container)
    aggregator.collect_statistics(model, build_graph(model))


def collect(model: ov.Model, observed: dict[str, str | tuple[str, int]], dataset: nncf.Dataset, subset_size: int,
            reservoir_rows: int = RESERVOIR_ROWS, scores: dict[str, Score] | None = None) -> dict[str, InputStatistics]:
    """Run ``model`` over ``dataset`` and return statistics per key of ``observed``.

    ``observed`` maps a key (FC name) to the node whose input to watch: a name (input 0) or (name, port).
    ``scores`` (per key, optional): histogram that score of the input instead of the input itself.
    """
    collectors = {}
    for key, where in observed.items():
        collector = TensorCollector()
        reducer = RawReducer()
        collector.register_statistic_branch(HISTOGRAM_BRANCH, reducer, HistogramAggregator((scores or {}).get(key)))
        if reservoir_rows:
            collector.register_statistic_branch(RESERVOIR_BRANCH, reducer, ReservoirAggregator(reservoir_rows))
        collectors[key] = (where, collector)
    _run(model, collectors, dataset, subset_size)
    out = {}
    for key, (_, collector) in collectors.items():
        stats = collector.get_statistics()
        rows = stats.get(RESERVOIR_BRANCH)
        out[key] = InputStatistics(stats[HISTOGRAM_BRANCH], rows if rows is not None else np.empty((0, 0), np.float32))
    return out


def collect_with(model: ov.Model, observed: dict[str, str | tuple[str, int]], dataset: nncf.Dataset,
                 subset_size: int, make_aggregator: Callable[[str], AggregatorBase]) -> dict[str, Any]:
    """Like ``collect``, with one aggregator of the caller's per key (``make_aggregator(key)``) on the raw
    input; returns what each aggregator aggregates to."""
    collectors = {}
    for key, where in observed.items():
        collector = TensorCollector()
        collector.register_statistic_branch(CUSTOM_BRANCH, RawReducer(), make_aggregator(key))
        collectors[key] = (where, collector)
    _run(model, collectors, dataset, subset_size)
    return {key: collector.get_statistics()[CUSTOM_BRANCH] for key, (_, collector) in collectors.items()}
