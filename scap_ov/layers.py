"""Which MatMuls of a model are the FC layers SCAP sparsifies, and of which layer type each is.

An FC is a MatMul whose second input is a weight (constant or NNCF decompression chain, see
``scap_ov.transformations.weights``) and whose friendly name matches a layer pattern. Layer types follow
the decoder block: q, k, v (one shared input), o, gate, up (one shared input), down; in a mixture-of-experts
block every expert has its own gate, up (one input: the tokens routed to it) and down. Other families map their
FCs onto these types (BERT: query/key/value -> q/k/v, attention.output.dense -> o, intermediate.dense -> up,
output.dense -> down; its MLP has no gate). Without explicit patterns the family that names the most FCs is used
(ViT shares BERT's o/up/down names, so "any match" would take BERT's half of a ViT).
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import openvino as ov

from scap_ov.errors import ScapError
from scap_ov.transformations.weights import WeightChain, match_weight_chain

LAYER_TYPES = ("q", "k", "v", "o", "gate", "up", "down")
# Layer types that read one shared input: one histogram, and (same target, same mode) one keep mask, which the
# CPU fusion turns into one op for all of them.
SHARED_INPUT = {"q": "qkv", "k": "qkv", "v": "qkv", "o": "o", "gate": "gate_up", "up": "gate_up", "down": "down"}

# Module-name regexes per layer type (matched against the module path optimum-intel keeps in node names).
# A mixture-of-experts block's experts are gate/up/down FCs too, one set per expert ("mlp.experts.<e>.gate_proj",
# as scap_ov.moe exports them), and so is a shared expert (Qwen2-MoE's "mlp.shared_expert.gate_proj"). The router
# ("mlp.gate", [E, H]) and the shared expert's gate ([1, H]) match nothing and stay dense, as lm_head does: they
# are a negligible share of the weight bytes, and a pruned router input changes discrete top-k choices.
_EXPERT = r"(?:experts\.\d+\.|shared_expert\.)?"
DEFAULT_LAYER_PATTERNS: dict[str, str] = {
    "q": r"layers\.(\d+)\.self_attn\.q_proj$",
    "k": r"layers\.(\d+)\.self_attn\.k_proj$",
    "v": r"layers\.(\d+)\.self_attn\.v_proj$",
    "o": r"layers\.(\d+)\.self_attn\.o_proj$",
    "gate": r"layers\.(\d+)\.mlp\." + _EXPERT + r"gate_proj$",
    "up": r"layers\.(\d+)\.mlp\." + _EXPERT + r"up_proj$",
    "down": r"layers\.(\d+)\.mlp\." + _EXPERT + r"down_proj$",
}

# BERT-style encoders (optimum-intel keeps "encoder.layer.N..." for a BertModel, "bert.encoder.layer.N..."
# inside task heads). The pooler and embeddings are not FCs of a block and match nothing.
BERT_LAYER_PATTERNS: dict[str, str] = {
    "q": r"encoder\.layer\.(\d+)\.attention\.self\.query$",
    "k": r"encoder\.layer\.(\d+)\.attention\.self\.key$",
    "v": r"encoder\.layer\.(\d+)\.attention\.self\.value$",
    "o": r"encoder\.layer\.(\d+)\.attention\.output\.dense$",
    "up": r"encoder\.layer\.(\d+)\.intermediate\.dense$",
    "down": r"encoder\.layer\.(\d+)\.output\.dense$",
}
# ViT and DeiT blocks are BERT's with the self-attention module named "attention.attention"; the patch embedding
# is a Convolution and the classifier head (and a pooler) is outside encoder.layer.N, so neither matches.
VIT_LAYER_PATTERNS: dict[str, str] = {
    **BERT_LAYER_PATTERNS,
    "q": r"encoder\.layer\.(\d+)\.attention\.attention\.query$",
    "k": r"encoder\.layer\.(\d+)\.attention\.attention\.key$",
    "v": r"encoder\.layer\.(\d+)\.attention\.attention\.value$",
}
# Mamba mixers (backbone.layers.N.mixer): in_proj reads the normed residual stream as an MLP's up does, out_proj
# reads the gated, normed SSM output and writes back to the stream as down does. The SSM's own small projections
# (Mamba1's x_proj, dt_proj) are not matched.
MAMBA_LAYER_PATTERNS: dict[str, str] = {
    "up": r"layers\.(\d+)\.mixer\.in_proj$",
    "down": r"layers\.(\d+)\.mixer\.out_proj$",
}
# Without explicit patterns, the family matching the most FCs names the model's FCs (ties: the first listed).
FAMILY_LAYER_PATTERNS: dict[str, dict[str, str]] = {"decoder": DEFAULT_LAYER_PATTERNS, "bert": BERT_LAYER_PATTERNS,
                                                    "vit": VIT_LAYER_PATTERNS, "mamba": MAMBA_LAYER_PATTERNS}

_MODULE_NAME = re.compile(r"^(?:__module\.)?(?P<module>[^/]+)/")


@dataclass
class FC:
    name: str  # module path, e.g. model.layers.0.self_attn.q_proj (stable across weight formats)
    node_name: str  # friendly name of the MatMul in the IR
    layer_type: str
    block: int
    in_features: int
    out_features: int
    weight: WeightChain
    matmul: ov.Node

    @property
    def activation(self) -> ov.Output:
        return self.matmul.input_value(0)


def module_name(node_name: str) -> str:
    m = _MODULE_NAME.match(node_name)
    return m.group("module") if m else node_name


def find_fcs(model: ov.Model, patterns: dict[str, str] | None = None) -> list[FC]:
    """The model's FC layers matching ``patterns`` (layer type -> module-name regex), in graph order; without
    ``patterns``, those of the family in FAMILY_LAYER_PATTERNS that matches the most."""
    weighted = weighted_matmuls(model)
    if patterns:
        return _match_fcs(weighted, check_layer_patterns(patterns))
    return max((_match_fcs(weighted, family) for family in FAMILY_LAYER_PATTERNS.values()), key=len)


def check_layer_patterns(patterns: dict[str, str]) -> dict[str, str]:
    """``patterns`` (layer type -> module-name regex), or a ScapError naming an unknown type or a bad regex."""
    for layer_type, regex in patterns.items():
        if layer_type not in LAYER_TYPES:
            raise ScapError(f"unknown layer type {layer_type!r} in the layer patterns; types: {', '.join(LAYER_TYPES)}")
        if not isinstance(regex, str):
            raise ScapError(f"the layer pattern of {layer_type} must be a regex string, got {regex!r}")
        try:
            re.compile(regex)
        except re.error as exc:
            raise ScapError(f"the layer pattern of {layer_type} ({regex!r}) is not a valid regex: {exc}") from None
    return patterns


def load_layer_patterns(path: Path) -> dict[str, str]:
    """Layer patterns from a JSON or YAML file holding one mapping of layer type -> module-name regex."""
    path = Path(path)
    if not path.is_file():
        raise ScapError(f"layer pattern file {path} does not exist")
    is_yaml = path.suffix in (".yaml", ".yml")
    if is_yaml:
        try:
            import yaml  # PyYAML, installed with transformers
        except ImportError:
            raise ScapError(f"reading {path} needs PyYAML (`pip install pyyaml`), or write it as JSON") from None
    try:
        data = yaml.safe_load(path.read_text()) if is_yaml else json.loads(path.read_text())
    except Exception as exc:  # noqa: BLE001 - JSON and YAML raise different types; report one line
        raise ScapError(f"{path} is not valid {'YAML' if is_yaml else 'JSON'}: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict) or not data:
        raise ScapError(f"{path} must hold one mapping of layer type to module-name regex, e.g. "
                        '{"up": "layers\\.(\\d+)\\.mlp\\.fc1$"}')
    return check_layer_patterns({str(k): v for k, v in data.items()})


def _match_fcs(weighted: list[tuple[ov.Node, WeightChain]], patterns: dict[str, str]) -> list[FC]:
    compiled = {t: re.compile(p) for t, p in patterns.items()}
    fcs, seen = [], set()
    for node, chain in weighted:
        name = module_name(node.get_friendly_name())
        for layer_type, regex in compiled.items():
            m = regex.search(name)
            if m is None:
                continue
            if name in seen:
                raise ScapError(f"two MatMuls map to the FC name {name!r}")
            seen.add(name)
            w = chain.dense_shape()
            fcs.append(FC(name=name, node_name=node.get_friendly_name(), layer_type=layer_type,
                          block=int(m.group(1)) if m.groups() else -1, in_features=w[1], out_features=w[0],
                          weight=chain, matmul=node))
            break
    return fcs


def weighted_matmuls(model: ov.Model) -> list[tuple[ov.Node, WeightChain]]:
    """Every MatMul of ``model`` whose second input is a (possibly decompressed) constant, with its chain."""
    pairs = [(node, match_weight_chain(node)) for node in model.get_ordered_ops() if node.get_type_name() == "MatMul"]
    return [(node, chain) for node, chain in pairs if chain is not None]


def require_fcs(model: ov.Model, patterns: dict[str, str] | None = None) -> list[FC]:
    fcs = find_fcs(model, patterns)
    if not fcs:
        weighted = [module_name(n.get_friendly_name()) for n, _ in weighted_matmuls(model)]
        shown = ", ".join(weighted[:8]) + (" ..." if len(weighted) > 8 else "")
        which = "the layer patterns" if patterns else f"the known layer patterns ({', '.join(FAMILY_LAYER_PATTERNS)})"
        raise ScapError(f"no FC layer matches {which}; weighted MatMuls found: {shown or 'none'}. "
                        "Pass layer patterns explicitly (--layers TYPE=REGEX, or --layers-file with a JSON/YAML "
                        f"mapping of type to regex; types: {', '.join(LAYER_TYPES)})")
    return fcs


# Activations of a gated MLP's gate (SwiGLU, GeGLU): down_proj reads act(gate(x)) * up(x).
GATE_ACTIVATIONS = ("Swish", "Gelu", "HSwish", "Mish")


@dataclass
class GatedInput:
    """An FC input of the form act(gate) * other, as down_proj's in a gated MLP."""
    multiply: ov.Node
    port: int  # the Multiply input that carries act(gate)

    @property
    def activation(self) -> ov.Output:
        return self.multiply.input_value(self.port)

    @property
    def other(self) -> ov.Output:
        return self.multiply.input_value(1 - self.port)


def gated_input(fc: FC) -> GatedInput | None:
    node = fc.activation.get_node()
    if node.get_type_name() != "Multiply":
        return None
    for port in (0, 1):
        if node.input_value(port).get_node().get_type_name() in GATE_ACTIVATIONS:
            return GatedInput(node, port)
    return None
