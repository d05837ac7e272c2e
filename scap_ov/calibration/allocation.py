"""Greedy allocation of a model-level FC-weight-byte sparsity budget, by measured end-model loss.

Per-layer output error says little about what pruning a layer does to the model's predictions (errors in
q/k/v, say, are amplified by attention), so this measures the end model instead:

1. Groups: FCs reading one kind of input in one range of blocks (e.g. ``qkv`` of blocks 0-9): siblings that
   share an input share a target, so they keep one keep mask and one fused CPU op.
2. Sensitivity: for a group at a sparsity level, prune only that group (thresholds from the dense
   histograms, exact since every other FC is dense) and measure, on a few calibration windows, the increase of
   the mean next-token loss on their own text (``nll``, the default: what perplexity measures) or the mean KL of
   the next-token distribution from the dense model's (``kl``; lower KL need not mean lower loss). Thresholds
   are inputs of one compiled model (``apply_portable(tunable=True)``), so a measurement is one inference pass,
   never a recompile.
3. Allocation: treating group costs as additive, raise, step by step, the group whose next level costs the
   least extra loss per weight byte pruned until the pruned bytes meet the budget. Levels are measured lazily
   (only each group's next one), so a 40% budget over 12 groups takes about 60 probes.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import openvino as ov
from tqdm.auto import tqdm

from scap_ov.artifact import ARTIFACT_NAME, Artifact, FCThreshold, json_value
from scap_ov.config import CalibrationConfig
from scap_ov.errors import ScapError
from scap_ov.evaluation import Evaluator
from scap_ov.layers import FC, SHARED_INPUT
from scap_ov.transformations.portable import TAU_INPUT_PREFIX, apply_portable

log = logging.getLogger("scap_ov")


def sparsity_levels(step: float) -> tuple[float, ...]:
    """The sparsity levels a group can take: the multiples of ``step`` in (0, 1)."""
    return tuple(round(step * i, 6) for i in range(1, int(round(1.0 / step))))


LEVELS = sparsity_levels(CalibrationConfig.level_step)  # the default levels
DISABLED_TAU = -1.0  # |x - m| > -1 always: the FC keeps every input


@dataclass
class Group:
    name: str  # e.g. "qkv@0-9"
    fcs: list[FC]
    nbytes: int
    costs: list[float] = field(default_factory=list)  # measured KL at 0 and the LEVELS reached so far


def make_groups(fcs: list[FC], blocks_per_group: int) -> list[Group]:
    by_key: dict[tuple[str, int], list[FC]] = {}
    for fc in fcs:
        by_key.setdefault((SHARED_INPUT[fc.layer_type], max(fc.block, 0) // blocks_per_group), []).append(fc)
    groups = []
    for (layer_type, g), members in by_key.items():
        first, last = g * blocks_per_group, g * blocks_per_group + blocks_per_group - 1
        groups.append(Group(f"{layer_type}@{first}-{last}", members, sum(fc.weight.nbytes for fc in members)))
    return groups


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))


def _nll(logp: np.ndarray, window: np.ndarray) -> float:
    """Summed next-token loss of one window from its [L, V] log-probabilities."""
    return -float(logp[np.arange(len(window) - 1), window[1:]].sum())


class SensitivityProbe:
    """One compiled copy of the model with every FC's threshold as an input; KL from dense per setting, or the
    increase of the next-token loss on the windows' own text (``nll``)."""

    def __init__(self, model: ov.Model, fcs: list[FC], modes: dict[str, float | np.ndarray], windows: np.ndarray,
                 layer_patterns: dict[str, str] | None = None, tau_shapes: dict[str, tuple] | None = None,
                 loss: str = "kl"):
        self.tau_shapes = {fc.name: (tau_shapes or {}).get(fc.name, ()) for fc in fcs}
        entries = [FCThreshold(fc.name, fc.layer_type, json_value(modes[fc.name]),
                               json_value(np.zeros(self.tau_shapes[fc.name])), 0.0, 0.0, "probe") for fc in fcs]
        self.evaluator = Evaluator(apply_portable(model.clone(), Artifact(fcs=entries), layer_patterns, tunable=True))
        self.fcs = fcs
        self.windows = windows
        self.loss = loss
        self.set_taus({})
        # Per window: dense probabilities p and sum(p log p), so a probe costs one log-softmax, not two.
        self.reference = []
        dense_nll = []
        for w in windows:
            logp = _log_softmax(self.evaluator.forward(w)[0])
            p = np.exp(logp)
            self.reference.append((p, float((p * logp).sum())))
            dense_nll.append(_nll(logp, w))
        self.dense_nll = np.array(dense_nll)

    def set_taus(self, taus: dict[str, float | np.ndarray]) -> None:
        for fc in self.fcs:
            tau = np.asarray(taus.get(fc.name, DISABLED_TAU), dtype=np.float32)
            tau = np.broadcast_to(tau, self.tau_shapes[fc.name]).copy()
            self.evaluator.request.set_tensor(TAU_INPUT_PREFIX + fc.name, ov.Tensor(tau))

    def cost(self, taus: dict[str, float | np.ndarray]) -> float:
        """The allocation's cost of ``taus``: ``kl``, or ``nll`` (mean next-token loss increase per token)."""
        if self.loss == "kl":
            return self.kl(taus)
        return float(self.nll_increase(taus).sum()) / sum(len(w) - 1 for w in self.windows)

    def nll_increase(self, taus: dict[str, float | np.ndarray]) -> np.ndarray:
        """Per window: the increase of its summed next-token loss with ``taus`` (FCs not named stay dense)."""
        self.set_taus(taus)
        return np.array([_nll(_log_softmax(self.evaluator.forward(w)[0]), w) for w in self.windows]) - self.dense_nll

    def kl(self, taus: dict[str, float]) -> float:
        """Mean per-token KL(dense || pruned) with ``taus`` (FCs not named stay dense)."""
        self.set_taus(taus)
        total = count = 0.0
        for window, (p, p_log_p) in zip(self.windows, self.reference):
            total += p_log_p - float((p * _log_softmax(self.evaluator.forward(window)[0])).sum())
            count += len(window)
        return total / count


