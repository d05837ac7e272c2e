"""Gemma3 (GeGLU decoder): a tiny random Gemma3ForCausalLM exported by optimum-intel through the whole pipeline
(FC discovery, dense equivalence, fused vs portable, CATS on the GELU gate); the real packaged gemma3-270m is slow."""
from __future__ import annotations

import warnings

import numpy as np
import openvino as ov
import pytest

from conftest import F32
from scap_ov.artifact import ARTIFACT_NAME, Artifact
from scap_ov.config import CalibrationConfig, parse_targets
from scap_ov.dataset import model_inputs
from scap_ov.export import IR_XML, raised_export_caps
from scap_ov.layers import find_fcs, gated_input, module_name, weighted_matmuls
from scap_ov.pipeline import PORTABLE_XML, export_scap
from test_real_model import _fc_outputs_and_logits

BLOCKS, VOCAB = 3, 512
FC_PATHS = {"q": "self_attn.q_proj", "k": "self_attn.k_proj", "v": "self_attn.v_proj", "o": "self_attn.o_proj",
            "gate": "mlp.gate_proj", "up": "mlp.up_proj", "down": "mlp.down_proj"}


@pytest.fixture(scope="module")
def tiny_gemma(tmp_path_factory):
    """A dense IR folder of a 3-block random Gemma3 (GeGLU, q/k norms, one sliding-window and one global layer)."""
    import torch
    from optimum.exporters.openvino import export_from_model
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    out = tmp_path_factory.mktemp("gemma3") / "dense"
    config = Gemma3TextConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=192, num_hidden_layers=BLOCKS,
                              num_attention_heads=4, num_key_value_heads=1, head_dim=16, query_pre_attn_scalar=16,
                              sliding_window=8, layer_types=["sliding_attention", "sliding_attention",
                                                             "full_attention"],
                              max_position_embeddings=256, pad_token_id=0, bos_token_id=2, eos_token_id=1)
    torch.manual_seed(0)
    model = Gemma3ForCausalLM(config).eval()
    with torch.no_grad():  # random init leaves the norms at exactly 1 (weight 0): give them some spread
        for name, param in model.named_parameters():
            if name.endswith("norm.weight"):
                param.normal_(0.0, 0.3)
    with warnings.catch_warnings(), raised_export_caps():
        warnings.simplefilter("ignore")
        export_from_model(model, str(out), task="text-generation-with-past")
    window = _windows(1, 24, seed=4)[0]  # the IR computes what torch computes, sliding window included
    with torch.no_grad():
        expected = model(torch.from_numpy(window)[None]).logits[0].numpy()
    assert np.abs(_logits(out / IR_XML, window) - expected).max() <= 1e-4
    return out


def _windows(count: int, length: int, seed: int = 0) -> np.ndarray:
    windows = np.random.default_rng(seed).integers(3, VOCAB, size=(count, length), dtype=np.int64)
    windows[:, 0] = 2  # <bos>, as Gemma's tokenizer starts every text
    return windows


def test_every_fc_is_found_by_name_and_nothing_else(tiny_gemma):
    model = ov.Core().read_model(tiny_gemma / IR_XML)
    fcs = find_fcs(model)
    expected = {f"model.layers.{b}.{path}": t for b in range(BLOCKS) for t, path in FC_PATHS.items()}
    assert {fc.name: fc.layer_type for fc in fcs} == expected
    assert {fc.name: fc.block for fc in fcs} == {name: int(name.split(".")[2]) for name in expected}
    others = {module_name(n.get_friendly_name()) for n, _ in weighted_matmuls(model)} - set(expected)
    assert others == {"lm_head"}  # the (tied) output projection stays dense; the embedding is a Gather
    down = [fc for fc in fcs if fc.layer_type == "down"]
    for fc in down:  # down_proj reads gelu_tanh(gate) * up: the GeGLU input CATS thresholds
        gated = gated_input(fc)
        assert gated is not None and gated.activation.get_node().get_type_name() == "Gelu", fc.name


