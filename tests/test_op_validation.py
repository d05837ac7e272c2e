"""SCAPFullyConnected rejects bad inputs with a clear message at build / compile time, and evaluate() refuses
inconsistent run-time tensors with an exception instead of reading out of bounds."""
from __future__ import annotations

import numpy as np
import openvino as ov
import pytest

from scap_ov import ops, packing
from scap_ov.extension import extension_path

IC, OC = 64, 32


@pytest.fixture(scope="module")
def core() -> ov.Core:
    c = ov.Core()
    c.add_extension(extension_path())
    return c


def const(a, t=None):
    if t is None:
        return ov.op.Constant(np.asarray(a)).output(0)
    return ov.op.Constant(ov.Tensor(np.ascontiguousarray(a), ov.Shape(list(np.shape(a))), t)).output(0)


def empty():
    return const(np.zeros((0,), np.float32))


def base_inputs(**over):
    """Valid u8 per-group inputs; keyword overrides replace single inputs (as ov.Output)."""
    x = ov.op.Parameter(ov.Type.f32, ov.PartialShape([-1, IC])).output(0)
    inputs = dict(
        x=x,
        weights=const(np.zeros((IC, OC), np.uint8)),
        scales=const(np.ones((2, OC), np.float16)),
        zero_points=const(np.zeros((2, OC), np.uint8)),
        mode=const(np.float32(0.0)),
        threshold=const(np.float32(0.1)),
        bias=const(np.zeros(OC, np.float32)),
    )
    inputs.update(over)
    return [inputs[n] for n in ops.INPUT_NAMES]


def create(inputs, schema_version=1):
    return ops.native_node_factory().create("SCAPFullyConnected", inputs, {"schema_version": schema_version})


def test_valid_base_builds(core):
    node = create(base_inputs())
    assert node.get_output_partial_shape(0) == ov.PartialShape([-1, OC])
    assert node.get_output_element_type(0) == ov.Type.f32
    core.compile_model(ov.Model([node.output(0)], [node.input_value(0).get_node()]), "CPU")


def u4(shape):
    n = int(np.prod(shape))
    return ov.op.Constant(ov.Tensor(packing.pack_int4(np.zeros(n, np.int8)), ov.Shape(list(shape)), ov.Type.u4)).output(0)


