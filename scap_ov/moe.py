"""Mixture-of-experts decoders (Mixtral, Qwen2-MoE): an upcycled real-weight MoE, and an export where every expert
is its own FC.

**Upcycling** (``upcycle``): the packaged ``smollm2-moe`` is SmolLM2-135M with each block's SwiGLU MLP cut along
its intermediate dimension into ``E`` experts (expert e owns channels [e I/E, (e+1) I/E) of gate, up and down),
all ``E`` active per token (top-k = E) and a zero router, so the softmax gives every expert 1/E; Mixtral
renormalises the top-k weights (still 1/E each), so each expert's down slice is multiplied by E. E is a power of
two: the scaling is exact in floating point and the model computes the dense MLP up to summation order.

**Export** (``per_expert_export``): transformers 5 stores a Mixtral (or Qwen2-MoE) block's experts as two 3-D
parameters (gate_up_proj [E, 2I, H], down_proj [E, H, I]) and loops over the experts hit; optimum-intel exports
them in a vectorised form (every expert runs on every token as one batched MatMul over [E, T, H], then multiplied by a
routing weight that is zero for unrouted tokens), the pattern OpenVINO's own MoE fusion expects. For SCAP that
form is wrong three ways: an expert's statistics would mix tokens the router never sends to it, SCAPFullyConnected
takes a 2-D weight, and decode would read every expert's weights. So during export each expert becomes a module
``experts.<e>`` with gate_proj/up_proj/down_proj Linears (views of the 3-D parameters, no copy), run on the
tokens routed to it (NonZero -> Gather -> expert -> ScatterElementsUpdate(sum), the eager transformers loop):
every expert FC is an ordinary named MatMul, calibrated on its own routed tokens and fused like any other FC.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from scap_ov.errors import ScapError
from scap_ov.fsutil import atomic_output_dir

def _expert_module(experts, e: int):
    import torch.nn as nn

    inter = experts.intermediate_dim
    module = nn.Module()
    for name, weight in (("gate_proj", experts.gate_up_proj.data[e, :inter]),
                         ("up_proj", experts.gate_up_proj.data[e, inter:]),
                         ("down_proj", experts.down_proj.data[e])):
        linear = nn.Linear(weight.shape[1], weight.shape[0], bias=False, device="meta")
        linear.weight = nn.Parameter(weight, requires_grad=False)  # a view: no copy of the expert weights
        module.add_module(name, linear)
    return module


def _routed_experts_forward(self, hidden_states, top_k_index, top_k_weights):
    """transformers' eager expert loop over every expert (traceable: no data-dependent Python branch), each
    expert's FCs named ``experts.<e>.{gate,up,down}_proj``."""
    import torch

    out = torch.zeros_like(hidden_states)
    for e in range(self.num_experts):
        expert = self._modules[str(e)]
        token_idx, top_k_pos = torch.where(top_k_index == e)  # top_k_index: [tokens, k]
        x = hidden_states[token_idx]
        y = expert.down_proj(self.act_fn(expert.gate_proj(x)) * expert.up_proj(x))
        out.index_add_(0, token_idx, (y * top_k_weights[token_idx, top_k_pos, None]).to(out.dtype))
    return out


# optimum-intel export config -> the transformers experts class it exports in the vectorised form (both store
# gate_up_proj [E, 2I, H] and down_proj [E, H, I] and are called as experts(hidden, top_k_index, top_k_weights)).
MOE_EXPORTS = {"MixtralOpenVINOConfig": ("transformers.models.mixtral.modeling_mixtral", "MixtralExperts"),
               "Qwen2MoEOpenVINOConfig": ("transformers.models.qwen2_moe.modeling_qwen2_moe", "Qwen2MoeExperts")}


def _per_expert_patcher(base, experts_cls):
    class PerExpertPatcher(base):
        def __enter__(self):
            super().__enter__()  # installs optimum's vectorised experts forward; replaced right after
            self._scap_forward = experts_cls.forward
            experts_cls.forward = _routed_experts_forward
            for module in self._model.modules():
                if isinstance(module, experts_cls):
                    for e in range(module.num_experts):
                        module.add_module(str(e), _expert_module(module, e))
            return self

        def __exit__(self, exc_type, exc_value, traceback):
            for module in self._model.modules():
                if isinstance(module, experts_cls):
                    for e in range(module.num_experts):
                        module._modules.pop(str(e), None)
            experts_cls.forward = self._scap_forward
            super().__exit__(exc_type, exc_value, traceback)  # restores transformers' own forward

    return PerExpertPatcher


