"""Mouth geometry: the lower face's expression as a few coefficients, and back to landmarks.

A face's landmarks L (478, 3) are brought into a canonical frame by the similarity (s, R, t)
that best maps a template face onto L at the rigid points (forehead, nose, eye corners: what
speech does not move):  x = R^T (L - t) / s.  Of the lower face (the points below the nose),

    c = B (x_low - m)                     (K,) mouth coefficients

with B (K, 3P) orthonormal rows: the principal directions in which faces move mouth and jaw,
fitted on real tracks with each clip's own mean removed (so who someone is stays out of it:
jaw opening, lip width, lip rounding, ...), m the mean lower face. The directions are ordered
by what a viewer sees of them (``visible_order``): their share of the lips' motion plus their
share of the inner-lip gap's, so the first few, which `apb` may send as hints, are the ones that
open and shape the mouth, not the ones that mostly move the chin or the cheeks. A change of coefficients dc
moves the lower-face points in the picture by  s R (B^T dc)  (x, y kept).

`apb` sends no mouth: the receiver predicts c from the call's audio (``models.mouth_fuser``),
moves the reference's lower face by the difference from the reference's own c, and warps.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .codecs.mesh_model import centre_depth, similarity_fit
from .errors import WeightsError
from .metrics import INNER_LIP_GAP, LIPS

# Forehead, nose bridge and tip, eye corners, temples (mediapipe face-mesh indices).
RIGID_POINTS = (10, 151, 9, 8, 168, 6, 197, 195, 5, 4, 1, 33, 133, 362, 263, 127, 356, 234, 454, 162, 389)
NOSE_TIP, UPPER_LIP_TOP = 1, 0
MAX_POINTS = 478
WEIGHTS_CODEC = "apb-mouth"  # what a mouth weights file says it is (``talkcodec train --codec mouth``)
MAX_HINTS = 3  # mouth coefficients an `apb` frame may carry (setting ``hints``), jaw opening first


@dataclass(frozen=True)
class MouthBasis:
    """The lower face's principal expression directions (``fit_mouth_basis``)."""

    template: np.ndarray  # (R, 3) the rigid points of a unit-RMS canonical face (y down)
    points: np.ndarray  # (P,) int64 landmark indices of the lower face
    mean: np.ndarray  # (3P,) mean canonical lower face, flattened (P, 3)
    basis: np.ndarray  # (K, 3P) orthonormal rows, the most visible first (``visible_order``)
    scale: np.ndarray  # (K,) standard deviation of each coefficient over the training frames

    @property
    def size(self) -> int:
        return len(self.basis)

    def frame(self, landmarks: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
        """(s, R, t) of (478, 3) landmarks: landmarks ~ s R x + t at the rigid points."""
        return similarity_fit(self.template, centre_depth(landmarks)[list(RIGID_POINTS)])

    def coefficients(self, landmarks: np.ndarray) -> np.ndarray:
        """(K,) mouth coefficients of (478, 3) landmarks."""
        scale, rotation, translation = self.frame(landmarks)
        canonical = (centre_depth(landmarks)[self.points] - translation) @ rotation / scale  # (P, 3)
        return self.basis @ (canonical.reshape(-1) - self.mean)

    def displacement(self, landmarks: np.ndarray, change: np.ndarray) -> np.ndarray:
        """(P, 2) picture-space motion of the lower-face points of ``landmarks`` (478, 3) when its
        coefficients change by ``change`` (K,)."""
        scale, rotation, _ = self.frame(landmarks)
        canonical = (change @ self.basis).reshape(-1, 3)  # (3P,) -> (P, 3)
        return scale * (canonical @ rotation.T)[:, :2]

    def gap_direction(self) -> np.ndarray:
        """(K,) g with canonical inner-lip gap = g . c + constant (y down: lower lip minus upper)."""
        position = {int(p): i for i, p in enumerate(self.points)}
        upper, lower = (position[p] for p in INNER_LIP_GAP)
        rows = self.basis.reshape(self.size, -1, 3)  # (K, 3P) -> (K, P, 3)
        return rows[:, lower, 1] - rows[:, upper, 1]

    def tensors(self, prefix: str = "mouth.") -> dict[str, torch.Tensor]:
        """The basis as float32 tensors (kept exact in fp16 weights files: ``save_weights(exact=)``)."""
        arrays = {"template": self.template, "points": self.points, "mean": self.mean, "basis": self.basis, "scale": self.scale}
        return {prefix + k: torch.from_numpy(np.ascontiguousarray(v, np.int64 if k == "points" else np.float32))
                for k, v in arrays.items()}  # fmt: skip

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], source: str, prefix: str = "mouth.") -> MouthBasis:
        """Read back ``tensors()``; every shape, index and value checked (a weights file is untrusted)."""
        try:
            arrays = {k: tensors[prefix + k].numpy() for k in ("template", "points", "mean", "basis", "scale")}
        except KeyError as exc:
            raise WeightsError(f"{source}: no mouth basis ({exc} missing)") from None
        points = arrays["points"]
        k = arrays["basis"].shape[0] if arrays["basis"].ndim == 2 else -1
        ok = (
            arrays["template"].shape == (len(RIGID_POINTS), 3) and points.ndim == 1 and 1 <= len(points) <= MAX_POINTS
            and points.dtype == np.int64 and bool(((points >= 0) & (points < MAX_POINTS)).all())
            and arrays["mean"].shape == (3 * len(points),) and 1 <= k <= 64
            and arrays["basis"].shape == (k, 3 * len(points)) and arrays["scale"].shape == (k,)
            and all(np.isfinite(v).all() for v in arrays.values()) and bool((arrays["scale"] > 0).all())
        )  # fmt: skip
        if not ok:
            raise WeightsError(f"{source}: malformed mouth basis")
        floats = {k: v.astype(np.float64) for k, v in arrays.items() if k != "points"}
        return cls(points=points, **floats)


