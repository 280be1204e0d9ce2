"""The bench report: results.json (everything), results.md (tables), rd.png (curves) and
side_by_side.mp4 (original | talkcodec | anchor at the nearest bitrate)."""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
from collections import defaultdict
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from .bdrate import bd_quality, bd_rate
from .codecs import BASELINES, CONVENTIONAL


def is_talkcodec(codec: str) -> bool:
    return codec not in CONVENTIONAL and codec not in BASELINES

#: metric -> (label, higher is better); whole frame first, then where people look (talkcodec.metrics)
METRICS: dict[str, tuple[str, bool]] = {
    "psnr": ("PSNR (dB)", True),
    "ssim": ("SSIM", True),
    "ms_ssim": ("MS-SSIM", True),
    "flicker": ("temporal flicker (8-bit levels)", False),
    "lpips": ("LPIPS-Alex", False),
    "dists": ("DISTS", False),
    "landmark": ("landmark distance (/ inter-ocular)", False),
    "eye_lpips": ("eye LPIPS-Alex", False),
    "lip_sync": ("lip-sync (lip-gap correlation)", True),
    "mouth_lpips": ("mouth LPIPS-Alex", False),
    "mouth_landmark": ("mouth landmarks (/ inter-ocular)", False),
    "blink_sync": ("blink-sync (eye-opening correlation)", True),
}
#: the BD-rate columns results.md shows (results.json has every metric)
_BD_SHOWN = ("psnr", "lpips", "dists", "landmark", "lip_sync", "mouth_lpips", "mouth_landmark")
#: the panels rd.png titles "where people look"
METRICS_WHERE_PEOPLE_LOOK = ("lip_sync", "mouth_lpips", "mouth_landmark", "eye_lpips", "blink_sync")
#: the metrics the equal-quality table gives "x fewer bits" on (each ratio gated on beating the still frame)
EQUAL_QUALITY_METRICS = ("lpips", "landmark", "dists", "mouth_lpips", "mouth_landmark", "lip_sync")
_AVERAGED = ("kbps", "kbps_with_reference", "reference_bytes", *METRICS, "landmark_missing", "encode_fps",
             "decode_fps", "peak_mb")  # fmt: skip


def machine() -> dict[str, Any]:
    import av
    import torch

    from .. import __version__

    return {
        "platform": platform.platform(), "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(), "python": platform.python_version(), "talkcodec": __version__,
        "torch": torch.__version__, "pyav": av.__version__, "ffmpeg": av.library_versions.get("libavcodec"),
    }  # fmt: skip


def summarize(results: list[dict]) -> list[dict]:
    """Mean over clips of every figure, per (codec, setting), sorted by codec then bitrate."""
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for r in results:
        if "error" not in r:
            groups[(r["codec"], json.dumps(r["setting"], sort_keys=True))].append(r)
    rows = []
    for (codec, setting), cells in groups.items():
        row: dict[str, Any] = {"codec": codec, "setting": json.loads(setting), "clips": len(cells)}
        for key in _AVERAGED:
            values = [c[key] for c in cells if c.get(key) is not None]
            row[key] = float(np.mean(values)) if values else None
        rows.append(row)
    return sorted(rows, key=lambda r: (r["codec"], r["kbps"]))


def curves(rows: list[dict]) -> dict[str, list[dict]]:
    by_codec: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        by_codec[row["codec"]].append(row)
    return dict(by_codec)


def bd_table(rows: list[dict], anchor: str) -> dict[str, dict[str, float | None]]:
    """BD-rate (%) of every codec against ``anchor`` on the mean curves, per metric, plus BD-PSNR."""
    by_codec = curves(rows)
    if anchor not in by_codec:
        return {}
    a = by_codec[anchor]
    table: dict[str, dict[str, float | None]] = {}
    for codec, points in by_codec.items():
        if codec == anchor or codec in BASELINES:
            continue
        entry: dict[str, float | None] = {}
        for metric, (_, higher) in METRICS.items():
            if metric == "flicker":
                continue
            pa = [p for p in a if p[metric] is not None]
            pt = [p for p in points if p[metric] is not None]
            if len(pa) >= 2 and len(pt) >= 2:
                entry[f"bd_rate_{metric}"] = bd_rate([p["kbps"] for p in pa], [p[metric] for p in pa],
                                                     [p["kbps"] for p in pt], [p[metric] for p in pt], higher)  # fmt: skip
        if len(a) >= 2 and len(points) >= 2:
            entry["bd_psnr_db"] = bd_quality([p["kbps"] for p in a], [p["psnr"] for p in a],
                                             [p["kbps"] for p in points], [p["psnr"] for p in points])  # fmt: skip
        table[codec] = entry
    return table


