"""Calibration methods beyond SCAP's scalar modes: per-channel modes, weight-aware thresholds, CATS; and the
configuration errors of every method."""
import numpy as np
import openvino as ov
import pytest

from conftest import F32, tiny_block_model
from scap_ov.calibration import calibrate, statistics
from scap_ov.calibration.algorithm import channel_norms
from scap_ov.config import CalibrationConfig, parse_targets
from scap_ov.dataset import calibration_dataset
from scap_ov.errors import ScapError
from scap_ov.evaluation import Evaluator
from scap_ov.layers import find_fcs, gated_input
from scap_ov.transformations.portable import KEEP_SUFFIX, apply_portable

VOCAB = 50


def _windows(count=6, length=24, seed=0):
    return np.random.default_rng(seed).integers(0, VOCAB, (count, length), dtype=np.int64)


def _config(**kwargs):
    base = dict(targets=parse_targets(kwargs.pop("sparsity", 0.5)), samples=6, seq_len=24)
    return CalibrationConfig(**base, **kwargs)


def _fc_inputs(model, fcs, windows):
    """Every FC's input on ``windows``, [tokens, IC], by FC name (the model's own MatMul inputs)."""
    probe = model.clone()
    by_node = {fc.node_name: fc.name for fc in fcs}
    first = len(probe.outputs)
    names = [by_node[n.get_friendly_name()] for n in probe.get_ordered_ops() if n.get_friendly_name() in by_node]
    probe.add_results([ov.opset13.result(n.input_value(0)) for n in probe.get_ordered_ops()
                       if n.get_friendly_name() in by_node])
    compiled = ov.Core().compile_model(probe, "CPU", F32)
    out = {}
    for w in windows:
        res = compiled({"input_ids": w[None]})
        for i, name in enumerate(names):
            value = res[compiled.outputs[first + i]]
            out.setdefault(name, []).append(value.reshape(-1, value.shape[-1]))
    return {k: np.concatenate(v) for k, v in out.items()}


def _realised(model, artifact, windows):
    """FC name -> realised input sparsity, and FC-weight-byte sparsity, of the portable model on ``windows``."""
    evaluator = Evaluator(apply_portable(model.clone(), artifact))
    _, _, layer = evaluator.perplexity(windows, progress=False)
    return layer, evaluator.weight_byte_sparsity(layer)[0]


def test_score_histogram_holds_the_scored_input():
    model = tiny_block_model(vocab=VOCAB)
    fcs = find_fcs(model)
    fc = next(fc for fc in fcs if fc.layer_type == "down")
    windows = _windows()
    x = _fc_inputs(model, [fc], windows)[fc.name]
    shift = np.linspace(-0.1, 0.1, fc.in_features, dtype=np.float32)
    scale = np.linspace(0.5, 2.0, fc.in_features, dtype=np.float32)
    stats = statistics.collect(model, {"plain": fc.node_name, "scored": fc.node_name},
                               calibration_dataset(windows, {"input_ids"}), len(windows),
                               scores={"scored": statistics.Score(shift, scale)})
    scored = np.abs((x - shift) * scale)
    for t in (0.05, 0.2, 0.5):
        assert stats["scored"].histogram.fraction_within(0.0, t) == pytest.approx(np.mean(scored <= t), abs=0.01)
        assert stats["plain"].histogram.fraction_within(0.0, t) == pytest.approx(np.mean(np.abs(x) <= t), abs=0.01)


def test_channel_modes_are_per_channel_medians_and_meet_the_target():
    model = tiny_block_model(vocab=VOCAB)
    windows = _windows()
    artifact = calibrate(model, windows, _config(mode="channel", refine_passes=0))
    fcs = {fc.name: fc for fc in find_fcs(model)}
    inputs = _fc_inputs(model, list(fcs.values()), windows)  # 144 tokens: the reservoir holds every row
    for entry in artifact.fcs:
        assert len(entry.mode) == fcs[entry.name].in_features and np.ndim(entry.tau) == 0
        np.testing.assert_allclose(entry.mode, np.median(inputs[entry.name], axis=0), rtol=1e-5, atol=1e-6)
        x = inputs[entry.name]
        assert np.mean(np.abs(x - np.asarray(entry.mode, np.float32)) <= entry.tau) == pytest.approx(0.5, abs=0.01)


def test_weighted_thresholds_scale_with_the_stacked_weight_norms():
    model = tiny_block_model(vocab=VOCAB)
    windows = _windows()
    artifact = calibrate(model, windows, _config(score="weighted"))
    fcs = find_fcs(model)
    norms = channel_norms(fcs)
    by_name = artifact.by_name()
    q, k = by_name[fcs[0].name], by_name[fcs[1].name]
    assert (fcs[0].layer_type, fcs[1].layer_type) == ("q", "k")
    assert q.tau == k.tau  # q/k/v share one input: stacked norms, one keep mask
    stacked = np.sqrt(sum(np.square(fc.weight.dense()).sum(0) for fc in fcs[:3]))
    np.testing.assert_allclose(norms[fcs[0].name], stacked, rtol=1e-5)
    for fc in fcs:
        tau = np.asarray(by_name[fc.name].tau)
        assert tau.shape == (fc.in_features,)
        np.testing.assert_allclose(tau * norms[fc.name], tau[0] * norms[fc.name][0], rtol=1e-4)  # one score tau
    layer, _ = _realised(model, artifact, windows)
    assert all(abs(layer[fc.name] - 0.5) < 0.05 for fc in fcs), layer


