"""Rate-distortion benchmarks against conventional codecs (``talkcodec.bench`` once installed).

Empty until the benchmark work lands; ``talkcodec demo`` reports PSNR/SSIM meanwhile.
"""
