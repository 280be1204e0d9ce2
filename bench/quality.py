"""Quality of a decoded sequence against the original, frame by frame.

PSNR (talkcodec.metrics), SSIM and MS-SSIM (pytorch-msssim, Gaussian window 11 / sigma 1.5),
LPIPS-Alex (``lpips.py``), landmark distance (mediapipe landmarks of the decoded frame
against those of the original, mean over the 478 points, divided by the original's
inter-ocular distance), and temporal flicker (mean absolute error of frame differences:
how much more, or less, the decoded video changes from frame to frame than the original).
"""

from __future__ import annotations

import numpy as np
import torch
from pytorch_msssim import ms_ssim, ssim

from ..metrics import psnr
from .lpips import lpips

OUTER_EYE_CORNERS = (33, 263)


def _torch(frames: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float()  # (T, 3, H, W) in 0..255


def structural(reference: np.ndarray, decoded: np.ndarray, batch: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """(SSIM, MS-SSIM) per frame of two (T, H, W, 3) uint8 sequences."""
    s, m = [], []
    with torch.no_grad():
        for i in range(0, len(reference), batch):
            a, b = _torch(reference[i : i + batch]), _torch(decoded[i : i + batch])
            s.append(ssim(a, b, data_range=255, size_average=False).numpy())
            m.append(ms_ssim(a, b, data_range=255, size_average=False).numpy())
    return np.concatenate(s), np.concatenate(m)


def landmarks(frames: np.ndarray) -> np.ndarray:
    """(T, 478, 2) mediapipe landmarks of a cropped sequence; NaN where no face is found."""
    from ..face import CropSettings, FaceTracker

    out = np.full((len(frames), 478, 2), np.nan, dtype=np.float32)
    with FaceTracker(CropSettings(track=False), segmentation=False, pose=False) as tracker:
        for i, frame in enumerate(frames):
            found = tracker.process(frame).landmarks
            if found is not None:
                out[i] = found[:, :2]
    return out


def landmark_distance(reference: np.ndarray, decoded: np.ndarray) -> np.ndarray:
    """Per-frame mean landmark error / inter-ocular distance; NaN where either has no face."""
    eyes = np.linalg.norm(reference[:, OUTER_EYE_CORNERS[0]] - reference[:, OUTER_EYE_CORNERS[1]], axis=1)
    return np.linalg.norm(decoded - reference, axis=2).mean(axis=1) / np.maximum(eyes, 1e-6)


def flicker(reference: np.ndarray, decoded: np.ndarray) -> float:
    """Mean |(dec_t - dec_t-1) - (ref_t - ref_t-1)| in 8-bit levels (0 for a single frame)."""
    if len(reference) < 2:
        return 0.0
    ref, dec = reference.astype(np.int16), decoded.astype(np.int16)
    return float(np.abs(np.diff(dec, axis=0) - np.diff(ref, axis=0)).mean())


def measure(
    reference: np.ndarray, decoded: np.ndarray, reference_landmarks: np.ndarray | None = None, stride: int = 1
) -> dict:
    """Every metric, averaged over the frames (landmark distance over frames where both have a
    face). PSNR and flicker use every frame; with ``stride`` > 1 the costly ones (SSIM, MS-SSIM,
    LPIPS, landmarks) use every ``stride``-th frame."""
    sub_ref, sub_dec = reference[::stride], decoded[::stride]
    s, m = structural(sub_ref, sub_dec)
    ref_lm = landmarks(reference) if reference_landmarks is None else reference_landmarks
    distance = landmark_distance(ref_lm[::stride], landmarks(sub_dec))
    found = ~np.isnan(distance)
    psnrs = np.array([psnr(a, b) for a, b in zip(reference, decoded)])
    return {
        "psnr": float(np.mean(np.minimum(psnrs, 100.0))),  # identical frames count as 100 dB
        "ssim": float(s.mean()),
        "ms_ssim": float(m.mean()),
        "lpips": float(lpips(sub_ref, sub_dec).mean()),
        "landmark": float(distance[found].mean()) if found.any() else None,
        "landmark_missing": float(1.0 - found.mean()) if len(found) else 0.0,
        "flicker": flicker(reference, decoded),
    }