def lower_face_points(template: np.ndarray) -> np.ndarray:
    """Indices of the face-mesh points (no irises) below halfway from the nose tip to the upper
    lip of a canonical face ``template`` (478, 3), y down: lips, chin, jaw, lower cheeks."""
    line = (template[NOSE_TIP, 1] + template[UPPER_LIP_TOP, 1]) / 2
    return np.flatnonzero(template[:468, 1] > line).astype(np.int64)


def fit_mouth_basis(tracks: list[np.ndarray], template: np.ndarray, k: int = 8) -> MouthBasis:
    """PCA of the canonical lower face over landmark tracks (one (T, 478, 3) array per clip, crop
    pixels), each clip's mean removed: the directions faces move in, not the faces themselves.
    ``template`` (478, 3) is a unit-RMS canonical face, y down (the mesh shape model's mean)."""
    points = lower_face_points(template)
    draft = MouthBasis(template[list(RIGID_POINTS)], points, np.zeros(3 * len(points)), np.zeros((0, 3 * len(points))), np.ones(0))
    per_clip = []
    for track in tracks:
        canonical = []
        for landmarks in track:
            scale, rotation, translation = draft.frame(landmarks)
            canonical.append(((centre_depth(landmarks)[points] - translation) @ rotation / scale).reshape(-1))
        per_clip.append(np.stack(canonical))  # (T, 3P)
    everything = np.concatenate(per_clip)
    mean = everything.mean(axis=0)
    centred = np.concatenate([c - c.mean(axis=0) for c in per_clip])  # expression only
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    basis = vt[:k]
    signs = np.sign(basis.sum(axis=1) + 1e-12)  # a fixed sign per direction, whatever the SVD chose
    basis = basis * signs[:, None]
    scale = np.maximum((centred @ basis.T).std(axis=0), 1e-6)
    fitted = MouthBasis(draft.template, points, mean, basis, scale)
    order = visible_order(fitted)
    return MouthBasis(draft.template, points, mean, basis[order], scale[order])


def visible_order(basis: MouthBasis) -> np.ndarray:
    """(K,) the directions by what they show, most first: each one's share of the lip points'
    picture-plane variance plus its share of the inner-lip gap's variance (the principal order
    ranks by the whole lower face's variance, chin, cheeks and depth included, so it put a
    direction that hardly opens the mouth third, ahead of one that carries 18 % of the gap)."""
    rows = basis.basis.reshape(basis.size, -1, 3)  # (K, 3P) -> (K, P, 3)
    lips = np.flatnonzero(np.isin(basis.points, LIPS))
    lip_variance = (rows[:, lips, :2] ** 2).sum(axis=(1, 2)) * basis.scale**2
    gap_variance = (basis.gap_direction() * basis.scale) ** 2
    share = lip_variance / lip_variance.sum() + gap_variance / max(gap_variance.sum(), 1e-12)
    return np.argsort(-share, kind="stable")
