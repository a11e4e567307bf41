"""Batches of cached clips for training, read ahead by DataLoader worker processes.

One item of the dataset is one whole batch (this process's rows of a global batch), read from the memory-mapped
cache with one fancy index: int16, half the bytes of float32 to copy and to pin. The conversion to float and the
augmentation happen on the training device (to_device, augment.Augmenter.apply).
"""
from __future__ import annotations

import os

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset


class CachedBatches(Dataset):
    """batches[i]: clip indices of a split -> (audio (n, time) int16, labels (n,) int64)."""

    def __init__(self, split, batches: list[np.ndarray]):
        self.split, self.batches = split, batches

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        index = self.batches[i]
        return torch.from_numpy(np.asarray(self.split.audio[index])), torch.from_numpy(self.split.labels[index])


def default_workers(device: torch.device, local_processes: int = 1) -> int:
    """Worker processes per training process. On a GPU, a few per process, so reading never waits; on the CPU none:
    reading a batch from the cache is cheap next to a step, and workers would only compete for the same cores
    (benchmarks/train_step.py --pipeline measures it)."""
    if device.type != "cuda":
        return 0
    return max(1, min(4, (os.cpu_count() or 1) // max(1, local_processes) - 1))


def batch_loader(split, batches: list[np.ndarray], workers: int, pin: bool) -> DataLoader:
    """Yields the batches in order; `workers` processes read up to 4 batches ahead each (none: the main thread)."""
    # Its own generator: a DataLoader otherwise draws its workers' seed from the global RNG, which would shift the
    # dropout masks of a resumed run (it starts a loader at another step than the run it continues).
    return DataLoader(CachedBatches(split, batches), batch_size=None, shuffle=False, num_workers=workers,
                      pin_memory=pin, prefetch_factor=4 if workers else None, generator=torch.Generator())


def to_device(audio: torch.Tensor, labels: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """int16 clips -> floats (the default dtype, float32) in [-1, 1) on `device` (the copy overlaps with compute
    when the batch is pinned)."""
    x = audio.to(device, non_blocking=True).to(torch.get_default_dtype()) / 32768.0
    return x, labels.to(device, non_blocking=True)
