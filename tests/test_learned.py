"""The learned codecs' plumbing with tiny random networks: weights files, coding, packets."""

import json
from fractions import Fraction

import numpy as np
import pytest
import torch
from talkcodec.models.apb import APBConfig, APBModel
from talkcodec.models.mouth_coder import MouthCoder, MouthCoderConfig

import talkcodec
from talkcodec.errors import PacketError, WeightsError
from talkcodec.packet import Packet, PacketKind
from talkcodec.quant import MAX_KEY_DISTANCE, VectorCoding, VectorStream
from talkcodec.video import read_frames
from talkcodec.weights import load_checkpoint, load_matching, load_module, load_weights, save_checkpoint, save_weights

FRAMES = 30
DRAWS_WITH_AUDIO = {"avfr": {}, "apb": {"refine": True}}  # apb's networks on, over the audio-driven mouth


@pytest.fixture(scope="module", params=["avfr", "apb"])
def learned(tiny_weights, request, tmp_path_factory, sample_video):
    """(codec name, weights path, wire bytes per frame) of the sample through a tiny random model."""
    name = request.param
    path = tiny_weights(name, tmp_path_factory.mktemp(name) / "weights.safetensors")
    return name, path, _encode(name, path, sample_video, frames_per_packet=1)


def _encode(name, path, video, **settings):
    """Wire bytes per input frame (the packets held back come with the last one)."""
    encoder = talkcodec.get_codec(name, weights=str(path), **settings).encoder(fps=25)
    wires = [[p.to_bytes() for p in encoder.encode(f)] for f in read_frames(video, fps=25, max_seconds=FRAMES / 25)]
    wires[-1] += [p.to_bytes() for p in encoder.flush()]
    encoder.close()
    return wires


def _decode(name, path, wires, video):
    from talkcodec.audio import load_audio

    decoder = talkcodec.get_codec(name, weights=str(path), **DRAWS_WITH_AUDIO[name]).decoder()
    assert decoder.uses_audio
    decoder.push_audio(load_audio(video, 16000, max_seconds=2), 16000)
    return [f for group in wires for wire in group for f in decoder.decode(Packet.from_bytes(wire))] + decoder.flush()


def _frame_bytes(wires):
    return sum(len(w) for g in wires for w in g if Packet.from_bytes(w).kind == PacketKind.FRAME)


@pytest.mark.parametrize("name", ["avfr", "apb"])
def test_without_weights_the_codec_says_how_to_get_them(name, monkeypatch):
    from talkcodec.codecs import learned
    from talkcodec.registry import import_codecs

    import_codecs()  # first: a module imported under the patch would keep the patched function
    monkeypatch.setattr(learned, "shipped_weights", lambda codec: None)  # an installation without them
    with pytest.raises(WeightsError, match=f"talkcodec train --codec {name}"):
        talkcodec.get_codec(name)
    with pytest.raises(WeightsError, match="no such weights file"):
        talkcodec.get_codec(name, weights="/nonexistent/weights.safetensors")


def test_encode_packets_decode_roundtrip(learned, sample_video):
    name, path, wires = learned
    frames = _decode(name, path, wires, sample_video)
    assert [f.seq for f in frames] == list(range(FRAMES))
    assert all(f.image.shape == (256, 256, 3) and f.image.dtype == np.uint8 and not f.concealed for f in frames)
    assert len({f.image.tobytes() for f in frames}) > FRAMES // 2  # frames follow the motion, not a held image
    kbps = _frame_bytes(wires) * 8 / 1000 / (FRAMES / 25)
    assert kbps < {"avfr": 6, "apb": 3}[name]  # a random coder's code; trained ones code tighter


def test_by_default_packets_carry_the_frames_the_audio_look_ahead_hides(learned, sample_video):
    name, path, single = learned
    codec = talkcodec.get_codec(name, weights=str(path))
    assert codec.mel.lookahead_s == 0.1  # so: n - 1 frame intervals <= 100 ms
    assert (codec.frames_per_packet(Fraction(25)), codec.frames_per_packet(Fraction(30))) == (3, 4)
    several = _encode(name, path, sample_video)
    counts = [Packet.from_bytes(w).frames for g in several for w in g if Packet.from_bytes(w).kind == PacketKind.FRAME]
    assert max(counts) == 3 and sum(counts) == FRAMES
    assert _frame_bytes(several) < 0.75 * _frame_bytes(single)
    for a, b in zip(_decode(name, path, single, sample_video), _decode(name, path, several, sample_video), strict=True):
        assert a.seq == b.seq and np.array_equal(a.image, b.image)


