"""The mouth painter at the receiver: teeth, tongue and the dark of an open mouth, drawn on a
lip-aligned crop and blended back, shared by the codecs that warp a reference (`mesh`, `apb`).

The crop is ``size`` x ``size`` pixels (96), one inter-ocular distance on a side, centred on the
lips and turned with the eye line: a similarity transform of the frame's own landmarks (the ones
the receiver warped to), so the network sees every mouth upright and at one scale. It gets the
warped reference's mouth and rasters of the target lips (``models.mouth_painter``) and its output
goes back under a feathered mask around the lips. Without painter weights the codecs keep the
flat dark fill (``warp.fill_mouth``).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import cv2
import numpy as np
import torch

from .errors import WeightsError
from .face import INNER_LIPS
from .models.mouth_painter import MouthPainter, MouthPainterConfig
from .warp import fill_mouth

WEIGHTS_CODEC = "mouth-painter"
EYE_CORNERS = (33, 263)
# Outer lip contour, in order around the mouth (mediapipe's FACEMESH_LIPS outer ring).
OUTER_LIPS = (61, 146, 91, 181, 84, 17, 314, 405, 321, 375, 291, 409, 270, 269, 267, 0, 37, 39, 40, 185)
CROP_SIDE_IOD = 1.0  # crop side / inter-ocular distance: the lips and an open jaw fit
MOUTH_FILLS = ("painter", "dark", "off")
MOUTH_FILL_HELP = ("how the receiver draws an opening mouth: painter (the mouth painter; dark where there are no "
                   "painter weights), dark (a flat dark interior where it opens wider than in the reference), off")
MASK_GROW = 0.12  # the paste mask: the outer lips grown by this x crop side, then feathered


def crop_affine(landmarks: np.ndarray, size: int) -> np.ndarray | None:
    """(2, 3) affine from frame pixels to the mouth crop; None for landmarks that make no face."""
    points = np.asarray(landmarks, dtype=np.float64)[:, :2]
    with np.errstate(invalid="ignore", over="ignore"):  # hostile points: judged just below
        eye = points[EYE_CORNERS[1]] - points[EYE_CORNERS[0]]
        iod = float(np.hypot(*eye))
        centre = points[list(OUTER_LIPS)].mean(axis=0)
    if not (np.isfinite(iod) and np.isfinite(centre).all()) or iod < 8.0 or iod > 4096.0:
        return None
    angle = np.arctan2(eye[1], eye[0])
    scale = size / (CROP_SIDE_IOD * iod)
    cos, sin = scale * np.cos(angle), scale * np.sin(angle)
    linear = np.array([[cos, sin], [-sin, cos]])  # rotate by -angle, then scale
    return np.concatenate([linear, (size / 2.0 - linear @ centre)[:, None]], axis=1)


def cut(image: np.ndarray, affine: np.ndarray, size: int) -> np.ndarray:
    """The (size, size, C) crop of ``image`` under ``affine``."""
    return cv2.warpAffine(image, affine, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def _polygon(points: np.ndarray, affine: np.ndarray, size: int) -> np.ndarray:
    crop_points = points[:, :2] @ affine[:, :2].T + affine[:, 2]  # (N, 2) in crop pixels
    raster = np.zeros((size, size), np.float32)
    cv2.fillPoly(raster, [np.rint(crop_points * 4).astype(np.int32)], 1.0, lineType=cv2.LINE_AA, shift=2)
    return raster


def lip_rasters(landmarks: np.ndarray, affine: np.ndarray, size: int) -> np.ndarray:
    """(2, size, size) float32: the inner-lip opening and the outer-lip area, filled."""
    return np.stack([_polygon(landmarks[list(INNER_LIPS)], affine, size),
                     _polygon(landmarks[list(OUTER_LIPS)], affine, size)])  # fmt: skip


def paste_mask(rasters: np.ndarray) -> np.ndarray:
    """(size, size) float32 in [0, 1]: the outer lips grown and feathered (what the painter replaces)."""
    size = rasters.shape[-1]
    grow = max(1, round(MASK_GROW * size))
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * grow + 1, 2 * grow + 1))
    mask = cv2.dilate(rasters[1], kernel)
    return cv2.GaussianBlur(mask, (0, 0), grow / 2.0)


def paste(image: np.ndarray, crop: np.ndarray, mask: np.ndarray, affine: np.ndarray) -> None:
    """Blend ``crop`` (size, size, 3) back into ``image`` in place, under ``mask`` (size, size)."""
    size = crop.shape[0]
    inverse = cv2.invertAffineTransform(affine)
    corners = np.array([[0, 0], [size, 0], [0, size], [size, size]], np.float64) @ inverse[:, :2].T + inverse[:, 2]
    height, width = image.shape[:2]
    x0, y0 = np.clip(np.floor(corners.min(axis=0)).astype(int), 0, [width, height])
    x1, y1 = np.clip(np.ceil(corners.max(axis=0)).astype(int) + 1, 0, [width, height])
    if x1 <= x0 or y1 <= y0:
        return
    shifted = affine.copy()  # frame pixel (x + x0, y + y0) -> crop pixel, for the region's own pixels
    shifted[:, 2] += affine[:, :2] @ np.array([x0, y0], np.float64)
    flags, region = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, (int(x1 - x0), int(y1 - y0))
    back = cv2.warpAffine(crop, shifted, region, flags=flags, borderMode=cv2.BORDER_REPLICATE).astype(np.float32)
    alpha = cv2.warpAffine(mask, shifted, region, flags=flags, borderValue=0.0)[..., None]  # (h, w, 1)
    roi = image[y0:y1, x0:x1]
    roi[:] = np.clip(roi * (1.0 - alpha) + back * alpha + 0.5, 0, 255).astype(np.uint8)


@dataclass
class MouthCrop:
    """One frame's mouth as the painter sees it."""

    affine: np.ndarray  # (2, 3) frame -> crop
    warped: np.ndarray  # (S, S, 3) uint8: the warped reference's mouth
    rasters: np.ndarray  # (2, S, S) float32
    mask: np.ndarray  # (S, S) float32


