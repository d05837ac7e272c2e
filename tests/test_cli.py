"""Bad input: one clear line on stderr, a non-zero exit, and no output folder (partial or otherwise) left."""
import json
import subprocess
import sys

import pytest

from scap_ov.artifact import Artifact, FCThreshold
from scap_ov.cli import main

FAST_FAILURES = [
    (["--model", "/no/such/model"], "neither a packaged model"),
    (["--sparsity", "1.0"], "sparsity must lie in [0, 1)"),
    (["--sparsity", "-0.1"], "sparsity must lie in [0, 1)"),
    (["--target", "attn=0.3"], "unknown layer type 'attn'"),
    (["--target", "down=1.5"], "sparsity of down must lie in [0, 1)"),
    (["--mode", "mean"], "unknown mode 'mean'"),
    (["--method", "teal", "--mode", "median"], "TEAL thresholds zero-centred magnitudes"),
    (["--method", "greedy", "--target", "down=0.5"], "per-type --target values do not apply"),
    (["--samples", "0"], "--samples must be >= 1"),
    (["--probe-windows", "0"], "probe windows must be >= 1"),
    (["--probe-tokens", "1"], "probe tokens >= 2"),
    (["--level-step", "0.3"], "--level-step must divide 1 into 2 or more equal levels"),
    (["--level-step", "0"], "--level-step must divide 1 into 2 or more equal levels"),
    (["--refine-passes", "9"], "--refine-passes must lie in [0, 5]"),
    (["--calibration-data", "/no/such/text.txt"], "text file /no/such/text.txt does not exist"),
    (["--weight-format", "int8", "--group-size", "64"], "--group-size applies to int4 weights only"),
    (["--weight-format", "fp16", "--sym"], "--sym applies to int8 and int4 weights, not fp16"),
    (["--sym"], "--group-size and --sym need --weight-format int8 or int4"),
    (["--weight-format", "int4", "--group-size", "0"], "--group-size must be -1 (per output channel) or >= 2"),
    (["--weight-correction", "--weight-format", "int8"], "cannot be combined with --weight-format int8"),
    (["--weight-correction", "--correction-damping", "0"], "--correction-damping must be a finite number > 0"),
    (["--weight-correction", "--method", "cats"], "CATS prunes act(gate)"),
    # checked against the packaged model's config before the (cached) optimum export and calibration
    (["--weight-format", "int4", "--group-size", "128"],
     "--group-size 128 does not divide the FC input channels 576; 64 divides all of them"),
]


def _run(argv, capsys):
    code = main(argv)
    err = capsys.readouterr().err.strip()
    return code, err


def _assert_no_output(tmp_path):
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if ".partial-" in p.name]


@pytest.mark.parametrize("extra, message", FAST_FAILURES, ids=[m for _, m in FAST_FAILURES])
def test_export_bad_arguments(tmp_path, capsys, extra, message):
    code, err = _run(["export", "--output", str(tmp_path / "out"), *extra], capsys)
    assert code == 2
    assert err.startswith("scap-ov: error: ") and message in err and "\n" not in err
    _assert_no_output(tmp_path)


def test_unknown_weight_format_is_an_argument_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["export", "--output", str(tmp_path / "out"), "--weight-format", "nf4"])
    assert exit_info.value.code == 2
    assert "argument --weight-format: invalid choice: 'nf4'" in capsys.readouterr().err
    _assert_no_output(tmp_path)


def test_non_model_folder(tmp_path, capsys):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("hello")
    code, err = _run(["export", "--output", str(tmp_path / "out"), "--model", str(tmp_path / "notes")], capsys)
    assert code == 2 and "is not a model folder (no config.json)" in err
    _assert_no_output(tmp_path)


def test_existing_output_needs_overwrite(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    code, err = _run(["export", "--output", str(out)], capsys)
    assert code == 2 and "exists and is not empty (pass --overwrite" in err
    assert (out / "keep.txt").read_text() == "precious"


@pytest.mark.parametrize("content, message", [
    ("{broken", "is not valid JSON"),
    (json.dumps({"schema": "scap-ov/calibration", "version": 7, "fcs": []}), "schema version 7"),
])
def test_corrupt_artifact(tmp_path, capsys, content, message):
    art = tmp_path / "art.json"
    art.write_text(content)
    code, err = _run(["export", "--output", str(tmp_path / "out"), "--artifact", str(art)], capsys)
    assert code == 2 and message in err
    _assert_no_output(tmp_path)


def _artifact(path, calibration):
    Artifact(fcs=[FCThreshold("x", "q", 0.0, 0.1, 0.4, 0.4, "zero")], calibration=calibration).save(path)
    return path


@pytest.mark.parametrize("extra, message", [
    (["--artifact", "{art}"], "--artifact skips calibration, --allocation-from calibrates: give one of them"),
    (["--method", "teal"], "--allocation-from reuses a greedy allocation: it does not apply to --method teal"),
    # checked against the packaged model's groups before any calibration
    ([], "does not fit this model's groups: missing down@0-9, "),
])
def test_export_bad_allocation_from(tmp_path, capsys, extra, message):
    art = _artifact(tmp_path / "greedy.json", {"method": "greedy", "targets": {"q": 0.4},
                                               "allocation": {"groups": {"down@0-0": {"target": 0.4}}}})
    code, err = _run(["export", "--output", str(tmp_path / "out"), "--allocation-from", str(art),
                      *[a.format(art=art) for a in extra]], capsys)
    assert code == 2 and message in err and "\n" not in err
    _assert_no_output(tmp_path)


def test_export_allocation_from_a_non_greedy_export(tmp_path, capsys):
    art = _artifact(tmp_path / "teal.json", {"method": "teal", "targets": {"q": 0.4}})
    code, err = _run(["export", "--output", str(tmp_path / "out"), "--allocation-from", str(art)], capsys)
    assert code == 2 and "not calibrated by greedy allocation (method teal)" in err
    _assert_no_output(tmp_path)


def test_eval_of_a_folder_without_ir(tmp_path, capsys):
    code, err = _run(["eval", str(tmp_path)], capsys)
    assert code == 2 and "holds no openvino_model.xml" in err


def test_console_script_exit_code_and_extension_path(tmp_path):
    bad = subprocess.run([sys.executable, "-m", "scap_ov.cli", "export", "--output", str(tmp_path / "o"),
                          "--sparsity", "2"], capture_output=True, text=True)
    assert bad.returncode == 2 and "sparsity must lie in [0, 1)" in bad.stderr
    ok = subprocess.run([sys.executable, "-m", "scap_ov.cli", "extension-path"], capture_output=True, text=True)
    assert ok.returncode == 0 and ok.stdout.strip().endswith("libscap_ov_cpu_extension.so")
