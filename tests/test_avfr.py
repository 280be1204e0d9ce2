"""`avfr` (pose first + a learned mouth code): the coder, its training, and the codec around it."""

import numpy as np
import pytest
import torch
from talkcodec.models.mouth_coder import MouthCoder, MouthCoderConfig

import talkcodec
from talkcodec.audio import load_audio
from talkcodec.codecs.learned import reference_vector
from talkcodec.codecs.stream import reference_image
from talkcodec.errors import PacketError, WeightsError
from talkcodec.face import INNER_LIPS
from talkcodec.packet import Packet, PacketKind, unpack
from talkcodec.training.mouth_code import code_data, decode_clip, evaluate, train_mouth_code
from talkcodec.video import read_frames


@pytest.fixture(scope="module")
def trained(training_cache, tmp_path_factory):
    """(summary, weights path, data): a small coder trained for seconds on the sample's 2 s."""
    run = tmp_path_factory.mktemp("avfr")
    data = code_data(training_cache[0], progress=False)
    data.unseen = data.train  # the sample is one person: measure on the frames it trained on
    summary = train_mouth_code(run, {"steps": 300, "batch_size": 32, "rate_weight": 0.001}, training_cache[0],
                               progress=False, model_config=MouthCoderConfig(code=3, hidden=32), data=data)  # fmt: skip
    return summary, run / "weights.safetensors", data


def test_coder_shapes_and_config_bounds():
    coder = MouthCoder(MouthCoderConfig.tiny())
    code = coder.encode(torch.randn(5, 4))
    assert code.shape == (5, 2)
    assert coder.decode(torch.round(code), torch.randn(5, 4), torch.randn(5, 4)).shape == (5, 4)
    with pytest.raises(ValueError):
        MouthCoderConfig.from_dict({"code": 0})
    with pytest.raises(ValueError, match="more than"):
        MouthCoder(MouthCoderConfig(coefficients=4, code=5))


def test_an_untrained_coder_sends_the_first_coefficients_and_takes_the_rest_from_the_audio():
    coder = MouthCoder(MouthCoderConfig(coefficients=6, code=2, initial_step=0.5))
    coefficients, audio, reference = torch.randn(7, 6), torch.randn(7, 6), torch.randn(7, 6)
    code = coder.encode(coefficients)
    assert torch.allclose(code, coefficients[:, :2] / 0.5)
    decoded = coder.decode(torch.round(code), audio, reference)
    assert (decoded[:, :2] - coefficients[:, :2]).abs().max() <= 0.25 + 1e-6  # half a step
    assert torch.equal(decoded[:, 2:], audio[:, 2:])


def test_the_learned_code_draws_the_mouth_closer_than_the_audio_alone(trained):
    summary, _, data = trained
    with_code = summary["validation"]["unseen"]["mouth_landmark"]
    audio_only = evaluate(None, data, data.train, 0.0, 1.0)["mouth_landmark"]
    assert with_code < 0.7 * audio_only
    clip = data.train[0]
    frames = clip.frames(0.0, 1.0)
    _, symbols = decode_clip(_coder(trained), data.mouth, clip, frames, int(frames[0]))
    assert symbols.shape == (len(frames), 3) and np.array_equal(symbols, np.round(symbols))  # whole steps: what is sent


def _coder(trained) -> MouthCoder:
    codec = talkcodec.get_codec("avfr", weights=str(trained[1]))
    return codec.network


