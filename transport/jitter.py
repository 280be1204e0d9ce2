"""Receiver-side jitter buffer for frame packets, keyed on ``seq`` (the frame clock).

Packets may arrive late, twice, out of order or never; the playout loop asks for each seq in
turn when its time comes, and gets the packet or ``None`` (conceal). Memory is bounded in every
state of the call, before playout starts too: a packet too far ahead of the playout point is
refused, as is one whose time has passed, and beyond ``capacity`` packets or ``max_bytes``
bytes held, new packets are refused (counted in ``refused``).
"""

from __future__ import annotations

from talkcodec.packet import Packet

MAX_BUFFERED_BYTES = 2 << 20  # frame packets are tens of bytes: 2 MiB is minutes of any codec's frames


class JitterBuffer:
    def __init__(self, capacity: int = 250, max_bytes: int = MAX_BUFFERED_BYTES):
        self.capacity = capacity  # frames ahead of the playout point it will hold (10 s at 25 fps)
        self.max_bytes = max_bytes
        self._packets: dict[int, Packet] = {}
        self._bytes = 0  # payload bytes held
        self.next_seq: int | None = None  # the next seq to play out
        self.late = self.duplicates = self.refused = 0

    def push(self, packet: Packet) -> bool:
        """Hold a frame packet until its turn; False if it came too late, twice, too early, or
        the buffer is full."""
        seq = packet.seq
        if self.next_seq is not None and seq < self.next_seq:
            self.late += 1
            return False
        if seq in self._packets:
            self.duplicates += 1
            return False
        ahead = self.next_seq is not None and seq >= self.next_seq + self.capacity
        if ahead or len(self._packets) >= self.capacity or self._bytes + len(packet.payload) > self.max_bytes:
            self.refused += 1
            return False
        self._packets[seq] = packet
        self._bytes += len(packet.payload)
        return True

    def start(self, seq: int) -> None:
        """Set the playout point (the first seq to play) and forget anything before it."""
        self.next_seq = seq
        for old in [s for s in self._packets if s < seq]:
            self._bytes -= len(self._packets.pop(old).payload)

    def pop(self) -> tuple[int, Packet | None]:
        """The packet for the next seq (or None if it is missing) and that seq; advances."""
        assert self.next_seq is not None, "start() first"
        seq = self.next_seq
        self.next_seq += 1
        packet = self._packets.pop(seq, None)
        if packet is not None:
            self._bytes -= len(packet.payload)
        return seq, packet

    @property
    def bytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._packets)
