"""`talkcodec train` end to end on the bundled sample: cache, pairs, a tiny run, resume, weights."""

import json

import numpy as np
import pytest
import torch

import talkcodec
from talkcodec.audio import MelSettings
from talkcodec.cli import main
from talkcodec.training.cache import CacheSettings, build_cache
from talkcodec.training.data import Augment, PairDataset, Split, load_clips, split_ranges, validation_pairs
from talkcodec.training.objectives import OBJECTIVES
from talkcodec.training.trainer import TrainConfig, Trainer, train
from talkcodec.weights import load_checkpoint

SECONDS = 2.0


@pytest.fixture(scope="module")
def cache(training_cache):
    return training_cache


def test_cache_holds_crops_landmarks_and_opus_mel(cache, sample_video):
    folder, summary = cache
    assert summary == {"sample": {"frames": 50, "faces": 50, "has_audio": True, "bytes": (folder / "sample.npz").stat().st_size}}
    (clip,) = load_clips(folder)
    assert len(clip) == 50 and clip.image(0).shape == (256, 256, 3)
    assert clip.landmarks.shape == (50, 478, 2) and 0 < clip.landmarks.mean() < 256
    assert clip.mel.shape[0] == 80 and clip.mel.shape[1] >= SECONDS * 100 and clip.mel.max() > -10  # speech, not silence
    assert np.abs(clip.pose).max() < 90 and (clip.blink > 0).all()
    mtime = (folder / "sample.npz").stat().st_mtime
    build_cache([sample_video], folder, CacheSettings(max_seconds=SECONDS), progress=False)  # already cached: skipped
    assert (folder / "sample.npz").stat().st_mtime == mtime


@pytest.mark.parametrize("augment", [Augment(), None])
def test_pairs_have_the_shapes_the_networks_expect(cache, augment):
    clips = load_clips(cache[0])
    mel = MelSettings()
    train_ranges, tail, unseen = split_ranges(clips, Split(held_out=(), tail=0.2))
    assert train_ranges == [(0, 0, 40)] and tail == [(0, 40, 50)] and unseen == []
    data = PairDataset(clips, 64, mel, ranges=train_ranges, length=3, augment=augment)
    sample = data[0]
    assert sample["source"].shape == sample["driving"].shape == (3, 64, 64)
    assert sample["mel"].shape == (80, mel.steps) and sample["pose"].shape == (3,) and sample["landmarks"].shape == (478, 2)
    assert torch.equal(data[1]["source"], data[1]["source"])  # deterministic per (epoch, item)
    pairs = validation_pairs(clips, Split(held_out=(), tail=0.2), per_clip=3)
    assert pairs["unseen"] == [] and len(pairs["tail"]) == 3
    assert all(c == 0 and s == 0 and 40 <= d < 50 for c, s, d in pairs["tail"])


