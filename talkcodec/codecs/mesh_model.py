"""The `mesh` codec's shape model: landmarks = similarity pose of a mean face + a PCA basis.

    L = s * R @ (M + B^T c + r) + t        (478, 3) landmarks in crop pixels

with R a rotation (sent as a rotation vector in degrees), s the scale (sent as log s), t the
2D translation (z is dropped: mediapipe landmarks are weak-perspective), c the K basis
coefficients, and r the reference face's residual (identity detail the basis misses; the
receiver gets it once, with the reference image). The basis does not carry a blink (a shut
eye's aspect ratio, 0.015, comes back as 0.22), so a frame may also carry both eyes' openings,
coded by ``eyes``; the receiver sets the lids to them (``talkcodec.eyes``). The model (mean,
basis, quantization steps and entropy-coder scales) is fitted offline on real landmark tracks by ``fit_shape_model`` and
ships as ``talkcodec/data/mesh_model.safetensors``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
from scipy.spatial.transform import Rotation

from ..errors import WeightsError
from ..eyes import EYE_STEP
from ..face import eye_aspect_ratio
from ..quant import MAX_KEY_DISTANCE, VectorCoding

POSE_PARAMS = 6  # rotation vector (3, degrees), log scale, tx, ty
MAX_COEFFICIENTS = 32
DEFAULT_PATH = resources.files("talkcodec") / "data" / "mesh_model.safetensors"

# Quantization steps in physical units, before the codec's `precision` multiplier.
ROTATION_STEP_DEG = 0.2
LOG_SCALE_STEP = 0.003
TRANSLATION_STEP_PX = 0.25
COEFFICIENT_STEP_PX = 0.25  # the largest landmark displacement one coefficient step may cause


def similarity_fit(src: np.ndarray, dst: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """Least-squares s, R, t with dst ~ s R src + t (Umeyama 1991); src, dst (N, 3)."""
    mu_src, mu_dst = src.mean(axis=0), dst.mean(axis=0)
    a, b = src - mu_src, dst - mu_dst
    u, sigma, vt = np.linalg.svd(b.T @ a / len(src))
    d = np.diag([1.0, 1.0, np.sign(np.linalg.det(u @ vt))])  # no reflections
    rotation = u @ d @ vt
    scale = float(np.trace(np.diag(sigma) @ d) / (a**2).sum(axis=1).mean())
    return scale, rotation, mu_dst - scale * rotation @ mu_src


def centre_depth(landmarks: np.ndarray) -> np.ndarray:
    """mediapipe's z has an arbitrary origin; only x, y are sent, so measure z from its mean."""
    return landmarks.astype(np.float64) - np.array([0.0, 0.0, landmarks[:, 2].mean()])


def _unpose(shape: np.ndarray, template: np.ndarray) -> np.ndarray:
    """``shape`` (478, 3) brought onto ``template`` by the best similarity: R^T (x - t) / s."""
    scale, rotation, translation = similarity_fit(template, shape)
    return (shape - translation) @ rotation / scale


