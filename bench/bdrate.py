"""Bjontegaard deltas between two rate-quality curves (VCEG-M33), over their common range.

BD-rate: the mean difference of log-rate at equal quality, as a percentage (negative = the
test codec needs fewer bits). BD-quality: the mean quality difference at equal rate. Curves
are interpolated with monotone piecewise-cubic (PCHIP) splines, as current BD tools do, and
integrated only where both curves exist; no overlap gives ``None``.
"""

from __future__ import annotations

import numpy as np
from scipy.integrate import quad
from scipy.interpolate import PchipInterpolator


def _curve(x: np.ndarray, y: np.ndarray) -> PchipInterpolator | None:
    order = np.argsort(x)
    x, y = np.asarray(x, float)[order], np.asarray(y, float)[order]
    keep = np.concatenate([[True], np.diff(x) > 1e-12])  # PCHIP needs strictly increasing x
    x, y = x[keep], y[keep]
    return PchipInterpolator(x, y) if len(x) >= 2 else None


def _mean_gap(x1, y1, x2, y2) -> float | None:
    """Mean of (f2 - f1) over the common x range of two sampled functions."""
    f1, f2 = _curve(x1, y1), _curve(x2, y2)
    lo, hi = max(min(x1), min(x2)), min(max(x1), max(x2))
    if f1 is None or f2 is None or hi - lo <= 1e-9:
        return None
    return quad(lambda x: float(f2(x) - f1(x)), lo, hi, limit=200)[0] / (hi - lo)


def bd_rate(anchor_kbps, anchor_quality, test_kbps, test_quality, higher_is_better: bool = True) -> float | None:
    """Percent bitrate change of ``test`` against ``anchor`` at equal quality."""
    sign = 1.0 if higher_is_better else -1.0
    gap = _mean_gap(sign * np.asarray(anchor_quality), np.log10(anchor_kbps), sign * np.asarray(test_quality), np.log10(test_kbps))
    return None if gap is None else float((10**gap - 1) * 100)


def bd_quality(anchor_kbps, anchor_quality, test_kbps, test_quality) -> float | None:
    """Mean quality difference (test - anchor) at equal bitrate."""
    return _mean_gap(np.log10(anchor_kbps), anchor_quality, np.log10(test_kbps), test_quality)
