"""The ``size`` setting: a face drawn at up to 512x512 for the same frame bits."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

import talkcodec
from talkcodec.codecs.stream import reference_image
from talkcodec.errors import InputError
from talkcodec.metrics import landmarks, psnr
from talkcodec.packet import PacketKind, encode_image
from talkcodec.video import read_frames


def enlarged(sample_video, scale: int, seconds: float) -> list[np.ndarray]:
    """The sample's frames ``scale`` times larger: its 204 px face crop becomes ~204 * scale px."""
    side = 320 * scale
    return [cv2.resize(f, (side, side), interpolation=cv2.INTER_CUBIC) for f in read_frames(sample_video, fps=25, max_seconds=seconds)]


@pytest.fixture(scope="module")
def large_frames(sample_video):
    return enlarged(sample_video, 3, 0.8)  # 20 frames, a 612 px face crop


def roundtrip(codec_name: str, frames: list[np.ndarray], size: int):
    codec = talkcodec.get_codec(codec_name, size=size)
    encoder, decoder = codec.encoder(fps=25), codec.decoder()
    try:
        packets = [p for frame in frames for p in encoder.encode(frame)] + encoder.flush()
    finally:
        encoder.close()
    images = [f.image for p in packets for f in decoder.decode(p)] + [f.image for f in decoder.flush()]
    return encoder, packets, images


@pytest.mark.parametrize("codec", ["mesh", "apb", "avfr"])
def test_512_costs_the_same_frame_bits_and_draws_the_same_face_larger(codec, large_frames):
    _, small_packets, small = roundtrip(codec, large_frames, 256)
    encoder, large_packets, large = roundtrip(codec, large_frames, 512)
    frames_of = lambda packets: [p.to_bytes() for p in packets if p.kind == PacketKind.FRAME]  # noqa: E731
    assert frames_of(large_packets) == frames_of(small_packets)  # every frame byte identical: only the reference grows
    references = [p for p in large_packets if p.kind == PacketKind.REFERENCE]
    assert len(references[0].payload) > len(next(p for p in small_packets if p.kind == PacketKind.REFERENCE).payload)
    assert encoder.size == 512 and encoder.capped_from is None
    assert len(large) == len(small) == len(large_frames)
    assert all(image.shape == (512, 512, 3) for image in large)
    shrunk = [cv2.resize(image, (256, 256), interpolation=cv2.INTER_AREA) for image in large]
    # the same face in the same place: landmarks scaled wrongly would move it by pixels (< 20 dB)
    assert min(psnr(a, b) for a, b in zip(shrunk, small)) > 30


@pytest.mark.parametrize(("scale", "drawn", "capped"), [(1, 256, 512), (2, 400, 512), (3, 512, None)])
def test_a_face_smaller_than_the_size_asked_is_capped_never_upscaled(sample_video, scale, drawn, capped):
    encoder, packets, images = roundtrip("mesh", enlarged(sample_video, scale, 0.12), 512)
    assert (encoder.size, encoder.capped_from) == (drawn, capped)
    assert images[0].shape == (drawn, drawn, 3)


@pytest.mark.parametrize(("shape", "kept"), [((400, 400), True), ((512, 512), True), ((300, 200), False),
                                             ((1024, 1024), False), ((100, 100), False)])  # fmt: skip
def test_a_reference_picture_of_any_other_shape_is_drawn_at_256(shape, kept):
    image = np.full((*shape, 3), 128, np.uint8)
    picture = reference_image({"image": encode_image(image)}, "mesh")
    assert picture.shape == ((*shape, 3) if kept else (256, 256, 3))


def test_landmarks_are_in_the_pixels_of_the_frames_measured(sample_video):
    crops = np.stack(list(read_frames(sample_video, fps=25, max_seconds=0.2)))
    double = np.stack([cv2.resize(f, (640, 640), interpolation=cv2.INTER_CUBIC) for f in crops])
    once, twice = landmarks(crops), landmarks(double)
    assert np.isfinite(once).all()
    assert np.abs(twice - 2 * once).mean() < 1.5  # pixels of the 640 frame


def test_the_bench_crops_at_512_and_refuses_to_upscale(sample_video, large_video):
    from talkcodec.bench.clips import crop_clip

    assert crop_clip(large_video, 0.2, size=512).shape == (5, 512, 512, 3)
    with pytest.raises(InputError, match="smaller than 512"):
        crop_clip(sample_video, 0.2, size=512)


def test_demo_at_512_says_the_size_it_drew(large_video, tmp_path):
    from talkcodec.demo import run_demo

    report = run_demo(large_video, tmp_path, "mesh", {"size": 512}, max_seconds=0.4, progress=False)
    summary = report.summary()
    assert (summary["size"], summary["capped_from"]) == (512, None)
    first = next(read_frames(report.side_by_side))
    assert first.shape == (512, 1024, 3)  # original | decoded, both at 512
    assert summary["psnr_db"] > 20
