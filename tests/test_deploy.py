"""Checking a SCAP model folder before loading it: each missing piece gets a message that says what to do."""
import json
import re
import shutil

import openvino as ov
import pytest

from conftest import tiny_block_model
from scap_ov.artifact import ARTIFACT_NAME, Artifact, FCThreshold
from scap_ov.cli import main
from scap_ov.errors import ScapError
from scap_ov.extension import ENV_OVERRIDE, extension_path
from scap_ov.integrations import check_folder
from scap_ov.layers import find_fcs
from scap_ov.transformations.fuse_cpu import apply_fusion
from scap_ov.transformations.portable import apply_portable


@pytest.fixture
def fused_folder(tmp_path):
    model = tiny_block_model()
    artifact = Artifact(fcs=[FCThreshold(fc.name, fc.layer_type, 0.0, 0.3, 0.5, 0.5, "zero")
                             for fc in find_fcs(model)])
    folder = tmp_path / "scap"
    folder.mkdir()
    ov.save_model(apply_fusion(apply_portable(model, artifact), native=False), folder / "openvino_model.xml",
                  compress_to_fp16=False)
    artifact.save(folder / ARTIFACT_NAME)
    return folder


def test_a_complete_fused_folder_passes(fused_folder, capsys):
    check = check_folder(fused_folder)
    assert check.fused_ops == 8 and check.artifact  # q/k/v and gate/up share ops: 4 per block == fused_folder / ARTIFACT_NAME
    assert main(["check", str(fused_folder)]) == 0
    assert "8 SCAPFullyConnected ops" in capsys.readouterr().out


def test_a_dense_folder_needs_neither_extension_nor_artifact(tmp_path):
    ov.save_model(tiny_block_model(), tmp_path / "openvino_model.xml")
    assert check_folder(tmp_path).fused_ops == 0


def test_missing_artifact(fused_folder):
    (fused_folder / ARTIFACT_NAME).unlink()
    with pytest.raises(ScapError, match="has a SCAP IR but no scap_calibration.json: the folder is incomplete"):
        check_folder(fused_folder)


def test_corrupt_artifact(fused_folder):
    (fused_folder / ARTIFACT_NAME).write_text("{")
    with pytest.raises(ScapError, match="is not valid JSON .*re-export the model"):
        check_folder(fused_folder)


def test_op_attributes_from_a_newer_schema_name_both_versions(fused_folder):
    xml = fused_folder / "openvino_model.xml"
    xml.write_text(re.sub(r'schema_version="[123]"', 'schema_version="9"', xml.read_text()))
    with pytest.raises(ScapError, match="ops of schema version 9; this scap-ov implements schema versions 1, 2 and 3"):
        check_folder(fused_folder)


def test_extension_for_another_release(fused_folder, tmp_path, monkeypatch):
    fake = tmp_path / "lib"
    fake.mkdir()
    shutil.copy(extension_path(), fake / "libscap_ov_cpu_extension.so")
    (fake / "build_info.json").write_text(json.dumps({"openvino_version": "2025.1.0"}))
    monkeypatch.setenv(ENV_OVERRIDE, str(fake / "libscap_ov_cpu_extension.so"))
    extension_path.cache_clear()
    try:
        with pytest.raises(ScapError, match="needs the scap-ov CPU extension to run its 8 SCAPFullyConnected ops, "
                                            "but the SCAP extension was built for OpenVINO 2025.1.0"):
            check_folder(fused_folder)
    finally:
        extension_path.cache_clear()


def test_missing_extension(fused_folder, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(ENV_OVERRIDE, str(tmp_path / "gone.so"))
    extension_path.cache_clear()
    try:
        assert main(["check", str(fused_folder)]) == 2
    finally:
        extension_path.cache_clear()
    err = capsys.readouterr().err
    assert "needs the scap-ov CPU extension" in err and "gone.so does not exist" in err


def test_folder_without_ir(tmp_path, capsys):
    assert main(["check", str(tmp_path)]) == 2
    assert "holds no openvino_model.xml" in capsys.readouterr().err


def test_loaders_default_a_fused_folder_to_f32_precision(fused_folder, monkeypatch):
    """The op computes in f32: llm_pipeline / load_causal_lm compile a fused folder with f32 precision unless the
    caller says otherwise (the plugin defaults to bf16 on CPUs with AVX512_BF16 / AMX), and pass the extension."""
    import openvino_genai
    from optimum.intel import OVModelForCausalLM

    from scap_ov import integrations

    seen = []
    monkeypatch.setattr(openvino_genai, "LLMPipeline", lambda folder, device, **props: seen.append(props))
    monkeypatch.setattr(OVModelForCausalLM, "from_pretrained", staticmethod(lambda folder, **kw: seen.append(kw)))
    integrations.llm_pipeline(fused_folder)
    integrations.llm_pipeline(fused_folder, INFERENCE_PRECISION_HINT="bf16")
    integrations.load_causal_lm(fused_folder)
    integrations.load_causal_lm(fused_folder, ov_config={"INFERENCE_PRECISION_HINT": "bf16", "NUM_STREAMS": 1})
    assert seen[0]["INFERENCE_PRECISION_HINT"] == "f32" and seen[0]["extensions"] == [extension_path()]
    assert seen[1]["INFERENCE_PRECISION_HINT"] == "bf16"
    assert seen[2]["ov_config"] == {"INFERENCE_PRECISION_HINT": "f32"}
    assert seen[3]["ov_config"] == {"INFERENCE_PRECISION_HINT": "bf16", "NUM_STREAMS": 1}


def test_loaders_leave_a_dense_folder_to_the_plugin(tmp_path, monkeypatch):
    import openvino_genai

    from scap_ov import integrations

    ov.save_model(tiny_block_model(), tmp_path / "openvino_model.xml")
    seen = []
    monkeypatch.setattr(openvino_genai, "LLMPipeline", lambda folder, device, **props: seen.append(props))
    integrations.llm_pipeline(tmp_path)
    assert seen == [{}]
