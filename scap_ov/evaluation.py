"""Quality of a (SCAP or dense) OpenVINO decoder on held-out text: perplexity, last-word cloze accuracy, and
the sparsity each FC really sees, summarised as FC-weight-byte sparsity.
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Iterable

import numpy as np
import openvino as ov
import openvino.opset13 as ops
from tqdm.auto import tqdm

from scap_ov.dataset import model_inputs, start_tokens
from scap_ov.errors import ScapError
from scap_ov.layers import FC, find_fcs, module_name
from scap_ov.transformations.portable import KEEP_SUFFIX

# Numbers are compared at f32: the CPU plugin would otherwise run bf16 here and quantize activations of
# compressed-weight FCs on the fly.
EVAL_CONFIG = {"INFERENCE_PRECISION_HINT": "f32", "DYNAMIC_QUANTIZATION_GROUP_SIZE": "0"}
_SPARSITY_OUTPUT = "scap_sparsity:"


@dataclass
class EvalResult:
    perplexity: float
    tokens: int
    fc_weight_sparsity: float
    layer_sparsity: dict[str, float] = field(default_factory=dict)  # FC name -> realised input sparsity
    type_sparsity: dict[str, float] = field(default_factory=dict)  # layer type -> weight-byte-weighted mean
    cloze_accuracy: float | None = None
    cloze_items: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


def _output_sparse_fc(keep: ov.Node) -> str | None:
    """CATS: a mask on act(gate) of act(gate) * up also idles the up FC's rows: the module name of that FC."""
    for select in keep.output(0).get_target_inputs():
        for consumer in select.get_node().output(0).get_target_inputs():
            node = consumer.get_node()
            if node.get_type_name() == "Multiply":
                other = node.input_value(1 - consumer.get_index()).get_node()
                if other.get_type_name() == "MatMul":
                    return module_name(other.get_friendly_name())
    return None


def with_sparsity_outputs(model: ov.Model) -> ov.Model:
    """A copy of ``model`` with one extra output per SCAP FC: the fraction of its inputs (CATS: also of the up
    FC's rows) pruned."""
    model = model.clone()
    for node in model.get_ordered_ops():
        name = node.get_friendly_name()
        if node.get_type_name() == "Greater" and name.endswith(KEEP_SUFFIX):
            kept = ops.convert(node.output(0), ov.Type.f32)
            axes = ops.constant(np.arange(len(node.get_output_partial_shape(0)), dtype=np.int64))
            pruned = ops.subtract(ops.constant(np.float32(1)), ops.reduce_mean(kept, axes))
            fcs = filter(None, (module_name(name[: -len(KEEP_SUFFIX)]), _output_sparse_fc(node)))
            result = ops.result(pruned)
            result.output(0).get_tensor().set_names({_SPARSITY_OUTPUT + fc for fc in fcs})
            model.add_results([result])
    return model


