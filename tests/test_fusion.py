"""Pass B (CPU fusion): fused IR == portable IR, one weight copy, untouched models stay untouched."""
import numpy as np
import openvino as ov
import pytest

import scap_ov
from conftest import F32, compress, tiny_block_model
from scap_ov.artifact import Artifact, FCThreshold
from scap_ov.layers import find_fcs
from scap_ov.transformations.fuse_cpu import FUSION_VERSION, apply_fusion, count_fused, count_ops, fusion_version
from scap_ov.transformations.portable import apply_portable

FORMATS = [("f32", None, -1), ("int8_asym", "INT8_ASYM", -1), ("int8_sym", "INT8_SYM", -1),
           ("int4_sym_g16", "INT4_SYM", 16), ("int4_asym_g32", "INT4_ASYM", 32)]


@pytest.fixture(scope="module")
def core():
    return scap_ov.register(ov.Core())


def _base(fmt):
    return tiny_block_model() if fmt[1] is None else compress(tiny_block_model(), fmt[1], fmt[2])


def _artifact(model, per_channel=False):
    fcs = find_fcs(model)
    return Artifact(fcs=[FCThreshold(fc.name, fc.layer_type,
                                     list(np.linspace(-.05, .05, fc.in_features)) if per_channel else 0.05,
                                     list(np.linspace(0, .5, fc.in_features)) if per_channel else 0.3,
                                     0.5, 0.5, "zero") for fc in fcs])


@pytest.mark.parametrize("per_channel", [False, True], ids=["scalar", "per_channel"])
@pytest.mark.parametrize("fmt", FORMATS, ids=[f[0] for f in FORMATS])
def test_fused_equals_portable(core, fmt, per_channel):
    art = _artifact(_base(fmt), per_channel)
    portable = apply_portable(_base(fmt), art)
    fused = apply_fusion(apply_portable(_base(fmt), art))
    assert count_fused(fused) == 14
    fc_names = {fc.node_name for fc in find_fcs(_base(fmt))}
    assert not [n for n in fused.get_ordered_ops() if n.get_friendly_name() in fc_names]
    assert any("lm_head" in n.get_friendly_name() for n in fused.get_ordered_ops() if n.get_type_name() == "MatMul")
    x = np.random.default_rng(3).standard_normal((2, 7, 64)).astype(np.float32)
    expected = core.compile_model(portable, "CPU", F32)(x)[0]
    np.testing.assert_allclose(core.compile_model(fused, "CPU", F32)(x)[0], expected, rtol=1e-4, atol=1e-4)


