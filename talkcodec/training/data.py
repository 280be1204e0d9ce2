"""Training and validation samples from the clip cache: (source, driving) pairs of one clip.

Split (say it in every figure): clips named in ``Split.held_out`` are never trained on (new
faces); of every other clip, the last ``Split.tail`` of its frames is held out too (same person,
later in time). Training pairs come from the remaining head of each training clip.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

from ..audio import MelSettings
from ..errors import InputError
from ..face import CROP_SIZE, HeadPoseEstimator
from ..warp import PiecewiseAffineWarp

SILENCE = float(np.log(1e-6))


@dataclass(frozen=True)
class Split:
    held_out: tuple[str, ...] = ("vr_face2", "lp_d3", "sadtalker_katiehill")  # whole clips never trained on
    tail: float = 0.2  # the last 20 % of every training clip is validation


@dataclass(frozen=True)
class Augment:
    """Photometric and geometric jitter, the same for a pair's source and driving frames."""

    colour: float = 0.1  # brightness / contrast / saturation amplitude
    zoom: float = 0.08  # random scale in [1 - zoom, 1 + zoom]
    shift: float = 0.04  # random shift, fraction of the crop
    flip: bool = True  # horizontal mirror (only where the targets stay valid)


class ClipFrames:
    """One cached clip (``cache.py``), read without pickle; frames decoded on demand."""

    def __init__(self, path: str | Path):
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
        self.name = Path(path).stem
        self.jpeg, self.offsets = arrays["jpeg"], arrays["offsets"]
        self.landmarks3d = arrays["landmarks"].astype(np.float32)  # (N, 478, 3) crop px, z relative
        if self.landmarks3d.ndim != 3 or self.landmarks3d.shape[1:] != (478, 3):
            raise InputError(f"{path}: landmarks of shape {self.landmarks3d.shape[1:]}, expected (478, 3); rebuild the cache")
        self.landmarks = self.landmarks3d[:, :, :2]  # (N, 478, 2)
        self.face = arrays["face"]  # (N,)
        self.pose, self.blink = arrays["pose"], arrays["blink"]  # (N, 3), (N, 2)
        self.mel, self.has_audio = arrays["mel"].astype(np.float32), bool(arrays["has_audio"])  # (80, T)
        if len(self.offsets) != len(self.face) + 1 or len(self.landmarks) != len(self.face):
            raise InputError(f"{path}: inconsistent cache file")

    def __len__(self) -> int:
        return len(self.face)

    def image(self, index: int) -> np.ndarray:
        """(256, 256, 3) uint8 RGB."""
        data = self.jpeg[self.offsets[index] : self.offsets[index + 1]]
        bgr = cv2.imdecode(data, cv2.IMREAD_COLOR)
        if bgr is None:
            raise InputError(f"{self.name}: frame {index} does not decode")
        return bgr[:, :, ::-1]

    def mel_window(self, index: int, fps: float, settings: MelSettings) -> np.ndarray:
        """(n_mels, steps) log-mel window of frame ``index`` (silence outside the audio)."""
        steps = settings.steps
        start = int(round((index / fps + settings.lookahead_s - settings.window_s) / settings.hop_s))
        out = np.full((self.mel.shape[0], steps), SILENCE, np.float32)
        lo, hi = max(start, 0), min(start + steps, self.mel.shape[1])
        if hi > lo:
            out[:, lo - start : hi - start] = self.mel[:, lo:hi]
        return out


def load_clips(cache_dir: str | Path, names: list[str] | None = None) -> list[ClipFrames]:
    paths = sorted(Path(cache_dir).glob("*.npz"))
    clips = [ClipFrames(p) for p in paths if names is None or p.stem in names]
    if not clips:
        raise InputError(f"{cache_dir}: no cached clips")
    return clips


