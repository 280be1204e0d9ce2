"""Setting up a call: one ``Peer`` per side (a sender when it has an input, always a receiver),
signaling over TCP or copy-and-paste (aiortc's own), or both peers in one process
(``loopback``)."""

from __future__ import annotations

import asyncio
import sys
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection, RTCRtpSender, RTCSessionDescription
from aiortc.contrib.signaling import BYE, BaseSignaling
from threadpoolctl import threadpool_limits

from talkcodec.audio import CALL_AUDIO_FRAME_MS, CALL_AUDIO_KBPS
from talkcodec.errors import TalkcodecError

from . import control, voice
from .overhead import trim, without_header_extensions
from .peer import FaceSender, LossyChannel, frames_channel_options
from .receiver import FaceReceiver
from .stats import CallStats
from .wire import WireCounter

KEEPALIVE_S = 2.0  # a message costs ~150 bytes on the wire; a peer silent for 5 s is gone


@dataclass
class CallOptions:
    input: str | None = None  # a video file, or /dev/videoN; None = receive only
    codec: str = "mesh"
    settings: dict[str, Any] = field(default_factory=dict)
    fps: float = 25.0
    loop: bool = False  # loop the input file
    seconds: float | None = None  # send only this long
    record: str | None = None  # mp4 of what this side receives (face + audio)
    stats_path: str | None = None  # JSON lines, one record a second
    live_stats: bool = False  # print the records as they come
    show: bool = False  # a window (needs a display)
    virtual_camera: bool = False  # pyvirtualcam, so other call apps can use the face
    loss: float = 0.0  # drop this share of outgoing frame packets (testing)
    playout_delay: float = 0.12  # seconds between capture and display, for jitter
    vanish_after: float = 5.0  # end the call after this long without a message
    stun: list[str] = field(default_factory=list)  # e.g. stun:stun.l.google.com:19302 for calls across NATs
    audio_kbps: float = CALL_AUDIO_KBPS  # Opus bitrate of the voice (this side's; the sender encodes it)
    audio_frame_ms: int = CALL_AUDIO_FRAME_MS  # Opus packet duration: 20, 40 or 60 ms
    face_over_voice: bool = True  # frame packets ride in the voice's packets (False: the frames channel)


def use_loopback_only() -> None:
    """Gather ICE candidates on 127.0.0.1 only (a machine without a network, tests, loopback)."""
    import aioice.ice

    aioice.ice.get_host_addresses = lambda use_ipv4, use_ipv6: ["127.0.0.1"]


