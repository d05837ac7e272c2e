"""A streaming, mergeable histogram of activation values with fixed signed-log bins.

|x - m| <= tau  <=>  m - tau <= x <= m + tau, so one histogram of x answers tau for any centre m, and the
median and KDE peak too. Bins are log-spaced in |x|, so resolution follows the scale of the data without
knowing its range in advance, and memory is fixed whatever the token count.

The bins are the float32 bit patterns of |x| with the low mantissa bits dropped: the bit pattern of a
non-negative float is monotonic in its value, so the bin index is a shift, no logarithm (~10x faster).
"""
from __future__ import annotations

import numpy as np

MANTISSA_BITS = 9  # kept mantissa bits: bins 2^-9 of an octave wide (<= 0.2% relative)
MIN_EXP, MAX_EXP = -30, 20  # |x| < 2^-30 falls in the zero bin, |x| >= 2^20 in the last bin
_SHIFT = 23 - MANTISSA_BITS
_LO_KEY = (127 + MIN_EXP) << MANTISSA_BITS
_HI_KEY = (127 + MAX_EXP) << MANTISSA_BITS
BINS_PER_SIGN = _HI_KEY - _LO_KEY


class SignedLogHistogram:
    def __init__(self):
        B = self.bins_per_sign = BINS_PER_SIGN
        self.counts = np.zeros(2 * B + 1, dtype=np.int64)
        keys = np.arange(_LO_KEY, _HI_KEY + 1, dtype=np.uint32) << np.uint32(_SHIFT)
        mags = keys.view(np.float32).astype(np.float64)  # exact magnitude edges
        # Value edges in ascending order: negative bins, the zero bin [-2^-30, 2^-30], positive bins.
        self.edges = np.concatenate([-mags[::-1], mags])
        self.nan_count = 0

    @property
    def total(self) -> int:
        return int(self.counts.sum())

    def update(self, x: np.ndarray) -> None:
        x = np.ascontiguousarray(x, dtype=np.float32).ravel()
        nan = np.isnan(x)
        if nan.any():
            self.nan_count += int(nan.sum())
            x = x[~nan]
        bits = x.view(np.uint32)
        # +-Inf has the largest exponent: it lands in the last bin, like any huge value.
        b = ((bits & np.uint32(0x7FFFFFFF)) >> np.uint32(_SHIFT)).astype(np.int32) - _LO_KEY
        np.clip(b, -1, BINS_PER_SIGN - 1, out=b)
        B = BINS_PER_SIGN
        idx = np.where(b < 0, B, np.where(bits >> np.uint32(31), B - 1 - b, B + 1 + b))
        self.counts += np.bincount(idx, minlength=self.counts.size)

    def merge(self, other: "SignedLogHistogram") -> None:
        self.counts += other.counts
        self.nan_count += other.nan_count

    # ------------------------------------------------------------------------------------- queries

    def cdf(self, values: np.ndarray) -> np.ndarray:
        """Number of values <= v (linear within a bin), vectorised over ``values``."""
        values = np.asarray(values, dtype=np.float64)
        cum = np.concatenate([[0], np.cumsum(self.counts)])  # cum[i] = count below edge i
        i = np.clip(np.searchsorted(self.edges, values, side="right") - 1, 0, self.counts.size - 1)
        lo, hi = self.edges[i], self.edges[i + 1]
        frac = np.clip((values - lo) / (hi - lo), 0.0, 1.0)
        return cum[i] + frac * self.counts[i]

    def quantile(self, q: float) -> float:
        """Value below which a fraction q of the data lies."""
        target = q * self.total
        cum = np.cumsum(self.counts)
        i = int(np.searchsorted(cum, target, side="left"))
        i = min(i, self.counts.size - 1)
        below = cum[i] - self.counts[i]
        frac = 0.0 if self.counts[i] == 0 else (target - below) / self.counts[i]
        return float(self.edges[i] + frac * (self.edges[i + 1] - self.edges[i]))

    def fraction_within(self, mode: float, tau: float) -> float:
        """Fraction of values with |x - mode| <= tau: the sparsity that (mode, tau) gives."""
        if self.total == 0:
            return 0.0
        return float((self.cdf(mode + tau) - self.cdf(mode - tau)) / self.total)

    def threshold(self, mode: float, sparsity: float) -> float:
        """Smallest tau with fraction_within(mode, tau) >= sparsity (bisection; fraction is monotone)."""
        if sparsity <= 0.0 or self.total == 0:
            return 0.0
        hi = max(abs(self.edges[0] - mode), abs(self.edges[-1] - mode))
        lo = 0.0
        for _ in range(200):
            mid = 0.5 * (lo + hi)
            if self.fraction_within(mode, mid) >= sparsity:
                hi = mid
            else:
                lo = mid
            if hi - lo <= 1e-7 * max(hi, 1e-12):
                break
        return float(hi)

    def std(self) -> float:
        centers = 0.5 * (self.edges[:-1] + self.edges[1:])
        w = self.counts / max(self.total, 1)
        mean = float((w * centers).sum())
        return float(np.sqrt(max((w * (centers - mean) ** 2).sum(), 0.0)))

    def kde_peak(self, bandwidth: float, gridsize: int = 2000, tail: float = 0.005) -> float:
        """Argmax of a Gaussian kernel density estimate, computed from the histogram on a uniform grid."""
        lo, hi = self.quantile(tail), self.quantile(1 - tail)
        if not hi > lo:
            return lo
        grid_edges = np.linspace(lo, hi, gridsize + 1)
        mass = np.diff(self.cdf(grid_edges))
        dx = (hi - lo) / gridsize
        half = max(1, int(np.ceil(4 * bandwidth / dx)))
        kernel = np.exp(-0.5 * ((np.arange(-half, half + 1) * dx) / max(bandwidth, 1e-12)) ** 2)
        density = np.convolve(mass, kernel, mode="full")[half : half + gridsize]
        centers = 0.5 * (grid_edges[:-1] + grid_edges[1:])
        return float(centers[int(np.argmax(density))])
