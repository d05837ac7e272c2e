"""The calibration artifact: a versioned JSON with, per FC, its mode, threshold and sparsity figures, and
(with ``--weight-correction``) a sidecar ``.npz`` of per-FC weight corrections.

Re-running the transformation from the same artifact reproduces the IR bit for bit, so everything the
transformation needs is stored here, and nothing it does depends on anything else.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from scap_ov.errors import ScapError
from scap_ov.fsutil import atomic_file
from scap_ov.layers import LAYER_TYPES

SCHEMA = "scap-ov/calibration"
SCHEMA_VERSION = 1  # thresholds only
CORRECTED_SCHEMA_VERSION = 2  # plus weight corrections in a sidecar file (older readers would silently drop them)
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
    # FC name -> float16 [OC, IC] added to the FC's float weights (scap_ov.calibration.correction); saved beside
    # the JSON (corrections_path), never inside it
    corrections: dict[str, np.ndarray] = field(default_factory=dict, repr=False, compare=False)

    def by_name(self) -> dict[str, FCThreshold]:
        return {fc.name: fc for fc in self.fcs}

    @property
    def schema_version(self) -> int:
        """The version this artifact is written as: 2 when it carries weight corrections, else 1."""
        return CORRECTED_SCHEMA_VERSION if self.corrections else SCHEMA_VERSION

    def to_json(self, corrections_file: str | None = None) -> str:
        data = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "corrections"}
        data["fcs"] = [asdict(fc) for fc in self.fcs]
        data["version"] = self.schema_version
        if self.corrections:
            data["corrections"] = corrections_file
        return json.dumps(data, indent=1)

    @staticmethod
    def corrections_path(path: Path) -> Path:
        """Where the weight corrections of the artifact at ``path`` live: scap_calibration.corrections.npz."""
        path = Path(path)
        return path.with_name(path.stem + ".corrections.npz")

    def save(self, path: Path) -> Path:
        path = Path(path)
        if self.corrections:
            side = self.corrections_path(path)
            with atomic_file(side) as tmp, open(tmp, "wb") as f:
                np.savez(f, **self.corrections)
        with atomic_file(path) as tmp:
            tmp.write_text(self.to_json(self.corrections_path(path).name if self.corrections else None))
        return path

    @classmethod
    def from_dict(cls, data: Any, source: str = "artifact") -> "Artifact":
        if not isinstance(data, dict) or data.get("schema") != SCHEMA:
            raise ScapError(f"{source} is not a scap-ov calibration artifact (schema != {SCHEMA!r})")
        if data.get("version") not in (SCHEMA_VERSION, CORRECTED_SCHEMA_VERSION):
            raise ScapError(f"{source} has artifact schema version {data.get('version')!r}; "
                            f"this scap-ov reads versions {SCHEMA_VERSION} and {CORRECTED_SCHEMA_VERSION}")
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
        return cls(fcs=fcs, model=data.get("model", ""), calibration=data.get("calibration", {}),
                   version=data["version"])

    @classmethod
    def load(cls, path: Path) -> "Artifact":
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError as exc:
            raise ScapError(f"artifact {path} does not exist") from exc
        except (OSError, ValueError) as exc:
            raise ScapError(f"artifact {path} is not valid JSON ({exc})") from exc
        artifact = cls.from_dict(data, source=str(path))
        if data.get("corrections"):
            artifact.corrections = _load_corrections(path.parent / str(data["corrections"]), artifact, str(path))
        return artifact


def _load_corrections(side: Path, artifact: Artifact, source: str) -> dict[str, np.ndarray]:
    if side.name != Artifact.corrections_path(Path(source)).name:
        raise ScapError(f"{source} names weight corrections {side.name!r}; expected "
                        f"{Artifact.corrections_path(Path(source)).name!r} beside it")
    try:
        with np.load(side, allow_pickle=False) as npz:
            corrections = {name: npz[name] for name in npz.files}
    except FileNotFoundError:
        raise ScapError(f"{source} has weight corrections in {side}, which does not exist: copy it with the "
                        "artifact") from None
    except (OSError, ValueError) as exc:
        raise ScapError(f"weight corrections {side} are unreadable ({exc})") from None
    names = artifact.by_name()
    for name, value in corrections.items():
        if name not in names:
            raise ScapError(f"weight corrections {side} name {name!r}, an FC the artifact does not list")
        if value.ndim != 2 or value.dtype != np.float16 or not np.all(np.isfinite(value)):
            raise ScapError(f"weight correction of {name} in {side} must be a finite float16 [OC, IC] array")
    return corrections