def test_cats_prunes_act_gate_and_counts_up_rows():
    model = tiny_block_model(vocab=VOCAB)
    fcs = find_fcs(model)
    windows = _windows()
    artifact = calibrate(model, windows, _config(method="cats", sparsity=0.25))
    downs = [fc for fc in fcs if fc.layer_type == "down"]
    assert sorted(e.name for e in artifact.fcs) == sorted(fc.name for fc in downs)
    assert all(e.method == "cats" and e.mode == 0.0 for e in artifact.fcs)
    nbytes = {fc.name: fc.weight.nbytes for fc in fcs}
    share = sum(nbytes[fc.name] for fc in fcs if fc.layer_type in ("up", "down")) / sum(nbytes.values())
    assert artifact.fcs[0].target_sparsity == pytest.approx(0.25 / share)
    pruned = apply_portable(model.clone(), artifact)
    keep = [n for n in pruned.get_ordered_ops() if n.get_friendly_name().endswith(KEEP_SUFFIX)]
    assert len(keep) == len(downs)
    # The mask sits on act(gate): the gated Multiply reads the pruned activation, down reads that product.
    for fc in find_fcs(pruned):
        if fc.layer_type == "down":
            assert gated_input(fc) is None or gated_input(fc).activation.get_node().get_type_name() == "Select"
    layer, realised = _realised(model, artifact, windows)
    for down in downs:
        up = down.name.replace("down_proj", "up_proj")
        assert layer[up] == layer[down.name] == pytest.approx(0.25 / share, abs=0.05)
    assert "gate" not in {fc.layer_type for fc in fcs if fc.name in layer}
    assert realised == pytest.approx(0.25, abs=0.03)


def test_cats_needs_a_gated_mlp_and_a_reachable_budget():
    model = tiny_block_model(vocab=VOCAB)
    attention_only = {"q": r"layers\.(\d+)\.self_attn\.q_proj$", "o": r"layers\.(\d+)\.self_attn\.o_proj$"}
    with pytest.raises(ScapError, match=r"needs a gated MLP .* none of this model's FCs \(o, q\) does"):
        calibrate(model, _windows(), _config(method="cats", sparsity=0.2), attention_only)
    with pytest.raises(ScapError, match=r"budget of 0.40 is out of its reach \(at most 0.35\)"):
        calibrate(model, _windows(), _config(method="cats", sparsity=0.4))


def test_greedy_with_weighted_channel_thresholds_meets_the_budget():
    model = tiny_block_model(vocab=VOCAB)
    config = _config(method="greedy", mode="channel", score="weighted", blocks_per_group=1, probe_windows=2)
    artifact = calibrate(model, _windows(), config)
    nbytes = {fc.name: fc.weight.nbytes for fc in find_fcs(model)}
    budget = sum(e.target_sparsity * nbytes[e.name] for e in artifact.fcs) / sum(nbytes.values())
    assert 0.5 <= budget <= 0.6 and len({e.target_sparsity for e in artifact.fcs}) > 1
    assert all(np.ndim(e.tau) == 1 and np.ndim(e.mode) == 1 for e in artifact.fcs)


@pytest.mark.parametrize("kwargs, message", [
    (dict(method="dejavu"), "unknown method 'dejavu' (choose from scap, teal, greedy, cats)"),
    (dict(score="cosine"), "unknown score 'cosine' (choose from magnitude, weighted)"),
    (dict(mode="mean"), "unknown mode 'mean' (choose from zero, median, kde, channel)"),
    (dict(method="teal", mode="kde"), "TEAL thresholds zero-centred magnitudes: --method teal takes no --mode kde"),
    (dict(method="teal", score="weighted"), "--method teal takes no --mode zero / --score weighted"),
    (dict(method="cats", mode="median"), "CATS thresholds zero-centred magnitudes"),
    (dict(method="greedy", targets=parse_targets(0.4, {"down": 0.6})), "per-type --target values do not apply"),
    (dict(method="cats", targets=parse_targets(0.2, {"up": 0.3})), "--method cats meets one model-level"),
    (dict(method="greedy", blocks_per_group=0), "blocks per group and probe windows must be >= 1"),
    (dict(method="greedy", probe_tokens=1), "probe tokens >= 2"),
])
def test_method_configuration_errors(kwargs, message):
    with pytest.raises(ScapError, match=message.replace("(", r"\(").replace(")", r"\)")):
        CalibrationConfig(**kwargs).validate()



def test_auto_method_is_greedy_for_one_decoder_budget_and_scap_otherwise():
    auto = CalibrationConfig(method="auto", targets=parse_targets(0.4)).validate()
    assert auto.resolved(encoder=False).method == "greedy"
    assert auto.resolved(encoder=True).method == "scap"  # no next-token loss to allocate by
    per_type = CalibrationConfig(method="auto", targets=parse_targets(0.4, {"down": 0.6})).validate()
    assert per_type.resolved(encoder=False).method == "scap"
    assert CalibrationConfig(method="teal").resolved(encoder=False).method == "teal"
    with pytest.raises(ScapError, match="needs a resolved method"):
        calibrate(tiny_block_model(vocab=VOCAB), _windows(), _config(method="auto"))
