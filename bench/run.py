"""``talkcodec bench CLIPS... --out DIR``: rate-distortion of every codec on the same face crops.

One cell = one clip x one codec x one setting (a target bitrate for conventional codecs, a
quantization setting for talkcodec codecs). Each cell's JSON lands in ``DIR/cells/`` as soon
as it is done, so an interrupted run resumes where it stopped; ``--jobs`` runs cells in
parallel worker processes. The report (``results.json``, ``results.md``, ``rd.png``,
``side_by_side.mp4``) is rebuilt from all cells at the end.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import os
import threading
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from importlib import resources
from pathlib import Path
from typing import Any

from tqdm import tqdm

from ..cli import parse_settings
from ..errors import InputError, TalkcodecError
from ..packet import MAX_FRAMES_PER_PACKET
from .clips import Clip, expand, load_clip
from .codecs import BASELINES, CONVENTIONAL, Coded, run_still, run_talkcodec

DEFAULT_KBPS = (5.0, 10.0, 20.0, 50.0, 100.0, 200.0)
TALKCODEC_SWEEPS: dict[str, list[dict[str, Any]]] = {
    name: [{"precision": p} for p in (0.5, 1.0, 2.0, 4.0)] for name in ("mesh", "avfr", "apb")
}
DEFAULT_CODECS = ("x264", "x265", "vp8", "vp9", "av1", "still", "mesh")
os.environ.setdefault("SVT_LOG", "1")  # SVT-AV1 prints a banner per encoder otherwise


@functools.lru_cache(maxsize=8)
def _file_digest(path: str) -> str:
    """First 8 hex digits of a file's SHA-256 (read once per run, not once per cell)."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:8]


@functools.lru_cache(maxsize=1)
def shipped_models() -> str:
    """First 8 hex digits of a SHA-256 over the package's weights files. A talkcodec codec's cell
    records it: after the shipped weights change, its cells are redone instead of read back."""
    digest = hashlib.sha256()
    for path in sorted(Path(str(resources.files("talkcodec") / "data")).glob("*.safetensors")):
        digest.update(f"{path.name}:{_file_digest(str(path))};".encode())
    return digest.hexdigest()[:8]


def setting_label(setting: dict[str, Any]) -> str:
    shown = {k: v for k, v in setting.items() if k != "weights"}  # a path is not a setting's name: its content is
    if "weights" in setting:
        shown["model"] = _file_digest(setting["weights"])
    return "_".join(f"{k}{v:g}" if isinstance(v, float) else f"{k}{v}" for k, v in sorted(shown.items())) or "default"


class PeakMemory:
    """Peak resident memory above the starting point while the block runs, sampled every 2 ms;
    ``trace``: (seconds since the start, MB above it) once a second (growth over a long call)."""

    def __init__(self) -> None:
        self._page = os.sysconf("SC_PAGE_SIZE")
        self.peak_mb = 0.0
        self.trace: list[tuple[float, float]] = []

    def _rss(self) -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * self._page

    def _sample(self) -> None:
        began = next_trace = time.monotonic()
        while not self._stop.is_set():
            rss = self._rss()
            self._peak = max(self._peak, rss)
            if (now := time.monotonic()) >= next_trace:
                self.trace.append((round(now - began, 1), round((rss - self._start) / 2**20, 1)))
                next_trace += 1.0
            self._stop.wait(0.002)

    def __enter__(self) -> PeakMemory:
        self._start = self._peak = self._rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._peak = max(self._peak, self._rss())
        self.peak_mb = (self._peak - self._start) / 2**20


def code(clip: Clip, codec: str, setting: dict[str, Any]) -> Coded:
    if codec in CONVENTIONAL:
        return CONVENTIONAL[codec].run(clip.frames, clip.fps, setting["kbps"])
    if codec in BASELINES:
        return run_still(clip.frames)
    return run_talkcodec(codec, setting, clip.frames, clip.fps, clip.audio)


def run_cell(
    source: str, cache: str, seconds: float, codec: str, setting: dict[str, Any], call_s: float, stride: int = 1,
    tail: float | None = None, size: int = 256,
) -> dict:
    """Code one clip (its last ``tail`` if given) with one codec setting and measure everything about it."""
    import torch

    from ..metrics import measure

    clip = load_clip(Path(source), Path(cache), seconds, tail=tail, size=size)
    with PeakMemory() as memory:
        coded = code(clip, codec, setting)
    duration = len(clip.frames) / clip.fps
    result = {
        "clip": clip.name, "codec": codec, "setting": setting, "frames": len(clip.frames),
        "kbps": coded.frame_bytes * 8 / 1000 / duration,
        "reference_bytes": coded.reference_bytes,
        "kbps_with_reference": (coded.frame_bytes * 8 / 1000 / duration) + coded.reference_bytes * 8 / 1000 / call_s,
        "encode_fps": len(clip.frames) / max(coded.encode_s, 1e-9),
        "decode_fps": len(clip.frames) / max(coded.decode_s, 1e-9),
        "peak_mb": round(memory.peak_mb, 1), "torch_threads": torch.get_num_threads(), "metric_stride": stride, "seconds": seconds, "call_seconds": call_s, "tail": tail, "size": size,
        "frames_per_packet": coded.frames_per_packet,
    }  # fmt: skip
    if codec not in CONVENTIONAL and codec not in BASELINES:
        result["shipped_models"] = shipped_models()
    result.update(measure(clip.frames, coded.decoded, clip.landmarks, stride))
    return result


