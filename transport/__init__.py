"""WebRTC transport (aiortc) for live calls (``talkcodec.transport`` once installed).

Empty until the live-call work lands.
"""
