"""What a call really puts on the network: every datagram counted where aiortc hands it to ICE,
below SCTP, DTLS and SRTP, with the IP and UDP headers around it.

A datagram's first byte says what it carries (RFC 7983): 20-63 a DTLS record (the data
channels: face packets, references, control messages, and SCTP's own acknowledgements and
heartbeats), 128-191 SRTP or SRTCP (the voice and its RTCP reports). ICE's own STUN checks
(one every few seconds) do not pass here and are not counted.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from .stats import Counters

IP_UDP_HEADER = 28  # bytes around every datagram: IPv4 (20) + UDP (8)


def stream_of(datagram: bytes) -> str | None:
    """``"face"`` (DTLS: the data channels), ``"audio"`` (SRTP / SRTCP) or None (anything else)."""
    if not datagram:
        return None
    first = datagram[0]
    if 20 <= first <= 63:
        return "face"
    if 128 <= first <= 191:
        return "audio"
    return None


class WireCounter:
    """Adds every datagram of a peer connection's ICE transports to ``counters`` (the
    ``wire_*`` fields), sent and received, face and audio apart."""

    def __init__(self, counters: Counters):
        self.counters = counters
        self._attached: set[int] = set()

    def count(self, datagram: bytes, direction: str) -> None:
        stream = stream_of(datagram)
        if stream is not None:
            name = f"wire_{stream}_bytes_{direction}"
            setattr(self.counters, name, getattr(self.counters, name) + len(datagram) + IP_UDP_HEADER)

    def attach(self, pc: Any) -> None:
        """Count on every ICE transport ``pc`` has now (call it again after a description: new
        transports are counted, the ones already counted are left alone)."""
        dtls = [t.sender.transport for t in pc.getTransceivers() if t.sender.transport is not None]
        if pc.sctp is not None:
            dtls.append(pc.sctp.transport)
        for ice in {id(d.transport): d.transport for d in dtls}.values():
            if id(ice) not in self._attached:
                self._attached.add(id(ice))
                ice._send, ice._recv = self._sending(ice._send), self._receiving(ice._recv)

    def _sending(self, send: Callable[[bytes], Awaitable[None]]) -> Callable[[bytes], Awaitable[None]]:
        async def counted(data: bytes) -> None:
            await send(data)
            self.count(data, "sent")

        return counted

    def _receiving(self, recv: Callable[[], Awaitable[bytes]]) -> Callable[[], Awaitable[bytes]]:
        async def counted() -> bytes:
            data = await recv()
            self.count(data, "received")
            return data

        return counted
