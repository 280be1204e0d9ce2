"""Every quality metric talkcodec reports, on uint8 RGB images: the demo, the bench and the
trainer's validation use these functions and no others.

Whole frame: PSNR, SSIM and MS-SSIM (pytorch-msssim: Gaussian window 11, sigma 1.5), LPIPS-Alex,
DISTS (``talkcodec.models.pretrained``), landmark distance, temporal flicker.

Where people look, from mediapipe landmarks of the original and of the decoded frame (the
inter-ocular distance ``iod`` is between the outer eye corners 33 and 263: the original's for
distances and boxes, each face's own for its lip gap):

- ``lip_sync``: Pearson correlation over the clip of the inner-lip gap |p13 - p14| / iod,
  decoded against original (0 = unrelated or a mouth that never moves, 1 = opens and closes
  with the speaker); None when the original's mouth stays shut (gap std < 0.01 iod);
- ``mouth_landmark``: mean distance of the 40 lip points / iod;
- ``mouth_lpips``: LPIPS-Alex on a square box around the ORIGINAL frame's lips (side 1.1 iod),
  both images cut at the same box and resized to 64x64;
- ``eye_lpips``: the same on a square box around each original eye (side 0.6 iod), the two
  64x64 boxes side by side;
- ``blink_sync``: Pearson correlation of the mean eye aspect ratio (blinks).

Frames where either side has no face count in ``landmark_missing`` and are left out of the
landmark, mouth and eye figures (the whole-frame ones still score them).
"""

from __future__ import annotations

import cv2
import numpy as np
import torch

from .face import LEFT_EYE, RIGHT_EYE, aspect_ratio

OUTER_EYE_CORNERS = (33, 263)
INNER_LIP_GAP = (13, 14)  # upper and lower inner lip, on the mouth's midline
#: mediapipe's FACEMESH_LIPS points (outer and inner contours of both lips).
LIPS = (0, 13, 14, 17, 37, 39, 40, 61, 78, 80, 81, 82, 84, 87, 88, 91, 95, 146, 178, 181, 185, 191, 267, 269, 270,
        291, 308, 310, 311, 312, 314, 317, 318, 321, 324, 375, 402, 405, 409, 415)  # fmt: skip
#: mediapipe's FACEMESH_RIGHT_EYE / FACEMESH_LEFT_EYE contours.
EYES = ((7, 33, 133, 144, 145, 153, 154, 155, 157, 158, 159, 160, 161, 163, 173, 246),
        (249, 263, 362, 373, 374, 380, 381, 382, 384, 385, 386, 387, 388, 390, 398, 466))  # fmt: skip
MOUTH_BOX = 1.1  # side of the mouth box / iod
EYE_BOX = 0.6  # side of each eye box / iod
BOX_PIXELS = 64  # boxes are scored at 64x64
MIN_LIP_MOTION = 0.01  # lip-sync needs the original's lip gap to vary by this much (std, / iod)
DISTS_EVERY = 5  # DISTS (0.35 s a frame on 2 cores) on every 5th of the frames the costly metrics use


# --------------------------------------------------------------------------- whole frame


