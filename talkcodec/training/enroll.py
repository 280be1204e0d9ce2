"""``talkcodec enroll``: fine-tune a codec's weights on one person's own footage.

The sender records a few seconds to minutes of themselves; the first 80 % fine-tunes the
weights (starting from the shipped or given ones, low learning rate, reconstruction losses
only), the last 20 % measures the gain: the validation before the first step is the base
weights on the rest of that person's video, the one after the last step the personal weights.
Both sides of a call load the personal file (``--set weights=...``): the stream names it.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from ..codecs.learned import shipped_weights
from ..errors import TalkcodecError
from .trainer import train


def enroll(
    codec: str, video: str | Path, out: str | Path, weights: str | Path | None = None, steps: int = 150,
    device: str = "auto", progress: bool = True, settings: dict[str, Any] | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:  # fmt: skip
    """Write personal weights to ``out``; returns (validation before, validation after)."""
    base = weights or shipped_weights(codec)
    if base is None:
        raise TalkcodecError(f"no {codec} weights to start from: pass --weights (see docs/TRAINING.md)")
    out = Path(out)
    run = out.with_name(out.stem + "-enroll")
    if run.exists():
        shutil.rmtree(run)  # an enrollment always starts from the base weights
    config = {
        "codec": codec, "init": str(base), "lr": 5e-5, "held_out": [], "tail": 0.2, "epochs": 1,
        "steps_per_epoch": steps, "batch_size": 4, "gan_start": 10**9, "val_per_clip": 8, **(settings or {}),
    }  # fmt: skip
    if not 1 <= config["steps_per_epoch"] <= 100_000:
        raise TalkcodecError("enroll: --steps must be in 1..100000")
    train(run, config, data=[video], device=device, progress=progress)
    history = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines() if line]
    first, last = history[0], history[-1]
    out.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(run / "weights.safetensors", out)
    return first["validation"]["tail"], last["validation"]["tail"]
