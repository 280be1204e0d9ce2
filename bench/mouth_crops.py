"""A picture of mouths: lip-aligned crops of the bundled sample through the codecs, side by side.

    python -m talkcodec.bench.mouth_crops --out docs/training/mouth-crops-sample.jpg

Rows are frames (the ones where the sample's mouth is most open, spread over the clip);
columns the original, then each variant (codec + settings) as the bench codes it. The crops
are cut around the ORIGINAL frame's lips (``painter.crop_affine``), as the bench's mouth boxes
are. Only the bundled sample: frames of research clips never go into the project.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import cv2
import numpy as np

from ..metrics import INNER_LIP_GAP, inter_ocular
from ..painter import crop_affine, cut
from ..sample import sample_path
from .clips import load_clip
from .codecs import run_talkcodec

VARIANTS = {
    "mesh, dark fill": ("mesh", {"mouth_fill": "dark"}),
    "mesh, painter": ("mesh", {}),
    "apb, ref. mouth": ("apb", {"mouth": "reference"}),
    "apb (audio), dark": ("apb", {}),
    "apb hints=3, painter": ("apb", {"hints": 3, "mouth_fill": "painter"}),
    "avfr": ("avfr", {}),
}
SIZE = 96


def open_frames(landmarks: np.ndarray, count: int) -> list[int]:
    """``count`` frames with the widest inner-lip gap, at least a second apart."""
    gap = np.linalg.norm(landmarks[:, INNER_LIP_GAP[0]] - landmarks[:, INNER_LIP_GAP[1]], axis=1) / inter_ocular(landmarks)
    chosen: list[int] = []
    for index in np.argsort(-np.nan_to_num(gap, nan=-1.0)):
        if all(abs(int(index) - c) >= 25 for c in chosen):
            chosen.append(int(index))
        if len(chosen) == count:
            break
    return sorted(chosen)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="mouth-crops.jpg")
    parser.add_argument("--frames", type=int, default=4)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as cache:
        clip = load_clip(sample_path(), Path(cache), seconds=6.0)
    rows = open_frames(clip.landmarks, args.frames)
    columns = [clip.frames]
    for codec, settings in VARIANTS.values():
        columns.append(run_talkcodec(codec, {**settings, "precision": 1.0}, clip.frames, clip.fps, clip.audio).decoded)
    tiles = []
    for t in rows:
        affine = crop_affine(clip.landmarks[t], SIZE)
        tiles.append(np.concatenate([cut(np.ascontiguousarray(c[t]), affine, SIZE) for c in columns], axis=1))
    grid = np.concatenate(tiles, axis=0)
    header = np.full((18, grid.shape[1], 3), 255, np.uint8)
    for i, name in enumerate(["original", *VARIANTS]):
        cv2.putText(header, name, (i * SIZE + 2, 13), cv2.FONT_HERSHEY_PLAIN, 0.62, (0, 0, 0), 1, cv2.LINE_AA)
    image = np.concatenate([header, grid], axis=0)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(args.out), image[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, 92])
    print(f"{args.out}: frames {rows}")


if __name__ == "__main__":
    main()
