"""ViT (functional only): a tiny random ViTForImageClassification exported by optimum-intel, calibrated on a
folder of (synthetic, deterministic) images through its own image processor: FC discovery by name (never the
patch embedding or the classifier), dense equivalence at sparsity 0, the target realised on held-out images,
fused == portable per FC, and the CLI."""
from __future__ import annotations

import json

import numpy as np
import openvino as ov
import pytest

from conftest import F32
from scap_ov.artifact import ARTIFACT_NAME, Artifact
from scap_ov.config import CalibrationConfig, parse_targets
from scap_ov.export import IR_XML, export_dense
from scap_ov.layers import BERT_LAYER_PATTERNS, find_fcs, module_name, weighted_matmuls
from scap_ov.pipeline import PORTABLE_XML, export_scap
from scap_ov.vision import calibration_samples, evaluate_model, image_files, is_vision, pixel_samples
from test_encoder import assert_fused_equals_portable, portable_and_fused_per_fc

LAYERS, IMAGE, PATCH, LABELS = 2, 32, 8, 10
# Random attention is nearly uniform, so block 0's o input is about the mean of v over the image: it varies by
# image more than by token, and 12 images left it realising 0.40 at a 0.50 target on held-out images.
CALIBRATION_IMAGES, HELD_OUT_IMAGES = 32, 8


def expected_fcs(prefix: str = "vit.encoder") -> dict[str, str]:
    paths = {"attention.attention.query": "q", "attention.attention.key": "k", "attention.attention.value": "v",
             "attention.output.dense": "o", "intermediate.dense": "up", "output.dense": "down"}
    return {f"{prefix}.layer.{b}.{path}": t for b in range(LAYERS) for path, t in paths.items()}


def tiny_vit():
    import torch
    from transformers import ViTConfig, ViTForImageClassification

    config = ViTConfig(image_size=IMAGE, patch_size=PATCH, hidden_size=32, num_hidden_layers=LAYERS,
                       num_attention_heads=2, intermediate_size=64, num_labels=LABELS)
    torch.manual_seed(0)
    return ViTForImageClassification(config).eval()


def write_images(folder, count: int, seed: int):
    """Deterministic synthetic RGB images (smooth gradients plus noise), of a size the processor resizes."""
    from PIL import Image

    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:40, 0:48] / 48.0
    for i in range(count):
        base = np.stack([np.sin(6 * (a * xx + b * yy) + c) for a, b, c in rng.uniform(-1, 1, (3, 3))], axis=-1)
        pixels = np.clip(127.5 * (1 + base) + rng.normal(0, 25, base.shape), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"img{i:02d}.png")
    return folder


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    from transformers import ViTImageProcessor

    root = tmp_path_factory.mktemp("vit")
    tiny_vit().save_pretrained(root / "hf")
    ViTImageProcessor(size={"height": IMAGE, "width": IMAGE}).save_pretrained(root / "hf")
    write_images(root / "calibration", CALIBRATION_IMAGES, seed=0)
    write_images(root / "held_out", HELD_OUT_IMAGES, seed=1)
    return root


@pytest.fixture(scope="module")
def tiny_ir(root):
    """optimum-intel's image-classification export; it computes what torch computes."""
    import torch

    out = export_dense(root / "hf", root / "ir")
    pixels = pixel_samples(out, image_files(root / "held_out"))[0]
    with torch.no_grad():
        expected = tiny_vit()(torch.from_numpy(pixels["pixel_values"])).logits.numpy()
    assert np.abs(infer(out / IR_XML, pixels) - expected).max() <= 1e-4
    return out


def infer(path, inputs, output="logits"):
    return ov.Core().compile_model(path, "CPU", F32)(inputs)[output]


