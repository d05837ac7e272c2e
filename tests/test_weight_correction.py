"""Least-squares weight correction (--weight-correction): the fitted corrections, their artifact sidecar, the IRs
they produce, and the inputs they refuse."""
import numpy as np
import openvino as ov
import pytest

from conftest import F32, compress, tiny_block_model
from scap_ov.artifact import ARTIFACT_NAME, Artifact
from scap_ov.calibration import calibrate
from scap_ov.config import CalibrationConfig, parse_targets
from scap_ov.errors import ScapError
from scap_ov.layers import find_fcs
from scap_ov.transformations.portable import CENTERED_SUFFIX, apply_portable

VOCAB = 50


def _windows(count=8, length=32, seed=0):
    return np.random.default_rng(seed).integers(0, VOCAB, (count, length), dtype=np.int64)


def _config(sparsity=0.5, **kwargs):
    return CalibrationConfig(targets=parse_targets(sparsity), samples=8, seq_len=32, method="scap",
                             weight_correction=True, **kwargs)


def _centred_inputs(model, artifact, windows):
    """FC name -> d = x - m, [tokens, IC], at every FC of ``model`` pruned by ``artifact`` without corrections."""
    pruned = apply_portable(model.clone(), Artifact(fcs=artifact.fcs))
    nodes = {n.get_friendly_name(): n for n in pruned.get_ordered_ops()}
    fcs = find_fcs(model)
    first = len(pruned.outputs)
    pruned.add_results([ov.opset13.result(nodes[fc.node_name + CENTERED_SUFFIX]) for fc in fcs])
    compiled = ov.Core().compile_model(pruned, "CPU", F32)
    out = {fc.name: [] for fc in fcs}
    for w in windows:
        res = compiled({"input_ids": w[None]})
        for i, fc in enumerate(fcs):
            value = res[compiled.outputs[first + i]]
            out[fc.name].append(value.reshape(-1, value.shape[-1]))
    return {k: np.concatenate(v).astype(np.float64) for k, v in out.items()}


def _least_squares(w, kept, target, damping):
    g = kept.T @ kept / len(kept)
    r = (target - kept).T @ kept / len(kept)
    lam = damping * np.mean(np.diag(g))
    return w @ r @ np.linalg.inv(g + lam * np.eye(len(g)))


def test_correction_is_the_damped_least_squares_fit_and_lowers_output_error():
    model = tiny_block_model(vocab=VOCAB)
    windows = _windows()
    # no refinement: one fit, on the model pruned by the final thresholds (refinement fits again, see below)
    artifact = calibrate(model, windows, _config(correction_damping=0.5, refine_passes=0))
    fcs = find_fcs(model)
    assert set(artifact.corrections) == {fc.name for fc in fcs}
    assert artifact.calibration["weight_correction"] == {"damping": 0.5}
    d_all = _centred_inputs(model, artifact, windows)
    for fc in fcs:
        entry = artifact.by_name()[fc.name]
        d = d_all[fc.name]
        kept = np.where(np.abs(d) > entry.tau, d, 0.0)
        w = fc.weight.dense().astype(np.float64)
        expected = _least_squares(w, kept, d, 0.5)
        got = artifact.corrections[fc.name].astype(np.float64)
        assert got.dtype == np.float64 and artifact.corrections[fc.name].dtype == np.float16
        np.testing.assert_allclose(got, expected, atol=2e-3 * np.abs(expected).max() + 1e-6)
        # on the calibration tokens, the corrected FC is closer to the dense output than the plain pruned one
        plain = np.sum((d @ w.T - kept @ w.T) ** 2)
        corrected = np.sum((d @ w.T - kept @ (w + got).T) ** 2)
        assert corrected < plain, fc.name


def test_a_nonzero_mode_centres_the_fit():
    """Hand-set thresholds around a mode far from 0: the fit regresses d - x~ on x~ with d = x - m (the keep
    mask is |x - m| > tau, not |x| > tau)."""
    from scap_ov.artifact import FCThreshold
    from scap_ov.calibration import correction
    from scap_ov.dataset import calibration_dataset

    model = tiny_block_model(vocab=VOCAB)
    windows = _windows()
    fcs = find_fcs(model)
    entries = [FCThreshold(fc.name, fc.layer_type, 0.6, 0.8, 0.5, 0.5, "scap") for fc in fcs]
    pruned = apply_portable(model.clone(), Artifact(fcs=entries))
    got = correction.weight_corrections(pruned, fcs, entries, calibration_dataset(windows, {"input_ids"}),
                                        len(windows), 1.0)
    d_all = _centred_inputs(model, Artifact(fcs=entries), windows)
    for fc in fcs:
        d = d_all[fc.name]
        kept = np.where(np.abs(d) > 0.8, d, 0.0)
        expected = _least_squares(fc.weight.dense().astype(np.float64), kept, d, 1.0)
        np.testing.assert_allclose(got[fc.name], expected, rtol=0, atol=2e-3 * np.abs(expected).max())


def test_thresholds_are_refit_in_the_corrected_model_and_meet_the_target():
    model = tiny_block_model(vocab=VOCAB)
    windows = _windows()
    artifact = calibrate(model, windows, _config(sparsity=0.5))
    pruned = apply_portable(model.clone(), artifact)  # with the corrections
    nodes = {n.get_friendly_name(): n for n in pruned.get_ordered_ops()}
    fcs = find_fcs(model)
    first = len(pruned.outputs)
    pruned.add_results([ov.opset13.result(nodes[fc.node_name + "/scap/keep"]) for fc in fcs])
    compiled = ov.Core().compile_model(pruned, "CPU", F32)
    for w in windows[:4]:
        res = compiled({"input_ids": w[None]})
        for i, fc in enumerate(fcs):
            realised = 1 - res[compiled.outputs[first + i]].mean()
            assert abs(realised - 0.5) < 0.08, (fc.name, realised)


