"""Mixture of experts (Mixtral): a tiny random MoE with top-2 of 4 experts exported through the whole pipeline (every
expert's FCs found by name, the router left dense, sparsity 0 equals dense, thresholds from the tokens routed to
each expert, fused equals portable); the real packaged smollm2-moe (SmolLM2 upcycled, all experts active) is slow."""
from __future__ import annotations

import warnings

import numpy as np
import openvino as ov
import pytest

from conftest import F32
from scap_ov.artifact import ARTIFACT_NAME, Artifact
from scap_ov.config import CalibrationConfig, parse_targets
from scap_ov.dataset import model_inputs
from scap_ov.export import IR_XML, export_patches
from scap_ov.layers import find_fcs, module_name, weighted_matmuls
from scap_ov.pipeline import PORTABLE_XML, export_scap
from test_real_model import _fc_outputs_and_logits

BLOCKS, EXPERTS, TOP_K, VOCAB = 2, 4, 2, 256
ATTENTION = {"q": "self_attn.q_proj", "k": "self_attn.k_proj", "v": "self_attn.v_proj", "o": "self_attn.o_proj"}
EXPERT_FCS = {"gate": "gate_proj", "up": "up_proj", "down": "down_proj"}
FCS_PER_BLOCK = len(ATTENTION) + EXPERTS * len(EXPERT_FCS)


def _expected_fcs() -> dict[str, str]:
    names = {}
    for b in range(BLOCKS):
        names.update({f"model.layers.{b}.{path}": t for t, path in ATTENTION.items()})
        names.update({f"model.layers.{b}.mlp.experts.{e}.{path}": t
                      for e in range(EXPERTS) for t, path in EXPERT_FCS.items()})
    return names


def _windows(count: int, length: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(3, VOCAB, size=(count, length), dtype=np.int64)


def _logits(path, window) -> np.ndarray:
    core = ov.Core()
    compiled = core.compile_model(core.read_model(path), "CPU", F32)
    request = compiled.create_infer_request()
    request.infer(model_inputs(window, {name for port in compiled.inputs for name in port.names}))
    return request.get_tensor("logits").data.copy()


@pytest.fixture(scope="module")
def tiny_moe(tmp_path_factory):
    """(dense IR folder, torch model) of a 2-block random Mixtral, 4 experts, top-2 routing."""
    import torch
    from optimum.exporters.openvino import export_from_model
    from transformers import MixtralConfig, MixtralForCausalLM

    out = tmp_path_factory.mktemp("moe") / "dense"
    config = MixtralConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=48, num_hidden_layers=BLOCKS,
                           num_attention_heads=4, num_key_value_heads=2, head_dim=16, num_local_experts=EXPERTS,
                           num_experts_per_tok=TOP_K, max_position_embeddings=128, pad_token_id=0, bos_token_id=1,
                           eos_token_id=2)
    torch.manual_seed(0)
    model = MixtralForCausalLM(config).eval()
    with torch.no_grad():  # random init: norms at exactly 1 and small weights give near-uniform routing; spread them
        for name, param in model.named_parameters():
            if name.endswith("norm.weight"):
                param.normal_(1.0, 0.3)
            elif name.endswith("mlp.gate.weight"):
                param.normal_(0.0, 0.5)
    with warnings.catch_warnings(), export_patches():
        warnings.simplefilter("ignore")
        export_from_model(model, str(out), task="text-generation-with-past")
    window = _windows(1, 24, seed=4)[0]  # the IR routes as torch does: top-2 of 4, renormalised weights
    with torch.no_grad():
        expected = model(torch.from_numpy(window)[None]).logits[0].numpy()
    assert np.abs(_logits(out / IR_XML, window) - expected).max() <= 1e-4
    return out, model


def test_every_expert_fc_is_found_by_name_and_the_router_stays_dense(tiny_moe):
    folder, _ = tiny_moe
    model = ov.Core().read_model(folder / IR_XML)
    fcs = find_fcs(model)
    expected = _expected_fcs()
    assert {fc.name: fc.layer_type for fc in fcs} == expected
    assert {fc.name: fc.block for fc in fcs} == {name: int(name.split(".")[2]) for name in expected}
    others = {module_name(n.get_friendly_name()) for n, _ in weighted_matmuls(model)} - set(expected)
    assert others == {"lm_head"} | {f"model.layers.{b}.mlp.gate" for b in range(BLOCKS)}  # output head, routers
    for fc in fcs:  # an expert's gate/up read only the tokens routed to it: a Gather of the block's hidden states
        if ".experts." in fc.name and fc.layer_type != "down":
            assert fc.activation.get_node().get_type_name() == "Gather", fc.name


