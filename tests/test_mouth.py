"""`apb`'s mouth: the mouth basis (geometry), the mouth fuser, its weights and the receiver using it."""

import dataclasses

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation
from talkcodec.models.config import unbounded_fields
from talkcodec.models.mouth_fuser import MouthFuser, MouthFuserConfig

from talkcodec.codecs.mesh_model import ShapeModel
from talkcodec.codecs.posed import load_mouth_model
from talkcodec.errors import WeightsError
from talkcodec.face import INNER_LIPS
from talkcodec.mouth import RIGID_POINTS, WEIGHTS_CODEC, MouthBasis, fit_mouth_basis, lower_face_points
from talkcodec.quant import VectorCoding
from talkcodec.weights import module_tensors, save_weights

TEMPLATE = ShapeModel.load().mean  # (478, 3) unit-RMS canonical face, y down


def jaw_direction(template: np.ndarray) -> np.ndarray:
    """(478, 3) a jaw opening: every lower-face point moves down in proportion to how far below the lips it is."""
    points = lower_face_points(template)
    lip_line = template[13, 1]
    motion = np.zeros_like(template)
    motion[points, 1] = np.clip(template[points, 1] - lip_line + 0.05, 0, None)
    return motion


def pose(face: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The canonical ``face`` seen in a crop: a random similarity (turn, scale, shift), crop pixels."""
    rotation = Rotation.from_rotvec(rng.normal(0, 8, 3), degrees=True).as_matrix()
    return 60 * rng.uniform(0.8, 1.2) * face @ rotation.T + np.array([128, 128, 0]) + np.r_[rng.normal(0, 5, 2), 0]


@pytest.fixture(scope="module")
def synthetic():
    """Tracks of two 'people' (the template, and a wider-mouthed one) opening the jaw and widening the lips."""
    rng = np.random.default_rng(0)
    jaw = jaw_direction(TEMPLATE)
    width = np.zeros_like(TEMPLATE)
    lips = lower_face_points(TEMPLATE)
    width[lips, 0] = TEMPLATE[lips, 0] * 0.3
    people = [TEMPLATE, TEMPLATE + 0.3 * width]
    tracks = []
    for person in people:
        open_, wide = rng.uniform(0, 1, 60), rng.uniform(-0.5, 0.5, 60)
        tracks.append(np.stack([pose(person + a * jaw + b * width, rng) for a, b in zip(open_, wide)]))
    return fit_mouth_basis(tracks, TEMPLATE, k=4), jaw, width, tracks


def test_lower_face_is_below_the_nose_and_apart_from_the_rigid_points():
    points = lower_face_points(TEMPLATE)
    assert set(INNER_LIPS) <= set(points.tolist()) and 152 in points  # lips and chin
    assert not set(points.tolist()) & set(RIGID_POINTS) and 1 not in points and (points < 468).all()


def test_basis_finds_the_directions_faces_move_in(synthetic):
    basis, jaw, width, _ = synthetic
    for truth in (jaw, width):
        direction = truth[basis.points].reshape(-1)
        direction /= np.linalg.norm(direction)
        assert np.abs(basis.basis[:2] @ direction).max() > 0.98  # one of the first two directions
    assert min(basis.scale[:2]) > 10 * basis.scale[3]  # two directions explain it all


def test_directions_that_open_the_mouth_come_before_larger_ones_that_do_not():
    """A chin that moves a lot with the lips still, and a small lip opening: the principal order
    would put the chin first; hints want the opening first."""
    rng = np.random.default_rng(4)
    points = lower_face_points(TEMPLATE)
    chin = np.zeros_like(TEMPLATE)
    chin[points, 1] = np.clip(TEMPLATE[points, 1] - TEMPLATE[14, 1] - 0.1, 0, None) * 3  # only well below the lips
    lips = np.zeros_like(TEMPLATE)
    lips[14, 1], lips[13, 1] = 0.03, -0.03  # the inner lips part
    tracks = [np.stack([pose(TEMPLATE + a * chin + b * lips, rng) for a, b in rng.uniform(0, 1, (80, 2))])]
    basis = fit_mouth_basis(tracks, TEMPLATE, k=3)
    assert abs(basis.gap_direction()[0]) > 10 * abs(basis.gap_direction()[1])  # the opening first
    assert basis.scale[1] > basis.scale[0]  # though it moves the face less than the chin does


def test_coefficients_ignore_the_head_pose(synthetic):
    basis, jaw, _, _ = synthetic
    rng = np.random.default_rng(1)
    face = TEMPLATE + 0.7 * jaw
    seen = [basis.coefficients(pose(face, rng)) for _ in range(5)]
    assert np.abs(np.array(seen) - seen[0]).max() < 1e-6 * np.abs(seen[0]).max() + 1e-9


def test_displacement_moves_the_coefficients_it_is_asked_to(synthetic):
    basis, _, _, tracks = synthetic
    landmarks = tracks[0][3]
    change = np.array([0.05, -0.03, 0.0, 0.0])  # the jaw and the lip width: motion in the picture's plane
    moved = landmarks.copy()
    moved[basis.points, :2] += basis.displacement(landmarks, change)
    got = basis.coefficients(moved) - basis.coefficients(landmarks)
    assert np.abs(got - change).max() < 0.15 * np.abs(change).max()  # x, y only: the turned head's depth does not move (~10 %)
    assert np.array_equal(moved[list(RIGID_POINTS)], landmarks[list(RIGID_POINTS)])


def test_the_gap_direction_measures_the_lip_opening(synthetic):
    basis, jaw, _, _ = synthetic
    gap = lambda face: face[14, 1] - face[13, 1]  # noqa: E731
    opened = basis.coefficients(pose(TEMPLATE + jaw, np.random.default_rng(2)))
    closed = basis.coefficients(pose(TEMPLATE, np.random.default_rng(3)))
    assert basis.gap_direction() @ (opened - closed) == pytest.approx(gap(TEMPLATE + jaw) - gap(TEMPLATE), rel=0.05)


@pytest.mark.parametrize("members", [1, 3])
def test_mouth_fuser_config_is_bounded_and_starts_from_the_reference(members):
    assert unbounded_fields(MouthFuserConfig) == []
    fuser = MouthFuser(dataclasses.replace(MouthFuserConfig.tiny(), members=members)).eval()
    reference = torch.randn(3, 4)
    inputs = (torch.randn(3, 80, 20), torch.zeros(3, 3), torch.full((3, 2), 0.3), reference)
    out = fuser(*inputs)
    assert out.shape == (3, 4) and torch.isfinite(out).all()
    assert not torch.allclose(out, reference)  # it predicts a change
    each = fuser.member_outputs(*inputs)  # (members, 3, 4): the forward is their mean
    assert each.shape == (members, 3, 4) and torch.allclose(out, each.mean(dim=0))


def write_mouth_weights(path, basis: MouthBasis, config: MouthFuserConfig, model: MouthFuser | None = None, **info):
    model = model or MouthFuser(config)
    tracks = [np.cumsum(np.random.default_rng(0).normal(0, 0.02, (50, 3)), axis=0)]
    hints = {k: torch.from_numpy(v) for k, v in VectorCoding.fit(tracks, np.full(3, 0.005)).to_arrays("hints.coding.").items()}
    tensors = {**module_tensors(model, "model."), **basis.tensors(), **hints}
    mel = {"sample_rate": 16000, "n_mels": 80, "hop_s": 0.01, "win_s": 0.025, "window_s": 0.2, "lookahead_s": 0.1}
    return save_weights(path, WEIGHTS_CODEC, config.to_dict(), tensors, {"mel": mel, **info}, exact=("mouth.", "hints."))


def test_mouth_weights_round_trip(tmp_path, synthetic):
    basis = synthetic[0]
    config = dataclasses.replace(MouthFuserConfig.tiny(), coefficients=basis.size)
    model = load_mouth_model(str(write_mouth_weights(tmp_path / "m.safetensors", basis, config)))
    assert np.array_equal(model.basis.points, basis.points) and np.allclose(model.basis.basis, basis.basis, atol=1e-6)
    assert model.predict(np.zeros((80, 20), np.float32), np.r_[0, 0, 0, 0.3, 0.3, 0, 0, 50.0], np.zeros(4)).shape == (4,)


@pytest.mark.parametrize(
    "spoil",
    [
        lambda t: t.update({"mouth.points": torch.tensor([0, 1, 478], dtype=torch.int64)}),  # index past the mesh
        lambda t: t.update({"mouth.scale": -t["mouth.scale"]}),
        lambda t: t.update({"mouth.basis": torch.full_like(t["mouth.basis"], float("nan"))}),
        lambda t: t.pop("mouth.mean"),
        lambda t: t.update({"mouth.points": t["mouth.points"].float()}),
    ],
)
def test_malformed_mouth_basis_is_a_weights_error(tmp_path, synthetic, spoil):
    tensors = synthetic[0].tensors()
    spoil(tensors)
    with pytest.raises(WeightsError):
        MouthBasis.from_tensors(tensors, "test")


def test_mouth_model_of_another_size_than_its_basis_is_refused(tmp_path, synthetic):
    basis = synthetic[0]
    config = dataclasses.replace(MouthFuserConfig.tiny(), coefficients=basis.size + 1)
    with pytest.raises(WeightsError, match="basis"):
        load_mouth_model(str(write_mouth_weights(tmp_path / "m.safetensors", basis, config)))


def opening_fuser(config: MouthFuserConfig, amount: float) -> MouthFuser:
    """A fuser that ignores its inputs and moves the mouth ``amount`` spreads along the first direction."""
    fuser = MouthFuser(config)
    with torch.no_grad():
        for member in fuser.members:
            last = member.fuse[-1]
            last.weight.zero_()
            last.bias.zero_()
            last.bias[0] = amount
    return fuser


def test_apb_receiver_moves_the_lower_face_by_the_fuser_and_nothing_else(tiny_weights, tmp_path, sample_video, synthetic):
    import talkcodec
    from talkcodec.audio import load_audio
    from talkcodec.packet import Packet
    from talkcodec.video import read_frames

    basis = synthetic[0]
    config = dataclasses.replace(MouthFuserConfig.tiny(), coefficients=basis.size)
    mouth = write_mouth_weights(tmp_path / "mouth.safetensors", basis, config, opening_fuser(config, 3.0))
    weights = tiny_weights("apb", tmp_path / "w.safetensors")
    encoder = talkcodec.get_codec("apb", weights=str(weights)).encoder(fps=25)
    packets = [p for f in read_frames(sample_video, fps=25, max_seconds=0.4) for p in encoder.encode(f)] + encoder.flush()
    encoder.close()
    drawn = {}
    for way in ("audio", "reference"):
        decoder = talkcodec.get_codec("apb", weights=str(weights), mouth=way, mouth_model=str(mouth)).decoder()
        assert decoder.uses_audio == (way == "audio")
        decoder.push_audio(load_audio(sample_video, 16000, max_seconds=1), 16000)
        drawn[way] = [f.image.astype(int) for p in packets for f in decoder.decode(Packet.from_bytes(p.to_bytes()))]
        drawn[way] += [f.image.astype(int) for f in decoder.flush()]
    lips = encoder.last_observation.landmarks[list(INNER_LIPS), :2]
    top = int(lips[:, 1].min()) - 40  # well above the mouth: the eyes and forehead
    for opened, kept in zip(drawn["audio"], drawn["reference"]):
        assert np.array_equal(opened[:top], kept[:top])
        assert np.abs(opened[top:] - kept[top:]).mean() > 1.0  # the lower face moved


def test_hints_carry_the_senders_mouth_coefficients_to_the_receiver(tiny_weights, tmp_path, sample_video, synthetic):
    import talkcodec
    from talkcodec.packet import Packet, PacketKind
    from talkcodec.video import read_frames

    basis = synthetic[0]
    config = dataclasses.replace(MouthFuserConfig.tiny(), coefficients=basis.size)
    mouth = str(write_mouth_weights(tmp_path / "mouth.safetensors", basis, config))
    weights = str(tiny_weights("apb", tmp_path / "w.safetensors"))
    frames = list(read_frames(sample_video, fps=25, max_seconds=0.4))
    sent, bytes_sent = [], {}
    for hints in (0, 3):
        encoder = talkcodec.get_codec("apb", weights=weights, mouth_model=mouth, hints=hints).encoder(fps=25)
        packets = []
        for frame in frames:
            packets += encoder.encode(frame)
            if hints:
                sent.append(basis.coefficients(encoder.last_observation.landmarks)[:hints])
        packets += encoder.flush()
        encoder.close()
        bytes_sent[hints] = sum(len(p.to_bytes()) for p in packets if p.kind == PacketKind.FRAME)
        decoder = talkcodec.get_codec("apb", weights=weights, mouth_model=mouth, mouth="reference").decoder()
        shown = [f for p in packets for f in decoder.decode(Packet.from_bytes(p.to_bytes()))] + decoder.flush()
        assert [f.seq for f in shown] == list(range(len(frames)))
    assert bytes_sent[3] > bytes_sent[0]  # hints cost bits (the bench measures how many with real statistics)
    # the receiver's mouth for the last frame: the hints, dequantized
    codec = talkcodec.get_codec("apb", weights=weights, mouth_model=mouth, mouth="reference")
    state = decoder._ref.state  # noqa: SLF001 (what the last reference prepared)
    step = codec.mouth_model.hints.step[:3]
    vector = np.concatenate([state.vector[:8], np.rint(sent[-1] / step) * step])
    assert np.abs(codec.frame_mouth(state, vector, None)[:3] - sent[-1]).max() <= step.max() / 2 + 1e-9


def test_hints_from_another_mouth_model_are_refused(tiny_weights, tmp_path, sample_video, synthetic):
    import talkcodec
    from talkcodec.packet import Packet
    from talkcodec.video import read_frames

    basis = synthetic[0]
    weights = str(tiny_weights("apb", tmp_path / "w.safetensors"))
    paths = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        config = dataclasses.replace(MouthFuserConfig.tiny(), coefficients=basis.size)
        paths.append(str(write_mouth_weights(tmp_path / f"m{seed}.safetensors", basis, config)))
    encoder = talkcodec.get_codec("apb", weights=weights, mouth_model=paths[0], hints=2).encoder(fps=25)
    reference = next(p for f in read_frames(sample_video, fps=25, max_seconds=0.2) for p in encoder.encode(f))
    encoder.close()
    decoder = talkcodec.get_codec("apb", weights=weights, mouth_model=paths[1]).decoder()
    with pytest.raises(WeightsError, match="mouth_model"):
        decoder.decode(Packet.from_bytes(reference.to_bytes()))