def _logits(path, window) -> np.ndarray:
    core = ov.Core()
    compiled = core.compile_model(core.read_model(path), "CPU", F32)
    request = compiled.create_infer_request()
    request.infer(model_inputs(window, {name for port in compiled.inputs for name in port.names}))
    return request.get_tensor("logits").data.copy()


def test_sparsity_zero_reproduces_dense_logits(tiny_gemma, tmp_path):
    out = tmp_path / "scap0"
    export_scap(out, str(tiny_gemma), CalibrationConfig(targets=parse_targets(0.0), samples=2, seq_len=32,
                                                        refine_passes=0), windows=_windows(2, 32))
    window = _windows(1, 24, seed=1)[0]
    dense, portable = _logits(tiny_gemma / IR_XML, window), _logits(out / PORTABLE_XML, window)
    assert np.abs(dense).max() > 0.1  # real logits, not a degenerate model
    assert np.abs(dense - portable).max() <= 1e-4


@pytest.mark.parametrize("mode, score", [("zero", "magnitude"), ("channel", "weighted")])
def test_fused_ir_equals_portable_ir_per_fc(tiny_gemma, tmp_path, mode, score):
    import scap_ov
    from scap_ov.transformations.fuse_cpu import apply_fusion, count_fused
    from scap_ov.transformations.portable import apply_portable

    out = tmp_path / "scap"
    result = export_scap(out, str(tiny_gemma), CalibrationConfig(targets=parse_targets(0.5), mode=mode, score=score,
                                                                 samples=4, seq_len=32, refine_passes=0),
                         windows=_windows(4, 32))
    assert all(0.3 < fc.calibration_sparsity < 0.7 for fc in result.artifact.fcs)
    core = scap_ov.register(ov.Core())
    artifact = Artifact.load(out / ARTIFACT_NAME)
    dense = core.read_model(tiny_gemma / IR_XML)
    window = _windows(1, 24, seed=2)[0]
    portable_out, _ = _fc_outputs_and_logits(core, apply_portable(dense.clone(), artifact), window, BLOCKS)
    fused = apply_fusion(apply_portable(dense.clone(), artifact), merge=False)
    assert count_fused(fused) == 7 * BLOCKS
    fused_out, _ = _fc_outputs_and_logits(core, fused, window, BLOCKS)
    assert sorted(fused_out) == sorted(portable_out) and len(fused_out) == 7 * BLOCKS
    for name, expected in portable_out.items():
        assert np.abs(fused_out[name] - expected).max() <= 1e-4 * max(1.0, np.abs(expected).max()), name


def test_cats_thresholds_the_gelu_gate(tiny_gemma, tmp_path):
    """CATS: a threshold on |gelu(gate)| at down_proj's input (up's rows idle with it); gate itself stays dense."""
    out = tmp_path / "cats"
    result = export_scap(out, str(tiny_gemma), CalibrationConfig(targets=parse_targets(0.4), method="cats", samples=4,
                                                                 seq_len=32, refine_passes=0), windows=_windows(4, 32))
    entries = result.artifact.fcs
    assert sorted(e.name for e in entries) == [f"model.layers.{b}.mlp.down_proj" for b in range(BLOCKS)]
    assert all(e.method == "cats" and 0.6 < e.calibration_sparsity < 0.9 for e in entries)
    window = _windows(1, 24, seed=3)[0]
    dense, cats = _logits(tiny_gemma / IR_XML, window), _logits(out / PORTABLE_XML, window)
    assert np.isfinite(cats).all() and np.abs(dense - cats).max() > 1e-3