def test_every_vit_fc_is_found_by_name_and_nothing_else(tiny_ir):
    model = ov.Core().read_model(tiny_ir / IR_XML)
    assert is_vision(tiny_ir) and {n for p in model.inputs for n in p.get_names()} == {"pixel_values"}
    fcs = find_fcs(model)
    assert {fc.name: fc.layer_type for fc in fcs} == expected_fcs()
    assert [fc.block for fc in fcs] == [b for b in range(LAYERS) for _ in range(6)]
    weighted = {module_name(n.get_friendly_name()) for n, _ in weighted_matmuls(model)}
    assert weighted - set(expected_fcs()) == {"classifier"}  # the head stays dense
    patch = [n for n in model.get_ordered_ops() if "patch_embeddings" in n.get_friendly_name()
             and n.get_type_name() in ("Convolution", "MatMul")]
    assert [n.get_type_name() for n in patch] == ["Convolution"]  # the patch embedding is no FC
    # BERT's patterns name only o/up/down of a ViT: the family with the most matches must win, not the first
    bert_only = find_fcs(model, BERT_LAYER_PATTERNS)
    assert {fc.layer_type for fc in bert_only} == {"o", "up", "down"}


def test_deit_names_are_the_vit_family():
    import re

    from scap_ov.layers import VIT_LAYER_PATTERNS

    def types(name):
        return [t for t, p in VIT_LAYER_PATTERNS.items() if re.search(p, name)]

    assert types("deit.encoder.layer.4.attention.attention.key") == ["k"]
    assert types("encoder.layer.4.output.dense") == ["down"]
    assert types("cls_classifier") == types("distillation_classifier") == types("pooler.dense") == []


@pytest.fixture(scope="module")
def samples(root, tiny_ir):
    return calibration_samples(root / "calibration", tiny_ir, 64)


def test_calibration_samples_come_from_the_image_processor(samples):
    assert len(samples) == CALIBRATION_IMAGES
    assert all(set(s) == {"pixel_values"} and s["pixel_values"].shape == (1, 3, IMAGE, IMAGE) for s in samples)
    assert -1.0 <= min(s["pixel_values"].min() for s in samples) < -0.5  # normalised to [-1, 1], not raw bytes


def test_sparsity_zero_reproduces_dense_logits(root, tiny_ir, samples, tmp_path):
    out = tmp_path / "scap0"
    export_scap(out, str(tiny_ir), CalibrationConfig(targets=parse_targets(0.0), refine_passes=0), windows=samples)
    for pixels in pixel_samples(tiny_ir, image_files(root / "held_out")):
        dense, portable = infer(tiny_ir / IR_XML, pixels), infer(out / PORTABLE_XML, pixels)
        assert np.abs(dense).max() > 0.1 and np.abs(dense - portable).max() <= 1e-4


@pytest.fixture(scope="module")
def scap50(root, tiny_ir, tmp_path_factory):
    """Exported from the image folder (the CLI's path), not from prepared samples."""
    out = tmp_path_factory.mktemp("vit_scap") / "out"
    result = export_scap(out, str(tiny_ir), CalibrationConfig(targets=parse_targets(0.5), mode="median"),
                         calibration_data=str(root / "calibration"))
    assert result.artifact.calibration["samples"] == CALIBRATION_IMAGES and result.artifact.calibration["tokens"] == 0
    return out


def test_target_is_realised_on_held_out_images(root, scap50):
    held_out = pixel_samples(scap50, image_files(root / "held_out"))
    quality = evaluate_model(ov.Core().read_model(scap50 / PORTABLE_XML), held_out)
    assert set(quality.layer_sparsity) == set(expected_fcs())
    assert all(abs(s - 0.5) < 0.1 for s in quality.layer_sparsity.values()), quality.layer_sparsity
    assert abs(quality.fc_weight_sparsity - 0.5) < 0.05
    assert quality.output == "logits" and 0 <= quality.top1_agreement <= 1 and quality.cosine_mean < 0.99999


def test_fused_ir_equals_portable_ir_per_fc(root, tiny_ir, scap50):
    portable, fused = portable_and_fused_per_fc(ov.Core().read_model(tiny_ir / IR_XML),
                                                Artifact.load(scap50 / ARTIFACT_NAME))
    pixels = pixel_samples(tiny_ir, image_files(root / "held_out"))[2]
    assert_fused_equals_portable(portable, fused, pixels, 6 * LAYERS, 1e-4)