def test_sparsity_zero_reproduces_dense_logits(tiny_moe, tmp_path):
    folder, _ = tiny_moe
    out = tmp_path / "scap0"
    export_scap(out, str(folder), CalibrationConfig(targets=parse_targets(0.0), samples=2, seq_len=32,
                                                    refine_passes=0), windows=_windows(2, 32))
    window = _windows(1, 24, seed=1)[0]
    dense, portable = _logits(folder / IR_XML, window), _logits(out / PORTABLE_XML, window)
    assert np.abs(dense).max() > 0.1  # real logits, not a degenerate model
    assert np.abs(dense - portable).max() <= 1e-4


def _routed_inputs(model, windows) -> dict[str, np.ndarray]:
    """Per expert FC, its input rows on the tokens the torch router sends to that expert (gate/up: the block's
    normalised hidden states; down: act(gate) * up of the expert)."""
    import torch

    seen = {}
    hooks = [layer.mlp.gate.register_forward_hook(
        lambda module, args, out, b=b: seen.setdefault(b, []).append((args[0].detach(), out[2])))
        for b, layer in enumerate(model.model.layers)]
    with torch.no_grad():
        for window in windows:
            model(torch.from_numpy(window)[None])
    for hook in hooks:
        hook.remove()
    rows = {}
    with torch.no_grad():
        for b, calls in seen.items():
            experts = model.model.layers[b].mlp.experts
            x_all, index = torch.cat([x for x, _ in calls]), torch.cat([i for _, i in calls])
            for e in range(EXPERTS):
                x = x_all[(index == e).any(-1)]
                gate, up = torch.nn.functional.linear(x, experts.gate_up_proj[e]).chunk(2, dim=-1)
                prefix = f"model.layers.{b}.mlp.experts.{e}."
                rows[prefix + "gate_proj"] = rows[prefix + "up_proj"] = x.numpy()
                rows[prefix + "down_proj"] = (experts.act_fn(gate) * up).numpy()
    return rows


def test_each_expert_is_calibrated_on_its_routed_tokens(tiny_moe, tmp_path):
    """Every expert FC has its own threshold, the target quantile of |x| over exactly the tokens routed to it."""
    folder, model = tiny_moe
    windows = _windows(4, 32)
    result = export_scap(tmp_path / "scap", str(folder), CalibrationConfig(targets=parse_targets(0.5), samples=4,
                                                                          seq_len=32, refine_passes=0),
                         windows=windows)
    entries = {fc.name: fc for fc in result.artifact.fcs}
    assert set(entries) == set(_expected_fcs())
    routed = _routed_inputs(model, windows)
    for name, x in routed.items():
        assert 0 < len(x) < windows.size, name  # top-2 of 4: every expert sees some tokens, none sees all
        pruned = float(np.mean(np.abs(x) <= entries[name].tau))
        assert abs(pruned - 0.5) < 0.02, (name, pruned)
    taus = [entries[f"model.layers.0.mlp.experts.{e}.gate_proj"].tau for e in range(EXPERTS)]
    assert len(set(taus)) == EXPERTS  # the same hidden states, routed differently: one threshold per expert

    # Random routing leaves |x| of the routed tokens distributed much like all tokens', so count what the
    # statistics saw: exactly the routed rows (optimum-intel's vectorised export would show every token to every
    # expert, windows.size rows each).
    from scap_ov.calibration import statistics
    from scap_ov.dataset import calibration_dataset

    dense = ov.Core().read_model(folder / IR_XML)
    names = {n for port in dense.inputs for n in port.get_names()}
    fcs = [fc for fc in find_fcs(dense) if ".experts." in fc.name]
    seen = statistics.collect(dense, {fc.name: fc.node_name for fc in fcs}, calibration_dataset(windows, names),
                              len(windows), reservoir_rows=0)
    for fc in fcs:
        assert seen[fc.name].histogram.total == routed[fc.name].size, fc.name
    assert sum(len(routed[f"model.layers.0.mlp.experts.{e}.down_proj"]) for e in range(EXPERTS)) == TOP_K * windows.size


