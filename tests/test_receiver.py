"""The call's receiving half on a fake clock: playout times, loss, jitter, stalls, key requests,
the end of a call and the recording, without real time or a network (fast and exact)."""

from __future__ import annotations

import av
import numpy as np
import pytest
from talkcodec.transport import control
from talkcodec.transport.receiver import KEY_REQUEST_INTERVAL, FaceReceiver

import talkcodec
from talkcodec.packet import Packet, PacketKind
from talkcodec.video import read_frames

FPS = 25
FRAMES = 50
T0 = 1_000.0  # the sender's frame clock starts here (the fake clock shares it: loopback)


@pytest.fixture(scope="module")
def wires(sample_video):
    """Wire bytes of each of the sample's first 2 s of frames through `mesh` (a reference first)."""
    encoder = talkcodec.get_codec("mesh").encoder(fps=FPS)
    out = [[p.to_bytes() for p in encoder.encode(frame)] for frame in read_frames(sample_video, fps=FPS, max_seconds=FRAMES / FPS)]
    encoder.close()
    return out


class Clock:
    def __init__(self, now: float = T0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def call(wires, delay=lambda seq: 0.03, drop=lambda seq, packet: False, bye=True, steps_every=0.01,
         stall=None, audio=None, voice_late=None, frames_per_packet=1, **receiver):  # fmt: skip
    """Play ``wires`` through a FaceReceiver on a fake clock: packet group ``seq`` arrives at
    T0 + seq / FPS + delay(seq); the receiver steps every ``steps_every`` s except during
    ``stall`` (start, end); ``audio``: a chunk arriving as soon as it is captured, 30 ms late
    (without RTP times), or ``voice_late`` s late with RTP times. Returns the receiver, the
    control messages it sent and why it ended."""
    clock = Clock()
    receiver = FaceReceiver(clock=clock, **receiver)
    sent: list[str] = []
    arrivals = sorted((T0 + seq / FPS + delay(seq), seq) for seq in range(len(wires)))
    arrivals = [(T0, -1)] + arrivals  # the start message
    if bye:
        arrivals.append((arrivals[-1][0] + 0.001, len(wires)))
    chunk_s = 0 if audio is None else len(audio) / 48000
    late = 0.03 if voice_late is None else voice_late
    reason, pending, next_audio, rtp = "", list(arrivals), T0 + chunk_s + late, 0
    while not reason and clock.now < T0 + 30:
        while audio is not None and next_audio <= clock.now:
            receiver.on_audio(audio, next_audio, None if voice_late is None else rtp)
            next_audio, rtp = next_audio + chunk_s, rtp + len(audio)
        while pending and pending[0][0] <= clock.now:
            _, seq = pending.pop(0)
            if seq < 0:
                receiver.on_message(control.encode(control.Start(T0, FPS, frames_per_packet)))
            elif seq == len(wires):
                receiver.on_message(control.encode(control.Bye(len(wires) - 1, "input_ended")))
            else:
                for wire in wires[seq]:
                    if not drop(seq, Packet.from_bytes(wire)):
                        receiver.on_message(wire)
        if stall is None or not stall[0] <= clock.now - T0 < stall[1]:
            reason = receiver.step(clock.now, sent.append)
        clock.now = round(clock.now + steps_every, 6)
    receiver.close()
    return receiver, [control.parse(s) for s in sent], reason


def test_every_frame_plays_at_its_time_and_the_call_ends_when_all_are_played(wires):
    receiver, sent, reason = call(wires)
    assert reason == "the other side's input ended" and not sent
    assert [seq for seq, concealed in receiver.shown] == list(range(FRAMES))
    assert not any(concealed for _, concealed in receiver.shown)
    latencies = np.array(receiver.stats.total.latencies_ms)
    # frame 0 fixes the clock (30 ms late); each plays 120 ms later, stepped every 10 ms
    assert latencies.min() >= 150 - 1e-6 and latencies.max() <= 150 + 10 + 1e-6


def test_jitter_under_the_playout_delay_costs_no_frame(wires):
    rng = np.random.default_rng(0)
    jitter = rng.uniform(0.0, 0.1, FRAMES)
    receiver, _, _ = call(wires, delay=lambda seq: 0.02 + jitter[seq])
    assert [seq for seq, concealed in receiver.shown] == list(range(FRAMES))
    assert receiver.stats.total.frames_concealed == 0


@pytest.mark.parametrize("lost", [[7], [7, 8, 9], [10, 20, 30]])
def test_lost_deltas_are_concealed_one_frame_each(wires, lost):
    receiver, sent, _ = call(wires, drop=lambda seq, packet: seq in lost and packet.kind == PacketKind.FRAME)
    assert [seq for seq, _ in receiver.shown] == list(range(FRAMES))
    assert [seq for seq, concealed in receiver.shown if concealed] == lost
    assert receiver.stats.total.frames_concealed == len(lost) and not sent  # a delta needs no key


def test_a_lost_key_is_asked_for_at_most_every_key_request_interval(wires):
    receiver, sent, _ = call(wires, drop=lambda seq, packet: seq == 25 and packet.kind == PacketKind.FRAME)
    assert all(isinstance(m, control.KeyRequest) for m in sent) and sent  # the sender cannot make a key in time here
    assert len(sent) <= (FRAMES - 25) / FPS / KEY_REQUEST_INTERVAL + 1
    assert [seq for seq, concealed in receiver.shown if concealed] == list(range(25, FRAMES))  # every delta of it


def test_a_lost_reference_is_asked_for(wires):
    receiver, sent, _ = call(wires, drop=lambda seq, packet: packet.kind == PacketKind.REFERENCE)
    assert sent and all(isinstance(m, control.ReferenceRequest) for m in sent)
    assert receiver.stats.total.frames_shown == 0  # nothing to draw from, nothing made up


def test_packets_before_the_start_message_are_scheduled_by_their_arrival(wires):
    receiver, _, reason = call(wires, delay=lambda seq: -0.5 if seq < 3 else 0.03)  # they overtook it
    assert reason == "the other side's input ended"
    assert [seq for seq, _ in receiver.shown] == list(range(FRAMES))


def test_a_stall_of_3_seconds_skips_ahead_instead_of_playing_late(wires):
    receiver, _, _ = call(wires * 3, stall=(1.0, 4.0))  # the sample three times: 6 s
    skipped = receiver.stats.total.frames_skipped_at_receiver
    assert 2 * FPS < skipped <= 3.5 * FPS
    shown = [seq for seq, _ in receiver.shown]
    assert shown == sorted(shown) and len(shown) + skipped >= len(wires) * 3 - 1
    late = np.array(receiver.stats.total.latencies_ms[-FPS:])
    assert late.max() < 300  # back on time after the skip


def test_a_silent_sender_has_vanished(wires):
    receiver, _, reason = call(wires[:10], bye=False, vanish_after=2.0)
    assert "vanished (nothing for 2 s)" in reason
    shown = list(receiver.shown)
    assert [seq for seq, concealed in shown if not concealed] == list(range(10))
    assert 1.5 * FPS < len(shown) - 10 <= 2.1 * FPS  # held until it was given up, 2 s after the last message


def test_the_recording_holds_missing_frames_and_lays_the_audio_under_them(wires, tmp_path):
    path = tmp_path / "received.mp4"
    tone = (0.3 * np.sin(np.arange(960) / 10)).astype(np.float32)
    call(wires, drop=lambda seq, packet: seq in (5, 6) and packet.kind == PacketKind.FRAME, record=str(path), audio=tone)
    with av.open(str(path)) as container:
        durations = {s.type: float(s.duration * s.time_base) for s in container.streams}
        assert container.streams.video[0].frames == FRAMES
    assert durations["video"] == pytest.approx(FRAMES / FPS, abs=0.05)
    assert durations["audio"] == pytest.approx(FRAMES / FPS, abs=0.1)


def placer(frame0: float | None = T0):
    from talkcodec.transport.playout import AudioPlacer, PlayoutClock

    clock = PlayoutClock()
    if frame0 is not None:
        clock.start(T0, FPS)
        clock.arrived(0, frame0)
    return AudioPlacer(clock)


CHUNK = np.ones(960, np.float32)


@pytest.mark.parametrize("origin", [123_456, 2**32 - 1000])  # the RTP clock starts anywhere and wraps
def test_audio_is_placed_by_its_rtp_time_however_late_it_arrives(origin):
    audio = placer()
    lateness = [0.25, 0.02, 0.3, 0.1]  # arrival is not used once RTP times are known
    placed = [audio.place(CHUNK, T0 + 0.02 * (i + 1) + late, (origin + 960 * i) % 2**32) for i, late in enumerate(lateness)]
    assert [p[0] for p in placed] == [0, 960, 1920, 2880]


@pytest.mark.parametrize(("rtp_step", "placed_at", "length"), [
    (2 * 960, 960, 2 * 960),  # one packet lost: silence in its place, then the chunk
    (960, 960, 960),  # in order
    (0, None, 0),  # a duplicate: nothing new
    (10**9, 960, 960),  # a hostile jump: carried on where the audio was, no hour of silence
])  # fmt: skip
def test_lost_duplicate_and_hostile_audio_packets(rtp_step, placed_at, length):
    audio = placer()
    audio.place(CHUNK, T0 + 0.02, 5000)
    placed = audio.place(CHUNK, T0 + 0.04, 5000 + rtp_step)
    if placed_at is None:
        assert placed is None
    else:
        assert placed[0] == placed_at and len(placed[1]) == length
        assert placed[1][: length - 960].sum() == 0  # the filled gap is silence


def test_without_rtp_times_the_first_chunk_is_placed_by_its_arrival():
    assert placer(frame0=None).place(CHUNK, T0 + 0.1) is None  # frame 0's time unknown: cannot place
    audio = placer(frame0=T0)
    first = audio.place(CHUNK, T0 + 0.1)  # ended 100 ms after frame 0: began at 80 ms
    assert first[0] == round(0.08 * 48000)
    assert audio.place(CHUNK, T0 + 0.5)[0] == first[0] + 960  # the rest follow it


@pytest.mark.parametrize("late", [0.02, 0.15, 0.4])
def test_an_audio_driven_decoders_frames_wait_for_their_voice_as_late_as_it_comes(late):
    from talkcodec.transport.playout import JITTER_MARGIN_S, VOICE_LATENESS_PACKETS, VOICE_MARGIN_S, PlayoutClock

    clock = PlayoutClock(0.12)
    clock.start(T0, FPS)
    clock.arrived(0, T0 + 0.03)
    clock.needs_audio(0.1)
    assert clock.delay == pytest.approx(0.1 + JITTER_MARGIN_S)  # no voice yet

    def voice(packets, late, first=0):
        for k in range(first, first + packets):  # 60 ms packets, each arriving `late` after its first sample
            clock.voice_arrived(k * 0.06, clock.frame0 + k * 0.06 + late)

    voice(50, late)
    assert clock.delay == pytest.approx(max(0.12, 0.1 + late + VOICE_MARGIN_S))
    voice(VOICE_LATENESS_PACKETS, 0.01, first=50)  # the network got better: the delay follows it down
    assert clock.delay == pytest.approx(max(0.12, 0.1 + 0.01 + VOICE_MARGIN_S))


@pytest.fixture(scope="module")
def apb_wires(sample_video):
    """The sample's first 2 s through `apb` in the packets of 3 frames it sends in calls."""
    encoder = talkcodec.get_codec("apb").encoder(fps=FPS)
    out = [[p.to_bytes() for p in encoder.encode(frame)] for frame in read_frames(sample_video, fps=FPS, max_seconds=FRAMES / FPS)]
    out[-1] += [p.to_bytes() for p in encoder.flush()]
    encoder.close()
    return out, encoder.frames_per_packet


@pytest.mark.parametrize("voice_late", [0.05, 0.3])
def test_apb_draws_every_frame_with_the_voice_it_reads_however_late_the_voice(apb_wires, voice_late):
    wires, frames_per_packet = apb_wires
    voice = (0.1 * np.sin(np.arange(2880) / 7)).astype(np.float32)  # 60 ms packets
    receiver, _, reason = call(wires, audio=voice, voice_late=voice_late, frames_per_packet=frames_per_packet)
    assert reason == "the other side's input ended"
    assert [seq for seq, _ in receiver.shown] == list(range(FRAMES))
    leads = np.array(receiver.stats.total.voice_lead_ms)
    assert len(leads) == FRAMES and np.percentile(leads[10:], 5) >= -1e-6  # (the first frames: before 5 packets)
    latencies = np.array(receiver.stats.total.latencies_ms)
    assert np.median(latencies) < 1000 * (voice_late + 0.06 + 0.1 + 0.05)  # lateness, packet, look-ahead, margins
