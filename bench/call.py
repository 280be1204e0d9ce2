"""Call benchmark: a loopback call (both peers in this process, over 127.0.0.1) on a real clip,
one per codec, reporting end-to-end latency (capture -> display, median and 95th percentile),
received fps, the payload kbps (frame packets, reference, Opus audio), what crossed the network
(``wire_*``: every datagram with its IP/UDP headers, each way, face data channels and audio
apart; ``transport/wire.py``) and peak memory.

    python -m talkcodec.bench.call CLIP --seconds 60 --codecs mesh --out DIR [--set frames_per_packet=1]
        [--audio-kbps 12 --audio-frame-ms 60] [--face-over channel]

Wire rates are means over the call's whole seconds but the first two (the reference image and
the connection's set-up go then); ``*_with_reference`` over the whole call.

Peak memory is the process's resident memory above its level before the call, and so holds
BOTH peers (sender with mediapipe, receiver with the decoder).
"""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path

import numpy as np

from ..audio import CALL_AUDIO_FRAME_MS, CALL_AUDIO_KBPS, OPUS_FRAME_MS
from .run import PeakMemory

WIRE_KEYS = ("wire_kbps", "wire_face_kbps", "wire_audio_kbps")


def steady(records: list[dict], key: str) -> float | None:
    """Mean of ``key`` over the records of whole seconds, the first two left out."""
    values = [r[key] for r in records[2:-1] if r.get(key) is not None]
    return round(float(np.mean(values)), 2) if values else None


def call_once(clip: str, codec: str, seconds: float, settings: dict | None = None,
              audio_kbps: float = CALL_AUDIO_KBPS, audio_frame_ms: int = CALL_AUDIO_FRAME_MS,
              face_over: str = "voice") -> dict:  # fmt: skip
    from ..transport.call import CallOptions, loopback

    settings = settings or {}
    audio = {"audio_kbps": audio_kbps, "audio_frame_ms": audio_frame_ms, "face_over_voice": face_over == "voice"}
    with PeakMemory() as memory:
        sender, receiver, reason = asyncio.run(
            loopback(CallOptions(input=clip, codec=codec, loop=True, seconds=seconds, settings=settings, **audio),
                     CallOptions(settings=settings, **audio))
        )
    summary = receiver.stats.summary()
    records = receiver.stats.records[1:-1]  # whole seconds only (not the start-up and the last partial one)
    seconds_played = max(summary["seconds"], 1e-6)
    return {
        "clip": Path(clip).name, "codec": codec, "settings": settings, "seconds": seconds, "ended": reason,
        "frames_per_packet": sender.sender.frames_per_packet,
        "latency_ms_median": summary["latency_ms_median"], "latency_ms_p95": summary["latency_ms_p95"],
        "voice_lead_ms_p5": summary["voice_lead_ms_p5"],
        "fps_received": round(float(np.mean([r["fps_shown"] for r in records])), 2) if records else None,
        "frame_kbps": round(receiver.stats.total.frame_bytes_received * 8 / 1000 / seconds, 2),
        "reference_bytes": sender.stats.total.reference_bytes,
        "audio_kbps": round(sender.stats.total.audio_bytes_sent * 8 / 1000 / seconds_played, 2),
        "frames_shown": summary["frames_shown"], "frames_concealed": summary["frames_concealed"],
        "opus_kbps_set": audio_kbps, "opus_frame_ms": audio_frame_ms, "face_over": face_over,
        **{f"{key}_sent": steady(sender.stats.records, f"{key}_sent") for key in WIRE_KEYS},  # sender -> receiver
        **{f"{key}_back": steady(sender.stats.records, f"{key}_received") for key in WIRE_KEYS},  # receiver -> sender
        "wire_kbps_sent_with_reference": sender.stats.summary()["wire_kbps_sent"],
        "peak_mb_both_peers": round(memory.peak_mb, 1),
        # resident memory above the start, both peers: after the first minute and at the end (growth)
        "rss_mb_after_60_s": next((mb for t, mb in memory.trace if t >= 60), None),
        "rss_mb_at_end": memory.trace[-1][1] if memory.trace else None,
    }  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m talkcodec.bench.call", description=__doc__)
    parser.add_argument("clip", help="a video with a face (looped when shorter than --seconds)")
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--codecs", default="mesh", help="comma-separated talkcodec codecs")
    parser.add_argument("--out", default="results", help="folder for call.json")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="sender setting, e.g. frames_per_packet=1")
    parser.add_argument("--audio-kbps", type=float, default=CALL_AUDIO_KBPS, help=f"Opus bitrate (default {CALL_AUDIO_KBPS})")
    parser.add_argument("--audio-frame-ms", type=int, default=CALL_AUDIO_FRAME_MS, choices=OPUS_FRAME_MS,
                        help=f"Opus packet duration (default {CALL_AUDIO_FRAME_MS})")
    parser.add_argument("--face-over", default="voice", choices=("voice", "channel"),
                        help="frame packets in the voice's packets (default) or on their own data channel")
    args = parser.parse_args(argv)
    from ..cli import parse_settings

    settings = parse_settings(args.set)
    results = [call_once(args.clip, codec.strip(), args.seconds, settings, args.audio_kbps, args.audio_frame_ms,
                         args.face_over)
               for codec in args.codecs.split(",")]  # fmt: skip
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "call.json").write_text(json.dumps(results, indent=1))
    for r in results:
        print(json.dumps(r))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
