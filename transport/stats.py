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
    latencies_ms: list[float] = field(default_factory=list)  # capture -> display, per shown frame


class CallStats:
    """Shared by the sender and receiver halves; ``tick()`` once a second makes a record."""

    def __init__(self, log_path: str | Path | None = None, live: IO[str] | None = None):
        self.total = Counters()
        self.records: list[dict[str, Any]] = []
        self._last = Counters()
        self._last_time = self._start = time.time()
        self._log = open(log_path, "w") if log_path else None
        self._live = live

    def tick(self) -> dict[str, Any]:
        now = time.time()
        span = max(now - self._last_time, 1e-6)
        t, last = self.total, self._last
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
            "latency_ms": round(float(np.median(latencies)), 1) if latencies else None,
        }
        self._last = Counters(**{k: (list(v) if isinstance(v, list) else v) for k, v in vars(t).items()})
        self._last_time = now
        self.records.append(record)
        if self._log:
            self._log.write(json.dumps(record) + "\n")
            self._log.flush()
        if self._live:
            self._live.write(
                f"[{record['t']:6.1f}s] frames {record['frame_kbps_sent']:.1f}/{record['frame_kbps_received']:.1f} kbps "
                f"sent/recv, audio {record['audio_kbps_received']:.1f} kbps, {record['fps_shown']:.1f} fps, "
                f"loss {record['loss_pct']:.1f}%, latency {record['latency_ms']} ms\n"
            )
            self._live.flush()
        return record

    def summary(self) -> dict[str, Any]:
        t = self.total
        lat = np.array(t.latencies_ms) if t.latencies_ms else None
        seconds = max(time.time() - self._start, 1e-6)
        return {
            "seconds": round(seconds, 1),
            "frames_shown": t.frames_shown,
            "frames_concealed": t.frames_concealed,
            "frame_packets_sent": t.frame_packets_sent,
            "frame_packets_received": t.frame_packets_received,
            "frame_packets_dropped_at_sender": t.frame_packets_dropped,
            "key_requests": t.key_requests,
            "control_refused": t.control_refused,
            "packets_refused": t.packets_refused,
            "reference_bytes": t.reference_bytes,
            "latency_ms_median": round(float(np.median(lat)), 1) if lat is not None else None,
            "latency_ms_p95": round(float(np.percentile(lat, 95)), 1) if lat is not None else None,
        }

    def close(self) -> None:
        if self._log:
            self._log.close()
            self._log = None
