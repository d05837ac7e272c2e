"""Benchmarks refuse bad folders before any work, with a message naming the folder, and write no result."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

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