def mouth_crop(image: np.ndarray, landmarks: np.ndarray, size: int) -> MouthCrop | None:
    affine = crop_affine(landmarks, size)
    if affine is None:
        return None
    rasters = lip_rasters(np.asarray(landmarks, np.float64), affine, size)
    return MouthCrop(affine, cut(image, affine, size), rasters, paste_mask(rasters))


class Painter:
    """A loaded mouth painter; ``paint`` draws one frame's mouth in place."""

    def __init__(self, network: MouthPainter, fingerprint: str):
        self.network, self.fingerprint = network.eval(), fingerprint
        self.size = network.config.size

    @torch.inference_mode()
    def paint(self, image: np.ndarray, landmarks: np.ndarray) -> None:
        """Redraw the mouth of ``image`` (H, W, 3) uint8, whose face has ``landmarks`` (478, 2+)."""
        crop = mouth_crop(image, landmarks, self.size)
        if crop is None:
            return
        warped = torch.from_numpy(crop.warped).permute(2, 0, 1)[None].float() / 255.0  # (S, S, 3) -> (1, 3, S, S)
        painted = self.network(warped, torch.from_numpy(crop.rasters)[None])  # (1, 3, S, S)
        drawn = (painted[0].permute(1, 2, 0) * 255.0).numpy()  # (3, S, S) -> (S, S, 3)
        paste(image, drawn, crop.mask, crop.affine)


@lru_cache(maxsize=4)
def load_painter(path: str) -> Painter:
    """The painter in a weights file (``talkcodec train --codec painter``); WeightsError if unusable."""
    from .codecs.learned import build_network
    from .weights import load_weights

    weights = load_weights(path, WEIGHTS_CODEC)
    try:
        config = MouthPainterConfig.from_dict(weights.config)
    except (TypeError, ValueError) as exc:
        raise WeightsError(f"{path}: invalid painter config ({exc})") from None
    network = build_network(lambda: MouthPainter(config), weights.tensors, path)
    return Painter(network.float(), weights.fingerprint)


class MouthFill:
    """How a receiver draws an opening mouth (the codecs' ``mouth_fill`` setting): ``painter``
    (the weights at ``painter_path``, else the shipped ones, else the dark fill), ``dark``
    (``warp.fill_mouth``: flat dark where it opens wider than the reference's) or ``off``."""

    def __init__(self, mode: str, painter_path: str | None = None):
        from .codecs.learned import shipped_weights

        self.mode = mode
        path = (painter_path or shipped_weights("mouth_painter")) if mode == "painter" else None
        self.painter = load_painter(str(path)) if path else None

    def draw(self, image: np.ndarray, landmarks: np.ndarray, reference_area: float) -> None:
        """Draw the mouth of the warped ``image`` in place; ``landmarks`` (478, 2+) are the ones it
        was warped to, ``reference_area`` the reference's inner-lip area (px^2)."""
        if self.painter is not None:
            self.painter.paint(image, landmarks)
        elif self.mode != "off":
            fill_mouth(image, landmarks[list(INNER_LIPS), :2], reference_area)
