"""Full-size dry run without the dataset: what an epoch (and the paper's 40-epoch run) costs on this machine.

    python benchmarks/dry_run.py [--preset sc35-paper] [--steps N] [--device auto] [--out dry_run.json]
    torchrun --nproc-per-node 2 benchmarks/dry_run.py ...        # data-parallel, --batch-size stays the global batch

It writes a synthetic cache at the release's size (the sc35 task of Speech Commands v0.02: 84,843 training and 9,981
validation clips, 1 s at 16 kHz, int16, memory-mapped like the real cache: 2.7 GB in --workdir) and times the
library's own training loop on it (train.train_epoch: DataLoader workers, augmentation on the device, bf16 autocast
on CUDA, DistributedDataParallel under torchrun) and the validation pass. --steps 0 times the whole epoch; otherwise
the first N steps (after warm-up) are timed and the epoch extrapolated. Needs torch and numpy only (torchaudio for
speed perturbation: without it the run is timed without, and says so).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from pipeline import make_model, synthetic_split, time_steps  # noqa: E402

from mrconv_audio.cpu import tune_allocator  # noqa: E402
from mrconv_audio.distributed import global_batches, setup, shutdown  # noqa: E402
from mrconv_audio.model import SC35_LABELS  # noqa: E402

TRAIN_CLIPS, VALIDATION_CLIPS = 84_843, 9_981  # sc35 on Speech Commands v0.02 (validation_list.txt)
PAPER_EPOCHS = 40


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="sc35-paper")
    parser.add_argument("--batch-size", type=int, default=16, help="global batch (the paper's 16)")
    parser.add_argument("--sample-rate", type=int, default=16000)
    parser.add_argument("--steps", type=int, help="steps to time (0: the whole epoch; default 0 on CUDA, 2 on CPU)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (torch.compile, cuDNN plans)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--workers", type=int, help="DataLoader workers per process (default as in training)")
    parser.add_argument("--no-amp", action="store_true")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--no-speed", action="store_true", help="no speed perturbation")
    parser.add_argument("--clips", type=int, default=TRAIN_CLIPS, help="clips written (less: a quick check only)")
    parser.add_argument("--validation-clips", type=int, help="validation clips timed (default: all on CUDA, 64 on CPU)")
    parser.add_argument("--workdir", help="folder for the synthetic cache (default: a temporary one, removed)")
    parser.add_argument("--out", help="write the JSON report here too")
    args = parser.parse_args()

    from mrconv_audio.data.augment import AugmentConfig, Augmenter
    from mrconv_audio.data.loader import default_workers
    from mrconv_audio.evaluate import predict

    tune_allocator()
    world, device = setup(args.device)
    speed = not args.no_speed
    if speed:
        try:
            import torchaudio  # noqa: F401  (speed perturbation's resampler)
        except ImportError:
            speed = False
    steps = args.steps if args.steps is not None else (0 if device.type == "cuda" else 2)
    workers = args.workers if args.workers is not None else default_workers(
        device, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    folder = Path(args.workdir or os.path.join(tempfile.gettempdir(), "mrconv-audio-dry-run"))
    folder.mkdir(parents=True, exist_ok=True)
    try:
        start = time.perf_counter()
        if world.main:
            synthetic_split(folder / "train.npy", args.clips, args.sample_rate, len(SC35_LABELS))
        world.barrier()
        split = synthetic_split_reader(folder / "train.npy", len(SC35_LABELS))
        write_s = time.perf_counter() - start

        labels = list(SC35_LABELS)  # sc35 has no _silence_ class: no noise mixing, as in training
        augmenter = Augmenter(AugmentConfig(speed=(0.9, 1.1) if speed else None), None, args.sample_rate, None,
                              torch.Generator().manual_seed(1)).to(device)
        model, step_model = make_model(args.preset, labels, device, world, args.compile,
                                       sample_rate=args.sample_rate)
        amp = not args.no_amp and device.type == "cuda"
        steps_per_epoch = len(global_batches(np.arange(TRAIN_CLIPS), args.batch_size, world.size))
        available = len(global_batches(np.arange(len(split)), args.batch_size, world.size)) - args.warmup
        timed = min(steps or available, available)
        row = time_steps(step_model, model, split, args.batch_size, timed, args.warmup, world, device, augmenter,
                         workers, amp)
        train_epoch_s = row["step_s"] * steps_per_epoch

        validation_s = None
        if world.main:  # validation runs on the first process only, at the rate and at half of it
            n = args.validation_clips or (VALIDATION_CLIPS if device.type == "cuda" else 64)
            x = split.waveforms(np.arange(min(n, len(split))))
            model.eval()
            start = time.perf_counter()
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                predict(model, x, device=device)
                predict(model, x[:, ::2], sample_rate=args.sample_rate / 2, device=device)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            validation_s = (time.perf_counter() - start) * VALIDATION_CLIPS / len(x)
        world.barrier()
        if world.main:
            epoch_s = train_epoch_s + validation_s
            report = {
                "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({os.cpu_count()} cores)",
                "processes": world.size, "preset": args.preset, "sample_rate": args.sample_rate,
                "global_batch": args.batch_size, "bf16_autocast": amp, "compile": args.compile,
                "speed_perturbation": speed, "loader_workers": workers, "train_clips": TRAIN_CLIPS,
                "steps_per_epoch": steps_per_epoch, "steps_timed": timed, "extrapolated": timed < steps_per_epoch,
                **row, "train_epoch_s": round(train_epoch_s, 1), "validation_s": round(validation_s, 1),
                "epoch_s": round(epoch_s, 1), "paper_run_hours": round(epoch_s * PAPER_EPOCHS / 3600, 2),
                "synthetic_cache_s": round(write_s, 1), "torch": torch.__version__,
            }
            print(json.dumps(report))
            if args.out:
                Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    finally:
        world.barrier()
        if world.main and not args.workdir:
            shutil.rmtree(folder, ignore_errors=True)
        shutdown()


def synthetic_split_reader(path: Path, classes: int):
    """The split rank 0 wrote, opened read-only (the same labels: they only depend on the clip count)."""
    from pipeline import SyntheticSplit

    audio = np.load(path, mmap_mode="r")
    labels = np.arange(len(audio)) % classes
    np.random.default_rng(0).shuffle(labels)
    return SyntheticSplit(audio, labels, [])


if __name__ == "__main__":
    main()
