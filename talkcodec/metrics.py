"""Frame quality metrics on (H, W, 3) uint8 RGB images (the bench builds on these)."""

from __future__ import annotations

import numpy as np
from skimage.metrics import structural_similarity


def psnr(reference: np.ndarray, decoded: np.ndarray) -> float:
    """Peak signal-to-noise ratio in dB over all channels (inf for identical images)."""
    mse = float(np.mean((reference.astype(np.float64) - decoded.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10.0 * np.log10(255.0**2 / mse)


def ssim(reference: np.ndarray, decoded: np.ndarray) -> float:
    """SSIM as Wang et al. 2004 define it (Gaussian window, sigma 1.5), averaged over RGB."""
    return float(
        structural_similarity(
            reference, decoded, channel_axis=2, data_range=255, gaussian_weights=True, sigma=1.5,
            use_sample_covariance=False,
        )  # fmt: skip
    )
