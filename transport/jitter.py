"""Receiver-side jitter buffer for frame packets, keyed on ``seq`` (the frame clock).

Packets may arrive late, twice, out of order or never; the playout loop asks for each seq in
turn when its time comes, and gets the packet or ``None`` (conceal). Memory is bounded: a
packet too far ahead of the playout point is refused, as is one whose time has passed.
"""

from __future__ import annotations

from talkcodec.packet import Packet


class JitterBuffer:
    def __init__(self, capacity: int = 250):
        self.capacity = capacity  # frames ahead of the playout point it will hold (10 s at 25 fps)
        self._packets: dict[int, Packet] = {}
        self.next_seq: int | None = None  # the next seq to play out
        self.late = self.duplicates = self.refused = 0

    def push(self, packet: Packet) -> bool:
        """Hold a frame packet until its turn; False if it came too late, twice, or too early."""
        seq = packet.seq
        if self.next_seq is not None and seq < self.next_seq:
            self.late += 1
            return False
        if seq in self._packets:
            self.duplicates += 1
            return False
        if self.next_seq is not None and seq >= self.next_seq + self.capacity:
            self.refused += 1
            return False
        self._packets[seq] = packet
        return True

    def start(self, seq: int) -> None:
        """Set the playout point (the first seq to play) and forget anything before it."""
        self.next_seq = seq
        for old in [s for s in self._packets if s < seq]:
            del self._packets[old]

    def pop(self) -> tuple[int, Packet | None]:
        """The packet for the next seq (or None if it is missing) and that seq; advances."""
        assert self.next_seq is not None, "start() first"
        seq = self.next_seq
        self.next_seq += 1
        return seq, self._packets.pop(seq, None)

    def __len__(self) -> int:
        return len(self._packets)
