"""Training on several processes, GPUs or machines with PyTorch's own launcher:

    torchrun --nproc_per_node 2 -m talkcodec.cli train --codec apb --data CLIPS --out RUN

``torchrun`` sets ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``; each process (rank) trains on its
own share of every epoch's batches (``batch_indices``) and the gradients are averaged across
ranks before every optimiser step (``average_gradients``: gloo on CPUs, NCCL on GPUs), so every
rank holds the same weights after every step. Rank 0 alone builds the cache and writes the
checkpoint, weights and history (a resumed run reads them on every rank).

Why not ``DistributedDataParallel``: the critics' WGAN-GP gradient penalty differentiates
through a gradient (double backward), which DDP does not support. One all-reduce of all
gradients a step is what DDP does, less its overlap of communication with the backward pass.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Ranks:
    rank: int = 0
    world: int = 1
    local: int = 0  # rank on this machine (its GPU)

    @property
    def main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls) -> Ranks:
        """The ranks ``torchrun`` gives this process (one rank of one when not launched by it)."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        return cls(int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0"))) if world > 1 else cls()


def start(ranks: Ranks, device: torch.device) -> torch.device:
    """Join the process group (NCCL on CUDA, gloo on CPU); this rank's device."""
    if device.type == "cuda":
        device = torch.device("cuda", ranks.local)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=ranks.rank, world_size=ranks.world)
    return device


def stop() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def broadcast_module(module: torch.nn.Module) -> None:
    """Rank 0's parameters and buffers on every rank."""
    for tensor in module.state_dict().values():
        dist.broadcast(tensor, 0)


def average_gradients(parameters: list[torch.nn.Parameter], loss: torch.Tensor, world: int) -> float:
    """Average the gradients of ``parameters`` and ``loss`` over the ranks in one all-reduce (a
    parameter without a gradient counts as zero); returns the mean loss (every rank the same,
    so a diverged run stops on every rank at once)."""
    for p in parameters:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    flat = torch.cat([p.grad.reshape(-1) for p in parameters] + [loss.detach().float().reshape(1).to(parameters[0].grad.dtype)])
    dist.all_reduce(flat)
    flat /= world
    offset = 0
    for p in parameters:
        p.grad.copy_(flat[offset : offset + p.numel()].view_as(p.grad))  # (numel,) -> the parameter's shape
        offset += p.numel()
    return float(flat[-1])


def batch_indices(rank: int, world: int, first_step: int, steps: int, batch_size: int) -> list[int]:
    """This rank's samples for steps ``first_step .. steps - 1`` of an epoch of ``steps x world``
    batches: global batch ``step x world + rank`` (every rank takes as many steps)."""
    return [i for step in range(first_step, steps) for i in range((step * world + rank) * batch_size, (step * world + rank + 1) * batch_size)]


def any_rank(flag: bool) -> bool:
    """Whether ``flag`` is set on any rank (every rank gets the same answer)."""
    value = torch.tensor([float(flag)])
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def checksum(module: torch.nn.Module) -> float:
    """A number that differs when the weights do (the ranks compare theirs at the end)."""
    with torch.no_grad():
        return float(sum(t.double().sum() * (i + 1) for i, t in enumerate(module.state_dict().values()) if t.is_floating_point()))


def gathered(value: float) -> list[float]:
    """``value`` of every rank, in rank order."""
    out: list[float] = [0.0] * dist.get_world_size()
    dist.all_gather_object(out, value)
    return out