def allocate(groups: list[Group], budget: float, cost: Callable[[Group, float], float],
             levels: tuple[float, ...] = LEVELS) -> dict[str, float]:
    """Group name -> target sparsity meeting ``budget`` pruned FC-weight bytes at least summed cost.

    Greedy on marginal cost per byte: repeatedly raise the group whose next level adds the least cost per
    pruned byte. ``cost(group, level)`` is measured lazily, only for each group's next level, so the number of
    measurements is (groups + steps taken), not groups x levels.
    """
    total = sum(g.nbytes for g in groups)
    levels = (0.0,) + tuple(levels)
    position = {g.name: 0 for g in groups}
    for g in groups:
        g.costs = [0.0]
    pruned = 0.0
    while pruned < budget * total - 1e-9:
        candidates = []
        for g in groups:
            i = position[g.name]
            if i + 1 == len(levels):
                continue
            if len(g.costs) == i + 1:
                g.costs.append(cost(g, levels[i + 1]))
            candidates.append(((g.costs[i + 1] - g.costs[i]) / ((levels[i + 1] - levels[i]) * g.nbytes), g))
        if not candidates:
            raise ScapError(f"the greedy allocation cannot meet a budget of {budget:.2f}: every group is at "
                            f"{levels[-1]:.1f}")
        _, g = min(candidates, key=lambda c: c[0])
        position[g.name] += 1
        pruned += (levels[position[g.name]] - levels[position[g.name] - 1]) * g.nbytes
    return {g.name: levels[position[g.name]] for g in groups}