BAD = {
    "mismatched IC": (dict(x=ov.op.Parameter(ov.Type.f32, ov.PartialShape([2, IC + 1])).output(0)),
                      "input channels mismatch: x has IC=65"),
    "scales OC": (dict(scales=const(np.ones((2, OC + 2), np.float16)),
                       zero_points=const(np.zeros((2, OC + 2), np.uint8))), "scales [G, OC] have OC=34"),
    "bias OC": (dict(bias=const(np.zeros(OC - 1, np.float32))), "bias must be [OC=32]"),
    "mode length": (dict(mode=const(np.zeros(IC - 1, np.float32))), "mode must be a scalar"),
    "threshold length": (dict(threshold=const(np.zeros(IC + 3, np.float32))), "threshold must be a scalar"),
    "NaN threshold": (dict(threshold=const(np.float32(np.nan))), "threshold must be finite and >= 0"),
    "negative threshold": (dict(threshold=const(np.full(IC, -0.5, np.float32))), "threshold must be finite and >= 0"),
    "inf threshold": (dict(threshold=const(np.float32(np.inf))), "threshold must be finite and >= 0"),
    "weight dtype": (dict(weights=const(np.zeros((IC, OC), np.int32))), "weights element type i32 is not supported"),
    "weight rank": (dict(weights=const(np.zeros((IC, OC, 1), np.uint8))), "weights must be 2-D"),
    "group size": (dict(scales=const(np.ones((3, OC), np.float16)), zero_points=const(np.zeros((3, OC), np.uint8))),
                   "group size does not divide IC: 3 groups along IC=64"),
    "zp dtype": (dict(zero_points=const(np.zeros((2, OC), np.int8))), "zero_points must have the weight type u8"),
    "zp shape": (dict(zero_points=const(np.zeros((1, OC), np.uint8))), "zero_points shape"),
    "scales dtype": (dict(scales=const(np.ones((2, OC), np.float64))), "scales must be f16 or f32"),
    "x dtype": (dict(x=ov.op.Parameter(ov.Type.f16, ov.PartialShape([-1, IC])).output(0)), "input x must be f32"),
    "float weights with scales": (dict(weights=const(np.zeros((IC, OC), np.float32))), "scales must be empty"),
    "symmetric with zp": (dict(weights=const(np.zeros((IC, OC), np.int8))), "zero_points must be empty"),
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_input_rejected_with_message(name):
    over, msg = BAD[name]
    with pytest.raises(Exception) as exc:
        create(base_inputs(**over))
    assert msg in str(exc.value), str(exc.value)


def test_odd_oc_with_4bit_rejected():
    # a u4 [IC, 5] tensor cannot even be built by numpy-side packing; build the constant from raw bytes
    w = ov.op.Constant(ov.Tensor(np.zeros(IC * 6 // 2, np.uint8), ov.Shape([IC, 5]), ov.Type.u4)).output(0)
    with pytest.raises(Exception, match="4-bit weights .* need an even number of output channels, got OC=5"):
        create(base_inputs(weights=w, scales=const(np.ones((2, 5), np.float16)), zero_points=u4([2, 6])))


def test_wrong_schema_version_names_the_supported_ones():
    with pytest.raises(Exception, match="schema_version 9 is not supported: this extension implements schema_version 1, 2 and 3"):
        create(base_inputs(), schema_version=9)
    with pytest.raises(ValueError, match="schema_version 9 is not supported: this twin implements schema_version 1, 2, 3"):
        ops.SCAPFullyConnected(base_inputs(), schema_version=9)


def test_twin_rejects_ic_mismatch():
    bad = base_inputs(x=ov.op.Parameter(ov.Type.f32, ov.PartialShape([1, 7])).output(0))
    with pytest.raises(ValueError, match="input channels mismatch"):
        ops.SCAPFullyConnected(bad)


def test_make_scap_fc_rejects_bad_threshold():
    p = packing.pack_float(np.zeros((OC, IC), np.float32))
    x = ov.op.Parameter(ov.Type.f32, ov.PartialShape([1, IC])).output(0)
    with pytest.raises(ValueError, match="finite"):
        ops.make_scap_fc(x, p, 0.0, float("nan"))
    with pytest.raises(ValueError, match="IC=64"):
        ops.make_scap_fc(x, p, np.zeros(IC - 1), 0.1)


def test_bad_ir_rejected_at_read(core, tmp_path):
    """A saved twin with a wrong bias length fails when the C++ op validates it (read_model), not later."""
    p = packing.pack_float(np.zeros((OC, IC), np.float32))
    x = ov.op.Parameter(ov.Type.f32, ov.PartialShape([1, IC]))
    inputs = [x.output(0), p.weights_constant().output(0), empty(), empty(), const(np.float32(0)),
              const(np.float32(0.1)), const(np.zeros(OC + 1, np.float32))]
    node = ops.SCAPFullyConnected(inputs)  # the twin does not check bias
    path = tmp_path / "bad.xml"
    ov.save_model(ov.Model([node.output(0)], [x]), str(path), compress_to_fp16=False)
    with pytest.raises(Exception, match="bias must be"):
        core.compile_model(core.read_model(str(path)), "CPU")


def test_runtime_size_mismatch_raises_not_crashes(core):
    """Dynamic mode input: validation cannot know its length; evaluate() must refuse a wrong one."""
    x = ov.op.Parameter(ov.Type.f32, ov.PartialShape([-1, IC]))
    m = ov.op.Parameter(ov.Type.f32, ov.PartialShape([-1]))
    node = create(base_inputs(x=x.output(0), mode=m.output(0)))
    compiled = core.compile_model(ov.Model([node.output(0)], [x, m]), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    xv = np.ones((2, IC), np.float32)
    out = compiled([xv, np.zeros(IC, np.float32)])[0]
    assert out.shape == (2, OC)
    with pytest.raises(Exception, match="mode must be"):
        compiled([xv, np.zeros(5, np.float32)])
    out = compiled([xv, np.zeros(1, np.float32)])[0]  # and the request still works afterwards
    assert out.shape == (2, OC)


def test_threshold_check_edge_values():
    """The (vectorized) threshold check accepts 0 and -0.0 and rejects NaN / inf / negatives at any index."""
    for ok in (np.float32(-0.0), np.zeros(IC, np.float32), np.full(IC, np.finfo(np.float32).max, np.float32)):
        create(base_inputs(threshold=const(ok)))
    for bad_value in (np.nan, np.inf, -np.inf, -1e-30):
        for at in (0, IC // 2, IC - 1):
            t = np.full(IC, 0.1, np.float32)
            t[at] = bad_value
            with pytest.raises(Exception, match=f"threshold must be finite and >= 0, got .* at index {at}"):
                create(base_inputs(threshold=const(t)))


def test_packed_constants_keep_their_precision_mark():
    """validate_and_infer_types marks the packed constants so the CPU plugin does not widen them."""
    node = create(base_inputs())
    for port in (1, 2, 3):
        assert "keep_const_precision_0" in node.input_value(port).get_node().get_rt_info()


# --- compact form (schema_version 2): only the inputs that carry data ------------------------------------------

def create_compact(inputs, listed, mode_value=0.0, threshold_value=0.1):
    return ops.native_node_factory().create(
        "SCAPFullyConnected", inputs,
        {"schema_version": 2, "inputs": listed, "mode_value": mode_value, "threshold_value": threshold_value})


def compact_inputs(listed, **over):
    full = dict(zip(ops.INPUT_NAMES, base_inputs(**over)))
    return [full["x"], full["weights"]] + [full[n] for n in listed.split(",") if n]


def test_compact_valid_builds_and_compiles(core):
    node = create_compact(compact_inputs("scales,zero_points"), "scales,zero_points")
    assert node.get_output_partial_shape(0) == ov.PartialShape([-1, OC])
    assert ops.input_names(node) == ("x", "weights", "scales", "zero_points")
    core.compile_model(ov.Model([node.output(0)], [node.input_value(0).get_node()]), "CPU")
    f32 = create_compact(compact_inputs("", weights=const(np.zeros((IC, OC), np.float32))), "")
    assert f32.get_input_size() == 2


@pytest.mark.parametrize("listed, message", [
    ("scales,bogus", 'unknown input name "bogus"'),
    ("zero_points,scales", "in the order scales,zero_points,mode,threshold,bias"),
    ("scales,scales", "in the order"),
    ("scales,", "ends with a comma"),
])
def test_compact_bad_input_list_rejected(listed, message):
    with pytest.raises(Exception, match=message):
        create_compact(compact_inputs("scales,zero_points"), listed)


def test_compact_input_count_must_match_list():
    with pytest.raises(Exception, match=r"expects 4 inputs, got 3"):
        create_compact(compact_inputs("scales"), "scales,zero_points")


@pytest.mark.parametrize("value", [-0.5, float("nan"), float("inf")])
def test_compact_threshold_value_must_be_finite_non_negative(value):
    with pytest.raises(Exception, match="threshold_value must be finite and >= 0"):
        create_compact(compact_inputs("scales,zero_points"), "scales,zero_points", threshold_value=value)


def test_compact_quantized_weights_need_scales():
    with pytest.raises(Exception, match="scales must be 2-D"):
        create_compact(compact_inputs(""), "")
    with pytest.raises(Exception, match="zero_points"):
        create_compact(compact_inputs("scales"), "scales")  # u8 weights are asymmetric: zero points required


def test_twin_compact_rejects_bad_list():
    with pytest.raises(ValueError, match="names must be a subset"):
        ops.SCAPFullyConnected(compact_inputs("zero_points,scales"), 2, "zero_points,scales")
    with pytest.raises(ValueError, match="expects 3 inputs"):
        ops.SCAPFullyConnected(compact_inputs(""), 2, "scales")


# --- several outputs (schema_version 3): one per column range of output_channels -------------------------------

def create_multi(output_channels):
    return ops.native_node_factory().create(
        "SCAPFullyConnected", compact_inputs("scales,zero_points"),
        {"schema_version": 3, "inputs": "scales,zero_points", "mode_value": 0.0, "threshold_value": 0.1,
         "output_channels": output_channels})


def test_multi_output_builds_one_output_per_range(core):
    node = create_multi([OC - 2, 2])
    assert [node.get_output_partial_shape(i) for i in range(2)] == [ov.PartialShape([-1, OC - 2]),
                                                                     ov.PartialShape([-1, 2])]
    core.compile_model(ov.Model(node.outputs(), [node.input_value(0).get_node()]), "CPU")


@pytest.mark.parametrize("widths, message", [
    ([OC, 2], f"output_channels add up to {OC + 2} but the weights have OC={OC}"),
    ([OC - 2, 0, 2], "output_channels must be >= 1 each, got 0"),
    ([], "schema_version 3 needs output_channels"),
])
def test_multi_output_bad_ranges_rejected(widths, message):
    with pytest.raises(Exception, match=message):
        create_multi(widths)


def test_twin_and_builder_reject_bad_ranges():
    with pytest.raises(ValueError, match=f"add up to {OC + 1} but the weights have OC={OC}"):
        ops.SCAPFullyConnected(compact_inputs("scales,zero_points"), 3, "scales,zero_points", 0.0, 0.1, [OC, 1])
    packed = packing.pack_float(np.zeros((OC, IC), np.float32))  # [OC, IC], as torch stores it
    x = ov.op.Parameter(ov.Type.f32, ov.PartialShape([-1, IC]))
    with pytest.raises(ValueError, match=f"must be >= 1 each and add up to OC={OC}"):
        ops.make_scap_fc(x.output(0), packed, 0.0, 0.1, None, output_channels=[OC, 1])
    with pytest.raises(ValueError, match="needs the compact form"):
        ops.make_scap_fc(x.output(0), packed, 0.0, 0.1, None, schema_version=1, output_channels=[OC - 1, 1])
