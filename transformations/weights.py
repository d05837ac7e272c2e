"""Recognise the weight input of an FC MatMul: a float constant or an NNCF weight-compression chain.

Chains (MatMul transpose_b=True, weights [OC, IC]); see DESIGN.md:
  f32/f16/bf16:  Constant [-> Convert f32]
  INT8/INT4:     Constant(i8|u8|i4|u4) -> Convert f16 -> [Subtract(Convert(zp))] -> Multiply(scale)
                 -> [Reshape [OC, IC/g, g] -> [OC, IC]] -> [Convert f32]
This is the public-API counterpart of OpenVINO's internal CompressedWeightsBlock.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import openvino as ov

from scap_ov.packing import unpack_int4


def constant_values(node: ov.Node) -> np.ndarray:
    """A Constant's values in its logical shape; 4-bit types (stored nibble-packed) come out as int8."""
    et, shape = node.get_output_element_type(0), tuple(node.get_output_shape(0))
    if et in (ov.Type.i4, ov.Type.u4):
        return unpack_int4(node.get_data(), int(np.prod(shape)), signed=et == ov.Type.i4).reshape(shape)
    return np.asarray(node.get_data()).reshape(shape)


FLOAT_TYPES = {ov.Type.f32, ov.Type.f16, ov.Type.bf16}
INT_TYPES = {ov.Type.i8, ov.Type.u8, ov.Type.i4, ov.Type.u4}


@dataclass
class WeightChain:
    weight: ov.Node  # the Constant holding the stored (possibly integer) weights
    scale: ov.Node | None = None  # Constant, [OC, 1] or [OC, IC/g, 1]
    zero_point: ov.Node | None = None  # Constant, same shape as scale (asymmetric formats)
    transpose_b: bool = True

    @property
    def element_type(self) -> ov.Type:
        return self.weight.get_output_element_type(0)

    @property
    def compressed(self) -> bool:
        return self.scale is not None

    @property
    def group_size(self) -> int | None:
        """Channels per group along IC for group-wise formats; None for per-channel or float weights."""
        shape = list(self.weight.get_output_shape(0))
        return shape[-1] if self.compressed and len(shape) == 3 else None

    @property
    def nbytes(self) -> int:
        return sum(n.get_byte_size() for n in (self.weight, self.scale, self.zero_point) if n is not None)

    def dense_shape(self) -> tuple[int, int]:
        """(OC, IC) of the weights the MatMul sees."""
        shape = list(self.weight.get_output_shape(0))
        oc, ic = shape[0], int(np.prod(shape[1:]))
        return (oc, ic) if self.transpose_b else (ic, oc)

    def format_name(self) -> str:
        t = self.element_type
        if not self.compressed:
            return t.get_type_name()
        bits = "int8" if t in (ov.Type.i8, ov.Type.u8) else "int4"
        kind = "asym" if self.zero_point is not None else "sym"
        g = self.group_size
        return f"{bits}_{kind}" + (f"_g{g}" if g else "")

    def dense(self) -> np.ndarray:
        """The weights as the CPU plugin computes them, float32 [OC, IC].

        The plugin decompresses in f32 (the IR's f16 intermediate type is not rounded to), so do the same.
        """
        w = constant_values(self.weight).astype(np.float32)
        if self.compressed:
            if self.zero_point is not None:
                w = w - constant_values(self.zero_point).astype(np.float32)
            w = w * constant_values(self.scale).astype(np.float32)
        w = w.reshape(w.shape[0], -1)
        return w if self.transpose_b else np.ascontiguousarray(w.T)


def _skip_converts(output: ov.Output) -> ov.Node:
    node = output.get_node()
    while node.get_type_name() == "Convert":
        node = node.input_value(0).get_node()
    return node


def _constant_or_none(output: ov.Output) -> ov.Node | None:
    node = _skip_converts(output)
    return node if node.get_type_name() == "Constant" else None


def match_weight_chain(matmul: ov.Node) -> WeightChain | None:
    """The weight chain on input 1 of ``matmul``, or None if that input is not a (decompressed) constant."""
    if matmul.get_type_name() != "MatMul" or matmul.get_attributes().get("transpose_a"):
        return None
    transpose_b = bool(matmul.get_attributes().get("transpose_b"))
    node = _skip_converts(matmul.input_value(1))
    if node.get_type_name() == "Constant":
        if node.get_output_element_type(0) not in FLOAT_TYPES or len(node.get_output_shape(0)) != 2:
            return None
        return WeightChain(weight=node, transpose_b=transpose_b)
    if node.get_type_name() == "Reshape":
        node = _skip_converts(node.input_value(0))
    if node.get_type_name() != "Multiply" or not transpose_b:
        return None
    scale = _constant_or_none(node.input_value(1))
    node = _skip_converts(node.input_value(0))
    zero_point = None
    if node.get_type_name() == "Subtract":
        zero_point = _constant_or_none(node.input_value(1))
        if zero_point is None:
            return None
        node = _skip_converts(node.input_value(0))
    if scale is None or node.get_type_name() != "Constant" or node.get_output_element_type(0) not in INT_TYPES:
        return None
    return WeightChain(weight=node, scale=scale, zero_point=zero_point, transpose_b=transpose_b)
