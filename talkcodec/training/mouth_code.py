"""Training `avfr`'s mouth coder (``models.mouth_coder``): a code of the mouth the audio cannot predict.

Data: the speaking clips of the clip cache, in the shipped mouth model's basis (the coder
decodes on top of its fuser's audio prediction, so both must share one basis). Split by person
as the mouth fuser's (``mouth.HELD_OUT``). A sample is (frame t, frame t+1, reference r) of one
clip: the loss is the mouth fuser's (eq. 6 on the lower face + the inner-lip gap) of frame t
decoded from its noisy code, plus ``rate_weight`` x the L1 of the code's change from frame t+1
and from the reference's code (what the stream's delta and key symbols cost). Vectors only.
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

from ..codecs.learned import shipped_weights
from ..codecs.posed import (
    CODING_STEP,
    LIP_POSITION_STEP_PX,
    MouthModel,
    landmark_vector,
    lip_position,
    load_mouth_model,
)
from ..errors import InputError
from ..face import CROP_SIZE, HeadPoseEstimator
from ..models.config import bounded, config_from_dict
from ..models.mouth_coder import MouthCoder, MouthCoderConfig
from ..quant import VectorCoding
from .data import load_clips
from .mouth import HELD_OUT, ClipMouth, MouthLoss, clip_samples, predict, score_clip, speaks
from .trainer import export_weights


@dataclass
class MouthCodeTrainConfig:
    steps: int = bounded(1500, 1, 10**7)
    batch_size: int = bounded(64, 1, 65536)
    lr: float = bounded(2e-3, 1e-7, 1.0)
    gap_weight: float = bounded(4.0, 0.0, 1000.0)
    rate_weight: float = bounded(0.001, 0.0, 100.0)  # 0.01 made a code of the lip gap alone (docs/MODELS.md)
    seed: int = bounded(0, 0, 2**31)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> MouthCodeTrainConfig:
        return config_from_dict(cls, d)


@dataclass
class CodeData:
    mouth: MouthModel
    train: list[ClipMouth]
    unseen: list[ClipMouth]
    head: float = 0.8


def code_data(cache_dir: str | Path, mouth_model: str | None = None, progress: bool = True) -> CodeData:
    mouth = load_mouth_model(str(mouth_model or shipped_weights("apb_mouth")))
    clips = [c for c in load_clips(cache_dir) if c.face.any() and speaks(c)]
    if not clips:
        raise InputError(f"{cache_dir}: no clip with speech")
    samples = [clip_samples(c, mouth.basis, mouth.mel) for c in tqdm(clips, desc="mouth samples", disable=not progress)]
    return CodeData(mouth, [c for c in samples if c.name not in HELD_OUT], [c for c in samples if c.name in HELD_OUT])


def decode_clip(coder: MouthCoder | None, mouth: MouthModel, clip: ClipMouth, frames: np.ndarray,
                reference: int, hints: int = 0) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """(coefficients (T, K), symbols (T, C)) the receiver gets for ``frames`` over ``reference``:
    with ``coder`` its decoded code, else the fuser's prediction with the first ``hints`` true."""
    scale = torch.tensor(mouth.basis.scale, dtype=torch.float32)
    audio = torch.from_numpy(predict(mouth.fuser, clip, mouth.basis, reference, frames)).float() / scale
    target = torch.tensor(clip.coefficients[frames], dtype=torch.float32) / scale
    if coder is None:
        audio[:, :hints] = target[:, :hints]
        return (audio * scale).double().numpy(), target[:, :hints].numpy()
    ref = target.new_tensor(clip.coefficients[reference] / mouth.basis.scale).expand(len(frames), -1)
    with torch.no_grad():
        symbols = torch.round(coder.encode(target))
        out = coder.decode(symbols, audio, ref)
    return (out * scale).double().numpy(), symbols.numpy()


def evaluate(coder: MouthCoder | None, data: CodeData, clips: list[ClipMouth], start: float, end: float,
             hints: int = 0) -> dict[str, Any]:  # fmt: skip
    """Lip-sync and lip-landmark distance / inter-ocular distance (as ``mouth.evaluate``), first
    frame of the range as the reference, and the code's frame-to-frame symbol change (mean |d|)."""
    per_clip = {}
    if coder is not None:
        coder.eval()
    for clip in clips:
        frames = clip.frames(start, end)
        if len(frames) < 10:
            continue
        predicted, symbols = decode_clip(coder, data.mouth, clip, frames, int(frames[0]), hints)
        change = float(np.abs(np.diff(symbols, axis=0)).mean()) if symbols.shape[1] else 0.0
        per_clip[clip.name] = {**score_clip(clip, data.mouth.basis, frames, predicted), "symbol_change": change}
    if coder is not None:
        coder.train()
    syncs = [v["lip_sync"] for v in per_clip.values() if v["lip_sync"] is not None]

    def mean(key: str) -> float | None:
        return float(np.mean([v[key] for v in per_clip.values()])) if per_clip else None

    return {"lip_sync": float(np.mean(syncs)) if syncs else None, "mouth_landmark": mean("mouth_landmark"),
            "symbol_change": mean("symbol_change"), "clips": per_clip}  # fmt: skip