def test_trained_weights_load_into_avfr_and_its_code_moves_the_mouth_only(trained, sample_video):
    _, path, _ = trained
    codec = talkcodec.get_codec("avfr", weights=str(path))
    assert codec.vector_size() == 8 + 2 + 3 and codec.weights.info["mouth_model"] == codec.mouth_model.fingerprint
    encoder = codec.encoder(fps=25)
    packets = [p for f in read_frames(sample_video, fps=25, max_seconds=0.8) for p in encoder.encode(f)] + encoder.flush()
    encoder.close()
    decoder = codec.decoder()
    decoder.push_audio(load_audio(sample_video, 16000, max_seconds=2), 16000)
    frames = [f for p in packets for f in decoder.decode(Packet.from_bytes(p.to_bytes()))] + decoder.flush()
    assert len(frames) == 20 and not any(f.concealed for f in frames)
    meta = unpack(next(p for p in packets if p.kind == PacketKind.REFERENCE).payload)
    reference = reference_vector(meta["vector"], codec.vector_size())
    state = codec.prepare(reference_image(meta, "avfr"), reference, meta)
    mel = decoder.audio.window(0.4)
    lips = state.landmarks[list(INNER_LIPS), :2]
    (x0, y0), (x1, y1) = lips.min(0).astype(int) - 10, lips.max(0).astype(int) + 10
    top = y0 - 30  # well above the mouth
    still = codec.render(state, reference, mel).astype(int)
    moved = []
    for step in (4, -4):  # four steps of every code value, either way (the coder is not linear)
        shifted = reference.copy()
        shifted[10:] += step
        b = codec.render(state, shifted, mel).astype(int)
        assert np.array_equal(still[:top], b[:top])
        moved.append(np.abs(still - b)[y0:y1, x0:x1].mean())
    assert max(moved) > 1.0, moved  # grey levels, mean over the mouth's box
    lower = reference.copy()
    lower[9] += 3.0  # the lip position 3 px lower: the lower face follows, the rest stays
    b = codec.render(state, lower, mel).astype(int)
    assert np.array_equal(still[:top], b[:top]) and np.abs(still - b)[y0:y1, x0:x1].mean() > 1.0
    lower[8] = 1e4
    with pytest.raises(PacketError, match="lip position"):
        codec.render(state, lower, mel)


def test_the_receiver_places_the_lips_where_the_sender_saw_them(trained, sample_video):
    from talkcodec.codecs.avfr import SENT_BEFORE_CODE
    from talkcodec.codecs.posed import CODING_STEP
    from talkcodec.metrics import LIPS

    codec = talkcodec.get_codec("avfr", weights=str(trained[1]))
    encoder, quantizer, errors = codec.encoder(fps=25), codec.stream.quantizer, []
    for frame in read_frames(sample_video, fps=25, max_seconds=0.6):
        encoder.encode(frame)
        seen = encoder.last_observation
        received = quantizer.dequantize(quantizer.quantize(codec.vector(seen)))  # what the receiver decodes
        canonical = codec.head.project(received[:3], received[5:8])
        placed = canonical[list(LIPS)].mean(0) + received[len(CODING_STEP) : SENT_BEFORE_CODE]
        errors.append(np.abs(placed - seen.landmarks[list(LIPS), :2].mean(0)).max())
    encoder.close()
    step = quantizer.step[len(CODING_STEP)]
    assert max(errors) <= step / 2 + 1e-6, errors  # the rounded pose's error cancelled: only the lips' own rounding


def test_a_coder_trained_over_another_mouth_model_is_refused(trained, tmp_path):
    from talkcodec.weights import load_weights, save_weights

    w = load_weights(trained[1], "avfr")
    save_weights(tmp_path / "w.safetensors", "avfr", w.config, w.tensors, {**w.info, "mouth_model": "0" * 16},
                 exact=("coding.",))  # fmt: skip
    with pytest.raises(WeightsError, match="mouth model"):
        talkcodec.get_codec("avfr", weights=str(tmp_path / "w.safetensors"))


def test_train_cli_trains_the_avfr_coder(training_cache, tmp_path, capsys):
    from talkcodec.cli import main

    out = tmp_path / "run"
    assert main(["train", "--codec", "avfr", "--cache", str(training_cache[0]), "--out", str(out), "--steps", "5", "-q"]) == 0
    assert "weights:" in capsys.readouterr().out
    assert talkcodec.get_codec("avfr", weights=str(out / "weights.safetensors")).weights.info["step"] == 5


def test_decode_without_a_code_is_the_fuser_with_the_first_hints_true(trained):
    _, _, data = trained
    clip = data.train[0]
    frames = clip.frames(0.0, 1.0)
    audio, _ = decode_clip(None, data.mouth, clip, frames, int(frames[0]))
    hinted, sent = decode_clip(None, data.mouth, clip, frames, int(frames[0]), hints=2)
    assert np.allclose(hinted[:, :2], clip.coefficients[frames, :2], atol=1e-5) and sent.shape == (len(frames), 2)
    assert np.allclose(hinted[:, 2:], audio[:, 2:])
