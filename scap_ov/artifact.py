"""The calibration artifact: a versioned JSON with, per FC, its mode, threshold and sparsity figures.

Re-running the transformation from the same artifact reproduces the IR bit for bit, so everything the
transformation needs is stored here, and nothing it does depends on anything else.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from scap_ov.errors import ScapError
from scap_ov.fsutil import atomic_file
from scap_ov.layers import LAYER_TYPES

SCHEMA = "scap-ov/calibration"
SCHEMA_VERSION = 1
ARTIFACT_NAME = "scap_calibration.json"  # its file name in an exported model folder


def json_value(value) -> float | list[float]:
    """A scalar or per-channel mode / tau as the artifact stores it: a float, or a list of floats."""
    return np.asarray(value, dtype=float).tolist() if np.ndim(value) else float(value)


@dataclass
class FCThreshold:
    name: str
    layer_type: str
    mode: float | list[float]  # scalar or per-input-channel centre m
    tau: float | list[float]  # scalar or per-input-channel threshold
    target_sparsity: float
    calibration_sparsity: float  # measured on the calibration tokens
    method: str  # how m was chosen: zero | median | kde | channel; or cats (tau on act(gate) of a gated input)

    def validate(self) -> None:
        where = f"artifact entry {self.name!r}"
        if self.layer_type not in LAYER_TYPES:
            raise ScapError(f"{where}: unknown layer type {self.layer_type!r} (known: {', '.join(LAYER_TYPES)})")
        for key in ("mode", "tau"):
            values = getattr(self, key)
            values = values if isinstance(values, list) else [values]
            if not values or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in values):
                raise ScapError(f"{where}: {key} must be finite numbers")
        taus = self.tau if isinstance(self.tau, list) else [self.tau]
        if min(taus) < 0:
            raise ScapError(f"{where}: tau must be >= 0")
        for key in ("target_sparsity", "calibration_sparsity"):
            v = getattr(self, key)
            if not isinstance(v, (int, float)) or not 0.0 <= v <= 1.0:
                raise ScapError(f"{where}: {key} must lie in [0, 1]")


@dataclass
class Artifact:
    fcs: list[FCThreshold]
    model: str = ""
    calibration: dict[str, Any] = field(default_factory=dict)  # data, samples, seq_len, tokens, mode, targets
    schema: str = SCHEMA
    version: int = SCHEMA_VERSION

    def by_name(self) -> dict[str, FCThreshold]:
        return {fc.name: fc for fc in self.fcs}

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)

    def save(self, path: Path) -> Path:
        path = Path(path)
        with atomic_file(path) as tmp:
            tmp.write_text(self.to_json())
        return path

    @classmethod
    def from_dict(cls, data: Any, source: str = "artifact") -> "Artifact":
        if not isinstance(data, dict) or data.get("schema") != SCHEMA:
            raise ScapError(f"{source} is not a scap-ov calibration artifact (schema != {SCHEMA!r})")
        if data.get("version") != SCHEMA_VERSION:
            raise ScapError(f"{source} has artifact schema version {data.get('version')!r}; "
                            f"this scap-ov reads version {SCHEMA_VERSION}")
        entries = data.get("fcs")
        if not isinstance(entries, list) or not entries:
            raise ScapError(f"{source} lists no FC layers")
        fcs = []
        for i, entry in enumerate(entries):
            try:
                fcs.append(FCThreshold(**entry))
            except TypeError as exc:
                raise ScapError(f"{source}: FC entry {i} is malformed ({exc})") from exc
            fcs[-1].validate()
        names = [fc.name for fc in fcs]
        if len(set(names)) != len(names):
            raise ScapError(f"{source}: duplicate FC names")
        return cls(fcs=fcs, model=data.get("model", ""), calibration=data.get("calibration", {}))

    @classmethod
    def load(cls, path: Path) -> "Artifact":
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError as exc:
            raise ScapError(f"artifact {path} does not exist") from exc
        except (OSError, ValueError) as exc:
            raise ScapError(f"artifact {path} is not valid JSON ({exc})") from exc
        return cls.from_dict(data, source=str(path))
