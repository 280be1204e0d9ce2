"""The sender replaces a poor first reference (blurred, mouth open, eyes shut, turned) by a
clearly better frame within its first seconds, at most twice (codecs/reference_choice.py)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

import talkcodec
from talkcodec.codecs.reference_choice import MARGIN, MAX_REPLACEMENTS, ReferenceChoice, portrait_score
from talkcodec.codecs.stream import reference_image
from talkcodec.face import FaceTracker
from talkcodec.packet import PacketKind, unpack
from talkcodec.video import read_frames

BLURRED = 6  # the first frames, as from a camera still focusing


@pytest.fixture(scope="module")
def frames(sample_video):
    frames = list(read_frames(sample_video, fps=25, max_seconds=1.6))
    return [cv2.GaussianBlur(f, (0, 0), 3.0) if i < BLURRED else f for i, f in enumerate(frames)]


def sharpness(image: np.ndarray) -> float:
    return float(cv2.Laplacian(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY), cv2.CV_32F).var())


@pytest.mark.parametrize("codec", ["mesh", "apb"])
@pytest.mark.parametrize("search_s", [3.0, 0.0])
def test_a_blurred_first_reference_is_replaced_by_a_sharp_one_within_the_search(frames, codec, search_s):
    encoder = talkcodec.get_codec(codec, reference_search_s=search_s).encoder(fps=25)
    try:
        packets = [(i, p) for i, f in enumerate(frames) for p in encoder.encode(f)] + [(len(frames), p) for p in encoder.flush()]
    finally:
        encoder.close()
    references = [(i, p) for i, p in packets if p.kind == PacketKind.REFERENCE]
    if search_s == 0:
        assert [i for i, _ in references] == [0]
        return
    assert 2 <= len(references) <= 1 + MAX_REPLACEMENTS and references[0][0] == 0
    assert BLURRED <= references[1][0] < BLURRED + 10  # as soon as the picture is sharp
    first, second = (reference_image(unpack(p.payload), codec) for _, p in references[:2])
    assert sharpness(second) > 2 * sharpness(first)
    decoder = talkcodec.get_codec(codec).decoder()  # the receiver draws from the new reference
    drawn = [f for _, p in packets for f in decoder.decode(p)] + decoder.flush()
    assert [f.seq for f in drawn] == list(range(len(frames)))
    before = np.mean([sharpness(f.image) for f in drawn[: references[1][0]]])
    after = np.mean([sharpness(f.image) for f in drawn[references[1][0] :]])
    assert after > 2 * before


def test_the_score_prefers_sharp_closed_mouths_open_eyes_and_frontal_heads(sample_video):
    tracker = FaceTracker()
    try:
        observation = next(o for f in read_frames(sample_video, fps=25, max_seconds=1.0)
                           if (o := tracker.process(f)).landmarks is not None)  # fmt: skip
    finally:
        tracker.close()
    crop, points, frontal = observation.crop, observation.landmarks.copy(), np.zeros(3)
    base = portrait_score(crop, points, frontal)
    width = np.linalg.norm(points[61, :2] - points[291, :2])
    opened = points.copy()
    opened[14, 1] += 0.3 * width  # the lower inner lip dropped: the mouth 30 % of its width open
    shut = points.copy()
    for upper, lower in ((159, 145), (160, 144), (158, 153), (385, 380), (387, 373), (386, 374)):
        shut[upper, :2] = shut[lower, :2]  # lids together
    assert portrait_score(cv2.GaussianBlur(crop, (0, 0), 3.0), points, frontal) < base - MARGIN
    assert portrait_score(crop, opened, frontal) < base - MARGIN
    assert portrait_score(crop, shut, frontal) < base - MARGIN
    assert portrait_score(crop, points, np.array([25.0, 0.0, 0.0])) < base - 1.0


def test_replacements_stop_after_the_window_and_the_limit():
    choice = ReferenceChoice(search_frames=50)
    choice.sent(0, 1.0)
    assert not choice.better(1, 1.0 + MARGIN / 2)  # not clearly better
    replaced = [seq for seq in range(1, 40) if choice.better(seq, 1.0 + seq) and (choice.sent(seq, 1.0 + seq) or True)]
    assert replaced == [1, 2][:MAX_REPLACEMENTS]
    late = ReferenceChoice(search_frames=50)
    late.sent(10, 1.0)
    assert not late.better(60, 100.0)  # past the window
    faceless = ReferenceChoice(search_frames=50)
    faceless.sent(0, None)  # a first reference without a face opens no window
    assert not faceless.searching(1)
