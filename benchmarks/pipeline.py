"""Shared by benchmarks/train_step.py and benchmarks/dry_run.py: synthetic cached data and timed training steps
through the library's own training loop (train.train_epoch). torch and numpy only (no soundfile, no dataset)."""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class SyntheticSplit:
    """A CachedSplit-like split of random int16 clips, memory-mapped from a .npy file like the real cache."""
    audio: np.ndarray
    labels: np.ndarray
    skipped: list

    def __len__(self):
        return len(self.labels)

    def waveforms(self, index):
        return torch.from_numpy(self.audio[index].astype(np.float32) / 32768.0)


def synthetic_split(path, clips: int, length: int, classes: int, seed: int = 0) -> SyntheticSplit:
    rng = np.random.default_rng(seed)
    audio = np.lib.format.open_memmap(path, mode="w+", dtype=np.int16, shape=(clips, length))
    for start in range(0, clips, 4096):  # in chunks: the full release at 16 kHz is 2.7 GB
        n = min(4096, clips - start)
        audio[start : start + n] = rng.normal(0, 2000, (n, length)).astype(np.int16)
    audio.flush()
    labels = np.arange(clips) % classes
    rng.shuffle(labels)
    return SyntheticSplit(np.load(path, mmap_mode="r"), labels, [])


def make_model(preset: str, labels: list[str], device, world, compile: bool = False, **overrides):
    from mrconv_audio import MRConvClassifier, MRConvConfig
    from mrconv_audio.distributed import convert_batchnorms

    torch.manual_seed(0)
    model = MRConvClassifier(MRConvConfig.preset(preset, labels=labels, **overrides))
    if world.size > 1:
        convert_batchnorms(model)
    model.to(device).train()
    step_model = model
    if world.size > 1:
        step_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    if compile:
        step_model = torch.compile(step_model)
    return model, step_model


def time_steps(step_model, model, split, batch_size: int, steps: int, warmup: int, world, device, augmenter,
               workers: int, amp: bool) -> dict:
    """Seconds per step of train_epoch over `steps` global batches, after `warmup` untimed ones."""
    from mrconv_audio.distributed import global_batches
    from mrconv_audio.train import class_weights, train_epoch

    optimizer = torch.optim.AdamW(model.parameter_groups())
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    weights = class_weights(split.labels, int(split.labels.max()) + 1)
    order = np.random.default_rng(0).permutation(len(split))
    batches = global_batches(order, batch_size, world.size)
    run = lambda part: train_epoch(step_model, optimizer, scheduler, split, part, world, device, augmenter, weights,
                                   workers, amp)
    run(batches[:warmup])
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    run(batches[warmup : warmup + steps])  # ends by reading the sums: the device has finished
    seconds = (time.perf_counter() - start) / steps
    row = {"step_s": round(seconds, 4), "clips_per_s": round(batch_size / seconds, 1)}
    if device.type == "cuda":
        row["peak_gpu_gb"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    return row
