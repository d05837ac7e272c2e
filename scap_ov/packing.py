"""Pack fully-connected weights into the layout of the ``SCAPFullyConnected`` CPU op.

The op reads weights input-channel-major, ``[IC, OC]``, so that every kept input channel is one contiguous
run of ``OC`` elements. This module converts the layouts OpenVINO / NNCF use (``MatMul(x, W, transpose_b=True)``
with ``W`` as ``[OC, IC]``; NNCF-compressed integers ``[OC, IC]`` or grouped ``[OC, IC/g, g]`` with scale and
optional zero point ``[OC, 1]`` / ``[OC, IC/g, 1]``) into a :class:`PackedWeights`, keeping the element type:
integer weights stay integers (never a dequantized float copy).

4-bit tensors use OpenVINO's nibble packing: element ``k`` of the flattened tensor lives in byte ``k // 2``,
low nibble first (see :func:`pack_int4` / :func:`unpack_int4`).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import openvino as ov

WEIGHT_TYPES = ("f32", "f16", "bf16", "i8", "u8", "i4", "u4")
FLOAT_TYPES = ("f32", "f16", "bf16")
_OV_TYPES = {
    "f32": ov.Type.f32,
    "f16": ov.Type.f16,
    "bf16": ov.Type.bf16,
    "i8": ov.Type.i8,
    "u8": ov.Type.u8,
    "i4": ov.Type.i4,
    "u4": ov.Type.u4,
}
_INT_RANGE = {"i8": (-128, 127), "u8": (0, 255), "i4": (-8, 7), "u4": (0, 15)}


# ----------------------------------------------------------------------------------------------------------
# element helpers
# ----------------------------------------------------------------------------------------------------------

def pack_int4(values: np.ndarray) -> np.ndarray:
    """Pack integers in [-8, 15] (i4 or u4 values) into bytes, element k in byte k//2, low nibble first.

    Returns a flat ``uint8`` array of ``ceil(n / 2)`` bytes (a trailing odd element gets a zero high nibble).
    """
    v = np.asarray(values).reshape(-1)
    if v.size and (v.min() < -8 or v.max() > 15):
        raise ValueError("pack_int4: values must lie in [-8, 7] (i4) or [0, 15] (u4)")
    nib = (v.astype(np.int16) & 0x0F).astype(np.uint8)
    if nib.size % 2:
        nib = np.concatenate([nib, np.zeros(1, np.uint8)])
    return (nib[0::2] | (nib[1::2] << 4)).astype(np.uint8)


def unpack_int4(packed: np.ndarray, count: int, signed: bool) -> np.ndarray:
    """Inverse of :func:`pack_int4`: the first ``count`` 4-bit elements as int8 (sign-extended if ``signed``)."""
    b = np.asarray(packed, dtype=np.uint8).reshape(-1)
    if count > 2 * b.size:
        raise ValueError(f"unpack_int4: {b.size} bytes hold at most {2 * b.size} elements, asked for {count}")
    out = np.empty(2 * b.size, np.int16)
    out[0::2] = b & 0x0F
    out[1::2] = b >> 4
    out = out[:count]
    if signed:
        out = np.where(out >= 8, out - 16, out)
    return out.astype(np.int8)


def f32_to_bf16_bits(a: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bit patterns (uint16), round to nearest even (NaN stays NaN)."""
    f = np.ascontiguousarray(a, dtype=np.float32)
    u = f.view(np.uint32).astype(np.uint64)
    rounded = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)
    nan = np.isnan(f)
    if nan.any():
        rounded = np.where(nan, np.uint16(0x7FC0), rounded)
    return rounded


