"""Deployed weight formats: fp32 | fp16 | int8 | int4 (NNCF weight compression), as optimum-cli names them.

Export compresses the dense IR before calibration, so the thresholds are calibrated on the activations the
deployed model really sees. Everything that can be checked without the model is checked in ``validate``,
and the group size against the model's FC input channels in ``check_channels``, both before any long work.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import openvino as ov

from scap_ov.errors import ScapError

WEIGHT_FORMATS = ("fp32", "fp16", "int8", "int4")
# optimum-cli's int4 default is 128; models whose channels it does not divide (SmolLM2: 576) get the largest
# of these that divides every FC input, unless the user asked for a group size.
INT4_GROUP_SIZES = (128, 64, 32, 16)


@dataclass(frozen=True)
class WeightFormat:
    name: str = "fp32"
    group_size: int | None = None  # int4 only: channels per scale along IC; -1 = one scale per output channel
    sym: bool = False  # int8/int4: symmetric (no zero points)

    @property
    def compressed(self) -> bool:
        return self.name in ("int8", "int4")

    def validate(self) -> "WeightFormat":
        if self.name not in WEIGHT_FORMATS:
            raise ScapError(f"unsupported weight format {self.name!r} (choose from {', '.join(WEIGHT_FORMATS)})")
        if self.sym and not self.compressed:
            raise ScapError(f"--sym applies to int8 and int4 weights, not {self.name}")
        if self.group_size is not None:
            if self.name != "int4":
                raise ScapError(f"--group-size applies to int4 weights only ({self.name} weights have one scale "
                                "per output channel)")
            if self.group_size != -1 and self.group_size < 2:
                raise ScapError(f"--group-size must be -1 (per output channel) or >= 2, got {self.group_size}")
        return self

    def check_channels(self, channels: Iterable[int]) -> "WeightFormat":
        """Resolve the int4 group size against the FC input channel counts; raise if it does not divide them."""
        channels = sorted(set(channels))
        if self.name != "int4" or not channels or self.group_size == -1:
            return self
        if self.group_size is not None:
            bad = [c for c in channels if c % self.group_size]
            if bad:
                fits = [g for g in INT4_GROUP_SIZES if all(c % g == 0 for c in channels)]
                hint = f"; {fits[0]} divides all of them" if fits else "; use --group-size -1 (per channel)"
                raise ScapError(f"--group-size {self.group_size} does not divide the FC input channels "
                                f"{', '.join(map(str, bad))}{hint}")
            return self
        for g in INT4_GROUP_SIZES:
            if all(c % g == 0 for c in channels):
                return WeightFormat(self.name, g, self.sym)
        return WeightFormat(self.name, -1, self.sym)

    def describe(self) -> str:
        if not self.compressed:
            return self.name
        kind = "sym" if self.sym else "asym"
        group = "" if self.group_size in (None, -1) else f"_g{self.group_size}"
        return f"{self.name}_{kind}{group}"

    def apply(self, model: ov.Model) -> ov.Model:
        """The model with its weights in this format (NNCF data-free compression for int8/int4)."""
        if self.name == "fp32":
            return model
        if self.name == "fp16":
            from openvino._offline_transformations import compress_model_transformation

            compress_model_transformation(model)  # what ov.save_model(compress_to_fp16=True) does
            return model
        import nncf

        if self.name == "int8":
            mode = nncf.CompressWeightsMode.INT8_SYM if self.sym else nncf.CompressWeightsMode.INT8_ASYM
            return nncf.compress_weights(model, mode=mode)
        if self.group_size is None:
            raise ScapError("int4 group size unresolved: call check_channels with the model's FC channels first")
        mode = nncf.CompressWeightsMode.INT4_SYM if self.sym else nncf.CompressWeightsMode.INT4_ASYM
        # ratio 1: every block FC in int4 (NNCF keeps embeddings and lm_head in int8, as optimum-cli does)
        return nncf.compress_weights(model, mode=mode, group_size=self.group_size, ratio=1.0)


def config_fc_channels(folder: Path) -> list[int]:
    """FC input channel counts from a transformers config.json (empty when the keys are absent).

    Lets an int4 group size be checked before the optimum-intel export of a model not yet exported.
    """
    try:
        config = json.loads((Path(folder) / "config.json").read_text())
    except (OSError, ValueError):
        return []
    config = config.get("text_config", config)
    hidden, inter = config.get("hidden_size"), config.get("intermediate_size")
    heads = config.get("num_attention_heads")
    head_dim = config.get("head_dim") or (hidden // heads if hidden and heads else None)
    channels = [c for c in (hidden, inter, heads * head_dim if heads and head_dim else None) if c]
    return [int(c) for c in channels if isinstance(c, int) and c > 0 and math.isfinite(c)]
