"""scap_ov.packing: nibble packing, bf16 rounding, NNCF layouts -> [IC, OC] packed weights."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scap_ov import packing


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(-8, 7), min_size=0, max_size=65))
def test_int4_roundtrip_signed(vals):
    v = np.array(vals, dtype=np.int8)
    p = packing.pack_int4(v)
    assert p.dtype == np.uint8 and p.size == (v.size + 1) // 2
    np.testing.assert_array_equal(packing.unpack_int4(p, v.size, signed=True), v)


def test_int4_nibble_order_low_first():
    p = packing.pack_int4(np.array([1, 2, 3, 15], dtype=np.int16))
    assert p.tolist() == [0x21, 0xF3]
    np.testing.assert_array_equal(packing.unpack_int4(p, 4, signed=False), [1, 2, 3, 15])
    np.testing.assert_array_equal(packing.unpack_int4(p, 4, signed=True), [1, 2, 3, -1])


def test_int4_out_of_range_raises():
    with pytest.raises(ValueError, match="pack_int4"):
        packing.pack_int4(np.array([16]))
    with pytest.raises(ValueError, match="at most"):
        packing.unpack_int4(np.zeros(2, np.uint8), 5, signed=False)


def test_bf16_round_to_nearest_even():
    x = np.array([1.0, 1.0 + 2**-8, 1.0 + 3 * 2**-8, -2.5, np.nan], np.float32)
    b = packing.f32_to_bf16_bits(x)
    back = packing.bf16_bits_to_f32(b)
    np.testing.assert_array_equal(back[:4], [1.0, 1.0, 1.0 + 2**-6, -2.5])
    assert np.isnan(back[4])


@pytest.mark.parametrize("wtype", ["f32", "f16", "bf16"])
def test_pack_float_transposes(wtype):
    rng = np.random.default_rng(0)
    w = rng.standard_normal((6, 10)).astype(np.float32)
    p = packing.pack_float(w, wtype)
    assert (p.ic, p.oc) == (10, 6)
    deq = packing.dequantize(p)
    assert deq.shape == (10, 6)
    np.testing.assert_allclose(deq, w.T, rtol=1e-2 if wtype != "f32" else 0)
    assert p.nbytes == w.size * (4 if wtype == "f32" else 2)


@pytest.mark.parametrize("wtype,group", [("i8", None), ("u8", None), ("i4", 32), ("u4", 32), ("u4", None), ("i4", 64)])
def test_pack_compressed_matches_nncf_dequant(wtype, group):
    rng = np.random.default_rng(1)
    oc, ic = 8, 128
    lo, hi = {"i8": (-128, 127), "u8": (0, 255), "i4": (-8, 7), "u4": (0, 15)}[wtype]
    g = ic if group is None else group
    wq = rng.integers(lo, hi + 1, size=(oc, ic // g, g))
    scale = rng.uniform(0.01, 0.1, size=(oc, ic // g, 1)).astype(np.float16)
    zp = rng.integers(lo, hi + 1, size=(oc, ic // g, 1)) if wtype in ("u8", "u4") else None
    if group is None:
        p = packing.pack_compressed(wq.reshape(oc, ic), scale.reshape(oc, 1),
                                    None if zp is None else zp.reshape(oc, 1), wtype)
    else:
        p = packing.pack_compressed(wq, scale, zp, wtype)
    # NNCF's chain: (w - zp) * scale -> reshape [OC, IC]; the op's layout is its transpose
    nncf = ((wq - (0 if zp is None else zp)).astype(np.float32) * scale.astype(np.float32)).reshape(oc, ic)
    np.testing.assert_allclose(packing.dequantize(p), nncf.T, rtol=1e-6)
    assert p.scales.shape == (ic // g, oc)
    bits = 4 if wtype in ("i4", "u4") else 8
    expect = oc * ic * bits // 8 + scale.size * 2 + (0 if zp is None else zp.size * bits // 8)
    assert p.nbytes == expect
    assert p.weights_tensor().get_byte_size() == oc * ic * bits // 8


def test_pack_compressed_rejects_bad_input():
    with pytest.raises(ValueError, match="lie in"):
        packing.pack_compressed(np.full((4, 8), 9), np.ones((4, 1)), None, "i4")
    with pytest.raises(ValueError, match="need zero points"):
        packing.pack_compressed(np.ones((4, 8)), np.ones((4, 1)), None, "u8")
    with pytest.raises(ValueError, match="even number of output channels"):
        packing.pack_compressed(np.ones((3, 8)), np.ones((3, 1)), None, "i4")
    with pytest.raises(ValueError, match="zero_point shape"):
        packing.pack_compressed(np.ones((4, 2, 4)), np.ones((4, 2, 1)), np.ones((4, 1)), "u8")


@pytest.mark.parametrize("weight_type", ["f32", "f16", "bf16", "i8", "u8", "i4", "u4"])
def test_concatenating_output_channels_equals_side_by_side_dequantized(weight_type):
    rng = np.random.default_rng(7)
    parts = []
    for oc in (6, 2, 4):
        if weight_type in packing.FLOAT_TYPES:
            parts.append(packing.pack_float(rng.standard_normal((oc, 8)).astype(np.float32), weight_type))
            continue
        lo, hi = packing._INT_RANGE[weight_type]
        w = rng.integers(lo, hi + 1, (oc, 2, 4))
        scale = rng.uniform(0.01, 0.1, (oc, 2, 1)).astype(np.float16)
        zp = rng.integers(lo, hi + 1, (oc, 2, 1)) if weight_type in ("u8", "u4") else None
        parts.append(packing.pack_compressed(w, scale, zp, weight_type))
    joined = packing.concat_output_channels(parts)
    assert (joined.ic, joined.oc, joined.n_groups) == (8, 12, parts[0].n_groups)
    np.testing.assert_array_equal(packing.dequantize(joined), np.hstack([packing.dequantize(p) for p in parts]))


def test_concatenating_different_formats_is_refused():
    a = packing.pack_float(np.ones((2, 4), np.float32))
    b = packing.pack_float(np.ones((2, 4), np.float32), "f16")
    with pytest.raises(ValueError, match="differ in weight type"):
        packing.concat_output_channels([a, b])
