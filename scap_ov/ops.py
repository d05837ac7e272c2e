"""Python twin of the C++ ``SCAPFullyConnected`` op (opset ``extension``).

The twin builds graphs that contain the op: ``ov.save_model`` writes it as
``<layer type="SCAPFullyConnected" version="extension">`` with attribute ``schema_version``, and a Core that
has the C++ extension (:func:`scap_ov.extension.register`) reads it back as the C++ op, which runs the
kernels. The twin itself has no ``evaluate``: it is a graph-building device, not an implementation.

Inputs (fixed order): x f32 [..., IC]; weights [IC, OC] (f32, f16, bf16, i8, u8, i4, u4); scales f16/f32
[G, OC] ([0] for float weights); zero_points [G, OC] of the weight type for u8/u4 ([0] otherwise);
mode f32 [] / [1] / [IC]; threshold f32 [] / [1] / [IC]; bias f32 [OC] or [0]. Output: f32 [..., OC].
"""
from __future__ import annotations

import numpy as np
import openvino as ov

from scap_ov.packing import PackedWeights

OP_TYPE = "SCAPFullyConnected"
OP_DOMAIN = "extension"
SCHEMA_VERSION = 1
INPUT_NAMES = ("x", "weights", "scales", "zero_points", "mode", "threshold", "bias")


class SCAPFullyConnected(ov.Op):
    class_type_info = ov.DiscreteTypeInfo(OP_TYPE, OP_DOMAIN)

    def __init__(self, inputs=None, schema_version: int = SCHEMA_VERSION):
        self._schema_version = int(schema_version)
        super().__init__(self)
        if inputs is not None:
            self.set_arguments(list(inputs))
            self.constructor_validate_and_infer_types()

    @property
    def schema_version(self) -> int:
        return self._schema_version

    def validate_and_infer_types(self) -> None:
        if self._schema_version != SCHEMA_VERSION:
            raise ValueError(
                f"SCAPFullyConnected schema_version {self._schema_version} is not supported: "
                f"this twin implements schema_version {SCHEMA_VERSION}"
            )
        if self.get_input_size() != len(INPUT_NAMES):
            raise ValueError(f"SCAPFullyConnected expects 7 inputs {INPUT_NAMES}, got {self.get_input_size()}")
        x_ps = self.get_input_partial_shape(0)
        w_ps = self.get_input_partial_shape(1)
        oc = w_ps[1] if w_ps.rank.is_static and w_ps.rank.get_length() == 2 else ov.Dimension()
        if x_ps.rank.is_static:
            dims = [x_ps[i] for i in range(x_ps.rank.get_length())]
            if not dims:
                raise ValueError("SCAPFullyConnected input x must have rank >= 1")
            if w_ps.rank.is_static and not dims[-1].compatible(w_ps[0]):
                raise ValueError(
                    f"SCAPFullyConnected input channels mismatch: x has IC={dims[-1]} but weights [IC, OC] have IC={w_ps[0]}"
                )
            out = ov.PartialShape(dims[:-1] + [oc])
        else:
            out = ov.PartialShape.dynamic()
        self.set_output_type(0, ov.Type.f32, out)

    def clone_with_new_inputs(self, new_inputs):
        return SCAPFullyConnected(new_inputs, self._schema_version)

    def visit_attributes(self, visitor) -> bool:
        visitor.on_attributes({"schema_version": self._schema_version})
        return True


def _param_constant(value, ic: int, name: str) -> ov.Node:
    a = np.asarray(value, dtype=np.float32)
    if a.ndim == 0 or a.size == 1:
        return ov.op.Constant(a.reshape(()) if a.ndim == 0 else a.reshape(1))
    a = a.reshape(-1)
    if a.size != ic:
        raise ValueError(f"{name} must be a scalar or have IC={ic} values, got {a.size}")
    return ov.op.Constant(np.ascontiguousarray(a))


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
                 schema_version: int = SCHEMA_VERSION, name: str | None = None,
                 native: bool = False) -> ov.Output:
    """Build Constants for ``packed``, ``mode``, ``threshold`` and ``bias`` and a SCAPFullyConnected on ``x_output``.

    ``mode`` / ``threshold``: a float or a per-input-channel vector of IC values; ``bias``: the folded bias
    ``b + W @ m`` as OC values, or None. Returns the op's output.

    ``native=False`` creates the Python twin (save with ``ov.save_model(..., compress_to_fp16=False)``, read
    back with a Core that has the extension). ``native=True`` creates the C++ op itself through the
    extension, so the model can be compiled directly.
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
    inputs = [
        x_output,
        packed.weights_constant().output(0),
        packed.scales_constant().output(0),
        packed.zero_points_constant().output(0),
        _param_constant(mode, packed.ic, "mode").output(0),
        _param_constant(thr, packed.ic, "threshold").output(0),
        b.output(0),
    ]
    if native:
        op = native_node_factory().create(OP_TYPE, inputs, {"schema_version": int(schema_version)})
    else:
        op = SCAPFullyConnected(inputs, schema_version)
    if name:
        op.set_friendly_name(name)
    return op.output(0)
