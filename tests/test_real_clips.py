"""The front end and the mesh codec on real footage (skipped where ../shared/data is absent)."""

import numpy as np
import pytest

from talkcodec.codecs.reference_choice import MAX_REPLACEMENTS
from talkcodec.demo import run_demo


@pytest.mark.parametrize("clip", ["lp_s18.mp4", "vr_face2.mp4"])  # a wide 1280x720 shot, a close-up
def test_mesh_on_a_real_clip(real_clips, tmp_path, clip):
    report = run_demo(real_clips / clip, tmp_path, max_seconds=2.0, progress=False)
    summary = report.summary()
    # the first frame, and at most the better portraits of the first seconds (codecs/reference_choice.py)
    assert report.encoded.faceless_frames == 0 and 1 <= report.encoded.references <= 1 + MAX_REPLACEMENTS
    assert summary["frame_kbps"] <= 5.0
    assert np.mean(report.psnr) > 20 and np.mean(report.ssim) > 0.6
