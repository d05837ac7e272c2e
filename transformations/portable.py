"""Pass A: the portable SCAP IR, in the standard opset, runnable on any OpenVINO device.

For each calibrated FC  y = W x (+ b):
    d    = Subtract(x, m)                      m: scalar or per-input-channel mode
    keep = Greater(Abs(d), tau)                NaN is never kept; +-Inf always is
    x'   = Select(keep, d, 0)
    y    = Add(MatMul(x', W), W m)             folded bias: exact algebra, computed once here
The fused CPU op (pass B) matches exactly this shape; node names carry the ``/scap/`` suffixes below.

CATS entries (``method == "cats"``) prune act(gate) of the FC's gated input act(gate) * up instead, zero-centred
and without a bias: the FC (down_proj) then reads zeros there, and the up_proj rows feeding them are unused.
"""
from __future__ import annotations

import numpy as np
import openvino as ov
import openvino.opset13 as ops
from openvino.passes import ModelPass

from scap_ov.artifact import Artifact, FCThreshold
from scap_ov.errors import ScapError
from scap_ov.layers import FC, find_fcs, gated_input

RT_INFO_KEY = "scap_ov"  # model rt_info: artifact summary, so a saved IR says what produced it
UNPRUNED_KEY = "unpruned_fcs"  # model rt_info under RT_INFO_KEY: MatMul names of FCs calibrated to prune nothing
UNPRUNED_SEPARATOR = ";"
UNPRUNED_MAX_SPARSITY = 0.01  # realised calibration sparsity below which a threshold-0 FC counts as unpruned
# Node-name suffixes other code looks for: input 0 of <matmul>/scap/centered is the FC's original (unpruned)
# input; <matmul>/scap/keep is the keep mask.
CENTERED_SUFFIX = "/scap/centered"
KEEP_SUFFIX = "/scap/keep"
TAU_INPUT_PREFIX = "scap_tau:"  # tunable models: one scalar f32 input per FC, named this + FC name
CATS_METHOD = "cats"  # artifact entry method: the threshold applies to act(gate) of the FC's gated input


def is_unpruned(entry: FCThreshold) -> bool:
    """An artifact entry whose threshold is 0 everywhere and that pruned (almost) nothing on the calibration
    tokens: a threshold-0 FC after a ReLU still skips its exact zeros, so it is not one."""
    return bool(np.all(np.asarray(entry.tau) == 0)) and entry.calibration_sparsity < UNPRUNED_MAX_SPARSITY


def _as_f32(values, in_features: int, what: str, fc: FC) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float32)
    if arr.ndim == 0:
        return arr
    if arr.shape != (in_features,):
        raise ScapError(f"artifact {what} of {fc.name} has {arr.size} values; the model's FC has {in_features} "
                        "input channels (artifact from another model?)")
    return arr


def folded_bias(fc: FC, mode: np.ndarray) -> np.ndarray:
    """W m, float32 [OC], from the weights exactly as OpenVINO dequantizes them."""
    w = fc.weight.dense().astype(np.float64)  # [OC, IC]
    m = np.broadcast_to(mode.astype(np.float64), (fc.in_features,))
    return (w @ m).astype(np.float32)


def insert_pruning(fc: FC, mode: np.ndarray, tau: np.ndarray | ov.Node, cats: bool = False) -> None:
    base = fc.node_name + "/scap/"
    gated = gated_input(fc) if cats else None
    if cats and (gated is None or np.any(mode != 0)):
        raise ScapError(f"artifact entry {fc.name} is a CATS threshold, but the FC's input is not act(gate) * up "
                        "(or its mode is not 0)")
    x = gated.activation if cats else fc.activation
    et = x.get_element_type()
    d = ops.subtract(x, ops.constant(mode, et, name=base + "mode"), name=base + "centered")
    tau = tau if isinstance(tau, ov.Node) else ops.constant(tau, et, name=base + "threshold")
    keep = ops.greater(ops.abs(d, name=base + "abs"), tau, name=base + "keep")
    pruned = ops.select(keep, d, ops.constant(np.float32(0), et, name=base + "zero"), name=base + "pruned")
    if cats:
        gated.multiply.input(gated.port).replace_source_output(pruned.output(0))
        return
    fc.matmul.input(0).replace_source_output(pruned.output(0))

    consumers = list(fc.matmul.output(0).get_target_inputs())
    bias = ops.add(fc.matmul.output(0), ops.constant(folded_bias(fc, mode), et, name=base + "bias"),
                   name=base + "folded_bias")
    for consumer in consumers:
        consumer.replace_source_output(bias.output(0))


