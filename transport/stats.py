"""Per-second call statistics: what went over the wire, what came out, and how late."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np


@dataclass
class Counters:
    frame_bytes_sent: int = 0
    frame_packets_sent: int = 0
    frame_packets_dropped: int = 0  # not sent: the data channel's buffer was full (congestion)
    frames_skipped_at_sender: int = 0  # not encoded: the sender was behind the frame clock (a slow machine)
    frames_skipped_at_receiver: int = 0  # not drawn: playout fell 2 s behind and skipped ahead (a slow decoder)
    frame_bytes_received: int = 0
    frame_packets_received: int = 0
    reference_bytes: int = 0
    frames_shown: int = 0
    frames_concealed: int = 0
    key_requests: int = 0
    control_refused: int = 0  # control messages from the other side that were malformed or too many
    packets_refused: int = 0  # damaged packets, or more than the receiver holds (a flood)
    audio_bytes_sent: int = 0
    audio_bytes_received: int = 0
    # what crossed the network (``wire.py``): datagrams with their IP/UDP headers, by stream
    wire_face_bytes_sent: int = 0  # the data channels: face packets, references, control, SCTP acks
    wire_audio_bytes_sent: int = 0  # the voice: SRTP and SRTCP
    wire_face_bytes_received: int = 0
    wire_audio_bytes_received: int = 0
    latencies_ms: list[float] = field(default_factory=list)  # capture -> display, per shown frame
    # audio-driven decoders: voice the frame was drawn with past its look-ahead (< 0: drawn without all of it)
    voice_lead_ms: list[float] = field(default_factory=list)


SENT = ("frame_bytes_sent", "frame_packets_sent", "frame_packets_dropped", "frames_skipped_at_sender",
        "reference_bytes", "audio_bytes_sent", "wire_face_bytes_sent", "wire_audio_bytes_sent")  # fmt: skip


def wire_kbps(counters: Counters, last: Counters, seconds: float) -> dict[str, float]:
    """``wire_kbps_sent`` / ``_received`` (everything) and per stream, over ``seconds`` since ``last``."""
    out: dict[str, float] = {}
    for direction in ("sent", "received"):
        total = 0.0
        for stream in ("face", "audio"):
            name = f"wire_{stream}_bytes_{direction}"
            kbps = (getattr(counters, name) - getattr(last, name)) * 8 / 1000 / seconds
            out[f"wire_{stream}_kbps_{direction}"] = round(kbps, 2)
            total += kbps
        out[f"wire_kbps_{direction}"] = round(total, 2)
    return out


class CallStats:
    """Shared by the sender and receiver halves of one peer; ``tick()`` once a second makes a
    record. ``sent_by``: the stats of the peer that sends to this one when it runs in the same
    process (a loopback call), whose sending figures this one then reports as its own."""

    def __init__(self, log_path: str | Path | None = None, live: IO[str] | None = None,
                 sent_by: CallStats | None = None):  # fmt: skip
        self.total = Counters()
        self.records: list[dict[str, Any]] = []
        self.sent_by = sent_by
        self._last = Counters()
        self._last_time = self._start = time.time()
        self._log = open(log_path, "w") if log_path else None
        self._live = live

    def _counters(self) -> Counters:
        """The totals, with the sending ones from ``sent_by`` when set."""
        if self.sent_by is None:
            return self.total
        counters = Counters(**vars(self.total))
        for name in SENT:
            setattr(counters, name, getattr(self.sent_by.total, name))
        return counters

    def tick(self) -> dict[str, Any]:
        now = time.time()
        span = max(now - self._last_time, 1e-6)
        t, last = self._counters(), self._last
        expected = (t.frames_shown - last.frames_shown) or 1
        latencies = t.latencies_ms[len(last.latencies_ms) :]
        record = {
            "t": round(now - self._start, 2),
            "frame_kbps_sent": round((t.frame_bytes_sent - last.frame_bytes_sent) * 8 / 1000 / span, 2),
            "frame_kbps_received": round((t.frame_bytes_received - last.frame_bytes_received) * 8 / 1000 / span, 2),
            "audio_kbps_sent": round((t.audio_bytes_sent - last.audio_bytes_sent) * 8 / 1000 / span, 2),
            "audio_kbps_received": round((t.audio_bytes_received - last.audio_bytes_received) * 8 / 1000 / span, 2),
            "fps_shown": round((t.frames_shown - last.frames_shown) / span, 1),
            "loss_pct": round(100 * (t.frames_concealed - last.frames_concealed) / expected, 1),
            "concealed": t.frames_concealed - last.frames_concealed,
            "dropped_at_sender": t.frame_packets_dropped - last.frame_packets_dropped,
            "skipped_at_sender": t.frames_skipped_at_sender - last.frames_skipped_at_sender,
            "latency_ms": round(float(np.median(latencies)), 1) if latencies else None,
            **wire_kbps(t, last, span),
        }
        self._last = Counters(**{k: (list(v) if isinstance(v, list) else v) for k, v in vars(t).items()})  # a copy
        self._last_time = now
        self.records.append(record)
        if self._log:
            self._log.write(json.dumps(record) + "\n")
            self._log.flush()
        if self._live:
            self._live.write(
                f"[{record['t']:6.1f}s] frames {record['frame_kbps_sent']:.1f}/{record['frame_kbps_received']:.1f} kbps "
                f"sent/recv, audio {record['audio_kbps_sent']:.1f}/{record['audio_kbps_received']:.1f} kbps, "
                f"wire {record['wire_kbps_sent']:.1f}/{record['wire_kbps_received']:.1f} kbps, "
                f"{record['fps_shown']:.1f} fps, "
                f"loss {record['loss_pct']:.1f}%, latency {record['latency_ms']} ms\n"
            )
            self._live.flush()
        return record

    def summary(self) -> dict[str, Any]:
        t = self._counters()
        lat = np.array(t.latencies_ms) if t.latencies_ms else None
        seconds = max(time.time() - self._start, 1e-6)

        def kbps(nbytes: int) -> float:
            return round(nbytes * 8 / 1000 / seconds, 2)

        return {
            "seconds": round(seconds, 1),
            "frame_kbps_sent": kbps(t.frame_bytes_sent),
            "frame_kbps_received": kbps(t.frame_bytes_received),
            "audio_kbps_sent": kbps(t.audio_bytes_sent),
            "audio_kbps_received": kbps(t.audio_bytes_received),
            "frames_shown": t.frames_shown,
            "frames_concealed": t.frames_concealed,
            "frame_packets_sent": t.frame_packets_sent,
            "frame_packets_received": t.frame_packets_received,
            "frame_packets_dropped_at_sender": t.frame_packets_dropped,
            "frames_skipped_at_sender": t.frames_skipped_at_sender,
            "frames_skipped_at_receiver": t.frames_skipped_at_receiver,
            "key_requests": t.key_requests,
            "control_refused": t.control_refused,
            "packets_refused": t.packets_refused,
            "reference_bytes": t.reference_bytes,
            "latency_ms_median": round(float(np.median(lat)), 1) if lat is not None else None,
            "latency_ms_p95": round(float(np.percentile(lat, 95)), 1) if lat is not None else None,
            # the 5th percentile: >= 0 when (nearly) every frame was drawn with all the voice it reads
            "voice_lead_ms_p5": round(float(np.percentile(t.voice_lead_ms, 5)), 1) if t.voice_lead_ms else None,
            **wire_kbps(t, Counters(), seconds),
        }

    def close(self) -> None:
        if self._log:
            self._log.close()
            self._log = None
