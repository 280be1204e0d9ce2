import numpy as np
import pytest

from talkcodec.audio import MelSettings, OpusDecoder, OpusEncoder, load_audio, log_mel, mel_windows, resample


def test_load_audio_from_the_sample(sample_video):
    samples = load_audio(sample_video, 16000)
    assert samples is not None and samples.dtype == np.float32
    assert abs(len(samples) / 16000 - 6.0) < 0.1 and np.abs(samples).max() > 0.05


def test_video_without_audio_gives_none(noface_video):
    assert load_audio(noface_video) is None


@pytest.mark.parametrize("lookahead", [0.1, 0.0])
def test_mel_window_is_aligned_to_the_frame_time(lookahead):
    settings = MelSettings(lookahead_s=lookahead)
    rate = settings.sample_rate
    samples = np.zeros(rate * 2, np.float32)
    click = 1.0  # seconds
    samples[int(click * rate) : int(click * rate) + 80] = 1.0
    windows = mel_windows(samples, np.array([click, click - 0.5]), settings)
    assert windows.shape == (2, settings.n_mels, settings.steps)
    energy = windows[0].max(axis=0)  # (steps,)
    loudest_time = click + lookahead - settings.window_s + np.argmax(energy) * settings.hop_s
    assert abs(loudest_time - click) <= 2 * settings.hop_s
    assert windows[1].max() < windows[0].max() - 5  # half a second away: silence


@pytest.mark.parametrize("settings", [MelSettings(), MelSettings(sample_rate=24000, n_mels=40, win_s=0.05)])
def test_log_mel_equals_librosa(settings):
    """The cached filterbank applied by PyTorch is librosa's melspectrogram (weights were trained on it)."""
    import librosa

    rate = settings.sample_rate
    samples = np.random.default_rng(0).normal(0, 0.1, rate).astype(np.float32)
    n_fft = 1 << int(np.ceil(np.log2(settings.win_s * rate)))
    expected = librosa.feature.melspectrogram(
        y=samples, sr=rate, n_fft=n_fft, hop_length=round(settings.hop_s * rate), win_length=round(settings.win_s * rate),
        n_mels=settings.n_mels,
    )  # fmt: skip
    np.testing.assert_allclose(log_mel(samples, settings), np.log(expected + 1e-6), atol=1e-4)


def test_mel_windows_pad_past_the_ends():
    windows = mel_windows(np.zeros(1600, np.float32), np.array([0.0, 5.0]))
    assert np.isfinite(windows).all()


@pytest.mark.parametrize(("kbps", "frame_ms"), [(24, 20), (12, 40), (12, 60)])
def test_opus_roundtrip_keeps_a_tone(kbps, frame_ms):
    rate = 16000
    t = np.arange(rate) / rate
    tone = (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    encoder = OpusEncoder(kbps * 1000, rate, frame_ms)
    packets = encoder.encode(tone) + encoder.encode(None)
    step = 48 * frame_ms
    assert [p for p, _ in packets] == [i * step for i in range(len(packets))]
    assert -(-48000 // step) <= len(packets) <= -(-48000 // step) + 1  # one per frame_ms (+ the flushed priming)
    decoder = OpusDecoder()
    out = np.concatenate([decoder.decode(data) for _, data in packets])
    reference = resample(tone, rate, 48000)
    lag = 312  # libopus priming
    a, b = out[lag + 4800 : lag + 40000], reference[4800:40000]
    assert np.corrcoef(a, b)[0, 1] > 0.9
    assert sum(len(d) for _, d in packets) * 8 / 1000 < 1.6 * kbps  # ~kbps for one second


def test_opus_packets_are_20_40_or_60_ms():
    with pytest.raises(ValueError, match="20, 40, 60"):
        OpusEncoder(frame_ms=30)


def test_damaged_opus_packet_is_silence():
    assert OpusDecoder().decode(b"\xff\x00garbage").shape == (960,)


def test_receiver_windows_equal_training_windows():
    """AudioTimeline fed 20 ms chunks at 48 kHz (as a call delivers them) gives the windows
    training cut from the whole clip's spectrogram."""
    from talkcodec.audio import AudioTimeline, MelSettings, log_mel, resample, slice_windows

    rng = np.random.default_rng(0)
    samples = (rng.standard_normal(48000 * 3) * 0.1).astype(np.float32)
    settings = MelSettings()
    times = np.array([0.5, 1.0, 2.5])
    expected = slice_windows(log_mel(resample(samples, 48000, 16000), settings), times, settings)
    timeline = AudioTimeline(settings)
    for start in range(0, len(samples), 960):
        timeline.push(samples[start : start + 960], 48000)
    for window, time in zip(expected, times):
        assert np.allclose(timeline.window(time), window, atol=1e-4)
    assert timeline.window(10.0).max() == pytest.approx(np.log(1e-6))  # not yet heard: silence