def psnr(reference: np.ndarray, decoded: np.ndarray) -> float:
    """Peak signal-to-noise ratio in dB over all channels (inf for identical images)."""
    mse = float(np.mean((reference.astype(np.float64) - decoded.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10.0 * np.log10(255.0**2 / mse)


def _tensor(frames: np.ndarray, scale: float = 1.0) -> torch.Tensor:
    """(T, H, W, 3) uint8 -> (T, 3, H, W) float in 0..255 * scale."""
    return torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float() * scale


def _batched(fn, reference: np.ndarray, decoded: np.ndarray, batch: int, scale: float, shift: float = 0.0) -> np.ndarray:
    """fn over (T, H, W, 3) uint8 pairs in batches -> (T,)."""
    out = []
    with torch.no_grad():
        for i in range(0, len(reference), batch):
            a, b = (_tensor(s[i : i + batch], scale) + shift for s in (reference, decoded))
            out.append(fn(a, b).reshape(-1).numpy())
    return np.concatenate(out) if out else np.zeros(0, np.float32)


def ssim(reference: np.ndarray, decoded: np.ndarray, batch: int = 32) -> np.ndarray:
    """SSIM (Wang et al. 2004, eq. 13: Gaussian window 11, sigma 1.5, mean over RGB) per frame of
    two (T, H, W, 3) uint8 sequences -> (T,)."""
    from pytorch_msssim import ssim as _ssim

    return _batched(lambda a, b: _ssim(a, b, data_range=255, size_average=False), reference, decoded, batch, 1.0)


def ms_ssim(reference: np.ndarray, decoded: np.ndarray, batch: int = 32) -> np.ndarray:
    """MS-SSIM (Wang et al. 2003, five scales) per frame -> (T,); frames need a side > 160 px."""
    from pytorch_msssim import ms_ssim as _ms_ssim

    return _batched(lambda a, b: _ms_ssim(a, b, data_range=255, size_average=False), reference, decoded, batch, 1.0)


def lpips(reference: np.ndarray, decoded: np.ndarray, batch: int = 16) -> np.ndarray:
    """LPIPS-Alex v0.1 per frame of two (T, H, W, 3) uint8 RGB sequences -> (T,)."""
    from .models.pretrained import lpips_alex

    return _batched(lpips_alex(), reference, decoded, batch, 1 / 127.5, -1.0)


def dists(reference: np.ndarray, decoded: np.ndarray, batch: int = 4) -> np.ndarray:
    """DISTS per frame of two (T, H, W, 3) uint8 RGB sequences -> (T,): 0 for identical images,
    ~0.1-0.3 for mild damage, ~0.4 and more for unrelated pictures."""
    from .models.pretrained import dists as _dists

    return _batched(_dists(), reference, decoded, batch, 1 / 255)


def flicker(reference: np.ndarray, decoded: np.ndarray) -> float:
    """Mean |(dec_t - dec_t-1) - (ref_t - ref_t-1)| in 8-bit levels (0 for a single frame)."""
    if len(reference) < 2:
        return 0.0
    ref, dec = reference.astype(np.int16), decoded.astype(np.int16)
    return float(np.abs(np.diff(dec, axis=0) - np.diff(ref, axis=0)).mean())


# --------------------------------------------------------------------------- landmarks


def landmarks(frames: np.ndarray) -> np.ndarray:
    """(T, 478, 2) mediapipe landmarks of a sequence of face crops (any size), in their pixels;
    NaN where no face is found."""
    from .face import CROP_SIZE, CropSettings, FaceTracker

    out = np.full((len(frames), 478, 2), np.nan, dtype=np.float32)
    with FaceTracker(CropSettings(track=False), segmentation=False, pose=False) as tracker:
        for i, frame in enumerate(frames):
            observation = tracker.process(frame)
            if observation.landmarks is not None:
                cx, cy, side = observation.crop_box  # the tracker's CROP_SIZE crop -> the frame's pixels
                out[i] = observation.landmarks[:, :2] * (side / CROP_SIZE) + np.array([cx - side / 2, cy - side / 2])
    return out


def inter_ocular(points: np.ndarray) -> np.ndarray:
    """(T, 478, 2) -> (T,) distance between the outer eye corners (at least 1e-6)."""
    return np.maximum(np.linalg.norm(points[:, OUTER_EYE_CORNERS[0]] - points[:, OUTER_EYE_CORNERS[1]], axis=1), 1e-6)


def landmark_distance(reference: np.ndarray, decoded: np.ndarray, indices: tuple[int, ...] | None = None) -> np.ndarray:
    """Per-frame mean distance of the landmarks (all, or ``indices``) / the original's iod; NaN
    where either has no face."""
    cols = slice(None) if indices is None else list(indices)
    return np.linalg.norm(decoded[:, cols] - reference[:, cols], axis=2).mean(axis=1) / inter_ocular(reference)


def lip_gap(points: np.ndarray) -> np.ndarray:
    """(T, 478, 2) -> (T,) inner-lip gap |p13 - p14| / iod (0 = closed)."""
    upper, lower = INNER_LIP_GAP
    return np.linalg.norm(points[:, upper] - points[:, lower], axis=1) / inter_ocular(points)


def eye_opening(points: np.ndarray) -> np.ndarray:
    """(T, 478, 2) -> (T,) mean eye aspect ratio of the two eyes (~0.3 open, < 0.15 shut)."""
    return np.mean([aspect_ratio(points[:, list(eye)]) for eye in (RIGHT_EYE, LEFT_EYE)], axis=0)


def correlation(original: np.ndarray, decoded: np.ndarray) -> float | None:
    """Pearson correlation of two signals over the frames where both are finite; 0 when either
    does not vary (a still mouth follows nothing), None with fewer than 3 frames."""
    keep = np.isfinite(original) & np.isfinite(decoded)
    a, b = original[keep].astype(np.float64), decoded[keep].astype(np.float64)
    if len(a) < 3:
        return None
    a, b = a - a.mean(), b - b.mean()
    spread = np.sqrt((a * a).sum() * (b * b).sum())
    return 0.0 if spread < 1e-12 else float((a * b).sum() / spread)


# --------------------------------------------------------------------------- boxes


def boxes(frames: np.ndarray, centres: np.ndarray, sides: np.ndarray, size: int = BOX_PIXELS) -> np.ndarray:
    """Square boxes cut from (T, H, W, 3) frames, centred at (T, 2) pixels with (T,) sides, each
    resized to size x size (edge pixels repeated where a box leaves the frame) -> (T, size, size, 3)."""
    out = np.zeros((len(frames), size, size, 3), np.uint8)
    for i, (frame, (cx, cy), side) in enumerate(zip(frames, centres, sides)):
        native = max(size, int(np.ceil(side)))  # cut at (at least) the box's own resolution ...
        s = native / side
        m = np.array([[s, 0, native / 2 - s * cx], [0, s, native / 2 - s * cy]], np.float64)
        box = cv2.warpAffine(frame, m, (native, native), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        out[i] = cv2.resize(box, (size, size), interpolation=cv2.INTER_AREA)  # ... then area-average down
    return out


def mouth_boxes(frames: np.ndarray, reference_points: np.ndarray) -> np.ndarray:
    """(T, 64, 64, 3) boxes around the original's lips (side 1.1 iod); needs a face in every frame."""
    return boxes(frames, reference_points[:, list(LIPS)].mean(axis=1), MOUTH_BOX * inter_ocular(reference_points))


def eye_boxes(frames: np.ndarray, reference_points: np.ndarray) -> np.ndarray:
    """(T, 64, 128, 3): the boxes around the original's two eyes (side 0.6 iod each), side by side."""
    side = EYE_BOX * inter_ocular(reference_points)
    return np.concatenate([boxes(frames, reference_points[:, list(eye)].mean(axis=1), side) for eye in EYES], axis=2)


# --------------------------------------------------------------------------- one sequence


def _moves(gap: np.ndarray) -> bool:
    """Whether the original's mouth opens and closes enough to be followed (lip-sync is None,
    not a correlation of tracking noise, on a clip whose speaker keeps the mouth shut)."""
    finite = gap[np.isfinite(gap)]
    return len(finite) >= 3 and float(finite.std()) >= MIN_LIP_MOTION


def shown(value: float | None, digits: int = 3) -> str:
    """A figure for a progress line: "-" where it could not be measured (None)."""
    return "-" if value is None else f"{value:.{digits}f}"


def _mean(values: np.ndarray) -> float | None:
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if len(finite) else None


def measure(
    reference: np.ndarray, decoded: np.ndarray, reference_landmarks: np.ndarray | None = None, stride: int = 1
) -> dict[str, float | None]:
    """Every metric of a decoded (T, H, W, 3) uint8 sequence against the original, averaged over
    frames. PSNR and flicker use every frame; SSIM, MS-SSIM, LPIPS and the landmark-based ones
    every ``stride``-th; DISTS every ``DISTS_EVERY * stride``-th. ``reference_landmarks``: the
    original's (T, 478, 2) landmarks when already known."""
    if len(reference) == 0 or reference.shape != decoded.shape:
        raise ValueError(f"measure: needs two sequences of the same frames, got {reference.shape} and {decoded.shape}")
    sub_ref, sub_dec = reference[::stride], decoded[::stride]
    ref_lm = (landmarks(reference) if reference_landmarks is None else reference_landmarks)[::stride]
    dec_lm = landmarks(sub_dec)
    both = np.isfinite(ref_lm).all(axis=(1, 2)) & np.isfinite(dec_lm).all(axis=(1, 2))
    ref_gap = lip_gap(ref_lm)
    psnrs = np.array([psnr(a, b) for a, b in zip(reference, decoded)])
    result: dict[str, float | None] = {
        "psnr": float(np.mean(np.minimum(psnrs, 100.0))),  # identical frames count as 100 dB
        "ssim": float(ssim(sub_ref, sub_dec).mean()),
        "ms_ssim": float(ms_ssim(sub_ref, sub_dec).mean()),
        "lpips": float(lpips(sub_ref, sub_dec).mean()),
        "dists": float(dists(reference[:: stride * DISTS_EVERY], decoded[:: stride * DISTS_EVERY]).mean()),
        "landmark": _mean(landmark_distance(ref_lm, dec_lm)),
        "landmark_missing": float(1.0 - both.mean()) if len(both) else 0.0,
        "flicker": flicker(reference, decoded),
        "lip_sync": correlation(ref_gap, lip_gap(dec_lm)) if _moves(ref_gap) else None,
        "blink_sync": correlation(eye_opening(ref_lm), eye_opening(dec_lm)),
        "mouth_landmark": _mean(landmark_distance(ref_lm, dec_lm, LIPS)),
        "mouth_lpips": None,
        "eye_lpips": None,
    }
    if both.any():
        ref_faces, dec_faces, points = sub_ref[both], sub_dec[both], ref_lm[both]
        result["mouth_lpips"] = float(lpips(mouth_boxes(ref_faces, points), mouth_boxes(dec_faces, points)).mean())
        result["eye_lpips"] = float(lpips(eye_boxes(ref_faces, points), eye_boxes(dec_faces, points)).mean())
    return result
