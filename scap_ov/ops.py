"""Python twin of the C++ ``SCAPFullyConnected`` op (opset ``extension``).

The twin builds graphs that contain the op: ``ov.save_model`` writes it as
``<layer type="SCAPFullyConnected" version="extension">`` with attribute ``schema_version``, and a Core that
has the C++ extension (:func:`scap_ov.extension.register`) reads it back as the C++ op, which runs the
kernels. The twin itself has no ``evaluate``: it is a graph-building device, not an implementation.

Inputs (fixed order): x f32 [..., IC]; weights [IC, OC] (f32, f16, bf16, i8, u8, i4, u4); scales f16/f32
[G, OC] ([0] for float weights); zero_points [G, OC] of the weight type for u8/u4 ([0] otherwise);
mode f32 [] / [1] / [IC]; threshold f32 [] / [1] / [IC]; bias f32 [OC] or [0]. Output: f32 [..., OC].

Compact form (``schema_version`` 2, what :func:`make_scap_fc` builds): x and weights, then only the inputs
that carry data, named in order by the attribute ``inputs`` (a subset of ``scales,zero_points,mode,threshold,
bias``); a scalar mode / threshold is the attribute ``mode_value`` / ``threshold_value``. The CPU plugin pays a
few microseconds per input on every call of an extension op with a dynamic token dimension (it re-infers the
op's shape by wrapping every input in a Constant and cloning the op), so an f32 FC with a scalar threshold
passes 2 inputs instead of 7.

Several outputs (``schema_version`` 3): the compact form plus the attribute ``output_channels``, the widths of
consecutive output column ranges, one output each. Sibling FCs that share input, mode and threshold (q/k/v,
gate/up) become one op with one output per FC, so the CPU plugin runs no VariadicSplit node after it.
"""
from __future__ import annotations

import numpy as np
import openvino as ov

from scap_ov.packing import PackedWeights

OP_TYPE = "SCAPFullyConnected"
OP_DOMAIN = "extension"
SCHEMA_VERSION = 1  # seven inputs
COMPACT_SCHEMA_VERSION = 2  # x, weights + the inputs named by the attribute ``inputs``
MULTI_OUTPUT_SCHEMA_VERSION = 3  # compact + one output per column range of the attribute ``output_channels``
SCHEMA_VERSIONS = (SCHEMA_VERSION, COMPACT_SCHEMA_VERSION, MULTI_OUTPUT_SCHEMA_VERSION)
COMPACT_SCHEMA_VERSIONS = (COMPACT_SCHEMA_VERSION, MULTI_OUTPUT_SCHEMA_VERSION)
INPUT_NAMES = ("x", "weights", "scales", "zero_points", "mode", "threshold", "bias")
OPTIONAL_INPUTS = INPUT_NAMES[2:]


def input_names(node) -> tuple[str, ...]:
    """The name of every input port of a SCAPFullyConnected node (either form)."""
    attrs = node.get_attributes()
    if int(attrs.get("schema_version", SCHEMA_VERSION)) not in COMPACT_SCHEMA_VERSIONS:
        return INPUT_NAMES
    listed = attrs.get("inputs", "")
    return INPUT_NAMES[:2] + tuple(n for n in listed.split(",") if n)


