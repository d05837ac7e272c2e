"""Calibration methods: greedy allocation of a model-level budget by end-model KL; TEAL and config checks."""
import numpy as np
import openvino as ov
import pytest

from conftest import F32, tiny_block_model
from scap_ov.artifact import Artifact, FCThreshold
from scap_ov.calibration import calibrate
from scap_ov.calibration.allocation import (LEVELS, Group, SensitivityProbe, allocate, load_allocation, make_groups,
                                           sparsity_levels)
from scap_ov.config import CalibrationConfig, parse_targets
from scap_ov.errors import ScapError
from scap_ov.evaluation import Evaluator
from scap_ov.layers import find_fcs
from scap_ov.transformations.portable import TAU_INPUT_PREFIX, apply_portable

VOCAB = 50


def _windows(count=6, length=24, seed=0):
    return np.random.default_rng(seed).integers(0, VOCAB, (count, length), dtype=np.int64)


SCALES = {"cheap": 1.0, "dear": 10.0, "big_cheap": 1.0}


def _quadratic(group, level):
    return SCALES[group.name] * level ** 2


def test_allocation_meets_the_budget_and_prunes_cheap_groups_more():
    groups = [Group("cheap", [], 100), Group("dear", [], 100), Group("big_cheap", [], 300)]
    asked = []
    targets = allocate(groups, 0.4, lambda g, level: asked.append((g.name, level)) or _quadratic(g, level))
    pruned = sum(targets[g.name] * g.nbytes for g in groups) / sum(g.nbytes for g in groups)
    assert 0.4 <= pruned <= 0.4 + 0.1
    assert targets["cheap"] > targets["dear"] and targets["big_cheap"] > targets["dear"]
    assert len(asked) == len(set(asked)) < len(groups) * len(LEVELS)  # lazy: each level measured once, if needed
    assert groups[0].costs == [0.0] + [_quadratic(groups[0], lv) for lv in LEVELS[: len(groups[0].costs) - 1]]


def test_finer_levels_land_closer_to_the_budget():
    def pruned(levels):
        groups = [Group("cheap", [], 100), Group("dear", [], 100), Group("big_cheap", [], 300)]
        targets = allocate(groups, 0.37, _quadratic, levels)
        assert set(targets.values()) <= set(levels) | {0.0}
        return sum(targets[g.name] * g.nbytes for g in groups) / sum(g.nbytes for g in groups)

    assert sparsity_levels(0.05) == tuple(round(0.05 * i, 6) for i in range(1, 20))
    coarse, fine = pruned(LEVELS), pruned(sparsity_levels(0.05))
    assert 0.37 <= fine < coarse and fine <= 0.37 + 0.05


def test_a_budget_the_levels_cannot_reach_is_refused():
    with pytest.raises(ScapError, match="cannot meet a budget of 0.95"):
        allocate([Group("cheap", [], 10)], 0.95, _quadratic)


def test_groups_split_types_by_block_range():
    fcs = find_fcs(tiny_block_model(blocks=4))
    groups = make_groups(fcs, 2)
    assert sorted(g.name for g in groups if g.name.startswith("down")) == ["down@0-1", "down@2-3"]
    assert sorted({fc.layer_type for fc in groups[0].fcs}) == ["k", "q", "v"]  # one shared input, one target
    assert len(groups) == 8 and sum(len(g.fcs) for g in groups) == len(fcs) == 28
    assert all(g.nbytes == sum(fc.weight.nbytes for fc in g.fcs) for g in groups)


def test_tunable_thresholds_equal_constant_thresholds():
    model = tiny_block_model()
    fcs = find_fcs(model)
    taus = {fc.name: 0.1 + 0.05 * i for i, fc in enumerate(fcs)}
    fixed = Artifact(fcs=[FCThreshold(fc.name, fc.layer_type, 0.02, taus[fc.name], .5, .5, "zero") for fc in fcs])
    x = np.random.default_rng(2).standard_normal((1, 5, 64)).astype(np.float32)
    expected = ov.Core().compile_model(apply_portable(tiny_block_model(), fixed), "CPU", F32)(x)[0]
    tunable = ov.Core().compile_model(apply_portable(tiny_block_model(), fixed, tunable=True), "CPU", F32)
    inputs = {"x": x, **{TAU_INPUT_PREFIX + n: np.array(t, np.float32) for n, t in taus.items()}}
    np.testing.assert_array_equal(tunable(inputs)[0], expected)


def test_greedy_calibration_meets_the_byte_budget_and_records_its_curves():
    model = tiny_block_model(blocks=2, vocab=VOCAB)
    config = CalibrationConfig(targets=parse_targets(0.5), samples=6, seq_len=24, method="greedy",
                               blocks_per_group=1, probe_windows=2, refine_passes=0, greedy_loss="kl")
    artifact = calibrate(model, _windows(), config)
    nbytes = {fc.name: fc.weight.nbytes for fc in find_fcs(model)}
    budget = sum(e.target_sparsity * nbytes[e.name] for e in artifact.fcs) / sum(nbytes.values())
    assert 0.5 <= budget <= 0.6
    groups = artifact.calibration["allocation"]["groups"]
    assert len(groups) == 8 and all(len(g["kl"]) >= 2 for g in groups.values())
    assert all(g["kl"][1] > 0 for g in groups.values())  # pruning any group moves the output
    assert len({e.target_sparsity for e in artifact.fcs}) > 1  # not uniform



