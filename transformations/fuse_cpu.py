"""Pass B (CPU): fuse each SCAP pattern and its weights into one ``SCAPFullyConnected`` op.

Matches the portable pattern of pass A
    Select(Greater(Abs(Subtract(x, m)), tau), Subtract(x, m), 0) -> MatMul(., W) -> Add(., W m)
and the pattern NNCF's torch ``sparsify_activations`` exports
    Select(LessEqual(Abs(x), tau), 0, x) -> MatMul(., W)
where W is a constant or an NNCF decompression chain. The weights are repacked input-channel-major in
their stored element type (integers stay integers, never a dequantized copy); the old constants then have no
consumer left, so the fused IR holds one copy of the weights.
"""
from __future__ import annotations

import numpy as np
import openvino as ov
from openvino.passes import AnyInput, Matcher, MatcherPass, WrapType

from scap_ov.ops import INPUT_NAMES, make_scap_fc
from scap_ov.packing import pack_compressed, pack_float
from scap_ov.transformations.weights import WeightChain, constant_values, match_weight_chain

_FLOAT_NAMES = {ov.Type.f32: "f32", ov.Type.f16: "f16", ov.Type.bf16: "bf16"}
_INT_NAMES = {ov.Type.i8: "i8", ov.Type.u8: "u8", ov.Type.i4: "i4", ov.Type.u4: "u4"}


def pack_chain(chain: WeightChain):
    """The op's PackedWeights for an FC weight chain, in the stored element type."""
    if not chain.compressed:
        et = chain.element_type
        raw = constant_values(chain.weight)
        if et == ov.Type.bf16:
            raw = np.asarray(chain.weight.get_data()).view(np.uint16).reshape(raw.shape)
        w = raw if chain.transpose_b else raw.T
        return pack_float(w, _FLOAT_NAMES[et])
    zp = constant_values(chain.zero_point) if chain.zero_point is not None else None
    return pack_compressed(constant_values(chain.weight), constant_values(chain.scale), zp,
                           weight_type=_INT_NAMES[chain.element_type],
                           scale_dtype=np.float32 if chain.scale.get_output_element_type(0) == ov.Type.f32
                           else np.float16)


def _scalar_or_vector(node: ov.Node) -> np.ndarray | None:
    """A per-tensor ([], [1], [1,..,1]) or per-channel ([..., IC]) constant as a 0-d or 1-d f32 array."""
    values = np.asarray(constant_values(node), dtype=np.float32)
    if values.size == 1:
        return values.reshape(())
    squeezed = values.reshape(-1)
    return squeezed if values.shape[-1] == squeezed.size else None


def _is_zero(node: ov.Node) -> bool:
    return bool(np.all(np.asarray(constant_values(node)) == 0))


class FuseSCAPFullyConnected(MatcherPass):
    """Portable SCAP pattern (+ folded-bias Add) -> SCAPFullyConnected."""

    def __init__(self, native: bool = True):
        super().__init__()
        x, mode, tau, zero, weight, bias = (AnyInput(), WrapType("opset1.Constant"), WrapType("opset1.Constant"),
                                            WrapType("opset1.Constant"), AnyInput(), WrapType("opset1.Constant"))
        centered = WrapType("opset1.Subtract", [x, mode])
        keep = WrapType("opset1.Greater", [WrapType("opset1.Abs", [centered]), tau])
        pruned = WrapType("opset1.Select", [keep, centered, zero])
        matmul = WrapType("opset1.MatMul", [pruned, weight])
        add = WrapType("opset1.Add", [matmul, bias])

        def callback(matcher: Matcher) -> bool:
            values = matcher.get_pattern_value_map()
            return _replace(values[add].get_node(), values[matmul].get_node(), values[x],
                            values[mode].get_node(), values[tau].get_node(), values[zero].get_node(),
                            values[bias].get_node(), native)

        self.register_matcher(Matcher(add, "FuseSCAPFullyConnected"), callback)


class FuseNNCFSparsifiedFullyConnected(MatcherPass):
    """NNCF torch sparsify_activations pattern (zero-centred, no bias) -> SCAPFullyConnected."""

    def __init__(self, native: bool = True):
        super().__init__()
        x, tau, zero, weight = AnyInput(), WrapType("opset1.Constant"), WrapType("opset1.Constant"), AnyInput()
        prune = WrapType("opset1.LessEqual", [WrapType("opset1.Abs", [x]), tau])
        pruned = WrapType("opset1.Select", [prune, zero, x])
        matmul = WrapType("opset1.MatMul", [pruned, weight])

        def callback(matcher: Matcher) -> bool:
            values = matcher.get_pattern_value_map()
            mm = values[matmul].get_node()
            return _replace(mm, mm, values[x], None, values[tau].get_node(), values[zero].get_node(), None, native)

        self.register_matcher(Matcher(matmul, "FuseNNCFSparsifiedFullyConnected"), callback)


def _replace(last: ov.Node, matmul: ov.Node, x: ov.Output, mode_node, tau_node, zero_node, bias_node,
             native: bool) -> bool:
    chain = match_weight_chain(matmul)
    if chain is None or x.get_element_type() != ov.Type.f32 or not _is_zero(zero_node):
        return False
    try:
        packed = pack_chain(chain)
    except ValueError:  # a layout the op does not take (e.g. odd OC with 4-bit): keep the portable ops
        return False
    mode = np.float32(0) if mode_node is None else _scalar_or_vector(mode_node)
    tau = _scalar_or_vector(tau_node)
    bias = None
    if bias_node is not None:
        bias = np.asarray(constant_values(bias_node), dtype=np.float32).reshape(-1)
        if bias.size == 1:
            bias = np.full(packed.oc, bias.item(), np.float32)
        if bias.size != packed.oc:
            return False
    if mode is None or tau is None or (mode.ndim and mode.size != packed.ic) or (tau.ndim and tau.size != packed.ic):
        return False
    if not np.all(np.isfinite(tau)) or np.any(tau < 0):
        return False
    base = matmul.get_friendly_name() + "/scap/"
    fused = make_scap_fc(x, packed, mode, tau, bias, name=base + "fused", native=native)
    # Name the op's constants after the FC: unnamed ones get process-global counters, and re-running the
    # transformation from the same artifact must reproduce the IR bit for bit.
    for port, input_name in enumerate(INPUT_NAMES[1:], start=1):
        fused.get_node().input_value(port).get_node().set_friendly_name(base + input_name)
    last.output(0).replace(fused)
    return True


def apply_fusion(model: ov.Model, native: bool = True) -> ov.Model:
    """Apply pass B in place: every SCAP / NNCF-sparsified FC becomes a SCAPFullyConnected; others stay."""
    manager = ov.passes.Manager()
    manager.register_pass(FuseSCAPFullyConnected(native))
    manager.register_pass(FuseNNCFSparsifiedFullyConnected(native))
    manager.run_passes(model)
    return model


def count_fused(model: ov.Model) -> int:
    return sum(1 for n in model.get_ordered_ops() if n.get_type_name() == "SCAPFullyConnected")