def fit_coder(coder: MouthCoder, data: CodeData, config: MouthCodeTrainConfig, minutes: float | None = None,
              progress: bool = True) -> tuple[int, list[dict[str, Any]]]:  # fmt: skip
    """Train ``coder`` in place; returns the steps done and the history."""
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    basis = data.mouth.basis
    scale = torch.tensor(basis.scale, dtype=torch.float32)
    loss_fn = MouthLoss(basis, config.gap_weight)
    optimizer = torch.optim.AdamW(coder.parameters(), lr=config.lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, config.lr, total_steps=config.steps, pct_start=0.05)
    pools = []
    for clip in data.train:
        frames = clip.frames(0.0, data.head)
        frames = frames[np.isin(frames + 1, frames)]  # frames whose next one has a face too
        if len(frames) > 1:
            pools.append((clip, frames))
    weights = np.array([np.sqrt(len(f)) for _, f in pools])
    weights /= weights.sum()
    started, step, history = time.monotonic(), 0, []
    bar = tqdm(total=config.steps, desc="mouth coder", unit="step", disable=not progress)
    coder.train()
    while step < config.steps and (minutes is None or time.monotonic() - started < minutes * 60):
        picks = rng.choice(len(pools), config.batch_size, p=weights)
        rows = [(pools[k][0], *rng.choice(pools[k][1], 2)) for k in picks]  # (clip, frame, reference)
        target, following, reference = (
            torch.tensor(np.stack([c.coefficients[i] for c, i in picked]), dtype=torch.float32) / scale
            for picked in ([(c, t) for c, t, _ in rows], [(c, t + 1) for c, t, _ in rows], [(c, r) for c, _, r in rows])
        )
        with torch.no_grad():
            audio = data.mouth.fuser(torch.from_numpy(np.stack([c.mel[t] for c, t, _ in rows]).astype(np.float32)),
                                     torch.from_numpy(np.stack([c.pose[t] for c, t, _ in rows])),
                                     torch.from_numpy(np.stack([c.blink[t] for c, t, _ in rows])), reference)  # fmt: skip
        code = coder.encode(target)
        noisy = code + torch.rand_like(code) - 0.5  # the rounding's training proxy
        distortion, parts = loss_fn(coder.decode(noisy, audio, reference), target)
        rate = (code - coder.encode(following)).abs().mean() + (code - coder.encode(reference)).abs().mean()
        loss = distortion + config.rate_weight * rate
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        step += 1
        bar.update()
        if step % 1000 == 0 or step == config.steps:
            unseen = evaluate(coder, data, data.unseen, 0.0, 1.0)
            history.append({"step": step, **parts, "rate": rate.item(), "unseen_lip_sync": unseen["lip_sync"],
                            "unseen_mouth_landmark": unseen["mouth_landmark"]})  # fmt: skip
            bar.set_postfix(sync=unseen["lip_sync"], lmk=unseen["mouth_landmark"], change=unseen["symbol_change"])
    bar.close()
    return step, history


def code_coding(coder: MouthCoder, data: CodeData) -> VectorCoding:
    """Entropy-coder statistics of the code (step 1: the coder learned its own scale), fitted on the training clips."""
    scale = torch.tensor(data.mouth.basis.scale, dtype=torch.float32)
    tracks = []
    with torch.no_grad():
        for clip in data.train:
            frames = clip.frames(0.0, data.head)
            if len(frames) > 1:
                coefficients = torch.tensor(clip.coefficients[frames], dtype=torch.float32) / scale
                tracks.append(torch.round(coder.encode(coefficients)).numpy())
    return VectorCoding.fit(tracks, np.ones(coder.config.code))


def pose_coding(data: CodeData) -> VectorCoding:
    """Coding of the 8 pose-and-blink values (``posed.CODING_STEP``) and the lip position
    (``posed.lip_position``), fitted on the training clips' face runs, the pose solved in order as
    a sender does (as ``talkcodec train --codec apb`` fits it)."""
    tracks = []
    for clip in data.train:
        frames = clip.frames(0.0, data.head)
        for run in np.split(frames, np.flatnonzero(np.diff(frames) > 1) + 1):
            if len(run) > 1:
                head = HeadPoseEstimator(CROP_SIZE)
                vectors = [landmark_vector(clip.landmarks[i], head) for i in run]
                tracks.append(np.stack([np.concatenate([v, lip_position(clip.landmarks[i], v, head)])
                                        for i, v in zip(run, vectors)]))  # fmt: skip
    return VectorCoding.fit(tracks, np.concatenate([CODING_STEP, [LIP_POSITION_STEP_PX] * 2]))


def train_mouth_code(run_dir: str | Path, settings: dict[str, Any], cache_dir: str | Path, minutes: float | None = None,
                     progress: bool = True, model_config: MouthCoderConfig | None = None,
                     data: CodeData | None = None) -> dict[str, Any]:  # fmt: skip
    """Train the coder; write ``run_dir/weights.safetensors`` (what `avfr` loads) and ``summary.json``."""
    config = MouthCodeTrainConfig.from_dict(settings)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    data = data or code_data(cache_dir, progress=progress)
    model_config = model_config or MouthCoderConfig(coefficients=data.mouth.basis.size)
    coder = MouthCoder(model_config)
    step, history = fit_coder(coder, data, config, minutes, progress)
    info = {
        "step": step, "train": dataclasses.asdict(config), "model": model_config.to_dict(),
        "validation": {"unseen": evaluate(coder, data, data.unseen, 0.0, 1.0),
                       "tail": evaluate(coder, data, data.train, data.head, 1.0)},
        "train_seconds": round(time.monotonic() - started), "trained_on": [c.name for c in data.train],
        "held_out": list(HELD_OUT), "mouth_model": data.mouth.fingerprint, "history": history,
    }  # fmt: skip
    coding = pose_coding(data).then(code_coding(coder, data))
    export_weights(run_dir / "weights.safetensors", "avfr", coder, coding, data.mouth.mel, info)
    (run_dir / "summary.json").write_text(json.dumps(info, indent=1))
    return info