def test_a_reused_allocation_gives_the_same_targets_and_thresholds_without_probing(tmp_path):
    model = tiny_block_model(blocks=2, vocab=VOCAB)
    config = CalibrationConfig(targets=parse_targets(0.5), samples=6, seq_len=24, method="greedy",
                               blocks_per_group=1, probe_windows=2, refine_passes=1)
    probed = calibrate(model, _windows(), config)
    probed.save(tmp_path / "scap_calibration.json")
    allocation, budget = load_allocation(tmp_path)  # a folder or the artifact itself
    assert (allocation, budget) == load_allocation(tmp_path / "scap_calibration.json")
    assert budget == 0.5 and len(set(allocation.values())) > 1
    config.allocation = allocation
    reused = calibrate(model, _windows(), config)
    assert reused.calibration["allocation"]["probes"] == 0 and reused.calibration["allocation"]["reused"]
    assert [(e.name, e.target_sparsity, e.tau) for e in reused.fcs] == \
        [(e.name, e.target_sparsity, e.tau) for e in probed.fcs]
    # ... and can itself be reused (its report keeps the group targets)
    reused.save(tmp_path / "again.json")
    assert load_allocation(tmp_path / "again.json")[0] == allocation


def test_a_reused_allocation_that_does_not_fit_is_refused(tmp_path):
    model = tiny_block_model(blocks=2, vocab=VOCAB)
    allocation = {g.name: 0.5 for g in make_groups(find_fcs(model), 1)}
    config = CalibrationConfig(targets=parse_targets(0.5), method="greedy", blocks_per_group=2, allocation=allocation)
    with pytest.raises(ScapError, match=r"does not fit this model's groups: missing down@0-1, .*; "
                                        r"unknown down@0-0, down@1-1"):
        calibrate(model, _windows(), config)
    config.blocks_per_group, config.targets = 1, parse_targets(0.3)
    with pytest.raises(ScapError, match="prunes 0.500 of this model's FC-weight bytes, not the budget 0.30"):
        calibrate(model, _windows(), config)
    with pytest.raises(ScapError, match="does not apply to --method teal"):
        CalibrationConfig(method="teal", allocation=allocation).validate()
    with pytest.raises(ScapError, match=r"the reused target of down@0-0 must lie in \[0, 1\)"):
        CalibrationConfig(method="greedy", allocation={**allocation, "down@0-0": 1.5}).validate()
    teal = calibrate(model, _windows(), CalibrationConfig(targets=parse_targets(0.5), samples=6, seq_len=24,
                                                         method="teal", refine_passes=0))
    teal.save(tmp_path / "teal.json")
    with pytest.raises(ScapError, match="not calibrated by greedy allocation \\(method teal\\)"):
        load_allocation(tmp_path / "teal.json")


def test_nll_probe_cost_is_the_increase_of_the_mean_next_token_loss():
    model = tiny_block_model(blocks=2, vocab=VOCAB)
    fcs = find_fcs(model)
    windows = _windows(count=3)
    probe = SensitivityProbe(model, fcs, {fc.name: 0.02 for fc in fcs}, windows, loss="nll")
    taus = {fc.name: 0.3 for fc in fcs[:7]}  # block 0 pruned, block 1 dense
    assert probe.cost({}) == pytest.approx(0.0, abs=1e-6)
    # Reference: log perplexity of the pruned model minus that of the dense one, on the same windows.
    pruned = Artifact(fcs=[FCThreshold(fc.name, fc.layer_type, 0.02, taus[fc.name], .5, .5, "zero") for fc in fcs[:7]])
    log_ppl = [np.log(Evaluator(m).perplexity(windows, progress=False)[0])
               for m in (model, apply_portable(model.clone(), pruned))]
    expected = log_ppl[1] - log_ppl[0]
    assert abs(expected) > 1e-3  # the thresholds really move the loss
    assert probe.cost(taus) == pytest.approx(expected, rel=1e-3, abs=1e-5)
    # Per window (benchmarks/probe_transfer.py's standard errors): the windows' increases add up to the cost.
    per_window = probe.nll_increase(taus)
    assert per_window.shape == (len(windows),) and len(set(np.round(per_window, 6))) > 1
    assert per_window.sum() / (windows.shape[0] * (windows.shape[1] - 1)) == pytest.approx(expected, rel=1e-3, abs=1e-5)
    assert SensitivityProbe(model, fcs, {fc.name: 0.02 for fc in fcs}, windows, loss="kl").cost(taus) == \
        pytest.approx(probe.kl(taus))


def test_greedy_nll_loss_records_its_curves_and_an_unknown_loss_is_refused():
    config = CalibrationConfig(targets=parse_targets(0.5), samples=6, seq_len=24, method="greedy",
                               blocks_per_group=1, probe_windows=2, refine_passes=0)  # nll: the default
    allocation = calibrate(tiny_block_model(blocks=2, vocab=VOCAB), _windows(), config).calibration["allocation"]
    assert allocation["loss"] == "nll" and all(len(g["nll"]) >= 2 for g in allocation["groups"].values())
    config.level_step = 0.25  # the export's levels follow the config's spacing
    allocation = calibrate(tiny_block_model(blocks=2, vocab=VOCAB), _windows(), config).calibration["allocation"]
    assert allocation["levels"] == [0.0, 0.25, 0.5, 0.75]
    assert {g["target"] for g in allocation["groups"].values()} <= {0.0, 0.25, 0.5, 0.75}
    with pytest.raises(ScapError, match=r"unknown greedy loss 'mse' \(choose from nll, kl\)"):
        CalibrationConfig(greedy_loss="mse").validate()