def test_cli_export_and_eval_of_a_vit(root, tmp_path, monkeypatch, capsys):
    from scap_ov.cli import main

    monkeypatch.setenv("SCAP_OV_CACHE", str(tmp_path / "cache"))  # the optimum export of the folder lands here
    out = tmp_path / "out"
    assert main(["export", "--model", str(root / "hf"), "--output", str(out), "--sparsity", "0.4",
                 "--calibration-data", str(root / "calibration"), "--samples", "8"]) == 0
    assert "12 FC layers (q 0.40, k 0.40, v 0.40, o 0.40, up 0.40, down 0.40)" in capsys.readouterr().out
    assert main(["eval", str(out), "--images", str(root / "held_out"), "--json", str(tmp_path / "r.json")]) == 0
    printed = capsys.readouterr().out
    assert f"logits vs dense on {HELD_OUT_IMAGES} held-out images: top-1 agreement" in printed
    assert "FC-weight-byte sparsity" in printed
    assert json.loads((tmp_path / "r.json").read_text())["images"] == HELD_OUT_IMAGES


@pytest.mark.parametrize("extra, message", [
    ([], "a vision model is calibrated on images: pass --calibration-data DIR"),
    (["--calibration-data", "CAL", "--method", "greedy"], "use --method scap or teal for vision models"),
])
def test_cli_export_of_a_vit_refuses_bad_input(root, tiny_ir, tmp_path, capsys, extra, message):
    from scap_ov.cli import main

    extra = [str(root / "calibration") if a == "CAL" else a for a in extra]
    assert main(["export", "--model", str(tiny_ir), "--output", str(tmp_path / "o"), *extra]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_cli_eval_of_a_vit_needs_images(root, tiny_ir, capsys):
    from scap_ov.cli import main

    assert main(["eval", str(tiny_ir)]) == 2
    assert "holds a vision model: pass held-out images with --images DIR" in capsys.readouterr().err
    assert main(["eval", str(tiny_ir), "--images", str(root / "held_out"), "--cloze", "3"]) == 2
    assert "--cloze do not apply" in capsys.readouterr().err


def test_deit_feature_extractor_end_to_end(root, tmp_path):
    """A DeiTModel (no head) exports for feature extraction: its FCs are the ViT family's, calibration and the
    comparison with dense run on last_hidden_state (mean-pooled over patches; no top-1 without logits)."""
    import torch
    from transformers import DeiTConfig, DeiTImageProcessor, DeiTModel

    config = DeiTConfig(image_size=IMAGE, patch_size=PATCH, hidden_size=32, num_hidden_layers=LAYERS,
                        num_attention_heads=2, intermediate_size=64)
    torch.manual_seed(1)
    DeiTModel(config, add_pooling_layer=False).eval().save_pretrained(tmp_path / "hf")
    DeiTImageProcessor(size={"height": IMAGE, "width": IMAGE},
                       crop_size={"height": IMAGE, "width": IMAGE}).save_pretrained(tmp_path / "hf")
    ir = export_dense(tmp_path / "hf", tmp_path / "ir")
    model = ov.Core().read_model(ir / IR_XML)
    assert "last_hidden_state" in model.outputs[0].get_names()
    assert {fc.name: fc.layer_type for fc in find_fcs(model)} == expected_fcs("encoder")
    out = tmp_path / "out"
    export_scap(out, str(ir), CalibrationConfig(targets=parse_targets(0.5)), calibration_data=str(root / "calibration"))
    quality = evaluate_model(ov.Core().read_model(out / PORTABLE_XML), pixel_samples(ir, image_files(root / "held_out")))
    assert quality.output == "last_hidden_state" and quality.top1_agreement is None
    assert abs(quality.fc_weight_sparsity - 0.5) < 0.05 and quality.cosine_mean < 0.99999
