"""Mamba2 (functional only): a tiny random Mamba2ForCausalLM, converted by OpenVINO's PyTorch frontend (this
optimum-intel has no mamba2 export), through the whole pipeline: in_proj/out_proj found by name, dense
equivalence at sparsity 0, the target realised on held-out windows, fused == portable per FC, and the CLI."""
from __future__ import annotations

import shutil

import numpy as np
import openvino as ov
import pytest

from conftest import F32
from scap_ov import assets
from scap_ov.artifact import ARTIFACT_NAME, Artifact
from scap_ov.config import CalibrationConfig, parse_targets
from scap_ov.dataset import model_inputs
from scap_ov.evaluation import Evaluator
from scap_ov.export import IR_XML, export_dense
from scap_ov.layers import find_fcs, module_name, weighted_matmuls
from scap_ov.pipeline import PORTABLE_XML, export_scap
from test_encoder import TEXT, assert_fused_equals_portable, portable_and_fused_per_fc

BLOCKS = 3
VOCAB = 30522  # the packaged MiniLM tokenizer's, so the CLI can tokenize the calibration text
CHUNK = 16


def expected_fcs() -> dict[str, str]:
    return {f"backbone.layers.{b}.mixer.{proj}": t for b in range(BLOCKS)
            for proj, t in (("in_proj", "up"), ("out_proj", "down"))}


def tiny_mamba2():
    import torch
    from transformers import Mamba2Config, Mamba2ForCausalLM

    config = Mamba2Config(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=BLOCKS, state_size=16, expand=2,
                          head_dim=16, num_heads=8, n_groups=1, chunk_size=CHUNK, conv_kernel=4,
                          tie_word_embeddings=False, pad_token_id=0, bos_token_id=101, eos_token_id=102)
    torch.manual_seed(0)
    return Mamba2ForCausalLM(config).eval()


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("mamba2") / "hf"
    tiny_mamba2().save_pretrained(root)
    package = assets.PACKAGED_MODELS["minilm-l6"].hf_folder()
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        shutil.copy2(package / name, root / name)
    return root


@pytest.fixture(scope="module")
def tiny_ir(hf_folder):
    """The dense IR scap-ov's export path writes; it computes what torch computes at any length."""
    import torch

    out = export_dense(hf_folder, hf_folder.parent / "ir")
    model = tiny_mamba2()
    for length in (CHUNK, 2 * CHUNK + 5):  # a whole number of scan chunks, and a padded one
        window = windows(1, length, seed=length)[0]
        with torch.no_grad():
            expected = model(torch.from_numpy(window)[None]).logits[0].numpy()
        assert np.abs(logits(out / IR_XML, window) - expected).max() <= 1e-4
    return out


def windows(count: int, length: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(1000, VOCAB, size=(count, length), dtype=np.int64)


def logits(path, window) -> np.ndarray:
    core = ov.Core()
    compiled = core.compile_model(core.read_model(path), "CPU", F32)
    return compiled(model_inputs(window, {n for port in compiled.inputs for n in port.names}))["logits"][0]


def test_in_proj_and_out_proj_are_found_by_name_and_nothing_else(tiny_ir):
    model = ov.Core().read_model(tiny_ir / IR_XML)
    assert {n for port in model.inputs for n in port.get_names()} == {"input_ids"}  # stateless: no cache inputs
    fcs = find_fcs(model)
    assert {fc.name: fc.layer_type for fc in fcs} == expected_fcs()
    assert [fc.block for fc in fcs] == [b for b in range(BLOCKS) for _ in range(2)]
    weighted = [module_name(n.get_friendly_name()) for n, _ in weighted_matmuls(model)]
    others = [name for name in weighted if name not in expected_fcs()]
    assert len(others) == 1 and "layers" not in others[0]  # the lm_head (named by the frontend) stays dense


def test_sparsity_zero_reproduces_dense_logits(tiny_ir, tmp_path):
    out = tmp_path / "scap0"
    export_scap(out, str(tiny_ir), CalibrationConfig(targets=parse_targets(0.0), samples=2, seq_len=32,
                                                     refine_passes=0), windows=windows(2, 32))
    window = windows(1, 40, seed=1)[0]
    dense, portable = logits(tiny_ir / IR_XML, window), logits(out / PORTABLE_XML, window)
    assert np.abs(dense).max() > 0.1  # real logits, not a degenerate model
    assert np.abs(dense - portable).max() <= 1e-4


@pytest.fixture(scope="module")
def scap50(tiny_ir, tmp_path_factory):
    out = tmp_path_factory.mktemp("mamba2_scap") / "out"
    export_scap(out, str(tiny_ir), CalibrationConfig(targets=parse_targets(0.5), mode="median", samples=8,
                                                     seq_len=48), windows=windows(8, 48))
    return out


def test_target_is_realised_on_held_out_windows(scap50):
    evaluator = Evaluator(ov.Core().read_model(scap50 / PORTABLE_XML))
    held_out = windows(6, 48, seed=7)
    _, _, layer = evaluator.perplexity(held_out, progress=False)
    assert set(layer) == set(expected_fcs())
    assert all(abs(s - 0.5) < 0.1 for s in layer.values()), layer
    total, by_type = evaluator.weight_byte_sparsity(layer)
    assert abs(total - 0.5) < 0.05 and set(by_type) == {"up", "down"}


def test_fused_ir_equals_portable_ir_per_fc(tiny_ir, scap50):
    dense = ov.Core().read_model(tiny_ir / IR_XML)
    portable, fused = portable_and_fused_per_fc(dense, Artifact.load(scap50 / ARTIFACT_NAME))
    inputs = model_inputs(windows(1, 40, seed=3)[0], {"input_ids"})
    assert_fused_equals_portable(portable, fused, inputs, 2 * BLOCKS, 1e-4)


def test_cli_exports_and_evaluates_a_mamba2_transformers_folder(hf_folder, tmp_path, monkeypatch, capsys):
    """From the transformers folder: converted (not by optimum), calibrated on text, evaluated on other text."""
    from scap_ov.cli import main

    monkeypatch.setenv("SCAP_OV_CACHE", str(tmp_path / "cache"))  # the converted dense IR is cached here
    calibration, held_out = tmp_path / "calibration.txt", tmp_path / "held_out.txt"
    calibration.write_text(TEXT * 3)
    held_out.write_text(" ".join(reversed(TEXT.split())) * 2)
    out = tmp_path / "out"
    assert main(["export", "--model", str(hf_folder), "--output", str(out), "--sparsity", "0.4", "--samples", "4",
                 "--seq-len", "32", "--refine-passes", "0", "--calibration-data", str(calibration)]) == 0
    printed = capsys.readouterr().out  # the default method on a decoder with one budget: greedy allocation
    assert "6 FC layers (" in printed and "method greedy" in printed
    assert {fc.name for fc in Artifact.load(out / ARTIFACT_NAME).fcs} == set(expected_fcs())
    assert main(["eval", str(out), "--text", str(held_out), "--windows", "2", "--seq-len", "32", "--cloze", "0"]) == 0
    printed = capsys.readouterr().out
    assert "perplexity" in printed and "FC-weight-byte sparsity" in printed
