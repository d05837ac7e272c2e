"""A model whose FC names no known family matches: a clear error from the CLI (what was found, how to pass
patterns), and the explicit patterns (--layers, or a JSON/YAML --layers-file) then export it."""
from __future__ import annotations

import json
import shutil

import openvino as ov
import pytest

from conftest import tiny_block_model
from scap_ov import assets
from scap_ov.artifact import ARTIFACT_NAME, Artifact
from scap_ov.cli import main
from scap_ov.errors import ScapError
from scap_ov.export import IR_XML
from scap_ov.layers import LAYER_TYPES, load_layer_patterns
from test_encoder import TEXT

BLOCKS = 2
# The tiny decoder's FCs renamed out of every known family: net.blocks.N.self_attn.q, ..., net.blocks.N.mlp.down
PATTERNS = {t: rf"blocks\.(\d+)\.(?:self_attn|mlp)\.{t}$" for t in LAYER_TYPES}


@pytest.fixture(scope="module")
def unknown_folder(tmp_path_factory):
    """An IR folder (with the packaged MiniLM tokenizer) of a tiny decoder whose module names no family knows."""
    root = tmp_path_factory.mktemp("unknown_names")
    model = tiny_block_model(blocks=BLOCKS, vocab=30522)
    for node in model.get_ordered_ops():
        name = node.get_friendly_name()
        if "model.layers." in name:
            node.set_friendly_name(name.replace("model.layers.", "net.blocks.").replace("_proj/", "/"))
    ov.save_model(model, root / "ir" / IR_XML, compress_to_fp16=False)
    package = assets.PACKAGED_MODELS["minilm-l6"].hf_folder()
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        shutil.copy2(package / name, root / "ir" / name)
    (root / "calibration.txt").write_text(TEXT * 3)
    return root


def export_args(root, out, *extra):
    return ["export", "--model", str(root / "ir"), "--output", str(out), "--calibration-data",
            str(root / "calibration.txt"), "--samples", "2", "--seq-len", "32", "--refine-passes", "0", *extra]


def test_unknown_fc_names_fail_with_what_was_found_and_how_to_pass_patterns(unknown_folder, tmp_path, capsys):
    assert main(export_args(unknown_folder, tmp_path / "out")) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("scap-ov: error: no FC layer matches the known layer patterns (decoder, bert, vit, mamba); "
                          "weighted MatMuls found: net.blocks.0.self_attn.q, net.blocks.0.self_attn.k")
    assert "--layers TYPE=REGEX, or --layers-file" in err and "\n" not in err
    assert not (tmp_path / "out").exists() and not [p for p in tmp_path.iterdir() if ".partial-" in p.name]


def expected_fcs() -> dict[str, str]:
    return {f"net.blocks.{b}.{'mlp' if t in ('gate', 'up', 'down') else 'self_attn'}.{t}": t
            for b in range(BLOCKS) for t in LAYER_TYPES}


def test_explicit_layers_export_the_same_model(unknown_folder, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(export_args(unknown_folder, out, *[f"--layers={t}={p}" for t, p in PATTERNS.items()])) == 0
    assert f"{len(LAYER_TYPES) * BLOCKS} FC layers" in capsys.readouterr().out
    fcs = Artifact.load(out / ARTIFACT_NAME).fcs
    assert {fc.name: fc.layer_type for fc in fcs} == expected_fcs()


@pytest.mark.parametrize("suffix", [".json", ".yaml"])
def test_layers_file_exports_the_same_model_and_layers_override_it(unknown_folder, tmp_path, capsys, suffix):
    import yaml

    spec = tmp_path / f"layers{suffix}"
    patterns = {**PATTERNS, "down": r"no_such_module$"}  # overridden on the command line below
    spec.write_text(json.dumps(patterns) if suffix == ".json" else yaml.safe_dump(patterns))
    assert load_layer_patterns(spec) == patterns
    out = tmp_path / "out"
    override = ["--layers", "down=" + PATTERNS["down"]]
    assert main(export_args(unknown_folder, out, "--layers-file", str(spec), *override)) == 0
    assert {fc.name: fc.layer_type for fc in Artifact.load(out / ARTIFACT_NAME).fcs} == expected_fcs()


@pytest.mark.parametrize("content, message", [
    ("{broken", "is not valid JSON"),
    ('["up"]', "must hold one mapping of layer type to module-name regex"),
    ('{"mlp": "x"}', "unknown layer type 'mlp' in the layer patterns; types: q, k, v, o, gate, up, down"),
    ('{"up": "layers\\\\.(\\\\d+"}', "the layer pattern of up ('layers\\\\.(\\\\d+') is not a valid regex"),
    ('{"up": 3}', "the layer pattern of up must be a regex string"),
])
def test_bad_layers_file_is_refused_before_any_work(tmp_path, capsys, content, message):
    spec = tmp_path / "layers.json"
    spec.write_text(content)
    assert main(["export", "--output", str(tmp_path / "out"), "--layers-file", str(spec)]) == 2
    err = capsys.readouterr().err
    assert message in err, err
    assert not (tmp_path / "out").exists()


def test_missing_layers_file(tmp_path):
    with pytest.raises(ScapError, match="layer pattern file .*nope.yaml does not exist"):
        load_layer_patterns(tmp_path / "nope.yaml")
