"""The per-layer picture: realised sparsity, tau and mode per layer, from an artifact and an evaluation."""
import numpy as np
import pytest

from scap_ov.artifact import Artifact, FCThreshold
from scap_ov.cli import main
from scap_ov.errors import ScapError
from scap_ov.report import layer_table, plot_layers

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _artifact():
    fcs = [FCThreshold(f"model.layers.{b}.mlp.down_proj", "down", [0.0, 0.2, -0.1], [0.1, 0.3, 0.2], 0.5, 0.5,
                       "channel") for b in range(3)]
    fcs += [FCThreshold(f"model.layers.{b}.self_attn.q_proj", "q", 0.01, 0.05 * (b + 1), 0.4, 0.4, "zero")
            for b in range(3)]
    return Artifact(fcs=fcs, model="tiny")


def test_layer_table_summarises_vectors_and_joins_realised_sparsity():
    realised = {"model.layers.1.mlp.down_proj": 0.47}
    rows = {r["name"]: r for r in layer_table(_artifact(), realised)}
    down1 = rows["model.layers.1.mlp.down_proj"]
    assert down1["block"] == 1 and down1["type"] == "down" and down1["realised"] == 0.47
    assert down1["tau"] == pytest.approx(0.2) and down1["tau_range"] == [pytest.approx(0.1), pytest.approx(0.3)]
    assert down1["mode"] == pytest.approx(np.mean([0.0, 0.2, -0.1])) and down1["mode_range"][0] == pytest.approx(-0.1)
    q2 = rows["model.layers.2.self_attn.q_proj"]
    assert q2["realised"] is None and q2["tau"] == pytest.approx(0.15) and q2["tau_range"][0] == q2["tau_range"][1]


def test_plot_writes_a_png_atomically(tmp_path):
    png = plot_layers(_artifact(), {"model.layers.0.mlp.down_proj": 0.5}, tmp_path / "sub" / "layers.png")
    assert png.read_bytes()[:8] == PNG_MAGIC and png.stat().st_size > 10_000
    assert [p.name for p in png.parent.iterdir()] == ["layers.png"]  # no temporary left behind


def test_plot_of_an_empty_artifact_is_refused(tmp_path):
    with pytest.raises(ScapError, match="lists no FC layers"):
        plot_layers(Artifact(fcs=[]), {}, tmp_path / "x.png")
    assert not list(tmp_path.iterdir())


def test_eval_plot_needs_an_artifact_before_evaluating(tmp_path, capsys):
    (tmp_path / "openvino_model.xml").write_text("<net/>")
    code = main(["eval", str(tmp_path), "--plot", str(tmp_path / "p.png")])
    assert code == 2 and "--plot needs a SCAP folder" in capsys.readouterr().err
    assert not (tmp_path / "p.png").exists()
