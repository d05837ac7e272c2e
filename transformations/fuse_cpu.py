"""Pass B (CPU): fuse each SCAP pattern and its weights into one ``SCAPFullyConnected`` op.

Matches the portable pattern of pass A
    Select(Greater(Abs(Subtract(x, m)), tau), Subtract(x, m), 0) -> MatMul(., W) -> Add(., W m)
and the pattern NNCF's torch ``sparsify_activations`` exports
    Select(LessEqual(Abs(x), tau), 0, x) -> MatMul(., W)
where W is a constant or an NNCF decompression chain. The weights are repacked input-channel-major in
their stored element type (integers stay integers, never a dequantized copy); the old constants then have no
consumer left, so the fused IR holds one copy of the weights.

FCs that read the same input with the same mode and threshold (q/k/v, gate/up under per-type targets) become
one op over their concatenated output channels, with one output per FC (schema_version 3): the CPU plugin pays
a fixed cost per extension-op call (generic shape inference on every dynamic-shape inference, ~10 us here), so
4 ops per decoder block instead of 7 save that cost, and one pass over the kept rows serves all three outputs.
(A VariadicSplit after one output, as before, cost another 6-11 us per call.)
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import openvino as ov
from openvino.passes import AnyInput, Matcher, MatcherPass, WrapType

from scap_ov.ops import OP_TYPE, input_names, make_scap_fc
from scap_ov.packing import PackedWeights, concat_output_channels, pack_compressed, pack_float
from scap_ov.transformations.portable import RT_INFO_KEY, UNPRUNED_KEY, UNPRUNED_SEPARATOR
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


@dataclass
class _Match:
    """One matched FC pattern: ``last`` is the node whose output the fused op replaces."""
    last: ov.Node
    matmul: ov.Node
    x: ov.Output
    mode: ov.Node | None
    tau: ov.Node
    zero: ov.Node
    bias: ov.Node | None


@dataclass
class _Prepared:
    match: _Match
    packed: PackedWeights
    mode: np.ndarray
    tau: np.ndarray
    bias: np.ndarray | None

    def merge_key(self) -> tuple:
        """FCs with equal keys compute the same keep mask on the same input and can share one op."""
        x = self.match.x
        scale_dtype = None if self.packed.scales is None else self.packed.scales.dtype.str
        return (x.get_node().get_name(), x.get_index(), self.mode.shape, self.mode.tobytes(), self.tau.shape, self.tau.tobytes(),
                self.packed.weight_type, self.packed.n_groups, scale_dtype)


def _prepare(m: _Match) -> _Prepared | None:
    """Packed weights and op parameters for a match, or None if the op cannot take it (left portable)."""
    chain = match_weight_chain(m.matmul)
    if chain is None or m.x.get_element_type() != ov.Type.f32 or not _is_zero(m.zero):
        return None
    try:
        packed = pack_chain(chain)
    except ValueError:  # a layout the op does not take (e.g. odd OC with 4-bit): keep the portable ops
        return None
    mode = np.float32(0) if m.mode is None else _scalar_or_vector(m.mode)
    tau = _scalar_or_vector(m.tau)
    bias = None
    if m.bias is not None:
        bias = np.asarray(constant_values(m.bias), dtype=np.float32).reshape(-1)
        if bias.size == 1:
            bias = np.full(packed.oc, bias.item(), np.float32)
        if bias.size != packed.oc:
            return None
    if mode is None or tau is None or (mode.ndim and mode.size != packed.ic) or (tau.ndim and tau.size != packed.ic):
        return None
    if not np.all(np.isfinite(tau)) or np.any(tau < 0):
        return None
    return _Prepared(m, packed, np.asarray(mode, np.float32), np.asarray(tau, np.float32), bias)


def _fuse(group: list[_Prepared], native: bool) -> None:
    """Replace the FCs of ``group`` (one, or siblings with one merge key) by one SCAPFullyConnected."""
    first = group[0]
    packed = first.packed if len(group) == 1 else concat_output_channels([p.packed for p in group])
    bias = None
    if any(p.bias is not None for p in group):
        bias = np.concatenate([p.bias if p.bias is not None else np.zeros(p.packed.oc, np.float32) for p in group])
    base = first.match.matmul.get_friendly_name() + "/scap/"
    fused = make_scap_fc(first.match.x, packed, first.mode, first.tau, bias, name=base + "fused", native=native,
                         output_channels=[p.packed.oc for p in group])
    # Name the op's constants after the FC: unnamed ones get process-global counters, and re-running the
    # transformation from the same artifact must reproduce the IR bit for bit.
    for port, input_name in enumerate(input_names(fused.get_node())[1:], start=1):
        fused.get_node().input_value(port).get_node().set_friendly_name(base + input_name)
    for i, p in enumerate(group):
        p.match.last.output(0).replace(fused.get_node().output(i))


def _drop_pruning(m: _Match) -> None:
    """An FC calibrated to prune nothing (threshold 0): its Select keeps x - m wherever x - m is not 0, i.e. it
    changes nothing but NaN, so the MatMul reads the centred input directly. Abs, Greater and Select were
    3 of the 4-5 eltwise nodes such an FC ran per call in a decode step; with mode 0 OpenVINO also drops the
    Subtract and the Add of the zero folded bias, leaving the dense layer."""
    select = m.matmul.input_value(0).get_node()
    m.matmul.input(0).replace_source_output(select.input_value(1))


class FindSCAPPatterns(MatcherPass):
    """Record every portable SCAP pattern (+ folded-bias Add) in ``found``; the graph is left as is, so
    fuse_portable can group siblings before fusing."""

    def __init__(self, found: list[_Match]):
        super().__init__()
        x, mode, tau, zero, weight, bias = (AnyInput(), WrapType("opset1.Constant"), WrapType("opset1.Constant"),
                                            WrapType("opset1.Constant"), AnyInput(), WrapType("opset1.Constant"))
        centered = WrapType("opset1.Subtract", [x, mode])
        keep = WrapType("opset1.Greater", [WrapType("opset1.Abs", [centered]), tau])
        pruned = WrapType("opset1.Select", [keep, centered, zero])
        matmul = WrapType("opset1.MatMul", [pruned, weight])
        add = WrapType("opset1.Add", [matmul, bias])

        def callback(matcher: Matcher) -> bool:
            v = matcher.get_pattern_value_map()
            found.append(_Match(v[add].get_node(), v[matmul].get_node(), v[x], v[mode].get_node(),
                                v[tau].get_node(), v[zero].get_node(), v[bias].get_node()))
            return False

        self.register_matcher(Matcher(add, "FindSCAPPatterns"), callback)


class FuseNNCFSparsifiedFullyConnected(MatcherPass):
    """NNCF torch sparsify_activations pattern (zero-centred, no bias) -> SCAPFullyConnected."""

    def __init__(self, native: bool = True):
        super().__init__()
        x, tau, zero, weight = AnyInput(), WrapType("opset1.Constant"), WrapType("opset1.Constant"), AnyInput()
        prune = WrapType("opset1.LessEqual", [WrapType("opset1.Abs", [x]), tau])
        pruned = WrapType("opset1.Select", [prune, zero, x])
        matmul = WrapType("opset1.MatMul", [pruned, weight])

        def callback(matcher: Matcher) -> bool:
            v = matcher.get_pattern_value_map()
            mm = v[matmul].get_node()
            prepared = _prepare(_Match(mm, mm, v[x], None, v[tau].get_node(), v[zero].get_node(), None))
            if prepared is None:
                return False
            _fuse([prepared], native)
            return True

        self.register_matcher(Matcher(matmul, "FuseNNCFSparsifiedFullyConnected"), callback)


# Written to the fused model's rt_info; bump when pass B's output changes for the same portable IR, so caches of
# fused folders (benchmarks/e2e.py) know to rebuild them from their artifacts.
FUSION_VERSION = "4"  # 2: FCs calibrated to prune nothing keep OpenVINO's FC; 3: merged FCs are one multi-output op;
# 4: FCs calibrated to prune nothing lose their Abs / Greater / Select


def _scap_rt_info(model: ov.Model, key: str) -> str | None:
    return model.get_rt_info([RT_INFO_KEY, key]).astype(str) if model.has_rt_info([RT_INFO_KEY, key]) else None


def fusion_version(model: ov.Model) -> str | None:
    return _scap_rt_info(model, "fusion_version")


def unpruned_fcs(model: ov.Model) -> set[str]:
    """MatMul names of the FCs pass A recorded as calibrated to prune nothing (model rt_info)."""
    return set((_scap_rt_info(model, UNPRUNED_KEY) or "").split(UNPRUNED_SEPARATOR)) - {""}


def fuse_portable(model: ov.Model, native: bool = True, merge: bool = True, fuse_unpruned: bool = False) -> int:
    """Fuse every portable SCAP FC the op can take; with ``merge``, siblings (same input, mode, threshold,
    weight format) share one op. FCs calibrated to prune nothing stay OpenVINO's own FC unless ``fuse_unpruned``:
    they read every weight row anyway, and OpenVINO's FC does that faster than the op (the op took 1.2-1.6x its
    time on SmolLM2's 576-wide layers at sparsity 0); their Abs / Greater / Select are dropped (see
    _drop_pruning). Returns the number of FCs fused."""
    skip = set() if fuse_unpruned else unpruned_fcs(model)
    found: list[_Match] = []
    manager = ov.passes.Manager()
    manager.register_pass(FindSCAPPatterns(found))
    manager.run_passes(model)
    groups: dict[object, list[_Prepared]] = {}
    for i, match in enumerate(found):
        if match.matmul.get_friendly_name() in skip:
            _drop_pruning(match)
            continue
        prepared = _prepare(match)  # packs the weights: once per FC
        if prepared is not None:
            groups.setdefault(prepared.merge_key() if merge else i, []).append(prepared)
    for group in groups.values():
        _fuse(group, native)
    return sum(len(group) for group in groups.values())


def apply_fusion(model: ov.Model, native: bool = True, merge: bool = True, fuse_unpruned: bool = False) -> ov.Model:
    """Apply pass B in place: every SCAP / NNCF-sparsified FC becomes a SCAPFullyConnected (siblings share
    one when ``merge``), except FCs pass A recorded as unpruned (fused too with ``fuse_unpruned``); other
    nodes stay."""
    fuse_portable(model, native, merge, fuse_unpruned)
    manager = ov.passes.Manager()
    manager.register_pass(FuseNNCFSparsifiedFullyConnected(native))
    manager.run_passes(model)
    if model.has_rt_info([RT_INFO_KEY, "fc_count"]) or count_ops(model):  # a SCAP model (untouched otherwise)
        model.set_rt_info(FUSION_VERSION, [RT_INFO_KEY, "fusion_version"])
    return model


def count_fused(model: ov.Model) -> int:
    """FC layers computed by SCAPFullyConnected ops (a merged op counts once per FC it serves)."""
    return sum(node.get_output_size() for node in model.get_ordered_ops() if node.get_type_name() == OP_TYPE)


def count_ops(model: ov.Model) -> int:
    return sum(1 for n in model.get_ordered_ops() if n.get_type_name() == OP_TYPE)
