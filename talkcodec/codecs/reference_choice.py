"""Which frame the sender sends as its reference: the first one with a face, then, within the
first seconds, a clearly better one when it comes.

Every codec draws every frame from the reference, so what the reference shows is on screen for
the whole call: a mouth open in it must be closed by warping on every frame (``apb`` keeps it
open), shut eyes stay slits, a blurred first frame (a camera still focusing, motion) blurs the
call, and a turned head leaves the far side of the face to be invented. A portrait's score
(higher is better, each term in units a person would judge alike):

    log(sharpness) - 5 x mouth opening - 10 x max(0.25 - eye opening, 0) - head turn / 20 degrees

sharpness: variance of the Laplacian of the grey crop (doubling it gains 0.69); mouth opening:
inner-lip gap over mouth width (closed ~0.02, speaking 0.1-0.4); eye opening: the eye aspect
ratio (open ~0.3, shut < 0.15); head turn: the size of the head's angles from frontal.
A frame replaces the reference when it scores ``MARGIN`` more, at most ``MAX_REPLACEMENTS``
times and only within the search window: each replacement costs one reference image (~12 kB at
256 px, 23 at 512).
"""

from __future__ import annotations

import cv2
import numpy as np

from ..face import eye_aspect_ratio

MARGIN = 0.5  # a replacement must be this much better (e.g. the mouth 0.1 more closed, or 65 % sharper)
MAX_REPLACEMENTS = 2
INNER_LIP_GAP = (13, 14)
MOUTH_CORNERS = (61, 291)


def portrait_score(crop: np.ndarray, landmarks: np.ndarray, head_angles: np.ndarray) -> float:
    """How good a reference ``crop`` (S, S, 3) with its (478, 2+) landmarks and head angles
    (degrees from frontal) makes (see the module's docstring)."""
    grey = cv2.cvtColor(crop, cv2.COLOR_RGB2GRAY)
    sharpness = float(cv2.Laplacian(grey, cv2.CV_32F).var())
    width = np.linalg.norm(landmarks[MOUTH_CORNERS[0], :2] - landmarks[MOUTH_CORNERS[1], :2])
    opening = np.linalg.norm(landmarks[INNER_LIP_GAP[0], :2] - landmarks[INNER_LIP_GAP[1], :2]) / max(width, 1e-6)
    eyes = float(eye_aspect_ratio(landmarks).mean())
    turn = float(np.linalg.norm(head_angles))
    return float(np.log(max(sharpness, 1e-3)) - 5 * opening - 10 * max(0.25 - eyes, 0.0) - turn / 20)


class ReferenceChoice:
    """Says when a frame should replace the reference: within ``search_frames`` of the stream's
    first reference, when it scores ``MARGIN`` better than the reference in use."""

    def __init__(self, search_frames: int):
        self.search_frames = search_frames
        self.replacements = 0
        self._first_seq: int | None = None  # seq of the stream's first reference with a face
        self._score = -np.inf  # the reference in use

    def sent(self, seq: int, score: float | None) -> None:
        """A reference went out at ``seq`` (``score`` None: it shows no face)."""
        if score is not None and self._first_seq is None:
            self._first_seq = seq
        self._score = -np.inf if score is None else score

    def searching(self, seq: int) -> bool:
        """Whether frame ``seq`` may still replace the reference (worth scoring)."""
        return (
            self._first_seq is not None and seq - self._first_seq < self.search_frames
            and self.replacements < MAX_REPLACEMENTS
        )  # fmt: skip

    def better(self, seq: int, score: float) -> bool:
        """Frame ``seq`` scoring ``score`` should replace the reference (counted as a replacement)."""
        if self.searching(seq) and score > self._score + MARGIN:
            self.replacements += 1
            return True
        return False
