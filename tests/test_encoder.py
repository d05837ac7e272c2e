"""Encoder family (BERT): FC discovery by name, dense equivalence, calibration, fused == portable, evaluation and
CLI, on a tiny random BERT built from a config (exported with optimum-intel) and the packaged tokenizer."""
import json
import shutil

import numpy as np
import openvino as ov
import openvino.opset13 as ops
import pytest

import scap_ov
from conftest import F32
from scap_ov import assets
from scap_ov.artifact import ARTIFACT_NAME, Artifact, FCThreshold
from scap_ov.calibration import calibrate
from scap_ov.cli import main
from scap_ov.config import CalibrationConfig, parse_targets
from scap_ov.encoder import (compare_embeddings, evaluate_encoder_folder, is_encoder, sentences, strip_pruning,
                             token_samples)
from scap_ov.errors import ScapError
from scap_ov.export import IR_XML, export_dense
from scap_ov.layers import BERT_LAYER_PATTERNS, find_fcs, module_name, require_fcs, weighted_matmuls
from scap_ov.pipeline import PORTABLE_XML, evaluate_folder, export_scap, load_tokenizer
from scap_ov.transformations.fuse_cpu import apply_fusion, count_fused
from scap_ov.transformations.portable import apply_portable

LAYERS = 2
TEXT = ("Anne had been a useful friend to her sister through all the long winter. The letters came on Tuesday, and "
        "nobody at the Hall could say who had sent them. \"I cannot think it right,\" said she, looking at the fire. "
        "Captain Wentworth walked to the window and said nothing for a full minute. Mr. Elliot was expected at Bath "
        "before the end of the month! Was it possible that he should have forgotten her so entirely? The morning was "
        "fine, the sea was calm, and the whole party walked along the Cobb together.")
SENTENCES = sentences(TEXT)


def expected_fcs(prefix: str = "encoder", layers: int = LAYERS) -> dict[str, str]:
    names = {}
    for b in range(layers):
        base = f"{prefix}.layer.{b}."
        names.update({base + "attention.self.query": "q", base + "attention.self.key": "k",
                      base + "attention.self.value": "v", base + "attention.output.dense": "o",
                      base + "intermediate.dense": "up", base + "output.dense": "down"})
    return names


def tiny_bert(cls_name: str = "BertModel"):
    import torch
    import transformers

    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=LAYERS, num_attention_heads=2,
                                     intermediate_size=64, max_position_embeddings=128, hidden_act="gelu")
    return getattr(transformers, cls_name)(config).eval()


@pytest.fixture(scope="module")
def tiny_ir(tmp_path_factory):
    """A tiny random BertModel with the packaged MiniLM tokenizer, exported by scap-ov's optimum-intel path."""
    root = tmp_path_factory.mktemp("tiny_bert")
    tiny_bert().save_pretrained(root / "hf")
    package = assets.PACKAGED_MODELS["minilm-l6"].hf_folder()
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        shutil.copy2(package / name, root / "hf" / name)
    return export_dense(root / "hf", root / "ir")


@pytest.fixture(scope="module")
def samples(tiny_ir):
    return token_samples(load_tokenizer(tiny_ir), SENTENCES)


def read(folder, xml=IR_XML):
    return ov.Core().read_model(folder / xml)


def padded_batch(samples):
    """Two sequences of different lengths in one batch: padding and the attention mask really matter."""
    n = max(len(s) for s in samples[:2])
    ids = np.zeros((2, n), np.int64)
    mask = np.zeros((2, n), np.int64)
    for i, s in enumerate(samples[:2]):
        ids[i, : len(s)], mask[i, : len(s)] = s, 1
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}


def infer(model, inputs, core=None):
    return (core or ov.Core()).compile_model(model, "CPU", F32)(inputs)


# ------------------------------------------------------------------------------------------ discovery


@pytest.fixture(scope="module")
def classifier_ir(tmp_path_factory):
    """A tiny BertForSequenceClassification exported for text classification: pooler and classifier in the graph."""
    from optimum.exporters.openvino import main_export

    root = tmp_path_factory.mktemp("tiny_bert_cls")
    tiny_bert("BertForSequenceClassification").save_pretrained(root / "hf")
    main_export(str(root / "hf"), output=root / "ir", task="text-classification")
    return root / "ir"


def test_every_bert_fc_is_found_by_name_and_nothing_else(classifier_ir):
    model = read(classifier_ir)
    weighted = {module_name(n.get_friendly_name()) for n, _ in weighted_matmuls(model)}
    fcs = find_fcs(model)
    assert {fc.name: fc.layer_type for fc in fcs} == expected_fcs("bert.encoder")
    assert [fc.block for fc in fcs[:6]] == [0] * 6 and fcs[-1].block == LAYERS - 1
    # The pooler and the classifier head are weighted MatMuls of the graph, but no block FCs.
    assert weighted - {fc.name for fc in fcs} == {"bert.pooler.dense", "classifier"}
    assert not any("embeddings" in name for name in weighted)  # embeddings are Gathers, never MatMuls