def _geometry(rng: np.random.Generator, augment: Augment | None, size: int) -> np.ndarray | None:
    """A random 2x3 affine of the ``size``-px network input (zoom about the centre, shift,
    mirror), or None without augmentation."""
    if augment is None:
        return None
    zoom = 1 + rng.uniform(-augment.zoom, augment.zoom)
    shift = rng.uniform(-augment.shift, augment.shift, 2) * size
    centre = (size - 1) / 2
    matrix = np.array([[zoom, 0, centre * (1 - zoom) + shift[0]], [0, zoom, centre * (1 - zoom) + shift[1]]])
    if augment.flip and rng.random() < 0.5:
        matrix[0] = -matrix[0]
        matrix[0, 2] += size - 1
    return matrix


def rescale_affine(matrix: np.ndarray, size: int, new_size: int) -> np.ndarray:
    """The same 2x3 pixel affine for an image of ``new_size`` px instead of ``size`` (pixel centres aligned)."""
    r = size / new_size  # new px -> old px: x_old = r * x_new + (r - 1) / 2
    to_old = np.array([[r, 0, (r - 1) / 2], [0, r, (r - 1) / 2], [0, 0, 1]])
    to_new = np.linalg.inv(to_old)
    return (to_new @ np.vstack([matrix, [0, 0, 1]]) @ to_old)[:2]


def _colour(image: np.ndarray, rng: np.random.Generator, amount: float) -> np.ndarray:
    """float32 (H, W, 3) in [0, 1] with brightness, contrast and saturation jitter."""
    brightness, contrast, saturation = 1 + rng.uniform(-amount, amount, 3)
    grey = image.mean(axis=2, keepdims=True)
    image = grey + (image - grey) * saturation
    image = (image - image.mean()) * contrast + image.mean()
    return np.clip(image * brightness, 0, 1)


