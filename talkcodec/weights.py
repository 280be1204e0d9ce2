"""Weights and checkpoints: safetensors files whose header carries a JSON config. Never pickle.

A talkcodec weights file is one ``.safetensors`` file: the tensors (fp16 for shipping, fp32 in
training checkpoints) and, in the safetensors ``__metadata__``, ``talkcodec`` = a JSON object
``{"format": 1, "codec": "avfr", "config": {...network config...}, ...}``. Loading checks the
header size, the metadata, the codec, the config and every tensor's name and shape, and turns
any problem into one ``WeightsError`` sentence. Optimizer state is stored the same way
(``optimizer_tensors`` / ``load_optimizer``).
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import WeightsError

FORMAT = 1
MAX_HEADER_BYTES = 16 << 20  # a safetensors header larger than this is not ours
MAX_FILE_BYTES = 1 << 30


@dataclass(frozen=True)
class Weights:
    """A loaded weights file: its codec, network config, tensors and a short fingerprint."""

    codec: str
    config: dict[str, Any]
    tensors: dict[str, torch.Tensor]
    info: dict[str, Any]  # everything else in the metadata (training summary, coding statistics...)
    fingerprint: str  # first 16 hex digits of the file's SHA-256: names the exact model on the wire
    path: str


def save_weights(
    path: str | Path, codec: str, config: dict[str, Any], tensors: dict[str, torch.Tensor],
    info: dict[str, Any] | None = None, half: bool = True, exact: tuple[str, ...] = ("coding.",),
) -> Path:  # fmt: skip
    """Write tensors (fp16 when ``half``, except names starting with an ``exact`` prefix) + config;
    atomic (temp file + rename)."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    out = {}
    for name, tensor in tensors.items():
        tensor = tensor.detach().cpu().contiguous()
        out[name] = tensor.half() if half and tensor.is_floating_point() and not name.startswith(exact) else tensor
    meta = {"format": FORMAT, "codec": codec, "config": config, **(info or {})}
    tmp = path.with_suffix(path.suffix + ".tmp")
    save_file(out, str(tmp), metadata={"talkcodec": json.dumps(meta)})
    tmp.replace(path)
    return path


def _read_metadata(path: Path, data: bytes) -> dict[str, Any]:
    if len(data) < 8:
        raise WeightsError(f"{path}: not a safetensors file (too short)")
    size = int.from_bytes(data[:8], "little")
    if size > MAX_HEADER_BYTES or size > len(data) - 8:
        raise WeightsError(f"{path}: not a safetensors file (header of {size} bytes)")
    try:
        header = json.loads(data[8 : 8 + size])
        meta = json.loads(header["__metadata__"]["talkcodec"])
    except (ValueError, KeyError, TypeError):
        raise WeightsError(f"{path}: not a talkcodec weights file (no talkcodec metadata)") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise WeightsError(
            f"{path}: unsupported weights format {meta.get('format') if isinstance(meta, dict) else meta!r}"
        )
    if not isinstance(meta.get("codec"), str) or not isinstance(meta.get("config"), dict):
        raise WeightsError(f"{path}: weights metadata without a codec name and config")
    return meta