def test_tiny_run_stops_mid_epoch_resumes_and_its_weights_load(cache, tmp_path, codec="apb"):
    run = tmp_path / "run"
    settings = {"codec": codec, "model": "tiny", "epochs": 1, "steps_per_epoch": 2, "batch_size": 2, "held_out": [],
                "val_per_clip": 2, "gan_start": 1}  # fmt: skip
    stopped = train(run, settings, cache_dir=cache[0], minutes=1e-9, progress=False)  # out of time after one step
    assert stopped["step"] == 0  # the last validated entry: the untrained baseline
    tensors, info = load_checkpoint(run / "checkpoint")
    assert info["step"] == 1
    with pytest.raises(talkcodec.TalkcodecError, match="--resume"):
        train(run, settings, cache_dir=cache[0], progress=False)

    config = TrainConfig.from_dict(info["train"])
    trainer = Trainer(config, run, None, cache[0], "cpu", False, OBJECTIVES[codec].preset("tiny"))
    trainer.resume()  # exactly the saved state: network, critic, optimizer moments, step
    assert trainer.step == 1
    assert all(torch.equal(v, tensors["model." + k]) for k, v in trainer.model.state_dict().items())
    moments = trainer.opt_g.state_dict()["state"]
    assert moments and all(torch.equal(s["exp_avg"], tensors[f"opt_g.{i}.exp_avg"]) for i, s in moments.items())

    last = train(run, {"epochs": 2}, resume=True, progress=False)  # the cache folder comes from run.json
    history = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]
    assert last["step"] == 4 and [h["step"] for h in history] == [0, 2, 4]
    assert set(last["validation"]["tail"]) >= {"l1", "psnr", "ssim", "lpips", "landmark"}
    assert 0 < last["validation"]["tail"]["lpips"] < 1  # against the real 256 crops
    assert "adversarial" in history[-1]["train"]  # the critic switched on at gan_start
    assert (run / "samples" / "epoch-002.png").exists() and (run / "curve.png").exists()
    codec_obj = talkcodec.get_codec(codec, weights=str(run / "weights.safetensors"), refine=True)
    assert codec_obj.weights.info["step"] == 4 and codec_obj.mel.steps == MelSettings().steps
    assert codec_obj.decoder().lookahead_s == pytest.approx(0.1)
    assert codec_obj.network is not None  # the exported network loads into the codec


def test_train_cli_errors_are_one_line(tmp_path, capsys):
    assert main(["train", "--out", str(tmp_path / "r"), "--data", str(tmp_path)]) == 2
    assert "--codec is required" in capsys.readouterr().err
    assert main(["train", "--codec", "apb", "--out", str(tmp_path / "r"), "--data", str(tmp_path / "nope")]) == 2
    assert "no such file or folder" in capsys.readouterr().err
    assert main(["train", "--resume", "--out", str(tmp_path / "empty")]) == 2
    assert "nothing to resume" in capsys.readouterr().err
    assert main(["train", "--codec", "apb", "--out", str(tmp_path / "r"), "--cache", str(tmp_path), "--set", "bogus=1"]) == 2
    assert "unknown training setting" in capsys.readouterr().err


def test_enroll_fine_tunes_given_weights_on_one_video(cache, sample_video, tmp_path, capsys):
    base = tmp_path / "base"
    train(base, {"codec": "apb", "model": "tiny", "epochs": 1, "steps_per_epoch": 1, "batch_size": 2, "held_out": []},
          cache_dir=cache[0], progress=False)  # fmt: skip
    out = tmp_path / "me.safetensors"
    args = ["enroll", "--codec", "apb", "--video", str(sample_video), "--out", str(out), "--weights",
            str(base / "weights.safetensors"), "--steps", "3", "--device", "cpu", "-q", "--set", "max_seconds_per_clip=2"]  # fmt: skip
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "base weights" in printed and "personal weights" in printed
    personal = talkcodec.get_codec("apb", weights=str(out))
    assert personal.weights.info["step"] == 3 and personal.weights.info["trained_on"] == ["sample"]
    base_tensors = talkcodec.get_codec("apb", weights=str(base / "weights.safetensors")).weights.tensors
    assert any(not torch.equal(base_tensors[k], v) for k, v in personal.weights.tensors.items() if k.startswith("model."))


@pytest.mark.parametrize("augment", [Augment(), None])
def test_full_resolution_frames_are_the_network_frames_larger(cache, augment):
    clips = load_clips(cache[0])
    train_ranges, _, _ = split_ranges(clips, Split(held_out=(), tail=0.2))
    data = PairDataset(clips, 64, MelSettings(), ranges=train_ranges, length=3, augment=augment, full_size=256)
    for sample in (data[0], data[2]):
        assert sample["source_full"].shape == sample["driving_full"].shape == (3, 256, 256)
        for key in ("source", "driving"):  # the same crop, zoom, shift, mirror and colour jitter
            shrunk = torch.nn.functional.interpolate(sample[f"{key}_full"][None], size=64, mode="area")[0]
            assert (shrunk - sample[key]).abs().mean() < 0.02, key