def test_fcs_calibrated_to_prune_nothing_keep_openvinos_fc(core, tmp_path):
    """Threshold 0 with (almost) nothing pruned on the calibration tokens: the FC keeps OpenVINO's FC, reading
    its centred input without the Abs / Greater / Select (they change nothing but NaN), also through a saved
    portable IR; threshold 0 that did prune (exact zeros after a ReLU) is fused; fuse_unpruned=True fuses them
    all. Outputs equal the portable IR's either way."""
    fmt = FORMATS[1]
    art = _artifact(_base(fmt))
    for entry in art.fcs:
        if entry.layer_type in ("q", "k", "v", "down"):
            entry.tau, entry.calibration_sparsity = 0.0, 0.0
        if entry.layer_type == "o":  # threshold 0, but half its calibration inputs were exact zeros
            entry.tau, entry.calibration_sparsity = 0.0, 0.5
    portable = apply_portable(_base(fmt), art)
    ov.save_model(portable, tmp_path / "portable.xml", compress_to_fp16=False)
    fused = apply_fusion(core.read_model(tmp_path / "portable.xml"))
    assert count_fused(fused) == 14 - 8  # q, k, v, down of both blocks stay
    unfused = [n for n in fused.get_ordered_ops() if n.get_type_name() == "MatMul" and "lm_head" not in n.get_friendly_name()]
    assert len(unfused) == 8
    assert all(n.input_value(0).get_node().get_type_name() == "Subtract" for n in unfused)  # x - m, no Select
    assert not [n for n in fused.get_ordered_ops() if n.get_type_name() in ("Select", "Greater", "Abs")
                and n.get_friendly_name().split("/scap/")[0] in {m.get_friendly_name() for m in unfused}]
    every = apply_fusion(apply_portable(_base(fmt), art), fuse_unpruned=True)
    assert count_fused(every) == 14
    x = np.random.default_rng(6).standard_normal((1, 3, 64)).astype(np.float32)
    expected = core.compile_model(portable, "CPU", F32)(x)[0]
    for model in (fused, every):
        np.testing.assert_allclose(core.compile_model(model, "CPU", F32)(x)[0], expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("fmt", FORMATS, ids=[f[0] for f in FORMATS])
def test_fused_weights_stay_within_1_1x_of_dense(tmp_path, fmt):
    dense = _base(fmt)
    ov.save_model(dense, tmp_path / "dense.xml", compress_to_fp16=False)
    fused = apply_fusion(apply_portable(_base(fmt), _artifact(_base(fmt))))
    ov.save_model(fused, tmp_path / "fused.xml", compress_to_fp16=False)
    dense_bytes = (tmp_path / "dense.bin").stat().st_size
    assert (tmp_path / "fused.bin").stat().st_size <= 1.1 * dense_bytes


def test_saved_fused_ir_reads_back_as_the_cpp_op(core, tmp_path):
    art = _artifact(_base(FORMATS[4]))
    fused = apply_fusion(apply_portable(_base(FORMATS[4]), art), native=False)  # Python twin in the graph
    ov.save_model(fused, tmp_path / "fused.xml", compress_to_fp16=False)
    assert 'type="SCAPFullyConnected" version="extension"' in (tmp_path / "fused.xml").read_text()
    read = core.read_model(tmp_path / "fused.xml")
    assert fusion_version(read) == FUSION_VERSION  # what benchmark caches check to rebuild stale fused folders
    assert fusion_version(apply_portable(_base(FORMATS[4]), art)) is None
    x = np.random.default_rng(4).standard_normal((1, 3, 64)).astype(np.float32)
    expected = core.compile_model(apply_portable(_base(FORMATS[4]), art), "CPU", F32)(x)[0]
    np.testing.assert_allclose(core.compile_model(read, "CPU", F32)(x)[0], expected, rtol=1e-4, atol=1e-4)


def test_models_without_scap_patterns_are_left_untouched(tmp_path):
    model = tiny_block_model()
    ov.save_model(model, tmp_path / "a.xml", compress_to_fp16=False)
    apply_fusion(model)
    assert count_fused(model) == 0
    ov.save_model(model, tmp_path / "b.xml", compress_to_fp16=False)
    assert (tmp_path / "a.xml").read_bytes() == (tmp_path / "b.xml").read_bytes()


def test_model_sparsified_by_nncf_gets_the_cpu_op(core):
    import nncf
    import torch
    from nncf.experimental.torch.sparsify_activations import TargetScope, sparsify_activations

    torch.manual_seed(0)

    class MLP(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.up = torch.nn.Linear(64, 96, bias=False)
            self.down = torch.nn.Linear(96, 64)

        def forward(self, x):
            return self.down(torch.relu(self.up(x)))

    data = [torch.randn(1, 8, 64) for _ in range(4)]
    sparse = sparsify_activations(MLP().eval(), nncf.Dataset(data),
                                  {TargetScope(patterns=[".*up.*"]): 0.5, TargetScope(patterns=[".*down.*"]): 0.3})
    reference = ov.convert_model(sparse, example_input=data[0])
    fused = apply_fusion(ov.convert_model(sparse, example_input=data[0]))
    assert count_fused(fused) == 2
    assert not [n for n in fused.get_ordered_ops() if n.get_type_name() in ("LessEqual", "Select")]
    x = torch.randn(1, 5, 64).numpy()
    np.testing.assert_allclose(core.compile_model(fused, "CPU", F32)(x)[0],
                               core.compile_model(reference, "CPU", F32)(x)[0], rtol=1e-4, atol=1e-4)
    with torch.no_grad():
        np.testing.assert_allclose(core.compile_model(fused, "CPU", F32)(x)[0], sparse(torch.from_numpy(x)).numpy(),
                                   rtol=1e-4, atol=1e-4)


def test_benchmark_app_runs_the_fused_ir_with_the_extension(tmp_path):
    import shutil
    import subprocess

    fmt = FORMATS[1]
    fused = apply_fusion(apply_portable(_base(fmt), _artifact(_base(fmt))), native=False)
    ov.save_model(fused, tmp_path / "fused.xml", compress_to_fp16=False)
    tool = shutil.which("benchmark_app") or str(__import__("pathlib").Path(__import__("sys").executable).parent / "benchmark_app")
    cmd = [tool, "-m", str(tmp_path / "fused.xml"), "-extensions", scap_ov.extension_path(), "-d", "CPU",
           "-data_shape", "x[1,1,64]", "-niter", "20", "-hint", "latency", "-infer_precision", "f32"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "Throughput" in done.stdout
    without = subprocess.run([c for c in cmd if c not in ("-extensions", scap_ov.extension_path())],
                             capture_output=True, text=True, timeout=300)
    assert without.returncode != 0  # the op really comes from the extension


@pytest.mark.parametrize("fmt", FORMATS, ids=[f[0] for f in FORMATS])
def test_siblings_with_one_keep_mask_share_one_op(core, fmt):
    """q/k/v and gate/up with equal mode and tau: one op each with one output per FC (no split node after
    it); same outputs as one op per FC."""
    art = _artifact(_base(fmt))
    merged = apply_fusion(apply_portable(_base(fmt), art))
    separate = apply_fusion(apply_portable(_base(fmt), art), merge=False)
    assert (count_ops(merged), count_fused(merged)) == (8, 14)
    assert (count_ops(separate), count_fused(separate)) == (14, 14)
    assert not [n for n in merged.get_ops() if n.get_type_name() in ("Split", "VariadicSplit")]
    widths = sorted(n.get_output_size() for n in merged.get_ops() if n.get_type_name() == "SCAPFullyConnected")
    assert widths == [1, 1, 1, 1, 2, 2, 3, 3]  # o, down | gate+up | q+k+v, per block
    x = np.random.default_rng(5).standard_normal((2, 3, 64)).astype(np.float32)
    np.testing.assert_allclose(core.compile_model(merged, "CPU", F32)(x)[0],
                               core.compile_model(separate, "CPU", F32)(x)[0], rtol=1e-5, atol=1e-5)


def test_siblings_with_different_thresholds_keep_their_own_ops():
    art = _artifact(_base(FORMATS[0]))
    for entry in art.fcs:
        if entry.layer_type == "k":
            entry.tau = 0.7
    fused = apply_fusion(apply_portable(_base(FORMATS[0]), art))
    assert (count_ops(fused), count_fused(fused)) == (10, 14)  # q+v, k, o, gate+up, down per block
