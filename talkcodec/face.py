"""Face front end: mediapipe face mesh + selfie segmentation, a stable 256x256 crop, head pose
and blink, frame by frame.

The crop is fixed from the first detection (a square widened from the face box to head and
shoulders, as talking-head datasets crop) and only moves when the face drifts far from its
centre, changes size a lot, or is found again after being lost: then ``crop_changed`` is set
and codecs send a fresh reference image, since a moved crop invalidates the old one.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources

import cv2
import numpy as np
from scipy.spatial.transform import Rotation

CROP_SIZE = 256  # the crop landmarks are found in; every landmark a codec sends or keeps is in its pixels
MAX_SIZE = 512  # the largest face a codec draws (its ``size`` setting): the reference grows, the frames do not
NUM_LANDMARKS = 478  # 468 mesh points + 10 iris points (refine_landmarks=True)

# Eye contours for the eye aspect ratio: (corner, top, top, corner, bottom, bottom) per eye.
RIGHT_EYE = (33, 160, 158, 133, 153, 144)  # the subject's right eye (image left)
LEFT_EYE = (362, 385, 387, 263, 373, 380)
# Inner lip contour, in order around the mouth opening.
INNER_LIPS = (78, 191, 80, 81, 82, 13, 312, 311, 310, 415, 308, 324, 318, 402, 317, 14, 87, 178, 88, 95)


@dataclass(frozen=True)
class CropSettings:
    size: int = CROP_SIZE  # output side in pixels
    widen: float = 1.9  # crop side / larger side of the face-landmark box
    shift_down: float = 0.10  # centre moves down by this x face height (towards the shoulders)
    recentre_at: float = 0.22  # recentre when the face centre drifts this far (x crop side)
    rescale_at: float = 1.4  # ... or the face size changes by this factor
    track: bool = True  # False: frames are already face crops; use each whole (a centred square)


@dataclass
class FaceObservation:
    """What the front end saw in one frame. Landmark units: crop pixels (z scaled like x)."""

    crop: np.ndarray  # (S, S, 3) uint8 RGB
    landmarks: np.ndarray | None  # (478, 3) float32, None when no face
    mask: np.ndarray | None = None  # (S, S) float32 in [0, 1], person segmentation
    pose: np.ndarray | None = None  # (3,) yaw, pitch, roll in degrees
    position: np.ndarray | None = None  # (3,) head position from the camera, canonical-face units (cm): x right, y down, z away
    blink: np.ndarray | None = None  # (2,) eye aspect ratio, right and left eye
    crop_box: tuple[float, float, float] = (0.0, 0.0, 0.0)  # centre x, centre y, side (source px)
    crop_changed: bool = False  # the crop moved since the previous frame
    face_lost: bool = field(init=False)

    def __post_init__(self) -> None:
        self.face_lost = self.landmarks is None


@contextlib.contextmanager
def _native_stderr_silenced() -> Iterator[None]:
    """mediapipe's C++ side logs start-up notices straight to fd 2; hide them, not Python's."""
    try:
        saved = os.dup(2)
    except OSError:  # no usable stderr: nothing to hide
        yield
        return
    with open(os.devnull, "wb") as devnull:
        os.dup2(devnull.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def _quiet_mediapipe():
    """Import mediapipe with its C++ logging and protobuf deprecation noise turned down."""
    os.environ.setdefault("GLOG_minloglevel", "2")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import mediapipe as mp
    warnings.filterwarnings("ignore", message=r"SymbolDatabase\.GetPrototype", category=UserWarning)
    return mp


@lru_cache(maxsize=1)
def canonical_face_model() -> np.ndarray:
    """MediaPipe's canonical face (468, 3) in OpenCV camera axes (x right, y down, z away), cm."""
    path = resources.files("talkcodec") / "data" / "canonical_face_model.txt"
    vertices = np.loadtxt(str(path), dtype=np.float64)  # (468, 3), +Y up, +Z towards the viewer
    return vertices * np.array([1.0, -1.0, -1.0])