class SCAPFullyConnected(ov.Op):
    class_type_info = ov.DiscreteTypeInfo(OP_TYPE, OP_DOMAIN)

    def __init__(self, inputs=None, schema_version: int = SCHEMA_VERSION, optional_inputs: str = "",
                 mode_value: float = 0.0, threshold_value: float = 0.0, output_channels=()):
        self._schema_version = int(schema_version)
        self._inputs = str(optional_inputs)
        self._mode_value = float(np.float32(mode_value))
        self._threshold_value = float(np.float32(threshold_value))
        self._output_channels = [int(c) for c in output_channels]
        super().__init__(self)
        if inputs is not None:
            self.set_arguments(list(inputs))
            self.constructor_validate_and_infer_types()

    @property
    def schema_version(self) -> int:
        return self._schema_version

    def validate_and_infer_types(self) -> None:
        if self._schema_version not in SCHEMA_VERSIONS:
            raise ValueError(
                f"SCAPFullyConnected schema_version {self._schema_version} is not supported: "
                f"this twin implements schema_version {', '.join(map(str, SCHEMA_VERSIONS))}"
            )
        if self._schema_version == SCHEMA_VERSION:
            if self.get_input_size() != len(INPUT_NAMES):
                raise ValueError(f"SCAPFullyConnected expects 7 inputs {INPUT_NAMES}, got {self.get_input_size()}")
        else:
            listed = [n for n in self._inputs.split(",") if n]
            if [n for n in OPTIONAL_INPUTS if n in listed] != listed:
                raise ValueError(f"SCAPFullyConnected attribute inputs={self._inputs!r}: names must be a subset of "
                                 f"{','.join(OPTIONAL_INPUTS)}, in this order, each once")
            if self.get_input_size() != 2 + len(listed):
                raise ValueError(f"SCAPFullyConnected (compact, inputs={self._inputs!r}) expects {2 + len(listed)} "
                                 f"inputs, got {self.get_input_size()}")
            if not (np.isfinite(self._threshold_value) and self._threshold_value >= 0):
                raise ValueError("SCAPFullyConnected threshold_value must be finite and >= 0")
        x_ps = self.get_input_partial_shape(0)
        w_ps = self.get_input_partial_shape(1)
        oc = w_ps[1] if w_ps.rank.is_static and w_ps.rank.get_length() == 2 else ov.Dimension()
        widths = [oc]
        if self._schema_version == MULTI_OUTPUT_SCHEMA_VERSION:
            if not self._output_channels or min(self._output_channels) < 1:
                raise ValueError(f"SCAPFullyConnected output_channels must be >= 1 each, got {self._output_channels}")
            if oc.is_static and sum(self._output_channels) != oc.get_length():
                raise ValueError(f"SCAPFullyConnected output_channels add up to {sum(self._output_channels)} but "
                                 f"the weights have OC={oc}")
            widths = [ov.Dimension(c) for c in self._output_channels]
        dims = None
        if x_ps.rank.is_static:
            dims = [x_ps[i] for i in range(x_ps.rank.get_length())]
            if not dims:
                raise ValueError("SCAPFullyConnected input x must have rank >= 1")
            if w_ps.rank.is_static and not dims[-1].compatible(w_ps[0]):
                raise ValueError(
                    f"SCAPFullyConnected input channels mismatch: x has IC={dims[-1]} but weights [IC, OC] have IC={w_ps[0]}"
                )
        for i, width in enumerate(widths):
            self.set_output_type(i, ov.Type.f32,
                                 ov.PartialShape.dynamic() if dims is None else ov.PartialShape(dims[:-1] + [width]))

    def clone_with_new_inputs(self, new_inputs):
        return SCAPFullyConnected(new_inputs, self._schema_version, self._inputs, self._mode_value,
                                  self._threshold_value, self._output_channels)

    def visit_attributes(self, visitor) -> bool:
        attrs = {"schema_version": self._schema_version}
        if self._schema_version in COMPACT_SCHEMA_VERSIONS:
            attrs.update(inputs=self._inputs, mode_value=self._mode_value, threshold_value=self._threshold_value)
        if self._schema_version == MULTI_OUTPUT_SCHEMA_VERSION:
            attrs.update(output_channels=self._output_channels)
        visitor.on_attributes(attrs)
        return True


def _param_constant(value, ic: int, name: str) -> ov.Node:
    a = np.asarray(value, dtype=np.float32)
    if a.ndim == 0 or a.size == 1:
        return ov.op.Constant(a.reshape(()) if a.ndim == 0 else a.reshape(1))
    a = a.reshape(-1)
    if a.size != ic:
        raise ValueError(f"{name} must be a scalar or have IC={ic} values, got {a.size}")
    return ov.op.Constant(np.ascontiguousarray(a))


def shape_size(node: ov.Node) -> int:
    return int(np.prod(list(node.get_output_shape(0)), dtype=np.int64))


def _scalar(node: ov.Node) -> float:
    return float(node.get_data().reshape(-1)[0])


_FACTORY = None


