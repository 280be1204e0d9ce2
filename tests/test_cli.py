import json

import av
import numpy as np
import pytest

from talkcodec.cli import DAMAGED_INPUT, main
from talkcodec.container import TkcReader
from talkcodec.packet import Packet
from talkcodec.pipeline import decode_file


def _streams(path):
    with av.open(str(path)) as container:
        video = container.streams.video[0]
        frames = sum(1 for _ in container.decode(video))
        container.seek(0)
        audio = container.streams.audio
        audio_seconds = float(audio[0].duration * audio[0].time_base) if audio else None
        return frames, (video.width, video.height), audio_seconds


@pytest.fixture(scope="module")
def encoded(sample_video, tmp_path_factory):
    out = tmp_path_factory.mktemp("cli")
    tkc = out / "s.tkc"
    assert main(["encode", str(sample_video), "-o", str(tkc), "--seconds", "2", "-q"]) == 0
    return tkc


def test_decode_gives_an_mp4_with_audio_in_sync(encoded, tmp_path):
    mp4 = tmp_path / "s.mp4"
    assert main(["decode", str(encoded), "-o", str(mp4), "-q"]) == 0
    frames, size, audio_seconds = _streams(mp4)
    assert frames == 50 and size == (256, 256)
    assert abs(audio_seconds - frames / 25) < 0.1


