"""Training `apb`'s mouth: the mouth basis (PCA, no learning) and the mouth fuser (audio -> mouth).

Data: the clip cache (``cache.py``). Split by person (``data.Split``): the held-out clips are
never trained on; of the others, the last 20 % of frames is validation too. Samples are
(frame t, reference r) of one clip: the fuser reads frame t's log-mel window (the audio after an
Opus round trip, what a receiver hears), pose and blink, and the reference frame's mouth
coefficients, and predicts frame t's. Loss: the paper's geometry loss (eq. 6), L1 over the
lower-face landmarks the coefficients make, plus the same on the inner-lip gap (what lip-sync
measures). Vectors only, no images: thousands of steps a minute on a CPU.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from ..audio import MelSettings
from ..codecs.mesh_model import ShapeModel
from ..errors import InputError, TalkcodecError
from ..metrics import correlation
from ..models.config import bounded, config_from_dict
from ..models.mouth_fuser import MouthFuser, MouthFuserConfig
from ..mouth import MAX_HINTS, WEIGHTS_CODEC, MouthBasis, fit_mouth_basis
from ..quant import VectorCoding
from ..weights import module_tensors, save_weights
from .data import ClipFrames, Split, load_clips

HINT_STEP_PX = 0.25  # the largest lower-face move one hint step may cause, at the median face size
QUIET_AUDIO = 0.5  # a clip whose log-mel varies less than this (std) has no speech to learn from
# People never trained on: the codecs' held-out clips (lp_d3's audio track is silent) and four
# speakers of the second clip set (which the shipped avfr and apb networks never saw either).
HELD_OUT = (*Split().held_out, "latentsync_demo1", "tpsmm_driving", "w2lgfpgan_kim7s", "lipreaddl_sample")


@dataclass
class MouthTrainConfig:
    steps: int = bounded(1500, 1, 10**7)  # unseen lip-sync peaks at 1,000-1,500 steps, then it overfits
    batch_size: int = bounded(64, 1, 65536)
    lr: float = bounded(1e-3, 1e-7, 1.0)
    weight_decay: float = bounded(1e-4, 0.0, 1.0)
    gap_weight: float = bounded(4.0, 0.0, 1000.0)  # the inner-lip gap's term against the landmarks'
    mel_gain_db: float = bounded(6.0, 0.0, 40.0)  # random loudness change, +- dB
    coefficients: int = bounded(8, 1, 32)
    seed: int = bounded(0, 0, 2**31)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> MouthTrainConfig:
        return config_from_dict(cls, d)


@dataclass
class ClipMouth:
    """One clip's samples: per frame, the mel window, pose, blink and mouth coefficients."""

    name: str
    mel: np.ndarray  # (N, n_mels, steps) float16
    pose: np.ndarray  # (N, 3)
    blink: np.ndarray  # (N, 2)
    coefficients: np.ndarray  # (N, K), NaN where no face
    landmarks: np.ndarray  # (N, 478, 3)

    def frames(self, start: float, end: float) -> np.ndarray:
        """Indices with a face in [start, end) of the clip (fractions of its length)."""
        n = len(self.pose)
        index = np.arange(int(start * n), int(end * n))
        return index[np.isfinite(self.coefficients[index, 0])]


def speaks(clip: ClipFrames) -> bool:
    return clip.has_audio and float(clip.mel.std()) > QUIET_AUDIO


def clip_samples(clip: ClipFrames, basis: MouthBasis, mel: MelSettings, fps: float = 25.0) -> ClipMouth:
    n = len(clip)
    coefficients = np.full((n, basis.size), np.nan)
    for i in np.flatnonzero(clip.face):
        coefficients[i] = basis.coefficients(clip.landmarks3d[i])
    windows = np.stack([clip.mel_window(i, fps, mel) for i in range(n)]).astype(np.float16)
    return ClipMouth(clip.name, windows, clip.pose, clip.blink, coefficients, clip.landmarks3d)