def correct_weights(fc: FC, correction: np.ndarray) -> None:
    """Replace the FC's float weight constant by W + correction (artifact weight corrections), in the same
    element type and layout. Called after ``insert_pruning``: the folded bias stays W m of the original W."""
    chain = fc.weight
    if chain.compressed:
        raise ScapError(f"the artifact has a weight correction for {fc.name}, whose weights are "
                        f"{chain.format_name()}: corrections apply to float weights (export --weight-correction "
                        "with fp32 or fp16 weights)")
    if correction.shape != (fc.out_features, fc.in_features):
        raise ScapError(f"the weight correction of {fc.name} is {list(correction.shape)}; the FC's weights are "
                        f"[{fc.out_features}, {fc.in_features}] (artifact from another model?)")
    w = chain.dense() + correction.astype(np.float32)  # [OC, IC]
    if not chain.transpose_b:
        w = np.ascontiguousarray(w.T)
    new = ops.constant(w, chain.element_type, name=chain.weight.get_friendly_name())
    chain.weight.output(0).replace(new.output(0))


class InsertSCAPPruning(ModelPass):
    """Rewire every FC named in the artifact through centering + pruning, and fold W m into a bias."""

    def __init__(self, artifact: Artifact, layer_patterns: dict[str, str] | None = None, tunable: bool = False):
        super().__init__()
        self.artifact = artifact
        self.layer_patterns = layer_patterns
        self.tunable = tunable  # thresholds become model inputs (calibration searches; never exported)

    def run_on_model(self, model: ov.Model) -> bool:
        fcs = {fc.name: fc for fc in find_fcs(model, self.layer_patterns)}
        missing = [name for name in self.artifact.by_name() if name not in fcs]
        if missing:
            raise ScapError(f"artifact names {len(missing)} FC layers the model does not have "
                            f"(first: {missing[0]!r}); was it calibrated on another model?")
        unpruned = []
        for entry in self.artifact.fcs:
            fc = fcs[entry.name]
            if entry.layer_type != fc.layer_type:
                raise ScapError(f"artifact says {entry.name} is a {entry.layer_type!r} layer, the model a "
                                f"{fc.layer_type!r} layer")
            tau = _as_f32(entry.tau, fc.in_features, "tau", fc)
            if self.tunable:
                tau = ops.parameter(list(tau.shape), np.float32, name=TAU_INPUT_PREFIX + fc.name)
                tau.output(0).get_tensor().set_names({TAU_INPUT_PREFIX + fc.name})
                model.add_parameters([tau])
            insert_pruning(fc, _as_f32(entry.mode, fc.in_features, "mode", fc), tau, entry.method == CATS_METHOD)
            if entry.name in self.artifact.corrections:
                correct_weights(fc, self.artifact.corrections[entry.name])
            if not self.tunable and is_unpruned(entry):
                unpruned.append(fc.node_name)
        model.set_rt_info(str(len(self.artifact.fcs)), [RT_INFO_KEY, "fc_count"])
        # Read by the CPU fusion (pass B): these FCs keep their portable ops and OpenVINO's own FC.
        model.set_rt_info(UNPRUNED_SEPARATOR.join(unpruned), [RT_INFO_KEY, UNPRUNED_KEY])
        model.set_rt_info(str(self.artifact.schema_version), [RT_INFO_KEY, "artifact_version"])
        model.validate_nodes_and_infer_types()
        return True


def apply_portable(model: ov.Model, artifact: Artifact, layer_patterns: dict[str, str] | None = None,
                   tunable: bool = False) -> ov.Model:
    """Apply pass A in place and return the model (``tunable``: thresholds as inputs, see TAU_INPUT_PREFIX)."""
    manager = ov.passes.Manager()
    manager.register_pass(InsertSCAPPruning(artifact, layer_patterns, tunable))
    manager.run_passes(model)
    return model
