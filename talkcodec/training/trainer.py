"""``talkcodec train``: cache -> pairs -> optimisation -> validation, samples, checkpoints, weights.

A run folder holds ``run.json`` (the training config and the network config), ``checkpoint/``
(resumable state in <= 15 MiB safetensors shards), ``weights.safetensors`` (fp16, what a codec
loads: network + coding statistics + mel settings), ``history.jsonl`` (one line per epoch),
``curve.png`` and ``samples/epoch-NNN.png`` (rows: source | driving | generated).
Validation: ``tail`` = the held-out last part of each training clip (same person, later),
``unseen`` = whole clips never trained on (new faces); PSNR/SSIM at the output's size (256 with
the full-resolution blend, else the network's).
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from tqdm import tqdm

from ..audio import MelSettings
from ..device import resolve_device
from ..errors import InputError, TalkcodecError, WeightsError
from ..face import CROP_SIZE, HeadPoseEstimator
from ..metrics import measure, shown
from ..quant import VectorCoding
from ..weights import (
    load_checkpoint,
    load_matching,
    load_module,
    load_optimizer,
    load_weights,
    module_tensors,
    optimizer_tensors,
    save_checkpoint,
    save_weights,
)
from . import distributed
from .cache import CacheSettings, build_cache
from .data import Augment, ClipFrames, PairDataset, Split, load_clips, split_ranges, validation_pairs
from .distributed import Ranks
from .objectives import OBJECTIVES, Objective


@dataclass
class TrainConfig:
    codec: str = "apb"
    model: str | None = None  # network preset tiny | small | paper; default: init's own network, else small
    batch_size: int = 8
    lr: float = 2e-4
    betas: tuple[float, float] = (0.5, 0.999)
    epochs: int = 10
    steps_per_epoch: int = 100
    losses: dict[str, float] = field(default_factory=dict)  # loss weights overriding the objective's defaults
    gan_start: int = 0  # optimisation step at which the adversarial terms switch on
    lookahead_s: float = 0.1  # audio after the frame in its mel window (latency at the receiver)
    held_out: tuple[str, ...] = Split().held_out
    tail: float = Split().tail
    augment: bool = True
    val_per_clip: int = 3
    seed: int = 0
    workers: int = -1  # data-loading processes; -1: 0 on CPU, 8 on CUDA
    amp: bool = True  # bf16 autocast on CUDA (ignored on CPU)
    max_seconds_per_clip: float | None = None  # cache only the start of each clip
    init: str | None = None  # weights to start from: all of them, or with `model` set, every tensor that fits
    # a network smaller than the 256 crop with an image blend blends the warped 256 crop and is scored
    # at 256, as a receiver draws (``full_resolution_blend``); False: scored at the network's size
    full_resolution: bool = True

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise TalkcodecError(
                f"unknown training setting(s) {', '.join(sorted(unknown))}; valid: {', '.join(sorted(names))}"
            )
        d = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}
        return cls(**d)


def _to(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


class Trainer:
    def __init__(self, config: TrainConfig, run_dir: str | Path, data: list[str | Path] | None, cache_dir: str | Path | None,
                 device: str = "auto", progress: bool = True, model_config: Any = None):  # fmt: skip
        if config.codec not in OBJECTIVES:
            raise TalkcodecError(f"cannot train {config.codec!r}; trainable codecs: {', '.join(OBJECTIVES)}")
        self.ranks = Ranks.from_env()  # several under torchrun (distributed.py)
        self.config, self.run_dir, self.progress = config, Path(run_dir), progress and self.ranks.main
        self.device = resolve_device(device)
        if self.ranks.world > 1:
            self.device = distributed.start(self.ranks, self.device)
        kind = OBJECTIVES[config.codec]
        start = load_weights(config.init, config.codec) if config.init and model_config is None else None
        try:
            if start is not None and config.model is None:
                model_config = kind.config_class.from_dict(start.config)
            model_config = model_config or kind.preset(config.model or "small")
            self.objective: Objective = kind(model_config, config.losses)
        except (TypeError, ValueError) as exc:
            raise TalkcodecError(str(exc)) from None
        if start is not None and config.model is None:  # the same network: every tensor must fit
            load_module(self.objective.model, start.tensors, start.path, "model.")
        elif start is not None:  # warm start of a changed network: what fits is copied, new layers start fresh
            fresh = load_matching(self.objective.model, start.tensors, start.path, "model.")
            if progress and fresh:
                shown = ", ".join(fresh[:4]) + (f" and {len(fresh) - 4} more" if len(fresh) > 4 else "")
                tqdm.write(f"warm start from {start.path}: {len(fresh)} tensor(s) start fresh: {shown}")
        self.model_config = model_config
        steps = kind.audio_steps(model_config)
        self.mel = MelSettings(window_s=round(steps * MelSettings().hop_s, 6), lookahead_s=config.lookahead_s)
        self.size: int = model_config.size
        cache = Path(cache_dir) if cache_dir else self.run_dir / "cache"
        self.cache_dir = cache.resolve()
        if data and self.ranks.main:  # one rank preprocesses, the others wait for the cache
            build_cache(list(data), cache, CacheSettings(max_seconds=config.max_seconds_per_clip), self.progress)
        distributed.barrier()
        clips = load_clips(cache)
        if kind.needs_audio:
            clips = [c for c in clips if c.has_audio]
            if not clips:
                raise InputError(f"{config.codec} trains on clips with audio; none in {cache}")
        self.clips: list[ClipFrames] = clips
        split = Split(tuple(config.held_out), config.tail)
        train_ranges, _, _ = split_ranges(clips, split)
        augment = Augment(flip=kind.flip) if config.augment else None
        full = CROP_SIZE if config.full_resolution and self.size < CROP_SIZE and kind.blends(model_config) else None
        length = config.steps_per_epoch * config.batch_size * self.ranks.world  # each rank takes its share of the batches
        self.train_set = PairDataset(clips, self.size, self.mel, ranges=train_ranges, length=length,
                                     augment=augment, seed=config.seed, full_size=full, posed=kind.posed)  # fmt: skip
        self.val_sets = {
            name: PairDataset(clips, self.size, self.mel, pairs=pairs, full_size=full, posed=kind.posed)
            for name, pairs in validation_pairs(clips, split, config.val_per_clip).items() if pairs
        }  # fmt: skip
        self.model, self.critic = self.objective.model.to(self.device), self.objective.critic.to(self.device)
        if self.objective.perceptual is not None:
            self.objective.perceptual.to(self.device)
        self.opt_g = torch.optim.Adam(self.model.parameters(), lr=config.lr, betas=tuple(config.betas))
        self.opt_d = torch.optim.Adam(self.critic.parameters(), lr=config.lr, betas=tuple(config.betas))
        if self.ranks.world > 1:  # every rank starts from rank 0's weights
            distributed.broadcast_module(self.model)
            distributed.broadcast_module(self.critic)
        self.step = 0
        self.history: list[dict[str, Any]] = []
        self.train_seconds = 0.0

    # -- state -----------------------------------------------------------------------------------

    def _run_info(self) -> dict[str, Any]:
        return {"train": dataclasses.asdict(self.config), "model": self.model_config.to_dict(),
                "mel": dataclasses.asdict(self.mel), "cache": str(self.cache_dir)}  # fmt: skip

    def save(self) -> None:
        """The checkpoint and weights (rank 0 only: written once)."""
        if not self.ranks.main:
            return
        tensors = {**module_tensors(self.model, "model."), **module_tensors(self.critic, "critic.")}
        g, g_meta = optimizer_tensors(self.opt_g, "opt_g")
        d, d_meta = optimizer_tensors(self.opt_d, "opt_d")
        save_checkpoint(self.run_dir / "checkpoint", {**tensors, **g, **d}, {
            **self._run_info(), "step": self.step, "train_seconds": self.train_seconds,
            "opt_g": g_meta, "opt_d": d_meta, "history": self.history,
        })  # fmt: skip
        self.export(self.run_dir / "weights.safetensors")

    def resume(self) -> None:
        tensors, info = load_checkpoint(self.run_dir / "checkpoint")
        if (
            info.get("model") != json.loads(json.dumps(self.model_config.to_dict()))
            or info.get("train", {}).get("codec") != self.config.codec
        ):
            raise WeightsError(f"{self.run_dir}: the checkpoint was made for another codec or network config")
        source = str(self.run_dir / "checkpoint")
        load_module(self.model, tensors, source, "model.")
        load_module(self.critic, tensors, source, "critic.")
        try:
            load_optimizer(self.opt_g, tensors, info["opt_g"], "opt_g")
            load_optimizer(self.opt_d, tensors, info["opt_d"], "opt_d")
            self.step, self.history = int(info["step"]), list(info.get("history", []))
            self.train_seconds = float(info.get("train_seconds", 0.0))
        except (KeyError, TypeError, ValueError) as exc:
            raise WeightsError(f"{source}: malformed checkpoint ({exc!r})") from None
        for optimizer in (self.opt_g, self.opt_d):  # settings given now win over the saved ones
            for group in optimizer.param_groups:
                group["lr"], group["betas"] = self.config.lr, tuple(self.config.betas)

    def coding(self) -> VectorCoding:
        """Quantization steps and entropy-coder scales of the vector the codec sends, fitted
        on the training frames (consecutive runs of each clip)."""
        from ..codecs.posed import CODING_STEP, landmark_vector

        train_ranges, _, _ = split_ranges(self.clips, Split(tuple(self.config.held_out), self.config.tail))
        runs = [(c, run) for c, a, b in train_ranges for run in _face_runs(self.clips[c].face, a, b)]
        tracks = []
        for c, run in runs:  # the 6-DoF pose along each run, solved in order as a sender does
            head = HeadPoseEstimator(CROP_SIZE)
            tracks.append(np.stack([landmark_vector(self.clips[c].landmarks[i], head) for i in run]))
        return VectorCoding.fit(tracks, CODING_STEP)

    def export(self, path: Path) -> None:
        last = self.history[-1] if self.history else {}
        export_weights(path, self.config.codec, self.model, self.coding(), self.mel, info={
            "step": self.step, "validation": last.get("validation"),
            "trained_on": sorted({c.name for c in self.clips} - set(self.config.held_out)),
            "held_out": list(self.config.held_out), "train_seconds": round(self.train_seconds),
        })  # fmt: skip

    # -- validation --------------------------------------------------------------------------------

    @torch.no_grad()
    def validate(self, epoch: int) -> dict[str, dict[str, float]]:
        """The validation figures (rank 0 only; the other ranks record none)."""
        if not self.ranks.main:
            return {}
        self.model.eval()
        results: dict[str, dict[str, float]] = {}
        grids = []
        for name, dataset in self.val_sets.items():
            loader = torch.utils.data.DataLoader(dataset, batch_size=self.config.batch_size)
            l1, images, targets, sources = [], [], [], []
            for batch in loader:
                batch = _to(batch, self.device)
                with self._autocast():
                    out = self.objective.generate(batch)["image"].float()
                target = self.objective.target(batch, out)
                l1.append((out - target).abs().mean(dim=(1, 2, 3)))
                images.append(out.clamp(0, 1).cpu())
                targets.append(target.cpu())
                sources.append(batch["source"].cpu())
            generated = _uint8(torch.cat(images), CROP_SIZE)
            truth = np.stack([self.clips[c].landmarks[d] for c, _, d in dataset.pairs])  # (N, 478, 2) crop px
            crops = np.stack([self.clips[c].image(d) for c, _, d in dataset.pairs])  # the real 256 crops, as the bench scores
            figures = measure(crops, generated, truth)  # the bench's metrics, over pairs instead of a clip
            figures.pop("flicker")  # frame-to-frame change means nothing across random pairs
            results[name] = {"l1": float(torch.cat(l1).mean()), **figures, "pairs": len(generated)}
            rows = min(6, len(generated))
            grids.append(_grid(name, torch.cat(sources)[:rows], torch.cat(targets)[:rows], torch.cat(images)[:rows]))
        (self.run_dir / "samples").mkdir(parents=True, exist_ok=True)
        if grids:
            cv2.imwrite(str(self.run_dir / "samples" / f"epoch-{epoch:03d}.png"), np.concatenate(grids)[:, :, ::-1])
        self.model.train()
        return results

    # -- training ------------------------------------------------------------------------------------

    def _autocast(self):
        enabled = self.config.amp and self.device.type == "cuda"
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=enabled)

    def train_step(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        adversarial = self.step >= self.config.gan_start and self.objective.weights.get("adversarial", 0) > 0
        with self._autocast():
            outputs = self.objective.generate(batch)
            loss, logs = self.objective.generator_loss(batch, outputs, adversarial)
        self.opt_g.zero_grad(set_to_none=True)
        loss.backward()
        if self.ranks.world > 1:  # the same averaged gradients, so the same weights, on every rank
            loss = torch.tensor(distributed.average_gradients(list(self.model.parameters()), loss, self.ranks.world))
        self.opt_g.step()
        if adversarial:
            with self._autocast():
                critic_loss, critic_logs = self.objective.critic_loss(batch, outputs["image"].float())
            self.opt_d.zero_grad(set_to_none=True)
            critic_loss.backward()
            if self.ranks.world > 1:
                distributed.average_gradients(list(self.critic.parameters()), critic_loss, self.ranks.world)
            self.opt_d.step()
            logs.update(critic_logs)
        if not math.isfinite(float(loss.detach())):
            raise TalkcodecError(
                f"training diverged at step {self.step} (loss {float(loss.detach())}); lower --set lr=..."
            )
        self.step += 1
        return {"loss": float(loss.detach()), **logs}

    def fit(self, minutes: float | None = None) -> dict[str, Any]:
        """Train to ``config.epochs`` (or until ``minutes`` pass), validating and checkpointing every epoch."""
        config = self.config
        if not self.history:  # the untrained model's figures: the baseline the curve starts from
            self.history.append({"epoch": 0, "step": 0, "train": {}, "validation": self.validate(0), "seconds": 0.0})
            self._write_history()
        world, rank = self.ranks.world, self.ranks.rank
        workers = config.workers if config.workers >= 0 else (8 if self.device.type == "cuda" else 0)
        deadline = time.monotonic() + minutes * 60 if minutes else None
        self.model.train()
        while self.step < config.epochs * config.steps_per_epoch:
            epoch = self.step // config.steps_per_epoch + 1
            self.train_set.set_epoch(epoch)
            skip = self.step - (epoch - 1) * config.steps_per_epoch  # resuming mid-epoch
            indices = distributed.batch_indices(rank, world, skip, config.steps_per_epoch, config.batch_size)
            loader = torch.utils.data.DataLoader(torch.utils.data.Subset(self.train_set, indices), batch_size=config.batch_size,
                                                 num_workers=workers, drop_last=True, persistent_workers=False)  # fmt: skip
            sums: dict[str, float] = {}
            count = 0
            bar = tqdm(
                loader, desc=f"epoch {epoch}/{config.epochs}", unit="step", disable=not self.progress, leave=False
            )
            tick = time.monotonic()
            stopped = False
            for batch in bar:
                logs = self.train_step(_to(batch, self.device))
                for k, v in logs.items():
                    sums[k] = sums.get(k, 0.0) + v
                count += 1
                bar.set_postfix(loss=f"{logs['loss']:.3f}", l1=f"{logs.get('l1', 0):.4f}")
                late = deadline is not None and time.monotonic() > deadline
                if world > 1 and deadline is not None:  # all ranks stop after the same step
                    late = distributed.any_rank(late)
                if late:
                    stopped = True
                    break
            bar.close()
            self.train_seconds += time.monotonic() - tick
            if stopped and self.step % config.steps_per_epoch:
                self.save()  # mid-epoch: resumable, validated at the epoch's end
                break
            validation = self.validate(epoch)
            self.history.append({"epoch": epoch, "step": self.step, "train": {k: v / max(count, 1) for k, v in sums.items()},
                                 "validation": validation, "seconds": round(self.train_seconds, 1)})  # fmt: skip
            self._write_history()
            self.save()
            if self.progress:
                figures = "  ".join(f"{n}: L1 {v['l1']:.4f} PSNR {v['psnr']:.2f} SSIM {v['ssim']:.3f} LPIPS {v['lpips']:.3f} "
                                    f"lmk {shown(v['landmark'])} mouth LPIPS {shown(v['mouth_lpips'])} lip-sync {shown(v['lip_sync'])}"
                                    for n, v in validation.items())  # fmt: skip
                tqdm.write(f"epoch {epoch} (step {self.step}): {figures}")
            if stopped:
                break
        if self.ranks.main and not (self.run_dir / "weights.safetensors").exists():  # no step (--epochs 0): as started
            self.export(self.run_dir / "weights.safetensors")
        if world > 1:
            self._check_ranks_agree()
        return self.history[-1]

    def _check_ranks_agree(self) -> None:
        """Every rank must end with the same weights (they took the same averaged steps); rank 0
        records their checksums in run.json (``rank_checksums``)."""
        sums = distributed.gathered(distributed.checksum(self.model) + distributed.checksum(self.critic))
        if self.ranks.main:
            info = json.loads((self.run_dir / "run.json").read_text())
            (self.run_dir / "run.json").write_text(json.dumps({**info, "rank_checksums": sums}, indent=1))
        if len(set(sums)) > 1:
            raise TalkcodecError(f"the {len(sums)} training processes ended with different weights: {sums}")

    def _write_history(self) -> None:
        if not self.ranks.main:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "run.json").write_text(json.dumps(self._run_info(), indent=1))
        with open(self.run_dir / "history.jsonl", "w") as f:
            for entry in self.history:
                f.write(json.dumps(entry) + "\n")
        _plot(self.history, self.run_dir / "curve.png", self.config.codec)


def _face_runs(face: np.ndarray, first: int, end: int, min_length: int = 2) -> list[list[int]]:
    """Runs of consecutive frames with a face in [first, end)."""
    runs: list[list[int]] = [[]]
    for i in range(first, end):
        if face[i]:
            runs[-1].append(i)
        elif runs[-1]:
            runs.append([])
    return [r for r in runs if len(r) >= min_length]


def export_weights(path: str | Path, codec: str, model: torch.nn.Module, coding: VectorCoding, mel: MelSettings,
                   info: dict[str, Any] | None = None) -> Path:  # fmt: skip
    """What a codec loads: fp16 network (``model.*``), coding statistics (``coding.*``), mel settings."""
    tensors = {**module_tensors(model, "model."), **{k: torch.from_numpy(v) for k, v in coding.to_arrays().items()}}
    return save_weights(
        path, codec, model.config.to_dict(), tensors, info={"mel": dataclasses.asdict(mel), **(info or {})}
    )


def _uint8(images: torch.Tensor, size: int) -> np.ndarray:
    """(N, 3, s, s) in [0, 1] -> (N, size, size, 3) uint8."""
    out = (images.clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).numpy()  # (N, 3, s, s) -> (N, s, s, 3)
    if out.shape[1] != size:
        out = np.stack([cv2.resize(x, (size, size), interpolation=cv2.INTER_CUBIC) for x in out])
    return out


def _grid(title: str, sources: torch.Tensor, drivings: torch.Tensor, generated: torch.Tensor) -> np.ndarray:
    """Rows of source | driving | generated, under a title strip."""
    rows = [
        np.concatenate([_uint8(x[None], 128)[0] for x in (s, d, g)], axis=1) for s, d, g in zip(sources, drivings, generated)
    ]
    body = np.concatenate(rows)
    strip = np.full((24, body.shape[1], 3), 255, np.uint8)
    cv2.putText(
        strip,
        f"{title}: source | driving | generated",
        (4, 17),
        cv2.FONT_HERSHEY_SIMPLEX,
        0.5,
        (0, 0, 0),
        1,
        cv2.LINE_AA,
    )
    return np.concatenate([strip, body])


def _plot(history: list[dict[str, Any]], path: Path, codec: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    steps = [h["step"] for h in history]
    for name in history[0]["validation"]:
        ax.plot(steps, [h["validation"][name]["l1"] for h in history], marker="o", label=f"validation L1 ({name})")
    trained = [h for h in history if h["train"].get("l1") is not None]
    if trained:
        ax.plot([h["step"] for h in trained], [h["train"]["l1"] for h in trained], marker=".", label="training L1")
    ax.set_xlabel("step")
    ax.set_ylabel("L1 (images in [0, 1])")
    ax.set_title(f"{codec} training")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def train(run_dir: str | Path, settings: dict[str, Any], data: list[str | Path] | None = None,
          cache_dir: str | Path | None = None, resume: bool = False, minutes: float | None = None,
          device: str = "auto", progress: bool = True) -> dict[str, Any]:  # fmt: skip
    """Train a new run from ``settings`` (TrainConfig fields), or resume one (``settings`` then
    override what the run saved, e.g. more epochs); returns the last history entry. Under
    ``torchrun``, every process runs this (``distributed.py``)."""
    try:
        return _train(run_dir, settings, data, cache_dir, resume, minutes, device, progress)
    finally:
        distributed.stop()


def _train(run_dir: str | Path, settings: dict[str, Any], data: list[str | Path] | None, cache_dir: str | Path | None,
           resume: bool, minutes: float | None, device: str, progress: bool) -> dict[str, Any]:  # fmt: skip
    run_dir = Path(run_dir)
    has_checkpoint = (run_dir / "checkpoint" / "checkpoint.json").exists()
    if not resume:
        if has_checkpoint:
            raise TalkcodecError(
                f"{run_dir} already holds a training run: add --resume to continue it, or pick another --out"
            )
        return Trainer(TrainConfig.from_dict(settings), run_dir, data, cache_dir, device, progress).fit(minutes)
    try:
        saved = json.loads((run_dir / "run.json").read_text())
        codec = saved["train"]["codec"]
    except (OSError, ValueError, KeyError, TypeError):
        raise TalkcodecError(f"{run_dir}: nothing to resume (no readable run.json)") from None
    if settings.get("codec", codec) != codec or "model" in settings and settings["model"] != saved["train"]["model"]:
        raise TalkcodecError(f"{run_dir} trains {codec} ({saved['train']['model']}); its codec and model cannot change")
    config = TrainConfig.from_dict({**saved["train"], **settings})
    kind = OBJECTIVES[codec]
    try:
        model_config = kind.config_class.from_dict(saved["model"])
    except ValueError as exc:
        raise TalkcodecError(f"{run_dir}/run.json: {exc}") from None
    trainer = Trainer(config, run_dir, data, cache_dir or saved.get("cache"), device, progress, model_config)
    if has_checkpoint:
        trainer.resume()
    return trainer.fit(minutes)
