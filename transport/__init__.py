"""Live calls over WebRTC with aiortc (``talkcodec.transport`` once installed).

call.py (peers, signaling, loopback) -> peer.py (FaceSender / FaceReceiver over the
``frames`` and ``control`` data channels) -> jitter.py, media.py (audio track, regenerated
video track), stats.py (per-second figures).
"""
