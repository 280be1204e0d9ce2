"""Live calls over WebRTC with aiortc (``talkcodec.transport`` once installed).

call.py (peers, signaling, loopback) -> peer.py (FaceSender) and receiver.py (FaceReceiver)
over the ``frames`` and ``control`` data channels (control.py: the typed messages) ->
playout.py (the receiver's clock), sinks.py (recording, window, virtual camera), jitter.py,
media.py (the sender's Opus track, the regenerated video track), stats.py (per-second
figures), wire.py (the bytes on the network).
"""