def needed_kbps(points: list[tuple[float, float]], value: float, higher: bool = False) -> tuple[str, float]:
    """Bitrate at which a conventional codec's curve of (kbps, metric) reaches ``value``,
    interpolated in log-rate: ("=", kbps), or ("<=", lowest kbps) when its lowest rate already
    does, or (">", highest kbps) when even its highest does not. ``higher``: higher is better."""
    if higher:
        points, value = [(r, -m) for r, m in points], -value
    pts = sorted(points)
    if value >= pts[0][1]:
        return "<=", pts[0][0]
    for (r0, m0), (r1, m1) in zip(pts, pts[1:]):
        if m0 > value >= m1:
            t = (m0 - value) / (m0 - m1)
            return "=", float(np.exp(np.log(r0) + t * (np.log(r1) - np.log(r0))))
    return ">", pts[-1][0]


def equal_quality(rows: list[dict], metrics: tuple[str, ...] = EQUAL_QUALITY_METRICS) -> list[dict]:
    """For every talkcodec operating point and metric: the bitrate each conventional codec needs for
    the same (mean) figure, and how many times fewer bits talkcodec sends (goal: >= 10). A ratio is
    given only where the point beats the still frame on that metric (``beats_still``): matching
    what a frozen picture reaches for free is no saving."""
    by_codec = curves(rows)
    conventional = {c: pts for c, pts in by_codec.items() if c in CONVENTIONAL}
    still = next((pts[0] for c, pts in by_codec.items() if c in BASELINES), None)
    table = []
    for row in rows:
        if row["codec"] in CONVENTIONAL:
            continue
        for metric in metrics:
            higher = METRICS[metric][1]
            if row.get(metric) is None:
                continue
            needs = {c: needed_kbps([(p["kbps"], p[metric]) for p in pts if p[metric] is not None], row[metric], higher)
                     for c, pts in conventional.items() if any(p[metric] is not None for p in pts)}  # fmt: skip
            floor = still.get(metric) if still is not None else None
            beats = None if floor is None or row["codec"] in BASELINES else (
                row[metric] > floor if higher else row[metric] < floor)  # fmt: skip
            best = min(needs.items(), key=lambda kv: kv[1][1], default=None)
            ratio = (best[1][0], best[1][1] / row["kbps"]) if best and row["kbps"] > 0 and beats is True else None
            table.append({"codec": row["codec"], "setting": row["setting"], "kbps": row["kbps"], "metric": metric,
                          "value": row[metric], "still": floor, "beats_still": beats, "needs": needs,
                          "best": best[0] if best else None, "ratio": ratio})  # fmt: skip
    return table


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _setting(setting: dict) -> str:
    return ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in setting.items())


def _threads(report: dict) -> str:
    counts = sorted({c["torch_threads"] for c in report["cells"] if "torch_threads" in c and is_talkcodec(c["codec"])})
    return "/".join(map(str, counts)) or "?"


def _side(report: dict) -> str:
    side = report["settings"].get("size", 256)
    return f"{side}x{side}"


def _span(settings: dict) -> str:
    """Which part of each clip was coded, in words."""
    if settings.get("tail"):
        return f"the last {settings['tail']:.0%} of each (the trainer's held-out tail), at most {settings['seconds']:g} s"
    return f"first {settings['seconds']:g} s each"


def _packets(report: dict) -> str:
    """Frames per packet each talkcodec codec used, in words."""
    used: dict[str, set[int]] = {}
    for r in report["cells"]:
        if is_talkcodec(r["codec"]):
            used.setdefault(r["codec"], set()).add(r.get("frames_per_packet", 1))
    if not used:
        return ""
    each = ", ".join(f"{c} {'/'.join(map(str, sorted(n)))}" for c, n in sorted(used.items()))
    return (f" Frames per packet: {each} (a packet of n frames pays one header; its receiver gets each frame "
            f"n - 1 frame intervals later than with one per packet).")  # fmt: skip