def per_expert_export():
    """While inside, optimum-intel exports the experts of MOE_EXPORTS models as one FC per expert and layer type
    (see module doc)."""
    import importlib

    from optimum.exporters.openvino import model_configs

    from scap_ov.export import class_attribute_patch

    patchers = {}
    for config_name, (module, class_name) in MOE_EXPORTS.items():
        config_cls = getattr(model_configs, config_name, None)
        experts_cls = getattr(importlib.import_module(module), class_name, None)
        if config_cls is not None and experts_cls is not None:
            patchers[config_cls] = _per_expert_patcher(config_cls._MODEL_PATCHER, experts_cls)
    return class_attribute_patch("_MODEL_PATCHER", patchers)


# ---------------------------------------------------------------------------------------------- upcycling


_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja")


def upcycle(dense_folder: Path, out: Path, experts: int) -> Path:
    """A Mixtral folder computing the dense Llama-style model at ``dense_folder`` with ``experts`` experts per
    block, all active (see module doc); written atomically to ``out``."""
    import torch
    from transformers import AutoModelForCausalLM, MixtralConfig, MixtralForCausalLM

    dense_folder = Path(dense_folder)
    dense = AutoModelForCausalLM.from_pretrained(dense_folder, dtype=torch.float32)
    c = dense.config
    if c.model_type != "llama" or getattr(c, "mlp_bias", False) or getattr(c, "attention_bias", False):
        raise ScapError(f"{dense_folder}: upcycling needs a bias-free Llama model, not {c.model_type}")
    if experts < 1 or experts & (experts - 1) or c.intermediate_size % experts:
        raise ScapError(f"{experts} experts: need a power of two dividing the intermediate size "
                        f"{c.intermediate_size} (the 1/E routing weight must be exact)")
    inter = c.intermediate_size // experts
    config = MixtralConfig(
        vocab_size=c.vocab_size, hidden_size=c.hidden_size, intermediate_size=inter,
        num_hidden_layers=c.num_hidden_layers, num_attention_heads=c.num_attention_heads,
        num_key_value_heads=c.num_key_value_heads, head_dim=c.head_dim, hidden_act=c.hidden_act,
        max_position_embeddings=c.max_position_embeddings, rms_norm_eps=c.rms_norm_eps,
        rope_parameters=dict(c.rope_parameters), tie_word_embeddings=c.tie_word_embeddings,
        bos_token_id=c.bos_token_id, eos_token_id=c.eos_token_id, pad_token_id=c.pad_token_id,
        num_local_experts=experts, num_experts_per_tok=experts, sliding_window=None)
    moe = MixtralForCausalLM(config).eval()
    state = {k: v for k, v in dense.state_dict().items() if ".mlp." not in k}
    with torch.no_grad():
        for i, layer in enumerate(dense.model.layers):
            mlp = layer.mlp
            gate, up = mlp.gate_proj.weight.view(experts, inter, -1), mlp.up_proj.weight.view(experts, inter, -1)
            down = mlp.down_proj.weight.view(c.hidden_size, experts, inter).permute(1, 0, 2)
            state[f"model.layers.{i}.mlp.experts.gate_up_proj"] = torch.cat([gate, up], dim=1)
            state[f"model.layers.{i}.mlp.experts.down_proj"] = down * experts  # undoes the 1/E routing weight
            state[f"model.layers.{i}.mlp.gate.weight"] = torch.zeros(experts, c.hidden_size)
    missing, unexpected = moe.load_state_dict(state, strict=False)
    if unexpected or set(missing) - {"lm_head.weight"}:
        raise ScapError(f"upcycling {dense_folder}: unexpected {unexpected}, missing {missing}")
    moe.tie_weights()
    with atomic_output_dir(out, overwrite=True) as tmp:
        moe.save_pretrained(tmp)
        for name in _TOKENIZER_FILES:
            if (dense_folder / name).is_file():
                shutil.copy2(dense_folder / name, tmp / name)
        (tmp / "scap_ov_source.json").write_text(json.dumps({"upcycled_from": str(dense_folder),
                                                             "experts": experts}))
    return out
