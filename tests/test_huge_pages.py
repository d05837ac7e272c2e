"""Huge-page placement of the packed weights (plugins/cpu/src/huge_pages.*).

The op places a weights buffer on its first call: a read-only file mapping (an IR read with mmap, OpenVINO's
default) is copied into huge-page memory and the kernel reads the copy; anonymous memory is remapped in place.
Results must not depend on any of it. ``SCAP_OV_HUGE_PAGES`` is read once per process, so each setting runs in
its own interpreter; ``SCAP_OV_DEBUG`` makes the op report what it did with each weights buffer.
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

CHILD = textwrap.dedent("""
    import json, sys
    import numpy as np, openvino as ov
    from scap_ov import ops, packing
    from scap_ov.extension import extension_path

    out_dir = sys.argv[1]
    rng = np.random.default_rng(7)
    ic, oc = 1024, 640  # f32 weights of 2.5 MiB: above the 1 MiB floor of the in-place path
    w = (rng.standard_normal((oc, ic)) / 32).astype(np.float32)
    wq = rng.integers(-128, 128, size=(oc, ic))
    scale = rng.uniform(0.001, 0.01, size=(oc, 1)).astype(np.float16)
    x = rng.standard_normal((1, ic)).astype(np.float32)

    def model(native):
        p = ov.op.Parameter(ov.Type.f32, ov.PartialShape([-1, ic]))
        y1 = ops.make_scap_fc(p.output(0), packing.pack_float(w), 0.01, 0.5, None, name="fp32_fc", native=native)
        y2 = ops.make_scap_fc(p.output(0), packing.pack_compressed(wq, scale, None, "i8"), 0.0, 0.5, None,
                              name="int8_fc", native=native)
        return ov.Model([y1, y2], [p], "m")

    core = ov.Core()
    core.add_extension(extension_path())
    ov.save_model(model(False), out_dir + "/m.xml", compress_to_fp16=False)
    results = {}
    for name, compiled in (("file", core.compile_model(out_dir + "/m.xml", "CPU")),  # mmapped .bin
                           ("memory", core.compile_model(model(True), "CPU"))):     # heap constants
        req = compiled.create_infer_request()
        for _ in range(3):  # placement happens on the first call; later calls read the placed buffer
            outs = [req.infer({0: x})[i].copy() for i in range(2)]
        for i, o in enumerate(outs):
            np.save(f"{out_dir}/{name}_{i}.npy", o)
    d = np.where(np.abs(x - 0.01) > 0.5, x - 0.01, 0).astype(np.float64)
    np.save(out_dir + "/oracle_0.npy", d @ w.T.astype(np.float64))
""")


def run_child(tmp: Path, huge_pages: str) -> tuple[dict[str, np.ndarray], list[str]]:
    tmp.mkdir()
    env = dict(os.environ, SCAP_OV_HUGE_PAGES=huge_pages, SCAP_OV_DEBUG="1")
    proc = subprocess.run([sys.executable, "-c", CHILD, str(tmp)], env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    placements = [line for line in proc.stderr.splitlines() if ": weights " in line]
    arrays = {f.stem: np.load(f) for f in tmp.glob("*.npy")}
    return arrays, placements


@pytest.mark.skipif(sys.platform != "linux", reason="transparent huge pages are a Linux facility")
def test_placement_does_not_change_results_and_copies_mmapped_weights(tmp_path):
    on, placed_on = run_child(tmp_path / "on", "1")
    off, placed_off = run_child(tmp_path / "off", "0")

    # Each op instance is placed once: 2 ops of the model read from disk, then 2 of the in-memory one.
    assert len(placed_on) == 4, placed_on
    hows_on = [line.split(" bytes ", 1)[1] for line in placed_on]
    # The IR read from disk is an mmapped read-only file: both ops read private copies ...
    assert hows_on[:2] == ["copied", "copied"], placed_on
    # ... the heap constants of the in-memory model are never copied (remapped in place at most; the i8 buffer
    # is under the 1 MiB floor of that path).
    assert hows_on[2] in ("collapsed", "advised") or hows_on[2].startswith("unchanged"), placed_on
    assert hows_on[3] == "unchanged (anonymous, under 1 MiB)", placed_on
    assert [line.split(" bytes ", 1)[1] for line in placed_off] == ["off"] * 4, placed_off

    # Bit-identical outputs with and without placement, for both models and both weight formats.
    for key in ("file_0", "file_1", "memory_0", "memory_1"):
        np.testing.assert_array_equal(on[key], off[key], err_msg=key)
    np.testing.assert_array_equal(on["file_0"], on["memory_0"])
    np.testing.assert_allclose(on["file_0"], on["oracle_0"], rtol=1e-4, atol=1e-4)