@pytest.mark.parametrize("mode, score", [("zero", "magnitude"), ("kde", "magnitude")])
def test_fused_ir_equals_portable_ir_per_fc(tiny_moe, tmp_path, mode, score):
    import scap_ov
    from scap_ov.transformations.fuse_cpu import apply_fusion, count_fused
    from scap_ov.transformations.portable import apply_portable

    folder, _ = tiny_moe
    out = tmp_path / "scap"
    result = export_scap(out, str(folder), CalibrationConfig(targets=parse_targets(0.5), mode=mode, score=score,
                                                             samples=4, seq_len=32, refine_passes=0),
                         windows=_windows(4, 32))
    assert all(0.3 < fc.calibration_sparsity < 0.7 for fc in result.artifact.fcs)
    core = scap_ov.register(ov.Core())
    artifact = Artifact.load(out / ARTIFACT_NAME)
    dense = core.read_model(folder / IR_XML)
    fused = apply_fusion(apply_portable(dense.clone(), artifact), merge=False)
    assert count_fused(fused) == FCS_PER_BLOCK * BLOCKS
    # 24 tokens (every expert gets some), and 1 token as in decode: top-2 of 4 leaves two experts of each block
    # with no token at all, i.e. FCs on zero rows.
    for window in (_windows(1, 24, seed=2)[0], _windows(1, 1, seed=3)[0]):
        portable_out, portable_logits = _fc_outputs_and_logits(core, apply_portable(dense.clone(), artifact), window,
                                                               BLOCKS)
        fused_out, fused_logits = _fc_outputs_and_logits(core, fused.clone(), window, BLOCKS)
        assert sorted(fused_out) == sorted(portable_out) and len(fused_out) == FCS_PER_BLOCK * BLOCKS
        for name, expected in portable_out.items():
            assert fused_out[name].shape == expected.shape, name
            if expected.size:
                assert np.abs(fused_out[name] - expected).max() <= 1e-4 * max(1.0, np.abs(expected).max()), name
        if len(window) == 1:
            assert sum(out.size == 0 for out in portable_out.values()) == 3 * (EXPERTS - TOP_K) * BLOCKS
            assert np.abs(fused_logits - portable_logits).max() <= 1e-4


def test_qwen2_moe_experts_and_shared_expert_are_fcs(tmp_path):
    """Qwen2-MoE (same 3-D expert storage, plus a shared expert behind a sigmoid gate, q/k/v biases): the export
    computes what torch computes with one FC per expert; the shared expert's FCs are FCs too, its gate and the
    router stay dense."""
    import torch
    from optimum.exporters.openvino import export_from_model
    from transformers import Qwen2MoeConfig, Qwen2MoeForCausalLM

    config = Qwen2MoeConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, moe_intermediate_size=32,
                            shared_expert_intermediate_size=48, num_hidden_layers=BLOCKS, num_attention_heads=4,
                            num_key_value_heads=2, num_experts=EXPERTS, num_experts_per_tok=TOP_K,
                            max_position_embeddings=128, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    torch.manual_seed(1)
    model = Qwen2MoeForCausalLM(config).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("mlp.gate.weight"):
                param.normal_(0.0, 0.5)
    with warnings.catch_warnings(), export_patches():
        warnings.simplefilter("ignore")
        export_from_model(model, str(tmp_path), task="text-generation-with-past")
    window = _windows(1, 24, seed=5)[0]
    with torch.no_grad():
        expected = model(torch.from_numpy(window)[None]).logits[0].numpy()
    assert np.abs(_logits(tmp_path / IR_XML, window) - expected).max() <= 1e-4
    ir = ov.Core().read_model(tmp_path / IR_XML)
    shared = {f"model.layers.{b}.mlp.shared_expert.{path}": t for b in range(BLOCKS) for t, path in EXPERT_FCS.items()}
    assert {fc.name: fc.layer_type for fc in find_fcs(ir)} == _expected_fcs() | shared
    others = {module_name(n.get_friendly_name()) for n, _ in weighted_matmuls(ir)} - set(_expected_fcs()) - set(shared)
    assert others == {"lm_head"} | {f"model.layers.{b}.mlp.{g}" for b in range(BLOCKS) for g in ("gate",
                                                                                               "shared_expert_gate")}