def test_later_frames_of_a_packet_are_drawn_when_due_with_the_audio_heard_by_then(learned, sample_video):
    from talkcodec.audio import load_audio

    name, path, _ = learned
    packets = [Packet.from_bytes(w) for g in _encode(name, path, sample_video) for w in g]
    full = _decode(name, path, [[p.to_bytes() for p in packets]], sample_video)  # audio known from the start
    live = talkcodec.get_codec(name, weights=str(path), **DRAWS_WITH_AUDIO[name]).decoder()
    first = [f for p in packets[:2] for f in live.decode(p)]  # reference + the first packet, frames 0-2
    assert packets[1].frames == 3 and [f.seq for f in first] == [0]  # only the frame that is due
    live.push_audio(load_audio(sample_video, 16000, max_seconds=2), 16000)  # the audio arrives
    later = live.decode(None) + live.decode(None)
    assert [(f.seq, f.concealed) for f in later] == [(1, False), (2, False)]
    assert all(np.array_equal(a.image, b.image) for a, b in zip(later, full[1:3]))  # drawn with the audio
    deaf = talkcodec.get_codec(name, weights=str(path), **DRAWS_WITH_AUDIO[name]).decoder()  # drawn on arrival
    silent = [f for p in packets[:2] for f in deaf.decode(p)] + deaf.flush()
    assert any(not np.array_equal(a.image, b.image) for a, b in zip(later, silent[1:3]))


def test_apb_with_the_reference_mouth_draws_the_posed_reference_without_audio_or_networks(tiny_weights, tmp_path, sample_video):
    from talkcodec.packet import decode_image, unpack

    path = tiny_weights("apb", tmp_path / "w.safetensors")
    wires = _encode("apb", path, sample_video)
    codec = talkcodec.get_codec("apb", weights=str(path), mouth="reference")
    decoder = codec.decoder()
    assert not decoder.uses_audio and decoder.lookahead_s == 0.0
    frames = [f for g in wires for w in g for f in decoder.decode(Packet.from_bytes(w))] + decoder.flush()
    assert [f.seq for f in frames] == list(range(FRAMES)) and codec._network is None  # no network was even built
    refined = _decode("apb", path, wires, sample_video)
    assert all(not np.array_equal(a.image, b.image) for a, b in zip(frames[1:], refined[1:]))
    # the first frame is the reference moved to its own pose: the reference itself
    reference = next(Packet.from_bytes(w) for g in wires for w in g if Packet.from_bytes(w).kind == PacketKind.REFERENCE)
    image = decode_image(unpack(reference.payload)["image"])
    assert np.abs(frames[0].image.astype(int) - image).mean() < 1.0


def test_stream_from_other_weights_is_refused(tiny_weights, learned, tmp_path):
    name, _, wires = learned
    other = tiny_weights(name, tmp_path / "other.safetensors", seed=1)
    decoder = talkcodec.get_codec(name, weights=str(other)).decoder()
    with pytest.raises(WeightsError, match="decode it with the sender's weights"):
        decoder.decode(Packet.from_bytes(wires[0][0]))


def test_lost_and_corrupted_packets_never_crash(learned):
    name, path, wires = learned
    decoder = talkcodec.get_codec(name, weights=str(path)).decoder()
    rng = np.random.default_rng(0)
    shown = 0
    for seq, group in enumerate(wires):
        for wire in group:
            packet = Packet.from_bytes(wire)
            if packet.kind == PacketKind.FRAME and seq % 3 == 1:
                packet = None  # lost
            elif packet.kind == PacketKind.FRAME and seq % 3 == 2 and packet.payload:
                packet = Packet(packet.codec_id, PacketKind.FRAME, packet.seq, rng.bytes(len(packet.payload)),
                                packet.key, packet.key_distance, packet.ref_id, packet.fps)  # fmt: skip
            try:
                shown += len(decoder.decode(packet))
            except PacketError:
                pass
    assert shown >= 2 * FRAMES // 3


@pytest.mark.parametrize("damage", ["truncate", "garbage", "no_metadata", "huge_header", "wrong_codec", "bad_shape"])
def test_broken_weights_are_a_clear_error(tiny_weights, tmp_path, damage):
    good = tiny_weights("apb", tmp_path / "good.safetensors")
    path = tmp_path / "bad.safetensors"
    data = good.read_bytes()
    if damage == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        path.write_bytes(np.random.default_rng(0).bytes(4096))
    elif damage == "no_metadata":
        save_weights(path, "apb", {}, {"x": torch.zeros(2)})
        raw = bytearray(path.read_bytes())
        path.write_bytes(raw.replace(b'"talkcodec"', b'"tlkcodecxx"'))
    elif damage == "huge_header":
        path.write_bytes((1 << 40).to_bytes(8, "little") + data[8:])
    elif damage == "wrong_codec":
        path = tiny_weights("avfr", path)
    elif damage == "bad_shape":
        w = load_weights(good)
        tensors = dict(w.tensors)
        name = next(k for k in tensors if k.startswith("model.") and tensors[k].ndim == 4)
        tensors[name] = torch.zeros(1, 1, 1, 1)
        save_weights(path, "apb", w.config, tensors, info=w.info)
    with pytest.raises(WeightsError):
        codec = talkcodec.get_codec("apb", weights=str(path))
        codec.decoder()
        codec.network  # noqa: B018 (the network loads lazily)


