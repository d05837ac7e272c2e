"""Benchmarks refuse bad folders before any work, with a message naming the folder, and write no result."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_benchmark(script: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *args], capture_output=True, text=True,
                          timeout=300)


def test_decode_ppl_refuses_a_folder_without_a_model(tmp_path):
    out = tmp_path / "out.json"
    empty = tmp_path / "not_a_model"
    empty.mkdir()
    r = run_benchmark("decode_ppl.py", "--json", str(out), str(empty))
    assert r.returncode == 2
    assert "not_a_model" in r.stderr and "openvino_model.xml" in r.stderr
    assert not out.exists()


def test_decode_ppl_refuses_a_fused_folder_without_its_artifact(tmp_path):
    out = tmp_path / "out.json"
    folder = tmp_path / "fused"
    folder.mkdir()
    # the check reads the IR text: one fused op layer is enough to make the folder a SCAP folder
    (folder / "openvino_model.xml").write_text(
        '<net><layers><layer id="0" type="SCAPFullyConnected" version="extension">'
        '<data schema_version="2"/></layer></layers></net>')
    r = run_benchmark("decode_ppl.py", "--json", str(out), str(folder))
    assert r.returncode == 2
    assert "scap_calibration.json" in r.stderr and "incomplete" in r.stderr
    assert not out.exists()


def test_row_read_probe_reads_what_it_reports(tmp_path):
    """The scattered-row read probe (benchmarks/row_read.py) runs end to end on a tiny shape: every requested keep
    fraction and prefetch strategy has a record, the kept bytes match the keep fraction, the full read is the
    ratio's unit, and the JSON and PNG are written. (Its timings are benchmark output, not asserted.)"""
    out = tmp_path / "rows.json"
    r = run_benchmark("row_read.py", "--json", str(out), "--shapes", "64x256", "--keeps", "0.5",
                      "--working-set-mib", "4", "--sweeps", "2")
    assert r.returncode == 0, r.stderr
    records = json.loads(out.read_text())["records"]
    assert {(rec["keep"], rec["prefetch"]) for rec in records} == {
        (k, p) for k in (1.0, 0.5) for p in ("none", "ahead", "head")}
    for rec in records:
        assert rec["rows"] == 64 and rec["row_bytes"] == 256 and rec["us_per_call_best"] > 0
        if rec["keep"] == 1.0:
            assert rec["kept_bytes_per_call"] == 64 * 256 and rec["read_ratio_median"] == 1.0
        else:  # a random half of 64 rows per matrix, averaged over the matrices
            assert 0.3 * 64 * 256 < rec["kept_bytes_per_call"] < 0.7 * 64 * 256
    assert out.with_suffix(".png").exists()


@pytest.mark.parametrize("script, args, message", [
    ("row_read.py", ["--shapes", "64x16"], "ROW_BYTES >= 64"),
    ("block_sparsity.py", ["--sparsity", "1.5"], "--sparsity must be in [0, 1)"),  # before loading the model
], ids=["row_read-shape", "block_sparsity-budget"])
def test_benchmark_refuses_a_bad_argument(tmp_path, script, args, message):
    out = tmp_path / "result.json"
    r = run_benchmark(script, "--json", str(out), *args)
    assert r.returncode == 2
    assert message in r.stderr
    assert not out.exists()