def test_siblings_sharing_an_input_share_one_gain():
    model = tiny_block_model(vocab=VOCAB)
    artifact = calibrate(model, _windows(), _config())
    fcs = {fc.name: fc for fc in find_fcs(model)}
    q, k = "model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.k_proj"
    gain_q = np.linalg.lstsq(fcs[q].weight.dense(), artifact.corrections[q].astype(np.float32), rcond=None)[0]
    np.testing.assert_allclose(fcs[k].weight.dense() @ gain_q, artifact.corrections[k].astype(np.float32),
                               atol=2e-3)


def test_no_pruning_means_no_correction():
    model = tiny_block_model(vocab=VOCAB)
    artifact = calibrate(model, _windows(), _config(sparsity=0.0))
    assert artifact.corrections and all(not np.any(c) for c in artifact.corrections.values())


def test_corrections_round_trip_and_rebuild_the_same_ir(tmp_path):
    model = tiny_block_model(vocab=VOCAB)
    windows = _windows()
    artifact = calibrate(model, windows, _config())
    path = artifact.save(tmp_path / ARTIFACT_NAME)
    side = Artifact.corrections_path(path)
    assert side.is_file() and side.name == "scap_calibration.corrections.npz"
    loaded = Artifact.load(path)
    assert loaded.version == 2 and set(loaded.corrections) == set(artifact.corrections)
    for name, c in artifact.corrections.items():
        np.testing.assert_array_equal(loaded.corrections[name], c)
    x = {"input_ids": windows[:1]}
    core = ov.Core()
    out = [core.compile_model(apply_portable(model.clone(), a), "CPU", F32)(x)[0] for a in (artifact, loaded)]
    np.testing.assert_array_equal(out[0], out[1])
    # the corrections are in the IR: not the output of the same thresholds without them
    plain = core.compile_model(apply_portable(model.clone(), Artifact(fcs=artifact.fcs)), "CPU", F32)(x)[0]
    assert np.abs(out[0] - plain).max() > 1e-3
    # a corrected FC's weights are W + correction, in the original element type
    corrected = {fc.name: fc for fc in find_fcs(apply_portable(model.clone(), loaded))}
    fc = next(iter(find_fcs(model)))
    np.testing.assert_allclose(corrected[fc.name].weight.dense(),
                               fc.weight.dense() + loaded.corrections[fc.name].astype(np.float32), rtol=0, atol=1e-6)
    side.unlink()
    with pytest.raises(ScapError, match="does not exist: copy it with the artifact"):
        Artifact.load(path)


def test_fused_ir_equals_portable_ir_with_corrections():
    from scap_ov.extension import register
    from scap_ov.transformations.fuse_cpu import apply_fusion

    model = tiny_block_model(vocab=VOCAB)
    windows = _windows()
    artifact = calibrate(model, windows, _config())
    portable = apply_portable(model.clone(), artifact)
    fused = apply_fusion(portable.clone())
    assert sum(n.get_type_name() == "SCAPFullyConnected" for n in fused.get_ordered_ops()) > 0
    core = register(ov.Core())
    x = {"input_ids": windows[:2]}
    np.testing.assert_allclose(core.compile_model(fused, "CPU", F32)(x)[0],
                               core.compile_model(portable, "CPU", F32)(x)[0], atol=1e-4)


def test_compressed_weights_are_refused():
    model = compress(tiny_block_model(vocab=VOCAB), "INT8_SYM")
    with pytest.raises(ScapError, match="rewrites float FC weights; this model's are int8_sym"):
        calibrate(model, _windows(), _config())
    artifact = calibrate(tiny_block_model(vocab=VOCAB), _windows(), _config())
    with pytest.raises(ScapError, match="corrections apply to float weights"):
        apply_portable(model, artifact)


@pytest.mark.parametrize("kwargs, message", [
    (dict(correction_damping=0.0), "--correction-damping must be a finite number > 0"),
    (dict(correction_damping=float("nan")), "--correction-damping must be a finite number > 0"),
])
def test_bad_damping_is_refused(kwargs, message):
    with pytest.raises(ScapError, match=message):
        _config(**kwargs).validate()


def test_cats_with_correction_is_refused():
    config = CalibrationConfig(targets=parse_targets(0.3), method="cats", weight_correction=True)
    with pytest.raises(ScapError, match="CATS prunes act\\(gate\\)"):
        config.validate()


def test_moments_collected_in_chunks_give_the_same_corrections():
    from scap_ov.calibration import correction
    from scap_ov.dataset import calibration_dataset

    model = tiny_block_model(vocab=VOCAB)
    windows = _windows()
    artifact = calibrate(model, windows, _config(refine_passes=0))
    pruned = apply_portable(model.clone(), Artifact(fcs=artifact.fcs))
    fcs = find_fcs(model)
    args = (pruned, fcs, artifact.fcs, calibration_dataset(windows, {"input_ids"}), len(windows), 1.0)
    whole = correction.weight_corrections(*args)
    one_input_per_pass = correction.weight_corrections(*args, memory_bytes=1)
    assert set(whole) == set(one_input_per_pass) == {fc.name for fc in fcs}
    for name in whole:
        np.testing.assert_allclose(one_input_per_pass[name], whole[name], rtol=1e-5, atol=1e-7)
