"""Shared fixtures: tiny hand-built FC graphs (unit tests) and the real packaged model (slow tests)."""
from __future__ import annotations

import os

import numpy as np
import openvino as ov
import openvino.opset13 as ops
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

F32 = {"INFERENCE_PRECISION_HINT": "f32", "DYNAMIC_QUANTIZATION_GROUP_SIZE": "0"}
# The op's counterpart of DYNAMIC_QUANTIZATION_GROUP_SIZE=0 (an environment variable: an extension op cannot see
# compile properties): model-level tests compare the op with OpenVINO's exact FC. tests/test_op_kernels.py turns
# the quantized prefill path back on and checks it against its own oracle.
os.environ["SCAP_OV_DYNAMIC_QUANTIZATION_GROUP_SIZE"] = "0"


def fc_name(block: int, path: str) -> str:
    return f"__module.model.layers.{block}.{path}/aten::linear/MatMul"


def linear(x, out_features: int, name: str, rng) -> ov.Node:
    x = x.output(0) if isinstance(x, ov.Node) else x
    in_features = x.get_partial_shape()[-1].get_length()
    w = (rng.standard_normal((out_features, in_features)) / np.sqrt(in_features)).astype(np.float32)
    return ops.matmul(x, ops.constant(w), False, True, name=name)


def tiny_block_model(hidden: int = 64, inter: int = 96, blocks: int = 2, seed: int = 0, vocab: int = 0) -> ov.Model:
    """A decoder-shaped graph: per block q/k/v share an input, o, gate/up share one, down; names as optimum's.

    With ``vocab`` it is a tiny language model instead: input_ids -> embedding -> blocks -> ``logits``.
    """
    rng = np.random.default_rng(seed)
    if vocab:
        x = ops.parameter([-1, -1], np.int64, name="input_ids")
        x.output(0).get_tensor().set_names({"input_ids"})
        table = ops.constant(rng.standard_normal((vocab, hidden)).astype(np.float32))
        h = ops.gather(table, x, ops.constant(np.int64(0))).output(0)
    else:
        x = ops.parameter([-1, -1, hidden], np.float32, name="x")
        h = x.output(0)
    for b in range(blocks):
        q = linear(h, hidden, fc_name(b, "self_attn.q_proj"), rng)
        k = linear(h, hidden, fc_name(b, "self_attn.k_proj"), rng)
        v = linear(h, hidden, fc_name(b, "self_attn.v_proj"), rng)
        attn = ops.add(ops.multiply(q, ops.sigmoid(k)), v)
        h = ops.add(h, linear(attn, hidden, fc_name(b, "self_attn.o_proj"), rng)).output(0)
        gate = linear(h, inter, fc_name(b, "mlp.gate_proj"), rng)
        up = linear(h, inter, fc_name(b, "mlp.up_proj"), rng)
        act = ops.multiply(ops.swish(gate), up)
        h = ops.add(h, linear(act, hidden, fc_name(b, "mlp.down_proj"), rng)).output(0)
    head = linear(h, vocab or 32, "__module.lm_head/aten::linear/MatMul", rng)
    if vocab:
        head.output(0).get_tensor().set_names({"logits"})
    return ov.Model([ops.result(head)], [x], "tiny_blocks")


def compress(model: ov.Model, mode: str, group_size: int = -1) -> ov.Model:
    """NNCF weight compression as export does it; ``mode`` is an NNCF mode name such as INT4_SYM."""
    from scap_ov.compression import WeightFormat

    bits, kind = mode.lower().split("_")
    return WeightFormat(bits, group_size if bits == "int4" else None, kind == "sym").apply(model)


def run(model: ov.Model, x: np.ndarray, core: ov.Core | None = None) -> np.ndarray:
    compiled = (core or ov.Core()).compile_model(model, "CPU", F32)
    return compiled(x)[0]


@pytest.fixture
def rng():
    return np.random.default_rng(1234)