def test_weights_keep_coding_exact_and_networks_fp16(tiny_weights, tmp_path):
    path = tiny_weights("avfr", tmp_path / "w.safetensors")
    w = load_weights(path, "avfr")
    assert w.tensors["coding.step"].dtype == torch.float32
    assert all(t.dtype == torch.float16 for k, t in w.tensors.items() if k.startswith("model.") and t.is_floating_point())
    model = MouthCoder(MouthCoderConfig.from_dict(w.config))
    load_module(model, w.tensors, str(path), "model.")
    assert json.loads(json.dumps(w.config)) == json.loads(json.dumps(model.config.to_dict()))


def test_warm_start_copies_what_fits_and_leaves_new_layers_fresh():
    import dataclasses

    old = MouthCoderConfig.tiny()
    tensors = {"model." + k: v for k, v in MouthCoder(old).state_dict().items()}
    new = MouthCoder(dataclasses.replace(old, code=old.code + 1))  # one more code value: the encoder's last layer changes
    fresh = load_matching(new, tensors, "old.safetensors", "model.")
    assert sorted(fresh) == ["decoder.0.0.weight", "encoder.1.bias", "encoder.1.weight", "log_step"]
    assert all(torch.equal(v, tensors["model." + k]) for k, v in new.state_dict().items() if k not in fresh)
    with pytest.raises(WeightsError, match="no tensor fits"):
        load_matching(APBModel(APBConfig.tiny()), tensors, "old.safetensors", "model.")


def test_checkpoint_shards_roundtrip(tmp_path, monkeypatch):
    from talkcodec import weights

    monkeypatch.setattr(weights, "SHARD_BYTES", 1000)
    tensors = {f"t{i}": torch.randn(100 + i) for i in range(5)}  # 400+ bytes each: several shards
    save_checkpoint(tmp_path, tensors, {"step": 7})
    assert len(list(tmp_path.glob("shard-*.safetensors"))) >= 3
    loaded, info = load_checkpoint(tmp_path)
    assert info["step"] == 7 and all(torch.equal(loaded[k], v) for k, v in tensors.items())
    outside = tmp_path.parent / f"{tmp_path.name}-elsewhere"
    save_checkpoint(outside, tensors, {"step": 1})
    shard = next(outside.glob("shard-*.safetensors"))
    (tmp_path / "checkpoint.json").write_text(json.dumps({**info, "shards": [f"../{outside.name}/{shard.name}"]}))
    with pytest.raises(WeightsError, match="outside its folder"):
        load_checkpoint(tmp_path)


