"""``talkcodec demo``: the whole pipeline on one video, shown side by side and measured.

video -> encoder -> .tkc file -> decoder -> side_by_side.mp4 (original crop | decoded), with
the bitrate from the bytes in the file and PSNR/SSIM of every decoded frame against the crop
the encoder saw.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from .metrics import psnr, ssim
from .pipeline import StreamStats, decode_file, encode_file
from .sample import sample_path
from .video import read_frames


@dataclass
class DemoReport:
    input: str
    tkc: Path
    side_by_side: Path
    encoded: StreamStats
    decoded: StreamStats
    psnr: list[float] = field(default_factory=list)
    ssim: list[float] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        enc = self.encoded.summary()
        return {
            "input": self.input,
            "codec": self.encoded.codec,
            "frames": self.encoded.frames,
            "size": self.encoded.size,
            "capped_from": self.encoded.capped_from,
            "frame_kbps": enc["frame_kbps"],
            "reference_kb": round(self.encoded.reference_bytes / 1000, 1),
            "audio_kbps": enc["audio_kbps"],
            "psnr_db": round(float(np.mean(self.psnr)), 2) if self.psnr else None,
            "ssim": round(float(np.mean(self.ssim)), 4) if self.ssim else None,
            "encode_fps": enc["codec_fps"],
            "decode_fps": self.decoded.summary()["codec_fps"],
            "tkc": str(self.tkc),
            "side_by_side": str(self.side_by_side),
        }


def label(image: np.ndarray, text: str) -> np.ndarray:
    """A copy of ``image`` with ``text`` written in its top-left corner (for side-by-side videos)."""
    image = image.copy()
    cv2.putText(image, text, (6, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 3, cv2.LINE_AA)
    cv2.putText(image, text, (6, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1, cv2.LINE_AA)
    return image


def run_demo(
    source: str | Path | None = None,
    out_dir: str | Path = "talkcodec-demo",
    codec: str = "mesh",
    settings: dict[str, Any] | None = None,
    max_seconds: float | None = None,
    progress: bool = True,
) -> DemoReport:
    source = Path(source) if source else sample_path()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tkc, crops_path, video = out / "demo.tkc", out / "original_crops.mp4", out / "side_by_side.mp4"
    encoded = encode_file(source, tkc, codec, settings, max_seconds=max_seconds, progress=progress, crops_to=crops_path)
    originals = read_frames(crops_path)
    report = DemoReport(str(source), tkc, video, encoded, StreamStats(codec, encoded.fps))
    caption = f"{codec} {encoded.kbps(encoded.frame_bytes):.1f} kbps"

    def compose(index: int, decoded: np.ndarray) -> np.ndarray:
        original = next(originals, None)
        if original is None:
            return np.hstack([np.zeros_like(decoded), label(decoded, caption)])
        report.psnr.append(psnr(original, decoded))
        report.ssim.append(float(ssim(original[None], decoded[None])[0]))
        return np.hstack([label(original, "original"), label(decoded, caption)])

    try:
        report.decoded = decode_file(tkc, video, progress=progress, compose=compose, settings=settings)
    finally:
        originals.close()
        crops_path.unlink(missing_ok=True)
    return report