def frame_input(clip: ClipFrames, index: int, size: int, matrix: np.ndarray | None,
                colour: tuple[np.random.Generator, float] | None, picture: np.ndarray | None = None) -> np.ndarray:  # fmt: skip
    """(3, S, S) float32 in [0, 1]: one frame at ``size`` px, through the augmentation ``matrix``
    (the same for a pair's frames); ``picture``: a (256, 256, 3) image instead of the cached frame."""
    picture = clip.image(index) if picture is None else picture
    image = cv2.resize(picture, (size, size), interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0
    if matrix is not None:
        image = cv2.warpAffine(image, matrix, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    if colour is not None:
        image = _colour(image, *colour).astype(np.float32)
    return image.transpose(2, 0, 1).copy()  # (H, W, 3) -> (3, H, W)


class PairDataset(torch.utils.data.Dataset):
    """``length`` random (source, driving) pairs per epoch from frame ranges of cached clips.

    ``ranges``: (clip index, first frame, end frame) spans pairs may come from. ``pairs``
    instead gives a fixed list of (clip index, source frame, driving frame) (validation).
    """

    def __init__(
        self, clips: list[ClipFrames], size: int, mel: MelSettings, fps: float = 25.0,
        ranges: list[tuple[int, int, int]] | None = None, pairs: list[tuple[int, int, int]] | None = None,
        length: int = 1000, augment: Augment | None = None, seed: int = 0,
        full_size: int | None = None, posed: bool = False,
    ):  # fmt: skip
        self.clips, self.size, self.mel, self.fps = clips, size, mel, fps
        self.full_size = full_size  # also give source_full / driving_full at this size (the full-resolution blend)
        # the source is the source frame moved to the driving frame's head pose (``apb``'s posed reference)
        self.posed = posed
        self._warp = PiecewiseAffineWarp(CROP_SIZE) if posed else None
        self.augment, self.seed, self.epoch = augment, seed, 0
        self.pairs = pairs
        if pairs is None:
            self.ranges = [(c, a, b) for c, a, b in (ranges or []) if b - a >= 2]
            if not self.ranges:
                raise InputError("no clip has enough frames to train on")
            self.weights = np.array([b - a for _, a, b in self.ranges], np.float64)
            self.weights /= self.weights.sum()
            self.length = length
        else:
            self.length = len(pairs)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.length

    def _pick(self, rng: np.random.Generator) -> tuple[int, int, int]:
        clip_index, first, end = self.ranges[rng.choice(len(self.ranges), p=self.weights)]
        face = self.clips[clip_index].face[first:end]
        candidates = np.flatnonzero(face) + first if face.any() else np.arange(first, end)
        source, driving = rng.choice(candidates, 2)
        return clip_index, int(source), int(driving)

    def __getitem__(self, item: int) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng((self.seed, self.epoch, item))
        clip_index, source, driving = self.pairs[item] if self.pairs is not None else self._pick(rng)
        clip = self.clips[clip_index]
        matrix = _geometry(rng, self.augment, self.size)
        flip = matrix is not None and matrix[0, 0] < 0

        def colour() -> tuple[np.random.Generator, float] | None:  # the same colour jitter for every image of the pair
            return (np.random.default_rng((self.seed, self.epoch, item, 1)), self.augment.colour) if self.augment else None

        picture = self._posed(clip, source, driving) if self.posed else None
        src = frame_input(clip, source, self.size, matrix, colour(), picture)
        drv = frame_input(clip, driving, self.size, matrix, colour())
        pose, blink = clip.pose[driving].copy(), clip.blink[driving].copy()
        if flip:
            pose[[0, 2]] *= -1  # mirrored yaw and roll
            blink = blink[::-1].copy()
        sample = {
            "source": src, "driving": drv,
            "landmarks": clip.landmarks[driving] / CROP_SIZE * 2 - 1,  # (478, 2) in [-1, 1] of the crop, un-augmented
            "mel": clip.mel_window(driving, self.fps, self.mel), "pose": pose, "blink": blink,
            "face": np.array(bool(clip.face[driving])),
        }  # fmt: skip
        if self.full_size is not None:
            full = None if matrix is None else rescale_affine(matrix, self.size, self.full_size)
            for key, index, image in (("source_full", source, picture), ("driving_full", driving, None)):
                sample[key] = frame_input(clip, index, self.full_size, full, colour(), image)
        return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in sample.items()}

    def _posed(self, clip: ClipFrames, source: int, driving: int) -> np.ndarray | None:
        """The source frame warped to the driving frame's 6-DoF head pose and eye openings, exactly
        as an `apb` receiver moves its reference (``codecs.posed.posed_landmarks``); None without both faces."""
        from ..codecs.posed import landmark_vector, posed_landmarks

        if not (clip.face[source] and clip.face[driving]):
            return None
        head = HeadPoseEstimator(CROP_SIZE)
        moved = posed_landmarks(clip.landmarks[source], head, *(landmark_vector(clip.landmarks[i], head) for i in (source, driving)))
        assert self._warp is not None
        return self._warp(clip.image(source), clip.landmarks[source], moved)


def split_ranges(clips: list[ClipFrames], split: Split) -> tuple[list[tuple[int, int, int]], list[tuple[int, int, int]], list[int]]:
    """(training ranges, same-person tail ranges, indices of held-out clips)."""
    train, tail, unseen = [], [], []
    for i, clip in enumerate(clips):
        if clip.name in split.held_out:
            unseen.append(i)
            continue
        cut = int(round(len(clip) * (1 - split.tail)))
        train.append((i, 0, cut))
        tail.append((i, cut, len(clip)))
    return train, tail, unseen


def validation_pairs(
    clips: list[ClipFrames], split: Split, per_clip: int = 4
) -> dict[str, list[tuple[int, int, int]]]:
    """Fixed validation pairs: the source is the clip's first frame with a face (the codec's
    reference); drivers are evenly spaced over the tail ("tail") or the whole held-out clip ("unseen")."""
    _, tail, unseen = split_ranges(clips, split)
    out: dict[str, list[tuple[int, int, int]]] = {"tail": [], "unseen": []}
    spans = [("tail", c, a, b) for c, a, b in tail] + [("unseen", c, 0, len(clips[c])) for c in unseen]
    for kind, c, a, b in spans:
        faces = np.flatnonzero(clips[c].face)
        if len(faces) == 0 or b - a < 1:
            continue
        drivers = [d for d in np.linspace(a, b - 1, per_clip).round().astype(int) if clips[c].face[d]]
        out[kind] += [(c, int(faces[0]), int(d)) for d in drivers]
    return out