def test_chunked_gguf_is_joined_once_into_the_cache(tmp_path, monkeypatch):
    import importlib.machinery
    import sys
    import types

    from scap_ov.assets import ChunkedPackagedModel
    from scap_ov.errors import ScapError

    monkeypatch.setenv("SCAP_OV_CACHE", str(tmp_path / "cache"))
    missing = ChunkedPackagedModel("nope", "nope-gguf", "scap_ov_test_no_such_package", "nope.gguf")
    with pytest.raises(ScapError, match="needs the PyPI package nope-gguf and its chunk packages"):
        missing.gguf_path()

    calls = []

    def assemble(path, overwrite=False):  # as the real package: write the joined chunks to ``path``
        calls.append(path)
        if len(calls) > 1:
            raise FileNotFoundError("Missing chunk files: part03")
        path.write_bytes(b"GGUF" + b"\0" * 8)
        return path

    module = types.ModuleType("scap_ov_test_chunked")
    module.assemble = assemble
    module.__spec__ = importlib.machinery.ModuleSpec("scap_ov_test_chunked", None)  # found by find_spec
    monkeypatch.setitem(sys.modules, "scap_ov_test_chunked", module)
    packaged = ChunkedPackagedModel("fake", "fake-gguf", "scap_ov_test_chunked", "fake.gguf")
    path = packaged.gguf_path()
    assert path == tmp_path / "cache" / "gguf" / "fake.gguf" and path.read_bytes()[:4] == b"GGUF"
    assert calls[0] != path and not calls[0].exists()  # joined under a temporary name, then renamed
    assert packaged.gguf_path() == path and len(calls) == 1  # cached: not joined again
    path.unlink()
    with pytest.raises(ScapError, match="cannot assemble fake.gguf from fake-gguf's chunk packages: Missing chunk"):
        packaged.gguf_path()
    assert list(path.parent.iterdir()) == []  # no partial file left behind


# ------------------------------------------------------------------------------- the real gemma3-270m (slow)

GEMMA = "gemma3-270m"


@pytest.fixture(scope="module")
def gemma_dense():
    from scap_ov.export import dense_ir

    return dense_ir(GEMMA)


@pytest.mark.slow
def test_packaged_gemma_tokenizer_segments_words_and_starts_with_bos(gemma_dense):
    from scap_ov.pipeline import load_tokenizer

    tokenizer = load_tokenizer(gemma_dense)
    ids = tokenizer("It was a truth universally acknowledged,\n\nthat")["input_ids"]
    assert tokenizer.convert_ids_to_tokens(ids) == ["<bos>", "It", "\u2581was", "\u2581a", "\u2581truth",
                                                   "\u2581universally", "\u2581acknowledged", ",", "\n\n", "that"]


@pytest.mark.slow
def test_real_gemma_dense_perplexity_matches_torch_and_scap_30_stays_close(gemma_dense, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    from scap_ov import assets
    from scap_ov.dataset import load_texts, token_windows
    from scap_ov.pipeline import evaluate_folder, load_tokenizer

    dense = evaluate_folder(gemma_dense, windows=3, seq_len=256, cloze=0, progress=False)
    assert 15 < dense.perplexity < 100  # a 270M model on Austen prose (thousands would mean a broken tokenizer)
    windows = token_windows(load_tokenizer(gemma_dense), load_texts(None, (assets.PERPLEXITY_NOVEL,)), 256, 3,
                            "evaluation")
    model = AutoModelForCausalLM.from_pretrained(assets.resolve_model(GEMMA), dtype=torch.float32).eval()
    with torch.no_grad():
        nll = sum(model(ids, labels=ids).loss.item() for ids in torch.from_numpy(windows)[:, None])
    assert abs(dense.perplexity / float(np.exp(nll / len(windows))) - 1) < 0.005

    out = tmp_path / "scap30"
    export_scap(out, GEMMA, CalibrationConfig(targets=parse_targets(0.3), samples=4, refine_passes=1))
    scap = evaluate_folder(out, windows=3, seq_len=256, cloze=0, progress=False)
    assert abs(scap.fc_weight_sparsity - 0.3) < 0.05
    assert set(scap.type_sparsity) == set(FC_PATHS) and len(scap.layer_sparsity) == 7 * 18
    assert dense.perplexity < scap.perplexity < 1.3 * dense.perplexity
