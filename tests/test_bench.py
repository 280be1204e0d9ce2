import json
import os

import numpy as np
import pytest
from talkcodec.bench.bdrate import bd_quality, bd_rate
from talkcodec.bench.codecs import CONVENTIONAL
from talkcodec.bench.run import main as bench_main

from talkcodec.errors import TalkcodecError


@pytest.mark.parametrize("name", sorted(CONVENTIONAL))
def test_conventional_codecs_are_flushed_and_counted(moving_face, name):
    policy = os.sched_getscheduler(0)
    coded = CONVENTIONAL[name].run(moving_face, 25.0, 100.0)
    assert os.sched_getscheduler(0) == policy  # SVT-AV1 as root leaves the thread SCHED_FIFO otherwise
    assert coded.decoded.shape == moving_face.shape  # every frame came out: the encoder was flushed
    kbps = coded.frame_bytes * 8 / 1000 / 2.0
    assert 30 < kbps < 300
    low = CONVENTIONAL[name].run(moving_face, 25.0, 20.0)
    assert low.frame_bytes < coded.frame_bytes


def test_a_still_frame_is_the_reference_image_shown_throughout(moving_face):
    from talkcodec.bench.codecs import run_still

    from talkcodec.packet import decode_image, encode_image

    coded = run_still(moving_face)
    assert coded.frame_bytes == 0 and coded.reference_bytes == len(encode_image(moving_face[0]))
    assert coded.decoded.shape == moving_face.shape and (coded.decoded == decode_image(encode_image(moving_face[0]))).all()


def test_bd_rate_on_curves_with_a_known_answer():
    rates = np.array([10.0, 20.0, 50.0, 100.0])
    quality = 10 * np.log10(rates)
    assert bd_rate(rates, quality, 0.8 * rates, quality) == pytest.approx(-20.0, abs=1e-6)
    assert bd_rate(rates, -quality, 0.5 * rates, -quality, higher_is_better=False) == pytest.approx(-50.0, abs=1e-6)
    assert bd_quality(rates, quality, rates, quality + 1.5) == pytest.approx(1.5)
    assert bd_rate(rates, quality, rates * 1000, quality + 100) is None  # no common quality range


def test_bench_end_to_end_resumes_and_skips_bad_inputs(sample_video, noface_video, tmp_path):
    junk = tmp_path / "junk.mp4"
    junk.write_text("not a video")
    out = tmp_path / "out"
    args = [str(sample_video), str(noface_video), str(junk), "--out", str(out), "--seconds", "2",
            "--codecs", "x264,still,mesh", "--kbps", "20,100", "-q"]  # fmt: skip
    assert bench_main(args) == 0
    report = json.loads((out / "results.json").read_text())
    assert set(report) >= {"machine", "settings", "clips", "skipped", "summary", "bd", "cells"}
    assert report["clips"] == ["sample"] and len(report["cells"]) == 7 and not report["failed"]
    assert "no face" in report["skipped"]["noface.mp4"] and "not a readable video" in report["skipped"]["junk.mp4"]
    cell = report["cells"][0]
    assert {"kbps", "psnr", "ssim", "ms_ssim", "lpips", "landmark", "flicker", "encode_fps", "decode_fps", "peak_mb"} <= set(cell)
    mesh = [r for r in report["summary"] if r["codec"] == "mesh"]
    assert all(r["reference_bytes"] > 0 for r in mesh) and "bd_rate_psnr" in report["bd"]["mesh"]
    assert (out / "rd.png").stat().st_size > 10_000 and (out / "side_by_side.mp4").exists()
    assert "| mesh |" in (out / "results.md").read_text()
    (still,) = [r for r in report["summary"] if r["codec"] == "still"]  # the yardstick: one point, no frame bits
    assert still["kbps"] == 0 and still["reference_bytes"] > 0 and still["lpips"] > 0 and "still" not in report["bd"]
    assert all(e["ratio"] is None for e in report["equal_quality"] if e["codec"] == "still")
    assert {"dists", "lip_sync", "mouth_lpips", "mouth_landmark", "eye_lpips"} <= set(cell)
    assert "| lip-sync | mouth LPIPS |" in (out / "results.md").read_text() and (out / "mouths.png").stat().st_size > 5_000
    assert "`still` is a yardstick" in (out / "results.md").read_text()
    stamps = {p: p.stat().st_mtime_ns for p in (out / "cells").rglob("*.json")}
    assert bench_main(args) == 0  # resumes: every cell is read back, none is recomputed
    assert stamps == {p: p.stat().st_mtime_ns for p in (out / "cells").rglob("*.json")}
    stale = min((out / "cells" / "sample").glob("mesh__*.json"))  # a mesh cell measured with other shipped weights
    stale.write_text(json.dumps({**json.loads(stale.read_text()), "shipped_models": "00000000"}))
    stamps[stale] = stale.stat().st_mtime_ns
    assert bench_main(args) == 0
    assert [p for p, t in stamps.items() if p.stat().st_mtime_ns != t] == [stale]  # only it is redone
    assert json.loads(stale.read_text())["shipped_models"] != "00000000"


