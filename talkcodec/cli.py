"""The ``talkcodec`` command: encode | decode | info | demo | call | bench | train | enroll | fit-mesh.

Every subcommand is ``main(argv)``-callable (tests use that); user mistakes end in one line on
stderr and exit status 2, never a traceback. Exit status 3: ``decode`` read a damaged or cut-short
file (the output holds everything that could be recovered).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from .errors import TalkcodecError
from .registry import list_codecs

DAMAGED_INPUT = 3  # exit status of a decode whose input was damaged (the output is still written)


def parse_settings(pairs: list[str]) -> dict[str, Any]:
    """``--set key=value`` pairs; values are parsed as JSON when they can be (numbers, true)."""
    settings: dict[str, Any] = {}
    for pair in pairs:
        if "=" not in pair:
            raise TalkcodecError(f"--set expects key=value, got {pair!r}")
        key, value = pair.split("=", 1)
        try:
            settings[key] = json.loads(value)
        except json.JSONDecodeError:
            settings[key] = value
    return settings


def _print_table(rows: dict[str, Any]) -> None:
    width = max(map(len, rows))
    for key, value in rows.items():
        print(f"{key:<{width}}  {value}")


def cmd_encode(args: argparse.Namespace) -> None:
    from .pipeline import encode_file

    output = args.output or Path(args.input).with_suffix(".tkc")
    stats = encode_file(args.input, output, args.codec, parse_settings(args.set), fps=args.fps,
                        max_seconds=args.seconds, audio=not args.no_audio, progress=not args.quiet)  # fmt: skip
    s = stats.summary()
    print(f"{output}: {s['frames']} frames of {s['size']}x{s['size']}, {s['duration_s']} s, frames {s['frame_kbps']} kbps, "
          f"reference {stats.reference_bytes} bytes, audio {s['audio_kbps']} kbps, "
          f"{s['faceless_frames']} frames without a face, encoder {s['codec_fps']} fps")  # fmt: skip


def cmd_decode(args: argparse.Namespace) -> int:
    from .pipeline import decode_file

    output = args.output or Path(args.input).with_suffix(".mp4")
    stats = decode_file(args.input, output, progress=not args.quiet, settings=parse_settings(args.set))
    s = stats.summary()
    print(f"{output}: {s['frames']} frames, {s['duration_s']} s, {s['concealed_frames']} concealed, "
          f"decoder {s['codec_fps']} fps")  # fmt: skip
    if not stats.damage:
        return 0
    skipped = f"{stats.damaged_records} damaged part(s) skipped" if stats.damaged_records else "cut short"
    ending = f"; stopped early: {stats.stopped}" if stats.stopped else ""
    print(f"talkcodec: warning: {args.input} is damaged (first: {stats.damage}); {skipped}, "
          f"{stats.concealed_frames} frames concealed{ending}", file=sys.stderr)  # fmt: skip
    return DAMAGED_INPUT


def cmd_info(args: argparse.Namespace) -> None:
    from .pipeline import file_info

    info = file_info(args.input)
    if args.json:
        print(json.dumps(info, indent=2))
        return
    rows = {
        "file": f"{info['file']} ({info['file_bytes']} bytes)",
        "codec": info["codec"],
        "source": info["source"],
        "frames": f"{info['frames']} at {info['fps']:g} fps = {info['duration_s']} s",
        "size": "x".join(map(str, info["size"])),
        "frame kbps": f"{info['frame_kbps']} ({info['frame_bytes']} bytes in {info['frame_packets']} packets, "
                      f"{info['faceless_frames']} frames without a face)",
        "reference": f"{info['reference_bytes']} bytes in {info['references']} image(s) = {info['reference_kbps']} kbps over this file",
        "audio kbps": f"{info['audio_kbps']} (Opus)" if info["audio_rate"] else "none",
        "settings": ", ".join(f"{k}={v}" for k, v in info["settings"].items()),
    }
    if info["damage"]:
        rows["damage"] = info["damage"]
    _print_table(rows)


def cmd_demo(args: argparse.Namespace) -> None:
    from .demo import run_demo

    report = run_demo(args.input, args.out, args.codec, parse_settings(args.set), args.seconds, not args.quiet)
    s = report.summary()
    _print_table({
        "input": s["input"],
        "codec": s["codec"],
        "frames": s["frames"],
        "picture": f"{s['size']}x{s['size']}" + (f" (capped: the face is smaller than {s['capped_from']} px in the input, "
                                                 f"and is never upscaled)" if s["capped_from"] else ""),
        "frame bitrate": f"{s['frame_kbps']} kbps",
        "reference image": f"{s['reference_kb']} kB, sent once",
        "audio (Opus)": f"{s['audio_kbps']} kbps",
        "PSNR": f"{s['psnr_db']} dB (decoded vs original crop)",
        "SSIM": s["ssim"],
        "encode / decode": f"{s['encode_fps']} / {s['decode_fps']} fps",
        "side by side": s["side_by_side"],
        "stream": s["tkc"],
    })  # fmt: skip


def cmd_train(args: argparse.Namespace) -> None:
    from .training.trainer import train

    settings = parse_settings(args.set)
    if args.codec in ("mouth", "painter", "avfr"):
        return _train_mouth(args, settings)
    for key, value in (("codec", args.codec), ("model", args.model), ("epochs", args.epochs),
                       ("steps_per_epoch", args.steps), ("batch_size", args.batch)):  # fmt: skip
        if value is not None:
            settings[key] = value
    if not args.resume and "codec" not in settings:
        raise TalkcodecError("--codec is required for a new run (apb, avfr, mouth, painter)")
    if not args.resume and not args.data and not args.cache:
        raise TalkcodecError("--data is required for a new run (clip files or folders), or --cache with a built cache")
    last = train(args.out, settings, args.data, args.cache, args.resume, args.minutes, args.device, not args.quiet)
    figures = {name: {k: round(v, 4) if isinstance(v, float) else v for k, v in m.items()} for name, m in (last.get("validation") or {}).items()}
    print(f"{args.out}: step {last['step']}, validation {json.dumps(figures)}")
    print(f"weights: {Path(args.out) / 'weights.safetensors'} (use: --set weights=...)")


def _train_mouth(args: argparse.Namespace, settings: dict) -> None:
    """The vector and crop models (apb's audio -> mouth fuser, the mouth painter, avfr's mouth coder): minutes from a clip cache."""
    from .training.cache import CacheSettings, build_cache

    if args.resume or args.model or args.epochs or args.batch:
        raise TalkcodecError(f"the {args.codec} model takes --steps, --minutes and --set (it trains in minutes, no --resume)")
    if args.steps is not None:
        settings["steps"] = args.steps
    cache = Path(args.cache) if args.cache else Path(args.out) / "cache"
    if args.data:
        build_cache(list(args.data), cache, CacheSettings(), not args.quiet)
    elif not cache.is_dir():
        raise TalkcodecError("--data is required (clip files or folders), or --cache with a built cache")
    if args.codec == "avfr":
        from .training.mouth_code import train_mouth_code

        validation = train_mouth_code(args.out, settings, cache, args.minutes, not args.quiet)["validation"]
        for name, part in (("people never trained on", validation["unseen"]), ("the trained-on clips' tails", validation["tail"])):
            if part["mouth_landmark"] is not None:
                print(f"{args.out}: {name}: lip-sync {part['lip_sync'] or 0:.3f}, mouth landmarks {part['mouth_landmark']:.4f}")
        print(f"weights: {Path(args.out) / 'weights.safetensors'} (use: --set weights=...)")
        return
    if args.codec == "painter":
        from .training.painter import train_painter

        unseen = train_painter(args.out, settings, cache, args.minutes, not args.quiet)["validation"]["unseen"]
        print(f"{args.out}: people never trained on, mouth-crop LPIPS: painter {unseen['painter_lpips']:.4f}, "
              f"dark fill {unseen['dark_lpips']:.4f}, warp alone {unseen['warp_lpips']:.4f}")
        print(f"weights: {Path(args.out) / 'weights.safetensors'} (use: --set painter=...)")
        return
    from .training.mouth import train_mouth

    unseen = train_mouth(args.out, settings, cache, args.minutes, not args.quiet)["validation"]["unseen"]
    print(f"{args.out}: people never trained on: lip-sync {unseen['lip_sync']:.3f}, "
          f"mouth landmarks {unseen['mouth_landmark']:.4f}")
    print(f"weights: {Path(args.out) / 'weights.safetensors'} (use: --set mouth_model=...)")


def cmd_enroll(args: argparse.Namespace) -> None:
    from .metrics import shown
    from .training.enroll import enroll

    before, after = enroll(args.codec, args.video, args.out, args.weights, args.steps, args.device, not args.quiet,
                           parse_settings(args.set))  # fmt: skip
    for name, figures in (("base weights", before), ("personal weights", after)):
        print(f"{name:>16}: L1 {figures['l1']:.4f}  PSNR {figures['psnr']:.2f} dB  SSIM {figures['ssim']:.3f}  "
              f"LPIPS {figures['lpips']:.3f}  landmarks {shown(figures['landmark'])}  "
              f"mouth LPIPS {shown(figures.get('mouth_lpips'))}  (last 20 % of the video)")  # fmt: skip
    print(f"{args.out}: use it on both sides with --set weights={args.out}")


def cmd_fit_mesh(args: argparse.Namespace) -> None:
    import numpy as np

    from .codecs.mesh_model import fit_shape_model, landmark_tracks
    from .face import canonical_face_model

    tracks, names = [], []
    for path in args.videos:
        found = landmark_tracks(path, max_seconds=args.seconds)
        print(f"{path}: {sum(map(len, found))} frames with a face")
        tracks += found
        names.append(Path(path).stem)
    if not tracks:
        raise TalkcodecError("no face found in any of the videos")
    model = fit_shape_model(tracks, canonical_face_model(), names)
    model.save(args.output)
    print(f"{args.output}: shape model fitted on {model.info['frames']} frames, "
          f"face scale {np.round(model.info['face_scale_px'], 1)} px")  # fmt: skip


def cmd_call(args: argparse.Namespace) -> None:
    import asyncio

    from .transport.call import CallOptions, loopback, run_over_signaling, use_loopback_only

    if not 0 < args.playout_ms <= 5000:
        raise TalkcodecError("--playout-ms must be in (0, 5000]")
    if not 6 <= args.audio_kbps <= 128:
        raise TalkcodecError(f"--audio-kbps must be in 6..128 (Opus for speech), got {args.audio_kbps:g}")
    if args.virtual_camera:
        try:
            import pyvirtualcam  # noqa: F401
        except ImportError:
            raise TalkcodecError("--virtual-camera needs pyvirtualcam (pip install pyvirtualcam) and a v4l2loopback device") from None

    options = CallOptions(
        input=args.input, codec=args.codec, settings=parse_settings(args.set), loop=args.loop, seconds=args.seconds,
        record=args.record, stats_path=args.stats, live_stats=args.stats is not None and not args.quiet,
        show=args.show, virtual_camera=args.virtual_camera, loss=args.loss, stun=args.stun,
        playout_delay=args.playout_ms / 1000, audio_kbps=args.audio_kbps, audio_frame_ms=args.audio_frame_ms,
    )  # fmt: skip
    if args.loopback:
        if not args.input:
            raise TalkcodecError("--loopback needs --input (the face to send to yourself)")
        receiving = CallOptions(settings=options.settings, record=args.record, stats_path=args.stats,
                                live_stats=options.live_stats, show=args.show, virtual_camera=args.virtual_camera,
                                playout_delay=args.playout_ms / 1000)  # fmt: skip
        options.record, options.stats_path, options.live_stats = None, None, False
        options.show = options.virtual_camera = False
        _, peer, reason = asyncio.run(loopback(options, receiving))
        print(f"call ended: {reason}\n{json.dumps(peer.stats.summary(), indent=1)}")
        return
    from aiortc.contrib.signaling import CopyAndPasteSignaling, TcpSocketSignaling

    if args.local_only:
        use_loopback_only()
    if args.listen is not None:
        while True:  # a listener takes the next call when one ends (reconnects)
            print(f"waiting for a call on port {args.listen} ...", file=sys.stderr)
            reason, summary = asyncio.run(run_over_signaling(TcpSocketSignaling("0.0.0.0", args.listen), options, True))
            print(f"call ended: {reason}\n{json.dumps(summary, indent=1)}")
            if args.once:
                return
    if args.connect:
        host, _, port = args.connect.rpartition(":")
        if not host or not port.isdigit():
            raise TalkcodecError(f"--connect expects HOST:PORT, got {args.connect!r}")
        signaling = TcpSocketSignaling(host, int(port))
        reason, summary = asyncio.run(run_over_signaling(signaling, options, False))
    else:
        reason, summary = asyncio.run(run_over_signaling(CopyAndPasteSignaling(), options, args.sdp == "offer"))
    print(f"call ended: {reason}\n{json.dumps(summary, indent=1)}")


def cmd_codecs(args: argparse.Namespace) -> None:
    from .registry import codec_class
    from .settings import describe_settings

    for name in list_codecs():
        cls = codec_class(name)
        print(f"{name}: {(cls.__doc__ or '').strip().splitlines()[0].replace('``', '')}")
        rows = describe_settings(cls.Settings)
        width = max(len(f"{n}={json.dumps(d)}") for n, d, _, _ in rows)
        for setting, default, accepts, help_text in rows:
            print(f"  {f'{setting}={json.dumps(default)}':<{width}}  {accepts}: {help_text}")
    print("set them with --set KEY=VALUE (encode, demo, call, bench) or get_codec(name, **settings)")


def cmd_bench(args: argparse.Namespace) -> None:
    from .bench.run import run

    report = run(args)
    print(f"{args.out}/results.md: {len(report['cells'])} cells on {len(report['clips'])} clip(s), "
          f"{len(report['skipped'])} input(s) skipped, {len(report['failed'])} cell(s) failed")  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(prog="talkcodec", description="Send a face instead of pixels.",
                                     epilog="exit status: 0 done, 2 an error (one line on stderr), "
                                            "3 decode met a damaged input, 130 interrupted")  # fmt: skip
    parser.add_argument("--version", action="version", version=f"talkcodec {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    codec_help = f"codec ({', '.join(list_codecs())}; default mesh)"

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")

    p = sub.add_parser("encode", help="encode a video file into a .tkc stream")
    p.add_argument("input", help="any video file with a face (audio is kept as Opus)")
    p.add_argument("-o", "--output", help="output .tkc (default: input name with .tkc)")
    p.add_argument("--codec", default="mesh", help=codec_help)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="codec setting, e.g. precision=2")
    p.add_argument("--fps", type=float, default=25.0, help="frame clock of the stream (default 25)")
    p.add_argument("--seconds", type=float, help="only the first N seconds")
    p.add_argument("--no-audio", action="store_true", help="leave the audio out")
    common(p)
    p.set_defaults(run=cmd_encode)

    p = sub.add_parser("decode", help="decode a .tkc stream into an mp4 (H.264 + AAC)",
                       epilog="exit status: 0 clean, 2 error, 3 the input was damaged or cut short (what could be "
                              "recovered is written; damaged parts are skipped and their frames concealed)")  # fmt: skip
    p.add_argument("input", help="a .tkc file (talkcodec encode)")
    p.add_argument("-o", "--output", help="output .mp4 (default: input name with .mp4)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="decoder setting, e.g. weights=PATH")
    common(p)
    p.set_defaults(run=cmd_decode)

    p = sub.add_parser("info", help="codec, duration and bitrate split of a .tkc stream")
    p.add_argument("input", help="a .tkc file")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(run=cmd_info)

    p = sub.add_parser("codecs", help="every codec with its settings: defaults, ranges, what they do")
    p.set_defaults(run=cmd_codecs)

    p = sub.add_parser("demo", help="encode + decode a video (default: the bundled sample), side by side")
    p.add_argument("--input", help="a video with a face (default: the sample shipped with talkcodec)")
    p.add_argument("--out", default="talkcodec-demo", help="output folder (default ./talkcodec-demo)")
    p.add_argument("--codec", default="mesh", help=codec_help)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="codec setting")
    p.add_argument("--seconds", type=float, help="only the first N seconds")
    common(p)
    p.set_defaults(run=cmd_demo)

    from .audio import CALL_AUDIO_FRAME_MS, CALL_AUDIO_KBPS, OPUS_FRAME_MS

    p = sub.add_parser("call", help="a live call over WebRTC (aiortc): send your face, see theirs")
    how = p.add_mutually_exclusive_group(required=True)
    how.add_argument("--listen", type=int, metavar="PORT", help="wait for a call on this TCP port (signaling)")
    how.add_argument("--connect", metavar="HOST:PORT", help="call a listening peer")
    how.add_argument("--sdp", choices=["offer", "answer"], help="signal by copy-and-paste of SDP (one side offers)")
    how.add_argument("--loopback", action="store_true", help="both peers in this process over 127.0.0.1")
    p.add_argument("--input", help="video file or camera (/dev/video0) to send; none = receive only")
    p.add_argument("--codec", default="mesh", help=codec_help)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="codec setting")
    p.add_argument("--record", help="record what you receive (face + audio) to this mp4")
    p.add_argument("--stats", nargs="?", const="call-stats.jsonl", help="print stats each second and log them (JSON lines)")
    p.add_argument("--loop", action="store_true", help="loop the input file")
    p.add_argument("--seconds", type=float, help="send only this long")
    p.add_argument("--show", action="store_true", help="show the received face in a window")
    p.add_argument("--virtual-camera", action="store_true", help="send the received face to a virtual camera (pyvirtualcam)")
    p.add_argument("--local-only", action="store_true", help="ICE on 127.0.0.1 only (no network)")
    p.add_argument("--stun", action="append", default=[], metavar="URL", help="a STUN server, for calls across NATs")
    p.add_argument("--once", action="store_true", help="with --listen: take one call, then exit")
    p.add_argument("--playout-ms", type=float, default=120.0, metavar="MS",
                   help="show frames this long after capture: a deeper jitter buffer for bad links or busy machines "
                        "(default 120; longer by itself when a frame's data comes later, e.g. the audio look-ahead)")
    p.add_argument("--audio-kbps", type=float, default=CALL_AUDIO_KBPS, metavar="KBPS",
                   help=f"the voice's Opus bitrate (default {CALL_AUDIO_KBPS}; 12 is still clear speech)")
    p.add_argument("--audio-frame-ms", type=int, default=CALL_AUDIO_FRAME_MS, choices=OPUS_FRAME_MS,
                   help="Opus packet duration: 60 pays a third of 20's packet headers on the wire, and the voice "
                        f"arrives 40 ms later (default {CALL_AUDIO_FRAME_MS})")  # fmt: skip
    p.add_argument("--loss", type=float, default=0.0, help=argparse.SUPPRESS)  # testing: drop this share of frame packets
    common(p)
    p.set_defaults(run=cmd_call)

    from .bench.run import add_arguments as add_bench_arguments

    p = sub.add_parser("bench", help="rate-distortion of every codec against x264/x265/VP8/VP9/AV1")
    add_bench_arguments(p)
    p.set_defaults(run=cmd_bench)

    p = sub.add_parser("train", help="train a learned codec (avfr, apb) or a mouth model on talking-head clips")
    p.add_argument("--codec", choices=["avfr", "apb", "mouth", "painter"],
                   help="which networks to train (apb: its image networks; avfr: its mouth coder; mouth: the audio -> mouth model; "
                        "painter: the mouth painter)")
    p.add_argument("--data", nargs="+", metavar="CLIPS", help="video files or folders (preprocessed once into the cache)")
    p.add_argument("--out", required=True, metavar="RUN_DIR", help="run folder: checkpoint, weights, samples, curves")
    p.add_argument("--cache", metavar="DIR", help="preprocessed-clip cache (default RUN_DIR/cache); share it between runs")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    p.add_argument("--model", choices=["tiny", "small", "paper"], help="network size (default small: CPU-trainable)")
    p.add_argument("--epochs", type=int, help="epochs to train to (default 10)")
    p.add_argument("--steps", type=int, help="optimisation steps per epoch (default 100; mouth, painter, avfr: in all, default 1500, 400, 1500)")
    p.add_argument("--batch", type=int, help="batch size (default 8)")
    p.add_argument("--minutes", type=float, help="stop after this long, with a checkpoint to --resume from")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="other training settings, e.g. lr=1e-4, gan_start=500, losses={\"l1\":50}")
    common(p)
    p.set_defaults(run=cmd_train)

    p = sub.add_parser("enroll", help="fine-tune a learned codec on your own footage (a personal weights file)")
    p.add_argument("--codec", required=True, choices=["apb"])
    p.add_argument("--video", required=True, help="a video of you talking: the first 80 %% trains, the rest measures")
    p.add_argument("--out", required=True, help="the personal .safetensors to write")
    p.add_argument("--weights", help="weights to start from (default: the ones shipped with talkcodec)")
    p.add_argument("--steps", type=int, default=150, help="fine-tuning steps of 4 pairs (default 150)")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="training settings, e.g. lr=1e-4")
    common(p)
    p.set_defaults(run=cmd_enroll)

    p = sub.add_parser("fit-mesh", help="(maintainers) fit the mesh codec's shape model on videos")
    p.add_argument("videos", nargs="+", help="talking-head videos to fit on")
    p.add_argument("-o", "--output", required=True, help="output .safetensors")
    p.add_argument("--seconds", type=float, help="only the first N seconds of each video")
    p.set_defaults(run=cmd_fit_mesh)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        status = args.run(args)
    except TalkcodecError as exc:
        print(f"talkcodec: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("talkcodec: interrupted (a partly written .tkc stays readable up to where it stopped)", file=sys.stderr)
        return 130
    return status or 0


if __name__ == "__main__":
    sys.exit(main())