def test_attention_output_dense_is_o_and_output_dense_is_down():
    import re

    def types(name):
        return [t for t, p in BERT_LAYER_PATTERNS.items() if re.search(p, name)]

    assert types("encoder.layer.3.attention.output.dense") == ["o"]
    assert types("encoder.layer.3.output.dense") == ["down"]
    assert types("pooler.dense") == [] and types("encoder.layer.3.attention.output.LayerNorm") == []


def test_optimum_export_is_a_feature_extractor_with_every_fc(tiny_ir):
    assert is_encoder(tiny_ir)
    model = read(tiny_ir)
    assert {n for p in model.inputs for n in p.get_names()} == {"input_ids", "attention_mask", "token_type_ids"}
    assert "last_hidden_state" in model.outputs[0].get_names()
    assert {fc.name for fc in require_fcs(model)} == set(expected_fcs())


def test_no_known_fc_naming_lists_what_was_found_and_explicit_patterns_work(tiny_ir):
    model = read(tiny_ir)
    with pytest.raises(ScapError, match=r"no FC layer matches the layer patterns; weighted MatMuls found: "
                                        r"encoder\.layer\.0\.attention\.self\.query.*--layers"):
        require_fcs(model, {"down": r"mlp\.(\d+)\.fc2$"})
    explicit = require_fcs(model, {"up": r"layer\.(\d+)\.intermediate\.dense$"})
    assert [(fc.name, fc.block) for fc in explicit] == [(f"encoder.layer.{b}.intermediate.dense", b)
                                                        for b in range(LAYERS)]


# -------------------------------------------------------------------------------- dense equivalence


def _artifact(model, mode, tau):
    return Artifact(fcs=[FCThreshold(fc.name, fc.layer_type, mode, tau, 0.5, 0.5, "median") for fc in find_fcs(model)])


def test_zero_threshold_reproduces_dense_with_padding_and_mask(tiny_ir, samples):
    inputs = padded_batch(samples)
    dense = infer(read(tiny_ir), inputs)[0]
    scap = apply_portable(read(tiny_ir), _artifact(read(tiny_ir), mode=0.3, tau=0.0))
    np.testing.assert_allclose(infer(scap, inputs)[0], dense, rtol=1e-4, atol=1e-4)
    pruned = apply_portable(read(tiny_ir), _artifact(read(tiny_ir), mode=0.3, tau=0.5))
    assert np.abs(infer(pruned, inputs)[0] - dense).max() > 1e-2  # a real threshold does change the output
    np.testing.assert_allclose(infer(strip_pruning(pruned), inputs)[0], dense, rtol=1e-5, atol=1e-5)


# -------------------------------------------------------------------------------- calibration, fusion


@pytest.fixture(scope="module")
def calibrated(tiny_ir, samples):
    return {mode: calibrate(read(tiny_ir), samples, CalibrationConfig(targets=parse_targets(0.5), mode=mode))
            for mode in ("zero", "median", "kde")}


@pytest.mark.parametrize("mode", ["zero", "median", "kde"])
def test_calibration_on_ragged_sentences(calibrated, samples, mode):
    art = calibrated[mode]
    assert {fc.name: fc.layer_type for fc in art.fcs} == expected_fcs()
    assert art.calibration["samples"] == len(samples) and art.calibration["tokens"] == sum(len(s) for s in samples)
    for fc in art.fcs:
        assert abs(fc.calibration_sparsity - 0.5) < 0.02, fc
        assert fc.tau > 0
    modes = [fc.mode for fc in art.fcs]
    assert all(m == 0.0 for m in modes) if mode == "zero" else any(abs(m) > 1e-3 for m in modes)


def portable_and_fused_per_fc(dense: ov.Model, artifact: Artifact) -> tuple[ov.Model, ov.Model]:
    """The portable IR with every FC's output (its folded-bias Add) as an extra result named fc:<FC name>, and
    its fusion: the fused ops take those results over, so both models name the same FC outputs."""
    by_node = {fc.node_name: fc.name for fc in find_fcs(dense)}
    portable = apply_portable(dense, artifact)
    for node in portable.get_ordered_ops():
        name = node.get_friendly_name()
        if name.endswith("/scap/folded_bias"):
            result = ops.result(node.output(0))
            result.output(0).get_tensor().set_names({"fc:" + by_node[name[: -len("/scap/folded_bias")]]})
            portable.add_results([result])
    return portable, apply_fusion(portable.clone())


def assert_fused_equals_portable(portable, fused, inputs, fcs: int, tolerance: float) -> None:
    assert count_fused(fused) == fcs and count_fused(portable) == 0
    core = scap_ov.register(ov.Core())
    expected, got = infer(portable, inputs, core), infer(fused, inputs, core)
    outputs = [o.get_any_name() for o in portable.outputs]
    assert sum(name.startswith("fc:") for name in outputs) == fcs
    for name in outputs:
        np.testing.assert_allclose(got[name], expected[name], rtol=tolerance, atol=tolerance, err_msg=name)