def test_tail_codes_the_part_the_trainer_held_out(sample_video, tmp_path):
    from talkcodec.bench.clips import load_clip, tail_start

    from talkcodec.training.data import Split, split_ranges
    from talkcodec.video import probe

    class Frames:  # what split_ranges needs of a cached clip: a name and a length
        name = "sample"

        def __len__(self):
            return round(probe(sample_video).duration * 25)

    (_, held_out_from, _), = split_ranges([Frames()], Split(held_out=(), tail=0.2))[1]
    assert tail_start(sample_video, 0.2) == held_out_from > 0
    tail, head = load_clip(sample_video, tmp_path, 1.0, tail=0.2), load_clip(sample_video, tmp_path, 1.0)
    assert len(tail.frames) == len(head.frames) == 25 and not np.array_equal(tail.frames[0], head.frames[0])
    assert tail.audio is not None and abs(len(tail.audio) - 16000) < 800
    with pytest.raises(TalkcodecError, match="--tail is a fraction"):
        bench_main([str(sample_video), "--tail", "1.5", "--out", str(tmp_path / "x"), "-q"])


@pytest.mark.parametrize(
    "value, expected",
    [(0.5, ("<=", 5.0)), (0.4, ("<=", 5.0)), (0.1, (">", 80.0)), (0.3, ("=", 10.0)), (0.25, ("=", np.sqrt(10 * 20)))],
)
def test_equal_quality_bitrate_is_interpolated_in_log_rate(value, expected):
    from talkcodec.bench.report import needed_kbps

    curve = [(20.0, 0.2), (5.0, 0.4), (10.0, 0.3), (80.0, 0.15)]  # unsorted on purpose
    bound, kbps = needed_kbps(curve, value)
    assert bound == expected[0] and kbps == pytest.approx(expected[1])


@pytest.mark.parametrize("metric, value, beats", [("mouth_lpips", 0.05, True), ("mouth_lpips", 0.12, False),
                                                  ("lip_sync", 0.8, True), ("lip_sync", 0.01, False)])  # fmt: skip
def test_x_fewer_bits_only_where_the_still_frame_is_beaten(metric, value, beats):
    from talkcodec.bench.report import equal_quality

    conventional = [{"codec": "x264", "setting": {"kbps": k}, "kbps": k, "mouth_lpips": m, "lip_sync": s}
                    for k, m, s in ((10.0, 0.15, 0.5), (20.0, 0.08, 0.7), (50.0, 0.04, 0.95))]  # fmt: skip
    still = {"codec": "still", "setting": {}, "kbps": 0.0, "mouth_lpips": 0.10, "lip_sync": 0.02}
    mine = {"codec": "mesh", "setting": {"precision": 1.0}, "kbps": 2.0, metric: value}
    (entry,) = [e for e in equal_quality([*conventional, still, mine], (metric,)) if e["codec"] == "mesh"]
    assert entry["beats_still"] is beats and entry["still"] == still[metric]
    assert (entry["ratio"] is not None) is beats
    if beats and metric == "lip_sync":
        assert entry["ratio"][0] == "=" and entry["ratio"][1] == pytest.approx(np.exp(np.log(20) + 0.4 * np.log(2.5)) / 2)


def test_bench_settings_reach_every_cell_of_their_codec(tmp_path, sample_video):
    from talkcodec.bench.run import _cells, setting_label

    cells = _cells(["x264", "apb"], [10.0], {}, None, {"apb": {"refine": True}})
    assert cells[0] == ("x264", {"kbps": 10.0}) and all(s["refine"] is True for c, s in cells[1:])
    assert setting_label(cells[1][1]) == "precision0.5_refineTrue"
    with pytest.raises(TalkcodecError, match="CODEC.KEY=VALUE"):
        bench_main([str(sample_video), "--set", "x264.preset=slow", "--out", str(tmp_path), "-q"])
