"""Where the sparsity budget went: per layer, the realised sparsity on held-out text and the chosen tau and mode."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from scap_ov.artifact import Artifact
from scap_ov.errors import ScapError
from scap_ov.fsutil import atomic_file
from scap_ov.layers import LAYER_TYPES

_BLOCK_KEY = "layers."


def _block(name: str) -> int:
    """Block index from a module path such as model.layers.7.mlp.down_proj (-1 when it has none)."""
    head, _, tail = name.partition(_BLOCK_KEY)
    digits = tail.split(".", 1)[0]
    return int(digits) if tail and digits.isdigit() else -1


def layer_table(artifact: Artifact, layer_sparsity: dict[str, float]) -> list[dict]:
    """One row per calibrated FC: block, type, target, realised sparsity, tau and mode (vectors summarised)."""
    rows = []
    for fc in artifact.fcs:
        tau, mode = np.asarray(fc.tau, dtype=np.float64), np.asarray(fc.mode, dtype=np.float64)
        rows.append({"name": fc.name, "block": _block(fc.name), "type": fc.layer_type, "method": fc.method,
                     "target": fc.target_sparsity, "realised": layer_sparsity.get(fc.name),
                     "tau": float(np.median(tau)), "tau_range": [float(tau.min()), float(tau.max())],
                     "mode": float(np.mean(mode)), "mode_range": [float(mode.min()), float(mode.max())]})
    return rows


def plot_layers(artifact: Artifact, layer_sparsity: dict[str, float], png: Path, title: str = "") -> Path:
    """A PNG with three panels over blocks, one line per layer type: realised sparsity (target dashed),
    tau (median over channels for per-channel tau, band = min..max) and mode (mean, band = min..max)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = layer_table(artifact, layer_sparsity)
    if not rows:
        raise ScapError("the artifact lists no FC layers: nothing to plot")
    fig, axes = plt.subplots(3, 1, figsize=(9, 9), sharex=True)
    colours = dict(zip(LAYER_TYPES, plt.rcParams["axes.prop_cycle"].by_key()["color"]))
    for layer_type in LAYER_TYPES:
        mine = sorted((r for r in rows if r["type"] == layer_type), key=lambda r: r["block"])
        if not mine:
            continue
        c = colours[layer_type]
        x = [r["block"] for r in mine]
        realised = [np.nan if r["realised"] is None else r["realised"] for r in mine]
        axes[0].plot(x, realised, marker="o", ms=3, color=c, label=layer_type)
        axes[0].plot(x, [r["target"] for r in mine], ls="--", lw=0.8, color=c)
        for ax, key in ((axes[1], "tau"), (axes[2], "mode")):
            ax.plot(x, [r[key] for r in mine], marker="o", ms=3, color=c, label=layer_type)
            lo, hi = zip(*(r[key + "_range"] for r in mine))
            if any(a != b for a, b in zip(lo, hi)):
                ax.fill_between(x, lo, hi, color=c, alpha=0.12)
    axes[0].set(ylabel="input sparsity", title="realised on held-out text (dashed: calibration target)")
    axes[1].set(ylabel="tau", yscale="log", title="threshold (median over channels; band: per-channel range)")
    axes[2].set(ylabel="mode m", xlabel="block", title="centre (mean over channels; band: per-channel range)")
    axes[0].legend(fontsize=7, ncol=len(LAYER_TYPES))
    fig.suptitle(title or artifact.model, fontsize=9)
    fig.tight_layout()
    png = Path(png)
    with atomic_file(png) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return png