def bf16_bits_to_f32(b: np.ndarray) -> np.ndarray:
    return (np.asarray(b, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)


# ----------------------------------------------------------------------------------------------------------
# packed weights
# ----------------------------------------------------------------------------------------------------------

@dataclass
class PackedWeights:
    """Weights of one FC in the op's layout.

    ``data``: the raw storage of the ``[IC, OC]`` weight tensor: float32 / float16 arrays for f32 / f16,
    uint16 bit patterns for bf16, int8 / uint8 for i8 / u8, and a flat uint8 array of nibble pairs for
    i4 / u4. ``scales``: ``[G, OC]`` float16 or float32 (None for float weights). ``zero_points``: storage
    of the ``[G, OC]`` zero points of the weight type (u8 array, or packed nibbles for u4), None when
    symmetric.
    """

    weight_type: str
    ic: int
    oc: int
    data: np.ndarray
    scales: np.ndarray | None = None
    zero_points: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.weight_type not in WEIGHT_TYPES:
            raise ValueError(f"unsupported weight type {self.weight_type!r}; expected one of {WEIGHT_TYPES}")
        if self.is_4bit and self.oc % 2:
            raise ValueError(f"4-bit weights need an even number of output channels, got OC={self.oc}")
        if self.weight_type in FLOAT_TYPES:
            if self.scales is not None or self.zero_points is not None:
                raise ValueError("float weights take no scales or zero points")
        else:
            if self.scales is None or self.scales.ndim != 2 or self.scales.shape[1] != self.oc:
                raise ValueError(f"scales must be [G, OC={self.oc}]")
            if self.ic % self.scales.shape[0]:
                raise ValueError(f"group size does not divide IC: {self.scales.shape[0]} groups for IC={self.ic}")
            if (self.zero_points is not None) != (self.weight_type in ("u8", "u4")):
                raise ValueError(f"{self.weight_type} weights {'need' if self.weight_type in ('u8', 'u4') else 'take no'} zero points")

    @property
    def ov_type(self) -> ov.Type:
        return _OV_TYPES[self.weight_type]

    @property
    def is_4bit(self) -> bool:
        return self.weight_type in ("i4", "u4")

    @property
    def n_groups(self) -> int:
        return 1 if self.scales is None else int(self.scales.shape[0])

    @property
    def group_size(self) -> int:
        return self.ic // self.n_groups

    @property
    def nbytes(self) -> int:
        """Bytes of everything the op keeps for these weights (weights + scales + zero points)."""
        n = int(self.data.nbytes)
        if self.scales is not None:
            n += int(self.scales.nbytes)
        if self.zero_points is not None:
            n += int(self.zero_points.nbytes)
        return n

    # OpenVINO tensors / constants -------------------------------------------------------------------------
    def weights_tensor(self) -> ov.Tensor:
        return ov.Tensor(np.ascontiguousarray(self.data), ov.Shape([self.ic, self.oc]), self.ov_type)

    def weights_constant(self, shared_memory: bool = False) -> ov.Node:
        return ov.op.Constant(self.weights_tensor(), shared_memory=shared_memory)

    def scales_constant(self) -> ov.Node:
        if self.scales is None:
            return ov.op.Constant(np.zeros((0,), np.float32))
        return ov.op.Constant(np.ascontiguousarray(self.scales))

    def zero_points_constant(self) -> ov.Node:
        if self.zero_points is None:
            return ov.op.Constant(np.zeros((0,), np.float32))
        t = ov.Tensor(np.ascontiguousarray(self.zero_points), ov.Shape([self.n_groups, self.oc]), self.ov_type)
        return ov.op.Constant(t, shared_memory=False)


def _as_ic_oc_float(w: np.ndarray) -> np.ndarray:
    w = np.asarray(w)
    if w.ndim != 2:
        raise ValueError(f"float weights must be [OC, IC], got shape {w.shape}")
    return np.ascontiguousarray(w.T)


def pack_float(weight: np.ndarray, weight_type: str = "f32") -> PackedWeights:
    """Pack a float FC weight ``[OC, IC]`` (MatMul transpose_b layout) as f32, f16 or bf16 ``[IC, OC]``.

    For ``bf16`` the input may already be bfloat16 bit patterns (uint16) or floats (rounded to nearest even).
    """
    if weight_type not in FLOAT_TYPES:
        raise ValueError(f"pack_float: weight_type must be one of {FLOAT_TYPES}, got {weight_type!r}")
    w = _as_ic_oc_float(weight)
    ic, oc = w.shape
    if weight_type == "f32":
        data = w.astype(np.float32)
    elif weight_type == "f16":
        data = w.astype(np.float16)
    else:
        data = w.astype(np.uint16) if w.dtype == np.uint16 else f32_to_bf16_bits(w.astype(np.float32))
    return PackedWeights(weight_type, ic, oc, np.ascontiguousarray(data))


def _grouped_to_g_oc(a: np.ndarray, oc: int, name: str) -> np.ndarray:
    """NNCF scale / zero point ([OC, 1] or [OC, G, 1] or [OC, G]) -> [G, OC]."""
    a = np.asarray(a)
    if a.ndim == 3:
        if a.shape[2] != 1:
            raise ValueError(f"{name} of grouped weights must be [OC, G, 1], got {a.shape}")
        a = a[:, :, 0]
    if a.ndim == 1:
        a = a[:, None]
    if a.ndim != 2 or a.shape[0] != oc:
        raise ValueError(f"{name} must be [OC={oc}, 1] or [OC, G, 1], got shape {a.shape}")
    return np.ascontiguousarray(a.T)


def pack_compressed(
    weight: np.ndarray,
    scale: np.ndarray,
    zero_point: np.ndarray | None = None,
    weight_type: str | None = None,
    scale_dtype=np.float16,
) -> PackedWeights:
    """Pack NNCF-compressed integer weights.

    ``weight``: integer values (unpacked, one per element) ``[OC, IC]`` or grouped ``[OC, IC/g, g]``.
    ``scale``: ``[OC, 1]`` or ``[OC, IC/g, 1]``; ``zero_point``: same shape as ``scale`` (asymmetric) or None.
    ``weight_type``: i8, u8, i4 or u4 (default: i8/u8 by signedness of ``weight``'s dtype... pass it explicitly
    for 4-bit). Values outside the type's range raise.
    """
    w = np.asarray(weight)
    if weight_type is None:
        weight_type = "u8" if zero_point is not None else "i8"
    if weight_type not in _INT_RANGE:
        raise ValueError(f"pack_compressed: weight_type must be one of i8, u8, i4, u4, got {weight_type!r}")
    if w.ndim == 3:
        oc, ng, g = w.shape
        w = w.reshape(oc, ng * g)
    if w.ndim != 2:
        raise ValueError(f"compressed weights must be [OC, IC] or [OC, IC/g, g], got shape {np.shape(weight)}")
    oc, ic = w.shape
    lo, hi = _INT_RANGE[weight_type]
    if w.size and (w.min() < lo or w.max() > hi):
        raise ValueError(f"{weight_type} weights must lie in [{lo}, {hi}]")
    wt = np.ascontiguousarray(w.T.astype(np.int16))  # [IC, OC]
    s = _grouped_to_g_oc(scale, oc, "scale").astype(scale_dtype)
    if ic % s.shape[0]:
        raise ValueError(f"group size does not divide IC: {s.shape[0]} groups for IC={ic}")
    zp = None
    if zero_point is not None:
        if weight_type not in ("u8", "u4"):
            raise ValueError(f"{weight_type} is symmetric: zero points are only for u8 / u4")
        z = _grouped_to_g_oc(zero_point, oc, "zero_point")
        if z.shape != s.shape:
            raise ValueError(f"zero_point shape {np.shape(zero_point)} must match scale shape {np.shape(scale)}")
        if z.size and (z.min() < lo or z.max() > hi):
            raise ValueError(f"{weight_type} zero points must lie in [{lo}, {hi}]")
        zp = pack_int4(z) if weight_type == "u4" else z.astype(np.uint8)
    elif weight_type in ("u8", "u4"):
        raise ValueError(f"{weight_type} weights need zero points")
    if weight_type in ("i4", "u4"):
        data = pack_int4(wt)
    elif weight_type == "i8":
        data = wt.astype(np.int8)
    else:
        data = wt.astype(np.uint8)
    return PackedWeights(weight_type, ic, oc, data, s, zp)


def weight_values(packed: PackedWeights) -> np.ndarray:
    """The raw weight values ``[IC, OC]`` as float32 (integers as they are, no scale / zero point)."""
    t = packed.weight_type
    if t == "f32":
        return packed.data.astype(np.float32).reshape(packed.ic, packed.oc)
    if t == "f16":
        return packed.data.astype(np.float32).reshape(packed.ic, packed.oc)
    if t == "bf16":
        return bf16_bits_to_f32(packed.data).reshape(packed.ic, packed.oc)
    if t in ("i4", "u4"):
        return unpack_int4(packed.data, packed.ic * packed.oc, t == "i4").astype(np.float32).reshape(packed.ic, packed.oc)
    return packed.data.astype(np.float32).reshape(packed.ic, packed.oc)


def zero_point_values(packed: PackedWeights) -> np.ndarray | None:
    if packed.zero_points is None:
        return None
    g = packed.n_groups
    if packed.weight_type == "u4":
        return unpack_int4(packed.zero_points, g * packed.oc, False).astype(np.float32).reshape(g, packed.oc)
    return packed.zero_points.astype(np.float32).reshape(g, packed.oc)


def dequantize(packed: PackedWeights) -> np.ndarray:
    """Dense float32 ``[IC, OC]`` equivalent of ``packed`` (for tests and references only)."""
    w = weight_values(packed)
    if packed.scales is None:
        return w
    gs = packed.group_size
    s = np.repeat(packed.scales.astype(np.float32), gs, axis=0)
    zp = zero_point_values(packed)
    if zp is not None:
        w = w - np.repeat(zp, gs, axis=0)
    return (w * s).astype(np.float32)


def concat_output_channels(parts: list[PackedWeights]) -> PackedWeights:
    """One PackedWeights holding ``parts`` side by side along OC (FCs that read the same input).

    All parts must share the weight type, IC, group count and scale dtype.
    """
    first = parts[0]
    for p in parts[1:]:
        if (p.weight_type, p.ic, p.n_groups) != (first.weight_type, first.ic, first.n_groups):
            raise ValueError("concat_output_channels: parts differ in weight type, IC or group count")
        if (p.scales is None) != (first.scales is None) or (
                p.scales is not None and p.scales.dtype != first.scales.dtype):
            raise ValueError("concat_output_channels: parts differ in scale dtype")
    oc = sum(p.oc for p in parts)
    if first.is_4bit:
        signed = first.weight_type == "i4"
        data = pack_int4(np.hstack([unpack_int4(p.data, p.ic * p.oc, signed).reshape(p.ic, p.oc) for p in parts]))
    else:
        data = np.hstack([p.data.reshape(p.ic, p.oc) for p in parts])
    scales = None if first.scales is None else np.hstack([p.scales for p in parts])
    zero_points = None
    if first.zero_points is not None:
        zps = np.hstack([zero_point_values(p) for p in parts])
        zero_points = pack_int4(zps.astype(np.int16)) if first.is_4bit else zps.astype(np.uint8)
    return PackedWeights(first.weight_type, first.ic, oc, np.ascontiguousarray(data), scales, zero_points)