def markdown(report: dict) -> str:
    lines = [
        f"# talkcodec bench, {report['date']}",
        "",
        f"{len(report['clips'])} clip(s), {_span(report['settings'])} at 25 fps, {_side(report)} face crops; "
        f"means over clips. kbps = frame bits over the clip (talkcodec's one-off reference image apart, "
        f"`ref kB`; amortized over a {report['settings']['call_seconds']:g} s call in results.json). "
        f"SSIM, MS-SSIM, LPIPS and landmarks on every {report['settings']['metric_stride']}. frame, PSNR and "
        f"flicker on all. Machine: {report['machine']['processor']}, {report['machine']['cpus']} CPUs; "
        f"fps are single-stream: conventional codecs on one thread, talkcodec's networks on "
        f"{_threads(report)} PyTorch thread(s) (`--jobs 1` gives them every core; `--jobs N` one each)."
        f"{_packets(report)}",
        "",
        "Whole frame:",
        "",
        "| codec | setting | kbps | ref kB | PSNR | SSIM | MS-SSIM | LPIPS | DISTS | landmark | flicker | enc fps | dec fps | peak MB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["summary"]:
        lines.append(
            f"| {r['codec']} | {_setting(r['setting'])} | {_fmt(r['kbps'])} | {_fmt((r['reference_bytes'] or 0) / 1000, 1)} | "
            f"{_fmt(r['psnr'])} | {_fmt(r['ssim'], 3)} | {_fmt(r['ms_ssim'], 3)} | {_fmt(r['lpips'], 3)} | "
            f"{_fmt(r.get('dists'), 3)} | {_fmt(r['landmark'], 3)} | {_fmt(r['flicker'])} | {_fmt(r['encode_fps'], 0)} | "
            f"{_fmt(r['decode_fps'], 0)} | {_fmt(r['peak_mb'], 0)} |"
        )
    lines += ["", "Where people look (mediapipe landmarks of original and decoded; boxes cut around the original's "
              "lips, side 1.1 x inter-ocular, and eyes, 0.6 x, scored at 64x64; `missing` = frames where either "
              "side shows no face, left out of these and of `landmark`):", "",
              "| codec | setting | kbps | lip-sync | mouth LPIPS | mouth landmark | eye LPIPS | blink-sync | missing |",
              "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in report["summary"]:
        lines.append(f"| {r['codec']} | {_setting(r['setting'])} | {_fmt(r['kbps'])} | {_fmt(r.get('lip_sync'), 3)} | "
                     f"{_fmt(r.get('mouth_lpips'), 3)} | {_fmt(r.get('mouth_landmark'), 3)} | {_fmt(r.get('eye_lpips'), 3)} | "
                     f"{_fmt(r.get('blink_sync'), 3)} | {_fmt(r.get('landmark_missing'), 3)} |")  # fmt: skip
    baselines = sorted({r["codec"] for r in report["summary"]} & set(BASELINES))
    lines += [""] + [f"`{name}` is a yardstick, not a codec: {BASELINES[name]}. A codec that does not beat it "
                     "draws no motion worth its bits." for name in baselines]  # fmt: skip
    anchor = report["settings"]["anchor"]
    if report["bd"]:
        lines += ["", f"BD-rate against {anchor} (negative = fewer bits for the same quality; - = the curves do not "
                  "overlap), and BD-PSNR (dB at equal bitrate):", "",
                  "| codec | " + " | ".join(f"BD-rate {METRICS[m][0].split(' (')[0]}" for m in _BD_SHOWN) + " | BD-PSNR |",
                  "|---" * (len(_BD_SHOWN) + 2) + "|"]  # fmt: skip
        for codec, e in report["bd"].items():
            cells = [_fmt(e.get(f"bd_rate_{m}"), 1) + ("%" if e.get(f"bd_rate_{m}") is not None else "")
                     for m in _BD_SHOWN]  # fmt: skip
            lines.append(f"| {codec} | " + " | ".join(cells) + f" | {_fmt(e.get('bd_psnr_db'))} |")
    if report.get("equal_quality"):
        names = sorted({c for e in report["equal_quality"] for c in e["needs"]})
        lines += ["", "Equal quality: the bitrate each conventional codec needs to reach each talkcodec point's mean "
                  "figure (interpolated in log-rate on the mean curves; <= and > where the point lies outside a "
                  "curve), and `x fewer bits` = that of the best conventional codec / talkcodec's kbps (the goal is "
                  ">= 10). It is given only where the point beats the still frame on that metric (`still` column): "
                  "a figure a frozen picture reaches for free saves nothing.", "",
                  "| codec | setting | kbps | metric | value | still | " + " | ".join(f"{n} kbps" for n in names)
                  + " | x fewer bits |", "|---" * (7 + len(names)) + "|"]  # fmt: skip
        for e in report["equal_quality"]:
            needs = [f"{'' if e['needs'][n][0] == '=' else e['needs'][n][0] + ' '}{e['needs'][n][1]:.1f}"
                     if n in e["needs"] else "-" for n in names]  # fmt: skip
            ratio = e["ratio"]
            if e.get("beats_still") is False:
                shown = "no better than a still frame"
            elif ratio:
                shown = f"{'' if ratio[0] == '=' else ratio[0] + ' '}{ratio[1]:.1f} ({e['best']})"
            elif e["codec"] in BASELINES or e["kbps"] <= 0:
                shown = "- (no frame bits)"
            elif e.get("beats_still") is None:
                shown = "- (no `still` in this run to compare with)"
            else:
                shown = "- (no conventional curve)"
            lines.append(f"| {e['codec']} | {_setting(e['setting'])} | {e['kbps']:.2f} | {e['metric']} | {e['value']:.3f} | "
                         f"{_fmt(e.get('still'), 3)} | " + " | ".join(needs) + f" | {shown} |")  # fmt: skip
    if report["skipped"]:
        lines += ["", "Skipped inputs:", ""] + [f"- {name}: {why}" for name, why in report["skipped"].items()]
    if report["failed"]:
        lines += ["", "Failed cells:", ""] + [f"- {f['clip']} {f['codec']} {f['setting']}: {f['error']}" for f in report["failed"]]
    lines += ["", "![rate-distortion](rd.png)", ""]
    return "\n".join(lines)


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(3, 4, figsize=(20, 12.5))
    by_codec = curves(report["summary"])
    for ax, (metric, (label, higher)) in zip(axes.flat, METRICS.items()):
        for codec, points in sorted(by_codec.items()):
            pts = [(p["kbps"], p[metric]) for p in points if p[metric] is not None]
            if codec in BASELINES and pts:  # no bitrate to place it at: a level to beat
                ax.axhline(pts[0][1], color="grey", ls=":", lw=1.5, label=f"{codec} (0 kbps)")
            elif pts:
                x, y = zip(*pts)
                talk = codec not in CONVENTIONAL
                ax.plot(x, y, "o-" if talk else ".--", lw=2.5 if talk else 1.2, label=codec)
        ax.set_xscale("log")
        ax.set_xlabel("kbps (frames only, log scale)")
        ax.set_ylabel(label + ("" if higher else ", lower is better"))
        ax.grid(True, which="both", alpha=0.3)
        ax.set_title(("where people look: " if metric in METRICS_WHERE_PEOPLE_LOOK else "whole frame: ") + label.split(" (")[0])
    axes.flat[0].legend()
    fig.suptitle(f"talkcodec bench: {len(report['clips'])} clip(s), {_span(report['settings'])}, {_side(report)}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def side_by_side(out: Path, report: dict, sources: dict[str, str]) -> Path | None:
    """Original | the first talkcodec codec | the anchor at its nearest bitrate, on the first clip."""
    from ..demo import label
    from ..video import Mp4Writer
    from .clips import load_clip
    from .run import code

    anchor = report["settings"]["anchor"]
    by_codec = curves([r for r in report["cells"] if "error" not in r and r["clip"] == report["clips"][0]])
    talk = next((c for c in by_codec if is_talkcodec(c)), None)
    if talk is None or anchor not in by_codec:
        return None
    mine = min(by_codec[talk], key=lambda r: abs(r["setting"].get("precision", 1.0) - 1.0))
    theirs = min(by_codec[anchor], key=lambda r: abs(np.log(r["kbps"] / mine["kbps"])))
    settings = report["settings"]
    clip = load_clip(Path(sources[report["clips"][0]]), out / "crops", settings["seconds"], tail=settings.get("tail"),
                     size=settings.get("size", 256))  # fmt: skip
    a, b = code(clip, talk, mine["setting"]), code(clip, anchor, theirs["setting"])
    path = out / "side_by_side.mp4"
    side = clip.frames.shape[1]
    with Mp4Writer(path, clip.fps, (side * 3, side)) as writer:
        for original, x, y in zip(clip.frames, a.decoded, b.decoded):
            writer.write(np.hstack([label(original, "original"), label(x, f"{talk} {mine['kbps']:.1f} kbps"),
                                    label(y, f"{anchor} {theirs['kbps']:.1f} kbps")]))  # fmt: skip
    return path


def mouth_strip(out: Path, report: dict, sources: dict[str, str], rows: int = 6) -> Path | None:
    """mouths.png: ``rows`` frames of the first clip, evenly spaced, as mouth boxes (the metric's,
    shown at 96 px): original | each codec (talkcodec at precision 1, conventional codecs at the
    rate nearest 20 kbps)."""
    from ..demo import label
    from ..metrics import mouth_boxes
    from .clips import load_clip
    from .run import code

    settings, name = report["settings"], report["clips"][0]
    clip = load_clip(Path(sources[name]), out / "crops", settings["seconds"], tail=settings.get("tail"),
                     size=settings.get("size", 256))  # fmt: skip
    faces = np.flatnonzero(np.isfinite(clip.landmarks).all(axis=(1, 2)))
    if len(faces) == 0:
        return None
    picks = faces[np.linspace(0, len(faces) - 1, rows).round().astype(int)]
    columns = [("original", clip.frames)]
    order = {"still": 0}  # the yardstick, then talkcodec's codecs, then the conventional ones
    by_codec = curves([r for r in report["cells"] if r["clip"] == name])
    for codec, points in sorted(by_codec.items(), key=lambda kv: (order.get(kv[0], 1 if is_talkcodec(kv[0]) else 2), kv[0])):
        if is_talkcodec(codec):
            cell = min(points, key=lambda r: abs(r["setting"].get("precision", 1.0) - 1.0))
        else:
            cell = min(points, key=lambda r: abs(np.log(max(r["kbps"], 1e-3) / 20.0)))
        columns.append((f"{codec} {cell['kbps']:.1f}", code(clip, codec, cell["setting"]).decoded))
    boxes = [(title, mouth_boxes(frames[picks], clip.landmarks[picks])) for title, frames in columns]
    grid = [np.hstack([label(cv2.resize(b[i], (96, 96), interpolation=cv2.INTER_CUBIC), title if i == 0 else "")
                       for title, b in boxes]) for i in range(len(picks))]  # fmt: skip
    path = out / "mouths.png"
    cv2.imwrite(str(path), np.vstack(grid)[:, :, ::-1])
    return path


def write_report(out: Path, results: list[dict], skipped: dict[str, str], args: argparse.Namespace) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    ok = [r for r in results if "error" not in r]
    summary = summarize(ok)
    report = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(),
        "settings": {"seconds": args.seconds, "codecs": args.codecs, "kbps": args.kbps, "anchor": args.anchor,
                     "call_seconds": args.call_seconds, "metric_stride": args.metric_stride, "tail": args.tail,
                     "size": args.size,
                     "frames_per_packet": args.frames_per_packet},  # fmt: skip
        "clips": sorted({r["clip"] for r in ok}),
        "skipped": skipped,
        "failed": [r for r in results if "error" in r],
        "summary": summary,
        "bd": bd_table(summary, args.anchor),
        "equal_quality": equal_quality(summary),
        "cells": sorted(ok, key=lambda r: (r["clip"], r["codec"], r["kbps"])),
    }
    (out / "results.json").write_text(json.dumps(report, indent=1))
    (out / "results.md").write_text(markdown(report))
    if summary:
        plot(report, out / "rd.png")
    if ok and not args.no_video:
        from ..sample import sample_path
        from .clips import expand

        sources = {p.stem: str(p) for p in (expand(args.clips) if args.clips else [sample_path()])}
        side_by_side(out, report, sources)
        mouth_strip(out, report, sources)
    return report
