"""Rate-distortion benchmark (``talkcodec bench``; ``talkcodec.bench`` once installed).

clips.py (face crops, cached) -> codecs.py (x264/x265/VP8/VP9/SVT-AV1 in memory, talkcodec
codecs) -> quality.py (PSNR, SSIM, MS-SSIM, LPIPS, landmark distance, flicker; lpips.py) ->
bdrate.py -> report.py (JSON, markdown, plots, side-by-side video); run.py drives the sweep.
"""