class MouthLoss:
    """Eq. 6 on the lower face + the inner-lip gap term, from normalised coefficients."""

    def __init__(self, basis: MouthBasis, gap_weight: float):
        scale = torch.tensor(basis.scale, dtype=torch.float32)
        self.points = torch.tensor(basis.basis, dtype=torch.float32) * scale[:, None]  # (K, 3P): unit -> canonical
        self.gap = torch.tensor(basis.gap_direction(), dtype=torch.float32) * scale  # (K,)
        self.gap_weight = gap_weight

    def __call__(self, predicted: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        error = predicted - target  # (B, K)
        landmark = (error @ self.points).abs().mean()
        gap = (error @ self.gap).abs().mean()
        total = landmark + self.gap_weight * gap
        return total, {"landmark": landmark.item(), "gap": gap.item()}


def predict(model: MouthFuser, clip: ClipMouth, basis: MouthBasis, reference: int, frames: np.ndarray) -> np.ndarray:
    """(len(frames), K) coefficients the fuser predicts over ``reference``'s mouth."""
    scale = torch.tensor(basis.scale, dtype=torch.float32)
    ref = torch.tensor(clip.coefficients[reference], dtype=torch.float32) / scale
    with torch.inference_mode():
        out = model(torch.from_numpy(clip.mel[frames].astype(np.float32)), torch.from_numpy(clip.pose[frames]),
                    torch.from_numpy(clip.blink[frames]), ref.expand(len(frames), -1))  # fmt: skip
    return (out * scale).numpy().astype(np.float64)


def smooth(coefficients: np.ndarray, memory: float) -> np.ndarray:
    """Causal one-pole smoothing over frames (T, K): y_t = memory * y_(t-1) + (1 - memory) * x_t."""
    out = coefficients.copy()
    for t in range(1, len(out)):
        out[t] = memory * out[t - 1] + (1 - memory) * coefficients[t]
    return out


def score_clip(clip: ClipMouth, basis: MouthBasis, frames: np.ndarray, predicted: np.ndarray) -> dict[str, Any]:
    """The lip gap's correlation with the truth (the bench's lip-sync, on the landmarks the
    coefficients make) and the lip landmarks' mean distance / inter-ocular distance, of the
    (len(frames), K) ``predicted`` coefficients of ``frames``."""
    from ..metrics import LIPS, inter_ocular

    g = basis.gap_direction()
    truth = clip.coefficients[frames]
    lips = [int(np.flatnonzero(basis.points == p)[0]) for p in LIPS if p in basis.points]
    distance = []
    for i, frame in enumerate(frames):
        moved = basis.displacement(clip.landmarks[frame], predicted[i] - truth[i])[lips]  # (40, 2) px
        distance.append(np.linalg.norm(moved, axis=1).mean() / inter_ocular(clip.landmarks[frame][None, :, :2])[0])
    return {"lip_sync": correlation(truth @ g, predicted @ g), "mouth_landmark": float(np.mean(distance))}


def evaluate(model: MouthFuser, clips: list[ClipMouth], basis: MouthBasis, start: float, end: float,
             memory: float = 0.0) -> dict[str, Any]:  # fmt: skip
    """Per clip and mean: the lip gap's correlation with the truth (the bench's lip-sync, on the
    landmarks the coefficients make) and the lip landmarks' distance / inter-ocular distance,
    with the first frame of the range as the reference (the bench's protocol): ``score_clip``."""
    model.eval()
    per_clip = {}
    for clip in clips:
        frames = clip.frames(start, end)
        if len(frames) < 10:
            continue
        predicted = smooth(predict(model, clip, basis, int(frames[0]), frames), memory)
        per_clip[clip.name] = {**score_clip(clip, basis, frames, predicted), "frames": len(frames)}
    model.train()
    syncs = [v["lip_sync"] for v in per_clip.values() if v["lip_sync"] is not None]
    return {"lip_sync": float(np.mean(syncs)) if syncs else None,
            "mouth_landmark": float(np.mean([v["mouth_landmark"] for v in per_clip.values()])) if per_clip else None,
            "clips": per_clip}  # fmt: skip


@dataclass
class MouthData:
    basis: MouthBasis
    train: list[ClipMouth]  # speaking clips trained on (their first 80 %)
    unseen: list[ClipMouth]  # speaking clips of people never trained on
    head: float  # the fraction of a training clip trained on


def mouth_data(cache_dir: str | Path, coefficients: int, mel: MelSettings, progress: bool = True,
               held_out: tuple[str, ...] = HELD_OUT) -> MouthData:  # fmt: skip
    """The basis (fitted on every training clip's head, speaking or not) and the speaking clips' samples."""
    clips = [c for c in load_clips(cache_dir) if c.face.any()]
    train_clips = [c for c in clips if c.name not in held_out]
    if not any(speaks(c) for c in train_clips):
        raise InputError(f"{cache_dir}: no training clip with speech")
    head = 1.0 - Split().tail
    tracks = [c.landmarks3d[: int(head * len(c))][c.face[: int(head * len(c))]] for c in train_clips]
    basis = fit_mouth_basis([t for t in tracks if len(t)], ShapeModel.load().mean, coefficients)
    speaking = [clip_samples(c, basis, mel) for c in tqdm(clips, desc="mouth samples", disable=not progress) if speaks(c)]
    return MouthData(basis, [c for c in speaking if c.name not in held_out], [c for c in speaking if c.name in held_out], head)


def hint_coding(data: MouthData) -> VectorCoding:
    """Quantization steps and entropy-coder statistics of the first ``MAX_HINTS`` coefficients,
    fitted on the training clips' frames (the way ``mesh_model`` fits its basis coefficients)."""
    basis = data.basis
    face_scale = float(np.median([basis.frame(c.landmarks[i])[0] for c in data.train for i in c.frames(0.0, data.head)[::10]]))
    largest = np.linalg.norm(basis.basis[:MAX_HINTS].reshape(MAX_HINTS, -1, 3), axis=2).max(axis=1)  # (3,) per unit
    tracks = [c.coefficients[c.frames(0.0, data.head), :MAX_HINTS] for c in data.train]
    return VectorCoding.fit(tracks, HINT_STEP_PX / (face_scale * largest))


def fit_fuser(model: MouthFuser, data: MouthData, config: MouthTrainConfig, minutes: float | None = None,
              progress: bool = True) -> tuple[int, list[dict[str, Any]]]:  # fmt: skip
    """Train ``model`` in place; returns the steps done and the loss / validation history."""
    basis = data.basis
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, config.lr, total_steps=config.steps, pct_start=0.05)
    loss_fn = MouthLoss(basis, config.gap_weight)
    scale = torch.tensor(basis.scale, dtype=torch.float32)
    pools = [(c, c.frames(0.0, data.head)) for c in data.train]
    pools = [(c, f) for c, f in pools if len(f) > 1]
    weights = np.array([np.sqrt(len(f)) for _, f in pools])  # long clips count, but do not drown the short ones
    weights /= weights.sum()
    started, step, history = time.monotonic(), 0, []
    bar = tqdm(total=config.steps, desc="mouth fuser", unit="step", disable=not progress)
    model.train()
    while step < config.steps and (minutes is None or time.monotonic() - started < minutes * 60):
        rows = []  # (clip, frame, reference frame) per sample
        for k in rng.choice(len(pools), config.batch_size, p=weights):
            clip, frames = pools[k]
            rows.append((clip, *rng.choice(frames, 2)))
        gain = rng.uniform(-1, 1, (config.batch_size, 1, 1)) * config.mel_gain_db * np.log(10) / 10  # power dB -> ln
        mel = torch.from_numpy((np.stack([c.mel[t] for c, t, _ in rows]).astype(np.float32) + gain).astype(np.float32))
        pose = torch.from_numpy(np.stack([c.pose[t] for c, t, _ in rows]))
        blink = torch.from_numpy(np.stack([c.blink[t] for c, t, _ in rows]))
        reference = torch.tensor(np.stack([c.coefficients[r] for c, _, r in rows]), dtype=torch.float32) / scale
        target = torch.tensor(np.stack([c.coefficients[t] for c, t, _ in rows]), dtype=torch.float32) / scale
        outputs = model.member_outputs(mel, pose, blink, reference)  # (M, B, K): each member its own loss
        loss, parts = loss_fn(outputs.flatten(0, 1), target.repeat(len(outputs), 1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        step += 1
        bar.update()
        if step % 1000 == 0 or step == config.steps:
            history.append({"step": step, **parts, "unseen_lip_sync": evaluate(model, data.unseen, basis, 0.0, 1.0)["lip_sync"]})
            bar.set_postfix(loss=f"{loss.item():.4f}", unseen_sync=history[-1]["unseen_lip_sync"])
    bar.close()
    return step, history


def train_mouth(run_dir: str | Path, settings: dict[str, Any], cache_dir: str | Path, minutes: float | None = None,
                progress: bool = True, model_config: MouthFuserConfig | None = None) -> dict[str, Any]:  # fmt: skip
    """Fit the basis, train the fuser, write ``run_dir/weights.safetensors``; returns the summary."""
    config = MouthTrainConfig.from_dict(settings)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    mel = MelSettings()
    started = time.monotonic()
    data = mouth_data(cache_dir, config.coefficients, mel, progress)
    model_config = model_config or dataclasses.replace(MouthFuserConfig.small(), coefficients=data.basis.size,
                                                       n_mels=mel.n_mels, steps=mel.steps)  # fmt: skip
    model = MouthFuser(model_config)
    step, history = fit_fuser(model, data, config, minutes, progress)
    validation = {"unseen": evaluate(model, data.unseen, data.basis, 0.0, 1.0),
                  "tail": evaluate(model, data.train, data.basis, data.head, 1.0)}  # fmt: skip
    info = {
        "mel": dataclasses.asdict(mel), "step": step, "train": dataclasses.asdict(config), "validation": validation,
        "train_seconds": round(time.monotonic() - started), "trained_on": [c.name for c in data.train],
        "held_out": list(HELD_OUT), "history": history,
    }  # fmt: skip
    hints = {k: torch.from_numpy(v) for k, v in hint_coding(data).to_arrays("hints.coding.").items()}
    tensors = {**module_tensors(model, "model."), **data.basis.tensors(), **hints}
    save_weights(run_dir / "weights.safetensors", WEIGHTS_CODEC, model_config.to_dict(), tensors, info, exact=("mouth.", "hints."))
    (run_dir / "summary.json").write_text(json.dumps(info, indent=1))
    return info


def check_cache(cache_dir: str | Path | None) -> Path:
    if cache_dir is None or not Path(cache_dir).is_dir():
        raise TalkcodecError("the mouth model trains from a clip cache: give --cache DIR (built by any `talkcodec train`)")
    return Path(cache_dir)
