"""Eye geometry for receivers: the lids of a landmark set moved to a sent eye opening.

An eye's opening is its aspect ratio (``face.eye_aspect_ratio``: ~0.3 open, < 0.15 shut), one
number an eye, which `apb` and `mesh` frames carry. ``set_eye_openings`` scales each eye's
contour and iris towards the line through its corners until the eye has the sent ratio; the
piecewise-affine warp then closes the reference's lids over the eye (or opens them).
"""

from __future__ import annotations

import numpy as np

from .face import LEFT_EYE, RIGHT_EYE, aspect_ratio

# mediapipe's eye contours (subject's right eye first): the corners, then the upper lid's
# points and the lower lid's, corner to corner, so that UPPER_LIDS[e][i] lies above LOWER_LIDS[e][i]
EYE_CORNERS = ((33, 133), (263, 362))
UPPER_LIDS = ((246, 161, 160, 159, 158, 157, 173), (466, 388, 387, 386, 385, 384, 398))
LOWER_LIDS = ((7, 163, 144, 145, 153, 154, 155), (249, 390, 373, 374, 380, 381, 382))
EYE_CONTOURS = tuple(tuple(sorted(c + u + w)) for c, u, w in zip(EYE_CORNERS, UPPER_LIDS, LOWER_LIDS))
IRISES = (tuple(range(468, 473)), tuple(range(473, 478)))
EYE_STEP = 0.01  # the quantization step of a sent opening (`apb`, `mesh`), before the codec's precision
UPPER_SHARE = 0.8  # of a blink's travel, the upper lid's (the lower lid rises a little)
OPENING_RANGE = (0.03, 2.5)  # the lids' gap as a fraction of the landmarks' own


def set_eye_openings(points: np.ndarray, openings: np.ndarray) -> np.ndarray:
    """(478, 2) landmarks with each eye's lids moved towards each other (or apart) until the
    eye's aspect ratio is ``openings`` (right, left) -> (478, 2). A gap d between an upper and
    a lower lid point becomes f d, the upper lid travelling ``UPPER_SHARE`` of the way; the
    aspect ratio's vertical distances are such gaps, so it scales by f too. The iris is pressed
    into the lids' new gap by the same factor. Any finite opening is safe: f is clipped to
    ``OPENING_RANGE``."""
    moved = points[:, :2].astype(np.float64).copy()
    for upper, lower, iris, ratio_points, target in zip(UPPER_LIDS, LOWER_LIDS, IRISES, (RIGHT_EYE, LEFT_EYE), openings):
        current = float(aspect_ratio(moved[list(ratio_points)]))
        factor = float(np.clip(target / max(current, 1e-6), *OPENING_RANGE)) if np.isfinite(target) else 1.0
        gap = moved[list(upper)] - moved[list(lower)]  # (7, 2) lower lid -> upper lid
        seam = moved[list(lower)] + (1.0 - UPPER_SHARE) * gap  # where the lids meet when shut
        moved[list(upper)] = seam + UPPER_SHARE * factor * gap
        moved[list(lower)] = seam - (1.0 - UPPER_SHARE) * factor * gap
        across = gap.mean(axis=0) / max(float(np.linalg.norm(gap.mean(axis=0))), 1e-6)  # unit, the lids' gap direction
        offset = moved[list(iris)] - seam.mean(axis=0)  # (5, 2)
        moved[list(iris)] += np.outer((factor - 1.0) * (offset @ across), across)
    return moved
