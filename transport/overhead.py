"""What aiortc spends on every voice packet that a call at 20 kbps need not (each measured with the
call bench, ``bench/results-wire``):

- RTP header extensions: aiortc offers the mid and the audio level, 12 bytes in every voice
  packet (1.6 kbps at 60 ms packets). The voice is routed by its SSRC, which the session
  description carries, and nothing here reads the level: the offer leaves them out, so the
  answer has none either.
- SRTP: aiortc prefers AEAD_AES_256_GCM, a 16-byte tag a packet. The call offers only
  SRTP_AES128_CM_HMAC_SHA1_80, the profile every WebRTC endpoint must support (RFC 8827): a
  10-byte tag (0.8 kbps less at 60 ms). Not the 4-byte SHA1_32: 32-bit tags are too easy to forge.
- RTCP: aiortc sends a sender report and a receiver report every 0.5-1.5 s whatever the
  stream's rate (~1.5 kbps each way here); RFC 3550 section 6.2 asks for 5 % of the session's
  bandwidth with a 5 s minimum, and browsers report on audio every 5 s. The call holds them to
  one every ``RTCP_INTERVAL_S`` (nothing here uses them: the voice is placed by its RTP time).

aiortc has no public setting for any of them; ``trim`` sets them on one peer connection's own
objects (no global patch), after its description is set and before its transports start.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiortc import RTCSessionDescription
from aiortc.rtcdtlstransport import SRTP_AES128_CM_SHA1_80
from aiortc.rtp import RtcpRrPacket, RtcpSrPacket

RTCP_INTERVAL_S = 5.0


def without_header_extensions(offer: RTCSessionDescription) -> RTCSessionDescription:
    """The offer without its RTP header extensions (``a=extmap`` lines)."""
    lines = [line for line in offer.sdp.splitlines() if not line.startswith("a=extmap")]
    return RTCSessionDescription(sdp="\r\n".join(lines) + "\r\n", type=offer.type)


def _fewer_reports(send: Callable[[Any], Awaitable[None]], interval: float) -> Callable[[Any], Awaitable[None]]:
    """``send`` (an RTP sender's or receiver's RTCP output) that lets a sender or receiver report
    through at most once per ``interval`` and everything else (a BYE) always."""
    last = -float("inf")

    async def send_some(packets: Any) -> None:
        nonlocal last
        reports = any(isinstance(p, RtcpSrPacket | RtcpRrPacket) for p in (packets if isinstance(packets, list) else [packets]))
        if reports:
            now = time.monotonic()
            if now - last < interval:
                return
            last = now
        await send(packets)

    return send_some


def trim(pc: Any, rtcp_interval: float = RTCP_INTERVAL_S) -> None:
    """The SRTP profile and the RTCP interval of ``pc`` (an RTCPeerConnection whose local
    description is set); call it once per peer connection."""
    for transceiver in pc.getTransceivers():
        transport = transceiver.sender.transport
        if transport is not None:
            transport._srtp_profiles = [SRTP_AES128_CM_SHA1_80]
        for rtp in (transceiver.sender, transceiver.receiver):
            rtp._send_rtcp = _fewer_reports(rtp._send_rtcp, rtcp_interval)