def _one_thread_each() -> None:
    """Worker start-up: with several workers, each keeps to one thread (no oversubscription)."""
    import cv2
    import torch

    torch.set_num_threads(1)
    cv2.setNumThreads(1)


def _cells(codecs: list[str], kbps: list[float], weights: dict[str, str], frames_per_packet: int | None = None,
           settings: dict[str, dict[str, Any]] | None = None) -> list[tuple[str, dict[str, Any]]]:  # fmt: skip
    cells: list[tuple[str, dict[str, Any]]] = []
    for codec in codecs:
        if codec in CONVENTIONAL:
            cells += [(codec, {"kbps": k}) for k in kbps]
        elif codec in BASELINES:
            cells.append((codec, {}))
        elif codec in TALKCODEC_SWEEPS:
            extra: dict[str, Any] = {"weights": weights[codec]} if codec in weights else {}
            extra.update((settings or {}).get(codec, {}))
            if frames_per_packet is not None:
                extra["frames_per_packet"] = frames_per_packet
            cells += [(codec, {**s, **extra}) for s in TALKCODEC_SWEEPS[codec]]
        else:
            known = ", ".join(list(CONVENTIONAL) + list(BASELINES) + list(TALKCODEC_SWEEPS))
            raise TalkcodecError(f"bench: unknown codec {codec!r}; known: {known}")
    unique = {(codec, setting_label(setting)): (codec, setting) for codec, setting in cells}  # --set precision=1: one cell
    return list(unique.values())


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("clips", nargs="*", help="videos or folders of videos (default: the bundled sample)")
    parser.add_argument("--out", default="talkcodec-bench", help="results folder; reruns resume from it (default ./talkcodec-bench)")
    parser.add_argument("--seconds", type=float, default=10.0, help="first N seconds of each clip (default 10)")
    parser.add_argument("--tail", type=float, default=None, metavar="FRACTION",
                        help="code the last FRACTION of each clip instead (at most --seconds): 0.2 is the part "
                             "of a training clip the trainer held out")  # fmt: skip
    parser.add_argument("--codecs", default=",".join(DEFAULT_CODECS),
                        help=f"comma-separated (default: {','.join(DEFAULT_CODECS)}; the learned codecs avfr, apb "
                             "are run when named)")  # fmt: skip
    parser.add_argument("--kbps", default=",".join(f"{k:g}" for k in DEFAULT_KBPS), help="conventional targets")
    parser.add_argument("--weights", action="append", default=[], metavar="CODEC=PATH",
                        help="weights for a learned codec (avfr, apb), e.g. apb=run/weights.safetensors")
    parser.add_argument("--set", action="append", default=[], metavar="CODEC.KEY=VALUE",
                        help="a setting for every cell of a talkcodec codec, e.g. apb.refine=true")
    parser.add_argument("--frames-per-packet", type=int, default=None, metavar="N",
                        help="talkcodec codecs send N frames per packet: fewer bits, N-1 frames of delay "
                             "(default: each codec's own, 1 for mesh, 3 at 25 fps for avfr / apb)")  # fmt: skip
    parser.add_argument("--size", type=int, default=256, choices=(256, 512),
                        help="face crops of this side (default 256); at 512 clips whose face is smaller are skipped")
    parser.add_argument("--anchor", default="x264", help="BD-rate anchor (default x264)")
    parser.add_argument("--call-seconds", type=float, default=60.0, help="call length the reference is amortized over")
    parser.add_argument("--jobs", type=int, default=1, help="worker processes (default 1)")
    parser.add_argument("--metric-stride", type=int, default=1, help="SSIM/MS-SSIM/LPIPS/landmarks/mouth metrics on every Nth frame, DISTS on every 5Nth (default 1)")
    parser.add_argument("--no-video", action="store_true", help="skip the side-by-side video")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> dict:
    from ..sample import sample_path
    from .report import write_report

    out = Path(args.out)
    codecs = [c.strip() for c in args.codecs.split(",") if c.strip()]
    kbps = [float(k) for k in args.kbps.split(",")]
    weights = dict(w.split("=", 1) for w in args.weights if "=" in w)
    if len(weights) != len(args.weights):
        raise TalkcodecError("bench: --weights expects CODEC=PATH")
    if args.tail is not None and not 0 < args.tail < 1:
        raise TalkcodecError(f"bench: --tail is a fraction in (0, 1), got {args.tail:g}")
    if args.frames_per_packet is not None and not 1 <= args.frames_per_packet <= MAX_FRAMES_PER_PACKET:
        raise TalkcodecError(f"bench: --frames-per-packet must be in 1..{MAX_FRAMES_PER_PACKET}")
    settings: dict[str, dict[str, Any]] = {}
    for key, value in parse_settings(args.set).items():
        codec, _, name = key.partition(".")
        if codec not in TALKCODEC_SWEEPS or not name:
            raise TalkcodecError(f"bench: --set takes CODEC.KEY=VALUE for a talkcodec codec ({', '.join(TALKCODEC_SWEEPS)}), got {key!r}")
        settings.setdefault(codec, {})[name] = value
    cells = _cells(codecs, kbps, weights, args.frames_per_packet, settings)
    if args.anchor not in codecs:
        raise TalkcodecError(f"bench: the anchor {args.anchor!r} is not among --codecs")
    sources = expand(args.clips) if args.clips else [sample_path()]
    cache = out / "crops"
    clips: dict[str, Path] = {}
    skipped: dict[str, str] = {}
    for source in tqdm(sources, desc="crop", unit="clip", disable=args.quiet):
        try:
            if source.stem in clips:
                raise InputError(f"{source}: another input is also named {source.stem!r}")
            load_clip(source, cache, args.seconds, tail=args.tail, size=args.size)
            clips[source.stem] = source
        except (InputError, OSError, ValueError, RuntimeError) as exc:
            skipped[source.name] = str(exc).split("\n")[0]
    results: list[dict] = []
    todo = []
    for name, source in clips.items():
        for codec, setting in cells:
            path = out / "cells" / name / f"{codec}__{setting_label(setting)}.json"
            try:
                cached = json.loads(path.read_text()) if path.exists() else None
            except (OSError, json.JSONDecodeError):
                cached = None  # a cell cut short by an interruption is redone
            same = {"metric_stride": args.metric_stride, "seconds": args.seconds, "call_seconds": args.call_seconds,
                    "tail": args.tail, "size": args.size}  # fmt: skip
            ours = codec not in CONVENTIONAL and codec not in BASELINES  # a talkcodec codec
            if ours:
                same["shipped_models"] = shipped_models()  # cells of other shipped weights are redone
            if cached is not None:
                cached.setdefault("size", 256)  # cells from before the size setting
            recorded = not ours or "frames_per_packet" in (cached or {})  # older cells did not say
            recorded = recorded and "lip_sync" in (cached or {})  # cells from before the mouth metrics are redone
            if cached is not None and recorded and all(cached.get(k) == v for k, v in same.items()):
                results.append(cached)
            else:
                todo.append((path, (str(source), str(cache), args.seconds, codec, setting, args.call_seconds,
                                    args.metric_stride, args.tail, args.size)))  # fmt: skip
    bar = tqdm(total=len(todo), desc="cells", unit="cell", disable=args.quiet)

    def done(path: Path, result: dict) -> None:
        if "error" not in result:  # failures are retried by the next run
            path.parent.mkdir(parents=True, exist_ok=True)
            partial = path.with_suffix(".part")
            partial.write_text(json.dumps(result, indent=1))
            partial.replace(path)  # atomic: an interrupted run never leaves half a cell
        results.append(result)
        bar.update(1)

    def failed(job: tuple, exc: BaseException) -> dict:
        return {"clip": Path(job[0]).stem, "codec": job[3], "setting": job[4], "error": f"{type(exc).__name__}: {exc}"}

    if args.jobs > 1 and len(todo) > 1:
        import multiprocessing

        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(["talkcodec.bench.run", "talkcodec.metrics"])
        with ProcessPoolExecutor(max_workers=args.jobs, mp_context=context, initializer=_one_thread_each) as pool:
            futures = {pool.submit(run_cell, *job): (path, job) for path, job in todo}
            for future in as_completed(futures):
                path, job = futures[future]
                exc = future.exception()
                done(path, failed(job, exc) if exc else future.result())
    else:
        for path, job in todo:
            try:
                done(path, run_cell(*job))
            except Exception as exc:  # one broken cell must not end the run
                done(path, failed(job, exc))
    bar.close()
    return write_report(out, results, skipped, args)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="talkcodec bench", description=__doc__)
    add_arguments(parser)
    args = parser.parse_args(argv)
    started = time.perf_counter()
    report = run(args)
    print(f"{args.out}: {len(report['cells'])} cells in {time.perf_counter() - started:.0f} s")
    return 0