@dataclass(frozen=True)
class ShapeModel:
    mean: np.ndarray  # (478, 3) unit-RMS canonical face, oriented like mediapipe's canonical model
    basis: np.ndarray  # (32, 478 * 3) orthonormal rows, by decreasing variance
    step: np.ndarray  # (6 + 32,) quantization step of each parameter
    key_scale: np.ndarray  # (6 + 32,) Laplace scale of key symbols around `key_centre`, in steps
    key_centre: np.ndarray  # (6 + 32,) typical parameter values
    delta_scale: np.ndarray  # (64, 6 + 32) Laplace scale of (symbol - key symbol) by key distance
    eyes: VectorCoding  # the two eye openings (aspect ratios) a frame may carry after the parameters
    info: dict

    @classmethod
    def load(cls, path: str | Path | None = None) -> ShapeModel:
        from safetensors import SafetensorError
        from safetensors.numpy import load_file

        source = str(path or DEFAULT_PATH)
        try:
            tensors = load_file(source)
            with open(source, "rb") as f:  # metadata lives in the safetensors header
                header_len = int.from_bytes(f.read(8), "little")
                info = json.loads(json.loads(f.read(min(header_len, 1 << 20)))["__metadata__"]["info"])
            eyes = VectorCoding.from_arrays(tensors, EYES_PREFIX)
            model = cls(**{k: tensors[k].astype(np.float64) for k in _TENSORS}, eyes=eyes, info=info)
        except (OSError, SafetensorError, KeyError, ValueError) as exc:
            raise WeightsError(f"{source}: not a valid mesh shape model ({exc})") from None
        params = POSE_PARAMS + MAX_COEFFICIENTS
        expected = {"mean": (478, 3), "basis": (MAX_COEFFICIENTS, 478 * 3), "step": (params,), "key_scale": (params,),
                    "key_centre": (params,), "delta_scale": (MAX_KEY_DISTANCE, params)}  # fmt: skip
        for name, shape in expected.items():
            value = getattr(model, name)
            if value.shape != shape or not np.isfinite(value).all():
                raise WeightsError(f"{source}: tensor {name} is {value.shape}, expected finite {shape}")
        if (model.step <= 0).any() or (model.key_scale <= 0).any() or (model.delta_scale <= 0).any():
            raise WeightsError(f"{source}: quantization steps and scales must be positive")
        if eyes.step.shape != (2,):
            raise WeightsError(f"{source}: eye coding for {len(eyes.step)} values, expected 2")
        return model

    def save(self, path: str | Path) -> None:
        from safetensors.numpy import save_file

        tensors = {k: np.ascontiguousarray(getattr(self, k), dtype=np.float32) for k in _TENSORS}
        tensors.update(self.eyes.to_arrays(EYES_PREFIX))
        save_file(tensors, str(path), metadata={"info": json.dumps(self.info)})

    def analyse(self, landmarks: np.ndarray, k: int, iterations: int = 2) -> np.ndarray:
        """Parameters (6 + k,) of a (478, 3) landmark set: pose, then basis coefficients."""
        basis = self.basis[:k]
        landmarks = centre_depth(landmarks)
        template, coefficients = self.mean, np.zeros(k)
        for _ in range(iterations):
            scale, rotation, translation = similarity_fit(template, landmarks)
            canonical = (landmarks - translation) @ rotation / scale  # R^T (L - t) / s, (478, 3)
            coefficients = basis @ (canonical - self.mean).reshape(-1)
            template = self.mean + (coefficients @ basis).reshape(-1, 3)
        rotvec = Rotation.from_matrix(rotation).as_rotvec(degrees=True)
        return np.concatenate([rotvec, [np.log(scale)], translation[:2], coefficients])

    def canonical(self, params: np.ndarray) -> np.ndarray:
        """M + B^T c: the canonical (unposed) face of a parameter vector, (478, 3)."""
        k = len(params) - POSE_PARAMS
        return self.mean + (params[POSE_PARAMS:] @ self.basis[:k]).reshape(-1, 3)

    @staticmethod
    def pose(params: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
        rotation = Rotation.from_rotvec(params[:3], degrees=True).as_matrix()
        return float(np.exp(params[3])), rotation, np.array([params[4], params[5], 0.0])

    def synthesize(self, params: np.ndarray, residual: np.ndarray | None = None) -> np.ndarray:
        """Landmarks (478, 3) of a parameter vector, plus an optional canonical residual."""
        shape = self.canonical(params)
        if residual is not None:
            shape = shape + residual
        scale, rotation, translation = self.pose(params)
        return scale * shape @ rotation.T + translation

    def residual(self, landmarks: np.ndarray, params: np.ndarray) -> np.ndarray:
        """Canonical-space detail of ``landmarks`` that ``params`` do not explain, (478, 3)."""
        scale, rotation, translation = self.pose(params)
        canonical = (centre_depth(landmarks) - translation) @ rotation / scale
        return canonical - self.canonical(params)


_TENSORS = ("mean", "basis", "step", "key_scale", "key_centre", "delta_scale")
EYES_PREFIX = "eyes."


def fit_eye_coding(tracks: list[np.ndarray]) -> VectorCoding:
    """The eye openings' coding, fitted on (T, 478, 2+) landmark tracks (25 fps)."""
    return VectorCoding.fit([np.stack([eye_aspect_ratio(x) for x in track]) for track in tracks], np.full(2, EYE_STEP))


def fit_shape_model(tracks: list[np.ndarray], canonical: np.ndarray, names: list[str] | None = None) -> ShapeModel:
    """Fit the model on landmark tracks, one (T, 478, 3) array per video (crop pixels, 25 fps).

    Generalized Procrustes gives the mean (oriented like ``canonical``, the mediapipe canonical
    face, so a zero rotation is a frontal face); PCA of the aligned shapes gives the basis;
    the tracks, analysed and quantized, give the entropy coder's Laplace scales.
    """
    shapes = np.concatenate(tracks).astype(np.float64)  # (N, 478, 3)
    shapes = shapes - shapes.mean(axis=1, keepdims=True)
    shapes /= np.sqrt((shapes**2).sum(axis=2).mean(axis=1))[:, None, None]
    mean = shapes[0]
    for _ in range(5):  # generalized Procrustes
        mean = np.stack([_unpose(x, mean) for x in shapes]).mean(axis=0)
        mean /= np.sqrt((mean**2).sum(axis=1).mean())
    _, rotation, _ = similarity_fit(mean[: len(canonical)], canonical)
    mean = mean @ rotation.T  # orient like the canonical face (rotation only)
    aligned = np.stack([_unpose(x, mean) for x in shapes])
    residuals = (aligned - mean).reshape(len(aligned), -1)  # (N, 1434)
    _, _, vt = np.linalg.svd(residuals - residuals.mean(axis=0), full_matrices=False)
    basis = vt[:MAX_COEFFICIENTS]  # (32, 1434)

    # Quantization steps in physical units at the median face scale.
    eyes = fit_eye_coding(tracks)
    draft = ShapeModel(mean, basis, np.ones(POSE_PARAMS + MAX_COEFFICIENTS), *(np.ones(1),) * 3, eyes=eyes, info={})
    params = [np.stack([draft.analyse(x, MAX_COEFFICIENTS) for x in track]) for track in tracks]
    all_params = np.concatenate(params)
    face_scale = float(np.exp(np.median(all_params[:, 3])))
    largest_move = np.linalg.norm(basis.reshape(MAX_COEFFICIENTS, -1, 3), axis=2).max(axis=1)  # (32,)
    step = np.concatenate(
        [[ROTATION_STEP_DEG] * 3, [LOG_SCALE_STEP], [TRANSLATION_STEP_PX] * 2, COEFFICIENT_STEP_PX / (face_scale * largest_move)]
    )
    coding = VectorCoding.fit(params, step)  # entropy-coder statistics of the quantized tracks
    info = {"fitted_on": names or [], "frames": len(shapes), "face_scale_px": face_scale}
    return ShapeModel(mean, basis, step, coding.key_scale, coding.key_centre * step, coding.delta_scale, eyes, info)


def landmark_tracks(path: str | Path, fps: float = 25.0, max_seconds: float | None = None) -> list[np.ndarray]:
    """Landmark tracks (T, 478, 3) of a video, split wherever the face is lost or the crop moves."""
    from ..face import FaceTracker
    from ..video import read_frames

    tracks: list[np.ndarray] = []
    current: list[np.ndarray] = []
    with FaceTracker(segmentation=False, pose=False) as tracker:
        for frame in read_frames(path, fps=fps, max_seconds=max_seconds):
            observation = tracker.process(frame)
            if (observation.landmarks is None or observation.crop_changed) and current:
                tracks.append(np.stack(current))
                current = []
            if observation.landmarks is not None:
                current.append(observation.landmarks)
    if current:
        tracks.append(np.stack(current))
    return tracks