def greedy_targets(model: ov.Model, fcs: list[FC], tau_at: Callable[[FC, float], float | np.ndarray],
                   modes: dict[str, float | np.ndarray], windows: np.ndarray, budget: float, blocks_per_group: int,
                   layer_patterns: dict[str, str] | None, loss: str, probe_tokens: int,
                   level_step: float) -> tuple[dict[str, float], dict]:
    """Per-FC targets meeting ``budget`` and a report (group curves and targets) for the artifact.

    ``tau_at(fc, level)``: the FC's threshold (scalar or per channel) for sparsity ``level`` on the dense model.
    """
    groups = make_groups(fcs, blocks_per_group)
    levels = sparsity_levels(level_step)
    shapes = {fc.name: np.shape(tau_at(fc, levels[0])) for fc in fcs}
    probe = SensitivityProbe(model, fcs, modes, windows[:, :probe_tokens], layer_patterns, shapes, loss)
    progress = tqdm(desc="Allocation probes", unit="probe", leave=False)

    def cost(group: Group, level: float) -> float:
        progress.update()
        return probe.cost({fc.name: tau_at(fc, level) for fc in group.fcs})

    targets = allocate(groups, budget, cost, levels)
    progress.close()
    log.info("greedy allocation (%d probes): %s", progress.n,
             ", ".join(f"{name} {t:.1f}" for name, t in targets.items()))
    per_fc = {fc.name: targets[g.name] for g in groups for fc in g.fcs}
    report = {"levels": [0.0, *levels], "probes": progress.n, "loss": loss,
              "groups": {g.name: {loss: [round(c, 6) for c in g.costs], "target": targets[g.name]} for g in groups}}
    return per_fc, report


# How far a reused allocation's pruned FC-weight bytes may sit from the budget: greedy itself overshoots by up to
# one level of one group, and another weight format shifts the byte shares of the groups a little.
REUSE_TOLERANCE = 0.02


def load_allocation(path: Path) -> tuple[dict[str, float], float]:
    """(group name -> target, budget) of the greedy export at ``path`` (its folder or its artifact JSON)."""
    path = Path(path)
    artifact = Artifact.load(path / ARTIFACT_NAME if path.is_dir() else path)
    info = artifact.calibration
    groups = info.get("allocation", {}).get("groups")
    if not groups:
        raise ScapError(f"--allocation-from {path}: not calibrated by greedy allocation (method "
                        f"{info.get('method', '?')}), so it has no group targets to reuse")
    targets = info.get("targets")
    if not targets:
        raise ScapError(f"--allocation-from {path}: the artifact does not record its budget")
    budget = sum(targets.values()) / len(targets)  # as CalibrationConfig.budget: greedy's targets are all equal
    return {name: float(g["target"]) for name, g in groups.items()}, budget


def reused_targets(fcs: list[FC], allocation: dict[str, float], budget: float,
                   blocks_per_group: int) -> tuple[dict[str, float], dict]:
    """Per-FC targets from a reused group ``allocation`` and its report; refuses an allocation made for other
    groups (another model or grouping) or one that does not prune ``budget`` of this model's FC-weight bytes."""
    groups = make_groups(fcs, blocks_per_group)
    names = {g.name for g in groups}
    if set(allocation) != names:
        problems = [f"{what} {', '.join(sorted(found))}" for what, found in
                    (("missing", names - set(allocation)), ("unknown", set(allocation) - names)) if found]
        raise ScapError("the reused allocation does not fit this model's groups: " + "; ".join(problems))
    realised = sum(allocation[g.name] * g.nbytes for g in groups) / sum(g.nbytes for g in groups)
    if abs(realised - budget) > REUSE_TOLERANCE:
        raise ScapError(f"the reused allocation prunes {realised:.3f} of this model's FC-weight bytes, not the "
                        f"budget {budget:.2f}: leave --sparsity unset to take the allocation's own budget")
    log.info("reused greedy allocation (%.3f of FC-weight bytes): %s", realised,
             ", ".join(f"{g.name} {allocation[g.name]:.2f}" for g in groups))
    per_fc = {fc.name: allocation[g.name] for g in groups for fc in g.fcs}
    report = {"reused": True, "probes": 0, "pruned_bytes": round(realised, 6),
              "groups": {g.name: {"target": allocation[g.name]} for g in groups}}
    return per_fc, report