@pytest.mark.parametrize("key_interval, frames, starts", [(8, 3, [0, 3, 6, 9, 12]), (8, 1, [0, 1, 2, 3]), (4, 4, [0, 4, 8])])
def test_key_interval_is_rounded_up_to_whole_packets(key_interval, frames, starts):
    from talkcodec.codecs.stream import FramePacketizer

    rng = np.random.default_rng(0)
    step = np.array([0.5, 0.5])
    stream = VectorStream(VectorCoding.fit([np.cumsum(rng.normal(0, 1, (60, 2)), axis=0)], step))
    packer = FramePacketizer(2, key_interval, Fraction(25), frames)
    packets = [p for seq in range(36) for p in packer.add(seq, 0, stream.quantizer.quantize(rng.normal(0, 3, 2)), stream)]
    packets += packer.flush()
    keys = [p.seq for p in packets if p.key]
    assert keys == list(range(0, 36, -(-key_interval // frames) * frames))
    assert [p.seq for p in packets][: len(starts)] == starts and all(p.frames == frames for p in packets)


def test_vector_coding_roundtrip_and_validation():
    rng = np.random.default_rng(0)
    step = np.array([0.5, 0.5, 0.01])
    track = np.cumsum(rng.normal(0, [1, 1, 0.02], (200, 3)), axis=0)
    coding = VectorCoding.fit([track], step)
    assert coding.delta_scale.shape == (MAX_KEY_DISTANCE, 3)
    assert coding.delta_scale[20].mean() > coding.delta_scale[0].mean()  # farther from the key, wider
    stream = VectorStream(coding)
    key = stream.quantizer.quantize(track[0])
    assert np.array_equal(stream.decode_key(stream.encode_key(key))[0], key)
    for d in (1, 5, 80):
        symbols = stream.quantizer.quantize(track[min(d, 199)])
        assert np.array_equal(stream.decode_delta(stream.encode_delta(symbols, key, d), key, d)[0], symbols)
    run = stream.quantizer.quantize(track[10:18])  # (8, 3): a packet of 8 frames
    assert np.array_equal(stream.decode_key(stream.encode_key(run, key), key, frames=8), run)
    assert np.array_equal(stream.decode_delta(stream.encode_delta(run, key, 10), key, 10, frames=8), run)
    one_by_one = sum(len(stream.encode_delta(row, key, 10 + i)) for i, row in enumerate(run))
    assert len(stream.encode_delta(run, key, 10)) < one_by_one  # each frame predicted from the one before
    arrays = coding.to_arrays()
    assert np.allclose(VectorCoding.from_arrays(arrays).step, step)
    for broken in ({**arrays, "coding.step": -arrays["coding.step"]}, {k: v for k, v in arrays.items() if "key_scale" not in k},
                   {**arrays, "coding.delta_scale": arrays["coding.delta_scale"][:3]}):  # fmt: skip
        with pytest.raises(ValueError):
            VectorCoding.from_arrays(broken)


def test_the_bench_runs_a_learned_codec_with_the_clip_audio(tiny_weights, tmp_path, sample_video):
    from talkcodec.bench.clips import crop_clip
    from talkcodec.bench.codecs import run_talkcodec

    frames = crop_clip(sample_video, 1.0)
    path = tiny_weights("apb", tmp_path / "w.safetensors")
    coded = run_talkcodec("apb", {"weights": str(path)}, frames, 25.0, np.zeros(16000, np.float32))
    assert coded.decoded.shape == frames.shape and coded.frame_bytes > 0 and coded.reference_bytes > 1000


@pytest.mark.parametrize("name", ["avfr", "apb"])
def test_shipped_weights_load_by_default_and_draw_the_sample(name, sample_video):
    codec = talkcodec.get_codec(name)  # no weights given: the ones shipped with talkcodec
    assert codec.weights.path.endswith(f"data/{name}.safetensors") and codec.weights.info["step"] > 0
    encoder, decoder = codec.encoder(fps=25), codec.decoder()
    frames = []
    for packets in [*map(encoder.encode, read_frames(sample_video, fps=25, max_seconds=0.4)), encoder.flush()]:
        for packet in packets:
            frames += decoder.decode(Packet.from_bytes(packet.to_bytes()))
    frames += decoder.flush()
    encoder.close()
    crop = encoder.last_observation.crop.astype(np.float32)
    assert len(frames) == 10 and np.abs(frames[-1].image.astype(np.float32) - crop).mean() < 40  # the face, not noise


@pytest.mark.parametrize("damage", ["short", "nan", "far", "position"])
def test_hostile_apb_references_are_a_packet_error(tiny_weights, damage, tmp_path, sample_video):
    from talkcodec.packet import pack, unpack

    path = tiny_weights("apb", tmp_path / "w.safetensors")
    codec = talkcodec.get_codec("apb", weights=str(path))
    encoder = codec.encoder(fps=25)
    reference = next(p for f in read_frames(sample_video, fps=25, max_seconds=0.2) for p in encoder.encode(f))
    encoder.close()
    meta = unpack(reference.payload)
    landmarks = np.frombuffer(meta["landmarks"], "<f2").copy()
    vector = np.frombuffer(meta["vector"], "<f2").copy()
    if damage == "short":
        meta["landmarks"] = meta["landmarks"][:-2]
    elif damage in ("nan", "far"):
        landmarks[7] = np.nan if damage == "nan" else 5000.0
        meta["landmarks"] = landmarks.astype("<f2").tobytes()
    else:
        vector[7] = 0.0  # the head at the camera
        meta["vector"] = vector.astype("<f2").tobytes()
    hostile = Packet(reference.codec_id, PacketKind.REFERENCE, reference.seq, pack(meta), ref_id=reference.ref_id)
    decoder = codec.decoder()
    with pytest.raises(PacketError, match="apb reference"):
        decoder.decode(Packet.from_bytes(hostile.to_bytes()))
    assert decoder.decode(Packet.from_bytes(reference.to_bytes())) == []  # the genuine reference is still taken