def test_info_reports_the_bitrate_split(encoded, capsys):
    assert main(["info", str(encoded), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["codec"] == "mesh" and info["frames"] == 50 and info["duration_s"] == 2.0
    assert 0 < info["frame_kbps"] <= 5.0 and info["references"] == 1 and info["reference_bytes"] > 1000
    assert 10 < info["audio_kbps"] < 40 and info["faceless_frames"] == 0
    assert main(["info", str(encoded)]) == 0
    assert "frame kbps" in capsys.readouterr().out


def test_packets_of_several_frames_keep_every_frame_and_the_audio(sample_video, encoded, tmp_path, capsys):
    tkc, mp4 = tmp_path / "b.tkc", tmp_path / "b.mp4"
    args = ["encode", str(sample_video), "-o", str(tkc), "--seconds", "2", "--set", "frames_per_packet=5", "-q"]
    assert main(args) == 0
    info = {}
    for name, path in (("single", encoded), ("bundled", tkc)):
        capsys.readouterr()
        assert main(["info", str(path), "--json"]) == 0
        info[name] = json.loads(capsys.readouterr().out)
    assert info["bundled"]["frames"] == 50 and info["bundled"]["frame_kbps"] < 0.8 * info["single"]["frame_kbps"]
    assert info["single"]["frame_packets"] == 50 and info["bundled"]["frame_packets"] <= 50 / 5 + 2  # + a key split
    assert main(["decode", str(tkc), "-o", str(mp4), "-q"]) == 0
    frames, _, audio_seconds = _streams(mp4)
    assert frames == 50 and abs(audio_seconds - frames / 25) < 0.1


def test_truncated_stream_decodes_up_to_the_damage(encoded, tmp_path, capsys):
    cut = tmp_path / "cut.tkc"
    data = encoded.read_bytes()
    cut.write_bytes(data[: len(data) - 3000])  # the reference is whole, about half the frames
    mp4 = tmp_path / "cut.mp4"
    assert main(["decode", str(cut), "-o", str(mp4), "-q"]) == DAMAGED_INPUT
    assert "damaged" in capsys.readouterr().err
    frames, _, _ = _streams(mp4)
    assert 10 < frames < 50


def _decoded(path, tmp_path):
    """Every output image of a decode, and its stats."""
    images = []

    def keep(index, image):
        images.append(image.copy())
        return image

    stats = decode_file(path, tmp_path / "out.mp4", progress=False, compose=keep)
    return images, stats


@pytest.mark.parametrize("seed", range(3))
def test_a_damaged_stream_resumes_after_the_damage_and_exits_3(encoded, tmp_path, capsys, seed):
    """200 bytes of garbage among the first second's frames: every frame from the next key on
    (frame 25) is as in the undamaged decode, the timeline is kept, and the exit status says so."""
    clean, _ = _decoded(encoded, tmp_path)
    with TkcReader(encoded) as reader:
        offsets = [offset for offset, kind, body in reader._records(reader.data_start) if kind == 1]
        seqs = [item.seq for item in reader if isinstance(item, Packet)]
    frame_offsets = [o for o, q in zip(offsets, seqs) if 5 <= q <= 15]  # frame packets of seq 5..15
    at = frame_offsets[0] + int(np.random.default_rng(seed).integers(0, frame_offsets[-1] - frame_offsets[0] - 200))
    data = bytearray(encoded.read_bytes())
    data[at : at + 200] = np.random.default_rng(seed).bytes(200)
    damaged = tmp_path / "damaged.tkc"
    damaged.write_bytes(bytes(data))
    images, stats = _decoded(damaged, tmp_path)
    assert len(images) == len(clean) == 50 and stats.damaged_records >= 1 and stats.concealed_frames >= 1
    assert all(np.array_equal(a, b) for a, b in zip(images[25:], clean[25:]))
    assert main(["decode", str(damaged), "-o", str(tmp_path / "d.mp4"), "-q"]) == DAMAGED_INPUT
    err = capsys.readouterr().err
    assert "damaged part(s) skipped" in err and "frames concealed" in err


@pytest.mark.parametrize(
    "make, args, message",
    [
        (lambda p: p.write_text("hello"), ["encode", "{p}", "-q"], "not a readable video (invalid data found"),
        (lambda p: None, ["encode", "{p}", "--set", "precision=abc", "-q"], "precision must be a number"),
        (lambda p: None, ["encode", "{p}", "-q"], "no such file"),
        (lambda p: p.write_bytes(b"\x00" * 100), ["decode", "{p}", "-q"], "not a .tkc file"),
        (lambda p: p.write_bytes(b"TKC\x00\x07"), ["info", "{p}"], "version 7"),
        (lambda p: None, ["demo", "--codec", "h265", "-q"], "available: apb, avfr, mesh"),
        (lambda p: None, ["demo", "--codec", "apb", "--set", "weights={p}", "-q"], "no such weights file"),
        (lambda p: p.write_bytes(b"\x00" * 64), ["demo", "--codec", "avfr", "--set", "weights={p}", "-q"], "not a talkcodec weights file"),
        (lambda p: None, ["encode", "{p}", "--set", "precision", "-q"], "key=value"),
    ],
)
def test_user_errors_are_one_line(tmp_path, capsys, make, args, message):
    path = tmp_path / "input.bin"
    make(path)
    assert main([a.replace("{p}", str(path)) for a in args]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and err.startswith("talkcodec: error:") and "\n" not in err


def test_version_and_the_codec_list(capsys):
    import talkcodec
    from talkcodec.registry import codec_class
    from talkcodec.settings import describe_settings

    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out.strip() == f"talkcodec {talkcodec.__version__}"
    assert main(["codecs"]) == 0
    out = capsys.readouterr().out
    for name in talkcodec.list_codecs():
        assert f"\n{name}: " in "\n" + out
        for setting, default, accepts, _ in describe_settings(codec_class(name).Settings):
            assert f"{setting}={json.dumps(default)}" in out and accepts in out


def test_info_tells_the_frames_per_packet_a_learned_codec_used(sample_video, tmp_path, capsys):
    tkc = tmp_path / "a.tkc"
    assert main(["encode", str(sample_video), "--codec", "apb", "-o", str(tkc), "--seconds", "1", "-q"]) == 0
    capsys.readouterr()
    assert main(["info", str(tkc), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["settings"]["frames_per_packet"] == 3


def test_video_without_a_face_is_refused(noface_video, tmp_path, capsys):
    out = tmp_path / "x.tkc"
    assert main(["encode", str(noface_video), "-o", str(out), "-q"]) == 2
    assert "no face found" in capsys.readouterr().err and not out.exists()


def test_demo_runs_on_the_bundled_sample(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path), "--seconds", "2", "-q"]) == 0
    out = capsys.readouterr().out
    assert "PSNR" in out and "kbps" in out
    frames, size, audio_seconds = _streams(tmp_path / "side_by_side.mp4")
    assert frames == 50 and size == (512, 256) and audio_seconds is not None
    assert not (tmp_path / "original_crops.mp4").exists()


def test_a_frame_number_jump_is_damage_not_a_hang(encoded, tmp_path, capsys):
    from fractions import Fraction

    from talkcodec.container import TkcWriter
    from talkcodec.packet import PacketKind

    forged = tmp_path / "forged.tkc"
    keys = []
    with TkcReader(encoded) as reader, TkcWriter(forged, reader.header) as writer:
        for item in reader:
            if isinstance(item, Packet):
                writer.write_packet(item)
                keys += [item] if item.key else []
        writer.write_packet(Packet(1, PacketKind.FRAME, 1 << 34, keys[0].payload, key=True, fps=Fraction(25)))
    assert main(["decode", str(forged), "-o", str(tmp_path / "f.mp4"), "-q"]) == DAMAGED_INPUT
    assert "jump" in capsys.readouterr().err