def aspect_ratio(p: np.ndarray) -> np.ndarray:
    """(..., 6, 2) eye points p1..p6 -> (...,) (|p2-p6| + |p3-p5|) / (2 |p1-p4|)."""
    vertical = np.linalg.norm(p[..., 1, :] - p[..., 5, :], axis=-1) + np.linalg.norm(p[..., 2, :] - p[..., 4, :], axis=-1)
    return vertical / np.maximum(2.0 * np.linalg.norm(p[..., 0, :] - p[..., 3, :], axis=-1), 1e-6)


def eye_aspect_ratio(landmarks: np.ndarray) -> np.ndarray:
    """(right, left) eye aspect ratio of (478, 2+) landmarks; ~0.3 open, <0.15 shut."""
    return np.array([aspect_ratio(landmarks[list(eye), :2]) for eye in (RIGHT_EYE, LEFT_EYE)], dtype=np.float32)


@lru_cache(maxsize=1)
def mesh_edges() -> np.ndarray:
    """(2556, 2) landmark index pairs of the face-mesh tessellation (mediapipe's)."""
    mp = _quiet_mediapipe()
    return np.array(sorted(mp.solutions.face_mesh_connections.FACEMESH_TESSELATION), dtype=np.int32)


def rasterize_mesh(landmarks: np.ndarray, size: int = CROP_SIZE) -> np.ndarray:
    """(size, size) float32 in [0, 1]: the face mesh drawn as anti-aliased lines (AVFR-GAN's
    structural prior). ``landmarks`` (478, 2+) are in pixels of a ``CROP_SIZE`` crop."""
    raster = np.zeros((size, size), np.uint8)
    points = np.rint(landmarks[:, :2] * (size / CROP_SIZE) * 16).astype(np.int32)  # 4 fractional bits
    lines = points[mesh_edges()]  # (E, 2 ends, 2 coords)
    cv2.polylines(raster, list(lines), False, 255, 1, cv2.LINE_AA, shift=4)
    return raster.astype(np.float32) / 255.0