def _log_softmax_nll(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    logits = logits.astype(np.float64)
    mx = logits.max(-1, keepdims=True)
    lse = mx[..., 0] + np.log(np.exp(logits - mx).sum(-1))
    return lse - np.take_along_axis(logits, targets[..., None], -1)[..., 0]


class Evaluator:
    def __init__(self, model: ov.Model, core: ov.Core | None = None, config: dict | None = None,
                 output: str = "logits"):
        """``output``: the model output ``forward`` returns (an encoder's is ``last_hidden_state``)."""
        self.fcs = {fc.name: fc for fc in find_fcs(model)}
        core = core or ov.Core()
        self.compiled = core.compile_model(with_sparsity_outputs(model), "CPU", config or EVAL_CONFIG)
        self.request = self.compiled.create_infer_request()
        self.input_names = {n for port in self.compiled.inputs for n in port.get_names()}
        self.sparsity_outputs = {
            name[len(_SPARSITY_OUTPUT):]: port for port in self.compiled.outputs for name in port.get_names()
            if name.startswith(_SPARSITY_OUTPUT)
        }
        self.logits_port = next((p for p in self.compiled.outputs if output in p.get_names()), None)
        if self.logits_port is None:
            raise ScapError(f"the model has no {output!r} output" + (
                ": perplexity, cloze and KL need a language model (encoders are evaluated by scap_ov.encoder)"
                if output == "logits" else ""))

    def forward(self, window: np.ndarray) -> tuple[np.ndarray, dict[str, float]]:
        self.request.reset_state()
        inputs = model_inputs(window, self.input_names)
        self.request.infer(inputs)
        logits = self.request.get_tensor(self.logits_port).data[0]
        sparsity = {name: float(self.request.get_tensor(port).data) for name, port in self.sparsity_outputs.items()}
        return logits, sparsity

    def perplexity(self, windows: np.ndarray, progress: bool = True) -> tuple[float, int, dict[str, float]]:
        nll, tokens, sums = 0.0, 0, {}
        for window in tqdm(windows, desc="Perplexity", unit="window", disable=not progress):
            logits, sparsity = self.forward(window)
            nll += float(_log_softmax_nll(logits[:-1], window[1:]).sum())
            tokens += len(window) - 1
            for name, value in sparsity.items():
                if np.isfinite(value):  # NaN: an MoE expert the router sent no token of this window
                    total, count = sums.get(name, (0.0, 0))
                    sums[name] = (total + value, count + 1)
        layer = {name: total / count for name, (total, count) in sums.items()}
        return float(np.exp(nll / tokens)), tokens, layer

    def cloze(self, items: list[tuple[list[int], list[int]]], progress: bool = True) -> float:
        """Fraction of items whose target tokens are all the greedy (argmax) continuation of the context."""
        correct = 0
        for context, target in tqdm(items, desc="Cloze", unit="item", disable=not progress):
            seq = np.asarray(context + target, dtype=np.int64)
            logits, _ = self.forward(seq)
            predicted = logits[len(context) - 1 : len(seq) - 1].argmax(-1)
            correct += bool(np.array_equal(predicted, np.asarray(target)))
        return correct / max(len(items), 1)

    def weight_byte_sparsity(self, layer_sparsity: dict[str, float]) -> tuple[float, dict[str, float]]:
        return weight_byte_sparsity(self.fcs.values(), layer_sparsity)


def weight_byte_sparsity(fcs: Iterable[FC], layer_sparsity: dict[str, float]) -> tuple[float, dict[str, float]]:
    """Sum(realised sparsity x weight bytes) / Sum(weight bytes) over all block FCs, and per layer type."""
    total = pruned = 0.0
    by_type: dict[str, list[float]] = {}
    for fc in fcs:
        nbytes = fc.weight.nbytes
        s = layer_sparsity.get(fc.name, 0.0)
        total += nbytes
        pruned += s * nbytes
        acc = by_type.setdefault(fc.layer_type, [0.0, 0.0])
        acc[0] += s * nbytes
        acc[1] += nbytes
    return pruned / max(total, 1.0), {t: a / b for t, (a, b) in by_type.items()}


_WORD = re.compile(r"^(.*\S)\s+([A-Za-z]+)[.!?'\"_)]*$")


def cloze_items(tokenizer, paragraphs: list[str], count: int, min_words: int = 20,
                max_tokens: int = 192) -> list[tuple[list[int], list[int]]]:
    """(context tokens, last-word tokens) from paragraphs: predict a paragraph's final word."""
    prefix = start_tokens(tokenizer)
    items = []
    for para in paragraphs:
        if len(para.split()) < min_words:
            continue
        m = _WORD.match(para)
        if not m:
            continue
        context = tokenizer(m.group(1), add_special_tokens=False)["input_ids"][-max_tokens:]
        full = tokenizer(m.group(1) + " " + m.group(2), add_special_tokens=False)["input_ids"]
        ctx_full = tokenizer(m.group(1), add_special_tokens=False)["input_ids"]
        if full[: len(ctx_full)] != ctx_full:
            continue  # the word merged with the context's last token: not a clean split
        items.append((prefix + context, full[len(ctx_full):]))
        if len(items) >= count:
            break
    return items