def test_fused_ir_equals_portable_ir_per_fc(tiny_ir, samples, calibrated):
    """Every FC's output (and the model's) through SCAPFullyConnected equals the portable IR's."""
    portable, fused = portable_and_fused_per_fc(read(tiny_ir), calibrated["kde"])
    assert_fused_equals_portable(portable, fused, padded_batch(samples), 2 * 6, 1e-4)


# ------------------------------------------------------------------------------ pipeline, eval and CLI


@pytest.fixture(scope="module")
def exported(tiny_ir, samples, tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny_scap") / "out"
    export_scap(out, str(tiny_ir), CalibrationConfig(targets=parse_targets(0.5), mode="median"), windows=samples)
    return out


def test_export_writes_portable_fused_and_artifact(exported):
    assert is_encoder(exported)
    assert count_fused(scap_ov.register(ov.Core()).read_model(exported / IR_XML)) == 12
    assert count_fused(read(exported, PORTABLE_XML)) == 0
    art = Artifact.load(exported / ARTIFACT_NAME)
    assert {fc.name for fc in art.fcs} == set(expected_fcs()) and art.calibration["mode"] == "median"


def test_eval_compares_embeddings_with_the_dense_model(exported, tmp_path):
    text = tmp_path / "held_out.txt"
    text.write_text(TEXT)
    quality = evaluate_encoder_folder(exported, str(text), count=64, progress=False)
    assert quality.sentences == len(SENTENCES)
    assert 0.2 < quality.fc_weight_sparsity < 0.8 and set(quality.type_sparsity) == {"q", "k", "v", "o", "up", "down"}
    assert quality.cosine_mean < 0.99999  # pruning half of every FC input changes a random model's embeddings
    assert -1.0 <= quality.cosine_min <= quality.cosine_mean
    with pytest.raises(ScapError, match="holds an encoder: it has no perplexity"):
        evaluate_folder(exported)


def test_compare_embeddings_on_known_vectors():
    dense = np.eye(4)[[0, 0, 1, 2]] + np.array([[0, 0, 0, .1], [0, .1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]])
    dense /= np.linalg.norm(dense, axis=1, keepdims=True)
    same = compare_embeddings(dense, dense)
    assert same == pytest.approx({"cosine_mean": 1.0, "cosine_min": 1.0, "nn_agreement": 1.0, "nn_in_top5": 1.0,
                                  "cross_retrieval": 1.0})
    swapped = dense[[1, 0, 2, 3]]  # rows 0 and 1 exchanged: their own-sentence retrieval and cosine drop
    scores = compare_embeddings(swapped, dense)
    assert scores["cross_retrieval"] == 0.5 and scores["cosine_min"] < 0.999
    # dense nearest others: 0->1, 1->0, 2->1, 3->0 (ties broken by index); swapped: 0->1, 1->0, 2->0, 3->0
    assert scores["nn_agreement"] == 0.75 and scores["nn_in_top5"] == 1.0


def test_sentence_split_keeps_closing_quotes_and_titles():
    assert sentences('She said, "No." Then Mr. Elliot left! Was it so? yes.') == [
        'She said, "No."', "Then Mr. Elliot left!", "Was it so? yes."]
    assert len(SENTENCES) == 7


def test_cli_eval_of_an_encoder_and_options_that_do_not_apply(exported, tmp_path, capsys):
    text = tmp_path / "held_out.txt"
    text.write_text(TEXT)
    assert main(["eval", str(exported), "--text", str(text), "--json", str(tmp_path / "r.json")]) == 0
    out = capsys.readouterr().out
    assert "nearest-neighbour agreement" in out and "FC-weight-byte sparsity" in out
    assert json.loads((tmp_path / "r.json").read_text())["sentences"] == len(SENTENCES)
    assert main(["eval", str(exported), "--cloze", "10"]) == 2
    assert "--cloze applies to language models" in capsys.readouterr().err
    assert main(["eval", str(tmp_path), "--sentences", "10"]) == 2
    assert "--sentences applies to encoders" in capsys.readouterr().err


def test_cli_export_of_an_encoder_refuses_greedy(tiny_ir, tmp_path, capsys):
    assert main(["export", "--model", str(tiny_ir), "--method", "greedy", "--output", str(tmp_path / "o")]) == 2
    assert "use --method scap or teal for encoder models" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_packaged_minilm_resolves_offline_to_its_transformers_folder():
    folder = assets.resolve_model("minilm-l6")
    assert is_encoder(folder) and (folder / "model.safetensors").is_file()
    missing = assets.PackagedModel("gone", "no-such-dist", "no_such_module_xyz", folder_function="get_model_path")
    with pytest.raises(ScapError, match="needs the PyPI package no-such-dist; run the README set-up command"):
        missing.hf_folder()
