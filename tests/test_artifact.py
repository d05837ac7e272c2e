import json
import math

import pytest

from scap_ov.artifact import SCHEMA, SCHEMA_VERSION, Artifact, FCThreshold
from scap_ov.errors import ScapError


def _artifact():
    return Artifact(fcs=[FCThreshold("model.layers.0.mlp.up_proj", "up", 0.01, 0.2, 0.4, 0.4, "kde"),
                         FCThreshold("model.layers.0.mlp.down_proj", "down", [0.0, 0.1], [0.1, 0.2], 0.5, 0.49,
                                     "median")], model="m")


def test_round_trip(tmp_path):
    a = _artifact()
    path = a.save(tmp_path / "a.json")
    b = Artifact.load(path)
    assert b.to_json() == a.to_json()
    assert json.loads(path.read_text())["version"] == SCHEMA_VERSION


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d.update(schema="other"), "not a scap-ov calibration artifact"),
    (lambda d: d.update(version=99), "schema version 99"),
    (lambda d: d.update(fcs=[]), "lists no FC layers"),
    (lambda d: d["fcs"][0].update(tau=math.nan), "tau must be finite"),
    (lambda d: d["fcs"][0].update(tau=-1.0), "tau must be >= 0"),
    (lambda d: d["fcs"][0].update(mode="x"), "mode must be finite"),
    (lambda d: d["fcs"][0].update(layer_type="attn"), "unknown layer type 'attn'"),
    (lambda d: d["fcs"][0].update(target_sparsity=1.5), "target_sparsity must lie in [0, 1]"),
    (lambda d: d["fcs"][0].pop("tau"), "FC entry 0 is malformed"),
    (lambda d: d["fcs"].append(dict(d["fcs"][0])), "duplicate FC names"),
])
def test_bad_artifacts_are_rejected_with_a_specific_message(tmp_path, mutate, message):
    data = json.loads(_artifact().to_json())
    mutate(data)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ScapError, match=message.replace("[", r"\[").replace("]", r"\]")):
        Artifact.load(path)


def test_unreadable_artifacts(tmp_path):
    with pytest.raises(ScapError, match="does not exist"):
        Artifact.load(tmp_path / "missing.json")
    (tmp_path / "x.json").write_text("{not json")
    with pytest.raises(ScapError, match="not valid JSON"):
        Artifact.load(tmp_path / "x.json")
    assert SCHEMA.startswith("scap-ov/")