def test_upcycling_reproduces_the_dense_model_and_refuses_inexact_expert_counts(tmp_path):
    """The construction behind smollm2-moe on a tiny random Llama: all experts active, torch logits equal."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, MixtralForCausalLM

    from scap_ov.errors import ScapError
    from scap_ov.moe import upcycle

    config = LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=BLOCKS,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=128,
                         tie_word_embeddings=True, rope_parameters={"rope_type": "default", "rope_theta": 1e5},
                         pad_token_id=0, bos_token_id=1, eos_token_id=2)
    torch.manual_seed(2)
    dense = LlamaForCausalLM(config).eval()
    dense.save_pretrained(tmp_path / "dense")
    moe = MixtralForCausalLM.from_pretrained(upcycle(tmp_path / "dense", tmp_path / "moe", 4), dtype=torch.float32)
    assert moe.config.num_local_experts == moe.config.num_experts_per_tok == 4
    ids = torch.from_numpy(_windows(1, 16, seed=6))
    with torch.no_grad():
        expected = dense(ids).logits
        assert torch.abs(moe(ids).logits - expected).max() <= 1e-5 * max(1.0, float(expected.abs().max()))
    with pytest.raises(ScapError, match="power of two dividing the intermediate size 96"):
        upcycle(tmp_path / "dense", tmp_path / "moe3", 3)
    assert not (tmp_path / "moe3").exists()


# ------------------------------------------------------------------------------- the real smollm2-moe (slow)

MOE, DENSE = "smollm2-moe", "smollm2-135m"


@pytest.mark.slow
def test_upcycled_smollm2_moe_computes_dense_smollm2():
    """All 8 experts active with weight 1/8 each and down slices scaled by 8: the IR's logits are the dense
    SmolLM2 IR's on real text (f32), and its FCs are the 4 attention FCs and 8 x 3 expert FCs of each block."""
    import json

    from scap_ov import assets
    from scap_ov.dataset import load_texts, token_windows
    from scap_ov.export import dense_ir
    from scap_ov.pipeline import load_tokenizer

    moe, dense = dense_ir(MOE), dense_ir(DENSE)
    config = json.loads((assets.resolve_model(MOE) / "config.json").read_text())
    assert config["model_type"] == "mixtral" and config["num_local_experts"] == config["num_experts_per_tok"] == 8
    fcs = find_fcs(ov.Core().read_model(moe / IR_XML))
    assert len(fcs) == 30 * (4 + 8 * 3) and sum(".experts." in fc.name for fc in fcs) == 30 * 8 * 3
    window = token_windows(load_tokenizer(moe), load_texts(None, (assets.PERPLEXITY_NOVEL,)), 256, 1, "evaluation")[0]
    expected = _logits(dense / IR_XML, window)
    assert np.abs(expected).max() > 10  # real logits
    # Equal up to f32 summation order (8 partial sums of 192 channels instead of one of 1536): measured max
    # 1.1e-4 (mean below 1e-5) over these 256 x 49152 logits (|logit| <= 39) on an AVX2 Zen 3, max 1.8e-4, mean 1.05e-5
    # on an AVX-512 Zen 4 (OpenVINO's kernels block the sums differently there): of the order of the dense IR's own
    # distance to torch's logits (1.4e-4). A wrong expert weight or scale would be off by far more than 1e-3.
    diff = np.abs(_logits(moe / IR_XML, window) - expected)
    assert diff.max() <= 3e-4 and diff.mean() <= 2e-5


@pytest.mark.slow
def test_real_smollm2_moe_scap_30_realises_its_budget(tmp_path):
    from scap_ov.export import dense_ir
    from scap_ov.pipeline import evaluate_folder

    out = tmp_path / "scap30"
    export_scap(out, MOE, CalibrationConfig(targets=parse_targets(0.3), samples=2, refine_passes=1))
    scap = evaluate_folder(out, windows=2, seq_len=256, cloze=0, progress=False)
    assert abs(scap.fc_weight_sparsity - 0.3) < 0.03
    assert len(scap.layer_sparsity) == 30 * (4 + 8 * 3) and set(scap.type_sparsity) == set(ATTENTION) | set(EXPERT_FCS)
    dense = evaluate_folder(dense_ir(MOE), windows=2, seq_len=256, cloze=0, progress=False)
    assert dense.perplexity < scap.perplexity < 1.2 * dense.perplexity