class HeadPoseEstimator:
    """Yaw, pitch, roll from 2D landmarks against the canonical face with ``cv2.solvePnP``."""

    def __init__(self, image_size: int = CROP_SIZE, focal: float | None = None):
        f = focal or float(image_size)  # ~53 degree field of view across the crop
        c = image_size / 2.0
        self.camera = np.array([[f, 0, c], [0, f, c], [0, 0, 1]], dtype=np.float64)
        self._rvec: np.ndarray | None = None
        self._tvec: np.ndarray | None = None

    def __call__(self, landmarks: np.ndarray) -> np.ndarray:
        """(3,) yaw, pitch, roll in degrees."""
        return self.solve(landmarks)[0]

    def solve(self, landmarks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The head's 6-DoF pose: (3,) yaw, pitch, roll in degrees, and (3,) its position (cm, camera
        axes). Consecutive calls start from the previous solution (a video's frames)."""
        model = canonical_face_model()
        image_points = landmarks[: len(model), :2].astype(np.float64)
        guess = self._rvec is not None
        ok, rvec, tvec = cv2.solvePnP(
            model, image_points, self.camera, None,
            None if self._rvec is None else self._rvec.copy(), None if self._tvec is None else self._tvec.copy(),
            useExtrinsicGuess=guess, flags=cv2.SOLVEPNP_ITERATIVE,
        )  # fmt: skip
        if not ok:  # a frontal head straight ahead, 50 cm away (about a face filling the crop)
            self._rvec = self._tvec = None
            return np.zeros(3, dtype=np.float32), np.array([0.0, 0.0, 50.0], dtype=np.float32)
        self._rvec, self._tvec = rvec, tvec
        rotation, _ = cv2.Rodrigues(rvec)
        pitch, yaw, roll = cv2.RQDecomp3x3(rotation)[0]
        return np.array([yaw, pitch, roll], dtype=np.float32), tvec.ravel().astype(np.float32)

    def project(self, angles: np.ndarray, position: np.ndarray) -> np.ndarray:
        """Where the canonical face's 468 vertices land in the image, (468, 2) pixels, for a head at
        ``angles`` (yaw, pitch, roll in degrees, as ``solve`` gives them) and ``position``."""
        yaw, pitch, roll = (float(a) for a in angles)
        rotation = Rotation.from_euler("xyz", [pitch, yaw, roll], degrees=True).as_matrix()  # inverts RQDecomp3x3
        points, _ = cv2.projectPoints(canonical_face_model(), cv2.Rodrigues(rotation)[0],
                                      np.asarray(position, np.float64).reshape(3, 1), self.camera, None)  # fmt: skip
        return points[:, 0, :]  # (468, 1, 2) -> (468, 2)


def square_box(points: np.ndarray, settings: CropSettings, frame_size: tuple[int, int]) -> tuple[float, float, float]:
    """Head-and-shoulders square (centre x, centre y, side) around landmark points (N, 2), always
    inside the frame (width, height), as a camera app frames it: moved in, and on a close-up (the
    face fills the picture) shrunk to the frame's shorter side. Nothing past the picture's edge
    is ever shown (it would be smeared edge pixels)."""
    lo, hi = points.min(axis=0), points.max(axis=0)
    width, height = hi - lo
    w, h = frame_size
    side = min(settings.widen * max(width, height), w, h)
    cx, cy = (lo + hi) / 2.0
    cy += settings.shift_down * height
    cx = min(max(cx, side / 2), w - side / 2)
    cy = min(max(cy, side / 2), h - side / 2)
    return float(cx), float(cy), float(side)


def crop_square(frame: np.ndarray, box: tuple[float, float, float], size: int) -> np.ndarray:
    """Cut the square ``box`` out of ``frame`` resized to ``size``; edges past the frame replicate."""
    cx, cy, side = box
    scale = size / side
    matrix = np.array([[scale, 0, size / 2 - cx * scale], [0, scale, size / 2 - cy * scale]])
    interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    return cv2.warpAffine(frame, matrix, (size, size), flags=interpolation, borderMode=cv2.BORDER_REPLICATE)


class FaceTracker:
    """Runs the front end on consecutive frames of one video (it keeps tracking state)."""

    def __init__(self, settings: CropSettings | None = None, segmentation: bool = True, pose: bool = True):
        mp = _quiet_mediapipe()
        self.settings = settings or CropSettings()
        with _native_stderr_silenced():
            self._build(mp, segmentation, pose)
            blank = np.zeros((self.settings.size, self.settings.size, 3), np.uint8)
            for graph in (self._finder, self._mesh, self._segmenter, self._far_detector):
                if graph is not None:
                    graph.process(blank)  # first inferences log notices: have them now, hidden
        self.box: tuple[float, float, float] | None = None
        self._face_height: float = 0.0
        self._anchor = np.full(2, self.settings.size / 2.0)  # face centre in the crop when it was set

    def _build(self, mp, segmentation: bool, pose: bool) -> None:
        self._mesh = mp.solutions.face_mesh.FaceMesh(
            static_image_mode=False, max_num_faces=1, refine_landmarks=True,
            min_detection_confidence=0.5, min_tracking_confidence=0.5,
        )  # fmt: skip
        self._finder = mp.solutions.face_mesh.FaceMesh(
            static_image_mode=True, max_num_faces=1, refine_landmarks=True, min_detection_confidence=0.5
        )
        self._far_detector = mp.solutions.face_detection.FaceDetection(model_selection=1, min_detection_confidence=0.5)
        self._segmenter = mp.solutions.selfie_segmentation.SelfieSegmentation(model_selection=0) if segmentation else None
        self._pose = HeadPoseEstimator(self.settings.size) if pose else None

    def close(self) -> None:
        self._mesh.close()
        self._finder.close()
        self._far_detector.close()
        if self._segmenter is not None:
            self._segmenter.close()

    def __enter__(self) -> FaceTracker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @staticmethod
    def _landmarks(result, width: int, height: int) -> np.ndarray | None:
        if not result.multi_face_landmarks:
            return None
        points = result.multi_face_landmarks[0].landmark
        xyz = np.array([(p.x, p.y, p.z) for p in points], dtype=np.float32)  # (478, 3) normalised
        return xyz * np.array([width, height, width], dtype=np.float32)

    def detect(self, frame: np.ndarray) -> np.ndarray | None:
        """Landmarks (478, 3) in source pixels from a one-off full-frame detection, or None.

        Face mesh's own detector misses faces that are small in the frame (a wide shot); then
        the full-range face detector finds the face and the mesh runs on a square around it.
        """
        h, w = frame.shape[:2]
        found = self._landmarks(self._finder.process(frame), w, h)
        if found is not None:
            return found
        detections = self._far_detector.process(frame).detections
        if not detections:
            return None
        box = detections[0].location_data.relative_bounding_box
        side = 2.5 * max(box.width * w, box.height * h)
        region = (box.xmin * w + box.width * w / 2, box.ymin * h + box.height * h / 2, side)
        size = self.settings.size
        crop = crop_square(frame, region, size)
        found = self._landmarks(self._finder.process(crop), size, size)
        if found is None:
            return None
        cx, cy, _ = region
        return found * (side / size) + np.array([cx - side / 2, cy - side / 2, 0.0], dtype=np.float32)

    def _set_box(self, source_landmarks: np.ndarray, frame: np.ndarray) -> None:
        self.box = square_box(source_landmarks[:, :2], self.settings, (frame.shape[1], frame.shape[0]))
        self._face_height = float(np.ptp(source_landmarks[:, 1]))
        cx, cy, side = self.box
        centre = (source_landmarks[:, :2].min(axis=0) + source_landmarks[:, :2].max(axis=0)) / 2.0
        self._anchor = (centre - np.array([cx - side / 2, cy - side / 2])) * self.settings.size / side

    def _drifted(self, landmarks: np.ndarray) -> bool:
        s = self.settings
        centre = (landmarks[:, :2].min(axis=0) + landmarks[:, :2].max(axis=0)) / 2.0
        if np.abs(centre - self._anchor).max() > s.recentre_at * s.size:
            return True
        assert self.box is not None
        height = float(np.ptp(landmarks[:, 1])) * self.box[2] / s.size  # in source pixels
        ratio = height / max(self._face_height, 1e-6)
        return not (1 / s.rescale_at < ratio < s.rescale_at)

    def process(self, frame: np.ndarray) -> FaceObservation:
        """Front end for one (H, W, 3) uint8 RGB frame of the video."""
        if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
            raise ValueError(f"expected an (H, W, 3) uint8 RGB frame, got {frame.shape} {frame.dtype}")
        frame = np.ascontiguousarray(frame)
        size = self.settings.size
        changed = False
        if self.box is None and not self.settings.track:
            h, w = frame.shape[:2]
            self.box, changed = (w / 2, h / 2, float(min(w, h))), True
        if self.box is None:
            found = self.detect(frame)
            h, w = frame.shape[:2]
            if found is None:  # no face yet: a centred square, tried again next frame
                crop = crop_square(frame, (w / 2, h / 2, min(w, h)), size)
                return FaceObservation(crop=crop, landmarks=None, crop_box=(w / 2, h / 2, min(w, h)))
            self._set_box(found, frame)
            changed = True
        crop = crop_square(frame, self.box, size)
        landmarks = self._landmarks(self._mesh.process(crop), size, size)
        if not self.settings.track:
            pass  # the caller cropped: never move
        elif landmarks is not None and self._drifted(landmarks):
            landmarks = None  # fall through to a full-frame search and a new crop
        if landmarks is None and self.settings.track:
            found = self.detect(frame)
            if found is not None:
                self._set_box(found, frame)
                changed = True
                crop = crop_square(frame, self.box, size)
                landmarks = self._landmarks(self._mesh.process(crop), size, size)
        assert self.box is not None
        observation = FaceObservation(crop=crop, landmarks=landmarks, crop_box=self.box, crop_changed=changed)
        if self._segmenter is not None:
            observation.mask = self._segmenter.process(crop).segmentation_mask.astype(np.float32)
        if landmarks is not None:
            observation.blink = eye_aspect_ratio(landmarks)
            if self._pose is not None:
                observation.pose, observation.position = self._pose.solve(landmarks)
        return observation