def native_node_factory():
    """A NodeFactory holding the C++ extension: creates the real C++ op (compilable without a save/read trip)."""
    global _FACTORY
    if _FACTORY is None:
        from openvino.utils.node_factory import NodeFactory

        from scap_ov.extension import check_compatible, extension_path

        path = extension_path()
        check_compatible(path)
        factory = NodeFactory()
        factory.add_extension(path)
        _FACTORY = factory
    return _FACTORY


def make_scap_fc(x_output, packed: PackedWeights, mode=0.0, threshold=0.0, bias=None,
                 schema_version: int = COMPACT_SCHEMA_VERSION, name: str | None = None,
                 native: bool = False, output_channels=None) -> ov.Output:
    """Build Constants for ``packed``, ``mode``, ``threshold`` and ``bias`` and a SCAPFullyConnected on ``x_output``.

    ``mode`` / ``threshold``: a float or a per-input-channel vector of IC values; ``bias``: the folded bias
    ``b + W @ m`` as OC values, or None. Returns the op's (first) output.

    ``output_channels`` (widths adding up to OC, more than one): the multi-output form (schema_version 3), one
    output per consecutive column range; the other outputs are ``.get_node().output(i)``.

    ``native=False`` creates the Python twin (save with ``ov.save_model(..., compress_to_fp16=False)``, read
    back with a Core that has the extension). ``native=True`` creates the C++ op itself through the
    extension, so the model can be compiled directly.

    ``schema_version`` 2 (default) builds the compact form: scales / zero points only for weights that have
    them, mode / threshold as attributes when scalar, bias only when given. 1 builds the seven-input form.
    """
    thr = np.asarray(threshold, dtype=np.float32)
    if not np.all(np.isfinite(thr)) or np.any(thr < 0):
        raise ValueError("threshold must be finite and >= 0")
    if bias is None:
        b = ov.op.Constant(np.zeros((0,), np.float32))
    else:
        ba = np.ascontiguousarray(np.asarray(bias, dtype=np.float32).reshape(-1))
        if ba.size != packed.oc:
            raise ValueError(f"bias must have OC={packed.oc} values, got {ba.size}")
        b = ov.op.Constant(ba)
    values = {
        "scales": packed.scales_constant(),
        "zero_points": packed.zero_points_constant(),
        "mode": _param_constant(mode, packed.ic, "mode"),
        "threshold": _param_constant(thr, packed.ic, "threshold"),
        "bias": b,
    }
    widths = [int(c) for c in output_channels] if output_channels is not None else []
    if len(widths) > 1:
        if int(schema_version) != COMPACT_SCHEMA_VERSION:
            raise ValueError("output_channels needs the compact form (schema_version 2)")
        if min(widths) < 1 or sum(widths) != packed.oc:
            raise ValueError(f"output_channels {widths} must be >= 1 each and add up to OC={packed.oc}")
        schema_version = MULTI_OUTPUT_SCHEMA_VERSION
    attrs = {"schema_version": int(schema_version)}
    if int(schema_version) in COMPACT_SCHEMA_VERSIONS:
        # Keep only what carries data: non-empty scales / zero points / bias, per-channel mode / threshold.
        listed = [n for n in OPTIONAL_INPUTS
                  if (n in ("mode", "threshold") and shape_size(values[n]) > 1)
                  or (n not in ("mode", "threshold") and shape_size(values[n]) > 0)]
        attrs.update(inputs=",".join(listed),
                     mode_value=0.0 if "mode" in listed else _scalar(values["mode"]),
                     threshold_value=0.0 if "threshold" in listed else _scalar(values["threshold"]))
    else:
        listed = list(OPTIONAL_INPUTS)
    inputs = [x_output, packed.weights_constant().output(0)] + [values[n].output(0) for n in listed]
    if schema_version == MULTI_OUTPUT_SCHEMA_VERSION:
        attrs.update(output_channels=widths)
    if native:
        op = native_node_factory().create(OP_TYPE, inputs, attrs)
    elif int(schema_version) in COMPACT_SCHEMA_VERSIONS:
        op = SCAPFullyConnected(inputs, schema_version, attrs["inputs"], attrs["mode_value"], attrs["threshold_value"],
                                attrs.get("output_channels", ()))
    else:
        op = SCAPFullyConnected(inputs, schema_version)
    if name:
        op.set_friendly_name(name)
    return op.output(0)
