"""PyTorch networks of the learned codecs (``talkcodec.models`` once installed).

Empty until the learned codecs land (AVFR-GAN keypoint codec, APB2FaceV2 pose+blink codec).
"""
