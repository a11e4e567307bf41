"""Data-parallel training over processes (one per GPU, or several on a CPU), launched with torchrun.

    torchrun --nproc-per-node 2 -m mrconv_audio.cli train ...

Every process builds the same model, draws the same global batch order and the same augmentation choices from the
seed, and trains on its own rows of each global batch (`shard`). Gradients are averaged by DistributedDataParallel;
BatchNorm statistics are those of the whole global batch (`SyncBatchNorm`). So N processes take the same steps as one
process with the same global batch, up to float rounding (and dropout, whose masks each process draws itself).
"""
from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from .device import pick_device


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.size > 1:
            dist.barrier()

    def sum(self, values: list[float], device) -> list[float]:
        """Element-wise sum over every process (a no-op alone)."""
        if self.size == 1:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64, device=device)
        dist.all_reduce(t)
        return t.tolist()

    def gather(self, t: torch.Tensor, device) -> list[torch.Tensor]:
        """Every process's copy of a same-shaped tensor (e.g. its RNG state), as CPU tensors in rank order."""
        if self.size == 1:
            return [t]
        parts = [torch.empty_like(t, device=device) for _ in range(self.size)]
        dist.all_gather(parts, t.to(device))
        return [p.cpu() for p in parts]


def setup(device_name: str = "auto", timeout_minutes: float = 60) -> tuple[World, torch.device]:
    """This process's place in the run (from torchrun's environment) and its device; joins the process group.

    Alone (no WORLD_SIZE, or 1) nothing is initialized. With torchrun, process `local_rank` takes GPU `local_rank` of
    its machine and talks NCCL; on CPUs it talks gloo. The timeout covers rank 0 building the data cache alone."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size == 1:
        return World(), pick_device(device_name)
    world = World(int(os.environ["RANK"]), size, int(os.environ["LOCAL_RANK"]))
    device = pick_device(device_name)
    if device.type == "cuda":
        device = torch.device("cuda", world.local_rank if device.index is None else device.index)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                timeout=datetime.timedelta(minutes=timeout_minutes))
    return world, device


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


# ---- the global batch -----------------------------------------------------------------------------------------------
def global_batches(order: np.ndarray, batch_size: int, world_size: int) -> list[np.ndarray]:
    """The epoch's global batches of `batch_size` clips in `order`. A last, partial batch is kept, unless it has
    fewer clips than there are processes (one of them would get none): then it is dropped."""
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    if batches and len(batches[-1]) < world_size:
        batches.pop()
    return batches


def shard(batch: np.ndarray, world: World) -> slice:
    """Which rows of a global batch this process trains on: contiguous, sizes differing by at most one."""
    base, extra = divmod(len(batch), world.size)
    start = world.rank * base + min(world.rank, extra)
    return slice(start, start + base + (world.rank < extra))


# ---- BatchNorm over the global batch --------------------------------------------------------------------------------
class _AllReduceSum(torch.autograd.Function):
    """Sum over processes, differentiable: the gradient of every process's input is the sum of all the gradients
    of the output (each process's loss depends on every process's input through the shared statistics)."""

    @staticmethod
    def forward(ctx, x):
        x = x.clone()
        dist.all_reduce(x)
        return x

    @staticmethod
    def backward(ctx, grad):
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


class SyncBatchNorm(nn.BatchNorm1d):
    """BatchNorm1d whose training statistics are those of the global batch, across processes.

    torch.nn.SyncBatchNorm refuses CPU tensors (torch 2.11: "expected input tensor to be on GPU"), so gloo runs
    cannot use it; this one works on any device. Each process computes its rows' count, mean and sum of squared
    deviations (two-pass, no E[x^2] - E[x]^2 cancellation); one all-reduce of a (processes, 2C+1) table, each process
    writing its own row, gives every process every row; they are combined exactly (Chan et al.'s parallel variance).
    Outside training, or alone, it is a plain BatchNorm1d. x: (batch, channels) or (batch, channels, time)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        dims = [0] + list(range(2, x.dim()))
        count = x.numel() // x.shape[1]
        dtype = torch.promote_types(x.dtype, torch.float32)  # statistics of bf16 activations in float32
        var, mean = torch.var_mean(x.to(dtype), dim=dims, correction=0)
        table = x.new_zeros(dist.get_world_size(), 2 * self.num_features + 1, dtype=dtype)
        table[dist.get_rank()] = torch.cat([mean, var * count, mean.new_full((1,), count)])
        table = _AllReduceSum.apply(table)
        means, m2s, counts = table[:, : self.num_features], table[:, self.num_features : -1], table[:, -1:]
        n = counts.sum()
        mean = (counts * means).sum(0) / n
        m2 = (m2s + counts * (means - mean).square()).sum(0)
        var = m2 / n

        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked += 1
                momentum = 1 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
                self.running_mean.lerp_(mean.detach().to(self.running_mean.dtype), momentum)
                unbiased = m2.detach() / (n.detach() - 1).clamp_min(1)
                self.running_var.lerp_(unbiased.to(self.running_var.dtype), momentum)
        scale = torch.rsqrt(var + self.eps)
        if self.affine:
            scale = scale * self.weight
        shift = -mean * scale + (self.bias if self.affine else 0)
        shape = [1, -1] + [1] * (x.dim() - 2)
        return (x * scale.view(shape).to(x.dtype) + shift.view(shape).to(x.dtype))


def convert_batchnorms(module: nn.Module) -> nn.Module:
    """Replace every nn.BatchNorm1d in `module` (block norms, each MRConv branch's norm, the log-mel input norm) by a
    SyncBatchNorm with the same parameters and statistics. State-dict keys are unchanged."""
    for name, child in module.named_children():
        if type(child) is nn.BatchNorm1d:
            state = child.state_dict()
            synced = SyncBatchNorm(child.num_features, child.eps, child.momentum, child.affine,
                                   child.track_running_stats).to(next(iter(state.values())).device)
            synced.load_state_dict(state)
            setattr(module, name, synced)
        else:
            convert_batchnorms(child)
    return module