class Peer:
    def __init__(self, options: CallOptions, sent_by: CallStats | None = None):
        """``sent_by``: in a loopback call, the sending peer's stats (this peer reports them)."""
        self.options = options
        # A call runs capture, encode, decode and aiortc at frame rate on a few cores; OpenBLAS's own
        # threads, spinning after every small per-frame product, only take those cores from them.
        threadpool_limits(1, user_api="blas")
        # The same for PyTorch's (the mouth painter, the networks): a mesh loopback call with the
        # painter showed 12-13 fps at 1.4 s latency with two, 22 fps at 170 ms with one.
        torch.set_num_threads(1)
        self.stats = CallStats(options.stats_path, sys.stderr if options.live_stats else None, sent_by)
        self.wire = WireCounter(self.stats.total)
        servers = [RTCIceServer(urls=url) for url in options.stun]
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=servers))  # no STUN unless asked: none is reachable offline
        self.sender = (
            FaceSender(options.input, options.codec, options.settings, options.fps, options.loop, options.seconds,
                       self.stats, options.audio_kbps, options.audio_frame_ms, options.face_over_voice)  # fmt: skip
            if options.input
            else None
        )
        self.receiver = FaceReceiver(self.stats, options.playout_delay, options.vanish_after, options.record,
                                     options.show, options.virtual_camera, options.settings)  # fmt: skip
        self.channels: dict[str, Any] = {}
        self._open = asyncio.Event()
        self._tasks: list[asyncio.Task] = []
        self._closed = False

        @self.pc.on("track")
        def on_track(track: Any) -> None:
            if track.kind == "audio":
                for transceiver in self.pc.getTransceivers():
                    if transceiver.receiver.track is track:  # the voice and the face packets it carries
                        voice.listen(transceiver.receiver, self._on_voice, self._on_carried)

        @self.pc.on("datachannel")
        def on_datachannel(channel: Any) -> None:
            self._add_channel(channel)

    def _on_voice(self, samples: np.ndarray, rtp: int, nbytes: int) -> None:
        self.stats.total.audio_bytes_received += nbytes
        self.receiver.on_audio(samples, self.receiver.clock(), rtp)

    def _on_carried(self, data: bytes) -> None:
        self.receiver.on_message(data, frames_only=True)

    def _add_channel(self, channel: Any) -> None:
        self.channels[channel.label] = channel

        @channel.on("message")
        def on_message(data: bytes | str) -> None:
            message = self.receiver.on_message(data)
            if message and self.sender is not None:
                self.sender.on_control(message)

        def opened() -> None:
            if {"frames", "control"} <= {label for label, c in self.channels.items() if c.readyState == "open"}:
                self._open.set()

        channel.on("open", opened)
        if channel.readyState == "open":
            opened()

    def _send_control(self, text: str) -> None:
        control = self.channels.get("control")
        if control is not None and control.readyState == "open":
            control.send(text)

    def _add_media(self) -> None:
        if self.sender is not None and self.sender.audio is not None:
            self.pc.addTrack(self.sender.audio)

    async def offer(self) -> RTCSessionDescription:
        self._add_channel(self.pc.createDataChannel("frames", **frames_channel_options()))
        self._add_channel(self.pc.createDataChannel("control"))
        self._add_media()
        if not self.pc.getTransceivers():
            self.pc.addTransceiver("audio", direction="recvonly")
        opus = [c for c in RTCRtpSender.getCapabilities("audio").codecs if c.mimeType.lower() == "audio/opus"]
        for transceiver in self.pc.getTransceivers():
            transceiver.setCodecPreferences(opus)  # the voice is Opus (the receiver decodes it itself: voice.py)
        await self.pc.setLocalDescription(without_header_extensions(await self.pc.createOffer()))
        trim(self.pc)
        self.wire.attach(self.pc)
        return self.pc.localDescription

    async def answer(self, offer: RTCSessionDescription) -> RTCSessionDescription:
        await self.pc.setRemoteDescription(offer)
        self._add_media()
        await self.pc.setLocalDescription(await self.pc.createAnswer())
        trim(self.pc)
        self.wire.attach(self.pc)
        return self.pc.localDescription

    def connected(self) -> bool:
        return self.pc.connectionState not in ("failed", "closed") and all(
            c.readyState == "open" for c in self.channels.values()
        )

    async def _keepalive(self) -> None:
        """Every ``KEEPALIVE_S``: "alive", unless this side's face rides its voice (which arrives
        every 20-60 ms: a sign of life already)."""
        while True:
            if self.sender is None or self.sender.face_over_voice is None:
                self._send_control(control.encode(control.Alive()))
            await asyncio.sleep(KEEPALIVE_S)

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            self._count_audio()
            self.stats.tick()

    def _count_audio(self) -> None:
        if self.sender is not None and self.sender.audio is not None:
            self.stats.total.audio_bytes_sent = self.sender.audio.opus_bytes  # without the face it carries

    async def run(self, connect_timeout: float = 15.0) -> str:
        """Run the call once connected; returns why it ended."""
        try:
            await asyncio.wait_for(self._open.wait(), connect_timeout)
        except TimeoutError:
            raise TalkcodecError(f"no connection within {connect_timeout:g} s (is the other side running?)") from None
        self._tasks += [asyncio.ensure_future(self._keepalive()), asyncio.ensure_future(self._tick())]
        if self.sender is not None:
            frames = self.channels["frames"]
            if self.sender.face_over_voice is not None:
                self.sender.face_over_voice.spill = frames
                frames = self.sender.face_over_voice
            if self.options.loss:
                frames = LossyChannel(frames, self.options.loss)
            sending = asyncio.ensure_future(self.sender.run(frames, self.channels["control"]))
            sending.add_done_callback(self._sender_done)
            self._tasks.append(sending)
        try:
            return await self.receiver.run(self._send_control, self.connected)
        finally:
            await self.close()

    def _sender_done(self, task: asyncio.Task) -> None:
        if not task.cancelled() and task.exception() is not None:
            exc = task.exception()
            self.receiver.abort(f"sending failed: {type(exc).__name__}: {exc}")

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self.sender is not None:
            self.sender.stop()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        await self.pc.close()
        self._count_audio()
        self.stats.tick()  # the last, partial second
        self.stats.close()


async def _receive_first(signaling: BaseSignaling, wait: float = 15.0) -> object:
    """The first message from a listener, retrying while it is not listening yet."""
    deadline = asyncio.get_running_loop().time() + wait
    while True:
        try:
            return await signaling.receive()
        except OSError as exc:  # connection refused: the other side is still starting, or absent
            if asyncio.get_running_loop().time() > deadline:
                raise TalkcodecError(f"nobody answered ({exc.strerror or exc}); start the other side with --listen") from None
            await asyncio.sleep(0.5)


async def run_over_signaling(signaling: BaseSignaling, options: CallOptions, offerer: bool) -> tuple[str, dict]:
    """One call through ``signaling``; the offerer speaks first (with TCP it is the listener)."""
    peer = Peer(options)
    await signaling.connect()
    try:
        if offerer:
            await signaling.send(await peer.offer())
            answer = await signaling.receive()
            if not isinstance(answer, RTCSessionDescription):
                raise TalkcodecError("the other side hung up before answering")
            await peer.pc.setRemoteDescription(answer)
        else:
            offer = await _receive_first(signaling)
            if not isinstance(offer, RTCSessionDescription) or offer is BYE:
                raise TalkcodecError("the other side hung up before calling")
            await signaling.send(await peer.answer(offer))
        reason = await peer.run()
    finally:
        await peer.close()
        await signaling.close()
    return reason, peer.stats.summary()


async def loopback(sender: CallOptions, receiver: CallOptions) -> tuple[Peer, Peer, str]:
    """Both peers in this process over 127.0.0.1; returns them and why the receiver stopped.
    The receiving peer's stats also say what the sending peer sent."""
    use_loopback_only()
    a = Peer(sender)
    b = Peer(receiver, sent_by=a.stats)
    offer = await a.offer()
    await a.pc.setRemoteDescription(await b.answer(offer))
    results = await asyncio.gather(a.run(), b.run())
    return a, b, results[1]
