"""Training the mouth painter (``models.mouth_painter``) on lip-aligned crops from the clip cache.

A sample is (reference r, target t) of one clip, rebuilt as a `mesh` receiver sees it: the
reference is the frame the sender would pick (``reference_choice``: the best portrait within
3 s, mostly a closed mouth, so the painter learns to open it), the shape
model codes frame t's landmarks with the codec's 16 coefficients over the reference's identity
detail; the reference image is warped to those landmarks (the codec's piecewise-affine warp), and
the crop, lip rasters and paste mask come from them; the truth is frame t cut under the same
transform. Targets with an open mouth are drawn more often (what the painter is for). Loss: L1 +
LPIPS-Alex of the pasted crop (the painter's output under the mask, the warp elsewhere).
Validation: people never trained on (``mouth.HELD_OUT``), the reference picked in the clip's first
3 s (the bench's protocol with the codecs' default ``reference_search_s``), against the warp
alone and the dark fill.
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
import torch.nn.functional as F
from tqdm import tqdm

from ..codecs.mesh_model import ShapeModel
from ..codecs.reference_choice import portrait_score
from ..codecs.stream import StreamSettings
from ..errors import InputError
from ..face import CROP_SIZE, INNER_LIPS
from ..metrics import INNER_LIP_GAP, inter_ocular
from ..models.config import bounded, config_from_dict
from ..models.mouth_painter import MouthPainter, MouthPainterConfig
from ..models.pretrained import lpips_alex
from ..painter import WEIGHTS_CODEC, cut, mouth_crop
from ..warp import PiecewiseAffineWarp, fill_mouth, polygon_area
from ..weights import module_tensors, save_weights
from .cache import CacheSettings
from .data import ClipFrames, Split, load_clips
from .mouth import HELD_OUT

LPIPS_SIZE = 64  # the bench scores mouth boxes at 64x64
MESH_COEFFICIENTS = 16  # what `mesh` sends by default: the painter learns its landmarks' errors
# the codecs' default reference search (3 s), in the cache's frames
SEARCH_FRAMES = round(StreamSettings().reference_search_s * CacheSettings().fps)


@dataclass
class PainterTrainConfig:
    steps: int = bounded(400, 1, 10**7)  # unseen LPIPS is best at ~250-750 steps of 1,600, then it overfits
    batch_size: int = bounded(16, 1, 4096)
    lr: float = bounded(1e-3, 1e-7, 1.0)
    lpips_weight: float = bounded(1.0, 0.0, 100.0)
    pairs: int = bounded(12000, 4, 10**6)  # training samples built once (each costs one warp)
    validation_pairs: int = bounded(400, 8, 10**5)
    seed: int = bounded(0, 0, 2**31)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PainterTrainConfig:
        return config_from_dict(cls, d)


@dataclass
class PainterSamples:
    """N crops: (N, S, S, 3) uint8 warped / truth / dark-filled, (N, 2, S, S) rasters, (N, S, S) masks."""

    warped: np.ndarray
    truth: np.ndarray
    dark: np.ndarray
    rasters: np.ndarray
    masks: np.ndarray
    clips: list[str]

    def batch(self, index: np.ndarray, flip: np.ndarray | None = None) -> dict[str, torch.Tensor]:
        def images(a: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(a[index]).permute(0, 3, 1, 2).float() / 255.0  # (B, S, S, 3) -> (B, 3, S, S)

        out = {"warped": images(self.warped), "truth": images(self.truth), "dark": images(self.dark),
               "rasters": torch.from_numpy(self.rasters[index].astype(np.float32) / 255.0),
               "mask": torch.from_numpy(self.masks[index].astype(np.float32) / 255.0)[:, None]}  # fmt: skip
        if flip is not None:  # a mirrored mouth is a mouth: the crop is centred on the lips
            for value in out.values():
                value[flip] = value[flip].flip(-1)
        return out


def mouth_weights(clip: ClipFrames, frames: np.ndarray) -> np.ndarray:
    """Sampling weights of ``frames``: open mouths (inner-lip gap / iod) drawn up to ~5x as often."""
    points = clip.landmarks[frames]
    gap = np.linalg.norm(points[:, INNER_LIP_GAP[0]] - points[:, INNER_LIP_GAP[1]], axis=1) / inter_ocular(points)
    return 0.03 + np.clip(gap, 0.0, 0.3)


def portrait_scores(clip: ClipFrames, frames: np.ndarray) -> np.ndarray:
    """(len(frames),) ``portrait_score`` of each frame, as the sender scores its reference candidates."""
    return np.array([portrait_score(clip.image(i), clip.landmarks[i], clip.pose[i]) for i in frames])


def chosen_reference(frames: np.ndarray, scores: np.ndarray, start: int) -> int:
    """The frame the sender would settle on when the call starts at ``frames[start]``: the best
    portrait of the next ``SEARCH_FRAMES`` (the sender replaces its first reference by a clearly
    better one within that window, at most twice: nearly always the best one)."""
    window = np.flatnonzero((frames >= frames[start]) & (frames < frames[start] + SEARCH_FRAMES))
    return int(frames[window[np.argmax(scores[window])]])


class SampleMaker:
    """Rebuilds what a `mesh` receiver draws for (clip, reference, target)."""

    def __init__(self, size: int):
        self.size, self.model, self.warp = size, ShapeModel.load(), PiecewiseAffineWarp(CROP_SIZE)

    def __call__(self, clip: ClipFrames, reference: int, target: int) -> tuple[np.ndarray, ...] | None:
        ref_points, target_points = clip.landmarks3d[reference].astype(np.float64), clip.landmarks3d[target]
        ref_params = self.model.analyse(ref_points, MESH_COEFFICIENTS)
        sent = self.model.synthesize(self.model.analyse(target_points.astype(np.float64), MESH_COEFFICIENTS),
                                     self.model.residual(ref_points, ref_params))  # (478, 3) what the receiver has  # fmt: skip
        warped = self.warp(clip.image(reference), ref_points[:, :2], sent[:, :2])
        crop = mouth_crop(warped, sent, self.size)
        if crop is None:
            return None
        dark = warped.copy()
        fill_mouth(dark, sent[list(INNER_LIPS), :2], polygon_area(ref_points[list(INNER_LIPS), :2]))
        truth = cut(np.ascontiguousarray(clip.image(target)), crop.affine, self.size)
        rasters, mask = (np.rint(a * 255).astype(np.uint8) for a in (crop.rasters, crop.mask))
        return crop.warped, truth, cut(dark, crop.affine, self.size), rasters, mask


def build_samples(clips: list[ClipFrames], count: int, size: int, rng: np.random.Generator, head: float,
                  first_reference: bool, desc: str, progress: bool) -> PainterSamples:  # fmt: skip
    """``count`` samples over ``clips`` (frames before ``head`` x length; the reference is the one
    chosen at the clip's start when ``first_reference``, else at a random start)."""
    pools = []
    for clip in tqdm(clips, desc="portrait scores", disable=not progress):
        frames = np.flatnonzero(clip.face[: int(head * len(clip))])
        if len(frames) > 1:
            pools.append((clip, frames, mouth_weights(clip, frames), portrait_scores(clip, frames)))
    if not pools:
        raise InputError("no clip with faces to train the painter on")
    share = np.array([np.sqrt(len(f)) for _, f, _, _ in pools])
    maker, out, names = SampleMaker(size), [], []
    with tqdm(total=count, desc=desc, unit="crop", disable=not progress) as bar:
        while len(out) < count:
            clip, frames, weights, scores = pools[rng.choice(len(pools), p=share / share.sum())]
            reference = chosen_reference(frames, scores, 0 if first_reference else int(rng.integers(len(frames))))
            sample = maker(clip, reference, int(rng.choice(frames, p=weights / weights.sum())))
            if sample is not None:
                out.append(sample)
                names.append(clip.name)
                bar.update()
    warped, truth, dark, rasters, masks = (np.stack(a) for a in zip(*out))
    return PainterSamples(warped, truth, dark, rasters, masks, names)


def composite(batch: dict[str, torch.Tensor], painted: torch.Tensor) -> torch.Tensor:
    """What the receiver shows in the crop: ``painted`` under the mask, the warp elsewhere."""
    return batch["mask"] * painted + (1.0 - batch["mask"]) * batch["warped"]


def crop_lpips(a: torch.Tensor, b: torch.Tensor, grad: bool = False) -> torch.Tensor:
    """(B,) LPIPS-Alex of two (B, 3, S, S) batches in [0, 1], at 64x64 as the bench's mouth
    LPIPS (and a third of the cost of 96)."""
    a, b = (F.interpolate(x, size=LPIPS_SIZE, mode="area") * 2 - 1 for x in (a, b))
    alex = lpips_alex()
    return alex.distance(a, b) if grad else alex(a, b)


def evaluate(model: MouthPainter | None, samples: PainterSamples, batch_size: int = 64) -> dict[str, float]:
    """Mean crop LPIPS and L1 of the painted (or, without a model, the warped and dark-filled) mouths."""
    scores: dict[str, list[float]] = {}
    if model is not None:
        model.eval()
    with torch.no_grad():
        for start in range(0, len(samples.warped), batch_size):
            batch = samples.batch(np.arange(start, min(start + batch_size, len(samples.warped))))
            shown = {"warp": batch["warped"], "dark": batch["dark"]} if model is None else \
                {"painter": composite(batch, model(batch["warped"], batch["rasters"]))}  # fmt: skip
            for name, image in shown.items():
                scores.setdefault(f"{name}_lpips", []).extend(crop_lpips(image, batch["truth"]).tolist())
                scores.setdefault(f"{name}_l1", []).extend((image - batch["truth"]).abs().mean(dim=(1, 2, 3)).tolist())
    if model is not None:
        model.train()
    return {k: float(np.mean(v)) for k, v in scores.items()}


def train_painter(run_dir: str | Path, settings: dict[str, Any], cache_dir: str | Path, minutes: float | None = None,
                  progress: bool = True, model_config: MouthPainterConfig | None = None,
                  held_out: tuple[str, ...] = HELD_OUT) -> dict[str, Any]:  # fmt: skip
    """Build the crops, train the painter, write ``run_dir/weights.safetensors``; returns the summary."""
    config = PainterTrainConfig.from_dict(settings)
    model_config = model_config or MouthPainterConfig()
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    rng = np.random.default_rng(config.seed)
    torch.manual_seed(config.seed)
    clips = [c for c in load_clips(cache_dir) if c.face.any()]
    train_clips, unseen = [c for c in clips if c.name not in held_out], [c for c in clips if c.name in held_out]
    if not unseen or not train_clips:
        raise InputError(f"{cache_dir}: the painter trains on clips other than {', '.join(held_out)} and validates "
                         "on those people: the cache needs both")  # fmt: skip
    head = 1.0 - Split().tail
    samples = build_samples(train_clips, config.pairs, model_config.size, rng, head, False, "painter crops", progress)
    validation = build_samples(unseen, config.validation_pairs, model_config.size, rng, 1.0, True, "unseen crops", progress)
    baseline = evaluate(None, validation)
    model = MouthPainter(model_config)
    for p in lpips_alex().parameters():
        p.requires_grad_(False)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, config.lr, total_steps=config.steps, pct_start=0.05)
    history, done, deadline = [], 0, None if minutes is None else started + 60 * minutes
    bar = tqdm(range(config.steps), desc="mouth painter", unit="step", disable=not progress)
    for step in bar:
        if deadline is not None and time.monotonic() > deadline:
            break
        index = rng.integers(0, len(samples.warped), config.batch_size)
        batch = samples.batch(index, flip=torch.from_numpy(rng.random(config.batch_size) < 0.5))
        shown = composite(batch, model(batch["warped"], batch["rasters"]))
        l1 = (shown - batch["truth"]).abs().mean()
        loss = l1 + config.lpips_weight * crop_lpips(shown, batch["truth"], grad=True).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        done = step + 1
        if step % 250 == 0 or step == config.steps - 1:
            history.append({"step": step, "loss": loss.item(), **evaluate(model, validation)})
            bar.set_postfix(loss=f"{loss.item():.4f}", unseen_lpips=f"{history[-1]['painter_lpips']:.4f}")
    result = {**baseline, **evaluate(model, validation)}
    info = {"step": done, "train": dataclasses.asdict(config), "validation": {"unseen": result},
            "train_seconds": round(time.monotonic() - started), "trained_on": sorted({*samples.clips}),
            "held_out": list(held_out), "history": history}  # fmt: skip
    save_weights(run_dir / "weights.safetensors", WEIGHTS_CODEC, model_config.to_dict(),
                 module_tensors(model, "model."), info)  # fmt: skip
    (run_dir / "summary.json").write_text(json.dumps(info, indent=1))
    return info