def load_weights(path: str | Path, codec: str | None = None) -> Weights:
    """Read a weights file; ``codec`` set: refuse weights made for another codec."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: no such weights file")
    if path.stat().st_size > MAX_FILE_BYTES:
        raise WeightsError(f"{path}: {path.stat().st_size} bytes is too large for talkcodec weights")
    data = path.read_bytes()  # read once: the fingerprint and the tensors are of the same bytes
    meta = _read_metadata(path, data)
    if codec is not None and meta["codec"] != codec:
        raise WeightsError(f"{path}: these are {meta['codec']!r} weights, not {codec!r} weights")
    try:
        tensors = load(data)
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise WeightsError(f"{path}: corrupted weights file ({exc})") from None
    digest = hashlib.sha256(data).hexdigest()[:16]
    info = {k: v for k, v in meta.items() if k not in ("format", "codec", "config")}
    return Weights(meta["codec"], meta["config"], tensors, info, digest, str(path))


def load_module(module: nn.Module, tensors: dict[str, torch.Tensor], source: str, prefix: str = "") -> None:
    """``module.load_state_dict`` from ``tensors[prefix + name]`` with every mismatch in one error."""
    state = module.state_dict()
    problems = []
    for name, current in state.items():
        given = tensors.get(prefix + name)
        if given is None:
            problems.append(f"missing {prefix + name}")
        elif given.shape != current.shape:
            problems.append(f"{prefix + name} has shape {tuple(given.shape)}, expected {tuple(current.shape)}")
        elif given.is_floating_point() and not torch.isfinite(given).all():
            problems.append(f"{prefix + name} is not finite")
    unexpected = [k for k in tensors if k.startswith(prefix) and k[len(prefix) :] not in state]
    problems += [f"unexpected {k}" for k in unexpected[:5]]
    if problems:
        more = f" (+{len(problems) - 5} more)" if len(problems) > 5 else ""
        raise WeightsError(f"{source}: weights do not fit the network: {'; '.join(problems[:5])}{more}")
    module.load_state_dict({name: tensors[prefix + name].to(state[name].dtype) for name in state})


def load_matching(module: nn.Module, tensors: dict[str, torch.Tensor], source: str, prefix: str = "") -> list[str]:
    """Warm start: copy every finite ``tensors[prefix + name]`` whose shape fits ``module``; the rest
    keeps its initialisation. Returns the names left fresh; none fitting at all is a WeightsError."""
    state = module.state_dict()
    fits = {
        name: tensors[prefix + name].to(current.dtype) for name, current in state.items()
        if prefix + name in tensors and tensors[prefix + name].shape == current.shape
        and (not current.is_floating_point() or bool(torch.isfinite(tensors[prefix + name]).all()))
    }  # fmt: skip
    if not fits:
        raise WeightsError(f"{source}: no tensor fits the network")
    module.load_state_dict(fits, strict=False)
    return [name for name in state if name not in fits]


def module_tensors(module: nn.Module, prefix: str = "") -> dict[str, torch.Tensor]:
    return {prefix + name: t for name, t in module.state_dict().items()}


def optimizer_tensors(optimizer: torch.optim.Optimizer, prefix: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """An optimizer's state as named tensors + JSON-able hyper-parameters (no pickle)."""
    state = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    for index, slots in state["state"].items():
        for slot, value in slots.items():
            tensors[f"{prefix}.{index}.{slot}"] = torch.as_tensor(value)
    groups = [{k: v for k, v in g.items()} for g in state["param_groups"]]
    return tensors, {"param_groups": groups}


def load_optimizer(
    optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict[str, Any], prefix: str
) -> None:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for name, value in tensors.items():
        if not name.startswith(prefix + "."):
            continue
        index, slot = name[len(prefix) + 1 :].split(".", 1)
        state.setdefault(int(index), {})[slot] = value
    try:
        optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    except (KeyError, ValueError, RuntimeError) as exc:
        raise WeightsError(f"optimizer state does not fit ({exc})") from None


SHARD_BYTES = 15 << 20  # checkpoint files stay under 16 MiB (what a rented-GPU window can bring back)


def save_checkpoint(folder: str | Path, tensors: dict[str, torch.Tensor], info: dict[str, Any]) -> None:
    """A resumable training state: tensors in safetensors shards of <= 15 MiB + ``checkpoint.json``."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, tensor in tensors.items():
        nbytes = tensor.numel() * tensor.element_size()
        if shards[-1] and size + nbytes > SHARD_BYTES:
            shards.append({})
            size = 0
        shards[-1][name] = tensor.detach().cpu().contiguous()
        size += nbytes
    stamp = time.strftime("%Y%m%d-%H%M%S") + f"-{time.monotonic_ns() % 1_000_000:06d}"  # new names each save
    names = [f"shard-{stamp}-{i:03d}.safetensors" for i in range(len(shards))]
    for name, shard in zip(names, shards):
        save_file(shard, str(folder / name))
    tmp = folder / "checkpoint.json.tmp"
    tmp.write_text(json.dumps({"format": FORMAT, "shards": names, **info}, indent=1))
    tmp.replace(folder / "checkpoint.json")  # the switch: until here the previous checkpoint stands whole
    for old in folder.glob("shard-*.safetensors"):
        if old.name not in names:
            old.unlink()


def load_checkpoint(folder: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = Path(folder)
    try:
        info = json.loads((folder / "checkpoint.json").read_text())
    except (OSError, ValueError):
        raise WeightsError(f"{folder}: no readable checkpoint (checkpoint.json)") from None
    if not isinstance(info, dict) or info.get("format") != FORMAT or not isinstance(info.get("shards"), list):
        raise WeightsError(f"{folder}: unsupported checkpoint")
    tensors: dict[str, torch.Tensor] = {}
    for name in info["shards"]:
        if not isinstance(name, str) or Path(name).name != name:
            raise WeightsError(f"{folder}: checkpoint names a shard outside its folder ({name!r})")
        path = folder / name
        try:
            tensors.update(load_file(str(path)))
        except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
            raise WeightsError(f"{path}: corrupted checkpoint shard ({exc})") from None
    return tensors, info
